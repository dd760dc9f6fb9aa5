//! The `cluster` binary's errors for bad credentials and bad input (no server needed).

use std::process::{Command, Output};

fn cluster(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cluster"))
        .args(args)
        .env_remove("CLUSTER_CONFIG")
        .output()
        .expect("run cluster")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn nonexistent_config_is_a_clear_error() {
    let out = cluster(&["--config", "/nonexistent", "node", "ls"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("/nonexistent"), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn config_from_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_cluster"))
        .args(["info"])
        .env("CLUSTER_CONFIG", "/nonexistent/admin.json")
        .output()
        .expect("run cluster");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/admin.json"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_config_says_how_to_get_one() {
    let out = cluster(&["join-token", "worker"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("pass --config or set CLUSTER_CONFIG"), "{err}");
    assert!(err.contains("admin.json"), "{err}");
}

#[test]
fn bad_availability_is_rejected_before_connecting() {
    let out = cluster(&["node", "update", "--availability", "paused", "n1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("expected active, pause or drain"), "{err}");
}

#[test]
fn label_without_key_is_rejected() {
    let out = cluster(&["node", "update", "--label-add", "=eu", "n1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("the key is empty"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn update_with_nothing_to_do_is_rejected() {
    let out = cluster(&["--config", "/nonexistent", "node", "update", "n1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("nothing to update"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unknown_filter_is_rejected() {
    let out = cluster(&[
        "--config",
        "/nonexistent",
        "node",
        "ls",
        "--filter",
        "colour=red",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown filter \"colour\""),
        "{}",
        stderr(&out)
    );
}

/// Writes an admin config for `managers` whose certificate is valid over `validity`.
fn admin_config(
    dir: &std::path::Path,
    managers: &[&str],
    validity: identity::Validity,
) -> std::path::PathBuf {
    let ca = identity::RootCa::generate("test-cluster").expect("root CA");
    let subject = identity::Subject {
        node_id: "admin-test".to_string(),
        role: identity::Role::Admin,
        cluster_id: "test-cluster".to_string(),
    };
    let credentials = ca
        .issue_keypair(&subject, validity)
        .expect("admin certificate");
    let path = dir.join("admin.json");
    let config = identity::AdminConfig {
        managers: managers.iter().map(|m| m.to_string()).collect(),
        credentials,
    };
    config.save(&path).expect("save admin config");
    path
}

fn valid_for_a_day() -> identity::Validity {
    identity::Validity::for_duration(std::time::Duration::from_secs(24 * 3600))
}

/// A local address nothing listens on (bound, then released).
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    addr
}

#[test]
fn unreachable_managers_are_each_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (closed_port(), closed_port());
    let config = admin_config(dir.path(), &[&a, &b], valid_for_a_day());
    let out = cluster(&[
        "--config",
        config.to_str().expect("utf-8 path"),
        "node",
        "ls",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: cannot connect to any manager: "),
        "{err}"
    );
    assert!(
        err.contains(&format!("{a}: ")) && err.contains(&format!("{b}: ")),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn host_overrides_the_configured_managers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (listed, host) = (closed_port(), closed_port());
    let config = admin_config(dir.path(), &[&listed], valid_for_a_day());
    let out = cluster(&[
        "--config",
        config.to_str().expect("utf-8 path"),
        "--host",
        &host,
        "info",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&host) && !err.contains(&listed), "{err}");
}

#[test]
fn expired_admin_certificate_is_reported_with_its_date() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = std::time::SystemTime::now();
    let day = std::time::Duration::from_secs(24 * 3600);
    let validity = identity::Validity {
        not_before: now - 3 * day,
        not_after: now - day,
    };
    let config = admin_config(dir.path(), &[&closed_port()], validity);
    let out = cluster(&[
        "--config",
        config.to_str().expect("utf-8 path"),
        "node",
        "ls",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("the admin certificate in ") && err.contains(" expired on 20"),
        "{err}"
    );
}

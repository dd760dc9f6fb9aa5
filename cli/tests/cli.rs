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
    assert!(stderr(&out).contains("/nonexistent/admin.json"), "{}", stderr(&out));
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
    assert!(stderr(&out).contains("the key is empty"), "{}", stderr(&out));
}

#[test]
fn update_with_nothing_to_do_is_rejected() {
    let out = cluster(&["--config", "/nonexistent", "node", "update", "n1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nothing to update"), "{}", stderr(&out));
}

#[test]
fn unknown_filter_is_rejected() {
    let out = cluster(&["--config", "/nonexistent", "node", "ls", "--filter", "colour=red"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unknown filter \"colour\""), "{}", stderr(&out));
}

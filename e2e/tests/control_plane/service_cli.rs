//! `cluster service ...` against a real single-manager cluster (no agents: tasks stay
//! unassigned or pending, so everything runs with `-d`).

use anyhow::{Context, Result, anyhow};
use e2e::{Lab, Tuning};

/// The data rows of a table (without the header).
fn rows(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_cli_creates_lists_scales_inspects_and_removes() -> Result<()> {
    let mut lab = Lab::cluster("service-cli", 1, Tuning::fast()).await?;

    let out = lab
        .cli(&[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "3",
            // No registry here: keep the tag as given (pinning is tested in agent/tests).
            "--no-resolve-image",
            "busybox",
            "httpd",
        ])
        .await?;
    assert!(out.success, "service create: {out:?}");
    let id = out.stdout.trim().to_string();
    assert!(
        !id.is_empty() && !id.contains(char::is_whitespace),
        "create printed {id:?}"
    );

    let out = lab.cli(&["service", "ls"]).await?;
    assert!(out.success, "service ls: {out:?}");
    println!("{}", out.stdout);
    let listed = rows(&out.stdout);
    assert_eq!(listed.len(), 1, "{}", out.stdout);
    let cols: Vec<&str> = listed[0].split_whitespace().collect();
    assert_eq!(cols[1], "web", "{}", out.stdout);
    assert_eq!(cols[2], "replicated", "{}", out.stdout);
    assert!(
        cols[3].ends_with("/3"),
        "REPLICAS is not N/3:\n{}",
        out.stdout
    );
    assert_eq!(cols[4], "busybox", "{}", out.stdout);

    let out = lab.cli(&["service", "ls", "-q"]).await?;
    assert!(out.success, "service ls -q: {out:?}");
    assert_eq!(out.stdout.trim(), id);

    let out = lab.cli(&["service", "ps", "web"]).await?;
    assert!(out.success, "service ps: {out:?}");
    println!("{}", out.stdout);
    assert_eq!(rows(&out.stdout).len(), 3, "{}", out.stdout);
    for slot in 1..=3 {
        assert!(
            out.stdout.contains(&format!("web.{slot} ")),
            "no web.{slot}:\n{}",
            out.stdout
        );
    }

    let out = lab.cli(&["service", "scale", "-d", "web=5"]).await?;
    assert!(out.success, "service scale: {out:?}");
    let out = lab.cli(&["service", "ps", "-q", "web"]).await?;
    assert!(out.success, "service ps -q: {out:?}");
    assert_eq!(out.stdout.lines().count(), 5, "{}", out.stdout);

    let out = lab
        .cli(&["service", "inspect", "web", "--format", "json"])
        .await?;
    assert!(out.success, "service inspect: {out:?}");
    let inspected: serde_json::Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("inspect JSON:\n{}", out.stdout))?;
    let first = inspected
        .as_array()
        .and_then(|a| a.first())
        .ok_or_else(|| anyhow!("inspect JSON is not a non-empty array: {inspected}"))?;
    assert_eq!(first["id"], id.as_str(), "{inspected}");
    assert_eq!(first["spec"]["name"], "web", "{inspected}");
    assert_eq!(first["spec"]["mode"]["replicas"], 5, "{inspected}");
    assert_eq!(first["spec"]["command"][0], "httpd", "{inspected}");

    let out = lab
        .cli(&[
            "service",
            "update",
            "-d",
            "--image",
            "busybox:1.36",
            "--no-resolve-image",
            "--env-add",
            "A=1",
            "web",
        ])
        .await?;
    assert!(out.success, "service update: {out:?}");
    let out = lab.cli(&["service", "inspect", "--pretty", "web"]).await?;
    assert!(out.success, "service inspect --pretty: {out:?}");
    assert!(out.stdout.contains("busybox:1.36"), "{}", out.stdout);
    assert!(out.stdout.contains("A=1"), "{}", out.stdout);

    let out = lab
        .cli(&["service", "ps", "--format", "json", "web"])
        .await?;
    assert!(out.success, "service ps --format json: {out:?}");
    let tasks: serde_json::Value =
        serde_json::from_str(&out.stdout).with_context(|| format!("ps JSON:\n{}", out.stdout))?;
    assert!(tasks.as_array().is_some_and(|t| t.len() >= 5), "{tasks}");

    // Without -d, create waits for convergence; with no agents it never comes, so it gives up
    // after --timeout, says the cluster keeps converging, and still succeeds.
    let out = lab
        .cli(&[
            "service",
            "create",
            "--name",
            "slow",
            "--timeout",
            "1s",
            "--no-resolve-image",
            "busybox",
        ])
        .await?;
    println!("create without -d: {out:?}");
    assert!(out.success, "create without -d: {out:?}");
    assert!(out.stderr.contains("slow: 0/1 running"), "{}", out.stderr);
    assert!(out.stderr.contains("background"), "{}", out.stderr);

    let out = lab.cli(&["service", "rm", "web", "slow"]).await?;
    assert!(out.success, "service rm: {out:?}");
    let out = lab.cli(&["service", "ls", "-q"]).await?;
    assert!(out.success, "service ls: {out:?}");
    assert_eq!(out.stdout.trim(), "", "services left after rm");

    // An invalid constraint (a single '=') is refused by the manager, naming the field.
    let out = lab
        .cli(&[
            "service",
            "create",
            "-d",
            "--name",
            "bad",
            "--constraint",
            "node.labels.zone=a",
            "--no-resolve-image",
            "busybox",
        ])
        .await?;
    println!("invalid constraint: {out:?}");
    assert!(!out.success, "an invalid constraint was accepted: {out:?}");
    assert!(
        out.stderr.contains("constraints"),
        "the error does not name the field: {}",
        out.stderr
    );
    let out = lab.cli(&["service", "ls", "-q"]).await?;
    assert!(out.success, "service ls: {out:?}");
    assert_eq!(out.stdout.trim(), "", "the invalid service was created");

    // An image whose registry cannot be reached: created anyway, unpinned, with the warning.
    let image = format!("127.0.0.1:{}/test/busybox:1", e2e::ports::free_port()?);
    let out = lab
        .cli(&["service", "create", "-d", "--name", "pinless", &image])
        .await?;
    assert!(out.success, "create with an unreachable registry: {out:?}");
    assert!(
        out.stderr.starts_with(&format!(
            "image {image} could not be accessed on a registry to record its digest: "
        )) && out.stderr.contains("connection refused")
            && out
                .stderr
                .contains(&format!("Each node will access {image} independently")),
        "{}",
        out.stderr
    );
    let out = lab.cli(&["service", "inspect", "pinless"]).await?;
    assert!(out.success, "service inspect: {out:?}");
    assert!(
        out.stdout.contains(&format!("\"{image}\"")),
        "{}",
        out.stdout
    );
    let out = lab.cli(&["service", "rm", "pinless"]).await?;
    assert!(out.success, "service rm: {out:?}");

    lab.passed();
    Ok(())
}

//! `cluster node ps` against a real single-manager cluster with one worker whose session the test
//! holds (no containers: its tasks stay ASSIGNED). The manager has no agent, so `self` has no
//! tasks.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use e2e::{Lab, Tuning, client};
use proto::v1 as pb;
use proto::v1::dispatcher_client::DispatcherClient;
use tonic::transport::Channel;

/// Keeps a worker's session open with heartbeats, so that its node is READY and takes tasks.
async fn hold_session(channel: Channel) -> Result<()> {
    let mut dispatcher = DispatcherClient::new(channel);
    let request = pb::SessionRequest {
        hostname: "w1".into(),
        addr: "127.0.0.9".into(),
        ..Default::default()
    };
    let mut session = dispatcher.session(request).await?.into_inner();
    let first = session
        .message()
        .await?
        .context("the session ended at once")?;
    let mut beats = dispatcher.clone();
    let session_id = first.session_id.clone();
    let heartbeats = tokio::spawn(async move {
        loop {
            let beat = pb::HeartbeatRequest {
                session_id: session_id.clone(),
            };
            let _ = beats.heartbeat(beat).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    while session.message().await?.is_some() {}
    heartbeats.abort();
    Ok(())
}

/// The data rows of a table (without the header).
fn rows(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_ps_lists_the_tasks_of_nodes() -> Result<()> {
    let mut lab = Lab::cluster("node-ps", 1, Tuning::fast()).await?;
    let mut control = lab.control(0).await?;
    let token = client::join_token(&mut control, "worker", false).await?;
    let (creds, worker_id) = client::join_worker(lab.addr(0), &token, "w1").await?;
    let agent = tokio::spawn(hold_session(client::channel(lab.addr(0), &creds).await?));

    let out = lab
        .cli(&[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "2",
            "--no-resolve-image",
            "busybox",
        ])
        .await?;
    assert!(out.success, "service create: {out:?}");
    let mut assigned = Vec::new();
    for _ in 0..100 {
        let out = lab.cli(&["service", "ps", "-q", "web"]).await?;
        let request = pb::ListTasksRequest {
            filters: [("node".to_string(), worker_id.clone())].into(),
        };
        assigned = control.list_tasks(request).await?.into_inner().tasks;
        if assigned.len() == 2 && out.stdout.lines().count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if assigned.len() != 2 {
        bail!("web's 2 tasks were not assigned to w1: {assigned:?}");
    }

    // The table: service ps's columns, one row per task, on w1.
    let out = lab.cli(&["node", "ps", "w1"]).await?;
    assert!(out.success, "node ps w1: {out:?}");
    println!("{}", out.stdout);
    let header: Vec<&str> = out
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .split("  ")
        .filter(|c| !c.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        [
            "ID",
            "NAME",
            "IMAGE",
            "NODE",
            "DESIRED STATE",
            "CURRENT STATE",
            "ERROR"
        ],
        "{}",
        out.stdout
    );
    let table = rows(&out.stdout);
    assert_eq!(table.len(), 2, "{}", out.stdout);
    for (slot, row) in table.iter().enumerate() {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[0].len(), 12, "ids are truncated: {row}");
        assert_eq!(cols[1], format!("web.{}", slot + 1), "{row}");
        assert_eq!(cols[2], "busybox", "{row}");
        assert_eq!(cols[3], "w1", "{row}");
        assert_eq!(cols[4], "Running", "{row}");
    }

    // -q and --no-trunc: the full ids, the same as service ps; by id prefix and with duplicates.
    let mut ids: Vec<String> = assigned.iter().map(|t| t.id.clone()).collect();
    ids.sort();
    let out = lab
        .cli(&["node", "ps", "-q", "w1", &worker_id[..6], "w1"])
        .await?;
    assert!(out.success, "node ps -q: {out:?}");
    let mut listed: Vec<String> = out.stdout.lines().map(str::to_string).collect();
    listed.sort();
    assert_eq!(listed, ids);
    let out = lab.cli(&["node", "ps", "--no-trunc", "w1"]).await?;
    assert!(out.success, "node ps --no-trunc: {out:?}");
    assert!(
        ids.iter().all(|id| out.stdout.contains(id.as_str())),
        "{}",
        out.stdout
    );

    // JSON: the tasks as the API has them.
    let out = lab.cli(&["node", "ps", "--format", "json", "w1"]).await?;
    assert!(out.success, "node ps --format json: {out:?}");
    let tasks: serde_json::Value =
        serde_json::from_str(&out.stdout).with_context(|| format!("JSON:\n{}", out.stdout))?;
    let tasks = tasks.as_array().context("not an array")?;
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    assert!(
        tasks.iter().all(|t| t["node_id"] == worker_id.as_str()),
        "{tasks:?}"
    );

    // Filters.
    let out = lab
        .cli(&["node", "ps", "-q", "-f", "desired-state=shutdown", "w1"])
        .await?;
    assert!(out.success && out.stdout.is_empty(), "{out:?}");
    let out = lab
        .cli(&["node", "ps", "-q", "-f", "service=web", "w1"])
        .await?;
    assert!(out.success && out.stdout.lines().count() == 2, "{out:?}");
    let out = lab.cli(&["node", "ps", "-f", "node=w1", "w1"]).await?;
    assert!(
        !out.success && out.stderr.contains("unknown filter \"node\""),
        "{out:?}"
    );

    // `self` (also the default) is the manager the CLI talks to: it runs no agent, so no tasks.
    for args in [
        &["node", "ps"][..],
        &["node", "ps", "self"][..],
        &["node", "ps", "m1"][..],
    ] {
        let out = lab.cli(args).await?;
        assert!(out.success, "{args:?}: {out:?}");
        assert!(
            out.stdout.starts_with("ID ") && rows(&out.stdout).is_empty(),
            "{args:?}: {}",
            out.stdout
        );
    }

    // An unknown node is reported; the others are still listed; the exit code says it failed.
    let out = lab.cli(&["node", "ps", "-q", "nope", "w1"]).await?;
    assert!(!out.success, "{out:?}");
    assert!(out.stderr.starts_with("error: nope: "), "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);

    agent.abort();
    lab.passed();
    Ok(())
}

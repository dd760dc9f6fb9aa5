//! The `cluster` CLI against a real cluster.

use anyhow::{Context, Result, anyhow};
use e2e::client::{CALL_TIMEOUT, describe, list_nodes, node_labels};
use e2e::{Lab, Tuning};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_lists_updates_inspects_and_refuses_to_demote_the_last_manager() -> Result<()> {
    let mut lab = Lab::cluster("cli", 3, Tuning::fast()).await?;

    let out = lab.cli(&["node", "ls"]).await?;
    assert!(out.success, "node ls: {out:?}");
    println!("{}", out.stdout);
    for host in ["m1", "m2", "m3"] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.split_whitespace().any(|w| w == host)),
            "node ls lacks {host}:\n{}",
            out.stdout
        );
    }

    let out = lab.cli(&["node", "ls", "--format", "json"]).await?;
    assert!(out.success, "node ls --format json: {out:?}");
    let nodes: serde_json::Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("node ls JSON:\n{}", out.stdout))?;
    let nodes = nodes
        .as_array()
        .ok_or_else(|| anyhow!("node ls JSON is not an array: {nodes}"))?;
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let mut hosts: Vec<&str> = nodes
        .iter()
        .filter_map(|n| n["hostname"].as_str())
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["m1", "m2", "m3"]);
    assert!(nodes.iter().all(|n| n["role"] == "manager"), "{nodes:?}");
    assert_eq!(
        nodes
            .iter()
            .filter(|n| n["manager"]["leader"] == true)
            .count(),
        1,
        "{nodes:?}"
    );

    let out = lab
        .cli(&["node", "update", "--label-add", "zone=a", "m2"])
        .await?;
    assert!(out.success, "node update: {out:?}");
    let out = lab.cli(&["node", "inspect", "m2"]).await?;
    assert!(out.success, "node inspect: {out:?}");
    let inspected: serde_json::Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("inspect JSON:\n{}", out.stdout))?;
    assert_eq!(inspected[0]["hostname"], "m2", "{inspected}");
    assert_eq!(inspected[0]["labels"]["zone"], "a", "{inspected}");
    // The API agrees.
    let labels = node_labels(&mut lab.control(2).await?, "m2", CALL_TIMEOUT)
        .await
        .map_err(|s| anyhow!(describe(&s)))?;
    assert_eq!(labels.get("zone").map(String::as_str), Some("a"));

    let out = lab.cli(&["info"]).await?;
    assert!(out.success, "info: {out:?}");
    let info = lab.info(0).await?;
    assert!(
        out.stdout.contains(&info.cluster_id),
        "info does not show the cluster id:\n{}",
        out.stdout
    );

    // A single-manager cluster refuses to demote its only manager, with a clear error.
    let mut solo = Lab::cluster("cli-solo", 1, Tuning::fast()).await?;
    let out = solo.cli(&["node", "demote", "m1"]).await?;
    println!("demote the last manager: {out:?}");
    assert!(!out.success, "demoting the last manager succeeded: {out:?}");
    assert!(
        out.stderr.contains("last manager"),
        "unclear error: {}",
        out.stderr
    );
    let nodes = list_nodes(&mut solo.control(0).await?, CALL_TIMEOUT)
        .await
        .map_err(|s| anyhow!(describe(&s)))?;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].role, "manager", "{nodes:?}");
    lab.passed();
    solo.passed();
    Ok(())
}

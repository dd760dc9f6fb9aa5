//! The control plane end to end: real `cluster-manager` processes over TCP + mTLS on 127.0.0.1.
//!
//! Each test builds its own cluster (temp dirs, free ports), so the tests run in parallel.
//! Build the binaries first: `cargo build --workspace --bins`, then
//! `cargo test -p e2e -- --nocapture`.

use anyhow::{Context, Result, anyhow, ensure};
use e2e::client::{self, CALL_TIMEOUT, describe, join_token, list_nodes, node_labels, request_certificate, write_label};
use e2e::lab::CONVERGE_TIMEOUT;
use e2e::writes::first_accepted_write;
use e2e::{Lab, Tuning, eventually, expect_code, summary};
use identity::{Credentials, JoinToken};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

/// The node record the tests write labels on (the first manager, by hostname).
const TARGET: &str = "m1";

fn others(n: usize, except: usize) -> Vec<usize> {
    (0..n).filter(|&i| i != except).collect()
}

// -------------------------------------------------------------------------------------------------
// a. Three managers: replication, failover, catch-up through a snapshot

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_managers_fail_over_and_catch_up_through_a_snapshot() -> Result<()> {
    // Snapshot every 50 entries and keep no log behind it: a manager that misses 300 entries can
    // only catch up from a snapshot.
    let tuning = Tuning::fast().snapshots(50, 0);
    let mut lab = Lab::cluster("failover", 3, tuning).await?;

    // Info lists three reachable voters, one of them leader, the same cluster everywhere.
    let leader = lab.wait_leader(CONVERGE_TIMEOUT).await?;
    let info = lab.info(leader).await?;
    println!("managers: {:?}", summary(&info));
    assert_eq!(info.managers.len(), 3, "{:?}", summary(&info));
    for m in &info.managers {
        assert_eq!((m.reachability.as_str(), m.membership.as_str()), ("reachable", "voter"), "{m:?}");
    }
    assert_eq!(info.managers.iter().filter(|m| m.leader).count(), 1, "{:?}", summary(&info));
    let mut hostnames: Vec<&str> = info.managers.iter().map(|m| m.hostname.as_str()).collect();
    hostnames.sort();
    assert_eq!(hostnames, ["m1", "m2", "m3"]);
    for i in 0..3 {
        let other = lab.info(i).await?;
        assert_eq!(other.cluster_id, info.cluster_id);
        assert_eq!(other.answered_by, lab.managers[i].raft_id()?);
        assert_eq!(other.leader_id, info.leader_id, "{} sees another leader", lab.hostname(i));
    }

    // A write through a follower is readable on all three.
    let follower = others(3, leader)[0];
    let mut via_follower = lab.control(follower).await?;
    write_label(&mut via_follower, TARGET, "via-follower", "yes", CALL_TIMEOUT)
        .await
        .map_err(|s| anyhow!("write through follower {}: {}", lab.hostname(follower), describe(&s)))?;
    for i in 0..3 {
        let labels = node_labels(&mut lab.control(i).await?, TARGET, CALL_TIMEOUT)
            .await
            .map_err(|s| anyhow!("read on {}: {}", lab.hostname(i), describe(&s)))?;
        assert_eq!(labels.get("via-follower").map(String::as_str), Some("yes"), "read on {}", lab.hostname(i));
    }

    // Kill -9 the leader: a survivor accepts a write within a bounded time.
    let before_kill = lab.info(leader).await?;
    let killed_last_log = before_kill.raft_last_log_index;
    let survivors = others(3, leader);
    let mut clients = Vec::new();
    for &s in &survivors {
        clients.push(lab.control(s).await?);
    }
    let killed_at = Instant::now();
    lab.kill_9(leader)?;
    let (failover, by) = first_accepted_write(
        clients,
        TARGET,
        "after-kill",
        "yes",
        Duration::from_millis(500),
        killed_at,
        Duration::from_secs(15),
    )
    .await
    .context("a write after killing the leader")?;
    println!(
        "killed leader {} (last log index {killed_last_log}); first write accepted by {} after {failover:?}",
        lab.hostname(leader),
        lab.hostname(survivors[by])
    );
    let new_leader = lab.wait_leader(CONVERGE_TIMEOUT).await?;
    assert_ne!(new_leader, leader);

    // 300 more writes while the old leader is down.
    let mut control = lab.control(new_leader).await?;
    let mut written = BTreeMap::new();
    for n in 0..300 {
        let (key, value) = (format!("w-a-{n}"), format!("v{n}"));
        write_label(&mut control, TARGET, &key, &value, CALL_TIMEOUT)
            .await
            .map_err(|s| anyhow!("write {n} through the new leader: {}", describe(&s)))?;
        written.insert(key, value);
    }

    // The leader's log no longer holds what the killed manager lacks.
    let leader_info = eventually("the leader to purge its log", Duration::from_secs(20), Duration::from_millis(100), || {
        let lab = &lab;
        async move {
            let info = lab.info(new_leader).await?;
            ensure!(
                info.raft_purged_index > killed_last_log,
                "purged index {} (snapshot {}, last log {}) is not beyond {killed_last_log}",
                info.raft_purged_index,
                info.raft_snapshot_index,
                info.raft_last_log_index
            );
            Ok(info)
        }
    })
    .await?;
    println!(
        "leader {}: last log {}, snapshot {}, purged {} > killed manager's last log {killed_last_log}",
        lab.hostname(new_leader),
        leader_info.raft_last_log_index,
        leader_info.raft_snapshot_index,
        leader_info.raft_purged_index
    );

    // Restart the killed manager: it catches up (through a snapshot) and serves every write.
    lab.restart(leader)?;
    let caught_up = lab.wait_applied(leader, leader_info.raft_applied_index, CONVERGE_TIMEOUT).await?;
    println!(
        "{} caught up: applied {}, snapshot {}, last log {}",
        lab.hostname(leader),
        caught_up.raft_applied_index,
        caught_up.raft_snapshot_index,
        caught_up.raft_last_log_index
    );
    assert!(
        caught_up.raft_snapshot_index > killed_last_log,
        "the restarted manager's snapshot index {} should be beyond its old log ({killed_last_log}): it can only have caught up from the leader's snapshot",
        caught_up.raft_snapshot_index
    );
    let labels = node_labels(&mut lab.control(leader).await?, TARGET, CALL_TIMEOUT)
        .await
        .map_err(|s| anyhow!("read on the restarted manager: {}", describe(&s)))?;
    let missing: Vec<&String> = written.iter().filter(|(k, v)| labels.get(*k) != Some(*v)).map(|(k, _)| k).collect();
    assert!(missing.is_empty(), "{} writes missing on the restarted manager: {:?}", missing.len(), &missing[..missing.len().min(10)]);
    for key in ["via-follower", "after-kill"] {
        assert_eq!(labels.get(key).map(String::as_str), Some("yes"), "{key} on the restarted manager");
    }
    let info = lab.wait_voters(3, CONVERGE_TIMEOUT).await?;
    println!("after restart: {:?}", summary(&info));
    lab.passed();
    Ok(())
}

// -------------------------------------------------------------------------------------------------
// b. Kill -9 every manager during a stream of writes: no acknowledged write is lost

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_write_survives_killing_all_managers() -> Result<()> {
    let mut lab = Lab::cluster("crash-all", 3, Tuning::fast()).await?;
    const WRITERS: usize = 6;

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        // Writers talk to every manager: leader and followers (forwarded writes).
        let mut control = lab.control(w % 3).await?;
        let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (key, value) = (format!("w-{w}-{n}"), format!("{n}"));
                n += 1;
                match write_label(&mut control, TARGET, &key, &value, Duration::from_secs(3)).await {
                    Ok(node) => {
                        assert_eq!(node.labels.get(&key), Some(&value), "the acknowledged node lacks {key}");
                        acked.lock().unwrap().push((key, value));
                    }
                    Err(status) => {
                        failed.lock().unwrap().push(describe(&status));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    // Let the writes flow, then kill all three as close together as we can.
    let flowing = eventually("writes to flow", Duration::from_secs(20), Duration::from_millis(50), || {
        let acked = acked.clone();
        async move {
            let n = acked.lock().unwrap().len();
            ensure!(n >= 50, "{n} writes acknowledged so far");
            Ok(n)
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kill = acked.lock().unwrap().len();
    for i in 0..3 {
        lab.kill_9(i)?;
    }
    let at_kill = acked.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(10), writer).await.context("a writer did not stop")??;
    }
    let acked = acked.lock().unwrap().clone();
    let failed = failed.lock().unwrap().clone();
    println!(
        "acknowledged {} writes ({flowing} when flowing, {before_kill} just before the kill, {at_kill} right after), {} failed; first failure: {:?}",
        acked.len(),
        failed.len(),
        failed.first()
    );
    ensure!(acked.len() >= 50, "too few writes were acknowledged to prove anything");

    // Restart all three: every acknowledged write is there, on every manager.
    for i in 0..3 {
        lab.restart(i)?;
    }
    let leader = lab.wait_leader(CONVERGE_TIMEOUT).await?;
    println!("after restarting all: leader {}", lab.hostname(leader));
    for i in 0..3 {
        let lab = &lab;
        let labels = eventually(&format!("a read on {}", lab.hostname(i)), CONVERGE_TIMEOUT, Duration::from_millis(100), || async move {
            node_labels(&mut lab.control(i).await?, TARGET, Duration::from_secs(5))
                .await
                .map_err(|s| anyhow!("{}", describe(&s)))
        })
        .await?;
        let missing: Vec<&String> = acked.iter().filter(|(k, v)| labels.get(k) != Some(v)).map(|(k, _)| k).collect();
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged writes are missing on {}: {:?}",
            missing.len(),
            acked.len(),
            lab.hostname(i),
            &missing[..missing.len().min(20)]
        );
    }
    lab.passed();
    Ok(())
}

// -------------------------------------------------------------------------------------------------
// c. Security: roles, join tokens, foreign certificates, rotation

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refuses_workers_bad_tokens_foreign_admins_and_rotated_tokens() -> Result<()> {
    let mut lab = Lab::cluster("security", 1, Tuning::fast()).await?;
    let addr = lab.addr(0).to_string();
    let mut admin = lab.control(0).await?;
    let digest = lab.admin().credentials.ca_digest()?;
    let worker_token = join_token(&mut admin, "worker", false).await.map_err(|s| anyhow!(describe(&s)))?;
    let manager_token = join_token(&mut admin, "manager", false).await.map_err(|s| anyhow!(describe(&s)))?;
    assert_ne!(worker_token, manager_token);
    assert_eq!(JoinToken::parse(&worker_token)?.ca_digest, digest);

    // A worker certificate is refused on the Control API, and writes nothing.
    let (worker_creds, worker_id) = client::join_worker(&addr, &worker_token, "w1").await?;
    assert_eq!(worker_creds.identity()?.role, identity::Role::Worker);
    let mut as_worker = client::control(&addr, &worker_creds).await?;
    let status = expect_code(
        write_label(&mut as_worker, TARGET, "worker-wrote", "1", CALL_TIMEOUT).await,
        Code::PermissionDenied,
        "UpdateNode with a worker certificate",
    )?;
    println!("worker UpdateNode: {}", describe(&status));
    expect_code(client::info(&mut as_worker, CALL_TIMEOUT).await, Code::PermissionDenied, "Info as a worker")?;
    expect_code(list_nodes(&mut as_worker, CALL_TIMEOUT).await, Code::PermissionDenied, "ListNodes as a worker")?;
    expect_code(join_token(&mut as_worker, "manager", false).await, Code::PermissionDenied, "GetJoinToken as a worker")?;
    expect_code(join_token(&mut as_worker, "worker", true).await, Code::PermissionDenied, "rotating a token as a worker")?;
    for node in [TARGET, worker_id.as_str()] {
        let labels = node_labels(&mut admin, node, CALL_TIMEOUT).await.map_err(|s| anyhow!(describe(&s)))?;
        assert!(!labels.contains_key("worker-wrote"), "the worker's write landed on {node}: {labels:?}");
    }
    assert_eq!(join_token(&mut admin, "worker", false).await.map_err(|s| anyhow!(describe(&s)))?, worker_token);

    // Bad join tokens are refused at IssueCertificate with a clear error, and add no node.
    let nodes_before = list_nodes(&mut admin, CALL_TIMEOUT).await.map_err(|s| anyhow!(describe(&s)))?;
    let mut other = Lab::cluster("security-other", 1, Tuning::fast()).await?;
    let other_digest = other.admin().credentials.ca_digest()?;
    let wrong_secret = JoinToken::format(&digest, &JoinToken::generate_secret());
    let (result, _) = request_certificate(&addr, &wrong_secret, None, "bad-secret", "127.0.0.9").await?;
    let status = expect_code(result, Code::PermissionDenied, "a token with a wrong secret")?;
    assert!(status.message().contains("secret"), "unclear error: {}", describe(&status));
    println!("wrong secret: {}", describe(&status));

    let secret = JoinToken::parse(&worker_token)?.secret;
    let wrong_ca = JoinToken::format(&other_digest, &secret);
    // A joining node pins the digest in its token: it refuses to talk to this cluster at all.
    match request_certificate(&addr, &wrong_ca, None, "bad-ca", "127.0.0.9").await {
        Err(e) => {
            let text = format!("{e:#}");
            println!("wrong CA digest (pinned): {text}");
            assert!(text.contains("CA"), "unclear error: {text}");
        }
        Ok((result, _)) => panic!("a client pinning another cluster's CA reached this cluster: {result:?}"),
    }
    // And if it talks anyway, the manager refuses the token.
    let (result, _) = request_certificate(&addr, &wrong_ca, Some(&digest), "bad-ca", "127.0.0.9").await?;
    let status = expect_code(result, Code::PermissionDenied, "a token with another cluster's CA digest")?;
    assert!(status.message().contains("CA"), "unclear error: {}", describe(&status));
    println!("wrong CA digest (sent anyway): {}", describe(&status));

    for malformed in ["CLSTR-1-abc-def", "SWMTKN-1-xyz", "", &worker_token[..worker_token.len() - 30]] {
        let (result, _) = request_certificate(&addr, malformed, Some(&digest), "bad-malformed", "127.0.0.9").await?;
        let status = expect_code(result, Code::InvalidArgument, &format!("malformed token {malformed:?}"))?;
        assert!(status.message().contains("malformed"), "unclear error for {malformed:?}: {}", describe(&status));
    }
    let nodes_after = list_nodes(&mut admin, CALL_TIMEOUT).await.map_err(|s| anyhow!(describe(&s)))?;
    assert_eq!(nodes_after.len(), nodes_before.len(), "refused joins added nodes: {nodes_after:?}");
    assert!(nodes_after.iter().all(|n| !n.hostname.starts_with("bad-")), "{nodes_after:?}");

    // The admin certificate of another cluster is refused by this one.
    let foreign = other.admin().credentials.clone();
    // (It works on its own cluster: the refusal below is about the cluster, not the certificate.)
    let mut own = client::control(other.addr(0), &foreign).await?;
    write_label(&mut own, TARGET, "own-cluster", "1", CALL_TIMEOUT).await.map_err(|s| anyhow!(describe(&s)))?;
    // As is, it does not even trust this cluster's managers.
    match client::control(&addr, &foreign).await {
        Err(e) => println!("foreign admin (own CA): refused at connect: {e:#}"),
        Ok(mut c) => {
            let result = write_label(&mut c, TARGET, "foreign", "1", CALL_TIMEOUT).await;
            assert!(result.is_err(), "a foreign admin (own CA) wrote to this cluster: {result:?}");
            println!("foreign admin (own CA): {}", describe(&result.unwrap_err()));
        }
    }
    // Trusting this cluster's CA but presenting its own certificate: the manager refuses it.
    let mixed = Credentials { ca_cert_pem: lab.admin().credentials.ca_cert_pem.clone(), ..foreign };
    match client::control(&addr, &mixed).await {
        Err(e) => println!("foreign admin certificate: refused at connect: {e:#}"),
        Ok(mut c) => {
            let result = write_label(&mut c, TARGET, "foreign", "1", CALL_TIMEOUT).await;
            assert!(result.is_err(), "a foreign admin certificate wrote to this cluster: {result:?}");
            println!("foreign admin certificate: {}", describe(&result.unwrap_err()));
            let result = client::info(&mut c, CALL_TIMEOUT).await;
            assert!(result.is_err(), "a foreign admin certificate read Info: {result:?}");
        }
    }
    let labels = node_labels(&mut admin, TARGET, CALL_TIMEOUT).await.map_err(|s| anyhow!(describe(&s)))?;
    assert!(!labels.contains_key("foreign"), "{labels:?}");

    // `cluster join-token --rotate worker` makes the old worker token useless.
    let out = lab.cli(&["join-token", "--rotate", "-q", "worker"]).await?;
    assert!(out.success, "join-token --rotate failed: {out:?}");
    let rotated = out.stdout.trim().to_string();
    JoinToken::parse(&rotated).with_context(|| format!("the rotated token {rotated:?}"))?;
    assert_ne!(rotated, worker_token);
    let (result, _) = request_certificate(&addr, &worker_token, None, "old-token", "127.0.0.9").await?;
    let status = expect_code(result, Code::PermissionDenied, "the worker token from before the rotation")?;
    println!("rotated-out token: {}", describe(&status));
    client::join_worker(&addr, &rotated, "w2").await.context("joining with the rotated token")?;
    let still = join_token(&mut admin, "manager", false).await.map_err(|s| anyhow!(describe(&s)))?;
    assert_eq!(still, manager_token, "rotating the worker token changed the manager token");
    lab.passed();
    other.passed();
    Ok(())
}

// -------------------------------------------------------------------------------------------------
// d. No quorum: bounded failure, then recovery

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_quorum_writes_fail_fast_and_recover() -> Result<()> {
    let tuning = Tuning::fast();
    let quorum_timeout = tuning.quorum_timeout();
    let bound = quorum_timeout + Duration::from_secs(2);
    let mut lab = Lab::cluster("no-quorum", 3, tuning).await?;
    let leader = lab.wait_leader(CONVERGE_TIMEOUT).await?;
    let followers = others(3, leader);
    let mut on_leader = lab.control(leader).await?;
    write_label(&mut on_leader, TARGET, "before", "1", CALL_TIMEOUT).await.map_err(|s| anyhow!(describe(&s)))?;

    // The leader loses both followers: its writes and reads fail with "no quorum", in bounded time.
    for &f in &followers {
        lab.kill_9(f)?;
    }
    let started = Instant::now();
    let result = write_label(&mut on_leader, TARGET, "lonely-leader", "1", bound + Duration::from_secs(10)).await;
    let took = started.elapsed();
    let status = expect_code(result, Code::Unavailable, "a write on a leader without quorum")?;
    println!("write on the isolated leader failed after {took:?}: {}", describe(&status));
    assert!(status.message().starts_with("no quorum"), "{}", describe(&status));
    assert!(took <= bound, "the write took {took:?} to fail (quorum timeout {quorum_timeout:?})");
    let started = Instant::now();
    let result = node_labels(&mut on_leader, TARGET, bound + Duration::from_secs(10)).await;
    let took = started.elapsed();
    let status = expect_code(result, Code::Unavailable, "a read on a leader without quorum")?;
    assert!(status.message().starts_with("no quorum"), "{}", describe(&status));
    assert!(took <= bound, "the read took {took:?} to fail");

    // One follower back: writes succeed again.
    lab.restart(followers[0])?;
    let started = Instant::now();
    eventually("a write once quorum is back", CONVERGE_TIMEOUT, Duration::from_millis(100), || {
        let lab = &lab;
        async move {
            let mut c = lab.control(leader).await?;
            write_label(&mut c, TARGET, "quorum-back", "1", Duration::from_secs(3)).await.map_err(|s| anyhow!(describe(&s)))
        }
    })
    .await?;
    println!("writes accepted {:?} after restarting {}", started.elapsed(), lab.hostname(followers[0]));

    // A follower that loses the leader (and so the quorum): writes through it fail the same way.
    let alive = followers[0];
    let mut on_follower = lab.control(alive).await?;
    write_label(&mut on_follower, TARGET, "via-follower", "1", CALL_TIMEOUT).await.map_err(|s| anyhow!(describe(&s)))?;
    lab.kill_9(leader)?;
    let started = Instant::now();
    let result = write_label(&mut on_follower, TARGET, "lonely-follower", "1", bound + Duration::from_secs(10)).await;
    let took = started.elapsed();
    let status = expect_code(result, Code::Unavailable, "a write on a follower without quorum")?;
    println!("write on the isolated follower failed after {took:?}: {}", describe(&status));
    assert!(status.message().starts_with("no quorum"), "{}", describe(&status));
    assert!(took <= bound, "the write took {took:?} to fail (quorum timeout {quorum_timeout:?})");

    // The third manager back: the pair elects a leader and accepts writes.
    lab.restart(followers[1])?;
    eventually("a write once quorum is back again", CONVERGE_TIMEOUT, Duration::from_millis(100), || {
        let lab = &lab;
        async move {
            let mut c = lab.control(alive).await?;
            write_label(&mut c, TARGET, "quorum-back-2", "1", Duration::from_secs(3)).await.map_err(|s| anyhow!(describe(&s)))
        }
    })
    .await?;
    let labels = node_labels(&mut lab.control(followers[1]).await?, TARGET, CALL_TIMEOUT)
        .await
        .map_err(|s| anyhow!(describe(&s)))?;
    for key in ["before", "quorum-back", "via-follower", "quorum-back-2"] {
        assert!(labels.contains_key(key), "{key} missing: {labels:?}");
    }
    lab.passed();
    Ok(())
}

// -------------------------------------------------------------------------------------------------
// e. The CLI against a real cluster

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_lists_updates_inspects_and_refuses_to_demote_the_last_manager() -> Result<()> {
    let mut lab = Lab::cluster("cli", 3, Tuning::fast()).await?;

    let out = lab.cli(&["node", "ls"]).await?;
    assert!(out.success, "node ls: {out:?}");
    println!("{}", out.stdout);
    for host in ["m1", "m2", "m3"] {
        assert!(out.stdout.lines().any(|l| l.split_whitespace().any(|w| w == host)), "node ls lacks {host}:\n{}", out.stdout);
    }

    let out = lab.cli(&["node", "ls", "--format", "json"]).await?;
    assert!(out.success, "node ls --format json: {out:?}");
    let nodes: serde_json::Value = serde_json::from_str(&out.stdout).with_context(|| format!("node ls JSON:\n{}", out.stdout))?;
    let nodes = nodes.as_array().ok_or_else(|| anyhow!("node ls JSON is not an array: {nodes}"))?;
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let mut hosts: Vec<&str> = nodes.iter().filter_map(|n| n["hostname"].as_str()).collect();
    hosts.sort();
    assert_eq!(hosts, ["m1", "m2", "m3"]);
    assert!(nodes.iter().all(|n| n["role"] == "manager"), "{nodes:?}");
    assert_eq!(nodes.iter().filter(|n| n["manager"]["leader"] == true).count(), 1, "{nodes:?}");

    let out = lab.cli(&["node", "update", "--label-add", "zone=a", "m2"]).await?;
    assert!(out.success, "node update: {out:?}");
    let out = lab.cli(&["node", "inspect", "m2"]).await?;
    assert!(out.success, "node inspect: {out:?}");
    let inspected: serde_json::Value = serde_json::from_str(&out.stdout).with_context(|| format!("inspect JSON:\n{}", out.stdout))?;
    assert_eq!(inspected[0]["hostname"], "m2", "{inspected}");
    assert_eq!(inspected[0]["labels"]["zone"], "a", "{inspected}");
    // The API agrees.
    let labels = node_labels(&mut lab.control(2).await?, "m2", CALL_TIMEOUT).await.map_err(|s| anyhow!(describe(&s)))?;
    assert_eq!(labels.get("zone").map(String::as_str), Some("a"));

    let out = lab.cli(&["info"]).await?;
    assert!(out.success, "info: {out:?}");
    let info = lab.info(0).await?;
    assert!(out.stdout.contains(&info.cluster_id), "info does not show the cluster id:\n{}", out.stdout);

    // A single-manager cluster refuses to demote its only manager, with a clear error.
    let mut solo = Lab::cluster("cli-solo", 1, Tuning::fast()).await?;
    let out = solo.cli(&["node", "demote", "m1"]).await?;
    println!("demote the last manager: {out:?}");
    assert!(!out.success, "demoting the last manager succeeded: {out:?}");
    assert!(out.stderr.contains("last manager"), "unclear error: {}", out.stderr);
    let nodes = list_nodes(&mut solo.control(0).await?, CALL_TIMEOUT).await.map_err(|s| anyhow!(describe(&s)))?;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].role, "manager", "{nodes:?}");
    lab.passed();
    solo.passed();
    Ok(())
}

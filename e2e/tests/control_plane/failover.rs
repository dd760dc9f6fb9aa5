//! Three managers: replication through a follower, kill -9 of the leader, catch-up through a snapshot.

use super::{TARGET, others};
use anyhow::{Context, Result, anyhow, ensure};
use e2e::client::{CALL_TIMEOUT, describe, node_labels, write_label};
use e2e::lab::CONVERGE_TIMEOUT;
use e2e::writes::first_accepted_write;
use e2e::{Lab, Tuning, eventually, summary};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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
        assert_eq!(
            (m.reachability.as_str(), m.membership.as_str()),
            ("reachable", "voter"),
            "{m:?}"
        );
    }
    assert_eq!(
        info.managers.iter().filter(|m| m.leader).count(),
        1,
        "{:?}",
        summary(&info)
    );
    let mut hostnames: Vec<&str> = info.managers.iter().map(|m| m.hostname.as_str()).collect();
    hostnames.sort();
    assert_eq!(hostnames, ["m1", "m2", "m3"]);
    for i in 0..3 {
        let other = lab.info(i).await?;
        assert_eq!(other.cluster_id, info.cluster_id);
        assert_eq!(other.answered_by, lab.managers[i].raft_id()?);
        assert_eq!(
            other.leader_id,
            info.leader_id,
            "{} sees another leader",
            lab.hostname(i)
        );
    }

    // A write through a follower is readable on all three.
    let follower = others(3, leader)[0];
    let mut via_follower = lab.control(follower).await?;
    write_label(
        &mut via_follower,
        TARGET,
        "via-follower",
        "yes",
        CALL_TIMEOUT,
    )
    .await
    .map_err(|s| {
        anyhow!(
            "write through follower {}: {}",
            lab.hostname(follower),
            describe(&s)
        )
    })?;
    for i in 0..3 {
        let labels = node_labels(&mut lab.control(i).await?, TARGET, CALL_TIMEOUT)
            .await
            .map_err(|s| anyhow!("read on {}: {}", lab.hostname(i), describe(&s)))?;
        assert_eq!(
            labels.get("via-follower").map(String::as_str),
            Some("yes"),
            "read on {}",
            lab.hostname(i)
        );
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
    let leader_info = eventually(
        "the leader to purge its log",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
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
        },
    )
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
    let caught_up = lab
        .wait_applied(leader, leader_info.raft_applied_index, CONVERGE_TIMEOUT)
        .await?;
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
    let missing: Vec<&String> = written
        .iter()
        .filter(|(k, v)| labels.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty(),
        "{} writes missing on the restarted manager: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    for key in ["via-follower", "after-kill"] {
        assert_eq!(
            labels.get(key).map(String::as_str),
            Some("yes"),
            "{key} on the restarted manager"
        );
    }
    let info = lab.wait_voters(3, CONVERGE_TIMEOUT).await?;
    println!("after restart: {:?}", summary(&info));
    lab.passed();
    Ok(())
}

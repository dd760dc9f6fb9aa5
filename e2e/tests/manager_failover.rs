//! Agents fail over to the new leader when their manager dies, with real processes: a 3-host lab
//! (network namespaces, a real registry with busybox, runc containers) with a manager in every
//! host (h1 creates the cluster, h2 and h3 join with the manager token) and an agent in every
//! host. The agents joined through h1 and learnt the other managers from their session.
//!
//! Scenario: 3 replicas run on the agents; kill -9 the leader (every agent's session is with
//! it); within a bounded time every agent opens a session with the new leader (its log says so),
//! its node is READY, no node was ever marked DOWN, the tasks were not replaced (same task ids,
//! same container processes per runc), and a service created after the failover runs.
//!
//! Needs root, iproute2, runc, docker-registry and busybox-static (skips without them; fails
//! under CI=true). Build the binaries first: `cargo build --workspace --bins`.

use e2e::netlab::{self, NetLab};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const CONVERGE: Duration = Duration::from_secs(30);
/// How long an agent may take to open a session with the new leader after the kill.
const FAILOVER: Duration = Duration::from_secs(10);
/// The managers' default node grace (3 agent heartbeat periods of 1 s): past it, a new leader
/// that had not heard from a node would have marked it DOWN and replaced its tasks.
const GRACE: Duration = Duration::from_secs(3);
const HTTPD: &[&str] = &["httpd", "-f", "-p", "8080"];
const HOSTS: usize = 3;

fn tasks(lab: &NetLab, service: &str) -> anyhow::Result<Vec<Value>> {
    Ok(lab
        .cli_json(&["service", "ps", service])?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn is_running(t: &Value) -> bool {
    t["desired_state"] == "running" && t["state"] == "running"
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Polls until `check` accepts something `probe` returns; panics with `what`, the last answer
/// and the lab's logs after `timeout`.
fn wait_for<T>(
    lab: &NetLab,
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> anyhow::Result<Option<T>>,
) -> T {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        match probe() {
            Ok(Some(v)) => {
                eprintln!("{what}: {:.2}s", started.elapsed().as_secs_f64());
                return v;
            }
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what} (last error: {last})\nlogs:\n{}",
            lab.logs_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The running tasks of `service`: task id -> (hostname, container id), once there are `n`.
fn running_tasks(lab: &NetLab, service: &str, n: usize) -> BTreeMap<String, (String, String)> {
    wait_for(
        lab,
        &format!("{n} running tasks of {service}"),
        CONVERGE,
        || {
            let names = lab.node_names()?;
            let list = tasks(lab, service)?;
            let running: BTreeMap<String, (String, String)> = list
                .iter()
                .filter(|t| is_running(t))
                .map(|t| {
                    let host = names.get(&text(&t["node_id"])).cloned().unwrap_or_default();
                    (text(&t["id"]), (host, text(&t["container_id"])))
                })
                .collect();
            Ok((running.len() == n).then_some(running))
        },
    )
}

/// The host index of an agent's hostname `h<i>`.
fn host_index(hostname: &str) -> usize {
    hostname
        .strip_prefix('h')
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("not an agent host: {hostname}"))
}

/// The manager addresses of the "session open" lines of agent `i`'s log, in order.
fn sessions_opened(lab: &NetLab, i: usize) -> Vec<String> {
    std::fs::read_to_string(lab.agent_log(i))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("session open"))
        .filter_map(|l| {
            let rest = &l[l.find(" addr=")? + 6..];
            Some(rest.split_whitespace().next()?.to_string())
        })
        .collect()
}

/// The leader's address as the managers report it (none while there is no leader).
fn leader_addr(lab: &NetLab) -> anyhow::Result<Option<String>> {
    let info = lab.cli_json(&["info"])?;
    let addr = text(&info["leader_addr"]);
    Ok((info["leader_id"].as_u64().unwrap_or(0) != 0 && !addr.is_empty()).then_some(addr))
}

#[test]
fn agents_fail_over_to_the_new_leader() {
    let test = "agents_fail_over_to_the_new_leader";
    if !netlab::require(test) {
        return;
    }
    let name = "e2efo";
    let started = Instant::now();
    let mut lab = NetLab::up_with_managers(name, HOSTS, 3).expect("lab up");
    let image = lab.busybox();

    // 1. Three replicas on the agents.
    let mut web = vec![
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "3",
    ];
    web.push(image.as_str());
    web.extend_from_slice(HTTPD);
    lab.cli(&web).expect("service create web");
    let before = running_tasks(&lab, "web", 3);
    let processes: BTreeMap<String, (i32, u64)> = before
        .values()
        .map(|(host, c)| {
            (
                c.clone(),
                lab.container_process(host_index(host), c)
                    .expect("container process"),
            )
        })
        .collect();

    // 2. Every agent's session is with the leader (waited for: an election while the managers
    //    settled would move the sessions).
    let leader = wait_for(
        &lab,
        "every agent's session with the leader",
        CONVERGE,
        || {
            Ok(leader_addr(&lab)?.filter(|leader| {
                (1..=HOSTS).all(|i| sessions_opened(&lab, i).last() == Some(leader))
            }))
        },
    );
    let dead = lab
        .manager_host(&leader)
        .unwrap_or_else(|| panic!("leader {leader} is not one of the lab's managers"));
    let opened_before: Vec<usize> = (1..=HOSTS)
        .map(|i| sessions_opened(&lab, i).len())
        .collect();

    // Every agent knows every manager (it joined through h1 only), also in its saved config.
    for i in 1..=HOSTS {
        let path = lab.agent_dir(i).join("agent.json");
        let config: Value = serde_json::from_slice(&std::fs::read(&path).expect("agent.json"))
            .expect("agent.json is JSON");
        let mut known: Vec<String> = config["manager_addrs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        known.sort();
        let all: Vec<String> = (1..=3).map(|m| lab.manager_addr_of(m)).collect();
        assert_eq!(known, all, "manager addresses saved by agent h{i}");
    }

    // 3. kill -9 the leader; every agent opens a session with another manager.
    let killed = Instant::now();
    lab.kill_manager(dead).expect("kill -9 the leader");
    eprintln!("killed the leader, the manager in h{dead} ({leader})");
    let mut new_session = BTreeMap::new();
    while new_session.len() < HOSTS {
        for i in 1..=HOSTS {
            if new_session.contains_key(&i) {
                continue;
            }
            let opened = sessions_opened(&lab, i);
            if let Some(addr) = opened[opened_before[i - 1]..]
                .iter()
                .find(|a| **a != leader)
            {
                let took = killed.elapsed();
                eprintln!(
                    "agent h{i}: new session with {addr} {:.0} ms after the kill",
                    took.as_secs_f64() * 1000.0
                );
                new_session.insert(i, (addr.clone(), took));
            }
        }
        assert!(
            killed.elapsed() < FAILOVER,
            "agents without a new session {FAILOVER:?} after the kill (have {new_session:?}); logs:\n{}",
            lab.logs_tail(40)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let slowest = new_session
        .values()
        .map(|(_, t)| *t)
        .max()
        .unwrap_or_default();
    eprintln!(
        "failover: every agent has a new session {:.0} ms after the kill",
        slowest.as_secs_f64() * 1000.0
    );
    for i in 1..=HOSTS {
        let log = std::fs::read_to_string(lab.agent_log(i)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines
            .iter()
            .rposition(|l| l.contains("session open") && !l.contains(&format!("addr={leader} ")))
            .unwrap_or(0);
        let from = lines[..from]
            .iter()
            .rposition(|l| l.contains("session open"))
            .unwrap_or(0);
        eprintln!("agent h{i} across the failover:");
        for l in &lines[from..] {
            eprintln!("  {l}");
        }
    }

    // 4. The sessions are with the new leader, and every agent's node is READY.
    let new_leader = wait_for(&lab, "a new leader", CONVERGE, || {
        Ok(leader_addr(&lab)?.filter(|a| *a != leader))
    });
    eprintln!("new leader: {new_leader}");
    wait_for(
        &lab,
        "every agent's session with the new leader",
        CONVERGE,
        || {
            Ok((1..=HOSTS)
                .all(|i| sessions_opened(&lab, i).last() == Some(&new_leader))
                .then_some(()))
        },
    );
    wait_for(&lab, "every agent's node READY", CONVERGE, || {
        Ok((lab.ready_hosts()?.len() == HOSTS).then_some(()))
    });

    // 5. Past the new leader's grace, nothing was replaced: no node went DOWN, the same tasks
    //    run in the same container processes.
    let settle =
        (killed + GRACE + Duration::from_secs(1)).saturating_duration_since(Instant::now());
    std::thread::sleep(settle);
    for i in (1..=3).filter(|&i| i != dead) {
        let log = std::fs::read_to_string(lab.manager_log(i)).unwrap_or_default();
        assert!(
            !log.contains("node is down"),
            "the manager in h{i} marked a node down during the failover:\n{}",
            log.lines()
                .filter(|l| l.contains("node is down"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let ready = lab.ready_hosts().expect("node ls");
    assert_eq!(
        ready.len(),
        HOSTS,
        "READY nodes after the failover: {ready:?}"
    );
    let all = tasks(&lab, "web").expect("service ps web");
    let after: BTreeMap<String, (String, String)> = all
        .iter()
        .filter(|t| is_running(t))
        .map(|t| {
            let names = lab.node_names().expect("node ls");
            let host = names.get(&text(&t["node_id"])).cloned().unwrap_or_default();
            (text(&t["id"]), (host, text(&t["container_id"])))
        })
        .collect();
    assert_eq!(
        after, before,
        "the tasks changed across the failover; all tasks now: {all:#?}"
    );
    assert_eq!(
        all.len(),
        3,
        "tasks were added across the failover: {all:#?}"
    );
    for (host, container) in before.values() {
        assert_eq!(
            lab.container_process(host_index(host), container)
                .expect("container process"),
            processes[container],
            "container {container} on {host} is not the same process after the failover"
        );
    }

    // 6. A service created after the failover runs on the agents.
    let mut late = vec![
        "service",
        "create",
        "-d",
        "--name",
        "late",
        "--replicas",
        "3",
    ];
    late.push(image.as_str());
    late.extend_from_slice(HTTPD);
    lab.cli(&late).expect("service create late");
    running_tasks(&lab, "late", 3);

    lab.down();
    eprintln!("whole test: {:.1}s", started.elapsed().as_secs_f64());
    assert!(
        netlab::namespaces(name).is_empty(),
        "namespaces left after down"
    );
    assert!(!netlab::lab_dir(name).exists(), "lab dir left after down");
}

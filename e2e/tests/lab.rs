//! A 3-host lab in network namespaces: a 6-replica busybox httpd service spreads 2/2/2, and after
//! kill -9 of h3's agent its tasks are replaced on h1/h2. Needs root, iproute2, runc,
//! docker-registry and busybox-static (skips without them; fails under CI=true).
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use e2e::netlab::{self, NetLab};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const CONVERGE: Duration = Duration::from_secs(60);

/// Running tasks of `web` per hostname, and the raw task list (for messages).
fn running_per_host(lab: &NetLab) -> anyhow::Result<(BTreeMap<String, usize>, String)> {
    let tasks = lab.cli_json(&["service", "ps", "web"])?;
    let names = lab.node_names()?;
    let mut per_host = BTreeMap::new();
    let mut view = String::new();
    for t in tasks.as_array().into_iter().flatten() {
        let node = t["node_id"].as_str().unwrap_or_default();
        let host = names.get(node).cloned().unwrap_or_else(|| node.to_string());
        view.push_str(&format!(
            "{} slot {} on {host}: desired {} state {} {}\n",
            t["id"].as_str().unwrap_or_default(),
            t["slot"],
            t["desired_state"],
            t["state"],
            t["err"]
        ));
        if t["desired_state"] == "running" && t["state"] == "running" {
            *per_host.entry(host).or_insert(0) += 1;
        }
    }
    Ok((per_host, view))
}

fn wait_running(
    lab: &NetLab,
    what: &str,
    check: impl Fn(&BTreeMap<String, usize>) -> bool,
) -> (BTreeMap<String, usize>, Duration) {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < CONVERGE {
        match running_per_host(lab) {
            Ok((per_host, view)) => {
                if check(&per_host) {
                    return (per_host, started.elapsed());
                }
                last = view;
            }
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "timed out after {CONVERGE:?} waiting for {what}; last:\n{last}\nlogs:\n{}",
        lab.logs_tail(30)
    );
}

#[test]
fn lab_spreads_a_service_and_replaces_a_dead_hosts_tasks() {
    let test = "lab_spreads_a_service_and_replaces_a_dead_hosts_tasks";
    if !netlab::require(test) {
        return;
    }
    let name = "e2e3h";
    let mut lab = NetLab::up(name, 3).expect("lab up");

    let image = lab.busybox();
    let created = Instant::now();
    lab.cli(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "6",
        &image,
        "httpd",
        "-f",
        "-p",
        "8080",
    ])
    .expect("service create");
    let (per_host, _) = wait_running(&lab, "6 running tasks", |m| m.values().sum::<usize>() == 6);
    eprintln!(
        "service create -> 6 RUNNING: {:.2}s {per_host:?}",
        created.elapsed().as_secs_f64()
    );
    let want: BTreeMap<String, usize> = [("h1", 2), ("h2", 2), ("h3", 2)]
        .into_iter()
        .map(|(h, n)| (h.to_string(), n))
        .collect();
    assert_eq!(per_host, want, "6 replicas spread 2/2/2 over h1..h3");

    lab.kill_agent(3).expect("kill -9 the agent of h3");
    let killed = Instant::now();
    let (per_host, _) = wait_running(&lab, "6 running tasks on h1/h2", |m| {
        m.values().sum::<usize>() == 6 && !m.contains_key("h3")
    });
    eprintln!(
        "kill -9 agent h3 -> 6 RUNNING on h1/h2: {:.2}s {per_host:?}",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(per_host.values().sum::<usize>(), 6);

    lab.down();
    let left = netlab::namespaces(name);
    assert!(left.is_empty(), "namespaces left after down: {left:?}");
    assert!(
        !netlab::lab_dir(name).exists(),
        "{} left after down",
        netlab::lab_dir(name).display()
    );
}

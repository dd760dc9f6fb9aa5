//! Health checks in a one-host lab: a task with a check goes `starting` → `healthy` (failures
//! within the start period not counted), is listed in `tasks.<service>` DNS only once healthy
//! and counted as running only then; a task whose check always fails turns `unhealthy`, is
//! stopped, reported FAILED ("unhealthy container") and replaced.
//!
//! Needs root, iproute2, runc, nftables, docker-registry and busybox-static (skips without them;
//! fails under CI=true). Build the binaries first: `cargo build --workspace --bins`.

use e2e::netlab::services::{SLEEPER, is_running, resolved};
use e2e::netlab::{self, NetLab};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(30);

fn first_address(task: &Value) -> Option<String> {
    task["addresses"].as_array()?.first()?["address"]
        .as_str()
        .map(str::to_string)
}

fn health(task: &Value) -> &str {
    task["health"].as_str().unwrap_or_default()
}

fn service_running(lab: &NetLab, name: &str) -> u64 {
    let v = lab.inspect_service(name).expect("service inspect");
    v["running"].as_u64().unwrap_or_default()
}

#[test]
fn health_checks_gate_routing_and_replace_unhealthy_tasks() {
    let test = "health_checks_gate_routing_and_replace_unhealthy_tasks";
    if !netlab::require(test) {
        return;
    }
    let lab = NetLab::up("hlth", 1).expect("lab up");
    let image = lab.busybox();

    // 1. A client on a network, and a service whose check always fails (quick restarts).
    lab.cli(&["network", "create", "hnet"])
        .expect("network create");
    lab.create_service(&[
        "--name",
        "client",
        "--network",
        "hnet",
        &image,
        "sh",
        "-c",
        SLEEPER,
    ])
    .expect("create client");
    lab.create_service(&[
        "--name",
        "sick",
        "--health-cmd",
        "false",
        "--health-interval",
        "200ms",
        "--health-retries",
        "2",
        "--restart-delay",
        "100ms",
        &image,
        "sh",
        "-c",
        SLEEPER,
    ])
    .expect("create sick");
    let client = lab
        .wait_tasks("client", "client running", CONVERGE, |l| {
            l.iter()
                .any(|t| is_running(t) && first_address(t).is_some())
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    let client_id = client.iter().find(|t| is_running(t)).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let lookup = |name: &str| {
        let out = lab
            .exec_in_task(1, &client_id, &["nslookup", name])
            .expect("runc exec nslookup");
        resolved(&String::from_utf8_lossy(&out.stdout))
    };

    // 2. A network service whose check passes once /tmp/ok exists (after 3 s; failures before
    //    that fall within the start period): running but `starting`, it is not in DNS yet.
    lab.create_service(&[
        "--name",
        "web",
        "--network",
        "hnet",
        "--health-cmd",
        "test -f /tmp/ok",
        "--health-interval",
        "200ms",
        "--health-retries",
        "2",
        "--health-start-period",
        "20s",
        &image,
        "sh",
        "-c",
        &format!("sleep 3; touch /tmp/ok; {SLEEPER}"),
    ])
    .expect("create web");
    let starting = lab
        .wait_tasks("web", "web running, starting", CONVERGE, |l| {
            l.iter()
                .any(|t| is_running(t) && health(t) == "starting" && first_address(t).is_some())
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    let task = starting.iter().find(|t| is_running(t)).unwrap().clone();
    let address = first_address(&task).unwrap();
    assert!(
        lookup("tasks.web").is_empty(),
        "a starting task is not in DNS"
    );
    assert_eq!(service_running(&lab, "web"), 0, "starting is not counted");
    let table = lab.cli(&["service", "ps", "web"]).expect("service ps");
    assert!(table.contains("(starting)"), "{table}");

    // 3. Healthy after the file appears: in DNS, counted, shown.
    lab.wait_tasks("web", "web healthy", CONVERGE, |l| {
        l.iter()
            .any(|t| t["id"] == task["id"] && health(t) == "healthy")
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let mut got = BTreeSet::new();
    for _ in 0..50 {
        got = lookup("tasks.web");
        if !got.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(got, BTreeSet::from([address]), "tasks.web once healthy");
    assert_eq!(service_running(&lab, "web"), 1);
    let table = lab.cli(&["service", "ps", "web"]).expect("service ps");
    assert!(table.contains("(healthy)"), "{table}");

    // 4. The failing one: unhealthy, FAILED with "unhealthy container", and replaced.
    let sick = lab
        .wait_tasks("sick", "sick failed and replaced", CONVERGE, |l| {
            let failed = l.iter().any(|t| {
                t["state"] == "failed"
                    && t["err"] == "unhealthy container"
                    && health(t) == "unhealthy"
            });
            failed && l.len() >= 2
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    let table = lab.cli(&["service", "ps", "sick"]).expect("service ps");
    assert!(table.contains("unhealthy container"), "{table}");
    assert!(sick.len() >= 2);
}

//! The agents' must-show scenarios in a 3-host lab (network namespaces, a real registry, real
//! runc containers): spread, scale, global mode, constraints, drain, memory limits with restart,
//! logs, agent restart re-adoption and node loss. One lab runs the scenarios in order, because
//! bringing a lab up costs seconds; each step names itself when it fails.
//!
//! Needs root, iproute2, runc, docker-registry and busybox-static (skips without them; fails
//! under CI=true). Build the binaries first: `cargo build --workspace --bins`.

use e2e::netlab::{self, NetLab};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

const CONVERGE: Duration = Duration::from_secs(60);

/// A busybox httpd, the lab's standard long-running task.
const HTTPD: &[&str] = &["httpd", "-f", "-p", "8080"];

/// The tasks of `service`, as `service ps --format json` gives them.
fn tasks(lab: &NetLab, service: &str) -> anyhow::Result<Vec<Value>> {
    let v = lab.cli_json(&["service", "ps", service])?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn is_running(t: &Value) -> bool {
    t["desired_state"] == "running" && t["state"] == "running"
}

/// Running tasks of `service` per hostname, and the raw task list (for messages).
fn running_per_host(
    lab: &NetLab,
    service: &str,
) -> anyhow::Result<(BTreeMap<String, usize>, String)> {
    let names = lab.node_names()?;
    let mut per_host = BTreeMap::new();
    let mut view = String::new();
    for t in tasks(lab, service)? {
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
        if is_running(&t) {
            *per_host.entry(host).or_insert(0) += 1;
        }
    }
    Ok((per_host, view))
}

/// Polls until `check` accepts the per-host running counts of `service`; panics with the task
/// list and the daemons' logs after [`CONVERGE`].
fn wait_running(
    lab: &NetLab,
    service: &str,
    what: &str,
    check: impl Fn(&BTreeMap<String, usize>) -> bool,
) -> BTreeMap<String, usize> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < CONVERGE {
        match running_per_host(lab, service) {
            Ok((per_host, view)) => {
                if check(&per_host) {
                    eprintln!(
                        "{what}: {:.2}s {per_host:?}",
                        started.elapsed().as_secs_f64()
                    );
                    return per_host;
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

/// Polls the task list of `service` until `check` accepts it.
fn wait_tasks(
    lab: &NetLab,
    service: &str,
    what: &str,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let started = Instant::now();
    let mut last = Vec::new();
    while started.elapsed() < CONVERGE {
        if let Ok(list) = tasks(lab, service) {
            if check(&list) {
                eprintln!("{what}: {:.2}s", started.elapsed().as_secs_f64());
                return list;
            }
            last = list;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "timed out after {CONVERGE:?} waiting for {what}; tasks:\n{}\nlogs:\n{}",
        serde_json::to_string_pretty(&last).unwrap_or_default(),
        lab.logs_tail(30)
    );
}

fn hosts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(h, n)| (h.to_string(), *n)).collect()
}

fn create(lab: &NetLab, args: &[&str]) {
    let mut full = vec!["service", "create", "-d"];
    full.extend_from_slice(args);
    lab.cli(&full)
        .unwrap_or_else(|e| panic!("service create {args:?}: {e:#}"));
}

fn remove(lab: &NetLab, service: &str) {
    lab.cli(&["service", "rm", service])
        .unwrap_or_else(|e| panic!("service rm {service}: {e:#}"));
}

#[test]
fn lab_runs_services_across_hosts() {
    let test = "lab_runs_services_across_hosts";
    if !netlab::require(test) {
        return;
    }
    let name = "e2e3h";
    let mut lab = NetLab::up(name, 3).expect("lab up");
    let image = lab.busybox();
    let names = lab.node_names().expect("node ls");
    let host_of = |t: &Value| {
        let id = t["node_id"].as_str().unwrap_or_default();
        names.get(id).cloned().unwrap_or_default()
    };

    // 1. Six replicas spread 2/2/2; scale to 9 (3/3/3) and back to 3 (1/1/1).
    let mut web = vec!["--name", "web", "--replicas", "6", image.as_str()];
    web.extend_from_slice(HTTPD);
    create(&lab, &web);
    let per_host = wait_running(&lab, "web", "create web -> 6 running", |m| {
        m.values().sum::<usize>() == 6
    });
    assert_eq!(per_host, hosts(&[("h1", 2), ("h2", 2), ("h3", 2)]));
    lab.cli(&["service", "scale", "-d", "web=9"])
        .expect("scale 9");
    let per_host = wait_running(&lab, "web", "scale web=9", |m| {
        m.values().sum::<usize>() == 9
    });
    assert_eq!(per_host, hosts(&[("h1", 3), ("h2", 3), ("h3", 3)]));
    lab.cli(&["service", "scale", "-d", "web=3"])
        .expect("scale 3");
    let per_host = wait_running(&lab, "web", "scale web=3", |m| {
        m.values().sum::<usize>() == 3
    });
    assert_eq!(per_host, hosts(&[("h1", 1), ("h2", 1), ("h3", 1)]));

    // 2. A global service: one task per agent, none on the drained manager node.
    let mut global = vec!["--name", "everywhere", "--mode", "global", image.as_str()];
    global.extend_from_slice(HTTPD);
    create(&lab, &global);
    let per_host = wait_running(&lab, "everywhere", "global service", |m| m.len() == 3);
    assert_eq!(per_host, hosts(&[("h1", 1), ("h2", 1), ("h3", 1)]));
    remove(&lab, "everywhere");

    // 3. A constraint pins tasks to h2.
    let mut pinned = vec![
        "--name",
        "pinned",
        "--replicas",
        "3",
        "--constraint",
        "node.hostname==h2",
        image.as_str(),
    ];
    pinned.extend_from_slice(HTTPD);
    create(&lab, &pinned);
    let per_host = wait_running(&lab, "pinned", "constraint node.hostname==h2", |m| {
        m.values().sum::<usize>() == 3
    });
    assert_eq!(per_host, hosts(&[("h2", 3)]));
    remove(&lab, "pinned");

    // 4. Draining h3 moves its task away; reactivating it takes new tasks again.
    lab.cli(&["node", "update", "--availability", "drain", "h3"])
        .expect("drain h3");
    let per_host = wait_running(&lab, "web", "drain h3", |m| {
        m.values().sum::<usize>() == 3 && !m.contains_key("h3")
    });
    assert_eq!(per_host.values().sum::<usize>(), 3);
    lab.cli(&["node", "update", "--availability", "active", "h3"])
        .expect("activate h3");

    // 5. A task over its memory limit is OOM-killed, fails, and is restarted (on-failure). Its
    //    main process must be the one over the limit: the kernel kills only the biggest process.
    create(
        &lab,
        &[
            "--name",
            "hog",
            "--limit-memory",
            "16M",
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "100ms",
            "--constraint",
            "node.hostname==h1",
            image.as_str(),
            "sh",
            "-c",
            "sleep 1; exec dd if=/dev/zero of=/dev/null bs=64M count=1",
        ],
    );
    let list = wait_tasks(&lab, "hog", "memory limit kill and restart", |list| {
        let oom = list
            .iter()
            .any(|t| t["state"] == "failed" && t["err"].as_str().unwrap_or("").contains("OOM"));
        oom && list.len() >= 2
    });
    let failed = list
        .iter()
        .find(|t| t["state"] == "failed")
        .expect("failed");
    eprintln!("hog failed: {}", failed["err"]);
    remove(&lab, "hog");

    // 6. `service logs -f` streams lines as the task writes them.
    create(
        &lab,
        &[
            "--name",
            "talker",
            "--constraint",
            "node.hostname==h2",
            image.as_str(),
            "sh",
            "-c",
            "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done",
        ],
    );
    wait_running(&lab, "talker", "talker running", |m| {
        m.values().sum::<usize>() == 1
    });
    let lines = follow_logs(&lab, "talker", 8);
    let numbers: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.rsplit("line ").next()?.trim().parse().ok())
        .collect();
    assert!(
        numbers.len() >= 8 && numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "logs -f lines not consecutive: {lines:?}"
    );
    remove(&lab, "talker");

    // 7. An agent restart re-adopts its containers: the same processes keep running.
    let web_tasks = tasks(&lab, "web").expect("web tasks");
    let on_h2: Vec<&Value> = web_tasks
        .iter()
        .filter(|t| is_running(t) && host_of(t) == "h2")
        .collect();
    assert!(!on_h2.is_empty(), "no web task on h2: {web_tasks:?}");
    let before: Vec<(String, (i32, u64))> = on_h2
        .iter()
        .map(|t| {
            let c = t["container_id"]
                .as_str()
                .expect("container id")
                .to_string();
            let p = lab.container_process(2, &c).expect("container process");
            (c, p)
        })
        .collect();
    lab.stop_agent(2).expect("stop the agent of h2");
    lab.restart_agent(2).expect("start the agent of h2 again");
    let deadline = Instant::now() + CONVERGE;
    while !lab
        .ready_hosts()
        .unwrap_or_default()
        .contains(&"h2".to_string())
    {
        assert!(
            Instant::now() < deadline,
            "h2 not ready after restart:\n{}",
            lab.logs_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Give the re-adopting agent a moment to report, then compare processes and tasks.
    std::thread::sleep(Duration::from_secs(2));
    for (container, process) in &before {
        assert_eq!(
            &lab.container_process(2, container)
                .expect("container process"),
            process,
            "container {container} on h2 was restarted by the agent restart"
        );
    }
    let after = tasks(&lab, "web").expect("web tasks");
    for (container, _) in &before {
        assert!(
            after
                .iter()
                .any(|t| is_running(t) && t["container_id"] == container.as_str()),
            "task of container {container} not running after the agent restart: {after:?}"
        );
    }

    // 8. An image the registry does not have: the task is REJECTED with the registry's error.
    let missing = format!("{}/no-such-image:1", lab.registry_addr());
    create(&lab, &["--name", "missing", missing.as_str(), "true"]);
    let list = wait_tasks(&lab, "missing", "missing image rejected", |list| {
        list.iter()
            .any(|t| t["state"] == "rejected" && !t["err"].as_str().unwrap_or("").is_empty())
    });
    let rejected = list
        .iter()
        .find(|t| t["state"] == "rejected")
        .expect("rejected");
    eprintln!("missing image: {}", rejected["err"]);
    remove(&lab, "missing");

    // 9. kill -9 of an agent: its tasks are replaced on the other hosts. Scaling up first puts
    //    tasks back on h3 (emptied by the drain; running tasks are never rebalanced).
    lab.cli(&["service", "scale", "-d", "web=6"])
        .expect("scale 6");
    let per_host = wait_running(&lab, "web", "scale web=6", |m| {
        m.values().sum::<usize>() == 6
    });
    assert!(
        per_host.get("h3").is_some_and(|n| *n > 0),
        "no task on h3: {per_host:?}"
    );
    lab.kill_agent(3).expect("kill -9 the agent of h3");
    let per_host = wait_running(&lab, "web", "kill -9 agent h3 -> 6 running on h1/h2", |m| {
        m.values().sum::<usize>() == 6 && !m.contains_key("h3")
    });
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

/// Runs `cluster service logs -f SERVICE` in h1 and returns the first `want` lines that
/// contain "line " (bounded: fails after 20 s).
fn follow_logs(lab: &NetLab, service: &str, want: usize) -> Vec<String> {
    let mut command = lab
        .cli_command(&["service", "logs", "-f", service])
        .expect("cli");
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn service logs -f");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    while lines.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("line ") => lines.push(line),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("logs -f output");
    assert!(
        lines.len() >= want,
        "service logs -f gave {lines:?} in 20s; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lines
}

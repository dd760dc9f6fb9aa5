//! The overlay network must-shows in a 3-host lab: services reach each other by name across
//! hosts over VxLAN (endpoint modes vip and dnsrr), `tasks.<service>` lists every task, DNS
//! follows scale, networks are isolated from each other even on one host, a service on two
//! networks reaches both, the overlay MTU is the underlay's minus 50, published ports answer on
//! every host (ingress mode) or where a task runs (host mode), and removing everything leaves no
//! namespace, link or rule behind. One lab runs the steps in order; each names itself when it
//! fails.
//!
//! Needs root, iproute2, runc, nftables, iputils ping, docker-registry and busybox-static (skips
//! without them; fails under CI=true). Build the binaries first: `cargo build --workspace --bins`.

use e2e::netlab::services::{SLEEPER, is_running, resolved};
use e2e::netlab::{self, NetLab};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const CONVERGE: Duration = Duration::from_secs(60);

/// An httpd on port 8080 whose index page is the container's hostname (its task's name), so a
/// client sees which task answered.
/// It ends at once on SIGTERM (httpd as PID 1 would ignore it until the stop grace period).
const WEB: &str = "mkdir -p /www && hostname > /www/index.html && httpd -p 8080 -h /www && \
                   trap 'exit 0' TERM && while true; do sleep 1; done";

/// A fetch of `url` bounded to 3 s (busybox wget's own `-T` crashes in this static build).
fn wget(url: &str) -> [&str; 8] {
    ["busybox", "timeout", "3", "wget", "-q", "-O", "-", url]
}

/// The running tasks of `service`.
fn running(list: &[Value]) -> Vec<&Value> {
    list.iter().filter(|t| is_running(t)).collect()
}

/// The address of a task on `network_id`.
fn address_on(task: &Value, network_id: &str) -> Option<String> {
    task["addresses"]
        .as_array()?
        .iter()
        .find(|a| a["network_id"] == network_id)?["address"]
        .as_str()
        .map(str::to_string)
}

/// Waits for `n` running tasks of `service`, each with an address on `network_id`.
fn wait_addressed(lab: &NetLab, service: &str, network_id: &str, n: usize) -> Vec<Value> {
    let what = format!("{n} running {service} tasks with addresses");
    lab.wait_tasks(service, &what, CONVERGE, |list| {
        let up = running(list);
        up.len() == n && up.iter().all(|t| address_on(t, network_id).is_some())
    })
    .unwrap_or_else(|e| panic!("{e:#}"))
    .into_iter()
    .filter(is_running)
    .collect()
}

/// Waits for `n` running tasks of `service`, each with an address on some network.
fn wait_addressed_any(lab: &NetLab, service: &str, n: usize) -> Vec<Value> {
    let what = format!("{n} running {service} tasks with addresses");
    lab.wait_tasks(service, &what, CONVERGE, |list| {
        let up = running(list);
        up.len() == n
            && up
                .iter()
                .all(|t| t["addresses"].as_array().is_some_and(|a| !a.is_empty()))
    })
    .unwrap_or_else(|e| panic!("{e:#}"))
    .into_iter()
    .filter(is_running)
    .collect()
}

/// The host number (1-based) of the node a task runs on.
fn host_of(lab: &NetLab, task: &Value) -> usize {
    lab.host_of(task).expect("a worker host")
}

fn network_id(lab: &NetLab, name: &str) -> String {
    let v = lab
        .cli_json(&["network", "inspect", name])
        .expect("network inspect");
    let v = if v.is_array() { v[0].clone() } else { v };
    v["id"].as_str().expect("network id").to_string()
}

/// What overlay state a host holds: our namespaces and the VxLAN staging links in its underlay
/// namespace.
fn overlay_leftovers(lab: &NetLab) -> Vec<String> {
    let mut found = Vec::new();
    for i in 1..=3 {
        let tag = lab.node_tag(i).expect("node tag");
        for e in std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("cl-{tag}-")) {
                found.push(format!("h{i}: netns {name}"));
            }
        }
        let links = lab.exec_in(i, "ip", &["-o", "link"]).expect("ip link");
        for line in String::from_utf8_lossy(&links.stdout).lines() {
            if line.contains("ovx") || line.contains("vxlan") || line.contains("cl-ingress") {
                found.push(format!("h{i}: {line}"));
            }
        }
        // Our tables, and the iptables FORWARD rules for the mesh link (iptables-nft may leave
        // its own empty `filter` table behind: not ours).
        let ruleset = lab
            .exec_in(i, "nft", &["list", "ruleset"])
            .expect("nft list ruleset");
        for line in String::from_utf8_lossy(&ruleset.stdout).lines() {
            if line.contains("cluster_") || line.contains("cl-ingress") {
                found.push(format!("h{i}: nft: {}", line.trim()));
            }
        }
    }
    found
}

#[test]
fn overlay_networks_across_hosts() {
    let test = "overlay_networks_across_hosts";
    if !netlab::require(test) {
        return;
    }
    let mut lab = NetLab::up("ovl", 3).expect("lab up");
    let image = lab.busybox();
    let links_before: Vec<String> = (1..=3)
        .map(|i| {
            let out = lab.exec_in(i, "ip", &["-o", "link"]).expect("ip link");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect();

    // 1. Two networks; services with tasks only on h2 and h3 (vip and dnsrr), a client on h1.
    lab.cli(&["network", "create", "backend"])
        .expect("network create backend");
    lab.cli(&["network", "create", "other"])
        .expect("network create other");
    let backend = network_id(&lab, "backend");
    let other = network_id(&lab, "other");
    let not_h1 = "node.hostname!=h1";
    for (name, mode) in [("web", "vip"), ("webrr", "dnsrr")] {
        lab.create_service(&[
            "--name",
            name,
            "--network",
            "backend",
            "--replicas",
            "2",
            "--endpoint-mode",
            mode,
            "--constraint",
            not_h1,
            &image,
            "sh",
            "-c",
            WEB,
        ])
        .unwrap_or_else(|e| panic!("create {name}: {e:#}"));
    }
    lab.create_service(&[
        "--name",
        "client",
        "--network",
        "backend",
        "--constraint",
        "node.hostname==h1",
        &image,
        "sh",
        "-c",
        SLEEPER,
    ])
    .expect("create client");
    let web = wait_addressed(&lab, "web", &backend, 2);
    let webrr = wait_addressed(&lab, "webrr", &backend, 2);
    let client = wait_addressed(&lab, "client", &backend, 1).remove(0);
    let client_id = client["id"].as_str().unwrap().to_string();
    assert_eq!(host_of(&lab, &client), 1);
    for t in web.iter().chain(&webrr) {
        assert_ne!(host_of(&lab, t), 1, "tasks are kept off h1");
    }
    let in_client = |args: &[&str]| lab.exec_in_task(1, &client_id, args).expect("runc exec");
    let ok_in_client = |args: &[&str]| {
        lab.exec_in_task_ok(1, &client_id, args)
            .unwrap_or_else(|e| panic!("{e:#}\nlogs:\n{}", lab.logs_tail(30)))
    };
    let task_addrs = |list: &[Value]| -> BTreeSet<String> {
        list.iter()
            .filter_map(|t| address_on(t, &backend))
            .collect()
    };

    // 2. By name across hosts: vip answers its VIP and balances over both tasks in the kernel;
    //    dnsrr answers the task addresses.
    let web_service = lab.inspect_service("web").expect("inspect web");
    let vip = web_service["virtual_ips"]
        .as_array()
        .and_then(|v| v.iter().find(|a| a["network_id"] == backend.as_str()))
        .and_then(|a| a["address"].as_str())
        .expect("web has a VIP on backend")
        .to_string();
    let started = Instant::now();
    let mut answered = BTreeSet::new();
    let mut last = String::new();
    while answered.len() < 2 && started.elapsed() < CONVERGE {
        let out = in_client(&wget("http://web:8080/"));
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            answered.insert(String::from_utf8_lossy(&out.stdout).trim().to_string());
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert_eq!(
        answered.len(),
        2,
        "both web tasks answer through the VIP; last: {last}\nlogs:\n{}",
        lab.logs_tail(40)
    );
    eprintln!(
        "web by name through VIP {vip}: answered by {answered:?} after {:.2}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        resolved(&ok_in_client(&["nslookup", "web"])),
        BTreeSet::from([vip.clone()])
    );
    assert_eq!(
        resolved(&ok_in_client(&["nslookup", "tasks.web"])),
        task_addrs(&web)
    );
    assert_eq!(
        resolved(&ok_in_client(&["nslookup", "webrr"])),
        task_addrs(&webrr)
    );
    let page = ok_in_client(&wget("http://webrr:8080/"));
    let webrr_hosts: BTreeSet<String> = webrr
        .iter()
        .filter_map(|t| Some(t["id"].as_str()?.chars().take(12).collect()))
        .collect();
    assert!(
        webrr_hosts.contains(page.trim()),
        "dnsrr by name: {page} not one of {webrr_hosts:?}"
    );

    // 3. DNS follows scale: up to 4 then down to 1, seen by the client within a second of the
    //    tasks' RUNNING (polled here every 100 ms).
    for replicas in [4usize, 1] {
        lab.cli(&["service", "scale", "-d", &format!("web={replicas}")])
            .expect("scale web");
        let scaled = lab
            .wait_tasks("web", &format!("web at {replicas}"), CONVERGE, |list| {
                let up = running(list);
                up.len() == replicas && up.iter().all(|t| address_on(t, &backend).is_some())
            })
            .unwrap_or_else(|e| panic!("{e:#}"));
        let want = task_addrs(&scaled.into_iter().filter(is_running).collect::<Vec<_>>());
        let seen_at = Instant::now();
        let mut got = BTreeSet::new();
        while seen_at.elapsed() < Duration::from_secs(10) {
            got = resolved(&ok_in_client(&["nslookup", "tasks.web"]));
            if got == want {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(got, want, "tasks.web after scaling to {replicas}");
        let lag = seen_at.elapsed();
        eprintln!(
            "tasks.web shows {replicas} tasks {:.0} ms after the CLI saw them RUNNING",
            lag.as_secs_f64() * 1000.0
        );
        assert!(
            lag < Duration::from_secs(1),
            "DNS lagged {lag:?} behind scale to {replicas}"
        );
    }

    // 4. Isolation: a task of network `other` on the client's own host is unreachable from it,
    //    and its name does not resolve there.
    lab.create_service(&[
        "--name",
        "iso",
        "--network",
        "other",
        "--constraint",
        "node.hostname==h1",
        &image,
        "sh",
        "-c",
        WEB,
    ])
    .expect("create iso");
    let iso = wait_addressed(&lab, "iso", &other, 1).remove(0);
    let iso_addr = address_on(&iso, &other).unwrap();
    let out = in_client(&wget(&format!("http://{iso_addr}:8080/")));
    assert!(
        !out.status.success(),
        "a task on `other` must not be reachable from `backend`"
    );
    let out = in_client(&["nslookup", "iso"]);
    assert!(
        resolved(&String::from_utf8_lossy(&out.stdout)).is_empty(),
        "iso must not resolve on backend"
    );

    // 5. A service on both networks reaches both.
    lab.create_service(&[
        "--name",
        "both",
        "--network",
        "backend",
        "--network",
        "other",
        "--constraint",
        "node.hostname==h2",
        &image,
        "sh",
        "-c",
        SLEEPER,
    ])
    .expect("create both");
    let both = lab
        .wait_tasks(
            "both",
            "both running with two addresses",
            CONVERGE,
            |list| {
                running(list)
                    .iter()
                    .any(|t| address_on(t, &backend).is_some() && address_on(t, &other).is_some())
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    let both_id = running(&both)[0]["id"].as_str().unwrap().to_string();
    for target in ["http://web:8080/", "http://iso:8080/"] {
        lab.exec_in_task_ok(2, &both_id, &wget(target))
            .unwrap_or_else(|e| panic!("`both` fetches {target}: {e:#}"));
    }

    // 6. MTU: a 1422-byte don't-fragment ping (1450 bytes on the wire) crosses hosts, 1423 not.
    let remote = address_on(&web[0], &backend).unwrap();
    let ping = |size: &str| {
        lab.exec_in_task_netns(
            1,
            &client_id,
            "ping",
            &["-c", "1", "-W", "2", "-M", "do", "-s", size, &remote],
        )
        .expect("ping")
    };
    let fits = ping("1422");
    assert!(
        fits.status.success(),
        "1422 bytes DF must cross: {}",
        String::from_utf8_lossy(&fits.stdout)
    );
    assert!(!ping("1423").status.success(), "1423 bytes DF must not fit");

    // 7. An agent restart (h1, the client's host) re-syncs without re-creating the data plane:
    //    the VxLAN device keeps its index, and names and VIPs keep working.
    let netns = format!("cl-{}-net-{backend}", lab.node_tag(1).expect("node tag"));
    let vxlan_index = || -> String {
        let out = std::process::Command::new("ip")
            .args(["-n", &netns, "-o", "link", "show", "vxlan0"])
            .output()
            .expect("ip link show vxlan0");
        String::from_utf8_lossy(&out.stdout)
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let before = vxlan_index();
    assert!(
        !before.is_empty(),
        "h1 has the backend network's VxLAN device"
    );
    lab.stop_agent(1).expect("stop agent h1");
    lab.restart_agent(1).expect("restart agent h1");
    let in_client = |args: &[&str]| lab.exec_in_task(1, &client_id, args).expect("runc exec");
    let started = Instant::now();
    let fetched = loop {
        let out = in_client(&wget("http://web:8080/"));
        if out.status.success() || started.elapsed() > CONVERGE {
            break out.status.success();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        fetched,
        "web by name after h1's agent restarted\nlogs:\n{}",
        lab.logs_tail(40)
    );
    assert_eq!(
        vxlan_index(),
        before,
        "the restarted agent re-created the VxLAN device"
    );
    eprintln!(
        "after h1's agent restart, web answers by name again in {:.2}s",
        started.elapsed().as_secs_f64()
    );

    // 8. Published ports: ingress mode answers on every host's address (tasks only on h2 and
    //    h3), host mode only on the host that runs the task.
    lab.create_service(&[
        "--name",
        "mesh",
        "--publish",
        "published=8080,target=8080",
        "--replicas",
        "2",
        "--constraint",
        not_h1,
        &image,
        "sh",
        "-c",
        WEB,
    ])
    .expect("create mesh");
    lab.create_service(&[
        "--name",
        "local",
        "--publish",
        "published=9090,target=8080,mode=host",
        "--constraint",
        "node.hostname==h3",
        &image,
        "sh",
        "-c",
        WEB,
    ])
    .expect("create local");
    let mesh = wait_addressed_any(&lab, "mesh", 2);
    let local = wait_addressed_any(&lab, "local", 1);
    let hostnames = |list: &[Value]| -> BTreeSet<String> {
        list.iter()
            .filter_map(|t| Some(t["id"].as_str()?.chars().take(12).collect()))
            .collect()
    };
    // From h1 (no task there) and from h2, to every host's address.
    let fetch = |from: usize, url: &str| -> Option<String> {
        let out = lab
            .exec_in(from, "busybox", &wget(url)[1..])
            .expect("wget from a host");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let started = Instant::now();
    for from in [1, 2] {
        for host in 1..=3 {
            let url = format!("http://{}:8080/", lab.addr(host));
            let mut page = fetch(from, &url);
            while page.is_none() && started.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(200));
                page = fetch(from, &url);
            }
            let page = page.unwrap_or_else(|| {
                panic!(
                    "h{from} -> {url}: no answer on an ingress port\nlogs:\n{}",
                    lab.logs_tail(40)
                )
            });
            assert!(hostnames(&mesh).contains(&page), "{url} answered {page:?}");
        }
    }
    eprintln!(
        "ingress port 8080 answers on every host ({:.2}s)",
        started.elapsed().as_secs_f64()
    );
    let h3 = format!("http://{}:9090/", lab.addr(3));
    let mut page = fetch(1, &h3);
    while page.is_none() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        page = fetch(1, &h3);
    }
    assert_eq!(
        page.map(|p| hostnames(&local).contains(&p)),
        Some(true),
        "host-mode port on h3"
    );
    for host in [1, 2] {
        let url = format!("http://{}:9090/", lab.addr(host));
        assert_eq!(
            fetch(1, &url),
            None,
            "host-mode port must not answer on h{host}"
        );
    }

    // 9. Removing everything leaves no namespace, VxLAN device or mesh rule behind.
    for s in ["web", "webrr", "client", "iso", "both", "mesh", "local"] {
        lab.cli(&["service", "rm", s]).expect("service rm");
    }
    let started = Instant::now();
    let mut left = overlay_leftovers(&lab);
    while !left.is_empty() && started.elapsed() < CONVERGE {
        std::thread::sleep(Duration::from_millis(250));
        left = overlay_leftovers(&lab);
    }
    assert!(
        left.is_empty(),
        "left behind after the services went: {left:?}"
    );
    eprintln!(
        "overlay state gone {:.2}s after the services were removed",
        started.elapsed().as_secs_f64()
    );
    lab.cli(&["network", "rm", "backend"])
        .expect("network rm backend");
    lab.cli(&["network", "rm", "other"])
        .expect("network rm other");
    for (i, before) in links_before.iter().enumerate() {
        let out = lab.exec_in(i + 1, "ip", &["-o", "link"]).expect("ip link");
        let names = |text: &str| -> BTreeSet<String> {
            text.lines()
                .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
                .collect()
        };
        assert_eq!(
            names(&String::from_utf8_lossy(&out.stdout)),
            names(before),
            "h{}: links changed",
            i + 1
        );
    }
    lab.down();
}

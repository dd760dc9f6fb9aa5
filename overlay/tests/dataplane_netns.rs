//! The overlay data plane against the real kernel: two "hosts" (network namespaces joined by an
//! underlay veth, 10.214.0.0/24, MTU 1500), an overlay network on each (its own namespace), one
//! "container" namespace per host. Needs root; skipped otherwise. `ip` is used only to build the
//! underlay and to inspect results.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};

use overlay::dataplane::{
    self, Attachment, Change, NetworkConfig, RemoteHost, Subnet, attach_container,
    create_named_netns, delete_named_netns, ensure_network, reconcile_remotes, teardown_network,
};

const PREFIX: &str = "ovt-";

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn")
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn is_root() -> bool {
    nix_uid() == 0
}

fn nix_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

/// Removes namespaces `ovt-<pid>-*` whose process is gone (a crashed or killed earlier run).
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = delete_named_netns(&name);
        }
    }
}

/// The namespaces of one test; all deleted on drop, also when the test fails.
struct Lab {
    names: Vec<String>,
}

impl Lab {
    fn new() -> Lab {
        remove_stale();
        Lab { names: Vec::new() }
    }

    fn ns(&mut self, short: &str) -> (String, PathBuf) {
        let name = format!("{PREFIX}{}-{short}", std::process::id());
        let _ = delete_named_netns(&name);
        let path = create_named_netns(&name).expect("create netns");
        self.names.push(name.clone());
        (name, path)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            let _ = delete_named_netns(n);
        }
    }
}

struct Host {
    ns: String,
    net: NetworkConfig,
    net_ns: String,
    container_ns: String,
    container_ip: Ipv4Addr,
}

fn ping(ns: &str, dst: Ipv4Addr, extra: &[&str]) -> bool {
    let dst = dst.to_string();
    let mut args = vec![
        "ip", "netns", "exec", ns, "ping", "-n", "-c", "1", "-W", "1",
    ];
    args.extend_from_slice(extra);
    args.push(&dst);
    run(&args).status.success()
}

/// A ping expected to succeed: a few bounded tries (the first one may wait for ARP).
fn ping_ok(ns: &str, dst: Ipv4Addr, extra: &[&str]) -> bool {
    (0..3).any(|_| ping(ns, dst, extra))
}

fn links(ns: &str) -> Vec<String> {
    ok(&["ip", "-n", ns, "-o", "link", "show"])
        .lines()
        .filter_map(|l| {
            l.split(": ")
                .nth(1)
                .map(|s| s.split('@').next().unwrap().to_string())
        })
        .collect()
}

fn build(lab: &mut Lab, vni: u32) -> (Host, Host) {
    let hosts = underlay(lab);
    network(lab, &hosts, vni, "", 0)
}

/// Two host namespaces joined by a veth (`u0`, 10.214.0.1/24 and 10.214.0.2/24, MTU 1500).
fn underlay(lab: &mut Lab) -> [String; 2] {
    let (h1, _) = lab.ns("h1");
    let (h2, _) = lab.ns("h2");
    ok(&[
        "ip", "-n", &h1, "link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns", &h2,
    ]);
    for (i, h) in [(1, &h1), (2, &h2)] {
        let addr = format!("10.214.0.{i}/24");
        ok(&["ip", "-n", h, "addr", "add", &addr, "dev", "u0"]);
        ok(&["ip", "-n", h, "link", "set", "u0", "up", "mtu", "1500"]);
    }
    [h1, h2]
}

/// One overlay network on both hosts (subnets 10.214.(base+1).0/24 and 10.214.(base+2).0/24),
/// with one container attached on each.
fn network(lab: &mut Lab, hosts: &[String; 2], vni: u32, tag: &str, base: u8) -> (Host, Host) {
    let mut out = Vec::new();
    for (i, h) in [(1u8, &hosts[0]), (2u8, &hosts[1])] {
        let host_path = PathBuf::from(format!("/run/netns/{h}"));
        let (net_ns, net_path) = lab.ns(&format!("n{tag}{i}"));
        let (container_ns, container_path) = lab.ns(&format!("c{tag}{i}"));
        let net = NetworkConfig {
            netns: net_path,
            underlay_netns: Some(host_path),
            vni,
            subnet: Subnet::new(Ipv4Addr::new(10, 214, base + i, 0), 24).unwrap(),
            underlay_ip: Ipv4Addr::new(10, 214, 0, i),
            underlay_mtu: 1500,
        };
        let container_ip = Ipv4Addr::new(10, 214, base + i, 2);
        ensure_network(&net).expect("ensure_network");
        attach_container(
            &net,
            &Attachment {
                container_netns: container_path,
                host_ifname: "veth-c1".into(),
                container_ifname: "eth0".into(),
                address: container_ip,
                routes: Vec::new(),
            },
        )
        .expect("attach_container");
        out.push(Host {
            ns: h.clone(),
            net,
            net_ns,
            container_ns,
            container_ip,
        });
    }
    let b = out.pop().unwrap();
    let a = out.pop().unwrap();
    (a, b)
}

fn remote_of(h: &Host) -> RemoteHost {
    RemoteHost::new(h.net.subnet, h.net.underlay_ip)
}

#[test]
fn two_hosts_over_vxlan() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut lab = Lab::new();
    let (a, b) = build(&mut lab, 4242);

    // Layout checks.
    let vx = ok(&["ip", "-d", "-n", &a.net_ns, "link", "show", "vxlan0"]);
    assert!(vx.contains("mtu 1450"), "{vx}");
    assert!(vx.contains("vxlan id 4242 local 10.214.0.1"), "{vx}");
    assert!(
        vx.contains("dstport 4789") && vx.contains("nolearning"),
        "{vx}"
    );
    assert!(vx.contains("02:56:0a:d6:00:01"), "{vx}");
    // The bridge keeps its own address, whatever its ports' (a container is attached).
    let br = ok(&["ip", "-n", &a.net_ns, "link", "show", "br0"]);
    assert!(br.contains("02:42:0a:d6:01:01"), "{br}");
    let eth0 = ok(&["ip", "-n", &a.container_ns, "-o", "addr", "show", "eth0"]);
    assert!(eth0.contains("10.214.1.2/24"), "{eth0}");
    let r = ok(&["ip", "-n", &a.container_ns, "route", "show", "default"]);
    assert!(r.contains("via 10.214.1.1 dev eth0"), "{r}");
    assert!(ok(&["ip", "-n", &a.container_ns, "link", "show", "eth0"]).contains("mtu 1450"));
    // The VxLAN UDP socket stays in the underlay namespace.
    assert!(ok(&["ip", "netns", "exec", &a.ns, "ss", "-uln"]).contains(":4789"));

    // No remote entries yet: no path.
    assert!(!ping(&a.container_ns, b.container_ip, &[]));

    let plan = reconcile_remotes(&a.net, &[remote_of(&b)]).unwrap();
    assert_eq!(plan.len(), 3, "{plan:?}");
    reconcile_remotes(&b.net, &[remote_of(&a)]).unwrap();
    // Idempotent: nothing left to do.
    let again = reconcile_remotes(&a.net, &[remote_of(&b)]).unwrap();
    assert!(
        again.is_empty(),
        "{again:?} {:?}",
        dataplane::observe_remotes(&a.net)
    );
    let route = ok(&["ip", "-n", &a.net_ns, "route", "show", "10.214.2.0/24"]);
    assert!(
        route.contains("via 10.214.2.0 dev vxlan0") && route.contains("onlink"),
        "{route}"
    );
    let fdb = ok(&["bridge", "-n", &a.net_ns, "fdb", "show", "dev", "vxlan0"]);
    assert!(fdb.contains("02:56:0a:d6:00:02 dst 10.214.0.2"), "{fdb}");

    assert!(
        ping_ok(&a.container_ns, b.container_ip, &[]),
        "ping across hosts"
    );
    assert!(ping_ok(&b.container_ns, a.container_ip, &[]), "ping back");
    // MTU: 1422 + 8 (ICMP) + 20 (IP) = 1450 crosses with DF; 1423 does not.
    assert!(
        ping_ok(&a.container_ns, b.container_ip, &["-M", "do", "-s", "1422"]),
        "1422 DF"
    );
    assert!(
        !ping(&a.container_ns, b.container_ip, &["-M", "do", "-s", "1423"]),
        "1423 DF"
    );

    // Host b leaves a's view: its entries go, and so does the path.
    let plan = reconcile_remotes(&a.net, &[]).unwrap();
    assert!(plan.iter().all(|c| matches!(
        c,
        Change::DelRoute { .. } | Change::DelNeighbour { .. } | Change::DelFdb { .. }
    )));
    assert_eq!(plan.len(), 3);
    assert_eq!(
        dataplane::observe_remotes(&a.net).unwrap(),
        Default::default()
    );
    assert!(
        !ping(&a.container_ns, b.container_ip, &[]),
        "ping after removal"
    );

    // It comes back.
    reconcile_remotes(&a.net, &[remote_of(&b)]).unwrap();
    assert!(
        ping_ok(&a.container_ns, b.container_ip, &[]),
        "ping after re-adding"
    );

    // An agent restart: ensure_network again reuses the device, entries stay, traffic flows.
    ensure_network(&a.net).unwrap();
    assert!(
        reconcile_remotes(&a.net, &[remote_of(&b)])
            .unwrap()
            .is_empty()
    );
    assert!(
        ping_ok(&a.container_ns, b.container_ip, &[]),
        "ping after re-ensure"
    );

    // Teardown leaves no links but lo, and is idempotent.
    for h in [&a, &b] {
        teardown_network(&h.net).unwrap();
        teardown_network(&h.net).unwrap();
        assert_eq!(links(&h.net_ns), vec!["lo"]);
        assert_eq!(links(&h.container_ns), vec!["lo"]);
        assert_eq!(links(&h.ns), vec!["lo", "u0"]);
    }
}

#[test]
fn recovers_from_leftovers_of_a_crashed_run() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut lab = Lab::new();
    let (a, b) = build(&mut lab, 77);
    reconcile_remotes(&a.net, &[remote_of(&b)]).unwrap();
    reconcile_remotes(&b.net, &[remote_of(&a)]).unwrap();
    assert!(ping_ok(&a.container_ns, b.container_ip, &[]));

    // Leftovers: a vxlan0 in the network namespace with the wrong VNI, and (a crash between
    // "create in the underlay" and "move") a staging device left behind in the host namespace.
    let mut wrong = a.net.clone();
    wrong.vni = 78;
    wrong.subnet = "10.214.9.0/24".parse().unwrap();
    teardown_network(&wrong).unwrap(); // all of a's links in its network namespace
    ensure_network(&wrong).unwrap();
    ok(&[
        "ip",
        "-n",
        &a.ns,
        "link",
        "add",
        "ovx77",
        "type",
        "vxlan",
        "id",
        "77",
        "dstport",
        "4789",
        "local",
        "10.214.0.1",
    ]);
    assert!(ok(&["ip", "-d", "-n", &a.net_ns, "link", "show", "vxlan0"]).contains("vxlan id 78"));
    // The real configuration replaces both.
    ensure_network(&a.net).unwrap();
    assert!(ok(&["ip", "-d", "-n", &a.net_ns, "link", "show", "vxlan0"]).contains("vxlan id 77"));
    assert!(!links(&a.ns).contains(&"ovx77".to_string()));
    // Only the current lease's addresses remain on the reused bridge.
    let br = ok(&["ip", "-n", &a.net_ns, "-o", "-4", "addr", "show", "br0"]);
    assert_eq!(br.lines().count(), 1, "{br}");
    assert!(br.contains("10.214.1.1/24"), "{br}");
    attach_container(
        &a.net,
        &Attachment {
            container_netns: PathBuf::from(format!("/run/netns/{}", a.container_ns)),
            host_ifname: "veth-c1".into(),
            container_ifname: "eth0".into(),
            address: a.container_ip,
            routes: Vec::new(),
        },
    )
    .unwrap();
    // Attaching again over an existing attachment replaces it.
    attach_container(
        &a.net,
        &Attachment {
            container_netns: PathBuf::from(format!("/run/netns/{}", a.container_ns)),
            host_ifname: "veth-c1".into(),
            container_ifname: "eth0".into(),
            address: a.container_ip,
            routes: Vec::new(),
        },
    )
    .unwrap();
    // The replaced device came without remote entries: the reconcile puts them back.
    assert_eq!(
        reconcile_remotes(&a.net, &[remote_of(&b)]).unwrap().len(),
        3
    );
    assert!(
        ping_ok(&a.container_ns, b.container_ip, &[]),
        "ping after recovery"
    );
    assert_eq!(links(&a.net_ns).len(), 4, "{:?}", links(&a.net_ns)); // lo br0 vxlan0 veth-c1
    dataplane::detach_container(&a.net, "veth-c1").unwrap();
    dataplane::detach_container(&a.net, "veth-c1").unwrap();
    assert_eq!(links(&a.container_ns), vec!["lo"]);
}

#[test]
fn two_networks_share_the_underlay_but_not_traffic() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut lab = Lab::new();
    let hosts = underlay(&mut lab);
    let (a, b) = network(&mut lab, &hosts, 100, "x", 0);
    let (p, q) = network(&mut lab, &hosts, 200, "y", 10);
    for (l, r) in [(&a, &b), (&b, &a), (&p, &q), (&q, &p)] {
        reconcile_remotes(&l.net, &[remote_of(r)]).unwrap();
    }
    // Both networks work across hosts over the same underlay addresses and UDP port.
    assert!(ping_ok(&a.container_ns, b.container_ip, &[]), "network 100");
    assert!(ping_ok(&p.container_ns, q.container_ip, &[]), "network 200");
    // Containers of different networks cannot reach each other, on one host or across hosts.
    assert!(
        !ping(&a.container_ns, p.container_ip, &[]),
        "isolation on one host"
    );
    assert!(
        !ping(&a.container_ns, q.container_ip, &[]),
        "isolation across hosts"
    );
    // Tearing one network down leaves the other working.
    teardown_network(&a.net).unwrap();
    teardown_network(&b.net).unwrap();
    assert!(
        ping_ok(&p.container_ns, q.container_ip, &[]),
        "network 200 after 100's teardown"
    );
}

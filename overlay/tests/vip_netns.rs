//! Service VIPs balanced by nftables inside a network's namespace, against the real kernel: one
//! host (an underlay namespace with a veth pair, 10.215.0.1/24 on one end), one overlay network
//! 10.215.0.0/16 whose lease here is 10.215.1.0/24 (its own namespace), three "container"
//! namespaces on its bridge: a client (.2) and two backends (.3, .4) serving TCP. The VIP is
//! 10.215.255.2. Needs root and the `nft` binary; skipped otherwise. `ip` is used only to build the
//! underlay and to inspect results.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use overlay::dataplane::lb::{VipService, apply_ruleset, remove_ruleset, render_ruleset};
use overlay::dataplane::{
    Attachment, NetworkConfig, Subnet, attach_container, create_named_netns, delete_named_netns,
    ensure_network,
};

const PREFIX: &str = "ovl-";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 215, 255, 2);
const PORT: u16 = 8080;

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
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

fn have_nft() -> bool {
    Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Removes namespaces `ovl-<pid>-*` whose process is gone (a crashed or killed earlier run).
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
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = delete_named_netns(&name);
        }
    }
}

/// The namespaces and server threads of the test; all stopped and deleted on drop, also when the
/// test fails.
struct Lab {
    names: Vec<String>,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
}

impl Lab {
    fn new() -> Lab {
        remove_stale();
        Lab {
            names: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
        }
    }

    fn ns(&mut self, short: &str) -> (String, PathBuf) {
        let name = format!("{PREFIX}{}-{short}", std::process::id());
        let _ = delete_named_netns(&name);
        let path = create_named_netns(&name).expect("create netns");
        self.names.push(name.clone());
        (name, path)
    }

    /// A TCP server in namespace `ns` on `PORT`: for each connection it writes its name and the
    /// peer address it sees, then closes.
    fn serve(&mut self, ns: &Path, name: &str) {
        let listener = in_netns(ns, || {
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)).expect("bind")
        });
        listener.set_nonblocking(true).unwrap();
        let stop = self.stop.clone();
        let name = name.to_string();
        self.servers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = write!(s, "{name} {}", peer.ip());
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        }));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.servers.drain(..) {
            let _ = s.join();
        }
        for n in self.names.iter().rev() {
            let _ = delete_named_netns(n);
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`; sockets it creates stay there.
fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(ns).expect("open netns");
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

/// One TCP connection from namespace `ns` to the VIP: what the server wrote.
fn fetch(ns: &Path, timeout: Duration) -> std::io::Result<String> {
    in_netns(ns, || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((VIP, PORT)), timeout)?;
        s.set_read_timeout(Some(timeout))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}

/// `n` connections; the answers, in order. Panics on any failure.
fn fetch_n(ns: &Path, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            fetch(ns, Duration::from_secs(2)).unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect()
}

fn services(backends: &[Ipv4Addr]) -> Vec<VipService> {
    vec![VipService {
        vip: VIP,
        backends: backends.to_vec(),
    }]
}

/// Writes a sysctl as seen from namespace `ns`, if the kernel has it.
fn sysctl_in(ns: &Path, path: &str, value: &str) -> bool {
    in_netns(ns, || std::fs::write(path, value).is_ok())
}

#[test]
fn vip_balances_hairpins_and_refuses_without_backends() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    if !have_nft() {
        eprintln!("skipped: needs the nft binary");
        return;
    }
    let mut lab = Lab::new();

    // The host: an underlay namespace holding the VxLAN local address.
    let (host, host_path) = lab.ns("h");
    let underlay = [
        "link add u0 type veth peer name u1",
        "addr add 10.215.0.1/24 dev u0",
        "link set u0 up mtu 1500",
        "link set u1 up mtu 1500",
    ];
    for cmd in underlay {
        let mut args = vec!["ip", "-n", &host];
        args.extend(cmd.split(' '));
        ok(&args);
    }

    let (net_ns, net_path) = lab.ns("n");
    let subnet = Subnet::new(Ipv4Addr::new(10, 215, 1, 0), 24).unwrap();
    let net = NetworkConfig {
        netns: net_path.clone(),
        underlay_netns: Some(host_path),
        vni: 4343,
        subnet,
        underlay_ip: Ipv4Addr::new(10, 215, 0, 1),
        underlay_mtu: 1500,
    };
    ensure_network(&net).expect("ensure_network");
    // Hairpinned packets leave br0 the way they came in, so the kernel would send the client an
    // ICMP redirect for each one; redirects share the per-destination ICMP rate limit state, and
    // would hold back the port-unreachable checked at the end. (A candidate for ensure_network.)
    for dev in ["all", "br0"] {
        let path = format!("/proc/sys/net/ipv4/conf/{dev}/send_redirects");
        assert!(sysctl_in(&net_path, &path, "0"), "{path}");
    }
    let mut containers = Vec::new();
    for i in 2u8..=4 {
        let (_, path) = lab.ns(&format!("c{i}"));
        attach_container(
            &net,
            &Attachment {
                container_netns: path.clone(),
                host_ifname: format!("veth-c{i}"),
                container_ifname: "eth0".into(),
                address: Ipv4Addr::new(10, 215, 1, i),
                routes: Vec::new(),
            },
        )
        .expect("attach_container");
        containers.push(path);
    }
    let [client, b3, b4] = <[PathBuf; 3]>::try_from(containers).unwrap();
    lab.serve(&b3, "b3");
    lab.serve(&b4, "b4");
    let ip3 = Ipv4Addr::new(10, 215, 1, 3);
    let ip4 = Ipv4Addr::new(10, 215, 1, 4);
    let gateway = subnet.gateway().to_string();

    // Errors carry nft's message; a missing namespace is an error, not a panic.
    let err = apply_ruleset(&net_path, "table ip cluster_lb { chain c { bogus } }\n")
        .expect_err("bad script");
    assert!(err.to_string().contains("Error"), "{err}");
    assert!(apply_ruleset(Path::new("/run/netns/ovl-does-not-exist"), "").is_err());

    // Two backends on the same bridge as the client: both answer (30 random picks), and the
    // backends see the gateway as the peer, i.e. the hairpin masquerade was applied.
    let script = render_ruleset(subnet, &services(&[ip4, ip3]));
    apply_ruleset(&net_path, &script).expect("apply");
    apply_ruleset(&net_path, &script).expect("apply again (replaces the table)");
    let answers = fetch_n(&client, 30);
    for a in &answers {
        assert!(
            a == &format!("b3 {gateway}") || a == &format!("b4 {gateway}"),
            "{a}"
        );
    }
    assert!(answers.iter().any(|a| a.starts_with("b3")), "{answers:?}");
    assert!(answers.iter().any(|a| a.starts_with("b4")), "{answers:?}");
    let tables = ok(&["ip", "netns", "exec", &net_ns, "nft", "list", "tables"]);
    assert_eq!(tables.trim(), "table ip cluster_lb");

    // Without br_netfilter's help (bridged replies then skip conntrack), the masquerade is what
    // makes the hairpin work: drop it and the client, answered by the backend's own address,
    // never completes the connection.
    if sysctl_in(
        &net_path,
        "/proc/sys/net/bridge/bridge-nf-call-iptables",
        "0",
    ) {
        let no_masq: String = script
            .lines()
            .filter(|l| !l.contains("masquerade"))
            .map(|l| format!("{l}\n"))
            .collect();
        apply_ruleset(&net_path, &no_masq).expect("apply without masquerade");
        assert!(
            fetch(&client, Duration::from_secs(1)).is_err(),
            "hairpin without masquerade"
        );
        apply_ruleset(&net_path, &script).expect("apply");
        let answers = fetch_n(&client, 10);
        assert!(answers.iter().all(|a| a.ends_with(&gateway)), "{answers:?}");
    } else {
        eprintln!("no bridge-nf-call-iptables sysctl: skipping the no-masquerade check");
    }

    // Only .4 left.
    apply_ruleset(&net_path, &render_ruleset(subnet, &services(&[ip4]))).expect("apply");
    let answers = fetch_n(&client, 30);
    assert!(answers.iter().all(|a| a.starts_with("b4 ")), "{answers:?}");

    // No backends: refused at once, TCP with a reset, UDP with an ICMP error.
    apply_ruleset(&net_path, &render_ruleset(subnet, &services(&[]))).expect("apply");
    for _ in 0..3 {
        let t = Instant::now();
        let e = fetch(&client, Duration::from_secs(3)).expect_err("no backends");
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    let udp = in_netns(&client, || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect((VIP, PORT))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.send(b"ping")?;
        let mut buf = [0u8; 16];
        s.recv(&mut buf)
    });
    assert_eq!(
        udp.expect_err("udp to a VIP without backends").kind(),
        ErrorKind::ConnectionRefused
    );

    // Removal leaves no table, and is idempotent.
    remove_ruleset(&net_path).expect("remove");
    remove_ruleset(&net_path).expect("remove again");
    let tables = ok(&["ip", "netns", "exec", &net_ns, "nft", "list", "tables"]);
    assert_eq!(tables.trim(), "", "{tables}");
}

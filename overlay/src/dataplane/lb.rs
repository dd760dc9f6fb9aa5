//! Service virtual IPs (VIPs), balanced in the kernel with nftables inside a network's namespace.
//!
//! A VIP is an address of the network's subnet outside every host's lease (e.g. `10.0.255.2` in
//! `10.0.0.0/16`), so a container sends VIP traffic to its gateway, the bridge `br0` of the
//! network's namespace. There, one table of ours ([`TABLE`], family `ip`) does the work:
//! - chain `services` (nat, prerouting, priority `dstnat`): DNAT of each VIP, every protocol, ports
//!   kept, to one of its backends picked by `numgen random`;
//! - chain `no_backends` (filter, prerouting, priority `dstnat - 10`): a VIP without backends is
//!   refused (TCP reset, ICMP port unreachable otherwise) instead of silently dropped;
//! - chain `hairpin` (nat, postrouting, priority `srcnat`): connections that were DNATed, come from
//!   this host's subnet and go to a backend of this host's subnet (out through `br0`) are
//!   masqueraded to the gateway address. Otherwise the backend, on the same bridge as the client,
//!   would answer the client directly with its own address, and the client, expecting the VIP,
//!   would drop the reply. Backends on other hosts are not masqueraded: their replies come back
//!   through this namespace (the client's gateway) and are un-DNATed here.
//!
//! The ruleset is rendered whole ([`render_ruleset`], pure) and applied as one `nft -f` transaction
//! ([`apply_ruleset`]) that replaces the table, so a change is atomic: no packet ever sees half a
//! ruleset.
//!
//! Unlike links, addresses, routes and neighbours (netlink only, see the module root), nftables is
//! driven by running the `nft` command inside the namespace: the nftables netlink protocol is a
//! bytecode interface that `nft` compiles to, and its text syntax is the stable, documented one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{BRIDGE_NAME, Error, Result, Subnet};

/// Name of our nftables table (family `ip`) in a network's namespace.
pub const TABLE: &str = "cluster_lb";

/// How long `nft` may run before it is killed.
pub const NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// A service's virtual IP and the addresses of its backends (tasks on any host of the network).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipService {
    pub vip: Ipv4Addr,
    pub backends: Vec<Ipv4Addr>,
}

/// The `nft -f` script that replaces our table in a network's namespace with one balancing
/// `services`. `local_subnet` is this host's lease of the network (the subnet of `br0`).
///
/// Deterministic: services are ordered by VIP, backends sorted and deduplicated; two entries with
/// the same VIP are merged.
pub fn render_ruleset(local_subnet: Subnet, services: &[VipService]) -> String {
    let mut vips: BTreeMap<Ipv4Addr, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for s in services {
        vips.entry(s.vip)
            .or_default()
            .extend(s.backends.iter().copied());
    }

    let mut out = String::new();
    // Declaring the table first makes the delete valid when it does not exist yet; the three
    // commands are one transaction.
    let _ = writeln!(out, "table ip {TABLE}");
    let _ = writeln!(out, "delete table ip {TABLE}");
    let _ = writeln!(out, "table ip {TABLE} {{");

    let _ = writeln!(out, "\tchain services {{");
    let _ = writeln!(
        out,
        "\t\ttype nat hook prerouting priority dstnat; policy accept;"
    );
    for (vip, backends) in vips.iter().filter(|(_, b)| !b.is_empty()) {
        let _ = writeln!(
            out,
            "\t\tip daddr {vip} dnat to {}",
            pick(&backends.iter().copied().collect::<Vec<_>>())
        );
    }
    let _ = writeln!(out, "\t}}");

    let _ = writeln!(out, "\tchain no_backends {{");
    let _ = writeln!(
        out,
        "\t\ttype filter hook prerouting priority dstnat - 10; policy accept;"
    );
    for vip in vips.iter().filter(|(_, b)| b.is_empty()).map(|(v, _)| v) {
        let _ = writeln!(
            out,
            "\t\tip daddr {vip} meta l4proto tcp reject with tcp reset"
        );
        let _ = writeln!(out, "\t\tip daddr {vip} reject");
    }
    let _ = writeln!(out, "\t}}");

    let _ = writeln!(out, "\tchain hairpin {{");
    let _ = writeln!(
        out,
        "\t\ttype nat hook postrouting priority srcnat; policy accept;"
    );
    let _ = writeln!(
        out,
        "\t\tct status dnat ip saddr {local_subnet} ip daddr {local_subnet} oifname \"{BRIDGE_NAME}\" masquerade"
    );
    let _ = writeln!(out, "\t}}");

    let _ = writeln!(out, "}}");
    out
}

/// The DNAT target expression for a non-empty, sorted set of backends: the one backend, or one
/// picked by `numgen random` (also used by [`super::mesh`]).
pub(super) fn pick(backends: &[Ipv4Addr]) -> String {
    if let [one] = backends {
        return one.to_string();
    }
    let entries: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {b}"))
        .collect();
    format!(
        "numgen random mod {} map {{ {} }}",
        backends.len(),
        entries.join(", ")
    )
}

/// The script that deletes our table, whether or not it exists.
fn removal_script() -> String {
    format!("table ip {TABLE}\ndelete table ip {TABLE}\n")
}

/// Runs `nft -f -` inside the network namespace `netns` (an nsfs path such as `/run/netns/NAME`),
/// with `script` on its standard input. `nft` is killed after [`NFT_TIMEOUT`]. On failure the
/// error carries nft's standard error. Blocks the calling thread.
pub fn apply_ruleset(netns: &Path, script: &str) -> Result<()> {
    let what = format!("nft -f - in {}", netns.display());
    let ns = File::open(netns).map_err(|source| Error::Io {
        context: format!("open netns {}", netns.display()),
        source,
    })?;
    let ns_fd = ns.as_raw_fd();
    let mut cmd = Command::new("nft");
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the child between fork and exec and only makes the setns system
    // call (async-signal-safe) on a descriptor the parent keeps open until the child is spawned.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| Error::Io {
        context: format!("spawn {what}"),
        source,
    })?;
    drop(ns);

    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let input = script.to_owned();
    // A writer and a reader of their own, so that neither pipe can block the other or the timeout.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let deadline = Instant::now() + NFT_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(Error::Io {
                    context: what.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("killed after {NFT_TIMEOUT:?}"),
                    ),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(Error::Io {
                    context: format!("wait {what}"),
                    source,
                });
            }
        }
    };
    // The child is gone: both pipes are closed on its side, so both threads finish.
    let _ = writer.join();
    let err_text = reader.join().unwrap_or_default();
    let status = status?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Io {
            context: format!("{what} ({status})"),
            source: std::io::Error::other(err_text.trim().to_string()),
        })
    }
}

/// Deletes our table from the network namespace `netns`; idempotent (no error when it is absent).
pub fn remove_ruleset(netns: &Path) -> Result<()> {
    apply_ruleset(netns, &removal_script())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn local() -> Subnet {
        "10.0.1.0/24".parse().unwrap()
    }

    fn chain<'a>(script: &'a str, name: &str) -> Vec<&'a str> {
        let start = format!("chain {name} {{");
        script
            .lines()
            .map(str::trim)
            .skip_while(|l| *l != start)
            .skip(1)
            .take_while(|l| *l != "}")
            .collect()
    }

    #[test]
    fn replaces_one_table_in_one_script() {
        let s = render_ruleset(local(), &[]);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "table ip cluster_lb");
        assert_eq!(lines[1], "delete table ip cluster_lb");
        assert_eq!(lines[2], "table ip cluster_lb {");
        assert_eq!(*lines.last().unwrap(), "}");
        assert_eq!(s.matches("table ip").count(), 3);
        // No services: the chains exist and hold no rule but the hairpin masquerade.
        assert_eq!(
            chain(&s, "services"),
            vec!["type nat hook prerouting priority dstnat; policy accept;"]
        );
        assert_eq!(chain(&s, "no_backends").len(), 1);
        assert_eq!(chain(&s, "hairpin").len(), 2);
    }

    #[test]
    fn dnat_picks_among_sorted_backends_at_random() {
        let s = render_ruleset(
            local(),
            &[VipService {
                vip: ip("10.0.255.2"),
                backends: vec![
                    ip("10.0.2.7"),
                    ip("10.0.1.4"),
                    ip("10.0.1.3"),
                    ip("10.0.1.4"),
                ],
            }],
        );
        assert_eq!(
            chain(&s, "services")[1],
            "ip daddr 10.0.255.2 dnat to numgen random mod 3 map { 0 : 10.0.1.3, 1 : 10.0.1.4, 2 : 10.0.2.7 }"
        );
        // All protocols, no port rewrite.
        assert!(!s.contains("dport") && !s.contains("l4proto tcp dnat"));
        // Deterministic whatever the input order.
        let again = render_ruleset(
            local(),
            &[VipService {
                vip: ip("10.0.255.2"),
                backends: vec![ip("10.0.1.3"), ip("10.0.2.7"), ip("10.0.1.4")],
            }],
        );
        assert_eq!(s, again);
    }

    #[test]
    fn one_backend_is_a_plain_dnat() {
        let s = render_ruleset(
            local(),
            &[VipService {
                vip: ip("10.0.255.9"),
                backends: vec![ip("10.0.1.4")],
            }],
        );
        assert_eq!(
            chain(&s, "services")[1],
            "ip daddr 10.0.255.9 dnat to 10.0.1.4"
        );
    }

    #[test]
    fn services_are_ordered_and_duplicates_merged() {
        let s = render_ruleset(
            local(),
            &[
                VipService {
                    vip: ip("10.0.255.3"),
                    backends: vec![ip("10.0.1.5")],
                },
                VipService {
                    vip: ip("10.0.255.2"),
                    backends: vec![ip("10.0.1.3")],
                },
                VipService {
                    vip: ip("10.0.255.3"),
                    backends: vec![ip("10.0.1.6")],
                },
            ],
        );
        assert_eq!(
            chain(&s, "services")[1..],
            [
                "ip daddr 10.0.255.2 dnat to 10.0.1.3",
                "ip daddr 10.0.255.3 dnat to numgen random mod 2 map { 0 : 10.0.1.5, 1 : 10.0.1.6 }",
            ]
        );
    }

    #[test]
    fn a_vip_without_backends_is_refused_not_dropped() {
        let s = render_ruleset(
            local(),
            &[
                VipService {
                    vip: ip("10.0.255.4"),
                    backends: vec![],
                },
                VipService {
                    vip: ip("10.0.255.2"),
                    backends: vec![ip("10.0.1.3")],
                },
            ],
        );
        assert_eq!(
            chain(&s, "no_backends"),
            [
                "type filter hook prerouting priority dstnat - 10; policy accept;",
                "ip daddr 10.0.255.4 meta l4proto tcp reject with tcp reset",
                "ip daddr 10.0.255.4 reject",
            ]
        );
        assert!(
            !chain(&s, "services")
                .iter()
                .any(|l| l.contains("10.0.255.4"))
        );
        assert!(!s.contains("drop"));
    }

    #[test]
    fn only_hairpin_connections_are_masqueraded() {
        let s = render_ruleset(
            "10.0.1.77/24".parse().unwrap(),
            &[VipService {
                vip: ip("10.0.255.2"),
                backends: vec![ip("10.0.1.3"), ip("10.0.2.3")],
            }],
        );
        let h = chain(&s, "hairpin");
        assert_eq!(
            h,
            [
                "type nat hook postrouting priority srcnat; policy accept;",
                "ct status dnat ip saddr 10.0.1.0/24 ip daddr 10.0.1.0/24 oifname \"br0\" masquerade",
            ]
        );
        // Exactly one masquerade, bound to the local subnet on both ends: a backend on another
        // host (10.0.2.3) is reached with the client's own address.
        assert_eq!(s.matches("masquerade").count(), 1);
        assert!(!s.contains("snat"));
    }

    #[test]
    fn removal_declares_then_deletes() {
        assert_eq!(
            removal_script(),
            "table ip cluster_lb\ndelete table ip cluster_lb\n"
        );
    }
}

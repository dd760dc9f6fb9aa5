//! Published ports (the routing mesh) in a host's own network namespace.
//!
//! The host takes part in the ingress network like a container: a veth from the host namespace
//! ([`GATEWAY_IFNAME`]) to the ingress network's bridge, with an address of the host's lease.
//! One nftables table of ours ([`TABLE`]) then
//! - DNATs connections to a published port of one of the host's own addresses to a task's
//!   ingress address (ingress mode: any task in the cluster, picked by `numgen random`; host
//!   mode: only the tasks on this host), in prerouting (from outside) and output (from the host
//!   itself, loopback excluded);
//! - masquerades them to the veth's address, so the task answers through this host whatever its
//!   own routes (containers have no default route);
//! - accepts their forwarding in a chain of its own. A Docker engine's `FORWARD` policy DROP lives
//!   in iptables' own table, where an accept of ours does not count: [`allow_forwarding`] adds
//!   ACCEPT rules for the veth to iptables' `FORWARD` chain when iptables is installed.
//!
//! Rules are applied as one `nft -f` transaction (see [`super::lb::apply_ruleset`]).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::{Error, Result};

/// Our table in the host namespace.
pub const TABLE: &str = "cluster_mesh";
/// The host end of the veth into the ingress network.
pub const GATEWAY_IFNAME: &str = "cl-ingress";

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn keyword(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A port published on this host and where its connections go.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PublishedPort {
    pub protocol: Protocol,
    pub published: u16,
    /// The port inside the tasks.
    pub target: u16,
    /// Task addresses on the ingress network (ports without any are left out: nothing listens,
    /// so the host refuses the connection).
    pub backends: Vec<Ipv4Addr>,
}

fn dnat_rule(p: &PublishedPort, backends: &[Ipv4Addr]) -> String {
    format!(
        "{} dport {} dnat to {} : {}",
        p.protocol.keyword(),
        p.published,
        super::lb::pick(backends),
        p.target
    )
}

/// The `nft -f` script that replaces our table with rules for `ports` (an empty list leaves an
/// empty table out: the script only deletes it). Deterministic: ports and backends sorted.
pub fn render_ruleset(ports: &[PublishedPort]) -> String {
    let mut ports: Vec<PublishedPort> = ports
        .iter()
        .filter(|p| !p.backends.is_empty())
        .cloned()
        .map(|mut p| {
            p.backends.sort();
            p.backends.dedup();
            p
        })
        .collect();
    ports.sort();
    ports.dedup_by_key(|p| (p.protocol, p.published));
    let mut s = format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n");
    if ports.is_empty() {
        return s;
    }
    let _ = writeln!(s, "table ip {TABLE} {{");
    let _ = writeln!(
        s,
        "  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;"
    );
    for p in &ports {
        let _ = writeln!(s, "    fib daddr type local {}", dnat_rule(p, &p.backends));
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(
        s,
        "  chain output {{\n    type nat hook output priority -100; policy accept;"
    );
    for p in &ports {
        let _ = writeln!(
            s,
            "    ip daddr != 127.0.0.0/8 fib daddr type local {}",
            dnat_rule(p, &p.backends)
        );
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(
        s,
        "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"{GATEWAY_IFNAME}\" ct status dnat masquerade\n  }}"
    );
    let _ = writeln!(
        s,
        "  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    iifname \"{GATEWAY_IFNAME}\" accept\n    oifname \"{GATEWAY_IFNAME}\" accept\n  }}"
    );
    let _ = writeln!(s, "}}");
    s
}

fn iptables(args: &[&str]) -> std::io::Result<bool> {
    Ok(Command::new("iptables")
        .arg("-w")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success())
}

/// Makes iptables' `FORWARD` chain accept traffic through [`GATEWAY_IFNAME`] in the caller's
/// namespace (idempotent). Without iptables installed there is no such chain to pass: nothing to
/// do.
pub fn allow_forwarding() -> Result<()> {
    for dir in ["-i", "-o"] {
        let rule = ["FORWARD", dir, GATEWAY_IFNAME, "-j", "ACCEPT"];
        let present = match iptables(&[&["-C"][..], &rule[..]].concat()) {
            Ok(present) => present,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(Error::Io {
                    context: "run iptables".into(),
                    source: e,
                });
            }
        };
        if !present && !iptables(&[&["-I"][..], &rule[..]].concat()).unwrap_or(false) {
            return Err(Error::Invalid(format!(
                "iptables -I FORWARD {dir} {GATEWAY_IFNAME} -j ACCEPT failed"
            )));
        }
    }
    Ok(())
}

/// Removes what [`allow_forwarding`] added (idempotent).
pub fn remove_forwarding() {
    for dir in ["-i", "-o"] {
        let rule = ["FORWARD", dir, GATEWAY_IFNAME, "-j", "ACCEPT"];
        while iptables(&[&["-D"][..], &rule[..]].concat()).unwrap_or(false) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(published: u16, backends: &[[u8; 4]]) -> PublishedPort {
        PublishedPort {
            protocol: Protocol::Tcp,
            published,
            target: 80,
            backends: backends.iter().map(|o| Ipv4Addr::from(*o)).collect(),
        }
    }

    #[test]
    fn no_ports_only_deletes() {
        let s = render_ruleset(&[port(8080, &[])]);
        assert_eq!(
            s,
            "table ip cluster_mesh {}\ndelete table ip cluster_mesh\n"
        );
    }

    #[test]
    fn ports_dnat_to_their_backends_and_masquerade() {
        let s = render_ruleset(&[
            port(8080, &[[10, 255, 2, 2], [10, 255, 1, 2]]),
            PublishedPort {
                protocol: Protocol::Udp,
                published: 5353,
                target: 53,
                backends: vec![Ipv4Addr::new(10, 255, 1, 3)],
            },
        ]);
        assert!(s.contains("fib daddr type local tcp dport 8080 dnat to numgen random mod 2 map { 0 : 10.255.1.2, 1 : 10.255.2.2 } : 80"), "{s}");
        assert!(
            s.contains("fib daddr type local udp dport 5353 dnat to 10.255.1.3 : 53"),
            "{s}"
        );
        assert!(s.contains("ip daddr != 127.0.0.0/8 fib daddr type local tcp dport 8080"));
        assert!(s.contains("oifname \"cl-ingress\" ct status dnat masquerade"));
        assert!(s.contains("iifname \"cl-ingress\" accept"));
    }
}

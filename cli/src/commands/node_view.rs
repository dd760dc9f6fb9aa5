//! How nodes look: the `node ls` table and the `node inspect --pretty` summary.

use proto::v1::Node;

use crate::output::{capitalize, format_time_ms, key_values, table};

/// Sorts by hostname, then id (docker's order for `node ls`).
pub fn sort_nodes(nodes: &mut [Node]) {
    nodes.sort_by(|a, b| a.hostname.cmp(&b.hostname).then_with(|| a.id.cmp(&b.id)));
}

/// Leader / Reachable / Unreachable for managers, empty for workers.
pub fn manager_status(node: &Node) -> String {
    match &node.manager {
        Some(m) if m.leader => "Leader".to_string(),
        Some(m) => capitalize(&m.reachability),
        None => String::new(),
    }
}

/// The `node ls` table.
pub fn nodes_table(nodes: &[Node]) -> String {
    let headers = [
        "ID",
        "HOSTNAME",
        "STATUS",
        "AVAILABILITY",
        "MANAGER STATUS",
        "ROLE",
        "ADDRESS",
    ];
    let rows = nodes.iter().map(|n| {
        vec![
            n.id.clone(),
            n.hostname.clone(),
            capitalize(&n.state),
            capitalize(&n.availability),
            manager_status(n),
            n.role.clone(),
            n.addr.clone(),
        ]
    });
    table(&headers, rows)
}

/// The `node inspect --pretty` summary of one node.
pub fn inspect_pretty(node: &Node) -> String {
    let mut entries = vec![
        ("ID", node.id.clone()),
        ("Hostname", node.hostname.clone()),
        ("Joined at", format_time_ms(node.created_at_ms)),
        ("Updated at", format_time_ms(node.updated_at_ms)),
        ("Status", capitalize(&node.state)),
        ("Availability", capitalize(&node.availability)),
        ("Role", node.role.clone()),
        ("Address", node.addr.clone()),
    ];
    let mut labels: Vec<_> = node.labels.iter().collect();
    labels.sort();
    if labels.is_empty() {
        entries.push(("Labels", "none".to_string()));
    } else {
        entries.push(("Labels", String::new()));
        for (k, v) in labels {
            entries.push(("", format!(" - {k}={v}")));
        }
    }
    if let Some(m) = &node.manager {
        entries.push(("Manager status", String::new()));
        entries.push((" Leader", if m.leader { "yes" } else { "no" }.to_string()));
        entries.push((" Reachability", capitalize(&m.reachability)));
        entries.push((" Raft address", m.raft_addr.clone()));
        entries.push((" Membership", m.membership.clone()));
    }
    key_values(&entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::ManagerStatus;

    fn node(id: &str, hostname: &str, manager: Option<ManagerStatus>) -> Node {
        Node {
            id: id.to_string(),
            hostname: hostname.to_string(),
            role: if manager.is_some() {
                "manager"
            } else {
                "worker"
            }
            .to_string(),
            availability: "active".to_string(),
            addr: if manager.is_some() {
                "10.0.0.1:4242"
            } else {
                "10.0.0.2"
            }
            .to_string(),
            state: "ready".to_string(),
            manager,
            created_at_ms: 1_700_000_000_000,
            ..Default::default()
        }
    }

    fn leader() -> ManagerStatus {
        ManagerStatus {
            leader: true,
            reachability: "reachable".to_string(),
            raft_addr: "10.0.0.1:4242".to_string(),
            membership: "voter".to_string(),
        }
    }

    #[test]
    fn table_of_nodes() {
        let mut nodes = vec![
            node("00000000000000b2", "worker-1", None),
            node("00000000000000a1", "manager-1", Some(leader())),
        ];
        sort_nodes(&mut nodes);
        let expected = "\
ID                 HOSTNAME    STATUS   AVAILABILITY   MANAGER STATUS   ROLE      ADDRESS
00000000000000a1   manager-1   Ready    Active         Leader           manager   10.0.0.1:4242
00000000000000b2   worker-1    Ready    Active                          worker    10.0.0.2
";
        assert_eq!(nodes_table(&nodes), expected);
    }

    #[test]
    fn manager_statuses() {
        let mut follower = leader();
        follower.leader = false;
        follower.reachability = "unreachable".to_string();
        assert_eq!(
            manager_status(&node("a", "h", Some(follower))),
            "Unreachable"
        );
        assert_eq!(manager_status(&node("a", "h", Some(leader()))), "Leader");
        assert_eq!(manager_status(&node("a", "h", None)), "");
    }

    #[test]
    fn pretty_inspect() {
        let mut n = node("00000000000000a1", "manager-1", Some(leader()));
        n.labels.insert("zone".to_string(), "eu".to_string());
        n.labels.insert("ssd".to_string(), String::new());
        let text = inspect_pretty(&n);
        assert!(
            text.starts_with("ID:               00000000000000a1\n"),
            "{text}"
        );
        assert!(
            text.contains("Joined at:        2023-11-14T22:13:20Z\n"),
            "{text}"
        );
        assert!(text.contains("Labels:\n - ssd=\n - zone=eu\n"), "{text}");
        assert!(
            text.contains("Manager status:\n Leader:          yes\n"),
            "{text}"
        );
        let worker = inspect_pretty(&node("b", "w", None));
        assert!(worker.contains("Labels:         none\n"), "{worker}");
        assert!(!worker.contains("Manager status"), "{worker}");
    }

    #[test]
    fn nodes_serialise_as_json() {
        let text = crate::output::json(&vec![node("a", "h", None)]).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value[0]["hostname"], "h");
        assert_eq!(value[0]["created_at_ms"], 1_700_000_000_000_i64);
    }
}

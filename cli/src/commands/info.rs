//! `cluster info`: the cluster, its Raft state and its managers.

use clap::Args;
use proto::v1::{InfoRequest, InfoResponse};

use crate::connect::{Target, rpc};
use crate::output::{Format, capitalize, format_time_ms, json, key_values, node_id, print, table};

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Prints what the answering manager knows about the cluster.
pub async fn run(args: InfoArgs, target: &Target) -> anyhow::Result<()> {
    let mut client = target.connect().await?.control();
    let info = rpc(client.info(InfoRequest {})).await?;
    let text = match args.format {
        Format::Table => render(&info),
        Format::Json => json(&info)?,
    };
    print(&text)?;
    Ok(())
}

/// "id (hostname)" for a manager id, "none" for 0.
fn manager_label(info: &InfoResponse, id: u64) -> String {
    if id == 0 {
        return "none".to_string();
    }
    match info.managers.iter().find(|m| m.id == id) {
        Some(m) if !m.hostname.is_empty() => format!("{} ({})", node_id(id), m.hostname),
        _ => node_id(id),
    }
}

/// The human-readable `info` text.
pub fn render(info: &InfoResponse) -> String {
    let leader = if info.leader_id == 0 {
        "none (no leader elected)".to_string()
    } else if info.leader_addr.is_empty() {
        manager_label(info, info.leader_id)
    } else {
        format!(
            "{} at {}",
            manager_label(info, info.leader_id),
            info.leader_addr
        )
    };
    let entries = [
        ("Cluster ID", info.cluster_id.clone()),
        ("CA digest", info.ca_digest.clone()),
        ("Created at", format_time_ms(info.created_at_ms)),
        ("Leader", leader),
        ("Nodes", info.node_count.to_string()),
        (
            "Address pool",
            format!(
                "{} (networks of /{})",
                info.default_addr_pool, info.default_addr_pool_mask_length
            ),
        ),
        ("Answered by", manager_label(info, info.answered_by)),
        ("Raft", String::new()),
        (" Term", info.raft_term.to_string()),
        (" Last log index", info.raft_last_log_index.to_string()),
        (" Commit index", info.raft_commit_index.to_string()),
        (" Applied index", info.raft_applied_index.to_string()),
        (" Snapshot index", info.raft_snapshot_index.to_string()),
        (" Purged index", info.raft_purged_index.to_string()),
        ("Managers", info.managers.len().to_string()),
    ];
    let mut managers: Vec<_> = info.managers.iter().collect();
    managers.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
    let headers = [
        "ID",
        "HOSTNAME",
        "ADDRESS",
        "LEADER",
        "REACHABILITY",
        "MEMBERSHIP",
        "MATCHED INDEX",
    ];
    let rows = managers.iter().map(|m| {
        vec![
            node_id(m.id),
            m.hostname.clone(),
            m.addr.clone(),
            if m.leader { "yes" } else { "" }.to_string(),
            capitalize(&m.reachability),
            m.membership.clone(),
            m.matched_index.to_string(),
        ]
    });
    format!("{}\n{}", key_values(&entries), table(&headers, rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::ManagerInfo;

    fn manager(id: u64, hostname: &str, leader: bool) -> ManagerInfo {
        ManagerInfo {
            id,
            hostname: hostname.to_string(),
            addr: format!("10.0.0.{id}:4242"),
            leader,
            reachability: "reachable".to_string(),
            membership: "voter".to_string(),
            matched_index: 42,
        }
    }

    #[test]
    fn renders_cluster_and_managers() {
        let info = InfoResponse {
            cluster_id: "c0ffee".to_string(),
            created_at_ms: 1_700_000_000_000,
            leader_id: 1,
            leader_addr: "10.0.0.1:4242".to_string(),
            managers: vec![manager(2, "m2", false), manager(1, "m1", true)],
            raft_term: 3,
            raft_last_log_index: 42,
            raft_commit_index: 42,
            raft_applied_index: 41,
            raft_snapshot_index: 0,
            node_count: 5,
            answered_by: 2,
            ca_digest: "sha256:abcd".to_string(),
            ..Default::default()
        };
        let text = render(&info);
        assert!(
            text.contains("Leader:            0000000000000001 (m1) at 10.0.0.1:4242\n"),
            "{text}"
        );
        assert!(
            text.contains("Answered by:       0000000000000002 (m2)\n"),
            "{text}"
        );
        assert!(
            text.contains("Created at:        2023-11-14T22:13:20Z\n"),
            "{text}"
        );
        assert!(text.contains(" Applied index:    41\n"), "{text}");
        let table_start = text.find("ID   ").unwrap();
        let lines: Vec<_> = text[table_start..].lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("0000000000000001   m1"), "{text}");
        assert!(lines[1].contains("yes"), "{text}");
        assert!(lines[2].ends_with("42"), "{text}");
    }

    #[test]
    fn no_leader() {
        let text = render(&InfoResponse::default());
        assert!(
            text.contains("Leader:            none (no leader elected)\n"),
            "{text}"
        );
        assert!(text.contains("Answered by:       none\n"), "{text}");
    }
}

//! Task listings shared by `service ps` and `node ps`: ids (`-q`), JSON, or the table of
//! [`tasks_table`] with each task's service image and node hostname.

use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use proto::v1::control_client::ControlClient;
use proto::v1::{ListNodesRequest, Task};
use tonic::transport::Channel;

use super::service_view::{sort_tasks, tasks_table};
use crate::connect::rpc;
use crate::output::{Format, json};

/// How a task listing is printed.
#[derive(Clone, Copy, Debug)]
pub struct Listing {
    /// Only the task ids.
    pub quiet: bool,
    pub format: Format,
    /// Full ids, errors and pinned images in the table.
    pub no_trunc: bool,
}

/// Concatenates task lists, keeping the first copy of a task listed twice (two references to
/// one service or node).
pub fn merge(lists: impl IntoIterator<Item = Vec<Task>>) -> Vec<Task> {
    let mut seen = HashSet::new();
    lists
        .into_iter()
        .flatten()
        .filter(|t| seen.insert(t.id.clone()))
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The text for `tasks`, sorted as `service ps` sorts them. `images` maps service ids to their
/// images; node hostnames are looked up (one call) only when a table shows scheduled tasks.
pub async fn render(
    client: &mut ControlClient<Channel>,
    mut tasks: Vec<Task>,
    images: &HashMap<String, String>,
    listing: Listing,
) -> anyhow::Result<String> {
    sort_tasks(&mut tasks);
    if listing.quiet {
        return Ok(tasks.iter().map(|t| format!("{}\n", t.id)).collect());
    }
    Ok(match listing.format {
        Format::Json => json(&tasks)?,
        Format::Table => {
            let nodes = if tasks.iter().any(|t| !t.node_id.is_empty()) {
                rpc(client.list_nodes(ListNodesRequest::default()))
                    .await?
                    .nodes
                    .into_iter()
                    .map(|n| (n.id, n.hostname))
                    .collect()
            } else {
                HashMap::new()
            };
            tasks_table(&tasks, images, &nodes, now_ms(), listing.no_trunc)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_the_first_copy() {
        let task = |id: &str, slot| Task {
            id: id.into(),
            slot,
            ..Default::default()
        };
        let merged = merge([
            vec![task("a", 1), task("b", 2)],
            vec![task("b", 9), task("c", 3)],
        ]);
        let view: Vec<_> = merged.iter().map(|t| (t.id.as_str(), t.slot)).collect();
        assert_eq!(view, [("a", 1), ("b", 2), ("c", 3)]);
    }
}

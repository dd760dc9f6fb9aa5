//! The scheduler: picks a node for every PENDING task, or leaves it PENDING with the reason.
//! Filters (node ready and active, constraints, max replicas per node, reservations vs.
//! capacity, host ports), then hierarchical placement preferences, then spread (fewest tasks of
//! the service on the node, then fewest tasks in all). Pure: a store snapshot in, decisions out.
//! Unlike Swarm, PENDING tasks are simply scheduled again on the next batch, so they land as
//! soon as resources free up.

mod constraint;
mod placement;
mod view;

#[cfg(test)]
mod tests;

pub use constraint::{
    Constraint, ConstraintKey, Operator, Preference, parse_constraint, parse_constraints, parse_preference,
    parse_preferences,
};

use crate::store::{Change, Object, ServiceSpec, Store, Task, TaskState};
use placement::Branch;
use std::collections::HashMap;
use view::{ClusterView, Rejections};

/// What the scheduler decided for one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub task_id: String,
    /// The task's version the decision was made on.
    pub expected_version: u64,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Move the task to ASSIGNED on this node.
    Assigned { node_id: String },
    /// Leave the task PENDING, with this message.
    Pending { message: String },
}

/// The tasks the scheduler should look at: PENDING and meant to execute.
pub fn unassigned_tasks(store: &Store) -> Vec<Task> {
    store.tasks.values().filter(|t| is_schedulable(t)).cloned().collect()
}

fn is_schedulable(task: &Task) -> bool {
    task.status.state == TaskState::Pending && task.is_live()
}

/// Decides a node for each schedulable task of `pending` (others are skipped), in one pass:
/// per-node counts are computed once, then tasks are placed group by group (one group per
/// service and spec), each placement updating the counts the next one sees.
pub fn schedule(store: &Store, pending: &[Task]) -> Vec<Decision> {
    let mut view = ClusterView::new(store);
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut by_service: HashMap<&str, Vec<usize>> = HashMap::new();
    for task in pending.iter().filter(|t| is_schedulable(t)) {
        let candidates = by_service.entry(task.service_id.as_str()).or_default();
        let same_spec = candidates.iter().copied().find(|&g| *groups[g].spec == task.spec);
        match same_spec {
            Some(g) => groups[g].tasks.push(task),
            None => {
                candidates.push(groups.len());
                groups.push(Group { service_id: &task.service_id, spec: &task.spec, tasks: vec![task] });
            }
        }
    }
    let mut decisions = Vec::with_capacity(pending.len());
    for group in groups {
        place_group(&mut view, &group, &mut decisions);
    }
    decisions
}

/// Tasks of one service with one spec: they all pass or fail the same filters.
struct Group<'a> {
    service_id: &'a str,
    spec: &'a ServiceSpec,
    tasks: Vec<&'a Task>,
}

fn place_group<'a>(view: &mut ClusterView<'a>, group: &Group<'a>, decisions: &mut Vec<Decision>) {
    let placement = &group.spec.placement;
    let parsed = parse_constraints(&placement.constraints)
        .and_then(|c| parse_preferences(&placement.preferences).map(|p| (c, p)));
    let (constraints, preferences) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => {
            for task in &group.tasks {
                decisions.push(pending(task, format!("invalid placement: {error}")));
            }
            return;
        }
    };
    let (preset, free): (Vec<&Task>, Vec<&Task>) = group.tasks.iter().partition(|t| t.node_id.is_some());
    for task in preset {
        let node_id = task.node_id.as_deref().unwrap_or_default();
        let Some(&index) = view.by_id.get(node_id) else {
            decisions.push(pending(task, format!("node {node_id} is not in the cluster")));
            continue;
        };
        let check = view
            .static_check(index, &constraints)
            .and_then(|()| view.dynamic_check(index, group.service_id, group.spec));
        match check {
            Ok(()) => {
                view.hold(index, task);
                decisions.push(assigned(task, node_id));
            }
            Err(reject) => {
                let mut rejections = Rejections::default();
                rejections.add(reject);
                decisions.push(pending(task, rejections.message()));
            }
        }
    }
    if free.is_empty() {
        return;
    }
    let mut rejections = Rejections::default();
    let eligible: Vec<usize> = (0..view.nodes.len())
        .filter(|&index| match view.static_check(index, &constraints) {
            Ok(()) => true,
            Err(reject) => {
                rejections.add(reject);
                false
            }
        })
        .collect();
    let mut tree = Branch::build(view, group.service_id, eligible, &preferences);
    let mut failed: Option<String> = None;
    for task in free {
        if let Some(message) = &failed {
            decisions.push(pending(task, message.clone()));
            continue;
        }
        match tree.place(view, group.service_id, group.spec, &mut rejections) {
            Some(index) => {
                view.hold(index, task);
                decisions.push(assigned(task, &view.nodes[index].node.meta.id));
            }
            None => {
                let message = rejections.message();
                decisions.push(pending(task, message.clone()));
                failed = Some(message);
            }
        }
    }
}

fn assigned(task: &Task, node_id: &str) -> Decision {
    Decision {
        task_id: task.meta.id.clone(),
        expected_version: task.meta.version,
        outcome: Outcome::Assigned { node_id: node_id.to_string() },
    }
}

fn pending(task: &Task, message: String) -> Decision {
    Decision {
        task_id: task.meta.id.clone(),
        expected_version: task.meta.version,
        outcome: Outcome::Pending { message },
    }
}

/// The store writes for `decisions`: ASSIGNED tasks get their node, PENDING ones their message
/// (only when it changed, so an unchanged backlog writes nothing). Every update carries the
/// version the decision was made on, so a batch built on a stale snapshot is refused whole.
pub fn decisions_to_changes(store: &Store, decisions: &[Decision], now_ms: i64) -> Vec<Change> {
    let mut changes = Vec::new();
    for decision in decisions {
        let Some(current) = store.tasks.get(&decision.task_id) else { continue };
        let mut task = current.clone();
        match &decision.outcome {
            Outcome::Assigned { node_id } => {
                task.node_id = Some(node_id.clone());
                task.status.state = TaskState::Assigned;
                task.status.message = format!("assigned to node {node_id}");
            }
            Outcome::Pending { message } => {
                if task.status.message == *message {
                    continue;
                }
                task.status.message = message.clone();
            }
        }
        task.status.timestamp_ms = now_ms;
        changes.push(Change::Update { object: Object::Task(task), expected_version: Some(decision.expected_version) });
    }
    changes
}

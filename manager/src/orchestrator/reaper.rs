//! Service removal and the task reaper. The tasks of a removed service are given desired state
//! REMOVE, and deleted once they no longer hold their node. Per slot (replicated) or node
//! (global), at most `task_history_limit` finished tasks (shut down and no longer holding their
//! node) are kept; the oldest go first. Live tasks are never reaped.

use super::common::{Unit, is_finished, set_desired};
use crate::store::{Change, Kind, Store, Task, TaskState};
use std::collections::HashMap;

/// Marks the tasks of removed services REMOVE.
pub fn reconcile_removed_services(store: &Store) -> Vec<Change> {
    removal_units(store).into_iter().flatten().collect()
}

pub(crate) fn removal_units(store: &Store) -> Vec<Unit> {
    store
        .tasks
        .values()
        .filter(|t| t.desired_state < TaskState::Remove && !store.services.contains_key(&t.service_id))
        .map(|t| vec![set_desired(t, TaskState::Remove)])
        .collect()
}

/// Deletes finished tasks of removed services and the history beyond each service's limit.
pub fn reconcile_reaper(store: &Store) -> Vec<Change> {
    units(store).into_iter().flatten().collect()
}

pub(crate) fn units(store: &Store) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut history: HashMap<(&str, u64, &str), Vec<&Task>> = HashMap::new();
    for task in store.tasks.values() {
        if task.is_live() || !is_finished(store, task) {
            continue;
        }
        if store.services.contains_key(&task.service_id) {
            // Global tasks (slot 0) keep their history per node.
            let node = if task.slot == 0 { task.node_id.as_deref().unwrap_or("") } else { "" };
            history.entry((task.service_id.as_str(), task.slot, node)).or_default().push(task);
        } else if task.desired_state >= TaskState::Remove {
            units.push(vec![delete(task)]);
        }
    }
    for ((service_id, _, _), mut tasks) in history {
        let limit = store.services.get(service_id).map_or(0, |s| s.spec.task_history_limit);
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if tasks.len() <= limit {
            continue;
        }
        tasks.sort_by(|a, b| {
            (a.meta.created_at_ms, a.meta.version, &a.meta.id).cmp(&(b.meta.created_at_ms, b.meta.version, &b.meta.id))
        });
        let excess = tasks.len() - limit;
        units.extend(tasks.into_iter().take(excess).map(|t| vec![delete(t)]));
    }
    units
}

fn delete(task: &Task) -> Change {
    Change::Delete { kind: Kind::Task, id: task.meta.id.clone(), expected_version: Some(task.meta.version) }
}

#[cfg(test)]
mod tests {
    use crate::orchestrator::testkit::{Sim, replicated};
    use crate::store::TaskState;

    #[test]
    fn keeps_five_finished_tasks_per_slot() {
        let mut sim = Sim::new();
        sim.add_node("a");
        let mut spec = replicated(1);
        spec.restart.delay_ms = 0;
        let service = sim.add_service("web", spec);
        sim.converge();
        let first = sim.running(&service).remove(0).meta.id;
        for _ in 0..8 {
            sim.now += 1_000;
            let task = sim.running(&service).remove(0);
            sim.set_state(&task.meta.id, TaskState::Failed);
            sim.converge();
        }
        let tasks = sim.tasks(&service);
        assert_eq!(tasks.iter().filter(|t| !t.is_live()).count(), 5, "five finished tasks kept");
        assert_eq!(sim.running(&service).len(), 1);
        assert!(tasks.iter().all(|t| t.meta.id != first), "the oldest went first");
    }

    #[test]
    fn removed_service_tasks_are_shut_down_then_deleted() {
        let mut sim = Sim::new();
        sim.add_node("a");
        let service = sim.add_service("web", replicated(3));
        sim.converge();
        sim.remove_service(&service);
        sim.reconcile();
        assert!(sim.tasks(&service).iter().all(|t| t.desired_state == TaskState::Remove));
        sim.converge();
        assert!(sim.tasks(&service).is_empty());
    }
}

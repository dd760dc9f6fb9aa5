//! The global orchestrator: one live task on every node that is ready, active and satisfies the
//! service's constraints. Tasks are created with their node set; the scheduler only checks
//! that node's resources. A node whose labels no longer satisfy the constraints loses its task;
//! drained and down nodes are handled by the node reconciler; paused nodes keep what they have.

use super::common::{Fit, IdSource, Unit, create, new_task, shut_down, tasks_of};
use crate::store::{Change, Service, ServiceMode, Store, Task, TaskState};
use std::collections::HashMap;

/// Creates the missing tasks and shuts down the extra ones of a global service.
pub fn reconcile_global(store: &Store, service: &Service, now_ms: i64, ids: &mut dyn IdSource) -> Vec<Change> {
    units(store, service, &tasks_of(store, &service.meta.id), now_ms, ids).into_iter().flatten().collect()
}

pub(crate) fn units(
    store: &Store,
    service: &Service,
    tasks: &[&Task],
    now_ms: i64,
    ids: &mut dyn IdSource,
) -> Vec<Unit> {
    if service.spec.mode != ServiceMode::Global {
        return Vec::new();
    }
    let mut by_node: HashMap<&str, Vec<&Task>> = HashMap::new();
    for task in tasks.iter().copied().filter(|t| t.is_live()) {
        if let Some(node_id) = task.node_id.as_deref() {
            by_node.entry(node_id).or_default().push(task);
        }
    }
    let fit = Fit::of(&service.spec);
    let mut units = Vec::new();
    for (node_id, node) in &store.nodes {
        let live = by_node.remove(node_id.as_str()).unwrap_or_default();
        if live.is_empty() {
            if fit.accepts_new_tasks(node) {
                units.push(create(new_task(service, 0, Some(node_id.clone()), now_ms, ids)));
            }
        } else if fit.satisfied_by(node) == Some(false) {
            units.extend(shut_down(live));
        } else {
            units.extend(shut_down(extras(service, live)));
        }
    }
    units
}

/// All but one of the live tasks on a node (the one kept is running if any, else the newest),
/// counted apart for tasks that match the spec and those a rolling update will replace: during a
/// start-first update a node holds one of each.
fn extras<'a>(service: &Service, live: Vec<&'a Task>) -> Vec<&'a Task> {
    let (mut current, mut outdated): (Vec<&Task>, Vec<&Task>) =
        live.into_iter().partition(|t| t.spec.same_task_as(&service.spec));
    let mut extras = Vec::new();
    for group in [&mut current, &mut outdated] {
        group.sort_by_key(|t| (t.status.state == TaskState::Running, t.meta.created_at_ms, t.meta.id.clone()));
        group.pop();
        extras.append(group);
    }
    extras
}

#[cfg(test)]
mod tests {
    use crate::orchestrator::testkit::{Sim, global};
    use crate::store::Availability;

    #[test]
    fn one_task_per_node_and_a_new_node_gets_one() {
        let mut sim = Sim::new();
        sim.add_node("a");
        sim.add_node("b");
        let service = sim.add_service("agent", global());
        sim.converge();
        assert_eq!(sim.running_per_node(&service), [("a".to_string(), 1), ("b".to_string(), 1)].into());
        sim.add_node("c");
        sim.converge();
        assert_eq!(sim.running_per_node(&service).len(), 3);
        assert!(sim.running_per_node(&service).values().all(|&n| n == 1));
        assert!(sim.running(&service).iter().all(|t| t.slot == 0));
    }

    #[test]
    fn follows_constraints_and_availability() {
        let mut sim = Sim::new();
        let a = sim.add_node("a");
        let b = sim.add_node("b");
        sim.add_node("c");
        sim.update_node(&a, |n| {
            n.labels.insert("gpu".into(), "yes".into());
        });
        sim.update_node(&b, |n| {
            n.labels.insert("gpu".into(), "yes".into());
        });
        let mut spec = global();
        spec.placement.constraints = vec!["node.labels.gpu==yes".into()];
        let service = sim.add_service("agent", spec);
        sim.converge();
        assert_eq!(sim.running_per_node(&service), [("a".to_string(), 1), ("b".to_string(), 1)].into());
        // A label removed: the task goes. A paused node keeps its task; a drained one loses it.
        sim.update_node(&b, |n| {
            n.labels.remove("gpu");
        });
        sim.update_node(&a, |n| n.availability = Availability::Pause);
        sim.converge();
        assert_eq!(sim.running_per_node(&service), [("a".to_string(), 1)].into());
        sim.update_node(&a, |n| n.availability = Availability::Drain);
        sim.converge();
        assert!(sim.running_per_node(&service).is_empty());
        sim.update_node(&a, |n| n.availability = Availability::Active);
        sim.converge();
        assert_eq!(sim.running_per_node(&service), [("a".to_string(), 1)].into());
    }
}

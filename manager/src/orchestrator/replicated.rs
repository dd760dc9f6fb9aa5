//! The replicated orchestrator: keeps `replicas` slots occupied by a live task. A slot is
//! occupied while one of its tasks is live (desired READY..=COMPLETE); a slot whose tasks were
//! all shut down (drain, node down, scale down) is empty and is refilled with a new task.

use super::common::{IdSource, Unit, create, new_task, shut_down, tasks_of};
use crate::store::{Change, Service, ServiceMode, Store, Task, TaskState};
use std::collections::BTreeMap;

/// Creates tasks in the lowest free slots up to `replicas`, or shuts down the excess slots:
/// those with no running task first, then the highest.
pub fn reconcile_replicated(store: &Store, service: &Service, now_ms: i64, ids: &mut dyn IdSource) -> Vec<Change> {
    units(service, &tasks_of(store, &service.meta.id), now_ms, ids).into_iter().flatten().collect()
}

pub(crate) fn units(service: &Service, tasks: &[&Task], now_ms: i64, ids: &mut dyn IdSource) -> Vec<Unit> {
    let ServiceMode::Replicated { replicas } = service.spec.mode else { return Vec::new() };
    let mut slots: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
    for task in tasks.iter().copied().filter(|t| t.is_live()) {
        slots.entry(task.slot).or_default().push(task);
    }
    let occupied = slots.len() as u64;
    if occupied < replicas {
        let free = (1u64..).filter(|slot| !slots.contains_key(slot));
        free.take((replicas - occupied) as usize)
            .map(|slot| create(new_task(service, slot, None, now_ms, ids)))
            .collect()
    } else {
        let mut order: Vec<(bool, u64)> = slots
            .iter()
            .map(|(slot, tasks)| (tasks.iter().any(|t| t.status.state == TaskState::Running), *slot))
            .collect();
        // Not running first, then the highest slot.
        order.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let excess = (occupied - replicas) as usize;
        order.iter().take(excess).flat_map(|(_, slot)| shut_down(slots[slot].iter().copied())).collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::orchestrator::testkit::{Sim, replicated};
    use crate::store::ServiceMode;

    #[test]
    fn spreads_six_replicas_two_per_node() {
        let mut sim = Sim::new();
        for name in ["a", "b", "c"] {
            sim.add_node(name);
        }
        let service = sim.add_service("web", replicated(6));
        sim.converge();
        assert_eq!(
            sim.running_per_node(&service),
            [("a", 2), ("b", 2), ("c", 2)].map(|(n, c)| (n.to_string(), c)).into()
        );
        let slots: Vec<u64> = sim.running(&service).iter().map(|t| t.slot).collect();
        assert_eq!(slots, (1..=6).collect::<Vec<_>>());
    }

    #[test]
    fn scales_to_nine_then_three_keeping_the_lowest_slots() {
        let mut sim = Sim::new();
        for name in ["a", "b", "c"] {
            sim.add_node(name);
        }
        let service = sim.add_service("web", replicated(2));
        sim.converge();
        sim.update_service(&service, |s| s.spec.mode = ServiceMode::Replicated { replicas: 9 });
        sim.converge();
        assert_eq!(sim.running(&service).len(), 9);
        assert!(sim.running_per_node(&service).values().all(|&n| n == 3));
        sim.update_service(&service, |s| s.spec.mode = ServiceMode::Replicated { replicas: 3 });
        sim.converge();
        let slots: Vec<u64> = sim.running(&service).iter().map(|t| t.slot).collect();
        assert_eq!(slots, vec![1, 2, 3]);
    }

    #[test]
    fn scale_down_prefers_tasks_not_running() {
        let mut sim = Sim::new();
        sim.add_node("a");
        let service = sim.add_service("web", replicated(3));
        sim.reconcile();
        sim.schedule();
        // Only slot 3 runs; slots 1 and 2 are still assigned.
        let third = sim.tasks(&service).into_iter().find(|t| t.slot == 3).map(|t| t.meta.id.clone());
        sim.set_state(&third.unwrap_or_default(), crate::store::TaskState::Running);
        sim.update_service(&service, |s| s.spec.mode = ServiceMode::Replicated { replicas: 1 });
        sim.reconcile();
        let live: Vec<u64> = sim.tasks(&service).iter().filter(|t| t.is_live()).map(|t| t.slot).collect();
        assert_eq!(live, vec![3]);
    }
}

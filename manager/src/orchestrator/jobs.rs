//! The job orchestrators. Job tasks have desired state COMPLETE and run once.
//! Replicated job: slots 1..=total_completions each run until one of their tasks completes,
//! with at most `max_concurrent` slots executing at a time. Global job: one task to completion
//! per eligible node. Tasks of an older `job_iteration` are shut down (the job runs again).
//! A failed task is the restart supervisor's: it is replaced in its slot, or kept as the
//! slot's last word once the restart policy gives up.

use super::common::{Fit, IdSource, Unit, create, new_task, shut_down, tasks_of};
use super::restart;
use crate::store::{Change, Service, ServiceMode, Store, Task, TaskState};
use std::collections::{BTreeMap, HashSet};

/// Starts the next slots of a replicated job, or one task per node of a global job.
pub fn reconcile_job(store: &Store, service: &Service, now_ms: i64, ids: &mut dyn IdSource) -> Vec<Change> {
    units(store, service, &tasks_of(store, &service.meta.id), now_ms, ids).into_iter().flatten().collect()
}

pub(crate) fn units(
    store: &Store,
    service: &Service,
    tasks: &[&Task],
    now_ms: i64,
    ids: &mut dyn IdSource,
) -> Vec<Unit> {
    let (current, old): (Vec<&Task>, Vec<&Task>) =
        tasks.iter().copied().partition(|t| t.job_iteration == service.job_iteration);
    let mut units = shut_down(old.into_iter().filter(|t| t.is_live()));
    match service.spec.mode {
        ServiceMode::ReplicatedJob { max_concurrent, total_completions } => {
            let job = Job { store, service, max_concurrent, total: total_completions };
            units.extend(job.replicated(&current, now_ms, ids));
        }
        ServiceMode::GlobalJob => units.extend(global(store, service, &current, now_ms, ids)),
        ServiceMode::Replicated { .. } | ServiceMode::Global => return Vec::new(),
    }
    units
}

/// What became of one slot of a replicated job.
#[derive(Default)]
struct Slot<'a> {
    done: bool,
    executing: bool,
    live: Vec<&'a Task>,
}

struct Job<'a> {
    store: &'a Store,
    service: &'a Service,
    max_concurrent: u64,
    total: u64,
}

impl Job<'_> {
    fn replicated(&self, tasks: &[&Task], now_ms: i64, ids: &mut dyn IdSource) -> Vec<Unit> {
        let mut slots: BTreeMap<u64, Slot<'_>> = BTreeMap::new();
        for task in tasks {
            let slot = slots.entry(task.slot).or_default();
            slot.done |= task.status.state == TaskState::Complete;
            if task.is_live() {
                // A failed task about to be restarted still takes its share of max_concurrent.
                slot.executing |=
                    !task.status.state.is_ended() || restart::will_restart(self.store, self.service, task);
                slot.live.push(task);
            }
        }
        // Slots beyond the total (it was lowered) are shut down.
        let beyond = slots.split_off(&(self.total + 1));
        let mut units: Vec<Unit> = beyond.values().flat_map(|s| shut_down(s.live.iter().copied())).collect();
        let limit = if self.max_concurrent == 0 { self.total } else { self.max_concurrent.min(self.total) };
        let executing = slots.values().filter(|s| s.executing && !s.done).count() as u64;
        let free = (1..=self.total).filter(|n| slots.get(n).is_none_or(|s| !s.done && s.live.is_empty()));
        units.extend(
            free.take(limit.saturating_sub(executing) as usize)
                .map(|slot| create(new_task(self.service, slot, None, now_ms, ids))),
        );
        units
    }
}

fn global(store: &Store, service: &Service, tasks: &[&Task], now_ms: i64, ids: &mut dyn IdSource) -> Vec<Unit> {
    let covered: HashSet<&str> = tasks
        .iter()
        .filter(|t| t.is_live() || t.status.state == TaskState::Complete)
        .filter_map(|t| t.node_id.as_deref())
        .collect();
    let fit = Fit::of(&service.spec);
    store
        .nodes
        .iter()
        .filter(|(id, node)| !covered.contains(id.as_str()) && fit.accepts_new_tasks(node))
        .map(|(id, _)| create(new_task(service, 0, Some(id.clone()), now_ms, ids)))
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::orchestrator::testkit::Sim;
    use crate::store::{RestartCondition, ServiceMode, ServiceSpec, TaskState};

    fn job(mode: ServiceMode) -> ServiceSpec {
        let mut spec = ServiceSpec { image: "busybox".into(), mode, ..ServiceSpec::default() };
        spec.restart.condition = RestartCondition::OnFailure;
        spec.restart.delay_ms = 0;
        spec
    }

    #[test]
    fn replicated_job_runs_total_completions_max_concurrent_at_a_time() {
        let mut sim = Sim::new();
        sim.add_node("a");
        sim.add_node("b");
        let service =
            sim.add_service("batch", job(ServiceMode::ReplicatedJob { max_concurrent: 2, total_completions: 5 }));
        let mut finished = 0;
        for _ in 0..10 {
            sim.converge();
            let running = sim.running(&service);
            assert!(running.len() <= 2, "at most max_concurrent at a time");
            let Some(first) = running.first().map(|t| t.meta.id.clone()) else { break };
            // The first running task fails once, then everything completes.
            let state = if finished == 0 { TaskState::Failed } else { TaskState::Complete };
            sim.set_state(&first, state);
            finished += 1;
        }
        let complete: Vec<u64> =
            sim.tasks(&service).iter().filter(|t| t.status.state == TaskState::Complete).map(|t| t.slot).collect();
        assert_eq!(complete.len(), 5, "{complete:?}");
        assert_eq!(finished, 6, "one failure was retried");
        assert!(sim.tasks(&service).iter().all(|t| t.status.state.is_ended()));
    }

    #[test]
    fn global_job_runs_once_per_node_and_again_on_a_new_iteration() {
        let mut sim = Sim::new();
        sim.add_node("a");
        sim.add_node("b");
        let service = sim.add_service("migrate", job(ServiceMode::GlobalJob));
        sim.converge();
        for task in sim.running(&service) {
            sim.set_state(&task.meta.id, TaskState::Complete);
        }
        sim.converge();
        assert!(sim.running(&service).is_empty());
        assert_eq!(sim.tasks(&service).len(), 2);
        sim.update_service(&service, |s| s.job_iteration += 1);
        sim.converge();
        assert_eq!(sim.running(&service).len(), 2);
        assert_eq!(sim.tasks(&service).len(), 4);
    }
}

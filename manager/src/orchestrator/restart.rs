//! The restart supervisor. A live task that ended (COMPLETE for a service, FAILED, REJECTED,
//! SHUTDOWN or ORPHANED while meant to run) is shut down and replaced in the same slot (or on
//! the same node, global) when its restart policy allows: condition none | on-failure | any,
//! at most `max_attempts` restarts within `window_ms`, counted from the end of the task.
//!
//! Delay: the replacement is created at once, with desired state READY and
//! `restart.not_before_ms = end + delay`. It is scheduled right away (it keeps its slot and
//! reserves its node), the agent may prepare it, and [`reconcile_restart_delays`] moves it to
//! RUNNING (COMPLETE for jobs) once the time has come. The delay lives in the store, so it
//! survives a leader change; [`next_restart_due`] tells the leader when to wake up.
//!
//! A delayed replacement that ends before its start time (REJECTED while the agent prepared it,
//! typically because its image cannot be pulled) is replaced only once that time has come:
//! replacing it at once would start a hot loop of rejected tasks that ignores the delay (and
//! floods the Raft log and the agents' sessions).
//!
//! When the policy gives up, the ended task is left as it is: it stays live and keeps its slot,
//! so the slot is not refilled. Every decision depends only on the store, so a task the policy
//! gave up on gets the same answer on every pass.

use super::common::{Fit, IdSource, SlotKey, Unit, is_finished, new_task, set_desired, slot_key};
use std::collections::HashSet;
use crate::store::{Change, Object, RestartCondition, RestartInfo, Service, ServiceMode, Store, Task, TaskState};

/// Replaces the ended tasks whose restart policy allows it.
pub fn reconcile_restarts(store: &Store, now_ms: i64, ids: &mut dyn IdSource) -> Vec<Change> {
    units(store, now_ms, ids).into_iter().flatten().collect()
}

pub(crate) fn units(store: &Store, now_ms: i64, ids: &mut dyn IdSource) -> Vec<Unit> {
    let mut units = Vec::new();
    for task in store.tasks.values() {
        if !task.is_live() || !task.status.state.is_ended() || waiting_for_its_start(task, now_ms) {
            continue;
        }
        let Some(service) = store.services.get(&task.service_id) else { continue };
        if let Some(replacement) = replacement(store, service, task, now_ms, ids) {
            units.push(vec![set_desired(task, TaskState::Shutdown), Change::Create(Object::Task(replacement))]);
        }
    }
    units
}

/// Whether `task` is a delayed replacement whose start time has not come yet.
fn waiting_for_its_start(task: &Task, now_ms: i64) -> bool {
    task.desired_state == TaskState::Ready && task.restart.not_before_ms > now_ms
}

/// Where and how the ended `task` is restarted, if its policy restarts it: the node (global
/// modes), the replacement's bookkeeping and the end time of `task`.
struct RestartPlan {
    node_id: Option<String>,
    info: RestartInfo,
    end: i64,
}

fn plan(store: &Store, service: &Service, task: &Task) -> Option<RestartPlan> {
    let spec = &service.spec;
    if spec.is_job() && (task.status.state == TaskState::Complete || task.job_iteration != service.job_iteration) {
        return None;
    }
    let node_id = match spec.mode {
        ServiceMode::Global | ServiceMode::GlobalJob => {
            let node_id = task.node_id.as_deref()?;
            let node = store.nodes.get(node_id)?;
            if !Fit::of(spec).accepts_new_tasks(node) {
                return None;
            }
            Some(node_id.to_string())
        }
        ServiceMode::Replicated { .. } | ServiceMode::ReplicatedJob { .. } => None,
    };
    let end = if task.status.timestamp_ms > 0 { task.status.timestamp_ms } else { task.meta.updated_at_ms };
    let info = next_restart(task, spec.same_task_as(&task.spec), end)?;
    Some(RestartPlan { node_id, info, end })
}

/// Whether the live, ended `task` is about to be replaced (it still counts as executing).
pub(crate) fn will_restart(store: &Store, service: &Service, task: &Task) -> bool {
    plan(store, service, task).is_some()
}

/// The replacement of the ended `task`, if its policy restarts it.
fn replacement(store: &Store, service: &Service, task: &Task, now_ms: i64, ids: &mut dyn IdSource) -> Option<Task> {
    let RestartPlan { node_id, info, end } = plan(store, service, task)?;
    let mut new = new_task(service, task.slot, node_id, now_ms, ids);
    let delay = i64::try_from(task.spec.restart.delay_ms).unwrap_or(i64::MAX);
    let not_before = end.saturating_add(delay);
    if not_before > now_ms {
        new.desired_state = TaskState::Ready;
        new.status.message = format!("restart delayed until {not_before} ms");
    }
    new.restart = RestartInfo { not_before_ms: not_before, ..info };
    Some(new)
}

/// The restart bookkeeping of the replacement of `task`, which ended at `end`, or `None` when
/// its policy does not restart it. Counts start afresh when the spec changed.
fn next_restart(task: &Task, same_spec: bool, end: i64) -> Option<RestartInfo> {
    let policy = &task.spec.restart;
    let restart = match policy.condition {
        RestartCondition::None => false,
        RestartCondition::OnFailure => task.status.state != TaskState::Complete,
        RestartCondition::Any => true,
    };
    if !restart {
        return None;
    }
    let previous = if same_spec { task.restart.clone() } else { RestartInfo::default() };
    let window = i64::try_from(policy.window_ms).unwrap_or(i64::MAX);
    let mut history: Vec<i64> =
        previous.history_ms.into_iter().filter(|&at| window == 0 || at > end.saturating_sub(window)).collect();
    let max = usize::try_from(policy.max_attempts).unwrap_or(usize::MAX);
    if max > 0 && history.len() >= max {
        return None;
    }
    if max > 0 {
        history.push(end);
        let excess = history.len().saturating_sub(max);
        history.drain(..excess);
    }
    Some(RestartInfo { attempts: previous.attempts + 1, history_ms: history, not_before_ms: 0 })
}

/// Starts the delayed replacements whose time has come (desired READY -> RUNNING / COMPLETE).
pub fn reconcile_restart_delays(store: &Store, now_ms: i64) -> Vec<Change> {
    delay_units(store, now_ms).into_iter().flatten().collect()
}

/// A READY task also waits for the other tasks of its slot (or node, global) that are still
/// stopping: a stop-first rolling update creates the replacement READY beside the old task.
pub(crate) fn delay_units(store: &Store, now_ms: i64) -> Vec<Unit> {
    let due: Vec<&Task> = store
        .tasks
        .values()
        .filter(|t| t.desired_state == TaskState::Ready && t.restart.not_before_ms <= now_ms)
        .collect();
    if due.is_empty() {
        return Vec::new();
    }
    let stopping: HashSet<SlotKey> =
        store.tasks.values().filter(|t| !t.is_live() && !is_finished(store, t)).map(slot_key).collect();
    due.into_iter()
        .filter(|t| !stopping.contains(&slot_key(t)))
        .map(|t| vec![set_desired(t, t.spec.run_state())])
        .collect()
}

/// The earliest time a delayed replacement is due, for the leader's timer.
pub fn next_restart_due(store: &Store) -> Option<i64> {
    store.tasks.values().filter(|t| t.desired_state == TaskState::Ready).map(|t| t.restart.not_before_ms).min()
}

#[cfg(test)]
mod tests {
    use super::next_restart_due;
    use crate::orchestrator::testkit::{Sim, replicated};
    use crate::store::{RestartCondition, TaskState};

    #[test]
    fn on_failure_restarts_until_max_attempts() {
        let mut sim = Sim::new();
        sim.add_node("a");
        let mut spec = replicated(1);
        spec.restart.condition = RestartCondition::OnFailure;
        spec.restart.max_attempts = 2;
        spec.restart.delay_ms = 0;
        let service = sim.add_service("web", spec);
        sim.converge();
        for attempt in 1..=3 {
            let task = sim.running(&service).remove(0);
            sim.set_state(&task.meta.id, TaskState::Failed);
            sim.converge();
            let running = sim.running(&service);
            if attempt <= 2 {
                assert_eq!(running.len(), 1, "restart {attempt}");
                assert_eq!(running[0].slot, 1);
                assert_eq!(running[0].restart.attempts, attempt);
            } else {
                assert!(running.is_empty(), "max attempts reached");
                let live: Vec<_> = sim.tasks(&service).into_iter().filter(|t| t.is_live()).collect();
                assert_eq!(live.len(), 1, "the failed task keeps the slot");
                assert_eq!(live[0].status.state, TaskState::Failed);
            }
        }
    }

    #[test]
    fn on_failure_does_not_restart_a_completed_task_but_any_does() {
        let mut sim = Sim::new();
        sim.add_node("a");
        let mut on_failure = replicated(1);
        on_failure.restart.condition = RestartCondition::OnFailure;
        let mut any = replicated(1);
        any.restart.delay_ms = 0;
        let quiet = sim.add_service("quiet", on_failure);
        let busy = sim.add_service("busy", any);
        sim.converge();
        for service in [&quiet, &busy] {
            let task = sim.running(service).remove(0);
            sim.set_state(&task.meta.id, TaskState::Complete);
        }
        sim.converge();
        assert!(sim.running(&quiet).is_empty());
        assert_eq!(sim.running(&busy).len(), 1);
    }

    #[test]
    fn window_forgets_old_restarts() {
        let mut sim = Sim::new();
        sim.add_node("a");
        let mut spec = replicated(1);
        spec.restart.max_attempts = 1;
        spec.restart.window_ms = 10_000;
        spec.restart.delay_ms = 0;
        let service = sim.add_service("web", spec);
        sim.converge();
        for _ in 0..3 {
            sim.now += 60_000;
            let task = sim.running(&service).remove(0);
            sim.set_state(&task.meta.id, TaskState::Failed);
            sim.converge();
            assert_eq!(sim.running(&service).len(), 1, "one restart per window is allowed");
        }
        let task = sim.running(&service).remove(0);
        sim.set_state(&task.meta.id, TaskState::Failed);
        sim.converge();
        assert!(sim.running(&service).is_empty(), "a second failure within the window");
    }

    #[test]
    fn delayed_replacement_waits_in_ready() {
        let mut sim = Sim::new();
        sim.add_node("a");
        let mut spec = replicated(1);
        spec.restart.delay_ms = 5_000;
        let service = sim.add_service("web", spec);
        sim.converge();
        let task = sim.running(&service).remove(0);
        sim.set_state(&task.meta.id, TaskState::Failed);
        let failed_at = sim.now;
        sim.converge();
        let waiting: Vec<_> = sim.tasks(&service).into_iter().filter(|t| t.desired_state == TaskState::Ready).collect();
        assert_eq!(waiting.len(), 1);
        assert_eq!(waiting[0].status.state, TaskState::Assigned, "scheduled while it waits");
        assert_eq!(next_restart_due(&sim.store), Some(failed_at + 5_000));
        assert!(sim.running(&service).is_empty());
        sim.now = failed_at + 5_000;
        sim.converge();
        assert_eq!(sim.running(&service).len(), 1);
        assert_eq!(next_restart_due(&sim.store), None);
    }

    #[test]
    fn a_replacement_rejected_while_it_waits_is_replaced_after_the_delay() {
        let mut sim = Sim::new();
        sim.add_node("a");
        let mut spec = replicated(1);
        spec.restart.delay_ms = 5_000;
        let service = sim.add_service("web", spec);
        sim.converge();
        let task = sim.running(&service).remove(0);
        sim.set_state(&task.meta.id, TaskState::Rejected);
        let rejected_at = sim.now;
        sim.converge();
        // The agent prepares the waiting replacement at once and rejects it too (no image).
        for _ in 0..3 {
            let waiting: Vec<_> =
                sim.tasks(&service).into_iter().filter(|t| t.desired_state == TaskState::Ready).collect();
            assert_eq!(waiting.len(), 1, "one waiting replacement");
            if waiting[0].status.state != TaskState::Rejected {
                sim.set_state(&waiting[0].meta.id, TaskState::Rejected);
            }
            sim.converge();
        }
        assert_eq!(sim.tasks(&service).len(), 2, "no new task before the delay");
        assert_eq!(next_restart_due(&sim.store), Some(rejected_at + 5_000));
        // Its time has come: one new attempt, delayed from the rejection.
        sim.now = rejected_at + 5_000;
        sim.converge();
        let tasks = sim.tasks(&service);
        assert_eq!(tasks.len(), 3, "{tasks:#?}");
        assert_eq!(tasks.iter().filter(|t| t.is_live() && !t.status.state.is_ended()).count(), 1);
    }
}

//! The rolling updater (Swarm's update supervisor), pure like the other loops. While a service's
//! update (or rollback) is in progress, it replaces the live tasks whose spec no longer matches
//! the service's ([`ServiceSpec::same_task_as`]), `parallelism` slots at a time:
//!
//! - **stop-first**: the old task is shut down and its replacement created with desired READY;
//!   [`super::restart`]'s delay stage starts it once the old one has stopped.
//! - **start-first**: the replacement is created RUNNING next to the old task, and the old task
//!   is shut down once the replacement runs (and is healthy, where the spec has a check).
//!
//! Each replacement is watched from its creation until `monitor` after it first ran. One that
//! fails meanwhile counts against `max_failure_ratio`; beyond it the failure action is taken:
//! pause, continue, or roll back (the previous spec becomes the spec, rolled out with the
//! rollback config). The next slot is taken `delay` after the last replacement ran. What the
//! updater keeps between rounds lives in [`UpdateStatus`], so a new leader carries on.

use super::common::{IdSource, Unit, new_task, set_desired, slot_key};
use crate::store::{
    Change, FailureAction, Object, Service, ServiceSpec, Task, TaskState, UpdateConfig, UpdateOrder, UpdateState,
    UpdateStatus,
};
use std::collections::{BTreeMap, HashMap};

/// The updater's changes for `service` (whose tasks are `tasks`) as one unit: the replacements,
/// the shut-downs and the service's new update status go together or not at all.
pub(crate) fn units(service: &Service, tasks: &[&Task], now_ms: i64, ids: &mut dyn IdSource) -> Vec<Unit> {
    let Some(status) = service.update_status.as_ref().filter(|s| s.state.in_progress()) else { return Vec::new() };
    if service.spec.is_job() {
        return Vec::new();
    }
    let config = config_of(&service.spec, status.state);
    let mut next = status.clone();
    let failed = watch(&mut next, config, tasks, now_ms);
    let slots = Slots::of(&service.spec, tasks);
    let mut changes = Vec::new();
    if let Some(failed) = failed.filter(|_| over_failure_ratio(&next, config, slots.len())) {
        match failure_action(service, config) {
            FailureAction::Pause => pause(&mut next, &failed, now_ms),
            FailureAction::Rollback => return vec![vec![roll_back(service, &failed, now_ms)]],
            FailureAction::Continue => {}
        }
    }
    if next.state.in_progress() {
        changes = replace(service, config, &slots, &mut next, now_ms, ids);
        if slots.outdated() == 0 && next.watching.is_empty() {
            complete(&mut next, now_ms);
        }
    }
    if next != *status {
        let mut updated = service.clone();
        updated.update_status = Some(next);
        changes.push(Change::Update { object: Object::Service(updated), expected_version: Some(service.meta.version) });
    }
    if changes.is_empty() { Vec::new() } else { vec![changes] }
}

/// The earliest time after `now_ms` at which the updater of some service has something to do
/// without any change to the store: the next slot after a delay, or the end of a replacement's
/// monitor period.
pub fn next_update_due<'a>(services: impl IntoIterator<Item = &'a Service>, now_ms: i64) -> Option<i64> {
    services
        .into_iter()
        .filter_map(|service| {
            let status = service.update_status.as_ref().filter(|s| s.state.in_progress())?;
            let monitor = ms(config_of(&service.spec, status.state).monitor_ms);
            let monitors = status.watching.values().filter(|&&since| since > 0).map(|since| since.saturating_add(monitor));
            monitors.chain([status.next_batch_ms]).filter(|&due| due > now_ms).min()
        })
        .min()
}

fn config_of(spec: &ServiceSpec, state: UpdateState) -> &UpdateConfig {
    if state.is_rollback() { &spec.rollback_config } else { &spec.update_config }
}

fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Whether `task` has done what a replacement must: it runs, and is healthy where checked.
fn is_up(task: &Task) -> bool {
    task.status.state == TaskState::Running && (!task.spec.has_health_check() || task.status.health == "healthy")
}

/// Whether `task` failed or ended early: Swarm's "failure or early termination".
fn has_failed(task: &Task) -> bool {
    matches!(task.status.state, TaskState::Failed | TaskState::Rejected) || (task.status.state.is_ended() && task.is_live())
}

/// Follows the watched replacements: notes when each first runs, drops those past their
/// monitor period or gone, and counts those that failed. Returns the last failed task's id.
fn watch(status: &mut UpdateStatus, config: &UpdateConfig, tasks: &[&Task], now_ms: i64) -> Option<String> {
    let by_id: HashMap<&str, &Task> = tasks.iter().map(|t| (t.meta.id.as_str(), *t)).collect();
    let mut failed = None;
    let watching = std::mem::take(&mut status.watching);
    for (id, since) in watching {
        let Some(task) = by_id.get(id.as_str()) else { continue };
        if has_failed(task) {
            status.failures += 1;
            failed = Some(id);
        } else if !task.is_live() || (since > 0 && now_ms >= since.saturating_add(ms(config.monitor_ms))) {
            // Scaled away, or watched long enough.
        } else if since == 0 && is_up(task) {
            status.next_batch_ms = now_ms.saturating_add(ms(config.delay_ms));
            status.watching.insert(id, now_ms);
        } else {
            status.watching.insert(id, since);
        }
    }
    failed
}

/// Whether the failures so far exceed the ratio the config tolerates, out of `total` slots.
fn over_failure_ratio(status: &UpdateStatus, config: &UpdateConfig, total: usize) -> bool {
    status.failures > 0 && u128::from(status.failures) * 1_000_000 > u128::from(config.max_failure_ppm) * total as u128
}

/// The failure action, where it can be taken: a rollback needs a previous spec and cannot
/// itself be rolled back (both pause instead).
fn failure_action(service: &Service, config: &UpdateConfig) -> FailureAction {
    let rolling_back = service.update_status.as_ref().is_some_and(|s| s.state.is_rollback());
    match config.failure_action {
        FailureAction::Rollback if rolling_back || service.previous_spec.is_none() => FailureAction::Pause,
        action => action,
    }
}

fn pause(status: &mut UpdateStatus, failed: &str, now_ms: i64) {
    let (state, what) = if status.state.is_rollback() {
        (UpdateState::RollbackPaused, "rollback")
    } else {
        (UpdateState::Paused, "update")
    };
    status.state = state;
    status.message = format!("{what} paused due to failure or early termination of task {failed}");
    status.completed_ms = now_ms;
}

fn complete(status: &mut UpdateStatus, now_ms: i64) {
    let (state, message) = if status.state.is_rollback() {
        (UpdateState::RollbackCompleted, "rollback completed")
    } else {
        (UpdateState::Completed, "update completed")
    };
    status.state = state;
    status.message = message.into();
    status.completed_ms = now_ms;
    status.next_batch_ms = 0;
}

/// The automatic rollback: the previous spec becomes the spec, and the updater starts over.
fn roll_back(service: &Service, failed: &str, now_ms: i64) -> Change {
    let mut updated = service.clone();
    if let Some(previous) = updated.previous_spec.take() {
        updated.previous_spec = Some(Box::new(std::mem::replace(&mut updated.spec, *previous)));
    }
    updated.update_status = Some(UpdateStatus {
        state: UpdateState::RollbackStarted,
        started_ms: now_ms,
        message: format!("update rolled back due to failure or early termination of task {failed}"),
        ..UpdateStatus::default()
    });
    Change::Update { object: Object::Service(updated), expected_version: Some(service.meta.version) }
}

/// The live tasks of a service by slot (replicated) or node (global), split into those that
/// match the spec and those to replace.
struct Slots<'a> {
    slots: BTreeMap<(u64, &'a str), Slot<'a>>,
}

#[derive(Default)]
struct Slot<'a> {
    current: Vec<&'a Task>,
    outdated: Vec<&'a Task>,
}

impl<'a> Slots<'a> {
    fn of(spec: &ServiceSpec, tasks: &[&'a Task]) -> Self {
        let mut slots: BTreeMap<(u64, &str), Slot> = BTreeMap::new();
        for task in tasks.iter().copied().filter(|t| t.is_live()) {
            let (_, slot, node) = slot_key(task);
            let slot = slots.entry((slot, node)).or_default();
            if task.spec.same_task_as(spec) { slot.current.push(task) } else { slot.outdated.push(task) }
        }
        Slots { slots }
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    /// Slots that still hold a task to replace.
    fn outdated(&self) -> usize {
        self.slots.values().filter(|s| !s.outdated.is_empty()).count()
    }
}

/// Shuts down the old tasks whose replacement is up, and replaces the next slots while fewer
/// than `parallelism` replacements are on their way and the delay has passed.
fn replace(
    service: &Service,
    config: &UpdateConfig,
    slots: &Slots,
    status: &mut UpdateStatus,
    now_ms: i64,
    ids: &mut dyn IdSource,
) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut to_replace = Vec::new();
    for (&(slot, node), tasks) in &slots.slots {
        if tasks.outdated.is_empty() {
            continue;
        }
        if tasks.current.iter().any(|t| is_up(t)) {
            changes.extend(tasks.outdated.iter().map(|t| set_desired(t, TaskState::Shutdown)));
        } else if tasks.current.is_empty() {
            to_replace.push((slot, node, &tasks.outdated));
        }
    }
    // Replacements that failed leave the watch, so a `continue` update goes on past them.
    let on_the_way = status.watching.values().filter(|&&since| since == 0).count() as u64;
    if now_ms < status.next_batch_ms {
        return changes;
    }
    let budget = match config.parallelism {
        0 => usize::MAX,
        parallelism => usize::try_from(parallelism.saturating_sub(on_the_way)).unwrap_or(usize::MAX),
    };
    for (slot, node, outdated) in to_replace.into_iter().take(budget) {
        let node_id = (slot == 0).then(|| node.to_string());
        let mut replacement = new_task(service, slot, node_id, now_ms, ids);
        replacement.status.message = "created by the rolling update".into();
        if config.order == UpdateOrder::StopFirst {
            replacement.desired_state = TaskState::Ready;
            changes.extend(outdated.iter().map(|t| set_desired(t, TaskState::Shutdown)));
        }
        status.watching.insert(replacement.meta.id.clone(), 0);
        changes.push(Change::Create(Object::Task(replacement)));
    }
    changes
}

#[cfg(test)]
mod tests;

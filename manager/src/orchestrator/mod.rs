//! The orchestrators: pure functions from a store snapshot (and the leader's clock) to a batch
//! of changes, proposed through Raft as one command. Every update and delete carries the
//! version it was computed from, so a batch built on a stale snapshot is refused whole and is
//! simply computed again.
//!
//! Terms: a task is *live* while its desired state is READY, RUNNING or COMPLETE (jobs); a
//! live task occupies its slot (replicated) or node (global). Shutting a task down (desired
//! SHUTDOWN) empties its slot, which the orchestrator of the service then refills.
//!
//! The leader runs [`reconcile_all`] after every committed change (and when
//! [`next_restart_due`] comes), proposes the batch, and repeats until it is empty; then it runs
//! the scheduler on the PENDING tasks.

mod common;
mod global;
mod jobs;
mod nodes;
mod reaper;
mod replicated;
mod restart;
mod update;

#[cfg(test)]
pub(crate) mod testkit;

pub use common::IdSource;
pub use global::reconcile_global;
pub use jobs::reconcile_job;
pub use nodes::reconcile_nodes;
pub use reaper::{reconcile_reaper, reconcile_removed_services};
pub use replicated::reconcile_replicated;
pub use restart::{next_restart_due, reconcile_restart_delays, reconcile_restarts};
pub use update::next_update_due;

use crate::store::{Change, Service, ServiceMode, Store, Task};
use common::{Plan, Unit, tasks_by_service, tasks_of};

/// The orchestrator of `service`'s mode.
pub fn reconcile_service(store: &Store, service: &Service, now_ms: i64, ids: &mut dyn IdSource) -> Vec<Change> {
    service_units(store, service, &tasks_of(store, &service.meta.id), now_ms, ids).into_iter().flatten().collect()
}

/// The units of the service's mode orchestrator, then those of its rolling update.
fn service_units(store: &Store, service: &Service, tasks: &[&Task], now_ms: i64, ids: &mut dyn IdSource) -> Vec<Unit> {
    let mut units = match service.spec.mode {
        ServiceMode::Replicated { .. } => replicated::units(service, tasks, now_ms, ids),
        ServiceMode::Global => global::units(store, service, tasks, now_ms, ids),
        ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob => jobs::units(store, service, tasks, now_ms, ids),
    };
    units.extend(update::units(service, tasks, now_ms, ids));
    units
}

/// Every control loop in one conflict-free batch, in this order: service removal, node changes
/// and constraints, each service's orchestrator, restarts, restart delays, the reaper. A change
/// to a task an earlier stage already changes is left for the next round, so the leader calls
/// this again after each commit until it returns nothing.
pub fn reconcile_all(store: &Store, now_ms: i64, ids: &mut dyn IdSource) -> Vec<Change> {
    let mut plan = Plan::default();
    plan.extend(reaper::removal_units(store));
    plan.extend(nodes::units(store));
    let by_service = tasks_by_service(store);
    for service in store.services.values() {
        let tasks = by_service.get(service.meta.id.as_str()).map(Vec::as_slice).unwrap_or_default();
        plan.extend(service_units(store, service, tasks, now_ms, ids));
    }
    plan.extend(restart::units(store, now_ms, ids));
    plan.extend(restart::delay_units(store, now_ms));
    plan.extend(reaper::units(store));
    plan.changes
}

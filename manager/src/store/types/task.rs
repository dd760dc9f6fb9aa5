//! A task: one-shot unit of work of a service, in a slot (replicated) or on a node (global).

use super::{Meta, ServiceSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The states of a task, in the order the observed state moves through them (it never moves
/// back). The desired state uses the same values: READY (placed, waiting for a restart delay),
/// RUNNING, COMPLETE (jobs: run to completion), SHUTDOWN, REMOVE (service removed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaskState {
    #[default]
    New,
    Pending,
    Assigned,
    Accepted,
    Preparing,
    Ready,
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
    Remove,
    Orphaned,
}

impl TaskState {
    pub const ALL: [TaskState; 14] = [
        TaskState::New,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Accepted,
        TaskState::Preparing,
        TaskState::Ready,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Complete,
        TaskState::Shutdown,
        TaskState::Failed,
        TaskState::Rejected,
        TaskState::Remove,
        TaskState::Orphaned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        TaskState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// An observed state after RUNNING: the task's container is gone (or never came).
    pub fn is_ended(self) -> bool {
        self > TaskState::Running
    }

    /// An observed state in which the task holds resources on its node (ASSIGNED..=RUNNING).
    pub fn holds_node(self) -> bool {
        (TaskState::Assigned..=TaskState::Running).contains(&self)
    }
}

/// What was last observed of a task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: TaskState,
    pub message: String,
    /// Why the task failed, if it did.
    pub err: String,
    /// When the state was observed (manager clock).
    pub timestamp_ms: i64,
    pub exit_code: Option<i32>,
    pub container_id: String,
    /// The task's address on each of its networks (network id -> IPv4 address, no prefix
    /// length), as its agent reported it.
    pub addresses: BTreeMap<String, String>,
    /// "" (no health check, or none reported yet), "starting", "healthy" or "unhealthy", as
    /// the agent last reported it.
    pub health: String,
}

/// Restart bookkeeping, carried from a task to its replacement while the spec is unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartInfo {
    /// Restarts of this slot (or node) that led to this task.
    pub attempts: u64,
    /// When those restarts happened, newest last; at most `max_attempts` entries are kept.
    pub history_ms: Vec<i64>,
    /// A delayed replacement (desired READY) is not started before this time.
    pub not_before_ms: i64,
}

/// One-shot unit of work placed on a node. Its observed state only moves forward.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub meta: Meta,
    pub service_id: String,
    /// Replicated services and replicated jobs: 1-based slot. Global: 0 (the node is the slot).
    pub slot: u64,
    /// Set by the scheduler (replicated) or at creation (global).
    pub node_id: Option<String>,
    pub desired_state: TaskState,
    pub status: TaskStatus,
    /// The spec the task was created from.
    pub spec: ServiceSpec,
    /// Jobs: the service's `job_iteration` the task belongs to.
    pub job_iteration: u64,
    pub restart: RestartInfo,
}

impl Task {
    /// Whether the task is meant to execute (desired READY, RUNNING or COMPLETE): it occupies
    /// its slot or node, so no other task is created there.
    pub fn is_live(&self) -> bool {
        self.desired_state <= TaskState::Complete
    }
}

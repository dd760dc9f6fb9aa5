//! `Op::SetTaskStatuses`: agents' status reports written as the status alone.

use super::{Event, Kind, Object, Response, Store, StoreError, TaskStatus, check_version, not_found};
use serde::{Deserialize, Serialize};

/// The new observed status of one task, computed on `expected_version` of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatusUpdate {
    pub task_id: String,
    pub expected_version: u64,
    pub status: TaskStatus,
}

impl Store {
    /// Checks every update first (task present, version as expected), then applies them all.
    pub(super) fn set_task_statuses(
        &mut self,
        index: u64,
        now: i64,
        updates: &[TaskStatusUpdate],
        events: &mut Vec<Event>,
    ) -> Result<Response, StoreError> {
        for update in updates {
            let task = self.tasks.get(&update.task_id).ok_or_else(|| not_found(Kind::Task, &update.task_id))?;
            check_version(Kind::Task, &update.task_id, Some(update.expected_version), task.meta.version)?;
        }
        for update in updates {
            let Some(task) = self.tasks.get_mut(&update.task_id) else { continue };
            task.status = update.status.clone();
            task.meta.version = index;
            task.meta.updated_at_ms = now;
            events.push(Event::Updated(Object::Task(task.clone())));
        }
        Ok(Response::Ok)
    }

}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Command, Meta, Op, RestartInfo, ServiceSpec, Task, TaskState};

    fn task(id: &str, version: u64) -> Task {
        Task {
            meta: Meta { id: id.into(), version, ..Meta::default() },
            service_id: "s".into(),
            slot: 1,
            node_id: Some("n".into()),
            desired_state: TaskState::Running,
            status: TaskStatus { state: TaskState::Assigned, ..TaskStatus::default() },
            spec: ServiceSpec::default(),
            job_iteration: 0,
            restart: RestartInfo::default(),
        }
    }

    fn running(task_id: &str, expected_version: u64) -> TaskStatusUpdate {
        let status = TaskStatus { state: TaskState::Running, message: "started".into(), ..TaskStatus::default() };
        TaskStatusUpdate { task_id: task_id.into(), expected_version, status }
    }

    #[test]
    fn all_or_nothing_on_the_versions_read() {
        let mut store = Store::default();
        store.tasks.insert("t1".into(), task("t1", 3));
        store.tasks.insert("t2".into(), task("t2", 4));
        let stale = Command { now_ms: 9, op: Op::SetTaskStatuses(vec![running("t1", 3), running("t2", 3)]) };
        let (response, events) = store.apply(10, &stale);
        assert!(matches!(response, Response::Rejected(StoreError::VersionConflict { .. })), "{response:?}");
        assert!(events.is_empty());
        assert_eq!(store.tasks["t1"].status.state, TaskState::Assigned, "nothing written");
        let gone = Command { now_ms: 9, op: Op::SetTaskStatuses(vec![running("t3", 1)]) };
        assert!(matches!(store.apply(11, &gone).0, Response::Rejected(StoreError::NotFound { .. })));

        let fresh = Command { now_ms: 9, op: Op::SetTaskStatuses(vec![running("t1", 3), running("t2", 4)]) };
        let (response, events) = store.apply(12, &fresh);
        assert_eq!(response, Response::Ok);
        assert_eq!(events.len(), 2);
        let t1 = &store.tasks["t1"];
        assert_eq!((t1.status.state, t1.meta.version, t1.meta.updated_at_ms), (TaskState::Running, 12, 9));
        assert_eq!(t1.spec, ServiceSpec::default(), "only the status changed");
    }
}

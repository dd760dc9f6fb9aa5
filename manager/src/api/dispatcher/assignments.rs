//! Which tasks an agent is told about, and the deltas of its session: pure functions of the
//! store and its events.

use crate::store::{Event, Object, Task, TaskState};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Whether the agent of `node_id` must know about `task`: scheduled there, and either meant to
/// execute or not yet seen to end (so that it is stopped when its desired state is beyond
/// RUNNING).
pub fn assigned_to(task: &Task, node_id: &str) -> bool {
    task.node_id.as_deref() == Some(node_id)
        && task.status.state >= TaskState::Assigned
        && (task.is_live() || !task.status.state.is_ended())
}

/// What one session message carries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Update {
    pub full: bool,
    pub assignments: Vec<Task>,
    pub removed: Vec<String>,
}

impl Update {
    pub fn is_empty(&self) -> bool {
        !self.full && self.assignments.is_empty() && self.removed.is_empty()
    }
}

/// What one session has told its agent: task id -> the desired state sent. A task is sent
/// again only when its desired state changes (an agent's own status reports are not echoed).
pub struct Tracker {
    node_id: String,
    sent: HashMap<String, TaskState>,
}

impl Tracker {
    pub fn new(node_id: &str) -> Self {
        Tracker { node_id: node_id.to_string(), sent: HashMap::new() }
    }

    /// Everything assigned to the node among `tasks` (the node's tasks, from the store's
    /// tasks-by-node index; any superset works), replacing what was sent before.
    pub fn full<'a>(&mut self, tasks: impl IntoIterator<Item = &'a Task>) -> Update {
        let assignments: Vec<Task> =
            tasks.into_iter().filter(|t| assigned_to(t, &self.node_id)).cloned().collect();
        self.sent = assignments.iter().map(|t| (t.meta.id.clone(), t.desired_state)).collect();
        Update { full: true, assignments, removed: Vec::new() }
    }

    /// The ids of the tasks the agent was told about (those assigned to the node as of the last
    /// `full` and the events since).
    pub fn task_ids(&self) -> impl Iterator<Item = &String> + '_ {
        self.sent.keys()
    }

    /// The changes `events` make to what the agent was told.
    pub fn delta<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>) -> Update {
        let mut assignments: BTreeMap<String, Task> = BTreeMap::new();
        let mut removed: BTreeSet<String> = BTreeSet::new();
        for event in events {
            match event {
                Event::Created(Object::Task(task)) | Event::Updated(Object::Task(task)) => {
                    let id = &task.meta.id;
                    if assigned_to(task, &self.node_id) {
                        if self.sent.get(id) != Some(&task.desired_state) {
                            self.sent.insert(id.clone(), task.desired_state);
                            removed.remove(id);
                            assignments.insert(id.clone(), task.clone());
                        }
                    } else if self.sent.remove(id).is_some() {
                        assignments.remove(id);
                        removed.insert(id.clone());
                    }
                }
                Event::Deleted(Object::Task(task)) if self.sent.remove(&task.meta.id).is_some() => {
                    assignments.remove(&task.meta.id);
                    removed.insert(task.meta.id.clone());
                }
                _ => {}
            }
        }
        Update { full: false, assignments: assignments.into_values().collect(), removed: removed.into_iter().collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Meta, RestartInfo, ServiceSpec, Store, TaskStatus};

    fn task(id: &str, node: &str, state: TaskState, desired: TaskState) -> Task {
        Task {
            meta: Meta { id: id.into(), ..Meta::default() },
            service_id: "s".into(),
            slot: 1,
            node_id: Some(node.into()),
            desired_state: desired,
            status: TaskStatus { state, ..TaskStatus::default() },
            spec: ServiceSpec::default(),
            job_iteration: 0,
            restart: RestartInfo::default(),
        }
    }

    #[test]
    fn which_tasks_an_agent_knows() {
        use TaskState::*;
        assert!(assigned_to(&task("t", "a", Assigned, Running), "a"));
        assert!(!assigned_to(&task("t", "a", Assigned, Running), "b"));
        assert!(!assigned_to(&task("t", "a", Pending, Running), "a"), "not scheduled yet");
        assert!(assigned_to(&task("t", "a", Running, Shutdown), "a"), "to be stopped");
        assert!(!assigned_to(&task("t", "a", Shutdown, Shutdown), "a"), "done with");
        assert!(assigned_to(&task("t", "a", Failed, Running), "a"), "awaiting its restart decision");
    }

    #[test]
    fn deltas_send_desired_changes_and_removals_only() {
        use TaskState::*;
        let mut store = Store::default();
        store.tasks.insert("t1".into(), task("t1", "a", Assigned, Running));
        let mut tracker = Tracker::new("a");
        assert_eq!(tracker.full(store.tasks.values()).assignments.len(), 1);
        let running = Event::Updated(Object::Task(task("t1", "a", Running, Running)));
        assert!(tracker.delta([&running]).is_empty(), "the agent's own report is not echoed");
        let stop = Event::Updated(Object::Task(task("t1", "a", Running, Shutdown)));
        let other = Event::Created(Object::Task(task("t2", "b", Assigned, Running)));
        let new = Event::Created(Object::Task(task("t3", "a", Assigned, Running)));
        let update = tracker.delta([&stop, &other, &new]);
        let ids: Vec<&str> = update.assignments.iter().map(|t| t.meta.id.as_str()).collect();
        assert_eq!(ids, vec!["t1", "t3"]);
        let stopped = Event::Updated(Object::Task(task("t1", "a", Shutdown, Shutdown)));
        let gone = Event::Deleted(Object::Task(task("t3", "a", Assigned, Running)));
        assert_eq!(tracker.delta([&stopped, &gone]).removed, vec!["t1".to_string(), "t3".to_string()]);
    }
}

//! Secondary indexes of the store, kept up to date from the events of applied commands so
//! that readers need not scan a whole table.
//!
//! [`TasksByNode`]: the ids of the tasks placed on each node. A dispatcher session starting (or
//! resyncing) reads its node's tasks from it instead of scanning every task: with 1,000 nodes
//! and 100,000 tasks, a full scan per session is 10^8 comparisons.

use super::{Event, Object, Store, Task};
use std::collections::{BTreeSet, HashMap};

/// Task ids by the node they are placed on (tasks without a node are not indexed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TasksByNode {
    by_node: HashMap<String, BTreeSet<String>>,
    /// The node each indexed task is on, so that an update or deletion finds the entry to
    /// change even if the task's node changed.
    node_of: HashMap<String, String>,
}

impl TasksByNode {
    /// The index of every task in `store`.
    pub fn build(store: &Store) -> TasksByNode {
        let mut index = TasksByNode::default();
        for task in store.tasks.values() {
            index.put(task);
        }
        index
    }

    /// Follows one applied change.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Created(Object::Task(task)) | Event::Updated(Object::Task(task)) => self.put(task),
            Event::Deleted(Object::Task(task)) => self.forget(&task.meta.id),
            _ => {}
        }
    }

    /// The ids of the tasks on `node_id`, in id order.
    pub fn task_ids(&self, node_id: &str) -> impl Iterator<Item = &String> + '_ {
        self.by_node.get(node_id).into_iter().flatten()
    }

    /// The tasks of `store` on `node_id` (the index must be that of `store`).
    pub fn tasks<'a>(&'a self, store: &'a Store, node_id: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.task_ids(node_id).filter_map(|id| store.tasks.get(id)).filter(move |t| t.node_id.as_deref() == Some(node_id))
    }

    fn put(&mut self, task: &Task) {
        let id = &task.meta.id;
        match (&task.node_id, self.node_of.get(id)) {
            (Some(node), Some(known)) if node == known => {}
            (Some(node), _) => {
                self.forget(id);
                self.by_node.entry(node.clone()).or_default().insert(id.clone());
                self.node_of.insert(id.clone(), node.clone());
            }
            (None, _) => self.forget(id),
        }
    }

    fn forget(&mut self, task_id: &str) {
        let Some(node) = self.node_of.remove(task_id) else { return };
        if let Some(ids) = self.by_node.get_mut(&node) {
            ids.remove(task_id);
            if ids.is_empty() {
                self.by_node.remove(&node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Meta, RestartInfo, ServiceSpec, TaskStatus};

    fn task(id: &str, node: Option<&str>) -> Task {
        Task {
            meta: Meta { id: id.into(), ..Meta::default() },
            service_id: "s".into(),
            slot: 1,
            node_id: node.map(Into::into),
            desired_state: Default::default(),
            status: TaskStatus::default(),
            spec: ServiceSpec::default(),
            job_iteration: 0,
            restart: RestartInfo::default(),
        }
    }

    fn ids<'a>(index: &'a TasksByNode, node: &str) -> Vec<&'a str> {
        index.task_ids(node).map(String::as_str).collect()
    }

    #[test]
    fn follows_creates_moves_and_deletes() {
        let mut index = TasksByNode::default();
        index.apply(&Event::Created(Object::Task(task("t1", None))));
        assert!(index.by_node.is_empty(), "a pending task is on no node");
        index.apply(&Event::Updated(Object::Task(task("t1", Some("a")))));
        index.apply(&Event::Created(Object::Task(task("t2", Some("a")))));
        assert_eq!(ids(&index, "a"), ["t1", "t2"]);
        index.apply(&Event::Updated(Object::Task(task("t1", Some("b")))));
        assert_eq!(ids(&index, "a"), ["t2"]);
        assert_eq!(ids(&index, "b"), ["t1"]);
        index.apply(&Event::Deleted(Object::Task(task("t1", Some("b")))));
        index.apply(&Event::Deleted(Object::Task(task("t2", Some("a")))));
        assert_eq!(index, TasksByNode::default(), "nothing left behind");
    }

    #[test]
    fn matches_a_rebuild_after_any_sequence_of_events() {
        // A small deterministic walk over creates, moves and deletes of 20 tasks on 4 nodes.
        let mut store = Store::default();
        let mut index = TasksByNode::default();
        let mut seed: u64 = 7;
        for _ in 0..2000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let id = format!("t{}", (seed >> 33) % 20);
            let node = match (seed >> 40) % 5 {
                4 => None,
                n => Some(format!("n{n}")),
            };
            let event = if (seed >> 50).is_multiple_of(4) {
                match store.tasks.remove(&id) {
                    Some(old) => Event::Deleted(Object::Task(old)),
                    None => continue,
                }
            } else {
                let new = task(&id, node.as_deref());
                match store.tasks.insert(id.clone(), new.clone()) {
                    Some(_) => Event::Updated(Object::Task(new)),
                    None => Event::Created(Object::Task(new)),
                }
            };
            index.apply(&event);
            assert_eq!(index, TasksByNode::build(&store));
        }
    }

    #[test]
    fn tasks_reads_only_the_nodes_own() {
        let mut store = Store::default();
        for (id, node) in [("t1", Some("a")), ("t2", Some("b")), ("t3", None), ("t4", Some("a"))] {
            store.tasks.insert(id.into(), task(id, node));
        }
        let index = TasksByNode::build(&store);
        let on_a: Vec<&str> = index.tasks(&store, "a").map(|t| t.meta.id.as_str()).collect();
        assert_eq!(on_a, ["t1", "t4"]);
        assert_eq!(index.tasks(&store, "c").count(), 0);
    }
}

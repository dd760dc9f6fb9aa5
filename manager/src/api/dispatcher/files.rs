//! The secrets and configs a session delivers to its agent: exactly those the tasks assigned to
//! the node reference, sent (decrypted) in the same message as the first assignment that needs
//! them or earlier, and named in `removed_*` once no assigned task needs them.

use super::assignments::assigned_to;
use crate::secrets::DataKey;
use crate::store::{Event, Object, Store, Task};
use proto::v1 as pb;
use std::collections::BTreeSet;

/// The ids of the secrets and of the configs that the tasks assigned to `node_id` reference.
#[cfg(test)]
pub fn needed(store: &Store, node_id: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    referenced(store.tasks.values().filter(|t| assigned_to(t, node_id)))
}

/// [`needed`] among the tasks `task_ids` (a session's assigned tasks, so that only the node's own
/// tasks are looked at, not the whole table): those of them still assigned to `node_id`.
pub fn needed_among<'a>(store: &Store, node_id: &str, task_ids: impl IntoIterator<Item = &'a String>) -> (BTreeSet<String>, BTreeSet<String>) {
    referenced(task_ids.into_iter().filter_map(|id| store.tasks.get(id)).filter(|t| assigned_to(t, node_id)))
}

fn referenced<'a>(tasks: impl Iterator<Item = &'a Task>) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut secrets = BTreeSet::new();
    let mut configs = BTreeSet::new();
    for task in tasks {
        secrets.extend(task.spec.secrets.iter().map(|f| f.id.clone()));
        configs.extend(task.spec.configs.iter().map(|f| f.id.clone()));
    }
    (secrets, configs)
}

/// Whether `events` may change what a node needs: a secret or config changed, or a task of the
/// node that references any came, changed or went. A task without secrets or configs adds
/// nothing to what is needed and removes nothing (a task's spec never changes), so its events
/// are skipped: they are most of a session's events, and each refresh looks up every task of
/// the node.
pub fn relevant<'a>(events: impl IntoIterator<Item = &'a Event>, node_id: &str) -> bool {
    events.into_iter().any(|event| match event {
        Event::Created(o) | Event::Updated(o) | Event::Deleted(o) => match o {
            Object::Task(task) => {
                task.node_id.as_deref() == Some(node_id) && !(task.spec.secrets.is_empty() && task.spec.configs.is_empty())
            }
            Object::Secret(_) | Object::Config(_) => true,
            _ => false,
        },
    })
}

/// What a message adds to and removes from the agent's secrets and configs.
#[derive(Debug, Default, PartialEq)]
pub struct FilesUpdate {
    pub secrets: Vec<pb::SecretData>,
    pub configs: Vec<pb::SecretData>,
    pub removed_secrets: Vec<String>,
    pub removed_configs: Vec<String>,
}

impl FilesUpdate {
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty() && self.configs.is_empty() && self.removed_secrets.is_empty() && self.removed_configs.is_empty()
    }

    pub fn fill(self, message: &mut pb::SessionMessage) {
        message.secrets = self.secrets;
        message.configs = self.configs;
        message.removed_secrets = self.removed_secrets;
        message.removed_configs = self.removed_configs;
    }
}

/// What one session has sent.
#[derive(Default)]
pub struct FileTracker {
    node_id: String,
    secrets: BTreeSet<String>,
    configs: BTreeSet<String>,
}

impl FileTracker {
    pub fn new(node_id: &str) -> Self {
        FileTracker { node_id: node_id.to_string(), ..Default::default() }
    }

    /// Everything the tasks `task_ids` need (after a full assignment set of those tasks: the agent
    /// replaces what it had).
    pub fn full<'a>(&mut self, store: &Store, key: &DataKey, task_ids: impl IntoIterator<Item = &'a String>) -> FilesUpdate {
        self.secrets.clear();
        self.configs.clear();
        let mut update = self.refresh_among(store, key, task_ids);
        update.removed_secrets.clear();
        update.removed_configs.clear();
        update
    }

    /// The difference between what the node needs now and what was sent. A secret that cannot
    /// be decrypted is logged and not sent (the agent rejects its tasks after a while).
    #[cfg(test)]
    pub fn refresh(&mut self, store: &Store, key: &DataKey) -> FilesUpdate {
        let needed = needed(store, &self.node_id);
        self.send(store, key, needed)
    }

    /// [`refresh`](Self::refresh) when the node's assigned tasks are among `task_ids` (those its
    /// session told the agent about): only they are looked at.
    pub fn refresh_among<'a>(&mut self, store: &Store, key: &DataKey, task_ids: impl IntoIterator<Item = &'a String>) -> FilesUpdate {
        let needed = needed_among(store, &self.node_id, task_ids);
        self.send(store, key, needed)
    }

    fn send(&mut self, store: &Store, key: &DataKey, (secrets, configs): (BTreeSet<String>, BTreeSet<String>)) -> FilesUpdate {
        let mut update = FilesUpdate::default();
        for id in secrets.difference(&self.secrets) {
            let Some(blob) = store.secrets.get(id) else { continue };
            match key.decrypt(id, &blob.data) {
                Ok(data) => update.secrets.push(pb::SecretData { id: id.clone(), name: blob.name.clone(), data }),
                Err(status) => tracing::error!(secret = %id, error = %status.message(), "cannot deliver a secret"),
            }
        }
        for id in configs.difference(&self.configs) {
            if let Some(blob) = store.configs.get(id) {
                update.configs.push(pb::SecretData { id: id.clone(), name: blob.name.clone(), data: blob.data.clone() });
            }
        }
        update.removed_secrets = self.secrets.difference(&secrets).cloned().collect();
        update.removed_configs = self.configs.difference(&configs).cloned().collect();
        self.secrets = update.secrets.iter().map(|s| s.id.clone()).chain(secrets.intersection(&self.secrets).cloned()).collect();
        self.configs = update.configs.iter().map(|s| s.id.clone()).chain(configs.intersection(&self.configs).cloned()).collect();
        update
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Blob, FileRef, Meta, Task, TaskState};

    fn task(id: &str, node: &str, state: TaskState, secrets: &[&str], configs: &[&str]) -> Task {
        let mut task = Task {
            meta: Meta { id: id.into(), ..Meta::default() },
            service_id: "svc".into(),
            slot: 1,
            node_id: Some(node.into()),
            desired_state: TaskState::Running,
            status: Default::default(),
            spec: Default::default(),
            job_iteration: 0,
            restart: Default::default(),
        };
        task.status.state = state;
        task.spec.secrets = secrets.iter().map(|s| FileRef { id: s.to_string(), ..FileRef::default() }).collect();
        task.spec.configs = configs.iter().map(|s| FileRef { id: s.to_string(), ..FileRef::default() }).collect();
        task
    }

    fn blob(id: &str, data: Vec<u8>) -> Blob {
        Blob { meta: Meta { id: id.into(), ..Meta::default() }, name: format!("name-{id}"), labels: Default::default(), data }
    }

    #[test]
    fn a_node_needs_only_what_its_assigned_tasks_reference() {
        let mut store = Store::default();
        for t in [
            task("t1", "n1", TaskState::Running, &["s1"], &["c1"]),
            task("t2", "n1", TaskState::Assigned, &["s2", "s1"], &[]),
            task("t3", "n2", TaskState::Running, &["s3"], &["c3"]),
            // Not yet assigned (pending): not needed.
            task("t4", "n1", TaskState::Pending, &["s4"], &[]),
        ] {
            store.tasks.insert(t.meta.id.clone(), t);
        }
        let (secrets, configs) = needed(&store, "n1");
        assert_eq!(secrets.into_iter().collect::<Vec<_>>(), ["s1", "s2"]);
        assert_eq!(configs.into_iter().collect::<Vec<_>>(), ["c1"]);
        let (secrets, _) = needed(&store, "n3");
        assert!(secrets.is_empty());
    }

    #[test]
    fn only_events_that_can_change_the_files_are_relevant() {
        let with = Event::Updated(Object::Task(task("t1", "n1", TaskState::Running, &["s1"], &[])));
        let config = Event::Deleted(Object::Task(task("t2", "n1", TaskState::Running, &[], &["c1"])));
        let without = Event::Updated(Object::Task(task("t3", "n1", TaskState::Running, &[], &[])));
        let elsewhere = Event::Created(Object::Task(task("t4", "n2", TaskState::Assigned, &["s1"], &[])));
        let secret = Event::Updated(Object::Secret(blob("s1", Vec::new())));
        assert!(relevant([&with], "n1"));
        assert!(relevant([&config], "n1"));
        assert!(!relevant([&without, &elsewhere], "n1"), "no files, or another node's task");
        assert!(relevant([&without, &secret], "n1"));
    }

    #[test]
    fn sent_once_decrypted_then_removed() {
        let key = DataKey::generate().unwrap();
        let mut store = Store::default();
        store.secrets.insert("s1".into(), blob("s1", key.encrypt("s1", b"top").unwrap()));
        store.configs.insert("c1".into(), blob("c1", b"plain".to_vec()));
        let t1 = task("t1", "n1", TaskState::Assigned, &["s1"], &["c1"]);
        store.tasks.insert("t1".into(), t1);
        let mut tracker = FileTracker::new("n1");
        let first = tracker.full(&store, &key, [&"t1".to_string()]);
        assert_eq!(first.secrets, [pb::SecretData { id: "s1".into(), name: "name-s1".into(), data: b"top".to_vec() }]);
        assert_eq!(first.configs.len(), 1);
        assert!(tracker.refresh(&store, &key).is_empty(), "sent once");
        store.tasks.remove("t1");
        let gone = tracker.refresh(&store, &key);
        assert_eq!(gone.removed_secrets, ["s1"]);
        assert_eq!(gone.removed_configs, ["c1"]);
        assert!(gone.secrets.is_empty());
        assert!(tracker.refresh(&store, &key).is_empty());
    }
}

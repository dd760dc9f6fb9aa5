//! The log broker (Swarm's, simplified): routes a reader's log subscription to the sessions of
//! the nodes that hold the tasks, and the lines those nodes publish back to the reader.
//!
//! Only the leader holds agent sessions, so only the leader's broker sees traffic. The flow:
//! - [`LogBroker::subscribe`] records a subscription and queues a `LogSubscription` for the
//!   session of every involved node (a node without a session is skipped with a warning).
//! - The node's session ([`SessionLogs`]) is woken and sends the queued changes to its agent.
//! - The agent calls `PublishLogs`; [`LogBroker::publish`] checks that the node is part of the
//!   subscription and that every line is of one of its tasks, fills in the context and hands
//!   the lines to the reader through a bounded channel (a slow reader slows the agents down).
//! - A node's `close` ends its part; once every part is closed (or its node's session ended),
//!   the reader's channel closes, unless the subscription is open-ended (following a service:
//!   [`Subscription::add_tasks`] brings in the service's new tasks as they start). Dropping the
//!   [`Subscription`] cancels it on the agents.

use proto::v1 as pb;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::{Notify, mpsc};
use tonic::Status;

/// Subscriptions open at once, over all readers.
pub const MAX_SUBSCRIPTIONS: usize = 1024;
/// Batches of lines buffered for one reader before publishers wait.
const READER_BUFFER: usize = 64;

/// Where a task's lines come from, to fill in the messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskContext {
    pub task_id: String,
    pub service_id: String,
    pub service_name: String,
    pub slot: u64,
    pub node_id: String,
    pub node_hostname: String,
}

/// What a reader asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    pub tail: Option<u64>,
    pub since_unix_nanos: Option<i64>,
    /// Tasks may be added later: the subscription stays open when every part has closed.
    pub open_ended: bool,
}

/// Subscription changes a node's session must pass on to its agent.
#[derive(Debug, Default, PartialEq)]
pub struct SessionUpdate {
    pub subscribe: Vec<pb::LogSubscription>,
    pub cancel: Vec<String>,
}

impl SessionUpdate {
    pub fn is_empty(&self) -> bool {
        self.subscribe.is_empty() && self.cancel.is_empty()
    }
}

struct NodeSession {
    token: u64,
    pending: SessionUpdate,
    wake: Arc<Notify>,
}

/// Warnings for a reader, and a signal when one is added.
#[derive(Default)]
struct Notices {
    warnings: Mutex<Vec<String>>,
    added: Notify,
}

impl Notices {
    fn push(&self, warning: String) {
        self.warnings.lock().unwrap_or_else(PoisonError::into_inner).push(warning);
        self.added.notify_one();
    }
}

struct Sub {
    options: LogOptions,
    /// Tasks asked of each node.
    tasks: HashMap<String, HashSet<String>>,
    /// For each node, the `LogSubscription`s sent to it and not closed yet (one per call to
    /// subscribe or add tasks).
    open: HashMap<String, usize>,
    context: HashMap<String, TaskContext>,
    hostnames: HashMap<String, String>,
    /// `None` once every part is closed (never for an open-ended subscription): the reader's
    /// channel then closes.
    lines: Option<mpsc::Sender<Vec<pb::LogMessage>>>,
    notices: Arc<Notices>,
}

impl Sub {
    fn hostname<'a>(&'a self, node_id: &'a str) -> &'a str {
        self.hostnames.get(node_id).map(String::as_str).filter(|h| !h.is_empty()).unwrap_or(node_id)
    }

    /// Ends one of `node_id`'s parts; closes the reader's channel after the last one.
    fn close_part(&mut self, node_id: &str) {
        if let Some(n) = self.open.get_mut(node_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.open.remove(node_id);
            }
        }
        self.close_if_done();
    }

    fn close_if_done(&mut self) {
        if self.open.is_empty() && !self.options.open_ended {
            self.lines = None;
        }
    }

    /// Records `tasks` (not known yet) and queues their part for each node's session; a node
    /// without a session is skipped with a warning.
    fn request(&mut self, id: &str, tasks: Vec<TaskContext>, sessions: &mut HashMap<String, NodeSession>, tail: Option<u64>) {
        let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for task in tasks {
            if self.context.contains_key(&task.task_id) {
                continue;
            }
            by_node.entry(task.node_id.clone()).or_default().push(task.task_id.clone());
            self.hostnames.insert(task.node_id.clone(), task.node_hostname.clone());
            self.tasks.entry(task.node_id.clone()).or_default().insert(task.task_id.clone());
            self.context.insert(task.task_id.clone(), task);
        }
        for (node_id, mut task_ids) in by_node {
            let Some(session) = sessions.get_mut(&node_id) else {
                let n = task_ids.len();
                let tasks = if n == 1 { "task" } else { "tasks" };
                self.notices.push(format!(
                    "node {} is not connected: the logs of its {n} {tasks} are missing",
                    self.hostname(&node_id)
                ));
                continue;
            };
            task_ids.sort();
            session.pending.subscribe.push(pb::LogSubscription {
                id: id.to_string(),
                task_ids,
                follow: self.options.follow,
                tail,
                since_unix_nanos: self.options.since_unix_nanos,
            });
            session.wake.notify_one();
            *self.open.entry(node_id).or_default() += 1;
        }
    }
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, NodeSession>,
    subscriptions: HashMap<String, Sub>,
    next_token: u64,
}

impl Inner {
    /// The node's session went away (or was replaced): its open parts will never close.
    fn fail_node(&mut self, node_id: &str) {
        for sub in self.subscriptions.values_mut().filter(|s| s.open.contains_key(node_id)) {
            let warning =
                format!("node {} disconnected before it sent all its logs; they may be incomplete", sub.hostname(node_id));
            sub.notices.push(warning);
            sub.open.remove(node_id);
            sub.close_if_done();
        }
    }

    fn cancel(&mut self, id: &str) {
        let Some(sub) = self.subscriptions.remove(id) else { return };
        for (node_id, parts) in sub.open {
            let Some(session) = self.sessions.get_mut(&node_id) else { continue };
            let queued = session.pending.subscribe.len();
            session.pending.subscribe.retain(|s| s.id != id);
            // Parts the agent already heard of must be cancelled there.
            if parts > queued - session.pending.subscribe.len() {
                session.pending.cancel.push(id.to_string());
                session.wake.notify_one();
            }
        }
    }
}

/// The leader's log broker, shared by the Dispatcher (sessions, `PublishLogs`) and the Control
/// service (`ServiceLogs`).
#[derive(Default)]
pub struct LogBroker {
    inner: Mutex<Inner>,
}

impl LogBroker {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers the session of `node_id`, replacing (and failing the parts of) an older one.
    pub fn attach(self: &Arc<Self>, node_id: &str) -> SessionLogs {
        let mut inner = self.lock();
        inner.next_token += 1;
        let token = inner.next_token;
        let wake = Arc::new(Notify::new());
        let session = NodeSession { token, pending: SessionUpdate::default(), wake: wake.clone() };
        if inner.sessions.insert(node_id.to_string(), session).is_some() {
            inner.fail_node(node_id);
        }
        SessionLogs { broker: self.clone(), node_id: node_id.to_string(), token, wake }
    }

    fn detach(&self, node_id: &str, token: u64) {
        let mut inner = self.lock();
        if inner.sessions.get(node_id).is_some_and(|s| s.token == token) {
            inner.sessions.remove(node_id);
            inner.fail_node(node_id);
        }
    }

    fn take(&self, node_id: &str, token: u64) -> SessionUpdate {
        match self.lock().sessions.get_mut(node_id) {
            Some(session) if session.token == token => std::mem::take(&mut session.pending),
            _ => SessionUpdate::default(),
        }
    }

    /// Subscribes to the logs of `tasks` (each names its node). Nodes without a session are
    /// skipped with a warning; with no node left the subscription ends at once.
    pub fn subscribe(self: &Arc<Self>, tasks: Vec<TaskContext>, options: LogOptions) -> Result<Subscription, Status> {
        let id = crate::ids::new_id();
        let (sender, lines) = mpsc::channel(READER_BUFFER);
        let notices = Arc::new(Notices::default());
        let mut sub = Sub {
            options,
            tasks: HashMap::new(),
            open: HashMap::new(),
            context: HashMap::new(),
            hostnames: HashMap::new(),
            lines: Some(sender),
            notices: notices.clone(),
        };
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.subscriptions.len() >= MAX_SUBSCRIPTIONS {
            return Err(Status::resource_exhausted(format!(
                "too many log readers ({MAX_SUBSCRIPTIONS}) on the leader; try again later"
            )));
        }
        sub.request(&id, tasks, &mut inner.sessions, options.tail);
        sub.close_if_done();
        inner.subscriptions.insert(id.clone(), sub);
        drop(guard);
        Ok(Subscription { id, broker: self.clone(), lines, notices })
    }

    /// Adds tasks to an open-ended subscription (the ones it already has are ignored). They
    /// are new, so their whole log is asked for.
    fn add_tasks(&self, id: &str, tasks: Vec<TaskContext>) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if let Some(sub) = inner.subscriptions.get_mut(id) {
            sub.request(id, tasks, &mut inner.sessions, None);
        }
    }

    /// Takes lines a node published. Errors end the node's `PublishLogs` call: `NotFound` when
    /// the subscription is gone (its reader left) or the node is not (or no longer) part of it.
    pub async fn publish(&self, node_id: &str, message: pb::PublishLogsMessage) -> Result<(), Status> {
        let gone = || Status::not_found(format!("log subscription {} is not open for this node", message.subscription_id));
        let (sender, lines) = {
            let mut inner = self.lock();
            let sub = inner.subscriptions.get_mut(&message.subscription_id).ok_or_else(gone)?;
            if !sub.open.contains_key(node_id) {
                return Err(gone());
            }
            let allowed = sub.tasks.get(node_id);
            let lines: Vec<pb::LogMessage> = message
                .messages
                .into_iter()
                .filter(|m| allowed.is_some_and(|a| a.contains(&m.task_id)))
                .filter_map(|m| {
                    let context = sub.context.get(&m.task_id)?;
                    Some(pb::LogMessage {
                        service_id: context.service_id.clone(),
                        node_id: context.node_id.clone(),
                        slot: context.slot,
                        service_name: context.service_name.clone(),
                        node_hostname: context.node_hostname.clone(),
                        ..m
                    })
                })
                .collect();
            let sender = sub.lines.clone();
            if message.close {
                sub.close_part(node_id);
            }
            (sender, lines)
        };
        if let Some(sender) = sender
            && !lines.is_empty()
        {
            sender.send(lines).await.map_err(|_| gone())?;
        }
        Ok(())
    }

    /// Removes a subscription and tells the agents still publishing it to stop.
    fn cancel(&self, id: &str) {
        self.lock().cancel(id);
    }

    /// Hostnames of the nodes whose part of subscription `id` is still open.
    fn open_nodes(&self, id: &str) -> Vec<String> {
        let inner = self.lock();
        let Some(sub) = inner.subscriptions.get(id) else { return Vec::new() };
        let mut names: Vec<String> = sub.open.keys().map(|n| sub.hostname(n).to_string()).collect();
        names.sort();
        names
    }

    #[cfg(test)]
    fn subscription_count(&self) -> usize {
        self.lock().subscriptions.len()
    }
}

/// A node session's view of the broker: woken when there are subscription changes for its
/// agent. Dropping it (the session ended) fails the node's open parts.
pub struct SessionLogs {
    broker: Arc<LogBroker>,
    node_id: String,
    token: u64,
    wake: Arc<Notify>,
}

impl SessionLogs {
    /// Waits until changes are queued (returns at once if some were queued since the last take).
    pub async fn changed(&self) {
        self.wake.notified().await
    }

    /// The changes queued for this session, emptying the queue.
    pub fn take(&self) -> SessionUpdate {
        self.broker.take(&self.node_id, self.token)
    }
}

impl Drop for SessionLogs {
    fn drop(&mut self) {
        self.broker.detach(&self.node_id, self.token);
    }
}

/// What a reader receives next.
#[derive(Debug, PartialEq)]
pub enum Delivery {
    Lines(Vec<pb::LogMessage>),
    Warnings(Vec<String>),
    /// Every part is closed (buffered lines and warnings were delivered before).
    End,
}

/// A reader's subscription; dropping it cancels it on the agents.
pub struct Subscription {
    id: String,
    broker: Arc<LogBroker>,
    lines: mpsc::Receiver<Vec<pb::LogMessage>>,
    notices: Arc<Notices>,
}

impl Subscription {
    pub fn id(&self) -> &str {
        &self.id
    }

    fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.notices.warnings.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The next lines or warnings; `End` once everything was delivered.
    pub async fn next(&mut self) -> Delivery {
        loop {
            let warnings = self.take_warnings();
            if !warnings.is_empty() {
                return Delivery::Warnings(warnings);
            }
            tokio::select! {
                biased;
                lines = self.lines.recv() => return match lines {
                    Some(lines) => Delivery::Lines(lines),
                    None => {
                        let warnings = self.take_warnings();
                        if warnings.is_empty() { Delivery::End } else { Delivery::Warnings(warnings) }
                    }
                },
                () = self.notices.added.notified() => {}
            }
        }
    }

    /// Adds tasks (of an open-ended subscription) that started since; known ones are ignored.
    pub fn add_tasks(&self, tasks: Vec<TaskContext>) {
        self.broker.add_tasks(&self.id, tasks);
    }

    /// Hostnames of the nodes that have not closed their part yet.
    pub fn open_nodes(&self) -> Vec<String> {
        self.broker.open_nodes(&self.id)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.broker.cancel(&self.id);
    }
}

#[cfg(test)]
mod tests;

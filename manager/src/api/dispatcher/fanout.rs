//! Routes the store's change events to the agent sessions that need them.
//!
//! One router task subscribes to the store's events; each session has a mailbox. A task's
//! events go to the sessions of the node it is placed on, and to the sessions of nodes holding
//! an overlay subnet lease (their network views carry other hosts' tasks as DNS records); every
//! other event (nodes, services, networks, secrets, ...) goes to every session. With 1,000
//! sessions and 100,000 tasks, a session then looks at its own tasks' changes, not at all of
//! them: the work per event is a map lookup instead of one wake-up and one scan per session.
//!
//! Relies on a task's node never changing once it is set (the scheduler places PENDING tasks;
//! a task that must run elsewhere is replaced by a new task), so the event of a task carries
//! the node whose sessions care about it.
//!
//! A mailbox holds at most [`MAILBOX_CAPACITY`] events; beyond that, or when the router itself
//! falls behind the store or a snapshot replaces the state, the session is told to resync from
//! the store (`reset`), as after a lagged broadcast receiver.

use crate::raft::{StateHandle, Watched};
use crate::store::{Event, Object, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::Notify;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::task::JoinHandle;

/// Events queued for one session before it is told to resync instead.
pub const MAILBOX_CAPACITY: usize = 65_536;
/// Events the router routes under one lock.
const ROUTE_BATCH: usize = 1024;

/// What a session receives at once: the events routed to it since it last looked, or a reset.
#[derive(Debug, Default)]
pub struct Delivery {
    pub events: Vec<Arc<Event>>,
    /// Events were dropped (mailbox full, router lagged, snapshot installed): resync.
    pub reset: bool,
}

#[derive(Default)]
struct Inbox {
    delivery: Delivery,
    /// The router is gone: no more events.
    closed: bool,
}

/// One session's queue of routed events.
#[derive(Default)]
struct Mailbox {
    inbox: Mutex<Inbox>,
    ready: Notify,
}

impl Mailbox {
    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        // Every update is a push, a flag or a take: a poisoned lock is still consistent.
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, event: &Arc<Event>) {
        let mut inbox = self.inbox();
        let delivery = &mut inbox.delivery;
        if delivery.reset {
            return;
        }
        if delivery.events.len() >= MAILBOX_CAPACITY {
            delivery.events = Vec::new();
            delivery.reset = true;
        } else {
            delivery.events.push(event.clone());
        }
        drop(inbox);
        self.ready.notify_one();
    }

    fn reset(&self) {
        let mut inbox = self.inbox();
        inbox.delivery = Delivery { events: Vec::new(), reset: true };
        drop(inbox);
        self.ready.notify_one();
    }

    fn close(&self) {
        self.inbox().closed = true;
        self.ready.notify_one();
    }
}

/// Who receives what.
#[derive(Default)]
struct Routes {
    /// Node id -> the mailboxes of its sessions (two while a new session replaces an old one).
    sessions: HashMap<String, Vec<Arc<Mailbox>>>,
    /// Subnet lease id -> the node holding it.
    leases: HashMap<String, String>,
    /// Node id -> how many leases it holds (only nodes with at least one).
    leased: HashMap<String, usize>,
    /// The router has stopped.
    closed: bool,
}

impl Routes {
    fn add_lease(&mut self, lease_id: &str, node_id: &str) {
        if self.leases.insert(lease_id.to_string(), node_id.to_string()).is_none() {
            *self.leased.entry(node_id.to_string()).or_default() += 1;
        }
    }

    fn remove_lease(&mut self, lease_id: &str) {
        let Some(node) = self.leases.remove(lease_id) else { return };
        if let Some(count) = self.leased.get_mut(&node) {
            *count -= 1;
            if *count == 0 {
                self.leased.remove(&node);
            }
        }
    }

    fn rebuild_leases(&mut self, store: &Store) {
        self.leases.clear();
        self.leased.clear();
        for lease in store.subnet_leases.values() {
            self.add_lease(&lease.meta.id, &lease.node_id);
        }
    }

    fn to_node(&self, node_id: &str, event: &Arc<Event>) {
        for mailbox in self.sessions.get(node_id).into_iter().flatten() {
            mailbox.push(event);
        }
    }

    fn route(&mut self, event: &Arc<Event>) {
        let (Event::Created(object) | Event::Updated(object) | Event::Deleted(object)) = &**event;
        match object {
            Object::Task(task) => {
                if let Some(node) = &task.node_id {
                    self.to_node(node, event);
                }
                for node in self.leased.keys() {
                    if task.node_id.as_ref() != Some(node) {
                        self.to_node(node, event);
                    }
                }
                return;
            }
            Object::SubnetLease(lease) => match &**event {
                Event::Deleted(_) => self.remove_lease(&lease.meta.id),
                _ => self.add_lease(&lease.meta.id, &lease.node_id),
            },
            _ => {}
        }
        for mailbox in self.sessions.values().flatten() {
            mailbox.push(event);
        }
    }

    fn reset_all(&self) {
        for mailbox in self.sessions.values().flatten() {
            mailbox.reset();
        }
    }
}

/// The router's shared half (cheap to clone): sessions subscribe here.
#[derive(Clone)]
pub struct Fanout {
    routes: Arc<Mutex<Routes>>,
}

fn lock(routes: &Mutex<Routes>) -> MutexGuard<'_, Routes> {
    // Every update is a single insert/remove/counter change: a poisoned lock is still usable.
    routes.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Fanout {
    /// Starts the router on `state`'s events; abort the handle to stop it (subscriptions then
    /// end).
    pub fn start(state: StateHandle) -> (Fanout, JoinHandle<()>) {
        let routes = Arc::new(Mutex::new(Routes::default()));
        // Subscribe before the leases are read, so no lease change falls in between.
        let events = state.subscribe();
        lock(&routes).rebuild_leases(&state.read());
        let task = tokio::spawn(route_events(state, events, Closer(routes.clone())));
        (Fanout { routes }, task)
    }

    /// A mailbox for a session of `node_id`: every event routed from now on. Subscribe before
    /// reading the state the session starts from, so that no change falls in between.
    pub fn subscribe(&self, node_id: &str) -> Subscription {
        let mailbox = Arc::new(Mailbox::default());
        let mut routes = lock(&self.routes);
        if routes.closed {
            mailbox.close();
        }
        routes.sessions.entry(node_id.to_string()).or_default().push(mailbox.clone());
        Subscription { node_id: node_id.to_string(), mailbox, routes: self.routes.clone() }
    }

    /// Sessions subscribed (for tests and logs).
    #[cfg(test)]
    fn subscribers(&self) -> usize {
        lock(&self.routes).sessions.values().map(Vec::len).sum()
    }
}

/// A session's end of its mailbox; unsubscribes on drop.
pub struct Subscription {
    node_id: String,
    mailbox: Arc<Mailbox>,
    routes: Arc<Mutex<Routes>>,
}

impl Subscription {
    /// Waits for events (or a reset) and takes them all; `None` once the router has stopped and
    /// everything was taken.
    pub async fn next(&self) -> Option<Delivery> {
        loop {
            let notified = self.mailbox.ready.notified();
            {
                let mut inbox = self.mailbox.inbox();
                if inbox.delivery.reset || !inbox.delivery.events.is_empty() {
                    return Some(std::mem::take(&mut inbox.delivery));
                }
                if inbox.closed {
                    return None;
                }
            }
            notified.await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut routes = lock(&self.routes);
        if let Some(mailboxes) = routes.sessions.get_mut(&self.node_id) {
            mailboxes.retain(|m| !Arc::ptr_eq(m, &self.mailbox));
            if mailboxes.is_empty() {
                routes.sessions.remove(&self.node_id);
            }
        }
    }
}

/// Closes every mailbox when the router stops, however it stops (end of events or abort).
struct Closer(Arc<Mutex<Routes>>);

impl Drop for Closer {
    fn drop(&mut self) {
        let mut routes = lock(&self.0);
        routes.closed = true;
        for mailbox in routes.sessions.values().flatten() {
            mailbox.close();
        }
    }
}

async fn route_events(state: StateHandle, mut events: tokio::sync::broadcast::Receiver<Watched>, routes: Closer) {
    loop {
        let mut batch = Vec::new();
        let mut reset = false;
        match events.recv().await {
            Ok(Watched::Event { event, .. }) => batch.push(event),
            Ok(Watched::Reset { .. }) | Err(RecvError::Lagged(_)) => reset = true,
            Err(RecvError::Closed) => return,
        }
        while batch.len() < ROUTE_BATCH && !reset {
            match events.try_recv() {
                Ok(Watched::Event { event, .. }) => batch.push(event),
                Ok(Watched::Reset { .. }) | Err(TryRecvError::Lagged(_)) => reset = true,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return,
            }
        }
        let mut routes = lock(&routes.0);
        if reset {
            // Everything before the reset is covered by the resync; leases are read again.
            routes.rebuild_leases(&state.read());
            routes.reset_all();
            continue;
        }
        for event in &batch {
            routes.route(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Availability, Meta, Node, NodeRole, NodeState, RestartInfo, ServiceSpec, SubnetLease, Task, TaskStatus};

    fn task(id: &str, node: Option<&str>) -> Arc<Event> {
        Arc::new(Event::Created(Object::Task(Task {
            meta: Meta { id: id.into(), ..Meta::default() },
            service_id: "s".into(),
            slot: 1,
            node_id: node.map(Into::into),
            desired_state: Default::default(),
            status: TaskStatus::default(),
            spec: ServiceSpec::default(),
            job_iteration: 0,
            restart: RestartInfo::default(),
        })))
    }

    fn lease(id: &str, node: &str, deleted: bool) -> Arc<Event> {
        let lease = Object::SubnetLease(SubnetLease {
            meta: Meta { id: id.into(), ..Meta::default() },
            network_id: "net".into(),
            node_id: node.into(),
            subnet: "10.0.1.0/24".into(),
        });
        Arc::new(if deleted { Event::Deleted(lease) } else { Event::Created(lease) })
    }

    fn fanout() -> Fanout {
        Fanout { routes: Arc::new(Mutex::new(Routes::default())) }
    }

    fn route(fanout: &Fanout, event: Arc<Event>) {
        lock(&fanout.routes).route(&event);
    }

    fn taken(sub: &Subscription) -> Vec<Arc<Event>> {
        std::mem::take(&mut sub.mailbox.inbox().delivery.events)
    }

    #[test]
    fn a_task_reaches_its_node_and_the_nodes_with_leases_only() {
        let fanout = fanout();
        let (a, b, c) = (fanout.subscribe("a"), fanout.subscribe("b"), fanout.subscribe("c"));
        route(&fanout, task("t1", Some("a")));
        route(&fanout, task("t2", None));
        assert_eq!(taken(&a).len(), 1);
        assert!(taken(&b).is_empty() && taken(&c).is_empty());
        route(&fanout, lease("l1", "b", false));
        assert_eq!((taken(&a).len(), taken(&b).len(), taken(&c).len()), (1, 1, 1), "a lease is for everyone");
        route(&fanout, task("t3", Some("a")));
        assert_eq!((taken(&a).len(), taken(&b).len(), taken(&c).len()), (1, 1, 0), "b holds a lease");
        route(&fanout, lease("l1", "b", true));
        let _ = (taken(&a), taken(&b), taken(&c));
        route(&fanout, task("t4", Some("a")));
        assert_eq!((taken(&a).len(), taken(&b).len(), taken(&c).len()), (1, 0, 0), "the lease is gone");
    }

    #[test]
    fn other_events_reach_every_session() {
        let fanout = fanout();
        let (a, b) = (fanout.subscribe("a"), fanout.subscribe("b"));
        let node = Node {
            meta: Meta { id: "a".into(), ..Meta::default() },
            hostname: "a".into(),
            role: NodeRole::Worker,
            availability: Availability::Active,
            labels: Default::default(),
            addr: "10.0.0.1".into(),
            state: NodeState::Ready,
            resources: Default::default(),
        };
        route(&fanout, Arc::new(Event::Updated(Object::Node(node))));
        assert_eq!((taken(&a).len(), taken(&b).len()), (1, 1));
    }

    #[test]
    fn a_full_mailbox_turns_into_a_reset() {
        let fanout = fanout();
        let a = fanout.subscribe("a");
        for i in 0..=MAILBOX_CAPACITY {
            route(&fanout, task(&format!("t{i}"), Some("a")));
        }
        let inbox = a.mailbox.inbox();
        assert!(inbox.delivery.reset && inbox.delivery.events.is_empty());
    }

    #[tokio::test]
    async fn dropped_subscriptions_leave_and_a_stopped_router_ends_the_others() {
        let fanout = fanout();
        let a = fanout.subscribe("a");
        let a2 = fanout.subscribe("a");
        drop(a);
        assert_eq!(fanout.subscribers(), 1);
        route(&fanout, task("t1", Some("a")));
        let delivery = a2.next().await.expect("an event");
        assert_eq!(delivery.events.len(), 1);
        drop(Closer(fanout.routes.clone()));
        assert!(a2.next().await.is_none(), "closed");
        assert!(fanout.subscribe("b").next().await.is_none(), "subscribing after the end");
    }
}

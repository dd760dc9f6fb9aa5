//! Node liveness, decided by the leader alone on its monotonic clock. A heartbeat only touches
//! an in-memory table (no Raft write); a Raft write happens only when a node changes state
//! (READY on session start, DOWN when its heartbeats stop for the grace period).
//!
//! No false DOWN under load: when the monitor itself ran late (this manager was starved), the
//! lateness is forgiven to every node, since their heartbeats could not be processed either.
//! A new leader gives every node a full grace period from the moment it starts leading.

use crate::consensus::Consensus;
use crate::control_loop::{leads, lost_leadership};
use crate::store::{Change, Node, NodeRole, NodeState, Object, Op, Response, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How often agents heartbeat and how long the leader waits before a silent node is DOWN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DispatcherTiming {
    pub heartbeat_period: Duration,
    /// Default: 3 periods.
    pub grace: Duration,
}

impl Default for DispatcherTiming {
    fn default() -> Self {
        DispatcherTiming { heartbeat_period: Duration::from_secs(1), grace: Duration::from_secs(3) }
    }
}

impl DispatcherTiming {
    /// How often the leader looks for silent nodes: a twentieth of the grace, so a dead node is
    /// noticed at most 5% after its grace ran out (the scan is a pass over the node table).
    fn tick(&self) -> Duration {
        (self.grace / 20).max(Duration::from_millis(5))
    }
}

struct Session {
    id: String,
    last_seen: Instant,
    /// Notified when a newer session of the node replaces this one.
    replaced: Arc<Notify>,
}

struct Inner {
    by_node: HashMap<String, Session>,
    /// When this manager started leading: the grace of nodes without a session starts here.
    since: Instant,
}

/// The agents' sessions with this (leading) manager.
pub struct Sessions {
    inner: Mutex<Inner>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions { inner: Mutex::new(Inner { by_node: HashMap::new(), since: Instant::now() }) }
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a session for `node_id`, ending the previous one; returns its id and the signal
    /// that it was replaced.
    pub fn open(&self, node_id: &str) -> (String, Arc<Notify>) {
        let id = crate::ids::new_id();
        let replaced = Arc::new(Notify::new());
        let session = Session { id: id.clone(), last_seen: Instant::now(), replaced: replaced.clone() };
        if let Some(old) = self.lock().by_node.insert(node_id.to_string(), session) {
            old.replaced.notify_one();
        }
        (id, replaced)
    }

    /// Records a heartbeat; false if `session_id` is not the node's current session.
    pub fn heartbeat(&self, node_id: &str, session_id: &str) -> bool {
        match self.lock().by_node.get_mut(node_id) {
            Some(session) if session.id == session_id => {
                session.last_seen = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Whether `session_id` is the node's current session.
    pub fn is_current(&self, node_id: &str, session_id: &str) -> bool {
        self.lock().by_node.get(node_id).is_some_and(|s| s.id == session_id)
    }

    /// Leadership begins: every earlier session ends, every node's grace starts now.
    fn reset(&self) {
        let mut inner = self.lock();
        for (_, session) in inner.by_node.drain() {
            session.replaced.notify_one();
        }
        inner.since = Instant::now();
    }

    /// This manager stalled for `stall`: nobody's heartbeat could count meanwhile.
    fn forgive(&self, stall: Duration) {
        let mut inner = self.lock();
        inner.since += stall;
        for session in inner.by_node.values_mut() {
            session.last_seen += stall;
        }
    }

    /// The READY nodes silent for longer than `grace` at `now`. Managers that never opened a
    /// session (no agent on that host) are not judged.
    fn silent<'a>(&self, store: &'a Store, now: Instant, grace: Duration) -> Vec<&'a Node> {
        let inner = self.lock();
        store
            .nodes
            .values()
            .filter(|node| node.state == NodeState::Ready)
            .filter(|node| match inner.by_node.get(&node.meta.id) {
                Some(session) => now.saturating_duration_since(session.last_seen) > grace,
                None => node.role == NodeRole::Worker && now.saturating_duration_since(inner.since) > grace,
            })
            .collect()
    }
}

/// Marks silent nodes DOWN while this manager leads; runs until Raft shuts down.
pub async fn monitor(consensus: Consensus, sessions: Arc<Sessions>, timing: DispatcherTiming) {
    let mut metrics = consensus.raft.metrics();
    let node_id = consensus.node_id;
    loop {
        while !leads(&metrics, node_id) {
            if metrics.changed().await.is_err() {
                return;
            }
        }
        sessions.reset();
        let tick = timing.tick();
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Instant::now();
        loop {
            tokio::select! {
                shutdown = lost_leadership(&mut metrics, node_id) => {
                    if shutdown {
                        return;
                    }
                    break;
                }
                _ = ticker.tick() => {}
            }
            let now = Instant::now();
            let late = now.saturating_duration_since(last).saturating_sub(tick);
            last = now;
            if late > tick {
                tracing::warn!(late_ms = late.as_millis() as u64, "node liveness check ran late; forgiving the delay");
                sessions.forgive(late);
            }
            let changes: Vec<Change> = {
                let store = consensus.state.read();
                sessions.silent(&store, now, timing.grace).into_iter().map(down).collect()
            };
            if changes.is_empty() {
                continue;
            }
            let count = changes.len();
            match consensus.write_as_leader(Op::Batch(changes)).await {
                Ok(Response::Rejected(error)) => tracing::debug!(%error, "marking nodes down: retrying next tick"),
                Ok(_) => tracing::info!(nodes = count, "heartbeats stopped: nodes marked down"),
                Err(status) => tracing::warn!(error = %status.message(), "cannot mark nodes down"),
            }
        }
    }
}

fn down(node: &Node) -> Change {
    tracing::info!(node = %node.meta.id, hostname = %node.hostname, "node is down: its heartbeats stopped");
    let mut updated = node.clone();
    updated.state = NodeState::Down;
    Change::Update { object: Object::Node(updated), expected_version: Some(node.meta.version) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Availability, Meta, NodeResources};

    fn node(id: &str, role: NodeRole) -> Node {
        Node {
            meta: Meta { id: id.into(), ..Meta::default() },
            hostname: id.into(),
            role,
            availability: Availability::Active,
            labels: Default::default(),
            addr: String::new(),
            state: NodeState::Ready,
            resources: NodeResources::default(),
        }
    }

    #[test]
    fn silent_nodes_after_grace_and_stalls_forgiven() {
        let mut store = Store::default();
        for (id, role) in [("w1", NodeRole::Worker), ("w2", NodeRole::Worker), ("m1", NodeRole::Manager)] {
            store.nodes.insert(id.into(), node(id, role));
        }
        let sessions = Sessions::default();
        sessions.reset();
        let t0 = Instant::now();
        let (w1, _) = sessions.open("w1");
        assert!(sessions.heartbeat("w1", &w1));
        assert!(!sessions.heartbeat("w1", "stale"));
        let grace = Duration::from_secs(3);
        let ids = |at: Instant| -> Vec<String> {
            sessions.silent(&store, at, grace).iter().map(|n| n.meta.id.clone()).collect()
        };
        assert!(ids(t0 + Duration::from_secs(2)).is_empty());
        // w2 never connected (its grace runs from the start of leadership); m1 has no agent.
        assert_eq!(ids(t0 + Duration::from_secs(4)), vec!["w1", "w2"]);
        sessions.forgive(Duration::from_secs(5));
        assert!(ids(t0 + Duration::from_secs(4)).is_empty(), "a stall of this manager is forgiven");
        assert_eq!(ids(t0 + Duration::from_secs(9)), vec!["w1", "w2"]);
    }

    #[tokio::test]
    async fn a_new_session_replaces_the_old_one() {
        let sessions = Sessions::default();
        let (first, replaced) = sessions.open("w1");
        let (second, _) = sessions.open("w1");
        replaced.notified().await;
        assert!(!sessions.is_current("w1", &first));
        assert!(sessions.is_current("w1", &second));
    }
}

//! The `Dispatcher` gRPC service: agents (worker or manager certificates; the node is the one
//! the certificate names) keep a session with the leader.
//!
//! Only the leader accepts sessions, heartbeats and status reports; other managers answer
//! `FailedPrecondition` with the leader's address in the `leader-addr` metadata, and a
//! session's stream ends when its manager stops leading, so agents follow the leader. This
//! keeps liveness in one place (the leader's memory, on its monotonic clock) without
//! forwarding every heartbeat between managers; a new leader gives every node a full grace
//! period before judging it.

mod assignments;
mod fanout;
mod files;
mod liveness;
pub mod networks;
mod status;

pub use liveness::DispatcherTiming;

use super::ca_service::manager_addrs;
use super::log_broker::{LogBroker, SessionLogs, SessionUpdate};
use super::service_spec::spec_to_proto;
use super::services::task_to_proto;
use crate::consensus::Consensus;
use crate::control_loop::lost_leadership;
use crate::membership::{is_leader, not_leader};
use crate::store::{Change, Event, Node, NodeResources, NodeState, Object, Op, Store};
use assignments::{Tracker, Update};
use fanout::{Fanout, Subscription};
use files::{FileTracker, FilesUpdate};
use identity::{Role, require_role};
use liveness::Sessions;
use networks::ViewTracker;
use proto::v1 as pb;
use proto::v1::dispatcher_server::Dispatcher;
use status::StatusWriter;
use std::sync::Arc;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

const AGENT_ROLES: &[Role] = &[Role::Worker, Role::Manager];

/// How many times a session start retries marking its node READY after a version conflict.
const READY_ATTEMPTS: usize = 5;

pub struct DispatcherService {
    consensus: Consensus,
    sessions: Arc<Sessions>,
    statuses: StatusWriter,
    timing: DispatcherTiming,
    logs: Arc<LogBroker>,
    fanout: Fanout,
}

impl DispatcherService {
    /// The service and its background tasks (node liveness, status writer, event router), to
    /// abort at shutdown.
    pub fn start(consensus: Consensus, timing: DispatcherTiming) -> (DispatcherService, Vec<JoinHandle<()>>) {
        let sessions = Arc::new(Sessions::default());
        let monitor = tokio::spawn(liveness::monitor(consensus.clone(), sessions.clone(), timing));
        let (statuses, writer) = StatusWriter::start(consensus.clone());
        let (fanout, router) = Fanout::start(consensus.state.clone());
        let logs = Arc::new(LogBroker::default());
        (DispatcherService { consensus, sessions, statuses, timing, logs, fanout }, vec![monitor, writer, router])
    }

    /// The log broker fed by this service's sessions, for the Control service's `ServiceLogs`.
    pub fn log_broker(&self) -> Arc<LogBroker> {
        self.logs.clone()
    }

    /// The caller's node id, once it is known that this manager leads.
    fn caller<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let peer = require_role(request, AGENT_ROLES)?;
        if !is_leader(&self.consensus) {
            return Err(not_leader(&self.consensus));
        }
        Ok(peer.node_id)
    }

    fn check_session(&self, node_id: &str, session_id: &str) -> Result<(), Status> {
        if self.sessions.is_current(node_id, session_id) { Ok(()) } else { Err(stale_session(node_id, session_id)) }
    }

    fn period_ms(&self) -> u32 {
        u32::try_from(self.timing.heartbeat_period.as_millis()).unwrap_or(u32::MAX)
    }
}

fn stale_session(node_id: &str, session_id: &str) -> Status {
    Status::not_found(format!("session {session_id:?} of node {node_id} is not open on the leader: open a new session"))
}

/// Marks `node_id` READY (and records the resources it reports) if it is not already.
async fn mark_ready(consensus: &Consensus, node_id: &str, resources: NodeResources) -> Result<(), Status> {
    for _ in 0..READY_ATTEMPTS {
        let node: Node = consensus
            .state
            .read()
            .nodes
            .get(node_id)
            .cloned()
            .ok_or_else(|| Status::permission_denied(format!("node {node_id} is no longer part of the cluster")))?;
        let mut updated = node.clone();
        updated.state = NodeState::Ready;
        if resources != NodeResources::default() {
            updated.resources = resources;
        }
        if updated == node {
            return Ok(());
        }
        let change = Change::Update { object: Object::Node(updated), expected_version: Some(node.meta.version) };
        match consensus.write(Op::Batch(vec![change])).await {
            Ok(_) => {
                tracing::info!(node = %node_id, "node is ready: its agent opened a session");
                return Ok(());
            }
            Err(status) if status.code() == tonic::Code::Aborted => continue,
            Err(status) => return Err(status),
        }
    }
    Err(Status::aborted(format!("node {node_id} kept changing; open the session again")))
}

/// What a session stream needs.
struct SessionContext {
    consensus: Consensus,
    node_id: String,
    session_id: String,
    heartbeat_period_ms: u32,
}

impl SessionContext {
    /// An assignment message; `networks`, when present, replaces the agent's network views;
    /// `files` carries the secrets and configs the assignments need.
    fn message(&self, store: &Store, update: Update, networks: Option<pb::NetworkViews>, files: FilesUpdate) -> pb::SessionMessage {
        let assignments = update
            .assignments
            .iter()
            .map(|task| {
                let service = store.services.get(&task.service_id);
                let name = service.map(|s| s.name.as_str()).unwrap_or_default();
                let labels = service.map(|s| s.labels.clone()).unwrap_or_default();
                pb::Assignment { task: Some(task_to_proto(store, task)), spec: Some(spec_to_proto(name, &labels, &task.spec)) }
            })
            .collect();
        let mut message = pb::SessionMessage {
            session_id: self.session_id.clone(),
            manager_addrs: manager_addrs(&self.consensus),
            kind: if update.full { "full" } else { "delta" }.into(),
            assignments,
            removed: update.removed,
            heartbeat_period_ms: self.heartbeat_period_ms,
            networks,
            ..Default::default()
        };
        files.fill(&mut message);
        message
    }

    /// A delta without assignments that carries log subscription changes.
    fn logs_message(&self, update: SessionUpdate) -> pb::SessionMessage {
        pb::SessionMessage {
            session_id: self.session_id.clone(),
            kind: "delta".into(),
            heartbeat_period_ms: self.heartbeat_period_ms,
            log_subscriptions: update.subscribe,
            cancelled_log_subscriptions: update.cancel,
            ..Default::default()
        }
    }
}

type Outgoing = mpsc::Sender<Result<pb::SessionMessage, Status>>;

/// Feeds one session's stream: the full set, then a delta per burst of store changes, until the
/// agent goes away, a newer session replaces this one, the node is removed or leadership ends.
/// The first message carries the node's network views; later ones only when they changed (a
/// delta is sent for them alone if need be). Log subscription changes for the node go out as
/// they come.
async fn run_session(
    context: SessionContext,
    replaced: Arc<Notify>,
    logs: SessionLogs,
    events: Subscription,
    outgoing: Outgoing,
) {
    let mut tracker = Tracker::new(&context.node_id);
    let mut views = ViewTracker::new(&context.node_id);
    let mut files = FileTracker::new(&context.node_id);
    let first = {
        let store = context.consensus.state.read();
        let networks = views.full(&store);
        let update = tracker.full(store.tasks_on_node(&context.node_id));
        let needed = files.full(&store, &context.consensus.data_key, tracker.task_ids());
        context.message(&store, update, Some(networks), needed)
    };
    if outgoing.send(Ok(first)).await.is_err() {
        return;
    }
    let mut metrics = context.consensus.raft.metrics();
    loop {
        let delivery = tokio::select! {
            () = replaced.notified() => {
                let _ = outgoing.send(Err(Status::aborted("a newer session of this node replaced this one"))).await;
                return;
            }
            _ = lost_leadership(&mut metrics, context.consensus.node_id) => {
                let _ = outgoing.send(Err(not_leader(&context.consensus))).await;
                return;
            }
            () = outgoing.closed() => return,
            () = logs.changed() => {
                let update = logs.take();
                if !update.is_empty() && outgoing.send(Ok(context.logs_message(update))).await.is_err() {
                    return;
                }
                continue;
            }
            delivery = events.next() => match delivery {
                Some(delivery) => delivery,
                None => return,
            },
        };
        let (batch, reset): (Vec<Arc<Event>>, bool) = (delivery.events, delivery.reset);
        let message = {
            let store = context.consensus.state.read();
            if !store.nodes.contains_key(&context.node_id) {
                None
            } else {
                let update = if reset { tracker.full(store.tasks_on_node(&context.node_id)) } else { tracker.delta(batch.iter().map(|e| &**e)) };
                let networks = views.refresh(&store, &batch, reset);
                let needed = if reset {
                    files.full(&store, &context.consensus.data_key, tracker.task_ids())
                } else if files::relevant(batch.iter().map(|e| &**e), &context.node_id) {
                    files.refresh_among(&store, &context.consensus.data_key, tracker.task_ids())
                } else {
                    FilesUpdate::default()
                };
                let changed = !update.is_empty() || networks.is_some() || !needed.is_empty();
                Some(changed.then(|| context.message(&store, update, networks, needed)))
            }
        };
        match message {
            None => {
                let status = Status::permission_denied(format!("node {} was removed from the cluster", context.node_id));
                let _ = outgoing.send(Err(status)).await;
                return;
            }
            Some(None) => {}
            Some(Some(message)) => {
                if outgoing.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Dispatcher for DispatcherService {
    type SessionStream = ReceiverStream<Result<pb::SessionMessage, Status>>;

    async fn session(&self, request: Request<pb::SessionRequest>) -> Result<Response<Self::SessionStream>, Status> {
        let node_id = self.caller(&request)?;
        let request = request.into_inner();
        let resources = NodeResources { nano_cpus: request.nano_cpus, memory_bytes: request.memory_bytes };
        // Subscribe before the full set is read, so no change falls in between.
        let events = self.fanout.subscribe(&node_id);
        let (session_id, replaced) = self.sessions.open(&node_id);
        mark_ready(&self.consensus, &node_id, resources).await?;
        let logs = self.logs.attach(&node_id);
        tracing::info!(node = %node_id, session = %session_id, "agent session opened");
        let (outgoing, stream) = mpsc::channel(16);
        let context = SessionContext {
            consensus: self.consensus.clone(),
            node_id,
            session_id,
            heartbeat_period_ms: self.period_ms(),
        };
        tokio::spawn(run_session(context, replaced, logs, events, outgoing));
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn heartbeat(&self, request: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let node_id = self.caller(&request)?;
        let session_id = request.into_inner().session_id;
        tracing::trace!(node = %node_id, session = %session_id, "heartbeat");
        if !self.sessions.heartbeat(&node_id, &session_id) {
            return Err(stale_session(&node_id, &session_id));
        }
        Ok(Response::new(pb::HeartbeatResponse { period_ms: self.period_ms() }))
    }

    async fn update_task_status(
        &self,
        request: Request<pb::UpdateTaskStatusRequest>,
    ) -> Result<Response<pb::UpdateTaskStatusResponse>, Status> {
        let node_id = self.caller(&request)?;
        let request = request.into_inner();
        self.check_session(&node_id, &request.session_id)?;
        let reports = status::validate(&self.consensus.state.read(), &node_id, request.updates)?;
        self.statuses.submit(reports).await?;
        Ok(Response::new(pb::UpdateTaskStatusResponse {}))
    }

    /// Hands each batch to the log broker, which checks the node may publish it; the first
    /// refusal (the reader left) ends the call so the agent stops.
    async fn publish_logs(
        &self,
        request: Request<Streaming<pb::PublishLogsMessage>>,
    ) -> Result<Response<pb::PublishLogsResponse>, Status> {
        let node_id = self.caller(&request)?;
        let mut stream = request.into_inner();
        while let Some(message) = stream.message().await? {
            self.logs.publish(&node_id, message).await?;
        }
        Ok(Response::new(pb::PublishLogsResponse {}))
    }
}

#[cfg(test)]
mod tests;

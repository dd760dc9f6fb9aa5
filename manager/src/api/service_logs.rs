//! `ServiceLogs` of the Control service: picks the tasks a reference names, subscribes to their
//! logs through the leader's [`LogBroker`] and streams what the agents publish.
//!
//! Following a service also follows the tasks that start later (a replica that replaces a
//! failed one, a scale-up): the store is watched and new tasks join the subscription. The
//! stream ends when the service is removed or this manager stops leading.
//!
//! Only the leader holds agent sessions, so a follower proxies the whole stream to the leader
//! (one hop only: a proxied call that lands on a non-leader fails with `leader-addr`). Closing
//! the stream drops the subscription, which cancels it on the agents; on a follower, closing
//! the client's stream closes the proxied one, with the same effect on the leader.

use super::log_broker::{Delivery, LogBroker, LogOptions, Subscription, TaskContext};
use super::services::find_service;
use crate::consensus::{Consensus, MAX_MESSAGE};
use crate::control_loop::lost_leadership;
use crate::membership::{is_leader, not_leader};
use crate::raft::Watched;
use crate::store::{Store, Task, TaskState};
use futures::Stream;
use proto::v1 as pb;
use proto::v1::control_client::ControlClient;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};

/// The response stream of `ServiceLogs`.
pub type LogsStream = Pin<Box<dyn Stream<Item = Result<pb::ServiceLogsResponse, Status>> + Send>>;

/// Without `follow`: how long to wait for more from nodes that have not closed their part
/// before ending the stream without them (a node may hang or be partitioned).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Metadata set on a call a follower proxies to the leader.
const PROXIED: &str = "x-cluster-proxied";

/// Answers `ServiceLogs` on any manager.
pub async fn serve(
    consensus: &Consensus,
    broker: &Arc<LogBroker>,
    request: Request<pb::ServiceLogsRequest>,
) -> Result<LogsStream, Status> {
    if !is_leader(consensus) {
        if request.metadata().contains_key(PROXIED) {
            return Err(not_leader(consensus));
        }
        return proxy(consensus, request.into_inner()).await;
    }
    let request = request.into_inner();
    // Watch before selecting, so that no task starts unseen in between.
    let events = consensus.state.subscribe();
    let (service_id, tasks) = select_tasks(&consensus.state.read(), &request.reference)?;
    let watch = service_id.filter(|_| request.follow).map(|service_id| ServiceWatch {
        consensus: consensus.clone(),
        service_id,
        events,
    });
    let options = LogOptions {
        follow: request.follow,
        tail: request.tail,
        since_unix_nanos: request.since_unix_nanos,
        open_ended: watch.is_some(),
    };
    let subscription = broker.subscribe(tasks, options)?;
    tracing::debug!(subscription = subscription.id(), reference = %request.reference, follow = request.follow, "log reader");
    let (outgoing, stream) = mpsc::channel(16);
    tokio::spawn(forward(subscription, request.follow, IDLE_TIMEOUT, watch, outgoing));
    Ok(Box::pin(ReceiverStream::new(stream)))
}

/// Hands the call to the leader and relays its stream.
async fn proxy(consensus: &Consensus, request: pb::ServiceLogsRequest) -> Result<LogsStream, Status> {
    let leader = consensus
        .raft
        .current_leader()
        .await
        .ok_or_else(|| crate::consensus::no_quorum("no leader is known", Duration::ZERO))?;
    let channel = consensus.channel(leader).ok_or_else(|| Status::unavailable("the leader's address is unknown"))?;
    let mut client = ControlClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    let mut request = Request::new(request);
    request.metadata_mut().insert(PROXIED, tonic::metadata::MetadataValue::from_static("1"));
    let stream = client.service_logs(request).await?.into_inner();
    Ok(Box::pin(stream))
}

/// The service `reference` names (if it names one) and its tasks, or the one task it names (id
/// or unique id prefix); only tasks that were placed on a node and may have started (and so
/// may have logs).
pub fn select_tasks(store: &Store, reference: &str) -> Result<(Option<String>, Vec<TaskContext>), Status> {
    match find_service(store, reference) {
        Ok(service) => Ok((Some(service.meta.id.clone()), service_tasks(store, &service.meta.id))),
        Err(status) if status.code() == tonic::Code::NotFound => {
            Ok((None, with_logs(store, vec![find_task(store, reference)?])))
        }
        Err(status) => Err(status),
    }
}

/// The tasks of `service_id` that may have logs.
fn service_tasks(store: &Store, service_id: &str) -> Vec<TaskContext> {
    with_logs(store, store.tasks.values().filter(|t| t.service_id == service_id).collect())
}

fn with_logs(store: &Store, tasks: Vec<&Task>) -> Vec<TaskContext> {
    tasks
        .into_iter()
        .filter(|t| t.status.state >= TaskState::Starting && t.status.state != TaskState::Rejected)
        .filter_map(|t| {
            let node_id = t.node_id.clone()?;
            Some(TaskContext {
                task_id: t.meta.id.clone(),
                service_id: t.service_id.clone(),
                service_name: store.services.get(&t.service_id).map(|s| s.name.clone()).unwrap_or_default(),
                slot: t.slot,
                node_hostname: store.nodes.get(&node_id).map(|n| n.hostname.clone()).unwrap_or_default(),
                node_id,
            })
        })
        .collect()
}

fn find_task<'a>(store: &'a Store, reference: &str) -> Result<&'a Task, Status> {
    if let Some(task) = store.tasks.get(reference) {
        return Ok(task);
    }
    let matches: Vec<&Task> =
        store.tasks.values().filter(|t| !reference.is_empty() && t.meta.id.starts_with(reference)).collect();
    match matches.as_slice() {
        [task] => Ok(task),
        [] => Err(Status::not_found(format!("no service or task {reference}"))),
        _ => Err(Status::invalid_argument(format!("task reference {reference} is ambiguous ({} tasks match)", matches.len()))),
    }
}

type Outgoing = mpsc::Sender<Result<pb::ServiceLogsResponse, Status>>;

/// How long store changes are gathered before a followed service's tasks are looked at again.
const RESCAN_DELAY: Duration = Duration::from_millis(200);

/// What following a whole service watches: the store, for its new tasks.
struct ServiceWatch {
    consensus: Consensus,
    service_id: String,
    events: broadcast::Receiver<Watched>,
}

/// What woke the relay.
enum Step {
    /// From the subscription (`None`: the remaining nodes were silent for too long).
    Delivery(Option<Delivery>),
    StoreChanged,
    Rescan,
    LostLeadership,
}

/// Relays the subscription to the caller until it ends, the caller leaves or (without follow)
/// the remaining nodes stay silent for `idle`. A followed service brings in its new tasks, and
/// ends when it is removed or this manager stops leading.
async fn forward(
    mut subscription: Subscription,
    follow: bool,
    idle: Duration,
    mut watch: Option<ServiceWatch>,
    outgoing: Outgoing,
) {
    let mut metrics = watch.as_ref().map(|w| (w.consensus.raft.metrics(), w.consensus.node_id));
    let mut rescan_at: Option<Instant> = None;
    loop {
        let step = {
            let wait = async {
                if follow { Some(subscription.next().await) } else { tokio::time::timeout(idle, subscription.next()).await.ok() }
            };
            let changed = async {
                match watch.as_mut() {
                    Some(w) => {
                        // A lagging receiver also means changes: look again either way.
                        if let Err(broadcast::error::RecvError::Closed) = w.events.recv().await {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            let lost = async {
                match metrics.as_mut() {
                    Some((m, node_id)) => lost_leadership(m, *node_id).await,
                    None => std::future::pending().await,
                }
            };
            let rescan = async {
                match rescan_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = outgoing.closed() => return,
                next = wait => Step::Delivery(next),
                () = changed => Step::StoreChanged,
                () = rescan => Step::Rescan,
                _ = lost => Step::LostLeadership,
            }
        };
        let (response, last) = match step {
            Step::StoreChanged => {
                rescan_at.get_or_insert_with(|| Instant::now() + RESCAN_DELAY);
                continue;
            }
            Step::Rescan => {
                rescan_at = None;
                let Some(w) = watch.as_ref() else { continue };
                let tasks = {
                    let store = w.consensus.state.read();
                    store.services.contains_key(&w.service_id).then(|| service_tasks(&store, &w.service_id))
                };
                match tasks {
                    Some(tasks) => {
                        subscription.add_tasks(tasks);
                        continue;
                    }
                    None => return,
                }
            }
            Step::LostLeadership => {
                let warning = "this manager stopped leading; run the command again to follow the logs".to_string();
                (pb::ServiceLogsResponse { messages: vec![], warnings: vec![warning] }, true)
            }
            Step::Delivery(Some(Delivery::Lines(messages))) => (pb::ServiceLogsResponse { messages, warnings: vec![] }, false),
            Step::Delivery(Some(Delivery::Warnings(warnings))) => {
                (pb::ServiceLogsResponse { messages: vec![], warnings }, false)
            }
            Step::Delivery(Some(Delivery::End)) => return,
            Step::Delivery(None) => {
                let warning = format!(
                    "no logs from {} in {idle:?}: ending without them; the output may be incomplete",
                    subscription.open_nodes().join(", "),
                );
                (pb::ServiceLogsResponse { messages: vec![], warnings: vec![warning] }, true)
            }
        };
        if outgoing.send(Ok(response)).await.is_err() || last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::testkit::{Sim, replicated};

    fn task(id: &str, node: &str) -> TaskContext {
        TaskContext {
            task_id: id.into(),
            service_id: "svc".into(),
            service_name: "web".into(),
            slot: 1,
            node_id: node.into(),
            node_hostname: format!("host-{node}"),
        }
    }

    fn publish(sub: &str, task_id: &str, close: bool) -> pb::PublishLogsMessage {
        let line = pb::LogMessage { task_id: task_id.into(), line: b"x".to_vec(), ..Default::default() };
        pb::PublishLogsMessage { subscription_id: sub.into(), messages: vec![line], close }
    }

    async fn receive(rx: &mut mpsc::Receiver<Result<pb::ServiceLogsResponse, Status>>) -> Option<pb::ServiceLogsResponse> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("an answer in time").map(|r| r.unwrap())
    }

    #[tokio::test]
    async fn a_silent_node_does_not_hold_a_non_follow_read_forever() {
        let broker = Arc::new(LogBroker::default());
        let _a = broker.attach("a");
        let _b = broker.attach("b");
        let sub = broker.subscribe(vec![task("t1", "a"), task("t2", "b")], LogOptions::default()).unwrap();
        let id = sub.id().to_string();
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(forward(sub, false, Duration::from_millis(200), None, tx));
        broker.publish("a", publish(&id, "t1", true)).await.unwrap();
        assert_eq!(receive(&mut rx).await.unwrap().messages.len(), 1);
        let warning = receive(&mut rx).await.unwrap().warnings;
        assert_eq!(warning, ["no logs from host-b in 200ms: ending without them; the output may be incomplete"]);
        assert!(receive(&mut rx).await.is_none(), "the stream ended");
        let late = broker.publish("b", publish(&id, "t2", true)).await.unwrap_err();
        assert_eq!(late.code(), tonic::Code::NotFound, "the subscription is gone");
    }

    #[tokio::test]
    async fn a_reader_that_leaves_cancels_the_subscription_on_the_agents() {
        let broker = Arc::new(LogBroker::default());
        let a = broker.attach("a");
        let options = LogOptions { follow: true, ..Default::default() };
        let sub = broker.subscribe(vec![task("t1", "a")], options).unwrap();
        let id = sub.id().to_string();
        a.changed().await;
        assert_eq!(a.take().subscribe.len(), 1);
        let (tx, rx) = mpsc::channel(4);
        let relay = tokio::spawn(forward(sub, true, IDLE_TIMEOUT, None, tx));
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), relay).await.expect("the relay stops").unwrap();
        assert_eq!(a.take().cancel, [id]);
    }

    #[test]
    fn selects_started_tasks_of_a_service_or_one_task() {
        let mut sim = Sim::new();
        let n1 = sim.add_node("h1");
        let n2 = sim.add_node("h2");
        let web = sim.add_service("web", replicated(3));
        let other = sim.add_service("other", replicated(1));
        sim.converge();
        // One task of web has not started yet: it has no logs to ask for.
        let waiting = sim.tasks(&web)[2].meta.id.clone();
        sim.set_state(&waiting, TaskState::Assigned);

        let (service, tasks) = select_tasks(&sim.store, "web").unwrap();
        assert_eq!(service.as_deref(), Some(web.as_str()));
        assert_eq!(tasks.len(), 2);
        assert!(tasks.iter().all(|t| t.task_id != waiting && t.service_name == "web"));
        assert!(tasks.iter().all(|t| (t.node_id == n1 && t.node_hostname == "h1") || (t.node_id == n2 && t.node_hostname == "h2")));
        let mut slots: Vec<u64> = tasks.iter().map(|t| t.slot).collect();
        slots.sort();
        assert_eq!(slots, [1, 2]);
        assert_eq!(select_tasks(&sim.store, &web).unwrap().1.len(), 2, "by service id");

        let one = sim.tasks(&other)[0].meta.id.clone();
        let (service, by_task) = select_tasks(&sim.store, &one).unwrap();
        assert_eq!(service, None, "a task is not followed beyond itself");
        assert_eq!(by_task.len(), 1);
        assert_eq!((by_task[0].task_id.as_str(), by_task[0].service_name.as_str()), (one.as_str(), "other"));

        assert_eq!(select_tasks(&sim.store, "nothing").unwrap_err().code(), tonic::Code::NotFound);
        assert_eq!(select_tasks(&sim.store, "task-").unwrap_err().code(), tonic::Code::InvalidArgument, "ambiguous");
    }
}

//! Publishing task logs to the leader: for every log subscription the session receives, read
//! the tasks' logs (the last N lines, then new ones when following) and send them in bounded
//! batches on a `PublishLogs` stream, then `close` once everything was sent.
//!
//! A subscription ends when it is cancelled, when the session ends (the publisher is dropped),
//! when the manager refuses a batch (its reader left), or, when following, once every task's
//! log has ended (the container exited and its output was drained).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures::FutureExt;
use proto::v1::dispatcher_client::DispatcherClient;
use proto::v1::{LogMessage, LogSubscription, PublishLogsMessage};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::runtime::{ContainerRuntime, LogEntry, LogStream, RuntimeError, Stream};

/// Subscription parts published at once; more are refused (and closed at once).
pub const MAX_SUBSCRIPTIONS: usize = 256;
/// A batch holds at most this many lines...
const BATCH_LINES: usize = 512;
/// ...and about this many bytes of log text.
const BATCH_BYTES: usize = 256 * 1024;
/// Batches queued for one `PublishLogs` stream.
const QUEUE: usize = 8;
/// How long to wait for the manager's answer once everything was sent.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the logs come from: the container runtime, or a fake in tests.
pub trait LogSource: Send + Sync + 'static {
    /// The log of `task_id` (its container): the last `tail` lines (all if `None`), then new
    /// lines until the container exits if `follow`. `NotFound` when the task has no container.
    fn open(
        &self,
        task_id: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> Pin<Box<dyn Future<Output = Result<LogStream, RuntimeError>> + Send + '_>>;
}

impl<R: ContainerRuntime> LogSource for R {
    fn open(
        &self,
        task_id: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> Pin<Box<dyn Future<Output = Result<LogStream, RuntimeError>> + Send + '_>> {
        let id = task_id.to_string();
        Box::pin(async move { self.logs(&id, tail, follow).await })
    }
}

/// Where batches go: a `PublishLogs` call per subscription on the session's channel.
pub trait LogSink: Send + Sync + 'static {
    /// Sends the batches of one subscription; returns when the manager answers (early if it
    /// refuses, e.g. because the reader left).
    fn publish(
        &self,
        batches: mpsc::Receiver<PublishLogsMessage>,
    ) -> Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send + 'static>>;
}

/// The real sink: the leader's Dispatcher on the session's channel.
pub struct DispatcherSink(pub Channel);

impl LogSink for DispatcherSink {
    fn publish(
        &self,
        batches: mpsc::Receiver<PublishLogsMessage>,
    ) -> Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send + 'static>> {
        let mut client = DispatcherClient::new(self.0.clone());
        Box::pin(async move {
            client.publish_logs(ReceiverStream::new(batches)).await?;
            Ok(())
        })
    }
}

/// The subscriptions of one session. Dropping it stops them all.
pub struct Publisher {
    source: Arc<dyn LogSource>,
    sink: Arc<dyn LogSink>,
    /// Per subscription id, one publishing task per part: following a service, the manager
    /// sends the same id again with the service's new tasks.
    running: HashMap<String, Vec<JoinHandle<()>>>,
}

impl Publisher {
    pub fn new(source: Arc<dyn LogSource>, sink: Arc<dyn LogSink>) -> Self {
        Publisher {
            source,
            sink,
            running: HashMap::new(),
        }
    }

    /// Stops the cancelled subscriptions and starts the new parts.
    pub fn apply(&mut self, subscriptions: Vec<LogSubscription>, cancelled: &[String]) {
        for id in cancelled {
            if let Some(tasks) = self.running.remove(id) {
                tracing::debug!(subscription = %id, "log subscription cancelled");
                tasks.iter().for_each(JoinHandle::abort);
            }
        }
        self.running.retain(|_, tasks| {
            tasks.retain(|t| !t.is_finished());
            !tasks.is_empty()
        });
        for sub in subscriptions {
            let full = self.active() >= MAX_SUBSCRIPTIONS;
            if full {
                tracing::warn!(subscription = %sub.id, "too many log subscriptions; closing this one empty");
            }
            let id = sub.id.clone();
            let task = tokio::spawn(publish(self.source.clone(), self.sink.clone(), sub, full));
            self.running.entry(id).or_default().push(task);
        }
    }

    /// Parts still publishing.
    pub fn active(&self) -> usize {
        self.running
            .values()
            .flatten()
            .filter(|t| !t.is_finished())
            .count()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.running.values().flatten().for_each(JoinHandle::abort);
    }
}

/// Publishes one subscription (nothing but the `close` when `refuse`).
async fn publish(
    source: Arc<dyn LogSource>,
    sink: Arc<dyn LogSink>,
    sub: LogSubscription,
    refuse: bool,
) {
    let (batches, receiver) = mpsc::channel(QUEUE);
    let call = sink.publish(receiver);
    tokio::pin!(call);
    let id = sub.id.clone();
    let produce = async move {
        if !refuse {
            produce(source.as_ref(), &sub, &batches).await;
        }
        let close = PublishLogsMessage {
            subscription_id: sub.id.clone(),
            messages: Vec::new(),
            close: true,
        };
        let _ = batches.send(close).await;
        // `batches` drops here: the request stream ends and the manager answers.
    };
    tokio::select! {
        result = &mut call => {
            // The manager ended the call before everything was sent: nobody reads any more.
            if let Err(status) = result {
                tracing::debug!(subscription = %id, error = %status.message(), "log publishing stopped by the manager");
            }
            return;
        }
        () = produce => {}
    }
    match tokio::time::timeout(FINISH_TIMEOUT, call).await {
        Ok(Ok(())) => {}
        Ok(Err(status)) => {
            tracing::debug!(subscription = %id, error = %status.message(), "publishing logs failed")
        }
        Err(_) => tracing::warn!(subscription = %id, "the manager did not acknowledge the logs"),
    }
}

/// Reads the subscription's tasks and sends their lines in batches, until every log ended.
async fn produce(
    source: &dyn LogSource,
    sub: &LogSubscription,
    batches: &mpsc::Sender<PublishLogsMessage>,
) {
    let tail = sub.tail.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let mut logs = tokio_stream::StreamMap::new();
    for task_id in &sub.task_ids {
        match source.open(task_id, tail, sub.follow).await {
            Ok(stream) => {
                logs.insert(task_id.clone(), ReceiverStream::new(stream));
            }
            Err(RuntimeError::NotFound(_)) => {
                tracing::debug!(task = %task_id, "no container, so no logs")
            }
            Err(e) => tracing::warn!(task = %task_id, error = %e, "cannot read the task's log"),
        }
    }
    let mut batch = Batch::new(&sub.id);
    loop {
        // Take what is ready without waiting; send when full or when nothing more is ready.
        let next = if batch.is_empty() {
            logs.next().await
        } else {
            match logs.next().now_or_never() {
                Some(next) => next,
                None => {
                    if batches.send(batch.take()).await.is_err() {
                        return;
                    }
                    continue;
                }
            }
        };
        let Some((task_id, entry)) = next else { break };
        match entry {
            Ok(entry) => {
                if sub
                    .since_unix_nanos
                    .is_some_and(|since| unix_nanos(&entry) < since)
                {
                    continue;
                }
                batch.push(task_id, entry);
                if batch.is_full() && batches.send(batch.take()).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(task = %task_id, error = %e, "reading the task's log"),
        }
    }
    if !batch.is_empty() {
        let _ = batches.send(batch.take()).await;
    }
}

fn unix_nanos(entry: &LogEntry) -> i64 {
    entry
        .time
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Lines being gathered for one `PublishLogsMessage`.
struct Batch {
    subscription_id: String,
    messages: Vec<LogMessage>,
    bytes: usize,
}

impl Batch {
    fn new(subscription_id: &str) -> Self {
        Batch {
            subscription_id: subscription_id.to_string(),
            messages: Vec::new(),
            bytes: 0,
        }
    }

    fn push(&mut self, task_id: String, entry: LogEntry) {
        self.bytes += entry.line.len() + task_id.len() + 32;
        self.messages.push(LogMessage {
            task_id,
            stream: match entry.stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            }
            .into(),
            timestamp_unix_nanos: unix_nanos(&entry),
            line: entry.line.into_bytes(),
            ..Default::default()
        });
    }

    fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    fn is_full(&self) -> bool {
        self.messages.len() >= BATCH_LINES || self.bytes >= BATCH_BYTES
    }

    fn take(&mut self) -> PublishLogsMessage {
        self.bytes = 0;
        PublishLogsMessage {
            subscription_id: self.subscription_id.clone(),
            messages: std::mem::take(&mut self.messages),
            close: false,
        }
    }
}

#[cfg(test)]
mod tests;

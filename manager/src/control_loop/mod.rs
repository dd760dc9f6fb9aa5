//! The leader's control loop runner: I/O glue around the pure loops. While this manager leads
//! it runs a round ([`plan_round`]: orchestrators, then scheduler) when it becomes leader,
//! after every applied change (bursts coalesced: events that queue up while a round or its
//! write runs are taken together) and when a delayed restart or a rolling update step falls due
//! ([`next_update_due`]), and proposes each non-empty batch as one `Op::Batch`.
//!
//! Bounded: a batch refused for a version conflict is recomputed on the next change only (a
//! refused write applies no event, so a refusal alone never triggers another round); a Raft
//! failure is retried after [`RETRY_AFTER`]; the restart timer is armed only for times after
//! the round that looked at it.

mod round;

pub use round::plan_round;

use crate::batcher::split_write;
use crate::consensus::{Consensus, now_ms};
use crate::ids::new_id;
use crate::orchestrator::{next_restart_due, next_update_due};
use crate::raft::{Metrics, Watched};
use crate::store::{Change, Op, Response};
use std::future::Future;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::sync::watch;
use tokio::time::Instant;

/// The pause before a round is tried again after Raft failed (no quorum, leader changing).
pub const RETRY_AFTER: Duration = Duration::from_millis(200);

/// The longest rest between rounds. A round reads the whole store under its read lock: at
/// 100,000 tasks it takes tens of milliseconds, and under a stream of changes (agents reporting
/// their tasks running) rounds would follow one another back to back, holding the lock and a
/// worker thread nearly all the time. After a round the loop waits as long as the round took to
/// compute (measured from its end, so a slow write counts), so rounds use at most about half
/// of a thread; on a small store a round takes microseconds and nothing waits.
pub const MAX_REST: Duration = Duration::from_millis(200);

/// The most changes one write of a round carries (see [`write_round`]).
pub const MAX_CHANGES_PER_WRITE: usize = 250;

/// Why leading stopped.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    /// Another manager leads now: wait to lead again.
    Follow,
    /// Raft shut down.
    Shutdown,
}

/// Runs until Raft shuts down, leading the control loops whenever this manager is the leader.
pub async fn run(consensus: Consensus) {
    let mut metrics = consensus.raft.metrics();
    loop {
        if leads(&metrics, consensus.node_id) {
            if lead(&consensus, &mut metrics).await == Flow::Shutdown {
                return;
            }
        } else if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Whether the metrics name this manager as the leader.
pub(crate) fn leads(metrics: &watch::Receiver<Metrics>, node_id: u64) -> bool {
    metrics.borrow().current_leader == Some(node_id)
}

/// Resolves when this manager no longer leads: `true` if Raft shut down.
pub(crate) async fn lost_leadership(metrics: &mut watch::Receiver<Metrics>, node_id: u64) -> bool {
    lost(metrics, node_id).await == Flow::Shutdown
}

/// Resolves when this manager no longer leads.
async fn lost(metrics: &mut watch::Receiver<Metrics>, node_id: u64) -> Flow {
    loop {
        if metrics.changed().await.is_err() {
            return Flow::Shutdown;
        }
        if !leads(metrics, node_id) {
            return Flow::Follow;
        }
    }
}

/// Runs `work` unless leadership is lost first.
async fn while_leading<T>(
    metrics: &mut watch::Receiver<Metrics>,
    node_id: u64,
    work: impl Future<Output = T>,
) -> Result<T, Flow> {
    tokio::select! {
        flow = lost(metrics, node_id) => Err(flow),
        value = work => Ok(value),
    }
}

/// Leads until leadership is lost or Raft shuts down.
async fn lead(consensus: &Consensus, metrics: &mut watch::Receiver<Metrics>) -> Flow {
    let node_id = consensus.node_id;
    // Subscribe first: every change applied after the first round's read triggers a round.
    let mut events = consensus.state.subscribe();
    tracing::info!("leading the control loops");
    // Act only on a store that holds everything earlier leaders committed.
    loop {
        match while_leading(metrics, node_id, consensus.read_barrier()).await {
            Err(flow) => return flow,
            Ok(Ok(())) => break,
            Ok(Err(status)) => {
                tracing::debug!(error = %status.message(), "control loops: waiting for the store to catch up");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
    loop {
        let round_started = Instant::now();
        let (changes, restart_at) = {
            let store = consensus.state.read();
            let now = now_ms();
            let mut ids = new_id;
            let changes = plan_round(&store, now, &mut ids);
            let restart_at = [next_restart_due(&store), next_update_due(store.services.values(), now)]
                .into_iter()
                .flatten()
                .filter(|&due| due > now)
                .min()
                .map(|due| Instant::now() + Duration::from_millis(u64::try_from(due - now).unwrap_or(0)));
            (changes, restart_at)
        };
        let computed_at = Instant::now();
        let computed = computed_at - round_started;
        let mut retry_at = None;
        if !changes.is_empty() {
            let count = changes.len();
            match while_leading(metrics, node_id, write_round(consensus, changes)).await {
                Err(flow) => return flow,
                Ok(Ok(0)) => tracing::debug!(changes = count, "control loops: batch committed"),
                Ok(Ok(refused)) => {
                    tracing::debug!(changes = count, refused, "control loops: part of the batch refused, recomputed on the next change");
                }
                Ok(Err(status)) => {
                    tracing::warn!(error = %status.message(), "control loops: cannot propose; retrying");
                    retry_at = Some(Instant::now() + RETRY_AFTER);
                }
            }
        }
        let timer = match (restart_at, retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            flow = lost(metrics, node_id) => return flow,
            received = events.recv() => match received {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    // Rest as long as the round took to compute (see `MAX_REST`), taking the
                    // changes of the pause into the next round.
                    tokio::time::sleep_until(computed_at + computed.min(MAX_REST)).await;
                    if drain(&mut events) {
                        return Flow::Shutdown;
                    }
                }
                Err(RecvError::Closed) => return Flow::Shutdown,
            },
            () = tokio::time::sleep_until(timer.unwrap_or_else(Instant::now)), if timer.is_some() => {}
        }
    }
}

/// Writes a round's changes as entries of at most [`MAX_CHANGES_PER_WRITE`] changes, proposed
/// together (the batcher pipelines them). Returns how many of those writes the store refused
/// (each is all or nothing; the round is recomputed on the next change anyway).
///
/// The round's changes are independent of one another (no object is changed twice), so
/// splitting them loses nothing the next round would not repair; it keeps every Raft entry
/// small enough to replicate within a heartbeat (one round can create 100,000 tasks).
async fn write_round(consensus: &Consensus, changes: Vec<Change>) -> Result<usize, tonic::Status> {
    let writes = split_write(changes, MAX_CHANGES_PER_WRITE)
        .into_iter()
        .map(|piece| consensus.write_as_leader(Op::Batch(piece)));
    let mut refused = 0;
    for outcome in futures::future::join_all(writes).await {
        if let Response::Rejected(error) = outcome? {
            tracing::debug!(%error, "control loops: a write of the round was refused");
            refused += 1;
        }
    }
    Ok(refused)
}

/// Takes every queued event (one round covers them all); true if the channel closed.
fn drain(events: &mut broadcast::Receiver<Watched>) -> bool {
    loop {
        match events.try_recv() {
            Ok(_) | Err(TryRecvError::Lagged(_)) => {}
            Err(TryRecvError::Empty) => return false,
            Err(TryRecvError::Closed) => return true,
        }
    }
}

#[cfg(test)]
mod tests;

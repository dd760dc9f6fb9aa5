//! Coalesces concurrent writes on the leader into one Raft entry.
//!
//! Every entry costs an fsync on a quorum, a replication message and openraft's bookkeeping, so
//! under concurrent load many small writes are cheaper as one `Op::Multi` entry. Nothing waits
//! on purpose: a lone write is proposed at once; while proposals are in flight, the writes that
//! arrive meanwhile queue up and leave together in the next entry.

use crate::consensus::now_ms;
use crate::raft::Raft;
use crate::store::{Command, Op, Response};
use openraft::error::{ClientWriteError, RaftError};
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Proposals in flight at once; the writes that arrive meanwhile form the next entry.
const MAX_IN_FLIGHT: usize = 4;
/// The most client operations in one entry.
const MAX_OPS_PER_ENTRY: usize = 1024;
/// The most store changes one entry carries when it merges several writes (a single write is
/// never split): large entries replicate slowly, and a follower that receives nothing for an
/// election timeout campaigns.
const MAX_CHANGES_PER_ENTRY: usize = 500;

/// Splits the items of a large write into writes of at most `size` items (at least one), each
/// with its own allocation of its own size (`Vec::split_off` would leave every piece holding
/// the capacity of all the items after it: quadratic memory for 100,000 changes).
pub fn split_write<T>(items: Vec<T>, size: usize) -> Vec<Vec<T>> {
    let size = size.max(1);
    let mut pieces = Vec::with_capacity(items.len().div_ceil(size));
    let mut items = items.into_iter();
    loop {
        let piece: Vec<T> = items.by_ref().take(size).collect();
        if piece.is_empty() {
            return pieces;
        }
        pieces.push(piece);
    }
}

/// Why a write did not get a response from the state machine.
#[derive(Debug)]
pub enum ProposeError {
    /// This manager does not lead (any more): look for the leader and try there.
    NotLeader,
    Failed(String),
}

struct Pending {
    op: Op,
    reply: oneshot::Sender<Result<Response, ProposeError>>,
}

/// The queue in front of `Raft::client_write` (cheap to clone).
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Batcher {
    /// Starts the proposing task; it ends when every `Batcher` clone is dropped.
    pub fn start(raft: Raft) -> Self {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, pending));
        Batcher { queue }
    }

    /// Proposes `op` (possibly together with other writes) and waits for its own response.
    pub async fn propose(&self, op: Op) -> Result<Response, ProposeError> {
        let (reply, response) = oneshot::channel();
        self.queue
            .send(Pending { op, reply })
            .map_err(|_| ProposeError::Failed("the proposer has stopped".into()))?;
        response.await.map_err(|_| ProposeError::Failed("the proposal was dropped (shutting down?)".into()))?
    }
}

async fn run(raft: Raft, mut pending: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = pending.recv().await {
        // Waiting for a slot first lets the queue fill while the pipeline is busy.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut weight = first.op.weight();
        let mut batch = vec![first];
        while batch.len() < MAX_OPS_PER_ENTRY && weight < MAX_CHANGES_PER_ENTRY {
            match pending.try_recv() {
                Ok(next) => {
                    weight += next.op.weight();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose_entry(&raft, batch).await;
            drop(slot);
        });
    }
}

/// Proposes one entry for `batch` and hands every writer its own response.
async fn propose_entry(raft: &Raft, batch: Vec<Pending>) {
    let (mut ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().map(|p| (p.op, p.reply)).unzip();
    let op = if ops.len() == 1 { ops.remove(0) } else { Op::Multi(ops) };
    let single = replies.len() == 1;
    let outcome = raft.client_write(Command { now_ms: now_ms(), op }.into()).await;
    let responses: Result<Vec<Response>, ProposeError> = match outcome {
        Ok(written) => match written.data {
            Response::Multi(responses) if !single && responses.len() == replies.len() => Ok(responses),
            response if single => Ok(vec![response]),
            other => Err(ProposeError::Failed(format!("unexpected response to a batched write: {other:?}"))),
        },
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(ProposeError::NotLeader),
        Err(error) => Err(ProposeError::Failed(error.to_string())),
    };
    match responses {
        Ok(responses) => {
            for (reply, response) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok(response));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(match &error {
                    ProposeError::NotLeader => ProposeError::NotLeader,
                    ProposeError::Failed(message) => ProposeError::Failed(message.clone()),
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_write;

    #[test]
    fn pieces_are_bounded_and_hold_only_their_own_items() {
        let pieces = split_write((0..1001).collect::<Vec<u32>>(), 250);
        assert_eq!(pieces.iter().map(Vec::len).collect::<Vec<_>>(), [250, 250, 250, 250, 1]);
        assert!(pieces.iter().all(|p| p.capacity() <= 250), "no piece keeps the capacity of the rest");
        assert_eq!(pieces.concat(), (0..1001).collect::<Vec<u32>>());
        assert!(split_write(Vec::<u32>::new(), 10).is_empty());
    }
}

//! Fast leader failover when the leader's process is gone.
//!
//! openraft 0.9 makes a follower wait for the leader lease (the maximum election timeout) *plus*
//! a random election timeout after the last heartbeat before it campaigns: 450-600 ms with the
//! default timings. When the leader's host refuses connections, its process is gone for sure
//! (a slow leader still accepts them), so there is nothing to wait for beyond the lease that the
//! other followers still honour. Each follower probes its leader; once a probe is refused, the
//! surviving voters start an election as soon as the lease has run out, staggered by their rank
//! so that they do not split the vote. A leader that is only slow or partitioned is left to
//! openraft's own timers, so this never removes a live leader.

use crate::consensus::Consensus;
use proto::v1::PingRequest;
use std::time::Duration;

/// How the failover watch is timed; derived from the Raft tuning.
#[derive(Clone, Copy, Debug)]
pub struct FailoverTiming {
    /// How often a follower probes its leader.
    pub probe_every: Duration,
    /// The leader lease the other followers honour (openraft: the maximum election timeout).
    pub lease: Duration,
    /// Extra wait per rank, so that the surviving voters campaign one after another.
    pub stagger: Duration,
}

/// Watches the leader until the manager shuts down (the task is aborted with the daemon).
pub async fn watch_leader(consensus: Consensus, timing: FailoverTiming) {
    let mut ticker = tokio::time::interval(timing.probe_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(leader) = consensus.raft.metrics().borrow().current_leader else { continue };
        if leader == consensus.node_id || !leader_refuses_connections(&consensus, leader, timing).await {
            continue;
        }
        let Some(rank) = election_rank(&consensus, leader) else { continue };
        tracing::info!(leader = %format!("{leader:016x}"), rank, "the leader refuses connections; campaigning once its lease ends");
        tokio::time::sleep(timing.lease + timing.stagger * rank as u32).await;
        // Someone else may have won meanwhile, or the leader may be back.
        let still_same = consensus.raft.metrics().borrow().current_leader == Some(leader);
        if still_same
            && leader_refuses_connections(&consensus, leader, timing).await
            && let Err(error) = consensus.raft.trigger().elect().await
        {
            tracing::warn!(%error, "could not start an election");
            return;
        }
    }
}

/// True only when connecting to the leader is refused outright (no process listens there).
async fn leader_refuses_connections(consensus: &Consensus, leader: u64, timing: FailoverTiming) -> bool {
    let Some(mut client) = consensus.raft_client(leader) else { return false };
    match tokio::time::timeout(timing.lease, client.ping(PingRequest {})).await {
        Ok(Err(status)) => is_connection_refused(&status),
        Ok(Ok(_)) | Err(_) => false,
    }
}

fn is_connection_refused(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = error.source();
    }
    // Some transport errors carry the cause only in their text.
    status.message().contains("Connection refused")
}

/// This manager's place among the voters that would replace `leader` (0 campaigns first), or
/// `None` if it is not a voter.
fn election_rank(consensus: &Consensus, leader: u64) -> Option<usize> {
    let voters: Vec<u64> = consensus
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .filter(|id| *id != leader)
        .collect();
    voters.iter().position(|id| *id == consensus.node_id)
}

//! Changes to the Raft group: a joining manager becomes a learner, then a voter; a demoted one
//! leaves. Only the leader changes membership, one change at a time.

use crate::consensus::Consensus;
use openraft::{BasicNode, ChangeMembers};
use std::collections::BTreeSet;
use tonic::Status;

/// The voters of the current membership.
pub fn voters(consensus: &Consensus) -> BTreeSet<u64> {
    consensus.raft.metrics().borrow().membership_config.membership().voter_ids().collect()
}

/// Whether this manager leads.
pub fn is_leader(consensus: &Consensus) -> bool {
    consensus.raft.metrics().borrow().current_leader == Some(consensus.node_id)
}

/// A `FailedPrecondition` that tells the caller where the leader is (in the message and in the
/// `leader-addr` metadata), so that it can repeat the call there.
pub fn not_leader(consensus: &Consensus) -> Status {
    let leader = consensus.raft.metrics().borrow().current_leader;
    let addr = leader.and_then(|id| consensus.member_addr(id));
    let mut status = Status::failed_precondition(match &addr {
        Some(addr) => format!("this manager is not the leader; the leader is at {addr}"),
        None => "this manager is not the leader and no leader is known (no quorum?)".to_string(),
    });
    if let Some(addr) = addr.and_then(|a| a.parse().ok()) {
        status.metadata_mut().insert("leader-addr", addr);
    }
    status
}

/// Adds the manager `id` at `addr` as a learner, waits until it has caught up, then makes it a
/// voter. Repeating it for a voter is harmless.
pub async fn add_manager(consensus: &Consensus, id: u64, addr: &str) -> Result<BTreeSet<u64>, Status> {
    if !is_leader(consensus) {
        return Err(not_leader(consensus));
    }
    if !voters(consensus).contains(&id) {
        consensus
            .raft
            .add_learner(id, BasicNode::new(addr), true)
            .await
            .map_err(|e| Status::unavailable(format!("could not add manager {id:016x} as a learner: {e}")))?;
        consensus
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| Status::unavailable(format!("could not make manager {id:016x} a voter: {e}")))?;
    }
    Ok(voters(consensus))
}

/// Removes the manager `id` from the Raft group. Refuses to remove the last voter.
pub async fn remove_manager(consensus: &Consensus, id: u64) -> Result<(), Status> {
    if !is_leader(consensus) {
        return Err(not_leader(consensus));
    }
    let current = voters(consensus);
    if current.contains(&id) && current.len() == 1 {
        return Err(Status::failed_precondition(
            "cannot demote or remove the last manager: the cluster would have no managers left",
        ));
    }
    let in_membership = consensus.raft.metrics().borrow().membership_config.membership().get_node(&id).is_some();
    if in_membership {
        consensus
            .raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map_err(|e| Status::unavailable(format!("could not remove manager {id:016x}: {e}")))?;
    }
    Ok(())
}

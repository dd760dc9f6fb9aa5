//! The cluster manager: the Raft-replicated store, the control API, the certificate authority
//! the dispatcher agents keep sessions with, and the leader's control loops.

pub mod api;
pub mod batcher;
pub mod consensus;
pub mod control_loop;
pub mod daemon;
pub mod failover;
pub mod ids;
pub mod ipam;
pub mod membership;
pub mod orchestrator;
pub mod raft;
pub mod scheduler;
pub mod secrets;
pub mod store;

#[cfg(test)]
pub(crate) mod testing;

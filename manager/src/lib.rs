//! The cluster manager: the Raft-replicated store, the control API, the certificate authority
//! and (with later issues) the control loops.

pub mod api;
pub mod consensus;
pub mod daemon;
pub mod failover;
pub mod membership;
pub mod orchestrator;
pub mod raft;
pub mod scheduler;
pub mod store;

//! The agent that runs on every host: session with the managers, runc runtime, images, health
//! checks and logs. [`daemon`] is the `cluster-agent` daemon: join, session, executor.

pub mod daemon;
pub mod image;
pub mod network;
pub mod runtime;

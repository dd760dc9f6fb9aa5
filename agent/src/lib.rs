//! The agent that runs on every host: session with the managers, runc runtime, images, health
//! checks and logs. Its work arrives with the agents issue; the crate exists so the workspace has
//! the shape the design gives it.

pub mod image;
pub mod runtime;

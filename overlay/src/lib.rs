//! Overlay networking: netlink plumbing, per-host subnet leases and the embedded service DNS.
//! Its work arrives with the overlay issue; the crate exists so the workspace has the shape the
//! design gives it.
pub mod dataplane;
pub mod dns;

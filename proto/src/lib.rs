//! The cluster's wire API: generated tonic clients and servers for the Control, Ca, Dispatcher and
//! Raft services. See `proto/cluster.proto` for what each call means.

/// Version 1 of the API (`package cluster.v1`).
pub mod v1 {
    tonic::include_proto!("cluster.v1");
}

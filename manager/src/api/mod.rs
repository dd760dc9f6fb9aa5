//! The gRPC services a manager serves, all on one mTLS listener.

pub mod ca_service;
pub mod control_service;
pub mod convert;
pub mod dispatcher;
pub mod image_pin;
pub mod log_broker;
pub mod networks;
pub mod raft_service;
pub mod secrets;
pub mod service_logs;
pub mod service_spec;
pub mod services;

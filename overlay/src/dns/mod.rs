//! The embedded service DNS server: a record table filled by the agent and a hickory server that
//! answers from it (see `../shared/design.md`, "Networking").

pub mod table;

pub use table::{
    Asker, DnsTable, EndpointMode, Lookup, NetworkId, ServiceNetwork, ServiceRecord, TaskRecord,
    task_name,
};

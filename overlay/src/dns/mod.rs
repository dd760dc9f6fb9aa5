//! The embedded service DNS server: a record table filled by the agent and a hickory server that
//! answers from it (see `../shared/design.md`, "Networking").
//!
//! Logging: hickory-server logs every response at `info` (target `hickory_server`); a daemon
//! should filter it to `warn` (`RUST_LOG=info,hickory_server=warn`) or every query costs two
//! log lines.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use overlay::dns::{Asker, DnsConfig, DnsServer, DnsTable, FixedAsker};
//! let table = DnsTable::new();
//! let asker = FixedAsker(Asker::new(["front"], Some("shop")));
//! let server = DnsServer::bind("127.0.0.1:0".parse().unwrap(), table.clone(), asker, DnsConfig::default()).await?;
//! // table.set_service(..), table.set_task(..), table.remove_task(..) as the state changes
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod forward;
pub mod server;
pub mod table;

pub use server::{AskerResolver, DnsConfig, DnsServer, FixedAsker, Handler, SourceMap};
pub use table::{
    Asker, DnsTable, EndpointMode, Lookup, NetworkId, ServiceNetwork, ServiceRecord, TaskRecord,
    task_name,
};

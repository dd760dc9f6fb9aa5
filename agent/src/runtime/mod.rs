//! The agent's container runtime: OCI bundles run by runc (design §4).
//!
//! - [`spec`]: pure construction of `config.json` from a [`ContainerSpec`].
//! - [`runc`]: the runc CLI driver (own `--root`).
//! - [`lifecycle`]: [`Runtime`], which runs containers detached, watches their exit (the agent is
//!   a child subreaper), stops them with a grace period, detects OOM kills and re-adopts running
//!   containers after an agent restart.
//! - [`exit`]: pidfd exit watching, subreaping, OOM detection from the memory cgroup.
//! - [`logs`]: per-container JSON-lines logs fed from stdio FIFOs, with tail and follow.
//! - [`user`], [`types`]: user resolution from the image; config, info and error types.
//!
//! The agent's logic should depend on the [`ContainerRuntime`] trait; [`fake::FakeRuntime`] is an
//! in-memory implementation for its unit tests.

use std::future::Future;
use std::time::Duration;

pub use nix::sys::signal::Signal;

pub mod exit;
pub mod fake;
pub mod lifecycle;
pub mod logs;
pub mod runc;
pub mod spec;
pub mod types;
pub mod user;

pub use exit::ExitInfo;
pub use lifecycle::Runtime;
pub use logs::{LogEntry, LogStream, Stream};
pub use runc::{ContainerStatus, ExecOptions, ExecOutput};
pub use spec::{ContainerSpec, Limits, MountSpec, SpecError};
pub use types::{
    ContainerInfo, DEFAULT_STOP_GRACE, DEFAULT_STOP_SIGNAL, RuntimeConfig, RuntimeError,
    parse_signal, runc_available,
};

/// What the agent needs from a container runtime; I/O lives behind it.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Creates and starts a detached container.
    fn run(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<ContainerInfo, RuntimeError>> + Send;
    /// One container's state.
    fn state(&self, id: &str) -> impl Future<Output = Result<ContainerInfo, RuntimeError>> + Send;
    /// Every container the runtime knows (re-adopting live ones after a restart).
    fn list(&self) -> impl Future<Output = Result<Vec<ContainerInfo>, RuntimeError>> + Send;
    /// Waits for a container's exit.
    fn wait(&self, id: &str) -> impl Future<Output = Result<ExitInfo, RuntimeError>> + Send;
    /// Stop signal, then SIGKILL after `grace`.
    fn stop(
        &self,
        id: &str,
        signal: Signal,
        grace: Duration,
    ) -> impl Future<Output = Result<ExitInfo, RuntimeError>> + Send;
    /// Deletes a container and its files.
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Runs a command inside a running container.
    fn exec(
        &self,
        id: &str,
        opts: &ExecOptions,
    ) -> impl Future<Output = Result<ExecOutput, RuntimeError>> + Send;
    /// The last `tail` log lines, then new ones while it runs if `follow`.
    fn logs(
        &self,
        id: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> impl Future<Output = Result<LogStream, RuntimeError>> + Send;
}

impl ContainerRuntime for Runtime {
    fn run(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<ContainerInfo, RuntimeError>> + Send {
        Runtime::run(self, spec)
    }
    fn state(&self, id: &str) -> impl Future<Output = Result<ContainerInfo, RuntimeError>> + Send {
        Runtime::state(self, id)
    }
    fn list(&self) -> impl Future<Output = Result<Vec<ContainerInfo>, RuntimeError>> + Send {
        Runtime::list(self)
    }
    fn wait(&self, id: &str) -> impl Future<Output = Result<ExitInfo, RuntimeError>> + Send {
        Runtime::wait(self, id)
    }
    fn stop(
        &self,
        id: &str,
        signal: Signal,
        grace: Duration,
    ) -> impl Future<Output = Result<ExitInfo, RuntimeError>> + Send {
        Runtime::stop(self, id, signal, grace)
    }
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        Runtime::remove(self, id)
    }
    fn exec(
        &self,
        id: &str,
        opts: &ExecOptions,
    ) -> impl Future<Output = Result<ExecOutput, RuntimeError>> + Send {
        Runtime::exec(self, id, opts)
    }
    fn logs(
        &self,
        id: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> impl Future<Output = Result<LogStream, RuntimeError>> + Send {
        Runtime::logs(self, id, tail, follow)
    }
}

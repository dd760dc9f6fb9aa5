//! The runtime's public value types: configuration, container info, errors, signal names.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;

use super::exit::ExitInfo;
use super::runc::{ContainerStatus, RuncError, RuncState};
use super::spec::SpecError;

/// Docker's default stop signal and grace period.
pub const DEFAULT_STOP_SIGNAL: Signal = Signal::SIGTERM;
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for an exit after SIGKILL before giving up.
pub const KILL_WAIT: Duration = Duration::from_secs(10);

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Runc(#[from] RuncError),
    #[error("container {0} already exists")]
    AlreadyExists(String),
    #[error("container {0} not found")]
    NotFound(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("container {0} did not exit within {KILL_WAIT:?} after SIGKILL")]
    StopTimeout(String),
    #[error("lost track of container {0}'s exit")]
    Lost(String),
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Io { context, source }
}

pub(crate) fn not_found(e: RuncError) -> RuntimeError {
    match e {
        RuncError::NotFound(id) => RuntimeError::NotFound(id),
        other => RuntimeError::Runc(other),
    }
}

/// Where the runtime keeps its state and which runc it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub data_dir: PathBuf,
    pub runc_binary: PathBuf,
    /// Parent of each container's cgroup (`<parent>/<id>`). Relative paths are under the agent's
    /// own cgroup (runc's rule); production agents should use an absolute one such as `/cluster`.
    pub cgroup_parent: PathBuf,
}

impl RuntimeConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        RuntimeConfig {
            data_dir: data_dir.into(),
            runc_binary: "runc".into(),
            cgroup_parent: "cluster".into(),
        }
    }
}

/// A container as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub status: ContainerStatus,
    /// Host pid of the init while it runs.
    pub pid: Option<i32>,
    /// Creation time recorded by runc: the same for every agent that looks at it.
    pub created: Option<SystemTime>,
    pub exit: Option<ExitInfo>,
}

pub(crate) fn info_of(st: &RuncState, exit: Option<ExitInfo>) -> ContainerInfo {
    let status = st.status();
    let running = !matches!(status, ContainerStatus::Stopped) && st.pid > 0;
    ContainerInfo {
        id: st.id.clone(),
        pid: running.then_some(st.pid),
        created: st.created_time(),
        status,
        exit,
    }
}

/// Parses a stop signal as Docker accepts it: `SIGTERM`, `TERM` or `15`.
pub fn parse_signal(s: &str) -> Option<Signal> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().ok()
}

/// Whether `path` looks like a runc binary we can run (for callers deciding to skip).
pub fn runc_available(binary: &Path) -> bool {
    std::process::Command::new(binary)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("SIGTERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("term"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("SIGQUIT"), Some(Signal::SIGQUIT));
        assert_eq!(parse_signal("nope"), None);
        assert_eq!(parse_signal("999"), None);
    }
}

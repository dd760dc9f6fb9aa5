//! An in-memory [`ContainerRuntime`] for unit tests of the agent's logic: containers "run" until
//! the test ends them with [`FakeRuntime::exit`] or the logic stops them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

use super::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ContainerStatus, ExecOptions, ExecOutput,
    ExitInfo, LogEntry, LogStream, RuntimeError, Signal, Stream,
};

struct FakeContainer {
    created: SystemTime,
    exit: watch::Sender<Option<ExitInfo>>,
    logs: Vec<LogEntry>,
    exec: ExecOutput,
}

#[derive(Default)]
struct State {
    containers: HashMap<String, FakeContainer>,
    runs: Vec<ContainerSpec>,
    stops: Vec<(String, Signal)>,
    execs: Vec<(String, ExecOptions)>,
    fail_runs: Option<String>,
}

/// In-memory runtime; clones share state.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    state: Arc<Mutex<State>>,
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Ends a running container with `info`.
    pub fn exit(&self, id: &str, info: ExitInfo) {
        self.with(|s| {
            if let Some(c) = s.containers.get(id) {
                c.exit
                    .send_if_modified(|e| e.is_none() && e.replace(info).is_none());
            }
        });
    }

    /// Makes every following `run` fail with this message (`None` = succeed again).
    pub fn fail_runs(&self, message: Option<&str>) {
        self.with(|s| s.fail_runs = message.map(str::to_string));
    }

    /// What the next `exec` in this container returns.
    pub fn set_exec_result(&self, id: &str, out: ExecOutput) {
        self.with(|s| s.containers.get_mut(id).map(|c| c.exec = out));
    }

    pub fn push_log(&self, id: &str, stream: Stream, line: &str) {
        self.with(|s| {
            s.containers.get_mut(id).map(|c| {
                c.logs.push(LogEntry {
                    time: SystemTime::now(),
                    stream,
                    line: line.into(),
                })
            })
        });
    }

    /// Every spec passed to `run`, in order.
    pub fn runs(&self) -> Vec<ContainerSpec> {
        self.with(|s| s.runs.clone())
    }

    /// Every `(id, signal)` passed to `stop`.
    pub fn stops(&self) -> Vec<(String, Signal)> {
        self.with(|s| s.stops.clone())
    }

    pub fn execs(&self) -> Vec<(String, ExecOptions)> {
        self.with(|s| s.execs.clone())
    }

    fn info(id: &str, c: &FakeContainer) -> ContainerInfo {
        let exit = c.exit.borrow().clone();
        ContainerInfo {
            id: id.to_string(),
            status: if exit.is_some() {
                ContainerStatus::Stopped
            } else {
                ContainerStatus::Running
            },
            pid: exit.is_none().then_some(1),
            created: Some(c.created),
            exit,
        }
    }

    fn exit_rx(&self, id: &str) -> Result<watch::Receiver<Option<ExitInfo>>, RuntimeError> {
        self.with(|s| s.containers.get(id).map(|c| c.exit.subscribe()))
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))
    }
}

async fn wait_rx(
    id: &str,
    mut rx: watch::Receiver<Option<ExitInfo>>,
) -> Result<ExitInfo, RuntimeError> {
    rx.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|e| e.clone())
        .ok_or_else(|| RuntimeError::Lost(id.to_string()))
}

impl ContainerRuntime for FakeRuntime {
    async fn run(&self, spec: &ContainerSpec) -> Result<ContainerInfo, RuntimeError> {
        super::spec::validate_id(&spec.id)?;
        self.with(|s| {
            if let Some(m) = &s.fail_runs {
                return Err(RuntimeError::Io {
                    context: "fake run".into(),
                    source: std::io::Error::other(m.clone()),
                });
            }
            if s.containers.contains_key(&spec.id) {
                return Err(RuntimeError::AlreadyExists(spec.id.clone()));
            }
            s.runs.push(spec.clone());
            let c = FakeContainer {
                created: SystemTime::now(),
                exit: watch::channel(None).0,
                logs: Vec::new(),
                exec: ExecOutput {
                    exit_code: Some(0),
                    ..Default::default()
                },
            };
            let info = Self::info(&spec.id, &c);
            s.containers.insert(spec.id.clone(), c);
            Ok(info)
        })
    }

    async fn state(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        self.with(|s| s.containers.get(id).map(|c| Self::info(id, c)))
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        Ok(self.with(|s| {
            s.containers
                .iter()
                .map(|(id, c)| Self::info(id, c))
                .collect()
        }))
    }

    async fn wait(&self, id: &str) -> Result<ExitInfo, RuntimeError> {
        let rx = self.exit_rx(id)?;
        wait_rx(id, rx).await
    }

    async fn stop(
        &self,
        id: &str,
        signal: Signal,
        _grace: Duration,
    ) -> Result<ExitInfo, RuntimeError> {
        let rx = self.exit_rx(id)?;
        self.with(|s| s.stops.push((id.to_string(), signal)));
        let code = 128 + signal as i32;
        let info = ExitInfo {
            code: Some(code),
            signal: Some(signal as i32),
            oom_killed: false,
            finished_at: Some(SystemTime::now()),
        };
        self.exit(id, info);
        wait_rx(id, rx).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.with(|s| s.containers.remove(id));
        Ok(())
    }

    async fn exec(&self, id: &str, opts: &ExecOptions) -> Result<ExecOutput, RuntimeError> {
        self.with(|s| {
            let out = s.containers.get(id).map(|c| c.exec.clone());
            s.execs.push((id.to_string(), opts.clone()));
            out
        })
        .ok_or_else(|| RuntimeError::NotFound(id.to_string()))
    }

    /// Sends the stored lines and ends (no follow).
    async fn logs(
        &self,
        id: &str,
        tail: Option<usize>,
        _follow: bool,
    ) -> Result<LogStream, RuntimeError> {
        let lines = self
            .with(|s| s.containers.get(id).map(|c| c.logs.clone()))
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        let skip = tail.map_or(0, |n| lines.len().saturating_sub(n));
        let (tx, rx) = mpsc::channel(lines.len().max(1));
        for l in lines.into_iter().skip(skip) {
            let _ = tx.try_send(Ok(l));
        }
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fake_runs_stops_and_exits() {
        let rt = FakeRuntime::new();
        let spec = ContainerSpec {
            id: "a".into(),
            args: vec!["x".into()],
            ..Default::default()
        };
        assert_eq!(
            rt.run(&spec).await.unwrap().status,
            ContainerStatus::Running
        );
        assert!(matches!(
            rt.run(&spec).await,
            Err(RuntimeError::AlreadyExists(_))
        ));
        let e = rt
            .stop("a", Signal::SIGTERM, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(e.code, Some(143));
        assert_eq!(
            rt.state("a").await.unwrap().status,
            ContainerStatus::Stopped
        );
        let spec_b = ContainerSpec {
            id: "b".into(),
            ..spec
        };
        rt.run(&spec_b).await.unwrap();
        rt.push_log("b", Stream::Stdout, "one");
        rt.push_log("b", Stream::Stderr, "two");
        let mut logs = rt.logs("b", Some(1), false).await.unwrap();
        assert_eq!(logs.recv().await.unwrap().unwrap().line, "two");
        let waiter = tokio::spawn({
            let rt = rt.clone();
            async move { rt.wait("b").await }
        });
        rt.exit(
            "b",
            ExitInfo {
                code: Some(3),
                signal: None,
                oom_killed: false,
                finished_at: None,
            },
        );
        assert_eq!(waiter.await.unwrap().unwrap().code, Some(3));
        assert_eq!(rt.runs().len(), 2);
        assert_eq!(rt.stops(), vec![("a".to_string(), Signal::SIGTERM)]);
    }
}

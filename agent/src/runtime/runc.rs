//! A thin driver for the runc CLI, always with a `--root` of our own so other runc users on the
//! host are never touched.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// Errors from running runc.
#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("running {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("runc {command} failed ({status}): {message}")]
    Failed {
        command: &'static str,
        status: String,
        message: String,
    },
    #[error("parsing runc {command} output: {source}")]
    Parse {
        command: &'static str,
        source: serde_json::Error,
    },
    #[error("reading runc output: {0}")]
    Io(#[from] std::io::Error),
}

/// A container's status as runc reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerStatus {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
    Other(String),
}

impl From<&str> for ContainerStatus {
    fn from(s: &str) -> Self {
        match s {
            "creating" => Self::Creating,
            "created" => Self::Created,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "stopped" => Self::Stopped,
            other => Self::Other(other.to_string()),
        }
    }
}

/// `runc state` / `runc list` output for one container.
#[derive(Debug, Clone, Deserialize)]
pub struct RuncState {
    pub id: String,
    /// Host pid of the container's init; 0 once stopped.
    pub pid: i32,
    pub status: String,
    pub bundle: PathBuf,
    /// RFC 3339 creation time.
    pub created: String,
}

impl RuncState {
    pub fn status(&self) -> ContainerStatus {
        ContainerStatus::from(self.status.as_str())
    }

    /// The creation time; stable across agent restarts.
    pub fn created_time(&self) -> Option<SystemTime> {
        parse_rfc3339(&self.created)
    }
}

/// Parses an RFC 3339 timestamp into a `SystemTime`.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(SystemTime::from(t))
}

/// A command to run inside a running container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOptions {
    pub args: Vec<String>,
    /// Extra `KEY=VALUE` pairs on top of the container's environment.
    pub env: Vec<String>,
    /// `uid[:gid]`; `None` = the container's user.
    pub user: Option<String>,
    pub cwd: Option<PathBuf>,
    /// Killed (inside the container too) after this long; `None` = no limit.
    pub timeout: Option<Duration>,
    /// Keep at most this many bytes of each of stdout and stderr (0 = 64 KiB).
    pub output_limit: usize,
}

/// The result of [`Runc::exec`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code (128+n if killed by signal n); `None` when it timed out.
    pub exit_code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
}

/// The runc binary and the state root it is used with.
#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
}

impl Runc {
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Self {
        Runc {
            binary: binary.into(),
            root: root.into(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root")
            .arg(&self.root)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    async fn run(
        &self,
        command: &'static str,
        id: &str,
        mut cmd: Command,
    ) -> Result<Vec<u8>, RuncError> {
        let out = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|source| RuncError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(classify(
            command,
            id,
            &out.status.to_string(),
            &String::from_utf8_lossy(&out.stderr),
        ))
    }

    /// `runc create`: the container's stdout and stderr are the given files (inherited by its
    /// init, so they outlive us). runc's own messages go to `log` as JSON.
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        log: &Path,
        stdout: File,
        stderr: File,
    ) -> Result<(), RuncError> {
        let status = {
            let mut cmd = self.command();
            cmd.arg("--log").arg(log).arg("--log-format").arg("json");
            cmd.arg("create")
                .arg("--bundle")
                .arg(bundle)
                .arg("--pid-file")
                .arg(pid_file)
                .arg(id);
            cmd.stdout(Stdio::from(stdout)).stderr(Stdio::from(stderr));
            let mut child = cmd.spawn().map_err(|source| RuncError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
            child.wait().await?
            // `cmd` (holding our copies of the stdio files) is dropped here.
        };
        if status.success() {
            return Ok(());
        }
        let message = last_log_errors(log);
        Err(classify("create", id, &status.to_string(), &message))
    }

    pub async fn start(&self, id: &str) -> Result<(), RuncError> {
        let mut cmd = self.command();
        cmd.arg("start").arg(id);
        self.run("start", id, cmd).await.map(drop)
    }

    pub async fn state(&self, id: &str) -> Result<RuncState, RuncError> {
        let mut cmd = self.command();
        cmd.arg("state").arg(id);
        let out = self.run("state", id, cmd).await?;
        serde_json::from_slice(&out).map_err(|source| RuncError::Parse {
            command: "state",
            source,
        })
    }

    /// Sends `signal` to the container's init (`all`: to every process in it).
    pub async fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<(), RuncError> {
        let mut cmd = self.command();
        cmd.arg("kill");
        if all {
            cmd.arg("--all");
        }
        cmd.arg(id).arg(signal.as_str());
        self.run("kill", id, cmd).await.map(drop)
    }

    /// `runc delete`; deleting a container that does not exist succeeds.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), RuncError> {
        let mut cmd = self.command();
        cmd.arg("delete");
        if force {
            cmd.arg("--force");
        }
        cmd.arg(id);
        match self.run("delete", id, cmd).await {
            Err(RuncError::NotFound(_)) => Ok(()),
            other => other.map(drop),
        }
    }

    pub async fn list(&self) -> Result<Vec<RuncState>, RuncError> {
        let mut cmd = self.command();
        cmd.arg("list").arg("--format").arg("json");
        let out = self.run("list", "", cmd).await?;
        let list: Option<Vec<RuncState>> =
            serde_json::from_slice(&out).map_err(|source| RuncError::Parse {
                command: "list",
                source,
            })?;
        Ok(list.unwrap_or_default())
    }

    /// Runs a command inside the container, capturing its output and exit code. `pid_file` is a
    /// scratch path used to kill the process inside the container on timeout.
    pub async fn exec(
        &self,
        id: &str,
        opts: &ExecOptions,
        pid_file: &Path,
    ) -> Result<ExecOutput, RuncError> {
        if opts.args.is_empty() {
            return Err(RuncError::Failed {
                command: "exec",
                status: "not run".into(),
                message: "no command given".into(),
            });
        }
        let limit = if opts.output_limit == 0 {
            64 * 1024
        } else {
            opts.output_limit
        };
        let mut cmd = self.command();
        cmd.arg("exec").arg("--pid-file").arg(pid_file);
        for e in &opts.env {
            cmd.arg("--env").arg(e);
        }
        if let Some(u) = &opts.user {
            cmd.arg("--user").arg(u);
        }
        if let Some(c) = &opts.cwd {
            cmd.arg("--cwd").arg(c);
        }
        // No `--`: runc 1.1 would run it as the command; flags end at the container id anyway.
        cmd.arg(id).args(opts.args.iter().map(OsString::from));
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| RuncError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(RuncError::Io(std::io::Error::other(
                "runc exec pipes missing",
            )));
        };
        let out_task = tokio::spawn(read_limited(out, limit));
        let err_task = tokio::spawn(read_limited(err, limit));
        let waited = match opts.timeout {
            Some(t) => tokio::time::timeout(t, child.wait()).await.ok(),
            None => Some(child.wait().await),
        };
        let (exit_code, timed_out) = match waited {
            Some(status) => {
                let status = status?;
                use std::os::unix::process::ExitStatusExt;
                (
                    Some(
                        status
                            .code()
                            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
                    ),
                    false,
                )
            }
            None => {
                // Kill the process inside and let runc reap it and exit; only then kill runc
                // (killing runc first would orphan the process to us, a subreaper).
                kill_pid_file(pid_file);
                if tokio::time::timeout(Duration::from_secs(2), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
                super::exit::reap_orphans();
                (None, true)
            }
        };
        let _ = std::fs::remove_file(pid_file);
        let stdout = out_task.await.unwrap_or_default();
        let stderr = err_task.await.unwrap_or_default();
        if !timed_out && exit_code == Some(255) {
            let text = String::from_utf8_lossy(&stderr);
            if let Some(e) = classify_known(id, &text) {
                return Err(e);
            }
        }
        Ok(ExecOutput {
            exit_code,
            stdout,
            stderr,
            timed_out,
        })
    }
}

fn kill_pid_file(pid_file: &Path) {
    let pid = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    if let Some(pid) = pid.filter(|p| *p > 1) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Reads everything (so the writer never blocks) and keeps the first `limit` bytes.
async fn read_limited<R: AsyncRead + Unpin>(mut r: R, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

fn classify_known(id: &str, message: &str) -> Option<RuncError> {
    if message.contains("does not exist") {
        Some(RuncError::NotFound(id.to_string()))
    } else if message.contains("not running") || message.contains("cannot exec in a stopped") {
        Some(RuncError::NotRunning(id.to_string()))
    } else {
        None
    }
}

fn classify(command: &'static str, id: &str, status: &str, message: &str) -> RuncError {
    classify_known(id, message).unwrap_or_else(|| {
        let message = clean_message(message);
        let prefix = format!("runc {command} failed: ");
        let message = message
            .strip_prefix(&prefix)
            .map(str::to_string)
            .unwrap_or(message);
        RuncError::Failed {
            command,
            status: status.to_string(),
            message,
        }
    })
}

/// runc prints logrus lines (`time=.. level=error msg="..."`): keep the messages.
fn clean_message(stderr: &str) -> String {
    let msgs: Vec<String> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.find("msg=") {
            Some(i) => l[i + 4..].trim().trim_matches('"').replace("\\\"", "\""),
            None => l.trim().to_string(),
        })
        .collect();
    msgs.join("; ")
}

/// The error messages in runc's JSON log (used for `create`, whose stderr is the container's).
fn last_log_errors(log: &Path) -> String {
    #[derive(Deserialize)]
    struct Line {
        level: Option<String>,
        msg: Option<String>,
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let msgs: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        .filter(|l| matches!(l.level.as_deref(), Some("error" | "fatal")))
        .filter_map(|l| l.msg)
        .collect();
    if msgs.is_empty() {
        "no error message in runc's log".to_string()
    } else {
        msgs.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_classified() {
        let e = classify(
            "state",
            "c1",
            "exit status: 1",
            "time=\"x\" level=error msg=\"container does not exist\"\n",
        );
        assert!(matches!(e, RuncError::NotFound(ref id) if id == "c1"));
        let e = classify(
            "kill",
            "c1",
            "exit status: 1",
            "time=\"x\" level=error msg=\"container not running\"\n",
        );
        assert!(matches!(e, RuncError::NotRunning(_)));
        let e = classify(
            "start",
            "c1",
            "exit status: 1",
            "time=\"x\" level=error msg=\"exec: \\\"nope\\\": not found\"\n",
        );
        assert_eq!(
            e.to_string(),
            "runc start failed (exit status: 1): exec: \"nope\": not found"
        );
    }

    #[test]
    fn state_parses() {
        let s: RuncState = serde_json::from_str(
            r#"{"ociVersion":"1.0.2-dev","id":"t2","pid":27580,"status":"running","bundle":"/b","rootfs":"/b/rootfs","created":"2026-11-22T06:32:39.185395176Z","owner":""}"#,
        )
        .unwrap();
        assert_eq!(s.status(), ContainerStatus::Running);
        let t = s.created_time().unwrap();
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(d.subsec_nanos(), 185_395_176);
        let list: Option<Vec<RuncState>> = serde_json::from_str("null").unwrap();
        assert!(list.is_none());
    }
}

//! One `cluster-manager` process: its data dir, its address, its logs; start, kill -9, restart.

use crate::tuning::Tuning;
use crate::wait::Deadline;
use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// What `init` prints once the cluster exists.
pub const INIT_DONE: &str = "Cluster initialised";
/// What `join` prints once the manager is in the Raft group.
pub const JOIN_DONE: &str = "This node joined the cluster as manager";

/// Marks the start of each run in the log files (output is appended across restarts).
const START_MARKER: &str = "=== e2e: start #";

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `command` so that it gets SIGKILL when this process dies, even if it dies without
/// running destructors (a killed test run must not leave managers behind).
///
/// The parent-death signal fires when the *thread* that forked exits, so every child is forked
/// by one thread that lives as long as the process.
pub fn spawn_tied(mut command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    // SAFETY: the closure only makes the prctl system call, which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("e2e-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("cannot start the spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply_tx))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

/// A manager process (running or not) and everything it keeps on disk.
pub struct Manager {
    /// Its hostname in the cluster (`m1`, `m2`, ...), also used in log messages.
    pub name: String,
    /// Where it listens and what it advertises (127.0.0.1:PORT).
    pub addr: String,
    pub data_dir: PathBuf,
    /// Flags given at every start.
    pub tuning: Tuning,
    bin: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Manager {
    pub fn new(bin: PathBuf, name: &str, addr: String, data_dir: PathBuf, tuning: Tuning) -> Self {
        Manager {
            name: name.to_string(),
            addr,
            data_dir,
            tuning,
            bin,
            child: None,
            starts: 0,
        }
    }

    /// stdout of every run, appended.
    pub fn stdout_path(&self) -> PathBuf {
        self.data_dir.join("e2e-stdout.log")
    }

    /// stderr (the tracing logs) of every run, appended.
    pub fn stderr_path(&self) -> PathBuf {
        self.data_dir.join("e2e-stderr.log")
    }

    /// `cluster-manager init` for a new cluster.
    pub fn start_init(&mut self) -> Result<()> {
        let mut args = vec!["init".to_string()];
        args.extend(self.place_args());
        self.spawn(args)
    }

    /// `cluster-manager join` through the manager at `join_addr`.
    pub fn start_join(&mut self, token: &str, join_addr: &str) -> Result<()> {
        let mut args = vec![
            "join".into(),
            "--token".into(),
            token.to_string(),
            "--join-addr".into(),
            join_addr.into(),
        ];
        args.extend(self.place_args());
        self.spawn(args)
    }

    /// `cluster-manager run`: restart from the data dir (with the current [`Manager::tuning`]).
    pub fn restart(&mut self) -> Result<()> {
        let args = vec![
            "run".to_string(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
        ];
        self.spawn(args)
    }

    fn place_args(&self) -> Vec<String> {
        vec![
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--listen-addr".into(),
            self.addr.clone(),
            "--hostname".into(),
            self.name.clone(),
        ]
    }

    fn spawn(&mut self, mut args: Vec<String>) -> Result<()> {
        if self.is_running() {
            bail!("{} is already running (pid {:?})", self.name, self.pid());
        }
        args.extend(self.tuning.args());
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("cannot create {}", self.data_dir.display()))?;
        self.starts += 1;
        let open = |path: &Path| -> Result<std::fs::File> {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            writeln!(file, "{START_MARKER}{} {} ===", self.starts, args.join(" "))?;
            Ok(file)
        };
        let stdout = open(&self.stdout_path())?;
        let stderr = open(&self.stderr_path())?;
        let mut command = Command::new(&self.bin);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        // Plain logs in the files (tracing-subscriber honours NO_COLOR).
        command.env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info,openraft=warn");
        }
        let child =
            spawn_tied(command).with_context(|| format!("cannot start {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still alive (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            None => false,
            Some(child) => match child.try_wait() {
                Ok(None) => true,
                Ok(Some(_)) | Err(_) => false,
            },
        }
    }

    /// The exit status, if the process has exited on its own.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL, then wait for the process to be gone. Harmless if it is not running.
    pub fn kill_9(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_none() {
            let pid = Pid::from_raw(i32::try_from(child.id())?);
            kill(pid, Signal::SIGKILL).with_context(|| format!("kill -9 {} ({pid})", self.name))?;
        }
        child
            .wait()
            .with_context(|| format!("waiting for {} after kill -9", self.name))?;
        Ok(())
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        if child.try_wait()?.is_none() {
            let pid = Pid::from_raw(i32::try_from(child.id())?);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Deadline::after(grace);
            while !deadline.passed() {
                if child.try_wait()?.is_some() {
                    self.child = None;
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill_9()
    }

    /// The manager's Raft id, from `manager.json` in its data dir.
    pub fn raft_id(&self) -> Result<u64> {
        let path = self.data_dir.join("manager.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        value
            .get("node_id")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| anyhow!("{} has no numeric node_id", path.display()))
    }

    /// What the current run printed on stdout so far.
    pub fn current_stdout(&self) -> String {
        let text = std::fs::read_to_string(self.stdout_path()).unwrap_or_default();
        match text.rfind(START_MARKER) {
            Some(at) => text[at..].to_string(),
            None => text,
        }
    }

    /// The last `lines` lines of stderr (all runs).
    pub fn stderr_tail(&self, lines: usize) -> String {
        tail(&self.stderr_path(), lines)
    }

    /// The last `lines` lines of stdout (all runs).
    pub fn stdout_tail(&self, lines: usize) -> String {
        tail(&self.stdout_path(), lines)
    }

    /// Waits until the current run prints `needle` on stdout; fails early if the process exits.
    pub async fn wait_stdout(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Deadline::after(timeout);
        loop {
            if self.current_stdout().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.exit_status() {
                bail!(
                    "{} exited ({status}) before printing {needle:?}; stderr:\n{}",
                    self.name,
                    self.stderr_tail(30)
                );
            }
            if deadline.passed() {
                bail!(
                    "{} did not print {needle:?} within {timeout:?}; stderr:\n{}",
                    self.name,
                    self.stderr_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.kill_9();
    }
}

/// The last `lines` lines of a file ("" if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_children_can_be_killed_and_reaped() {
        let mut command = Command::new("sleep");
        command.arg("30");
        let mut child = spawn_tied(command).unwrap();
        assert!(child.try_wait().unwrap().is_none());
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success());
    }

    #[tokio::test]
    async fn wait_stdout_fails_early_when_the_process_exits() {
        let dir = tempfile::tempdir().unwrap();
        // `false` ignores its arguments and exits 1 at once.
        let mut m = Manager::new(
            PathBuf::from("/bin/false"),
            "m1",
            "127.0.0.1:1".into(),
            dir.path().join("m1"),
            Tuning::fast(),
        );
        m.start_init().unwrap();
        let started = std::time::Instant::now();
        let err = m
            .wait_stdout(INIT_DONE, Duration::from_secs(20))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("exited"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            m.stdout_tail(5)
                .contains("=== e2e: start #1 init --data-dir"),
            "{}",
            m.stdout_tail(5)
        );
        m.kill_9().unwrap();
        assert!(!m.is_running());
    }
}

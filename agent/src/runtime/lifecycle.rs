//! The container lifecycle on top of runc: run (create + start), observe the exit, stop with a
//! grace period, exec, logs, remove, and re-adoption of containers after an agent restart.
//!
//! Layout under the data dir: `runc/` is runc's `--root` (ours alone); `containers/<id>/` holds
//! the bundle (`config.json`), the stdio FIFOs, the JSON-lines log and `exit.json`.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::exit::{
    ExitInfo, PidFd, RuncInternalState, become_subreaper, load_exit, proc_start_time, reap_orphans,
    save_exit,
};
use super::logs::{self, Forwarder, LogStream};
use super::runc::{ContainerStatus, ExecOptions, ExecOutput, Runc, RuncError, RuncState};
use super::spec::{ContainerSpec, build_spec, validate_id};
use super::types::{ContainerInfo, KILL_WAIT, RuntimeConfig, RuntimeError, info_of, io, not_found};
use super::user::UserDb;

/// How long the log forwarder may take to drain after the init exited.
const LOG_DRAIN: Duration = Duration::from_secs(2);
/// Pipe capacity asked for the stdio FIFOs (what the container can write while no agent reads).
const FIFO_SIZE: i32 = 1 << 20;

struct Tracked {
    exit: watch::Receiver<Option<ExitInfo>>,
    task: Option<AbortHandle>,
}

struct Inner {
    cfg: RuntimeConfig,
    runc: Runc,
    tracked: Mutex<HashMap<String, Tracked>>,
    exec_seq: AtomicU64,
    reaper: Option<AbortHandle>,
}

impl Drop for Inner {
    /// Stops watching and log forwarding (as an agent exit would); containers keep running.
    fn drop(&mut self) {
        if let Ok(map) = self.tracked.lock() {
            map.values()
                .filter_map(|t| t.task.as_ref())
                .for_each(AbortHandle::abort);
        }
        if let Some(r) = &self.reaper {
            r.abort();
        }
    }
}

/// The agent's container runtime (cheap to clone).
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl Runtime {
    /// Creates the directories and makes this process a child subreaper. Inside a tokio runtime
    /// it also starts reaping orphaned container processes ([`reap_orphans`]) on SIGCHLD.
    pub fn new(cfg: RuntimeConfig) -> Result<Self, RuntimeError> {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        for d in [cfg.data_dir.join("runc"), cfg.data_dir.join("containers")] {
            b.create(&d)
                .map_err(io(format!("creating {}", d.display())))?;
        }
        become_subreaper().map_err(io("setting PR_SET_CHILD_SUBREAPER"))?;
        let runc = Runc::new(&cfg.runc_binary, cfg.data_dir.join("runc"));
        Ok(Runtime {
            inner: Arc::new(Inner {
                cfg,
                runc,
                tracked: Mutex::new(HashMap::new()),
                exec_seq: AtomicU64::new(0),
                reaper: spawn_orphan_reaper(),
            }),
        })
    }

    pub fn runc(&self) -> &Runc {
        &self.inner.runc
    }

    /// The container's bundle and log directory.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.inner.cfg.data_dir.join("containers").join(id)
    }

    /// The container's JSON-lines log file.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("log.json")
    }

    /// Creates and starts a container, detached; its exit is watched from now on.
    pub async fn run(&self, spec: &ContainerSpec) -> Result<ContainerInfo, RuntimeError> {
        validate_id(&spec.id)?;
        let id = spec.id.as_str();
        // runc keeps a container's state in `<root>/<id>/`: reading the directory is much
        // cheaper than starting `runc state`, and this path runs once per container start.
        if self.inner.runc.root().join(id).join("state.json").exists() {
            return Err(RuntimeError::AlreadyExists(id.to_string()));
        }
        let dir = self.container_dir(id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io(format!("creating {}", dir.display())))?;
        let rootfs = spec.rootfs.clone();
        let users = tokio::task::spawn_blocking(move || UserDb::load(&rootfs))
            .await
            .map_err(|e| RuntimeError::Io {
                context: "reading the image's users".into(),
                source: std::io::Error::other(e),
            })?
            .map_err(io("reading the image's /etc/passwd"))?;
        let config = build_spec(spec, &users, &self.inner.cfg.cgroup_parent.join(id))?;
        config
            .save(dir.join("config.json"))
            .map_err(|e| RuntimeError::Io {
                context: "writing config.json".into(),
                source: std::io::Error::other(e),
            })?;

        let (out_fifo, err_fifo) = (dir.join("stdout.fifo"), dir.join("stderr.fifo"));
        let mut writers = Vec::new();
        for p in [&out_fifo, &err_fifo] {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(
                |e| RuntimeError::Io {
                    context: format!("mkfifo {}", p.display()),
                    source: e.into(),
                },
            )?;
            // Read+write: the container then never gets SIGPIPE/EOF trouble while no agent reads.
            let w = OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map_err(io("opening the stdio FIFO"))?;
            let _ = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(FIFO_SIZE));
            writers.push(w);
        }
        let forwarder = Forwarder::start(&out_fifo, &err_fifo, &dir.join("log.json"))
            .map_err(io("starting log forwarding"))?;
        let (Some(w_err), Some(w_out)) = (writers.pop(), writers.pop()) else {
            return Err(RuntimeError::Lost(id.to_string()));
        };
        let created = self
            .inner
            .runc
            .create(
                id,
                &dir,
                &dir.join("init.pid"),
                &dir.join("runc.log"),
                w_out,
                w_err,
            )
            .await;
        if let Err(e) = created {
            forwarder.finish(LOG_DRAIN).await;
            let _ = self.inner.runc.delete(id, true).await;
            return Err(e.into());
        }
        let started = async {
            let pid = read_pid_file(&dir.join("init.pid"))?;
            let internal = RuncInternalState::load(self.inner.runc.root(), id).unwrap_or_default();
            self.track_live(id, pid, internal, Some(forwarder))?;
            self.inner.runc.start(id).await?;
            Ok::<_, RuntimeError>(())
        };
        if let Err(e) = started.await {
            self.kill_and_reap(id).await;
            let _ = self.inner.runc.delete(id, true).await;
            self.untrack(id);
            return Err(e);
        }
        self.state(id).await
    }

    /// Watches a live container's init through a pidfd; the watcher owns the log forwarder.
    fn track_live(
        &self,
        id: &str,
        pid: i32,
        internal: RuncInternalState,
        forwarder: Option<Forwarder>,
    ) -> Result<(), RuntimeError> {
        let pidfd = PidFd::open(pid).map_err(io(format!("pidfd_open({pid})")))?;
        let (tx, rx) = watch::channel(None);
        let dir = self.container_dir(id);
        let task = tokio::spawn(async move {
            if let Err(e) = pidfd.exited().await {
                tracing::warn!(error = %e, "waiting on a container's pidfd");
            }
            let status = pidfd.reap();
            if let Some(f) = forwarder {
                f.finish(LOG_DRAIN).await;
            }
            let signal = status.and_then(|s| s.1);
            let info = ExitInfo {
                code: status.map(|s| s.0),
                signal,
                oom_killed: internal.oom_killed(signal),
                finished_at: Some(SystemTime::now()),
            };
            if let Err(e) = save_exit(&dir, &info) {
                tracing::warn!(error = %e, "saving a container's exit");
            }
            tx.send_replace(Some(info));
        });
        let mut map = self
            .inner
            .tracked
            .lock()
            .map_err(|_| RuntimeError::Lost(id.to_string()))?;
        if let Some(old) = map.insert(
            id.to_string(),
            Tracked {
                exit: rx,
                task: Some(task.abort_handle()),
            },
        ) && let Some(t) = old.task
        {
            t.abort();
        }
        Ok(())
    }

    fn untrack(&self, id: &str) {
        if let Ok(mut map) = self.inner.tracked.lock()
            && let Some(t) = map.remove(id)
            && let Some(task) = t.task
        {
            task.abort();
        }
    }

    fn tracked(&self, id: &str) -> Option<watch::Receiver<Option<ExitInfo>>> {
        self.inner
            .tracked
            .lock()
            .ok()?
            .get(id)
            .map(|t| t.exit.clone())
    }

    /// Starts tracking a container found in runc's root (after an agent restart): a live one
    /// gets a pidfd watcher and its log forwarding resumes; a stopped one gets its saved exit.
    fn adopt(&self, st: &RuncState) -> Result<watch::Receiver<Option<ExitInfo>>, RuntimeError> {
        if let Some(rx) = self.tracked(&st.id) {
            return Ok(rx);
        }
        let id = st.id.as_str();
        let dir = self.container_dir(id);
        let internal = RuncInternalState::load(self.inner.runc.root(), id).unwrap_or_default();
        let live = st.pid > 0 && !matches!(st.status(), ContainerStatus::Stopped);
        let same_process = match (internal.init_process_start, proc_start_time(st.pid)) {
            (Some(a), Some(b)) => a == b,
            _ => live,
        };
        if live && same_process {
            let forwarder = Forwarder::start(
                &dir.join("stdout.fifo"),
                &dir.join("stderr.fifo"),
                &dir.join("log.json"),
            )
            .map_err(|e| tracing::warn!(id, error = %e, "cannot resume log forwarding"))
            .ok();
            if self
                .track_live(id, st.pid, internal.clone(), forwarder)
                .is_ok()
            {
                return self
                    .tracked(id)
                    .ok_or_else(|| RuntimeError::Lost(id.to_string()));
            }
        }
        let info = load_exit(&dir).unwrap_or(ExitInfo {
            code: None,
            signal: None,
            oom_killed: internal.oom_killed(None),
            finished_at: None,
        });
        let (_tx, rx) = watch::channel(Some(info));
        let mut map = self
            .inner
            .tracked
            .lock()
            .map_err(|_| RuntimeError::Lost(id.to_string()))?;
        Ok(map
            .entry(id.to_string())
            .or_insert(Tracked {
                exit: rx,
                task: None,
            })
            .exit
            .clone())
    }

    async fn exit_rx(&self, id: &str) -> Result<watch::Receiver<Option<ExitInfo>>, RuntimeError> {
        validate_id(id)?;
        if let Some(rx) = self.tracked(id) {
            return Ok(rx);
        }
        let st = self.inner.runc.state(id).await.map_err(not_found)?;
        self.adopt(&st)
    }

    /// The container's current state (adopting it if it is not tracked yet).
    pub async fn state(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        validate_id(id)?;
        let st = self.inner.runc.state(id).await.map_err(not_found)?;
        let rx = self.adopt(&st)?;
        Ok(info_of(&st, rx.borrow().clone()))
    }

    /// All containers in our runc root with their state. Running ones are adopted: their exit is
    /// watched and their logs forwarded again.
    pub async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let states = self.inner.runc.list().await?;
        let mut out = Vec::with_capacity(states.len());
        for st in &states {
            let exit = self.adopt(st)?.borrow().clone();
            out.push(info_of(st, exit));
        }
        Ok(out)
    }

    /// Waits for the container to exit.
    pub async fn wait(&self, id: &str) -> Result<ExitInfo, RuntimeError> {
        let mut rx = self.exit_rx(id).await?;
        loop {
            if let Some(info) = rx.borrow_and_update().clone() {
                return Ok(info);
            }
            if rx.changed().await.is_err() {
                return rx
                    .borrow()
                    .clone()
                    .ok_or_else(|| RuntimeError::Lost(id.to_string()));
            }
        }
    }

    /// Sends `signal` to the container's init.
    pub async fn kill(&self, id: &str, signal: Signal) -> Result<(), RuntimeError> {
        validate_id(id)?;
        match self.inner.runc.kill(id, signal, false).await {
            Ok(()) | Err(RuncError::NotRunning(_)) => Ok(()),
            Err(e) => Err(not_found(e)),
        }
    }

    /// Sends the stop signal, then SIGKILL if it is still running after `grace`.
    pub async fn stop(
        &self,
        id: &str,
        signal: Signal,
        grace: Duration,
    ) -> Result<ExitInfo, RuntimeError> {
        let rx = self.exit_rx(id).await?;
        if let Some(info) = rx.borrow().clone() {
            return Ok(info);
        }
        self.kill(id, signal).await?;
        if let Ok(r) = tokio::time::timeout(grace, self.wait(id)).await {
            return r;
        }
        tracing::info!(id, ?grace, "container ignored its stop signal: killing it");
        self.kill(id, Signal::SIGKILL).await?;
        tokio::time::timeout(KILL_WAIT, self.wait(id))
            .await
            .map_err(|_| RuntimeError::StopTimeout(id.to_string()))?
    }

    /// SIGKILLs a live tracked container and lets its watcher reap it (no zombie left behind).
    async fn kill_and_reap(&self, id: &str) {
        let live = self.tracked(id).is_some_and(|rx| rx.borrow().is_none());
        if live {
            let _ = self.inner.runc.kill(id, Signal::SIGKILL, false).await;
            let _ = tokio::time::timeout(KILL_WAIT, self.wait(id)).await;
        }
    }

    /// Deletes the container (killing it if it still runs) and its directory, logs included.
    pub async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        validate_id(id)?;
        self.kill_and_reap(id).await;
        self.untrack(id);
        self.inner.runc.delete(id, true).await?;
        match std::fs::remove_dir_all(self.container_dir(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io("removing the container directory")(e))
            }
            _ => Ok(()),
        }
    }

    /// Runs a command inside the running container (health checks).
    pub async fn exec(&self, id: &str, opts: &ExecOptions) -> Result<ExecOutput, RuntimeError> {
        validate_id(id)?;
        let n = self.inner.exec_seq.fetch_add(1, Ordering::Relaxed);
        let pid_file = self.container_dir(id).join(format!("exec-{n}.pid"));
        self.inner
            .runc
            .exec(id, opts, &pid_file)
            .await
            .map_err(not_found)
    }

    /// The container's log: the last `tail` lines (`None` = all), then, with `follow`, new lines
    /// until the container has exited and its log is drained.
    pub async fn logs(
        &self,
        id: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> Result<LogStream, RuntimeError> {
        validate_id(id)?;
        let path = self.log_path(id);
        if !self.container_dir(id).is_dir() {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        let p = path.clone();
        let (initial, offset) = tokio::task::spawn_blocking(move || logs::read_tail(&p, tail))
            .await
            .map_err(|e| RuntimeError::Io {
                context: "reading the log".into(),
                source: std::io::Error::other(e),
            })?
            .map_err(io("reading the log"))?;
        let (done_tx, done_rx) = watch::channel(!follow);
        if follow {
            let mut exit = self.exit_rx(id).await?;
            tokio::spawn(async move {
                tokio::select! {
                    _ = exit.wait_for(Option::is_some) => { let _ = done_tx.send(true); }
                    _ = done_tx.closed() => {}
                }
            });
        }
        Ok(logs::follow(path, initial, offset, done_rx))
    }
}

/// Reaps orphaned container processes on every SIGCHLD, and every few seconds as a fallback.
fn spawn_orphan_reaper() -> Option<AbortHandle> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let task = handle.spawn(async {
        let mut sigchld =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
        loop {
            match sigchld.as_mut() {
                Some(s) => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), s.recv()).await;
                }
                None => tokio::time::sleep(Duration::from_secs(1)).await,
            }
            let _ = tokio::task::spawn_blocking(reap_orphans).await;
        }
    });
    Some(task.abort_handle())
}

/// The pid `runc create --pid-file` wrote (the container's init, waiting for `runc start`).
fn read_pid_file(path: &Path) -> Result<i32, RuntimeError> {
    let text = std::fs::read_to_string(path).map_err(io(format!("reading {}", path.display())))?;
    text.trim()
        .parse()
        .ok()
        .filter(|pid: &i32| *pid > 0)
        .ok_or_else(|| RuntimeError::Io {
            context: format!("reading {}", path.display()),
            source: std::io::Error::other(format!("not a pid: {:?}", text.trim())),
        })
}

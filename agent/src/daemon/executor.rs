//! The executor: runs the containers of the tasks assigned to the node and reports their states.
//! Decisions come from [`plan::decide`](super::plan::decide); this module carries them out.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use proto::v1::{Assignment, TaskStatus};
use tokio::sync::{Notify, Semaphore, mpsc};

use super::container::{container_spec, exit_status, status, stop_params, wants_run};
use super::plan::{Action, Phase, decide};
use crate::image::{ImageConfig, ImageStore, Rootfs, mount_rootfs};
use crate::runtime::{
    ContainerRuntime, ContainerSpec, DEFAULT_STOP_GRACE, DEFAULT_STOP_SIGNAL, ExitInfo, MountSpec,
    Signal,
};

/// An image ready for one task: its config and the mounted root filesystem.
pub struct Prepared {
    pub config: ImageConfig,
    pub rootfs: PathBuf,
}

/// Images and root filesystems, behind a trait so the executor is testable without a registry.
pub trait Images: Send + Sync + 'static {
    /// Pulls `reference` if needed and mounts a rootfs for `task_id`; errors are for users.
    fn prepare(
        &self,
        reference: &str,
        task_id: &str,
    ) -> impl Future<Output = Result<Prepared, String>> + Send;
    /// Unmounts and deletes the task's rootfs.
    fn release(&self, task_id: &str) -> impl Future<Output = ()> + Send;
}

/// [`Images`] backed by the [`ImageStore`], rootfs under `<containers>/<task id>`.
pub struct StoreImages {
    pub store: ImageStore,
    pub containers: PathBuf,
}

impl Images for StoreImages {
    async fn prepare(&self, reference: &str, task_id: &str) -> Result<Prepared, String> {
        let image = self
            .store
            .ensure_image(reference)
            .await
            .map_err(|e| e.to_string())?;
        let dir = self.containers.join(task_id);
        // Mounts and directory trees: blocking system calls, kept off the async workers so a
        // burst of container starts cannot delay heartbeats.
        tokio::task::spawn_blocking(move || {
            let mut old = Rootfs::adopt(&dir);
            old.unmount().map_err(|e| e.to_string())?;
            let rootfs = mount_rootfs(&image, &dir).map_err(|e| e.to_string())?;
            Ok(Prepared {
                config: image.config,
                rootfs: rootfs.keep_mounted(),
            })
        })
        .await
        .map_err(|e| format!("preparing the rootfs: {e}"))?
    }

    async fn release(&self, task_id: &str) {
        let dir = self.containers.join(task_id);
        let task = task_id.to_string();
        let released = tokio::task::spawn_blocking(move || {
            let mut rootfs = Rootfs::adopt(&dir);
            if let Err(e) = rootfs.unmount() {
                tracing::warn!(task, error = %e, "cannot unmount rootfs");
                return;
            }
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(task, error = %e, "cannot delete container dir");
            }
        });
        let _ = released.await;
    }
}

/// Status updates waiting to be sent to the managers (shared with the session, kept across
/// reconnections).
#[derive(Clone, Default)]
pub struct StatusQueue {
    pending: Arc<Mutex<Vec<TaskStatus>>>,
    notify: Arc<Notify>,
}

impl StatusQueue {
    fn with<T>(&self, f: impl FnOnce(&mut Vec<TaskStatus>) -> T) -> T {
        let mut g = match self.pending.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }
    pub fn push(&self, st: TaskStatus) {
        tracing::debug!(task = %st.task_id, state = %st.state, "task status");
        self.with(|v| v.push(st));
        self.notify.notify_one();
    }
    /// Everything pending, oldest first.
    pub fn take(&self) -> Vec<TaskStatus> {
        self.with(std::mem::take)
    }
    /// Puts back a batch that could not be sent, before anything queued since.
    pub fn put_back(&self, mut batch: Vec<TaskStatus>) {
        self.with(|v| {
            batch.append(v);
            *v = batch;
        });
    }
    /// Waits until something is pushed.
    pub async fn changed(&self) {
        self.notify.notified().await
    }
}

/// What the session hands to the executor.
#[derive(Debug, Clone)]
pub enum Input {
    /// The complete set of tasks assigned to the node.
    Full(Vec<Assignment>),
    Delta {
        assignments: Vec<Assignment>,
        removed: Vec<String>,
    },
}

enum Event {
    /// Image and rootfs are ready (`None`: preparing failed, reported).
    Prepared {
        id: String,
        spec: Option<Box<(ContainerSpec, Signal)>>,
    },
    /// `run` returned: whether the container runs.
    Started {
        id: String,
        ok: bool,
    },
    Exited {
        id: String,
        exit: Result<ExitInfo, String>,
    },
    Stopped {
        id: String,
    },
    Removed {
        id: String,
    },
}

struct Local {
    phase: Phase,
    signal: Signal,
    /// Set while [`Phase::Ready`].
    prepared: Option<ContainerSpec>,
}

impl Local {
    fn new(phase: Phase) -> Local {
        Local {
            phase,
            signal: DEFAULT_STOP_SIGNAL,
            prepared: None,
        }
    }
}

/// Runs the assigned tasks' containers, named by task id.
pub struct Executor<R, I> {
    runtime: Arc<R>,
    images: Arc<I>,
    volumes: PathBuf,
    statuses: StatusQueue,
    assigned: BTreeMap<String, Assignment>,
    local: HashMap<String, Local>,
    synced: bool,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    /// Bounds the container starts in flight (see [`start_slots`]).
    start_slots: Arc<Semaphore>,
}

/// How many containers may be starting at once. Each start is a few short-lived runc processes
/// that spend much of their time waiting on the kernel, so some overlap pays; a thousand at once
/// would only thrash. Measured on 2 cores (100 replicas): 32 at once 3.5 s, unbounded 3.8-4.4 s,
/// 4 at once 5.3 s.
fn start_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 16
}

impl<R: ContainerRuntime, I: Images> Executor<R, I> {
    pub fn new(runtime: Arc<R>, images: Arc<I>, volumes: PathBuf, statuses: StatusQueue) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Executor {
            runtime,
            images,
            volumes,
            statuses,
            assigned: BTreeMap::new(),
            local: HashMap::new(),
            synced: false,
            tx,
            rx,
            start_slots: Arc::new(Semaphore::new(start_slots())),
        }
    }

    /// Re-adopts the runtime's containers, then follows the inputs until they end.
    pub async fn run(mut self, mut inputs: mpsc::Receiver<Input>) {
        self.adopt().await;
        tracing::debug!(containers = self.local.len(), "executor ready");
        loop {
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(input) => self.apply(input),
                    None => break,
                },
                Some(event) = self.rx.recv() => self.on_event(event),
            }
            if self.synced {
                for action in decide(&self.assigned, &self.phases()) {
                    self.act(action);
                }
            }
        }
    }

    fn phases(&self) -> HashMap<String, Phase> {
        self.local
            .iter()
            .map(|(k, v)| (k.clone(), v.phase.clone()))
            .collect()
    }

    /// Keeps the containers a previous agent process started (their ids are task ids).
    async fn adopt(&mut self) {
        let list = match self.runtime.list().await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers to re-adopt");
                return;
            }
        };
        for info in list {
            tracing::info!(container = %info.id, status = ?info.status, "re-adopting container");
            self.local
                .insert(info.id.clone(), Local::new(Phase::Running));
            self.watch(info.id);
        }
    }

    fn apply(&mut self, input: Input) {
        let (assignments, removed) = match input {
            Input::Full(a) => {
                self.assigned.clear();
                self.synced = true;
                (a, Vec::new())
            }
            Input::Delta {
                assignments,
                removed,
            } => (assignments, removed),
        };
        tracing::debug!(
            full = !self.synced || removed.is_empty() && assignments.is_empty(),
            n = assignments.len(),
            removed = removed.len(),
            "assignments"
        );
        for a in assignments {
            if let Some(id) = a.task.as_ref().map(|t| t.id.clone()) {
                self.assigned.insert(id, a);
            }
        }
        for id in removed {
            self.assigned.remove(&id);
        }
    }

    fn wants_run(&self, id: &str) -> bool {
        self.assigned
            .get(id)
            .and_then(|a| a.task.as_ref())
            .is_some_and(|t| wants_run(&t.desired_state))
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Prepared { id, spec } => {
                let mut local = Local::new(Phase::Finished);
                if let Some(prepared) = spec {
                    let (spec, signal) = *prepared;
                    self.statuses.push(status(&id, "ready", "prepared"));
                    local = Local {
                        phase: Phase::Ready,
                        signal,
                        prepared: Some(spec),
                    };
                }
                self.local.insert(id, local);
            }
            Event::Started { id, ok } => {
                self.set_phase(&id, if ok { Phase::Running } else { Phase::Finished });
            }
            Event::Exited { id, exit } => {
                let stopping = match self.local.get(&id).map(|l| &l.phase) {
                    Some(Phase::Running) => false,
                    Some(Phase::Stopping) => true,
                    _ => return,
                };
                let mut st = match &exit {
                    Ok(exit) => exit_status(&id, &id, exit),
                    Err(e) => {
                        let mut s = status(&id, "failed", "lost track of the container");
                        s.error = e.clone();
                        s
                    }
                };
                if stopping || !self.wants_run(&id) {
                    st.state = "shutdown".into();
                    st.message = "shutdown".into();
                    st.error.clear();
                }
                self.statuses.push(st);
                self.set_phase(&id, Phase::Finished);
            }
            Event::Stopped { id } => {
                if self
                    .local
                    .get(&id)
                    .is_some_and(|l| l.phase == Phase::Stopping)
                {
                    self.statuses.push(status(&id, "shutdown", "shutdown"));
                    self.set_phase(&id, Phase::Finished);
                }
            }
            Event::Removed { id } => {
                self.local.remove(&id);
            }
        }
    }

    fn set_phase(&mut self, id: &str, phase: Phase) {
        if let Some(l) = self.local.get_mut(id) {
            l.phase = phase;
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Prepare(id) => self.prepare(id),
            Action::Run(id) => self.run_prepared(id),
            Action::Discard(id) => {
                self.statuses.push(status(&id, "shutdown", "shutdown"));
                self.local.insert(id.clone(), Local::new(Phase::Finished));
                let images = self.images.clone();
                tokio::spawn(async move { images.release(&id).await });
            }
            Action::Stop(id) => {
                let signal = self
                    .local
                    .get(&id)
                    .map_or(DEFAULT_STOP_SIGNAL, |l| l.signal);
                let grace = self
                    .assigned
                    .get(&id)
                    .and_then(|a| a.spec.as_ref())
                    .and_then(|s| s.stop_grace_period_ms)
                    .map_or(DEFAULT_STOP_GRACE, std::time::Duration::from_millis);
                self.set_phase(&id, Phase::Stopping);
                let (runtime, tx) = (self.runtime.clone(), self.tx.clone());
                tokio::spawn(async move {
                    if let Err(e) = runtime.stop(&id, signal, grace).await {
                        tracing::warn!(task = %id, error = %e, "cannot stop container");
                    }
                    let _ = tx.send(Event::Stopped { id });
                });
            }
            Action::ReportShutdown(id) => {
                self.statuses.push(status(&id, "shutdown", "shutdown"));
                self.local.insert(id, Local::new(Phase::Finished));
            }
            Action::ReportLost(id) => {
                let mut st = status(&id, "failed", "container lost");
                st.error = "the task's container does not exist on the node".into();
                self.statuses.push(st);
                self.local.insert(id, Local::new(Phase::Finished));
            }
            Action::Remove(id) => {
                let Some(local) = self.local.get_mut(&id) else {
                    return;
                };
                let running = local.phase == Phase::Running;
                let signal = local.signal;
                local.phase = Phase::Removing;
                let (runtime, images, tx) =
                    (self.runtime.clone(), self.images.clone(), self.tx.clone());
                tokio::spawn(async move {
                    if running {
                        let _ = runtime.stop(&id, signal, DEFAULT_STOP_GRACE).await;
                    }
                    if let Err(e) = runtime.remove(&id).await {
                        tracing::debug!(task = %id, error = %e, "removing container");
                    }
                    images.release(&id).await;
                    let _ = tx.send(Event::Removed { id });
                });
            }
        }
    }

    fn prepare(&mut self, id: String) {
        let Some(a) = self.assigned.get(&id) else {
            return;
        };
        let spec = a.spec.clone().unwrap_or_default();
        self.local.insert(id.clone(), Local::new(Phase::Preparing));
        self.statuses.push(status(&id, "preparing", "preparing"));
        let (images, tx) = (self.images.clone(), self.tx.clone());
        let (statuses, volumes) = (self.statuses.clone(), self.volumes.clone());
        tokio::spawn(async move {
            let prepared = match images.prepare(&spec.image, &id).await {
                Ok(p) => p,
                Err(e) => {
                    let mut st = status(&id, "rejected", "preparing failed");
                    st.error = e;
                    statuses.push(st);
                    let _ = tx.send(Event::Prepared { id, spec: None });
                    return;
                }
            };
            let cspec = container_spec(&id, &prepared.rootfs, &spec, &prepared.config, &volumes);
            for m in &cspec.mounts {
                if let MountSpec::Volume { source, .. } = m
                    && let Err(e) = std::fs::create_dir_all(source)
                {
                    tracing::warn!(task = %id, error = %e, "cannot create volume directory");
                }
            }
            let (signal, _) = stop_params(&spec, &prepared.config);
            let _ = tx.send(Event::Prepared {
                id,
                spec: Some(Box::new((cspec, signal))),
            });
        });
    }

    fn run_prepared(&mut self, id: String) {
        let Some(local) = self.local.get_mut(&id) else {
            return;
        };
        let Some(cspec) = local.prepared.take() else {
            return;
        };
        local.phase = Phase::Starting;
        self.statuses.push(status(&id, "starting", "starting"));
        let (runtime, images, tx) = (self.runtime.clone(), self.images.clone(), self.tx.clone());
        let (statuses, slots) = (self.statuses.clone(), self.start_slots.clone());
        tokio::spawn(async move {
            let slot = slots.acquire_owned().await;
            let started = runtime.run(&cspec).await;
            drop(slot);
            match started {
                Ok(info) => {
                    let mut st = status(&id, "running", "started");
                    st.container_id = info.id;
                    statuses.push(st);
                    let _ = tx.send(Event::Started {
                        id: id.clone(),
                        ok: true,
                    });
                    let exit = runtime.wait(&id).await.map_err(|e| e.to_string());
                    let _ = tx.send(Event::Exited { id, exit });
                }
                Err(e) => {
                    images.release(&id).await;
                    let mut st = status(&id, "failed", "starting container failed");
                    st.error = e.to_string();
                    statuses.push(st);
                    let _ = tx.send(Event::Started { id, ok: false });
                }
            }
        });
    }

    fn watch(&self, id: String) {
        let (runtime, tx) = (self.runtime.clone(), self.tx.clone());
        tokio::spawn(async move {
            let exit = runtime.wait(&id).await.map_err(|e| e.to_string());
            let _ = tx.send(Event::Exited { id, exit });
        });
    }
}

//! The executor: runs the containers of the tasks assigned to the node and reports their states.
//! Decisions come from [`plan::decide`](super::plan::decide); this module carries them out.
//!
//! It also collects unused images ([`Images::collect`]): every [`ImageGcOptions::interval`], and
//! [`ImageGcOptions::after_removal`] after the last of a burst of container removals. A
//! collection keeps the images of the assigned tasks and of the containers still on the node
//! ([`plan::keep_images`](super::plan::keep_images)), and never overlaps a prepare: prepares hold
//! the executor's image lock shared, a collection holds it exclusively and only ever tries to
//! take it (a collection waits for prepares, never the other way round).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::v1::{Assignment, TaskAddress, TaskStatus};
use tokio::sync::{Notify, RwLock, Semaphore, mpsc};
use tokio::time::Instant;

use super::container::{container_spec, exit_status, status, stop_params, wants_run};
use super::health::{self, Probes};
use super::plan::{Action, ImageUse, Keep, Phase, decide, keep_images};
use crate::image::{GcStats, ImageConfig, ImageRef, ImageStore, Rootfs, digest_hex, mount_rootfs};
use crate::network::Overlay;
use crate::runtime::{
    ContainerRuntime, ContainerSpec, DEFAULT_STOP_GRACE, DEFAULT_STOP_SIGNAL, ExitInfo, MountSpec,
    Signal,
};

/// An image ready for one task: its config and the mounted root filesystem.
pub struct Prepared {
    /// The pinned reference (`...@sha256:...`) the rootfs was made from.
    pub image: String,
    pub config: ImageConfig,
    pub rootfs: PathBuf,
}

/// What an image collection freed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// The removed images, by the reference they were last pulled as.
    pub images: Vec<String>,
    pub stats: GcStats,
}

/// When the executor collects unused images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageGcOptions {
    /// Between two collections (default 5 minutes).
    pub interval: Duration,
    /// From the last of a burst of container removals to a collection (default 10 s).
    pub after_removal: Duration,
}

impl Default for ImageGcOptions {
    fn default() -> Self {
        ImageGcOptions {
            interval: Duration::from_secs(300),
            after_removal: Duration::from_secs(10),
        }
    }
}

/// How soon a collection that found a prepare under way tries again: `after_removal`, within
/// these bounds.
/// How long a running task on overlay networks keeps serving after it is told to stop, before
/// its stop signal (Swarm waits 2 s for its gossip). The managers stop routing to a task the
/// moment it is to shut down, and every host applies that within milliseconds; the pause lets
/// the hosts catch up and requests in flight finish, so a rolling update drops no request.
pub const ENDPOINT_DRAIN: Duration = Duration::from_secs(1);

const GC_RETRY: Duration = Duration::from_secs(1);
const GC_RETRY_MIN: Duration = Duration::from_millis(10);

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
    /// Removes the images `keep` does not need; the executor calls it with no prepare under way.
    /// `Ok(None)`: nothing collected, as the image of one of `keep.containers` is unknown.
    fn collect(
        &self,
        keep: &Keep,
    ) -> impl Future<Output = Result<Option<Collected>, String>> + Send;
    /// Where tasks' secrets and configs are written (see [`super::files`]).
    fn files(&self) -> Option<Arc<super::files::TaskFiles>> {
        None
    }
}

/// The file in a task's container dir naming the pinned image its rootfs was made from.
const IMAGE_RECORD: &str = "image";

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
            // Recorded before mounting: a later agent process knows what to keep for it.
            write_image_record(&dir, &image.reference)
                .map_err(|e| format!("recording the image of the rootfs: {e}"))?;
            let rootfs = mount_rootfs(&image, &dir).map_err(|e| e.to_string())?;
            Ok(Prepared {
                image: image.reference,
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

    async fn collect(&self, keep: &Keep) -> Result<Option<Collected>, String> {
        let (root, containers, keep) = (
            self.store.root().to_path_buf(),
            self.containers.clone(),
            keep.clone(),
        );
        let plan = tokio::task::spawn_blocking(move || plan_collection(&root, &containers, &keep))
            .await
            .map_err(|e| format!("image collection task: {e}"))??;
        let Some(plan) = plan else {
            return Ok(None);
        };
        let stats = self.store.gc(&plan.keep).await.map_err(|e| e.to_string())?;
        Ok(Some(Collected {
            images: plan.removed,
            stats,
        }))
    }
}

fn write_image_record(dir: &Path, reference: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{IMAGE_RECORD}.tmp"));
    std::fs::write(&tmp, reference)?;
    std::fs::rename(&tmp, dir.join(IMAGE_RECORD))
}

/// What an image collection of the store keeps and removes.
struct CollectionPlan {
    /// Digests of the images kept.
    keep: Vec<String>,
    /// References of the recorded images that go.
    removed: Vec<String>,
}

/// What an image collection keeps and removes; `None` when a container's image cannot be told
/// (nothing is collected then). Blocking.
///
/// A pinned reference keeps its digest; a tag keeps every image the store recorded it was
/// pulled as (`images/<hex>` holds the pinned reference last pulled); a container of
/// `keep.containers` keeps the image its rootfs records.
fn plan_collection(
    store_root: &Path,
    containers: &Path,
    keep: &Keep,
) -> Result<Option<CollectionPlan>, String> {
    let dir = store_root.join("images");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
    // (digest, reference recorded for it)
    let mut records: Vec<(String, String)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let reference = std::fs::read_to_string(entry.path()).unwrap_or_default();
        records.push((format!("sha256:{name}"), reference.trim().to_string()));
    }
    let mut digests: BTreeSet<String> = BTreeSet::new();
    for reference in &keep.references {
        match ImageRef::parse(reference) {
            Ok(r) if r.digest.is_some() => digests.extend(r.digest),
            Ok(tag) => digests.extend(
                records
                    .iter()
                    .filter(|(_, recorded)| {
                        ImageRef::parse(recorded)
                            .is_ok_and(|p| ImageRef { digest: None, ..p } == tag)
                    })
                    .map(|(d, _)| d.clone()),
            ),
            // Never pulled (the store parses the same way); keep what it might pin anyway.
            Err(_) => digests.extend(reference.rsplit_once('@').map(|(_, d)| d.to_string())),
        }
    }
    for task in &keep.containers {
        let dir = containers.join(task);
        let recorded = std::fs::read_to_string(dir.join(IMAGE_RECORD));
        let digest = recorded.as_ref().ok().and_then(|r| {
            let d = r.trim().rsplit_once('@')?.1;
            digest_hex(d).map(|_| d.to_string())
        });
        match digest {
            Some(d) => {
                digests.insert(d);
            }
            // No container dir: no rootfs made from this store.
            None if !dir.exists() => {}
            None => {
                tracing::info!(
                    task = %task,
                    "image collection postponed: the image of a container from an earlier agent is unknown"
                );
                return Ok(None);
            }
        }
    }
    let removed = records
        .into_iter()
        .filter(|(d, _)| !digests.contains(d))
        .map(|(_, r)| r)
        .collect();
    Ok(Some(CollectionPlan {
        keep: digests.into_iter().collect(),
        removed,
    }))
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
    /// Image, rootfs and network attachments are ready (`None`: preparing failed, reported).
    Prepared {
        id: String,
        spec: Option<Box<PreparedTask>>,
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
    /// An image collection ended (it held the image lock until then).
    Collected {
        result: Result<Option<Collected>, String>,
    },
}

/// What a prepare hands back.
struct PreparedTask {
    spec: ContainerSpec,
    signal: Signal,
    /// The pinned image of its rootfs.
    image: String,
    /// Its addresses on its overlay networks.
    addresses: Vec<TaskAddress>,
}

struct Local {
    phase: Phase,
    signal: Signal,
    /// Set while [`Phase::Ready`].
    prepared: Option<ContainerSpec>,
    /// The image of the task's rootfs, kept by image collections until the entry goes.
    image: ImageUse,
    /// Its overlay addresses, repeated in the RUNNING report.
    addresses: Vec<TaskAddress>,
}

impl Local {
    fn new(phase: Phase) -> Local {
        Local {
            phase,
            signal: DEFAULT_STOP_SIGNAL,
            prepared: None,
            image: ImageUse::None,
            addresses: Vec::new(),
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
    /// Prepares hold it shared, image collections exclusively.
    image_lock: Arc<RwLock<()>>,
    gc: ImageGcOptions,
    /// The next periodic collection (or retry).
    gc_at: Instant,
    /// A collection after removals (debounced).
    gc_soon: Option<Instant>,
    gc_running: bool,
    /// Overlay networking (`None`: tasks with networks are rejected).
    overlay: Option<Arc<Overlay>>,
    /// Health check probers of the running containers (see [`health`]).
    probes: Probes,
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
            image_lock: Arc::new(RwLock::new(())),
            gc: ImageGcOptions::default(),
            gc_at: Instant::now() + ImageGcOptions::default().interval,
            gc_soon: None,
            gc_running: false,
            overlay: None,
            probes: Probes::default(),
        }
    }

    /// Attaches containers to their overlay networks through `overlay`.
    pub fn with_overlay(mut self, overlay: Arc<Overlay>) -> Self {
        self.overlay = Some(overlay);
        self
    }

    /// When to collect unused images (default: [`ImageGcOptions::default`]).
    pub fn with_image_gc(mut self, gc: ImageGcOptions) -> Self {
        self.gc = gc;
        self.gc_at = Instant::now() + gc.interval;
        self
    }

    /// Re-adopts the runtime's containers, then follows the inputs until they end.
    pub async fn run(mut self, mut inputs: mpsc::Receiver<Input>) {
        self.adopt().await;
        if let Some(overlay) = &self.overlay {
            overlay.recover(&self.local.keys().cloned().collect()).await;
        }
        tracing::debug!(containers = self.local.len(), "executor ready");
        loop {
            let gc_at = self.gc_soon.map_or(self.gc_at, |t| t.min(self.gc_at));
            // Not before the first full assignment set: until then, what is needed is unknown.
            let gc_due = self.synced && !self.gc_running;
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(input) => self.apply(input),
                    None => break,
                },
                Some(event) = self.rx.recv() => self.on_event(event),
                () = tokio::time::sleep_until(gc_at), if gc_due => self.start_gc(),
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
            let mut local = Local::new(Phase::Running);
            local.image = ImageUse::Unknown;
            self.local.insert(info.id.clone(), local);
            self.probes.adopted(&info.id);
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
        // Health checks of re-adopted containers, once their specs are known.
        if self.synced {
            let (probes, statuses) = (&self.probes, &self.statuses);
            probes.resume(&self.assigned, DEFAULT_STOP_SIGNAL, &self.runtime, statuses);
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
                    let PreparedTask {
                        spec,
                        signal,
                        image,
                        addresses,
                    } = *prepared;
                    let mut st = status(&id, "ready", "prepared");
                    st.addresses = addresses.clone();
                    self.statuses.push(st);
                    local = Local {
                        phase: Phase::Ready,
                        signal,
                        prepared: Some(spec),
                        image: ImageUse::Known(image),
                        addresses,
                    };
                }
                self.local.insert(id, local);
            }
            Event::Started { id, ok } => {
                self.set_phase(&id, if ok { Phase::Running } else { Phase::Finished });
            }
            Event::Exited { id, exit } => {
                let unhealthy = self.probes.end(&id);
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
                if unhealthy {
                    health::unhealthy_exit(&mut st);
                }
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
                // Debounced: a burst of removals leads to one collection.
                self.gc_soon = Some(Instant::now() + self.gc.after_removal);
            }
            Event::Collected { result } => {
                self.gc_running = false;
                self.gc_at = Instant::now() + self.gc.interval;
                match result {
                    Ok(Some(c)) if c.stats != GcStats::default() => tracing::info!(
                        images = ?c.images,
                        images_removed = c.stats.images_removed,
                        layers_removed = c.stats.layers_removed,
                        blobs_removed = c.stats.blobs_removed,
                        "unused images collected"
                    ),
                    Ok(Some(_)) => tracing::debug!("image collection: nothing unused"),
                    Ok(None) => tracing::debug!("image collection postponed"),
                    Err(e) => tracing::warn!(error = %e, "image collection failed"),
                }
            }
        }
    }

    /// Starts an image collection unless a prepare is under way (then it tries again soon).
    fn start_gc(&mut self) {
        let now = Instant::now();
        let Ok(exclusive) = self.image_lock.clone().try_write_owned() else {
            self.gc_soon = None;
            self.gc_at = now + GC_RETRY.min(self.gc.after_removal).max(GC_RETRY_MIN);
            return;
        };
        // Prepares send their result before they let go of the lock: take in those that ended
        // before it was taken, so that their images are known.
        while let Ok(event) = self.rx.try_recv() {
            self.on_event(event);
        }
        self.gc_soon = None;
        let uses: HashMap<String, ImageUse> = self
            .local
            .iter()
            .map(|(id, l)| (id.clone(), l.image.clone()))
            .collect();
        let keep = keep_images(&self.assigned, &uses);
        tracing::debug!(?keep, "collecting unused images");
        self.gc_running = true;
        let (images, tx) = (self.images.clone(), self.tx.clone());
        tokio::spawn(async move {
            let result = images.collect(&keep).await;
            drop(exclusive);
            let _ = tx.send(Event::Collected { result });
        });
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
                // The rootfs stays until released: so does its image.
                let mut local = Local::new(Phase::Finished);
                if let Some(old) = self.local.remove(&id) {
                    local.image = old.image;
                }
                self.local.insert(id.clone(), local);
                let (images, overlay) = (self.images.clone(), self.overlay.clone());
                tokio::spawn(async move {
                    if let Some(overlay) = overlay {
                        overlay.detach(&id).await;
                    }
                    images.release(&id).await
                });
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
                let routed = self.local.get(&id).is_some_and(|l| l.phase == Phase::Running)
                    && self
                        .assigned
                        .get(&id)
                        .and_then(|a| a.spec.as_ref())
                        .is_some_and(|s| !s.networks.is_empty());
                self.set_phase(&id, Phase::Stopping);
                let (runtime, tx) = (self.runtime.clone(), self.tx.clone());
                tokio::spawn(async move {
                    if routed {
                        tokio::time::sleep(ENDPOINT_DRAIN).await;
                    }
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
                let overlay = self.overlay.clone();
                tokio::spawn(async move {
                    if running {
                        let _ = runtime.stop(&id, signal, DEFAULT_STOP_GRACE).await;
                    }
                    if let Err(e) = runtime.remove(&id).await {
                        tracing::debug!(task = %id, error = %e, "removing container");
                    }
                    if let Some(overlay) = overlay {
                        overlay.detach(&id).await;
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
        let lock = self.image_lock.clone();
        let overlay = self.overlay.clone();
        tokio::spawn(async move {
            // Held until the result is sent (see `start_gc`).
            let _shared = lock.read_owned().await;
            let began = std::time::Instant::now();
            let prepared = images.prepare(&spec.image, &id).await;
            tracing::debug!(task = %id, took = ?began.elapsed(), "prepared");
            let prepared = match prepared {
                Ok(p) => p,
                Err(e) => {
                    let mut st = status(&id, "rejected", "preparing failed");
                    st.error = e;
                    statuses.push(st);
                    let _ = tx.send(Event::Prepared { id, spec: None });
                    return;
                }
            };
            let mut cspec =
                container_spec(&id, &prepared.rootfs, &spec, &prepared.config, &volumes);
            if let Err(e) = super::files::mount_into(images.files(), &id, &spec, &mut cspec).await {
                images.release(&id).await;
                let mut st = status(&id, "rejected", "secrets and configs unavailable");
                st.error = e;
                statuses.push(st);
                let _ = tx.send(Event::Prepared { id, spec: None });
                return;
            }
            let attached = match &overlay {
                Some(overlay) => overlay.attach(&id, &spec).await,
                None if spec.networks.is_empty() => Ok(None),
                None => Err("overlay networking is not enabled on this node".to_string()),
            };
            let addresses = match attached {
                Ok(Some(attached)) => {
                    cspec.netns = Some(attached.netns);
                    cspec.mounts.push(MountSpec::Bind {
                        source: attached.resolv_conf,
                        target: "/etc/resolv.conf".into(),
                        readonly: false,
                    });
                    attached.addresses
                }
                Ok(None) => Vec::new(),
                Err(e) => {
                    images.release(&id).await;
                    let mut st = status(&id, "rejected", "network attachment failed");
                    st.error = e;
                    statuses.push(st);
                    let _ = tx.send(Event::Prepared { id, spec: None });
                    return;
                }
            };
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
                spec: Some(Box::new(PreparedTask {
                    spec: cspec,
                    signal,
                    image: prepared.image,
                    addresses,
                })),
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
        let addresses = local.addresses.clone();
        // Health check: probed from RUNNING until the container ends (see `health`).
        let probe = self.probes.probe(self.assigned.get(&id), local.signal);
        self.statuses.push(status(&id, "starting", "starting"));
        let (runtime, images, tx) = (self.runtime.clone(), self.images.clone(), self.tx.clone());
        let (statuses, slots) = (self.statuses.clone(), self.start_slots.clone());
        tokio::spawn(async move {
            let queued = std::time::Instant::now();
            let slot = slots.acquire_owned().await;
            let began = std::time::Instant::now();
            let started = runtime.run(&cspec).await;
            drop(slot);
            tracing::debug!(task = %id, waited = ?began - queued, took = ?began.elapsed(), "container started");
            match started {
                Ok(info) => {
                    let mut st = status(&id, "running", "started");
                    st.container_id = info.id;
                    st.addresses = addresses;
                    if let Some(probe) = probe {
                        probe.start(&runtime, &mut st, &statuses);
                    }
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

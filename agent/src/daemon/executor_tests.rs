//! Executor tests over the in-memory runtime and fake images.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::v1::{Assignment, ServiceSpec, Task, TaskStatus};
use sha2::Digest as _;
use tokio::sync::{Semaphore, mpsc};

use super::executor::{Collected, Executor, ImageGcOptions, Images, Input, Prepared, StatusQueue};
use super::plan::Keep;
use crate::image::ImageConfig;
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{ContainerRuntime, ContainerSpec, ExitInfo, Signal};

#[derive(Default)]
struct FakeImages {
    fail: Mutex<Option<String>>,
    released: Mutex<Vec<String>>,
    /// What each collection was asked to keep.
    collections: Mutex<Vec<Keep>>,
    /// While set, prepares (or releases) wait until it is opened (a permit added).
    prepare_gate: Mutex<Option<Arc<Semaphore>>>,
    release_gate: Mutex<Option<Arc<Semaphore>>>,
    /// Prepares under way, and whether a collection ever saw one.
    preparing: std::sync::atomic::AtomicUsize,
    overlapped: std::sync::atomic::AtomicBool,
}

/// What the fake resolves `reference` to: pinned to a digest made from its name.
fn fake_pin(reference: &str) -> String {
    if reference.contains('@') {
        return reference.to_string();
    }
    let hex = hex::encode(sha2::Sha256::digest(reference.as_bytes()));
    format!("{reference}@sha256:{hex}")
}

async fn pass(gate: &Mutex<Option<Arc<Semaphore>>>) {
    let gate = gate.lock().unwrap().clone();
    if let Some(g) = gate {
        let _ = g.acquire().await.unwrap();
    }
}

impl FakeImages {
    fn collections(&self) -> Vec<Keep> {
        self.collections.lock().unwrap().clone()
    }
}

impl Images for FakeImages {
    async fn prepare(&self, reference: &str, task_id: &str) -> Result<Prepared, String> {
        use std::sync::atomic::Ordering;
        self.preparing.fetch_add(1, Ordering::SeqCst);
        pass(&self.prepare_gate).await;
        self.preparing.fetch_sub(1, Ordering::SeqCst);
        if let Some(e) = self.fail.lock().unwrap().clone() {
            return Err(e);
        }
        let config = ImageConfig {
            env: vec!["PATH=/bin".into()],
            entrypoint: vec!["sh".into()],
            cmd: vec!["-i".into()],
            stop_signal: Some("SIGQUIT".into()),
            ..Default::default()
        };
        Ok(Prepared {
            image: fake_pin(reference),
            config,
            rootfs: PathBuf::from("/containers").join(task_id).join("rootfs"),
        })
    }
    async fn release(&self, task_id: &str) {
        pass(&self.release_gate).await;
        self.released.lock().unwrap().push(task_id.into());
    }
    async fn collect(&self, keep: &Keep) -> Result<Option<Collected>, String> {
        use std::sync::atomic::Ordering;
        if self.preparing.load(Ordering::SeqCst) > 0 {
            self.overlapped.store(true, Ordering::SeqCst);
        }
        self.collections.lock().unwrap().push(keep.clone());
        Ok(Some(Collected::default()))
    }
}

struct Harness {
    rt: FakeRuntime,
    images: Arc<FakeImages>,
    statuses: StatusQueue,
    seen: Vec<TaskStatus>,
    tx: mpsc::Sender<Input>,
}

impl Harness {
    fn start(rt: FakeRuntime) -> Harness {
        Self::with_images(rt, FakeImages::default(), ImageGcOptions::default())
    }

    fn with_images(rt: FakeRuntime, images: FakeImages, gc: ImageGcOptions) -> Harness {
        let images = Arc::new(images);
        let statuses = StatusQueue::default();
        let (tx, rx) = mpsc::channel(16);
        let ex = Executor::new(
            Arc::new(rt.clone()),
            images.clone(),
            "/volumes".into(),
            statuses.clone(),
        )
        .with_image_gc(gc);
        tokio::spawn(ex.run(rx));
        Harness {
            rt,
            images,
            statuses,
            seen: Vec::new(),
            tx,
        }
    }

    async fn send(&self, input: Input) {
        self.tx.send(input).await.unwrap();
    }

    /// Waits for a status of `task` in `state` and returns it.
    async fn wait_state(&mut self, task: &str, state: &str) -> TaskStatus {
        for _ in 0..500 {
            self.seen.extend(self.statuses.take());
            if let Some(s) = self
                .seen
                .iter()
                .find(|s| s.task_id == task && s.state == state)
            {
                return s.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no {state} for {task}; seen {:?}", self.states(task));
    }

    fn states(&self, task: &str) -> Vec<String> {
        self.seen
            .iter()
            .filter(|s| s.task_id == task)
            .map(|s| s.state.clone())
            .collect()
    }

    async fn wait_until(&self, what: &str, f: impl Fn() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }
}

fn assign(id: &str, desired: &str, state: &str) -> Assignment {
    let task = Task {
        id: id.into(),
        desired_state: desired.into(),
        state: state.into(),
        ..Default::default()
    };
    let spec = ServiceSpec {
        image: "busybox".into(),
        command: vec!["-c".into(), "sleep 1000".into()],
        env: vec!["A=1".into()],
        stop_grace_period_ms: Some(1000),
        ..Default::default()
    };
    Assignment {
        task: Some(task),
        spec: Some(spec),
    }
}

fn exit(code: i32, oom: bool) -> ExitInfo {
    ExitInfo {
        code: Some(code),
        signal: None,
        oom_killed: oom,
        finished_at: None,
    }
}

#[tokio::test]
async fn runs_a_task_and_reports_its_completion() {
    let mut h = Harness::start(FakeRuntime::new());
    h.send(Input::Full(vec![assign("t1", "running", "assigned")]))
        .await;
    let running = h.wait_state("t1", "running").await;
    assert_eq!(running.container_id, "t1");
    assert_eq!(
        h.states("t1"),
        ["preparing", "ready", "starting", "running"]
    );
    let runs: Vec<ContainerSpec> = h.rt.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].args, ["sh", "-c", "sleep 1000"]);
    assert_eq!(runs[0].env, ["PATH=/bin", "A=1"]);
    assert_eq!(runs[0].rootfs, PathBuf::from("/containers/t1/rootfs"));
    // The manager's view catches up: no second start.
    h.send(Input::Delta {
        assignments: vec![assign("t1", "running", "running")],
        removed: vec![],
    })
    .await;
    h.rt.exit("t1", exit(0, false));
    let done = h.wait_state("t1", "complete").await;
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(h.rt.runs().len(), 1);
}

#[tokio::test]
async fn failures_carry_exit_code_or_oom() {
    let mut h = Harness::start(FakeRuntime::new());
    h.send(Input::Full(vec![
        assign("a", "running", "assigned"),
        assign("b", "running", "assigned"),
    ]))
    .await;
    h.wait_state("a", "running").await;
    h.wait_state("b", "running").await;
    h.rt.exit("a", exit(3, false));
    h.rt.exit("b", exit(137, true));
    assert_eq!(h.wait_state("a", "failed").await.error, "exit code 3");
    assert_eq!(h.wait_state("b", "failed").await.error, "OOM killed");
}

#[tokio::test]
async fn image_errors_reject_the_task() {
    let mut h = Harness::start(FakeRuntime::new());
    *h.images.fail.lock().unwrap() = Some("image busybox: registry r: unreachable".into());
    h.send(Input::Full(vec![assign("t1", "running", "assigned")]))
        .await;
    let st = h.wait_state("t1", "rejected").await;
    assert_eq!(st.error, "image busybox: registry r: unreachable");
    assert!(h.rt.runs().is_empty());
}

#[tokio::test]
async fn run_errors_fail_the_task() {
    let mut h = Harness::start(FakeRuntime::new());
    h.rt.fail_runs(Some("runc exploded"));
    h.send(Input::Full(vec![assign("t1", "running", "assigned")]))
        .await;
    assert!(
        h.wait_state("t1", "failed")
            .await
            .error
            .contains("runc exploded")
    );
    h.wait_until("rootfs release", || {
        h.images
            .released
            .lock()
            .unwrap()
            .contains(&"t1".to_string())
    })
    .await;
}

#[tokio::test]
async fn desired_shutdown_stops_with_the_image_signal() {
    let mut h = Harness::start(FakeRuntime::new());
    h.send(Input::Full(vec![assign("t1", "running", "assigned")]))
        .await;
    h.wait_state("t1", "running").await;
    h.send(Input::Delta {
        assignments: vec![assign("t1", "shutdown", "running")],
        removed: vec![],
    })
    .await;
    h.wait_state("t1", "shutdown").await;
    assert_eq!(h.rt.stops(), [("t1".to_string(), Signal::SIGQUIT)]);
    // Never-started tasks beyond RUNNING are reported SHUTDOWN without a container.
    h.send(Input::Delta {
        assignments: vec![assign("t2", "shutdown", "assigned")],
        removed: vec![],
    })
    .await;
    h.wait_state("t2", "shutdown").await;
    assert_eq!(h.rt.runs().len(), 1);
}

#[tokio::test]
async fn removed_tasks_lose_their_containers() {
    let mut h = Harness::start(FakeRuntime::new());
    h.send(Input::Full(vec![
        assign("t1", "running", "assigned"),
        assign("t2", "running", "assigned"),
    ]))
    .await;
    h.wait_state("t1", "running").await;
    h.wait_state("t2", "running").await;
    h.send(Input::Delta {
        assignments: vec![],
        removed: vec!["t1".into()],
    })
    .await;
    let rt = h.rt.clone();
    h.wait_until("t1 removed", move || {
        futures::executor::block_on(rt.list())
            .unwrap()
            .iter()
            .all(|c| c.id != "t1")
    })
    .await;
    assert!(
        h.images
            .released
            .lock()
            .unwrap()
            .contains(&"t1".to_string())
    );
    assert_eq!(futures::executor::block_on(h.rt.list()).unwrap().len(), 1);
}

#[tokio::test]
async fn restarted_executor_readopts_containers() {
    let rt = FakeRuntime::new();
    let spec = ContainerSpec {
        id: "t1".into(),
        args: vec!["sh".into()],
        ..Default::default()
    };
    rt.run(&spec).await.unwrap();
    rt.run(&ContainerSpec {
        id: "old".into(),
        ..spec.clone()
    })
    .await
    .unwrap();
    let mut h = Harness::start(rt);
    // Nothing is removed before the first full assignment set.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(futures::executor::block_on(h.rt.list()).unwrap().len(), 2);
    h.send(Input::Full(vec![assign("t1", "running", "running")]))
        .await;
    let rt = h.rt.clone();
    h.wait_until("old removed", move || {
        futures::executor::block_on(rt.list()).unwrap().len() == 1
    })
    .await;
    assert_eq!(h.rt.runs().len(), 2, "t1 is kept, not started again");
    h.rt.exit("t1", exit(0, false));
    h.wait_state("t1", "complete").await;
    assert!(!h.states("t1").contains(&"failed".to_string()));
}

#[tokio::test]
async fn desired_ready_waits_for_running() {
    let mut h = Harness::start(FakeRuntime::new());
    h.send(Input::Full(vec![assign("t1", "ready", "assigned")]))
        .await;
    h.wait_state("t1", "ready").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(h.rt.runs().is_empty(), "READY only prepares");
    h.send(Input::Delta {
        assignments: vec![assign("t1", "running", "ready")],
        removed: vec![],
    })
    .await;
    h.wait_state("t1", "running").await;
    assert_eq!(h.rt.runs().len(), 1);
    // A prepared task that is shut down before it runs releases its rootfs.
    h.send(Input::Delta {
        assignments: vec![assign("t2", "ready", "assigned")],
        removed: vec![],
    })
    .await;
    h.wait_state("t2", "ready").await;
    h.send(Input::Delta {
        assignments: vec![assign("t2", "shutdown", "ready")],
        removed: vec![],
    })
    .await;
    h.wait_state("t2", "shutdown").await;
    h.wait_until("t2 released", || {
        h.images
            .released
            .lock()
            .unwrap()
            .contains(&"t2".to_string())
    })
    .await;
    assert_eq!(h.rt.runs().len(), 1);
}

fn with_image(mut a: Assignment, image: &str) -> Assignment {
    a.spec.as_mut().unwrap().image = image.into();
    a
}

fn pinned(name: &str) -> String {
    format!("{name}@sha256:{}", "a".repeat(64))
}

fn keep(references: &[&str], containers: &[&str]) -> Keep {
    let mut references: Vec<String> = references.iter().map(|r| r.to_string()).collect();
    references.sort();
    Keep {
        references,
        containers: containers.iter().map(|c| c.to_string()).collect(),
    }
}

#[tokio::test]
async fn image_collection_keeps_assigned_tasks_and_existing_containers() {
    let rt = FakeRuntime::new();
    // Found at start and not assigned: removed, but its release waits at the gate meanwhile.
    rt.run(&ContainerSpec {
        id: "old".into(),
        args: vec!["sh".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let images = FakeImages::default();
    let gate = Arc::new(Semaphore::new(0));
    *images.release_gate.lock().unwrap() = Some(gate.clone());
    let gc = ImageGcOptions {
        interval: Duration::from_millis(30),
        after_removal: Duration::from_millis(10),
    };
    let mut h = Harness::with_images(rt, images, gc);
    let a = pinned("reg/a:1");
    h.send(Input::Full(vec![
        with_image(assign("t1", "running", "assigned"), &a),
        // Unpinned (--no-resolve-image): the tag and what it was resolved to are kept.
        with_image(assign("t2", "running", "assigned"), "reg/b:1"),
        // Assigned, never run here.
        with_image(assign("t3", "shutdown", "shutdown"), "reg/c:1"),
        // Exits, and its container stays until the task is removed.
        with_image(assign("t4", "running", "assigned"), "reg/d:1"),
    ]))
    .await;
    for t in ["t1", "t2", "t4"] {
        h.wait_state(t, "running").await;
    }
    h.rt.exit("t4", exit(0, false));
    h.wait_state("t4", "complete").await;
    let (b, d) = (fake_pin("reg/b:1"), fake_pin("reg/d:1"));
    let all = keep(&[&a, "reg/b:1", &b, "reg/c:1", "reg/d:1", &d], &["old"]);
    h.wait_until("a collection keeping every image in use", || {
        h.images.collections().contains(&all)
    })
    .await;
    assert!(
        h.images
            .collections()
            .iter()
            .all(|k| k.containers == ["old"] && k.references.contains(&a)),
        "{:#?}",
        h.images.collections()
    );

    // t1 goes, "old" is released: their images are no longer kept.
    h.send(Input::Delta {
        assignments: vec![],
        removed: vec!["t1".into()],
    })
    .await;
    gate.add_permits(1);
    let rest = keep(&["reg/b:1", &b, "reg/c:1", "reg/d:1", &d], &[]);
    h.wait_until("a collection without t1 and old", || {
        h.images.collections().last() == Some(&rest)
    })
    .await;
    assert!(
        !h.images
            .overlapped
            .load(std::sync::atomic::Ordering::SeqCst)
    );
}

#[tokio::test]
async fn image_collection_follows_removals_debounced() {
    let gc = ImageGcOptions {
        interval: Duration::from_secs(3600),
        after_removal: Duration::from_millis(100),
    };
    let mut h = Harness::with_images(FakeRuntime::new(), FakeImages::default(), gc);
    let (a, b, c) = (pinned("reg/a:1"), pinned("reg/b:1"), pinned("reg/c:1"));
    h.send(Input::Full(vec![
        with_image(assign("t1", "running", "assigned"), &a),
        with_image(assign("t2", "running", "assigned"), &b),
        with_image(assign("t3", "running", "assigned"), &c),
    ]))
    .await;
    for t in ["t1", "t2", "t3"] {
        h.wait_state(t, "running").await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(h.images.collections().is_empty(), "nothing removed yet");
    h.send(Input::Delta {
        assignments: vec![],
        removed: vec!["t1".into(), "t2".into()],
    })
    .await;
    h.wait_until("a collection after the removals", || {
        !h.images.collections().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.images.collections(), [keep(&[&c], &[])], "one collection");
}

#[tokio::test]
async fn image_collection_never_overlaps_a_prepare() {
    let images = FakeImages::default();
    let gate = Arc::new(Semaphore::new(0));
    *images.prepare_gate.lock().unwrap() = Some(gate.clone());
    let gc = ImageGcOptions {
        interval: Duration::from_millis(20),
        after_removal: Duration::from_millis(20),
    };
    let mut h = Harness::with_images(FakeRuntime::new(), images, gc);
    h.send(Input::Full(vec![with_image(
        assign("t1", "running", "assigned"),
        "reg/a:1",
    )]))
    .await;
    h.wait_state("t1", "preparing").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        h.images.collections().is_empty(),
        "collected during a prepare"
    );
    gate.add_permits(1);
    h.wait_state("t1", "running").await;
    let pinned = fake_pin("reg/a:1");
    h.wait_until("a collection keeping the prepared image", || {
        h.images
            .collections()
            .iter()
            .any(|k| k.references.contains(&pinned))
    })
    .await;
    assert!(
        !h.images
            .overlapped
            .load(std::sync::atomic::Ordering::SeqCst)
    );
}

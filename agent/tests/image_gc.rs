//! Image collection by the executor over the real image store: a real docker-registry on
//! loopback, real overlayfs root filesystems, the in-memory container runtime.
//! Needs root and the docker-registry/busybox-static packages (fails under CI=true without).

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::daemon::executor::{Executor, ImageGcOptions, Images, Input, StatusQueue, StoreImages};
use agent::image::Rootfs;
use agent::runtime::fake::FakeRuntime;
use proto::v1::{Assignment, ServiceSpec, Task, TaskStatus};
use support::{E, Layer, Registry};

fn requirements(test: &str) -> bool {
    support::require(test, "root (overlayfs mounts)", support::is_root())
        && support::require_registry(test)
}

/// Unmounts every rootfs under the containers dir when the test ends, even on failure.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let _ = Rootfs::adopt(&e.path()).unmount();
        }
    }
}

fn assign(id: &str, image: &str) -> Assignment {
    with_state(id, image, "assigned")
}

fn assign_running(id: &str, image: &str) -> Assignment {
    with_state(id, image, "running")
}

fn with_state(id: &str, image: &str, state: &str) -> Assignment {
    Assignment {
        task: Some(Task {
            id: id.into(),
            desired_state: "running".into(),
            state: state.into(),
            ..Default::default()
        }),
        spec: Some(ServiceSpec {
            image: image.into(),
            command: vec!["sleep 1000".into()],
            ..Default::default()
        }),
    }
}

async fn wait_state(statuses: &StatusQueue, seen: &mut Vec<TaskStatus>, task: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        seen.extend(statuses.take());
        if seen.iter().any(|s| s.task_id == task && s.state == state) {
            return;
        }
        let view: Vec<_> = seen
            .iter()
            .filter(|s| s.task_id == task)
            .map(|s| (&s.state, &s.error))
            .collect();
        assert!(Instant::now() < deadline, "no {state} for {task}: {view:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

/// The config digest and layer diff_ids of image `digest` as the store holds it.
fn config_and_layers(store: &Path, digest: &str) -> (String, Vec<String>) {
    let blob = |d: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(store.join("blobs/sha256").join(hex(d))).unwrap())
            .unwrap()
    };
    let config = blob(digest)["config"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let layers = blob(&config)["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    (config, layers)
}

/// What is on disk for image `digest`: its record, manifest, config and layers.
fn on_disk(store: &Path, digest: &str, config: &str, layers: &[String]) -> Vec<PathBuf> {
    let mut paths = vec![
        store.join("images").join(hex(digest)),
        store.join("blobs/sha256").join(hex(digest)),
        store.join("blobs/sha256").join(hex(config)),
    ];
    paths.extend(layers.iter().map(|l| store.join("layers").join(hex(l))));
    paths.into_iter().filter(|p| p.exists()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_tasks_images_are_collected_and_used_ones_kept() {
    if !requirements("removed_tasks_images_are_collected_and_used_ones_kept") {
        return;
    }
    let mut reg = Registry::start();
    let kept = support::push_busybox(&reg.addr, "test/keep:1").await;
    let layer = Layer::gz(
        support::tar(&[E::Dir("data/"), E::File("data/dropped", b"dropped", 0o644)]),
        false,
    );
    let config = support::config_json(std::slice::from_ref(&layer.diff_id), &[], &["/x"], &[]);
    let dropped = support::push_image(
        &reg.addr,
        "test/drop:1",
        std::slice::from_ref(&layer),
        &config,
        false,
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let (store_root, containers) = (dir.path().join("images"), dir.path().join("containers"));
    let _unmount = Unmount(containers.clone());
    let images = Arc::new(StoreImages {
        store: support::store(&store_root, &reg.addr),
        containers: containers.clone(),
    });
    let statuses = StatusQueue::default();
    let runtime = Arc::new(FakeRuntime::new());
    let executor = Executor::new(
        runtime.clone(),
        images.clone(),
        dir.path().join("volumes"),
        statuses.clone(),
    )
    .with_image_gc(ImageGcOptions {
        interval: Duration::from_secs(3600),
        after_removal: Duration::from_millis(100),
    });
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let exec = tokio::spawn(executor.run(rx));

    // The kept image by tag (--no-resolve-image), the other pinned.
    let tag = format!("{}/test/keep:1", reg.addr);
    let drop_ref = format!("{}/test/drop:1@{dropped}", reg.addr);
    tx.send(Input::Full(vec![
        assign("t1", &tag),
        assign("t2", &drop_ref),
    ]))
    .await
    .unwrap();
    let mut seen = Vec::new();
    wait_state(&statuses, &mut seen, "t1", "running").await;
    wait_state(&statuses, &mut seen, "t2", "running").await;
    let (kept_config, kept_layers) = config_and_layers(&store_root, &kept);
    let (drop_config, drop_layers) = config_and_layers(&store_root, &dropped);
    assert_eq!(
        on_disk(&store_root, &kept, &kept_config, &kept_layers).len(),
        4
    );
    assert_eq!(
        on_disk(&store_root, &dropped, &drop_config, &drop_layers).len(),
        4
    );

    // t2 is removed: shortly after, its image goes.
    tx.send(Input::Delta {
        assignments: vec![],
        removed: vec!["t2".into()],
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = on_disk(&store_root, &dropped, &drop_config, &drop_layers);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not collected within 20s: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!containers.join("t2").exists());
    // The running task's image is all there, and its rootfs still works.
    assert_eq!(
        on_disk(&store_root, &kept, &kept_config, &kept_layers).len(),
        4
    );
    assert_eq!(
        std::fs::read(containers.join("t1/rootfs/bin/busybox")).unwrap(),
        std::fs::read(support::BUSYBOX).unwrap()
    );
    assert!(support::tree(&store_root.join("tmp")).is_empty());

    // The agent restarts: t1's container is found again, with a tag for image. A collection
    // (it clears tmp/, so a marker there tells when one ran) still keeps its image.
    drop(tx);
    exec.await.unwrap();
    let executor = Executor::new(
        runtime.clone(),
        images.clone(),
        dir.path().join("volumes"),
        statuses.clone(),
    )
    .with_image_gc(ImageGcOptions {
        interval: Duration::from_millis(100),
        after_removal: Duration::from_millis(100),
    });
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let exec = tokio::spawn(executor.run(rx));
    let marker = store_root.join("tmp/marker");
    std::fs::write(&marker, b"").unwrap();
    tx.send(Input::Full(vec![assign_running("t1", &tag)]))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while marker.exists() {
        assert!(Instant::now() < deadline, "no collection within 20s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        on_disk(&store_root, &kept, &kept_config, &kept_layers).len(),
        4
    );
    assert!(containers.join("t1/rootfs/bin/busybox").exists());
    assert_eq!(
        runtime.runs().len(),
        2,
        "t1 kept running, not started again"
    );

    // Without the registry, the kept image still prepares (by digest, all local); the
    // collected one cannot.
    reg.stop();
    let pinned = format!("{tag}@{kept}");
    let prepared = images.prepare(&pinned, "t3").await.unwrap();
    assert_eq!(prepared.image, pinned);
    assert!(prepared.rootfs.join("bin/busybox").exists());
    images.release("t3").await;
    let err = images.prepare(&drop_ref, "t4").await.err().unwrap();
    assert!(err.contains("connection refused"), "{err}");
    images.release("t4").await;

    drop(tx);
    exec.await.unwrap();
    images.release("t1").await;
}

//! Image store against a real docker-registry on 127.0.0.1 (random port, temp storage).
//! Requires the docker-registry and busybox-static packages (fails under CI=true without them).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use agent::image::{ImageError, RegistryClient, RegistryConfig, RegistryError};
use support::{E, Layer, Registry};

#[tokio::test]
async fn pull_unpack_pin_then_warm_offline() {
    if !support::require_registry("pull_unpack_pin_then_warm_offline") {
        return;
    }
    let mut reg = Registry::start();
    let pushed = support::push_busybox(&reg.addr, "test/busybox:1.0").await;
    let root = tempfile::tempdir().unwrap();
    let store = support::store(root.path(), &reg.addr);

    let tag = format!("{}/test/busybox:1.0", reg.addr);
    assert_eq!(store.resolve_digest(&tag).await.unwrap(), pushed);
    let pinned = store.pin(&tag).await.unwrap();
    assert_eq!(pinned, format!("{tag}@{pushed}"));

    let t = Instant::now();
    let img = store.ensure_image(&pinned).await.unwrap();
    let cold = t.elapsed();
    assert_eq!(img.digest, pushed);
    assert_eq!(img.manifest_digest, pushed);
    assert_eq!(img.reference, pinned);
    assert_eq!(img.config.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(img.config.cmd, ["echo hello"]);
    assert_eq!(img.config.env, ["PATH=/bin", "GREETING=hi"]);
    assert_eq!(img.config.workdir.as_deref(), Some("/tmp"));
    assert_eq!(img.config.user.as_deref(), Some("0:0"));
    assert_eq!(img.layer_dirs.len(), 1);
    let layer = &img.layer_dirs[0];
    assert!(layer.starts_with(root.path().join("layers")));
    let bb = layer.join("bin/busybox");
    assert_eq!(
        std::fs::read(&bb).unwrap(),
        std::fs::read(support::BUSYBOX).unwrap()
    );
    assert_eq!(
        std::fs::metadata(&bb).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    for a in support::APPLETS {
        assert_eq!(
            std::fs::read_link(layer.join("bin").join(a))
                .unwrap()
                .to_str(),
            Some("busybox")
        );
    }
    // Nothing left behind in tmp/, the layer blob is gone (the directory is the cache).
    assert!(support::tree(&root.path().join("tmp")).is_empty());

    // Warm, by digest: no network at all, even with the registry gone.
    reg.stop();
    let t = Instant::now();
    let again = store.ensure_image(&pinned).await.unwrap();
    let warm = t.elapsed();
    assert_eq!(again, img);
    eprintln!("busybox pull: cold {cold:?}, warm (registry stopped) {warm:?}");

    // A fresh store on the same root (e.g. a restarted agent) is warm too.
    let store2 = support::store(root.path(), &reg.addr);
    assert_eq!(store2.ensure_image(&pinned).await.unwrap(), img);

    // A tag must be resolved: with the registry gone, that is a clear connection error.
    let err = store.ensure_image(&tag).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ImageError::Registry(RegistryError::Registry { .. })),
        "{err:?}"
    );
    assert!(
        msg.contains(&tag) && msg.contains("connection refused"),
        "{msg}"
    );
}

#[tokio::test]
async fn missing_image_and_refused_connection_are_clear_errors() {
    if !support::require_registry("missing_image_and_refused_connection_are_clear_errors") {
        return;
    }
    let reg = Registry::start();
    support::push_busybox(&reg.addr, "test/present:1").await;
    let root = tempfile::tempdir().unwrap();
    let store = support::store(root.path(), &reg.addr);

    for missing in [
        format!("{}/test/nope:latest", reg.addr),
        format!("{}/test/present:nope", reg.addr),
    ] {
        let err = store.ensure_image(&missing).await.unwrap_err();
        let msg = err.to_string();
        eprintln!("missing: {msg}");
        assert!(msg.contains(&missing), "{msg}");
        assert!(
            msg.contains("not found")
                && (msg.contains("MANIFEST_UNKNOWN") || msg.contains("NAME_UNKNOWN")),
            "{msg}"
        );
        let err = store
            .resolve_digest(&missing)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&missing) && err.contains("not found"), "{err}");
    }

    let closed = format!("127.0.0.1:{}", support::free_port());
    let store = support::store(root.path(), &closed);
    let image = format!("{closed}/test/busybox:1");
    let msg = store.ensure_image(&image).await.unwrap_err().to_string();
    eprintln!("refused: {msg}");
    assert!(
        msg.contains(&image) && msg.contains("connection refused"),
        "{msg}"
    );

    // Not listed as insecure: https is used against a plain http registry and the error says so.
    let strict = RegistryClient::new(RegistryConfig::default()).unwrap();
    let image = format!("{}/test/present:1", reg.addr);
    let msg = strict
        .resolve_digest(&image.parse().unwrap())
        .await
        .unwrap_err()
        .to_string();
    eprintln!("https to http: {msg}");
    assert!(
        msg.contains(&image) && msg.contains("insecure_registries"),
        "{msg}"
    );

    let msg = store.ensure_image("Bad:Ref").await.unwrap_err().to_string();
    assert!(msg.contains("invalid image reference"), "{msg}");
}

#[tokio::test]
async fn corrupted_blob_is_refused_and_discarded() {
    if !support::require_registry("corrupted_blob_is_refused_and_discarded") {
        return;
    }
    let reg = Registry::start();
    let layer = Layer::gz(
        support::tar(&[E::File("hello", b"hello world", 0o644)]),
        false,
    );
    let config = support::config_json(std::slice::from_ref(&layer.diff_id), &[], &["/hello"], &[]);
    let layer_digest = support::sha256(&layer.blob);
    let digest = support::push_image(
        &reg.addr,
        "test/corrupt:1",
        std::slice::from_ref(&layer),
        &config,
        false,
    )
    .await;

    // Flip bytes of the stored layer, keeping its length.
    let data = reg.blob_data_path(&layer_digest);
    let mut bytes = std::fs::read(&data).unwrap();
    let n = bytes.len();
    bytes[n - 9] ^= 0xff;
    bytes[n / 2] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let root = tempfile::tempdir().unwrap();
    let store = support::store(root.path(), &reg.addr);
    let image = format!("{}/test/corrupt:1@{digest}", reg.addr);
    let err = store.ensure_image(&image).await.unwrap_err();
    eprintln!("corrupt: {err}");
    match &err {
        ImageError::Registry(RegistryError::DigestMismatch { expected, .. }) => {
            assert_eq!(*expected, layer_digest)
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("test/corrupt"), "{err}");
    let hex = layer_digest.strip_prefix("sha256:").unwrap();
    assert!(
        !root.path().join("blobs/sha256").join(hex).exists(),
        "corrupt blob was kept"
    );
    assert!(support::tree(&root.path().join("layers")).is_empty());
    assert!(support::tree(&root.path().join("tmp")).is_empty());
}

#[tokio::test]
async fn index_picks_linux_amd64_and_gc_removes_unused() {
    if !support::require_registry("index_picks_linux_amd64_and_gc_removes_unused") {
        return;
    }
    let reg = Registry::start();
    let bb = support::push_busybox(&reg.addr, "test/multi:amd64").await;
    let other = Layer::plain(support::tar(&[E::File("arm-only", b"arm", 0o644)]), true);
    let other_cfg = support::config_json(
        std::slice::from_ref(&other.diff_id),
        &[],
        &["/arm-only"],
        &[],
    );
    let arm = support::push_image(
        &reg.addr,
        "test/multi:arm64",
        std::slice::from_ref(&other),
        &other_cfg,
        true,
    )
    .await;
    let arm_size = support::manifest_size(&reg.addr, "test/multi", &arm).await;
    let bb_size = support::manifest_size(&reg.addr, "test/multi", &bb).await;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            { "mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": arm, "size": arm_size,
              "platform": { "os": "linux", "architecture": "arm64", "variant": "v8" } },
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": bb, "size": bb_size,
              "platform": { "os": "linux", "architecture": "amd64" } },
        ],
    }))
    .unwrap();
    let index_digest = support::push_manifest(
        &reg.addr,
        "test/multi:latest",
        &index,
        "application/vnd.oci.image.index.v1+json",
    )
    .await;

    let root = tempfile::tempdir().unwrap();
    let store = support::store(root.path(), &reg.addr);
    let tag = format!("{}/test/multi", reg.addr);
    assert_eq!(store.resolve_digest(&tag).await.unwrap(), index_digest);
    let img = store.ensure_image(&tag).await.unwrap();
    assert_eq!(
        (img.digest.as_str(), img.manifest_digest.as_str()),
        (index_digest.as_str(), bb.as_str())
    );
    assert!(img.layer_dirs[0].join("bin/busybox").exists());
    let arm_img = store.ensure_image(&format!("{tag}:arm64")).await.unwrap();
    assert!(arm_img.layer_dirs[0].join("arm-only").exists());

    // Keep the multi-arch image (by pinned reference): the arm64 image's layer and blobs go.
    let stats = store
        .gc(std::slice::from_ref(&img.reference))
        .await
        .unwrap();
    eprintln!("gc: {stats:?}");
    assert_eq!((stats.images_removed, stats.layers_removed), (1, 1));
    assert!(stats.blobs_removed >= 1);
    assert!(!arm_img.layer_dirs[0].exists());
    assert!(img.layer_dirs[0].join("bin/busybox").exists());
    // Still complete: warm by digest with nothing fetched.
    drop(reg);
    assert_eq!(store.ensure_image(&img.reference).await.unwrap(), img);
    // Keeping nothing empties the store.
    let stats = store.gc(&[]).await.unwrap();
    assert_eq!(stats.layers_removed, 1);
    for sub in ["blobs/sha256", "layers", "images", "tmp"] {
        assert!(
            support::tree(&root.path().join(sub)).is_empty(),
            "{sub} not empty"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pulls_of_one_image_agree() {
    if !support::require_registry("concurrent_pulls_of_one_image_agree") {
        return;
    }
    let reg = Registry::start();
    let digest = support::push_busybox(&reg.addr, "test/busybox:c").await;
    let root = tempfile::tempdir().unwrap();
    // Two stores on one root stand in for two processes; each also pulls twice at once.
    let a = std::sync::Arc::new(support::store(root.path(), &reg.addr));
    let b = std::sync::Arc::new(support::store(root.path(), &reg.addr));
    let image = format!("{}/test/busybox:c@{digest}", reg.addr);
    let mut tasks = Vec::new();
    for s in [&a, &b, &a, &b] {
        let (s, image) = (s.clone(), image.clone());
        tasks.push(tokio::spawn(async move { s.ensure_image(&image).await }));
    }
    let mut images = Vec::new();
    for t in tasks {
        images.push(t.await.unwrap().unwrap());
    }
    assert!(images.windows(2).all(|w| w[0] == w[1]));
    let bb = images[0].layer_dirs[0].join("bin/busybox");
    assert_eq!(
        std::fs::read(bb).unwrap(),
        std::fs::read(support::BUSYBOX).unwrap()
    );
    assert_eq!(
        support::tree(&root.path().join("layers"))
            .iter()
            .filter(|p| !p.contains('/'))
            .count(),
        1
    );
    assert!(support::tree(&root.path().join("tmp")).is_empty());
}

//! Overlayfs root filesystems over pulled images: whiteouts and opaque directories honoured.
//! Needs root and the docker-registry/busybox-static packages (fails under CI=true without).

mod support;

use agent::image::rootfs::is_mounted;
use agent::image::{Rootfs, mount_rootfs};
use support::{E, Layer, Registry};

fn requirements(test: &str) -> bool {
    support::require(test, "root (overlayfs mounts, mknod)", support::is_root())
        && support::require_registry(test)
}

#[tokio::test]
async fn whiteouts_and_opaque_dirs_in_the_mounted_rootfs() {
    if !requirements("whiteouts_and_opaque_dirs_in_the_mounted_rootfs") {
        return;
    }
    let reg = Registry::start();
    let lower = Layer::gz(
        support::tar(&[
            E::Dir("etc/"),
            E::File("etc/keep", b"keep", 0o644),
            E::File("etc/gone", b"gone", 0o644),
            E::Dir("dir/"),
            E::File("dir/a", b"a", 0o644),
            E::Dir("dir/sub/"),
            E::File("dir/sub/b", b"b", 0o644),
            E::Dir("data/"),
            E::File("data/file", b"shared", 0o600),
            E::Hardlink("data/link", "data/file"),
        ]),
        true,
    );
    // The upper layer is a plain (uncompressed) tar.
    let upper = Layer::plain(
        support::tar(&[
            E::Dir("etc/"),
            E::File("etc/.wh.gone", b"", 0o644),
            E::Dir("dir/"),
            E::File("dir/.wh..wh..opq", b"", 0o644),
            E::File("dir/new", b"new", 0o644),
        ]),
        true,
    );
    let config = support::config_json(
        &[lower.diff_id.clone(), upper.diff_id.clone()],
        &[],
        &["/bin/sh"],
        &["PATH=/bin"],
    );
    let digest =
        support::push_image(&reg.addr, "test/whiteout:1", &[lower, upper], &config, true).await;

    let root = tempfile::tempdir().unwrap();
    let store = support::store(&root.path().join("images"), &reg.addr);
    let img = store
        .ensure_image(&format!("{}/test/whiteout:1@{digest}", reg.addr))
        .await
        .unwrap();
    assert_eq!(img.layer_dirs.len(), 2);

    let container = root.path().join("containers/c1");
    let mut rootfs = mount_rootfs(&img, &container).unwrap();
    let r = rootfs.path().to_path_buf();
    assert!(is_mounted(&r));
    assert_eq!(std::fs::read(r.join("etc/keep")).unwrap(), b"keep");
    assert!(
        !r.join("etc/gone").exists(),
        "whited-out file still visible"
    );
    assert_eq!(support::tree(&r.join("etc")), ["keep"]);
    assert_eq!(
        support::tree(&r.join("dir")),
        ["new"],
        "opaque dir shows lower content"
    );
    assert_eq!(std::fs::read(r.join("data/link")).unwrap(), b"shared");

    // Writes go to the container's upper dir, never to the shared layers.
    std::fs::write(r.join("etc/keep"), b"changed").unwrap();
    std::fs::remove_file(r.join("data/file")).unwrap();
    assert_eq!(
        std::fs::read(img.layer_dirs[0].join("etc/keep")).unwrap(),
        b"keep"
    );
    assert!(img.layer_dirs[0].join("data/file").exists());
    assert_eq!(
        std::fs::read(rootfs.upper_dir().join("etc/keep")).unwrap(),
        b"changed"
    );

    // A second container on the same layers is independent.
    let other = mount_rootfs(&img, &root.path().join("containers/c2")).unwrap();
    assert_eq!(
        std::fs::read(other.path().join("etc/keep")).unwrap(),
        b"keep"
    );
    assert!(
        mount_rootfs(&img, &root.path().join("containers/c2")).is_err(),
        "double mount accepted"
    );
    let other_path = other.path().to_path_buf();
    drop(other);
    assert!(!is_mounted(&other_path), "drop did not unmount");

    // Adopt (as a restarted agent would), keep mounted, then unmount explicitly.
    let kept = mount_rootfs(&img, &root.path().join("containers/c3"))
        .unwrap()
        .keep_mounted();
    assert!(is_mounted(&kept));
    let mut adopted = Rootfs::adopt(&root.path().join("containers/c3"));
    assert!(adopted.is_mounted());
    adopted.unmount().unwrap();
    assert!(!is_mounted(&kept));

    rootfs.unmount().unwrap();
    rootfs.unmount().unwrap();
    assert!(!is_mounted(&r));
}

#[tokio::test]
async fn busybox_rootfs_runs_busybox_via_chroot() {
    if !requirements("busybox_rootfs_runs_busybox_via_chroot") {
        return;
    }
    let reg = Registry::start();
    let digest = support::push_busybox(&reg.addr, "test/busybox:run").await;
    let root = tempfile::tempdir().unwrap();
    let store = support::store(&root.path().join("images"), &reg.addr);
    let img = store
        .ensure_image(&format!("{}/test/busybox:run@{digest}", reg.addr))
        .await
        .unwrap();
    let rootfs = mount_rootfs(&img, &root.path().join("c")).unwrap();
    let out = std::process::Command::new("chroot")
        .arg(rootfs.path())
        .args(["/bin/sh", "-c", "echo hello from busybox; id -u"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello from busybox\n0"
    );
}

#[tokio::test]
async fn many_layers_exceeding_one_page_of_mount_options() {
    if !requirements("many_layers_exceeding_one_page_of_mount_options") {
        return;
    }
    let reg = Registry::start();
    const N: usize = 48;
    let mut layers: Vec<Layer> = (0..N)
        .map(|i| {
            Layer::gz(
                support::tar(&[E::File(&format!("f{i}"), format!("{i}").as_bytes(), 0o644)]),
                i % 2 == 0,
            )
        })
        .collect();
    layers.push(Layer::plain(
        support::tar(&[E::File(".wh.f0", b"", 0o644), E::File("f1", b"top", 0o644)]),
        false,
    ));
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let config = support::config_json(&diff_ids, &[], &["/f1"], &[]);
    let digest = support::push_image(&reg.addr, "test/many:1", &layers, &config, false).await;

    let root = tempfile::tempdir().unwrap();
    let store = support::store(&root.path().join("images"), &reg.addr);
    let img = store
        .ensure_image(&format!("{}/test/many:1@{digest}", reg.addr))
        .await
        .unwrap();
    assert_eq!(img.layer_dirs.len(), N + 1);
    let options_len: usize = img.layer_dirs.iter().map(|d| d.as_os_str().len() + 1).sum();
    assert!(
        options_len > 4096,
        "test needs more layers ({options_len} bytes)"
    );
    let rootfs = mount_rootfs(&img, &root.path().join("c")).unwrap();
    let r = rootfs.path();
    assert!(!r.join("f0").exists());
    assert_eq!(std::fs::read(r.join("f1")).unwrap(), b"top");
    assert_eq!(
        std::fs::read(r.join(format!("f{}", N - 1))).unwrap(),
        format!("{}", N - 1).as_bytes()
    );
    assert_eq!(support::tree(r).len(), N - 1);
}

//! Image digest pinning at `service create` / `service update`, against a real docker-registry
//! on loopback and an in-process manager; the missing-image case also runs the agent (joined
//! with a worker token) to see its task REJECTED with the registry's error.
//! Without docker-registry or /bin/busybox (and root and runc for the agent) the tests skip, or
//! fail when CI=true.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use agent::daemon::{self, JoinOptions, RunOptions};
use manager::api::dispatcher::DispatcherTiming;
use manager::daemon::{Placement, RunningManager, StartOptions};
use manager::raft::RaftTuning;
use proto::v1::control_client::ControlClient;
use proto::v1::{
    CreateServiceRequest, GetJoinTokenRequest, GetServiceRequest, ListTasksRequest, Service,
    ServiceMode, ServiceSpec, Task, UpdateNodeRequest, UpdateServiceRequest,
};
use tonic::transport::Channel;

/// An in-process one-manager cluster that reaches `insecure` over plain http.
async fn start_manager(
    dir: &Path,
    insecure: Vec<String>,
) -> (RunningManager, String, ControlClient<Channel>) {
    identity::install_crypto_provider();
    let addr = format!("127.0.0.1:{}", support::free_port());
    let options = StartOptions {
        data_dir: dir.join("manager"),
        tuning: RaftTuning::default(),
        quorum_timeout: Duration::from_secs(5),
        dispatcher: DispatcherTiming::default(),
        insecure_registries: insecure,
    };
    let placement = Placement {
        listen_addr: addr.clone(),
        advertise_addr: None,
        hostname: Some("m1".into()),
    };
    let running = manager::daemon::init(&options, &placement).await.unwrap();
    let admin = identity::AdminConfig::load(&dir.join("manager/admin.json")).unwrap();
    let control = ControlClient::new(identity::connect(&addr, &admin.credentials).await.unwrap());
    (running, addr, control)
}

fn spec(name: &str, image: &str, replicas: u64) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        image: image.into(),
        command: vec!["sleep 1000".into()],
        mode: Some(ServiceMode {
            kind: "replicated".into(),
            replicas: Some(replicas),
            max_concurrent: 0,
        }),
        ..Default::default()
    }
}

async fn create(
    control: &mut ControlClient<Channel>,
    spec: ServiceSpec,
    no_resolve: bool,
) -> Service {
    control
        .create_service(CreateServiceRequest {
            spec: Some(spec),
            no_resolve_image: no_resolve,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn get(control: &mut ControlClient<Channel>, name: &str) -> Service {
    control
        .get_service(GetServiceRequest {
            reference: name.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn image_of(service: &Service) -> String {
    service.spec.as_ref().unwrap().image.clone()
}

/// The image the manager's own store holds for service `name`.
fn stored_image(manager: &RunningManager, name: &str) -> String {
    let store = manager.consensus.state.read();
    let service = store.services.values().find(|s| s.name == name).unwrap();
    service.spec.image.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn create_pins_the_digest_and_scale_keeps_it() {
    if !support::require_registry("create_pins_the_digest_and_scale_keeps_it") {
        return;
    }
    let registry = support::Registry::start();
    let digest = support::push_busybox(&registry.addr, "test/busybox:1.0").await;
    let dir = tempfile::tempdir().unwrap();
    let (manager, _addr, mut control) =
        start_manager(dir.path(), vec![registry.addr.clone()]).await;

    // A tag is resolved and pinned, keeping the user's spelling.
    let tag = format!("{}/test/busybox:1.0", registry.addr);
    let pinned = format!("{tag}@{digest}");
    let web = create(&mut control, spec("web", &tag, 1), false).await;
    assert!(web.warnings.is_empty(), "{:?}", web.warnings);
    assert_eq!(image_of(&web), pinned);
    assert_eq!(stored_image(&manager, "web"), pinned);
    // No tag: `:latest` is what was resolved, and what is recorded.
    support::push_busybox(&registry.addr, "test/busybox:latest").await;
    let bare = format!("{}/test/busybox", registry.addr);
    let latest = create(&mut control, spec("latest", &bare, 1), false).await;
    assert_eq!(image_of(&latest), format!("{bare}:latest@{digest}"));

    // A scale sends the pinned spec back: kept as it is, even with the registry gone.
    let mut registry = registry;
    registry.stop();
    let current = get(&mut control, "web").await;
    let mut scaled = current.spec.clone().unwrap();
    scaled.mode.as_mut().unwrap().replicas = Some(3);
    let updated = control
        .update_service(UpdateServiceRequest {
            reference: "web".into(),
            version: current.version,
            spec: Some(scaled),
            force: false,
            no_resolve_image: false,
            rollback: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(updated.warnings.is_empty(), "{:?}", updated.warnings);
    assert_eq!(updated.desired, 3);
    assert_eq!(stored_image(&manager, "web"), pinned);

    // An image given with a digest is left alone (no registry needed).
    let by_digest = create(&mut control, spec("by-digest", &pinned, 1), false).await;
    assert!(by_digest.warnings.is_empty(), "{:?}", by_digest.warnings);
    assert_eq!(image_of(&by_digest), pinned);

    // --no-resolve-image: the tag as given, no warning.
    let unpinned = create(&mut control, spec("unpinned", &tag, 1), true).await;
    assert!(unpinned.warnings.is_empty(), "{:?}", unpinned.warnings);
    assert_eq!(stored_image(&manager, "unpinned"), tag);

    // Changing the image with the registry gone: updated unpinned, with the warning.
    let current = get(&mut control, "web").await;
    let mut changed = current.spec.clone().unwrap();
    changed.image = format!("{}/test/busybox:2.0", registry.addr);
    let updated = control
        .update_service(UpdateServiceRequest {
            reference: "web".into(),
            version: current.version,
            spec: Some(changed.clone()),
            force: false,
            no_resolve_image: false,
            rollback: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(image_of(&updated), changed.image);
    let [warning] = updated.warnings.as_slice() else {
        panic!("one warning expected: {:?}", updated.warnings)
    };
    assert!(
        warning.starts_with(&format!(
            "image {} could not be accessed on a registry to record its digest: registry {}: ",
            changed.image, registry.addr
        )) && warning.contains("connection refused")
            && warning.ends_with(
                "possibly leading to different nodes running different versions of the image."
            ),
        "{warning}"
    );
    // Warnings belong to the answer of the call, not to the service.
    assert!(get(&mut control, "web").await.warnings.is_empty());
}

/// Kills and deletes the agent's containers and unmounts their root filesystems (also on panic).
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let root = self.0.join("runtime/runc");
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let _ = std::process::Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &id])
                .output();
        }
        for e in std::fs::read_dir(self.0.join("containers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = nix::mount::umount2(&e.path().join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_image_warns_and_the_agent_rejects_the_task() {
    let test = "missing_image_warns_and_the_agent_rejects_the_task";
    if !support::require(test, "root", support::is_root())
        || !support::require(
            test,
            "runc",
            agent::runtime::runc_available(Path::new("runc")),
        )
        || !support::require_registry(test)
    {
        return;
    }
    let registry = support::Registry::start();
    support::push_busybox(&registry.addr, "test/present:1").await;
    let dir = tempfile::tempdir().unwrap();
    let (_manager, addr, mut control) =
        start_manager(dir.path(), vec![registry.addr.clone()]).await;

    // Created anyway, unpinned, with the registry's reason in the warning.
    let missing = format!("{}/test/nope:1", registry.addr);
    let service = create(&mut control, spec("web", &missing, 1), false).await;
    assert_eq!(image_of(&service), missing);
    let [warning] = service.warnings.as_slice() else {
        panic!("one warning expected: {:?}", service.warnings)
    };
    assert!(
        warning.starts_with(&format!(
            "image {missing} could not be accessed on a registry to record its digest"
        )) && warning.contains("not found")
            && (warning.contains("MANIFEST_UNKNOWN") || warning.contains("NAME_UNKNOWN")),
        "{warning}"
    );

    // An agent tries to pull it: the task is REJECTED with the registry's error.
    let token = control
        .get_join_token(GetJoinTokenRequest {
            role: "worker".into(),
            rotate: false,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let data = dir.path().join("agent");
    let _cleanup = Cleanup(data.clone());
    daemon::join(&JoinOptions {
        token,
        join_addr: addr.clone(),
        data_dir: data.clone(),
        advertise_addr: Some("127.0.0.1".into()),
        hostname: Some("w1".into()),
        insecure_registries: vec![registry.addr.clone()],
    })
    .await
    .unwrap();
    let agent = tokio::spawn(async move { daemon::run(&data, &RunOptions::default()).await });
    control
        .update_node(UpdateNodeRequest {
            reference: "m1".into(),
            availability: "drain".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let rejected: Task = loop {
        let tasks = control
            .list_tasks(ListTasksRequest {
                filters: [("service".into(), "web".into())].into(),
            })
            .await
            .unwrap()
            .into_inner()
            .tasks;
        if let Some(t) = tasks.iter().find(|t| t.state == "rejected") {
            break t.clone();
        }
        let view: Vec<_> = tasks.iter().map(|t| (&t.state, &t.err)).collect();
        assert!(
            Instant::now() < deadline,
            "no task REJECTED within 60s: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        rejected.err.contains(&missing)
            && rejected.err.contains("not found")
            && (rejected.err.contains("MANIFEST_UNKNOWN") || rejected.err.contains("NAME_UNKNOWN")),
        "{rejected:?}"
    );
    // Rejections do not cost the node its session: it stays READY.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let node = control
        .get_node(proto::v1::GetNodeRequest {
            reference: "w1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node.state, "ready", "{node:?}");
    agent.abort();
}

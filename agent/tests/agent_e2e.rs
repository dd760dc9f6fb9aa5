//! End to end: an in-process manager, a real registry with the busybox test image, and the agent
//! (joined with a worker token) running a 2-replica service's containers in runc.
//! Without root, runc, docker-registry or /bin/busybox it skips (or fails when CI=true).

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::daemon::{self, JoinOptions, RunOptions};
use manager::api::dispatcher::DispatcherTiming;
use manager::daemon::{Placement, StartOptions};
use manager::raft::RaftTuning;
use proto::v1::control_client::ControlClient;
use proto::v1::{
    CreateServiceRequest, GetJoinTokenRequest, ListTasksRequest, LogMessage, Mount, RestartPolicy,
    ServiceLogsRequest, ServiceMode, ServiceSpec, Task, UpdateNodeRequest,
};
use tonic::transport::Channel;

/// Kills and deletes the agent's containers and unmounts their root filesystems (also on panic).
struct Cleanup {
    data: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let root = self.data.join("runtime/runc");
        let runc = |args: &[&str]| {
            std::process::Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(args)
                .output()
        };
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let state = runc(&["state", &id])
                .ok()
                .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok());
            let pid = state.and_then(|s| s["pid"].as_i64()).filter(|p| *p > 0);
            let _ = runc(&["kill", &id, "KILL"]);
            if let Some(pid) = pid {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                for _ in 0..50 {
                    match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                        Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        _ => break,
                    }
                }
            }
            let _ = runc(&["delete", "--force", &id]);
        }
        for e in std::fs::read_dir(self.data.join("containers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = nix::mount::umount2(&e.path().join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn usable(test: &str) -> bool {
    support::require(test, "root", support::is_root())
        && support::require(
            test,
            "runc",
            agent::runtime::runc_available(Path::new("runc")),
        )
        && support::require_registry(test)
}

async fn tasks(control: &mut ControlClient<Channel>) -> Vec<Task> {
    let req = ListTasksRequest {
        filters: [("service".into(), "web".into())].into(),
    };
    control.list_tasks(req).await.unwrap().into_inner().tasks
}

async fn wait_tasks(
    control: &mut ControlClient<Channel>,
    what: &str,
    check: impl Fn(&[Task]) -> bool,
) -> Vec<Task> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ts = tasks(control).await;
        if check(&ts) {
            return ts;
        }
        let view: Vec<_> = ts
            .iter()
            .map(|t| (&t.id, &t.desired_state, &t.state, &t.err))
            .collect();
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {view:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn running(ts: &[Task]) -> Vec<&Task> {
    ts.iter()
        .filter(|t| t.desired_state == "running" && t.state == "running")
        .collect()
}

fn runc_running(data: &Path) -> Vec<String> {
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(data.join("runtime/runc"))
        .args(["list", "--format", "json"])
        .output()
        .unwrap();
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    list.iter()
        .filter(|c| c["status"] == "running")
        .filter_map(|c| c["id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_runs_a_service_and_replaces_killed_tasks() {
    if !usable("agent_runs_a_service_and_replaces_killed_tasks") {
        return;
    }
    identity::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let registry = support::Registry::start();
    support::push_busybox(&registry.addr, "busybox:latest").await;

    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", support::free_port());
    let options = StartOptions {
        data_dir: dir.path().join("manager"),
        tuning: RaftTuning::default(),
        quorum_timeout: Duration::from_secs(5),
        dispatcher: DispatcherTiming::default(),
        // The manager pins the service's image: the agent pulls it by digest.
        insecure_registries: vec![registry.addr.clone()],
    };
    let placement = Placement {
        listen_addr: addr.clone(),
        advertise_addr: None,
        hostname: Some("m1".into()),
    };
    let _manager = manager::daemon::init(&options, &placement).await.unwrap();
    let admin = identity::AdminConfig::load(&dir.path().join("manager/admin.json")).unwrap();
    let mut control =
        ControlClient::new(identity::connect(&addr, &admin.credentials).await.unwrap());

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
    let _cleanup = Cleanup { data: data.clone() };
    let join = JoinOptions {
        token,
        join_addr: addr.clone(),
        data_dir: data.clone(),
        advertise_addr: Some("127.0.0.1".into()),
        hostname: Some("w1".into()),
        insecure_registries: vec![registry.addr.clone()],
    };
    daemon::join(&join).await.unwrap();
    let agent = {
        let data = data.clone();
        tokio::spawn(async move { daemon::run(&data, &RunOptions::default()).await })
    };

    // Only the agent's node takes tasks.
    let drain = UpdateNodeRequest {
        reference: "m1".into(),
        availability: "drain".into(),
        ..Default::default()
    };
    control.update_node(drain).await.unwrap();
    let spec = ServiceSpec {
        name: "web".into(),
        image: format!("{}/busybox:latest", registry.addr),
        command: vec!["sleep 1000".into()],
        mode: Some(ServiceMode {
            kind: "replicated".into(),
            replicas: Some(2),
            max_concurrent: 0,
        }),
        restart: Some(RestartPolicy {
            condition: "any".into(),
            delay_ms: Some(100),
            ..Default::default()
        }),
        stop_grace_period_ms: Some(1000),
        ..Default::default()
    };
    let created = control
        .create_service(CreateServiceRequest {
            spec: Some(spec),
            no_resolve_image: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(created.warnings.is_empty(), "{:?}", created.warnings);
    assert!(
        created.spec.unwrap().image.contains("@sha256:"),
        "the image is pinned"
    );

    let ts = wait_tasks(&mut control, "2 running tasks", |ts| running(ts).len() == 2).await;
    let ids: Vec<String> = running(&ts).iter().map(|t| t.id.clone()).collect();
    let mut in_runc = runc_running(&data);
    in_runc.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(
        in_runc, want,
        "runc runs one container per task, named by task id"
    );

    // Kill one container: its task fails and a replacement runs.
    let victim = ids[0].clone();
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(data.join("runtime/runc"))
        .args(["kill", &victim, "KILL"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "runc kill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_tasks(&mut control, "a replacement task", |ts| {
        let r = running(ts);
        r.len() == 2
            && r.iter().all(|t| t.id != victim)
            && ts.iter().any(|t| t.id == victim && t.state == "failed")
    })
    .await;
    agent.abort();
}

/// A manager (its own node drained) and a joined agent running in this process.
struct Lab {
    control: ControlClient<Channel>,
    data: PathBuf,
    agent: tokio::task::JoinHandle<anyhow::Result<()>>,
    _manager: manager::daemon::RunningManager,
}

async fn start_lab(dir: &Path, registry: &support::Registry) -> Lab {
    let addr = format!("127.0.0.1:{}", support::free_port());
    let options = StartOptions {
        data_dir: dir.join("manager"),
        tuning: RaftTuning::default(),
        quorum_timeout: Duration::from_secs(5),
        dispatcher: DispatcherTiming::default(),
        insecure_registries: vec![registry.addr.clone()],
    };
    let placement = Placement {
        listen_addr: addr.clone(),
        advertise_addr: None,
        hostname: Some("m1".into()),
    };
    let manager = manager::daemon::init(&options, &placement).await.unwrap();
    let admin = identity::AdminConfig::load(&dir.join("manager/admin.json")).unwrap();
    let mut control =
        ControlClient::new(identity::connect(&addr, &admin.credentials).await.unwrap());
    let token = control
        .get_join_token(GetJoinTokenRequest {
            role: "worker".into(),
            rotate: false,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let data = dir.join("agent");
    let join = JoinOptions {
        token,
        join_addr: addr.clone(),
        data_dir: data.clone(),
        advertise_addr: Some("127.0.0.1".into()),
        hostname: Some("w1".into()),
        insecure_registries: vec![registry.addr.clone()],
    };
    daemon::join(&join).await.unwrap();
    let agent = {
        let data = data.clone();
        tokio::spawn(async move { daemon::run(&data, &RunOptions::default()).await })
    };
    let drain = UpdateNodeRequest {
        reference: "m1".into(),
        availability: "drain".into(),
        ..Default::default()
    };
    control.update_node(drain).await.unwrap();
    Lab {
        control,
        data,
        agent,
        _manager: manager,
    }
}

/// Everything a non-follow `ServiceLogs` call returns, checking that the stream ends.
async fn read_logs(
    control: &mut ControlClient<Channel>,
    reference: &str,
    tail: Option<u64>,
) -> (Vec<LogMessage>, Vec<String>) {
    let request = ServiceLogsRequest {
        reference: reference.into(),
        follow: false,
        tail,
        since_unix_nanos: None,
    };
    let mut stream = control.service_logs(request).await.unwrap().into_inner();
    let (mut lines, mut warnings) = (Vec::new(), Vec::new());
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(batch) = stream.message().await.unwrap() {
            lines.extend(batch.messages);
            warnings.extend(batch.warnings);
        }
    })
    .await;
    assert!(ended.is_ok(), "a non-follow log stream ends by itself");
    (lines, warnings)
}

fn texts(lines: &[LogMessage]) -> Vec<(String, String)> {
    lines
        .iter()
        .map(|m| {
            (
                m.stream.clone(),
                String::from_utf8_lossy(&m.line).into_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn service_logs_tail_and_follow() {
    if !usable("service_logs_tail_and_follow") {
        return;
    }
    identity::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let registry = support::Registry::start();
    support::push_busybox(&registry.addr, "busybox:latest").await;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let mut lab = start_lab(dir.path(), &registry).await;
    let _cleanup = Cleanup {
        data: lab.data.clone(),
    };

    // Three lines on stdout, one on stderr, then one more once the test creates /shared/go.
    let script = "echo out 1; echo out 2; echo out 3; sleep 1; echo err 1 >&2; \
                  while [ ! -e /shared/go ]; do sleep 1; done; echo late; sleep 1000";
    let spec = ServiceSpec {
        name: "talker".into(),
        image: format!("{}/busybox:latest", registry.addr),
        command: vec![script.into()],
        mounts: vec![Mount {
            r#type: "bind".into(),
            source: shared.display().to_string(),
            target: "/shared".into(),
            readonly: true,
            tmpfs_size_bytes: 0,
        }],
        stop_grace_period_ms: Some(1000),
        ..Default::default()
    };
    control_create(&mut lab.control, spec).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let task = loop {
        let req = ListTasksRequest {
            filters: [("service".into(), "talker".into())].into(),
        };
        let ts = lab
            .control
            .list_tasks(req)
            .await
            .unwrap()
            .into_inner()
            .tasks;
        if let Some(t) = ts.iter().find(|t| t.state == "running") {
            break t.clone();
        }
        assert!(Instant::now() < deadline, "the task never ran: {ts:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // All lines, once the container has written them.
    let deadline = Instant::now() + Duration::from_secs(30);
    let all = loop {
        let (lines, warnings) = read_logs(&mut lab.control, "talker", None).await;
        assert!(warnings.is_empty(), "{warnings:?}");
        if lines.len() >= 4 {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "lines so far: {:?}",
            texts(&lines)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pair = |s: &str, l: &str| (s.to_string(), l.to_string());
    assert_eq!(
        texts(&all),
        [
            pair("stdout", "out 1"),
            pair("stdout", "out 2"),
            pair("stdout", "out 3"),
            pair("stderr", "err 1")
        ]
    );
    let first = &all[0];
    assert_eq!(first.task_id, task.id);
    assert_eq!(first.service_name, "talker");
    assert_eq!(first.slot, 1);
    assert_eq!(first.node_hostname, "w1");
    assert_eq!(first.node_id, task.node_id);
    assert!(first.timestamp_unix_nanos > 0);

    // The last two lines only; by task id prefix too.
    let (tail, _) = read_logs(&mut lab.control, "talker", Some(2)).await;
    assert_eq!(
        texts(&tail),
        [pair("stdout", "out 3"), pair("stderr", "err 1")]
    );
    let (by_task, _) = read_logs(&mut lab.control, &task.id[..10], Some(1)).await;
    assert_eq!(texts(&by_task), [pair("stderr", "err 1")]);
    let missing = lab
        .control
        .service_logs(ServiceLogsRequest {
            reference: "nothing-here".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // Follow from the end: only the line written afterwards arrives, and nothing ends the stream.
    let request = ServiceLogsRequest {
        reference: "talker".into(),
        follow: true,
        tail: Some(0),
        since_unix_nanos: None,
    };
    let mut follow = lab
        .control
        .service_logs(request)
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(shared.join("go"), b"").unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(15), follow.message())
        .await
        .expect("the new line arrives")
        .unwrap()
        .expect("the stream is open");
    assert!(batch.warnings.is_empty(), "{:?}", batch.warnings);
    assert_eq!(texts(&batch.messages), [pair("stdout", "late")]);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), follow.message())
            .await
            .is_err(),
        "a follower waits for more"
    );
    drop(follow);
    // The reader left: readers that come later still work (the agent's publisher moved on).
    let (again, _) = read_logs(&mut lab.control, "talker", Some(1)).await;
    assert_eq!(texts(&again), [pair("stdout", "late")]);
    lab.agent.abort();
}

async fn control_create(control: &mut ControlClient<Channel>, spec: ServiceSpec) {
    control
        .create_service(CreateServiceRequest {
            spec: Some(spec),
            ..Default::default()
        })
        .await
        .unwrap();
}

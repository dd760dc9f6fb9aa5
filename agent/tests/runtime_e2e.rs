//! End-to-end tests of the runc runtime: real runc, root, a busybox rootfs built per test.
//! Without root, runc or /bin/busybox they skip (printing why), or fail when CI=true.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use agent::runtime::{
    ContainerSpec, ContainerStatus, ExecOptions, Limits, LogEntry, MountSpec, Runtime,
    RuntimeConfig, RuntimeError, Signal, Stream,
};

const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "cat", "httpd", "head", "tail", "id", "pwd", "hostname", "grep",
    "touch", "ls", "true",
];

/// Skips (or fails under CI) when the host cannot run containers.
fn usable() -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root");
    }
    if !agent::runtime::runc_available(Path::new("runc")) {
        missing.push("runc (apt-get install runc)");
    }
    if !Path::new("/bin/busybox").exists() {
        missing.push("/bin/busybox (apt-get install busybox-static)");
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("runtime e2e tests need {}", missing.join(", "));
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("skipping: {msg}");
    false
}

/// A data dir, a busybox rootfs and a runtime; deletes every container it made on drop.
struct Fixture {
    dir: tempfile::TempDir,
    rt: Runtime,
}

impl Fixture {
    fn new() -> Option<Self> {
        if !usable() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "data", "scratch"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
        }
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
        let rt = Runtime::new(RuntimeConfig::new(dir.path().join("data"))).unwrap();
        Some(Fixture { dir, rt })
    }

    fn spec(&self, name: &str, script: &str) -> ContainerSpec {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ContainerSpec {
            id,
            rootfs: self.dir.path().join("rootfs"),
            args: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        }
    }

    fn runc_root(&self) -> PathBuf {
        self.dir.path().join("data/runc")
    }
}

impl Drop for Fixture {
    /// Kills and deletes every container left (also on panic). This process is the containers'
    /// subreaper, so it reaps the killed inits itself: runc would wait on the zombies otherwise.
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.runc_root()) else {
            return;
        };
        let runc = |args: &[&str]| {
            std::process::Command::new("runc")
                .arg("--root")
                .arg(self.runc_root())
                .args(args)
                .output()
        };
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let state = runc(&["state", &id])
                .ok()
                .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok());
            let pid = state.and_then(|s| s["pid"].as_i64()).filter(|p| *p > 0);
            let _ = runc(&["kill", &id, "KILL"]);
            if let Some(pid) = pid {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                let flags = Some(nix::sys::wait::WaitPidFlag::WNOHANG);
                for _ in 0..50 {
                    match nix::sys::wait::waitpid(pid, flags) {
                        Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        _ => break,
                    }
                }
            }
            let _ = runc(&["delete", "--force", &id]);
        }
    }
}

async fn all_logs(rt: &Runtime, id: &str) -> Vec<LogEntry> {
    let mut rx = rt.logs(id, None, false).await.unwrap();
    let mut out = Vec::new();
    while let Some(e) = rx.recv().await {
        out.push(e.unwrap());
    }
    out
}

fn lines(entries: &[LogEntry], stream: Stream) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.stream == stream)
        .map(|e| e.line.clone())
        .collect()
}

/// Follows the log until a line equal to `want` appears.
async fn wait_for_line(rt: &Runtime, id: &str, want: &str) {
    let mut rx = rt.logs(id, None, true).await.unwrap();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = rx.recv().await {
            if e.unwrap().line == want {
                return true;
            }
        }
        false
    });
    assert!(found.await.unwrap_or(false), "{id} never logged {want:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_logs_both_streams_and_exit_code() {
    let Some(f) = Fixture::new() else { return };
    let mut spec = f.spec(
        "echo",
        "echo hello; echo err >&2; id -u; id -g; pwd; hostname; echo \"$FOO\"",
    );
    spec.user = Some("user".into());
    spec.workdir = Some("/tmp".into());
    spec.hostname = Some("box1".into());
    spec.env = vec!["FOO=bar baz".into()];
    let info = f.rt.run(&spec).await.unwrap();
    assert!(info.created.is_some());
    let exit = f.rt.wait(&spec.id).await.unwrap();
    assert_eq!(
        (exit.code, exit.signal, exit.oom_killed),
        (Some(0), None, false),
        "{exit:?}"
    );
    let logs = all_logs(&f.rt, &spec.id).await;
    assert_eq!(
        lines(&logs, Stream::Stdout),
        ["hello", "1000", "1000", "/tmp", "box1", "bar baz"]
    );
    assert_eq!(lines(&logs, Stream::Stderr), ["err"]);
    let mut tail = f.rt.logs(&spec.id, Some(1), true).await.unwrap();
    // Order across the two streams is the forwarding order (as with Docker): compare to the file.
    assert_eq!(tail.recv().await.unwrap().unwrap(), logs[logs.len() - 1]);
    assert!(
        tail.recv().await.is_none(),
        "follow of an exited container ends"
    );
    let st = f.rt.state(&spec.id).await.unwrap();
    assert_eq!(st.status, ContainerStatus::Stopped);
    f.rt.remove(&spec.id).await.unwrap();
    assert!(matches!(
        f.rt.state(&spec.id).await,
        Err(RuntimeError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_signal_is_handled() {
    let Some(f) = Fixture::new() else { return };
    let spec = f.spec(
        "term",
        "trap 'echo got-term; exit 3' TERM; echo ready; sleep 1000 & wait",
    );
    f.rt.run(&spec).await.unwrap();
    wait_for_line(&f.rt, &spec.id, "ready").await;
    let t = Instant::now();
    let exit =
        f.rt.stop(&spec.id, Signal::SIGTERM, Duration::from_secs(10))
            .await
            .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(exit.code, Some(3));
    assert!(
        lines(&all_logs(&f.rt, &spec.id).await, Stream::Stdout).contains(&"got-term".to_string())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ignored_stop_signal_is_followed_by_sigkill_after_grace() {
    let Some(f) = Fixture::new() else { return };
    let spec = f.spec("ignore", "trap '' TERM; echo ready; sleep 1000 & wait");
    f.rt.run(&spec).await.unwrap();
    wait_for_line(&f.rt, &spec.id, "ready").await;
    let grace = Duration::from_millis(1500);
    let t = Instant::now();
    let exit = f.rt.stop(&spec.id, Signal::SIGTERM, grace).await.unwrap();
    let took = t.elapsed();
    eprintln!("stop with ignored SIGTERM took {took:?} (grace {grace:?})");
    assert!(
        took >= grace && took < grace + Duration::from_secs(2),
        "took {took:?}"
    );
    assert_eq!(
        (exit.code, exit.signal, exit.oom_killed),
        (Some(137), Some(9), false)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_limit_oom_kill_is_detected() {
    let Some(f) = Fixture::new() else { return };
    let mut spec = f.spec("oom", "head -c 100m /dev/zero | tail");
    spec.limits = Limits {
        memory_bytes: Some(16 << 20),
        nano_cpus: Some(500_000_000),
        pids: Some(50),
    };
    f.rt.run(&spec).await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(30), f.rt.wait(&spec.id))
        .await
        .unwrap()
        .unwrap();
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(exit.code, Some(137));
    assert_eq!(exit.describe(), "OOM killed");
    let mut small = f.spec("oom-small", "true");
    small.limits.memory_bytes = Some(1 << 20);
    let err = f.rt.run(&small).await.unwrap_err();
    assert!(
        err.to_string().contains("below the minimum of 4 MiB"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bind_and_tmpfs_mounts_are_visible() {
    let Some(f) = Fixture::new() else { return };
    let host = f.dir.path().join("host-data");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("hello.txt"), "from-host\n").unwrap();
    let mut spec = f.spec(
        "mounts",
        "cat /data/hello.txt; touch /data/new 2>/dev/null || echo data-ro; \
         grep ' /scratch ' /proc/mounts | grep -q tmpfs && echo scratch-tmpfs; \
         echo written > /scratch/f && cat /scratch/f; touch /rootfile 2>/dev/null || echo root-ro",
    );
    spec.mounts = vec![
        MountSpec::Bind {
            source: host.clone(),
            target: "/data".into(),
            readonly: true,
        },
        MountSpec::Tmpfs {
            target: "/scratch".into(),
            size_bytes: Some(1 << 20),
        },
    ];
    spec.readonly_rootfs = true;
    f.rt.run(&spec).await.unwrap();
    assert_eq!(f.rt.wait(&spec.id).await.unwrap().code, Some(0));
    let out = lines(&all_logs(&f.rt, &spec.id).await, Stream::Stdout);
    assert_eq!(
        out,
        [
            "from-host",
            "data-ro",
            "scratch-tmpfs",
            "written",
            "root-ro"
        ]
    );
    assert!(!host.join("new").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn joins_an_existing_network_namespace() {
    let Some(f) = Fixture::new() else { return };
    let holder = f.spec("netns-holder", "sleep 1000");
    let pid = f.rt.run(&holder).await.unwrap().pid.unwrap();
    let ns_path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let host_view = std::fs::read_link(&ns_path).unwrap();
    let mut joiner = f.spec("netns-join", "ls -l /proc/self/ns/net");
    joiner.netns = Some(ns_path);
    f.rt.run(&joiner).await.unwrap();
    assert_eq!(f.rt.wait(&joiner.id).await.unwrap().code, Some(0));
    let out = lines(&all_logs(&f.rt, &joiner.id).await, Stream::Stdout).join("\n");
    assert!(
        out.ends_with(&*host_view.to_string_lossy()),
        "{out} vs {host_view:?}"
    );
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(own, host_view, "the holder got a new network namespace");
}

#[tokio::test(flavor = "multi_thread")]
async fn restarted_runtime_readopts_running_container() {
    let Some(f) = Fixture::new() else { return };
    let spec = f.spec(
        "adopt",
        "trap 'echo after-term; exit 5' TERM; echo before; sleep 1000 & wait",
    );
    let first = f.rt.run(&spec).await.unwrap();
    wait_for_line(&f.rt, &spec.id, "before").await;
    // The "agent" goes away (its watcher and log forwarding stop); the container keeps running.
    let mut f = f;
    f.rt = Runtime::new(RuntimeConfig::new(f.dir.path().join("data"))).unwrap();
    let list = f.rt.list().await.unwrap();
    let found = list
        .iter()
        .find(|c| c.id == spec.id)
        .expect("container listed");
    assert_eq!(found.status, ContainerStatus::Running);
    assert_eq!(found.created, first.created);
    assert_eq!(found.pid, first.pid);
    assert!(found.exit.is_none());
    let exit =
        f.rt.stop(&spec.id, Signal::SIGTERM, Duration::from_secs(5))
            .await
            .unwrap();
    // Same process, so still the init's (subreaper) parent: the code is known here.
    assert_eq!(exit.code, Some(5));
    let out = lines(&all_logs(&f.rt, &spec.id).await, Stream::Stdout);
    assert_eq!(out, ["before", "after-term"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_runs_inside_with_output_exit_code_and_timeout() {
    let Some(f) = Fixture::new() else { return };
    let spec = f.spec("exec", "echo inside > /tmp/marker; echo ready; sleep 1000");
    f.rt.run(&spec).await.unwrap();
    wait_for_line(&f.rt, &spec.id, "ready").await;
    let opts = ExecOptions {
        args: vec![
            "sh".into(),
            "-c".into(),
            "cat /tmp/marker; echo oops >&2; exit 4".into(),
        ],
        timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    };
    let out = f.rt.exec(&spec.id, &opts).await.unwrap();
    assert_eq!((out.exit_code, out.timed_out), (Some(4), false));
    assert_eq!(out.stdout, b"inside\n");
    assert_eq!(out.stderr, b"oops\n");
    let slow = ExecOptions {
        args: vec!["sleep".into(), "100".into()],
        timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    };
    let t = Instant::now();
    let out = f.rt.exec(&spec.id, &slow).await.unwrap();
    assert!(out.timed_out && out.exit_code.is_none());
    assert!(t.elapsed() < Duration::from_secs(5));
    // The timed-out `sleep 100` was killed inside the container: one live sleep (the init's) left.
    let script = "for s in /proc/[0-9]*/status; do grep -q '^Name:.sleep' $s && grep -q '^State:.[RS]' $s && echo live; done";
    let ps = ExecOptions {
        args: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    };
    let count_live = async |want: &str| {
        let mut live = String::new();
        for _ in 0..50 {
            live = String::from_utf8_lossy(&f.rt.exec(&spec.id, &ps).await.unwrap().stdout)
                .into_owned();
            if live == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(live, want);
    };
    count_live("live\n").await;
    assert!(matches!(
        f.rt.exec("no-such-container", &opts).await,
        Err(RuntimeError::NotFound(_))
    ));

    // A `runc exec` killed before its process orphans that process to us (the subreaper): it
    // must be reaped, or the container's init could never finish exiting.
    let mut orphaner = std::process::Command::new("runc")
        .arg("--root")
        .arg(f.runc_root())
        .args(["exec", &spec.id, "sleep", "100"])
        .spawn()
        .unwrap();
    count_live("live\nlive\n").await;
    orphaner.kill().unwrap();
    orphaner.wait().unwrap();
    let t = Instant::now();
    let exit =
        f.rt.stop(&spec.id, Signal::SIGTERM, Duration::from_millis(200))
            .await
            .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        t.elapsed()
    );
    assert_eq!(exit.code, Some(137));
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_create_leaves_nothing_and_duplicate_ids_are_refused() {
    let Some(f) = Fixture::new() else { return };
    let mut bad = f.spec("bad", "");
    bad.args = vec!["/no/such/binary".into()];
    let err = f.rt.run(&bad).await.unwrap_err();
    eprintln!("bad binary: {err}");
    assert!(f.rt.list().await.unwrap().iter().all(|c| c.id != bad.id));
    let spec = f.spec("dup", "sleep 1000");
    f.rt.run(&spec).await.unwrap();
    assert!(matches!(
        f.rt.run(&spec).await,
        Err(RuntimeError::AlreadyExists(_))
    ));
    f.rt.remove(&spec.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn create_to_running_latency() {
    let Some(f) = Fixture::new() else { return };
    let mut times = Vec::new();
    for _ in 0..20 {
        let spec = f.spec("lat", "sleep 1000");
        let t = Instant::now();
        let info = f.rt.run(&spec).await.unwrap();
        times.push(t.elapsed());
        assert_eq!(info.status, ContainerStatus::Running);
        f.rt.remove(&spec.id).await.unwrap();
    }
    times.sort();
    eprintln!(
        "create-to-running over 20 runs: p50 {:?}, p90 {:?}, max {:?}",
        times[10], times[18], times[19]
    );
    assert!(times[10] < Duration::from_secs(2));
}

//! Pure helpers of the executor: task state names, the container spec of a task, exit reports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::v1::{ServiceSpec, TaskStatus};

use crate::image::ImageConfig;
use crate::runtime::{
    ContainerSpec, DEFAULT_STOP_GRACE, DEFAULT_STOP_SIGNAL, ExitInfo, Limits, MountSpec, Signal,
    parse_signal,
};

/// Task states in their order (a state only moves forward).
pub const STATES: &[&str] = &[
    "new",
    "pending",
    "assigned",
    "accepted",
    "preparing",
    "ready",
    "starting",
    "running",
    "complete",
    "shutdown",
    "failed",
    "rejected",
    "remove",
    "orphaned",
];

/// The position of a state name in [`STATES`] (unknown names sort first).
pub fn rank(state: &str) -> usize {
    STATES.iter().position(|s| *s == state).unwrap_or(0)
}

/// Whether the task's observed state is final.
pub fn is_terminal(state: &str) -> bool {
    rank(state) >= rank("complete")
}

/// Whether a desired state asks the agent to run the task (services: RUNNING; jobs: up to
/// COMPLETE).
pub fn wants_run(desired: &str) -> bool {
    matches!(desired, "running" | "ready" | "complete")
}

/// A status update for `task_id`.
pub fn status(task_id: &str, state: &str, message: &str) -> TaskStatus {
    let timestamp_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    TaskStatus {
        task_id: task_id.to_string(),
        state: state.to_string(),
        message: message.to_string(),
        timestamp_ms,
        ..Default::default()
    }
}

/// What a container's exit means for its task: COMPLETE on 0, FAILED otherwise.
pub fn exit_status(task_id: &str, container_id: &str, exit: &ExitInfo) -> TaskStatus {
    let mut st = match (exit.oom_killed, exit.code) {
        (false, Some(0)) => status(task_id, "complete", "finished"),
        (true, _) => {
            let mut s = status(task_id, "failed", "task: non-zero exit");
            s.error = "OOM killed".into();
            s
        }
        (false, Some(code)) => {
            let mut s = status(task_id, "failed", "task: non-zero exit");
            s.error = format!("exit code {code}");
            s
        }
        (false, None) => {
            let mut s = status(task_id, "failed", "task: unknown exit");
            s.error = exit.describe();
            s
        }
    };
    st.exit_code = exit.code;
    st.container_id = container_id.to_string();
    st
}

/// Stop signal (spec's, image's or SIGTERM) and grace (spec's or 10 s).
pub fn stop_params(spec: &ServiceSpec, image: &ImageConfig) -> (Signal, Duration) {
    let signal = Some(spec.stop_signal.as_str())
        .filter(|s| !s.is_empty())
        .and_then(parse_signal)
        .or_else(|| image.stop_signal.as_deref().and_then(parse_signal))
        .unwrap_or(DEFAULT_STOP_SIGNAL);
    let grace = spec
        .stop_grace_period_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_STOP_GRACE);
    (signal, grace)
}

/// Where a named volume lives on the host.
pub fn volume_dir(volumes_root: &Path, name: &str) -> PathBuf {
    volumes_root.join(name).join("_data")
}

/// The container spec of a task: the service spec over the image's defaults. Docker's rule for
/// args: an overridden entrypoint drops the image's CMD.
pub fn container_spec(
    id: &str,
    rootfs: &Path,
    spec: &ServiceSpec,
    image: &ImageConfig,
    volumes_root: &Path,
) -> ContainerSpec {
    let mut args = if spec.entrypoint.is_empty() {
        image.entrypoint.clone()
    } else {
        spec.entrypoint.clone()
    };
    if !spec.command.is_empty() {
        args.extend(spec.command.iter().cloned());
    } else if spec.entrypoint.is_empty() {
        args.extend(image.cmd.iter().cloned());
    }
    let mut env: Vec<String> = Vec::new();
    for kv in image.env.iter().chain(spec.env.iter()) {
        let key = kv.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next().unwrap_or_default() != key);
        env.push(kv.clone());
    }
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let mounts = spec
        .mounts
        .iter()
        .map(|m| match m.r#type.as_str() {
            "bind" => MountSpec::Bind {
                source: m.source.clone().into(),
                target: m.target.clone().into(),
                readonly: m.readonly,
            },
            "tmpfs" => MountSpec::Tmpfs {
                target: m.target.clone().into(),
                size_bytes: (m.tmpfs_size_bytes > 0).then_some(m.tmpfs_size_bytes),
            },
            _ => MountSpec::Volume {
                source: volume_dir(volumes_root, &m.source),
                target: m.target.clone().into(),
                readonly: m.readonly,
            },
        })
        .collect();
    let lim = spec
        .resources
        .as_ref()
        .and_then(|r| r.limits)
        .unwrap_or_default();
    let some = |v: u64| (v > 0).then_some(v);
    ContainerSpec {
        id: id.to_string(),
        rootfs: rootfs.to_path_buf(),
        args,
        env,
        user: non_empty(&spec.user).or_else(|| image.user.clone().filter(|u| !u.is_empty())),
        workdir: non_empty(&spec.workdir)
            .or_else(|| image.workdir.clone().filter(|w| !w.is_empty()))
            .map(PathBuf::from),
        // Docker's default: the short container id (here the task id).
        hostname: non_empty(&spec.hostname).or_else(|| Some(id.chars().take(12).collect())),
        mounts,
        limits: Limits {
            memory_bytes: some(lim.memory_bytes),
            nano_cpus: some(lim.nano_cpus),
            pids: some(lim.pids),
        },
        netns: None,
        readonly_rootfs: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::{Mount, ResourceAmounts, Resources};

    fn image() -> ImageConfig {
        ImageConfig {
            env: vec!["PATH=/bin".into(), "A=1".into()],
            entrypoint: vec!["/init".into()],
            cmd: vec!["serve".into()],
            workdir: Some("/app".into()),
            user: Some("nobody".into()),
            stop_signal: Some("SIGQUIT".into()),
            labels: Default::default(),
        }
    }

    #[test]
    fn args_follow_dockers_rules() {
        let v = Path::new("/v");
        let mut spec = ServiceSpec::default();
        let c = container_spec("t1", Path::new("/r"), &spec, &image(), v);
        assert_eq!(c.args, ["/init", "serve"]);
        spec.command = vec!["run".into()];
        let c = container_spec("t1", Path::new("/r"), &spec, &image(), v);
        assert_eq!(c.args, ["/init", "run"]);
        spec.command.clear();
        spec.entrypoint = vec!["sleep".into()];
        let c = container_spec("t1", Path::new("/r"), &spec, &image(), v);
        assert_eq!(c.args, ["sleep"]);
    }

    #[test]
    fn env_user_workdir_mounts_limits() {
        let spec = ServiceSpec {
            env: vec!["A=2".into(), "B=3".into()],
            workdir: "/w".into(),
            hostname: "h".into(),
            mounts: vec![
                Mount {
                    r#type: "tmpfs".into(),
                    target: "/t".into(),
                    ..Default::default()
                },
                Mount {
                    source: "data".into(),
                    target: "/d".into(),
                    ..Default::default()
                },
            ],
            resources: Some(Resources {
                limits: Some(ResourceAmounts {
                    memory_bytes: 64 << 20,
                    nano_cpus: 0,
                    pids: 10,
                }),
                reservations: None,
            }),
            ..Default::default()
        };
        let c = container_spec("t1", Path::new("/r"), &spec, &image(), Path::new("/v"));
        assert_eq!(c.env, ["PATH=/bin", "A=2", "B=3"]);
        assert_eq!(c.user.as_deref(), Some("nobody"));
        assert_eq!(c.workdir, Some(PathBuf::from("/w")));
        assert_eq!(c.hostname.as_deref(), Some("h"));
        assert_eq!(
            c.limits,
            Limits {
                memory_bytes: Some(64 << 20),
                nano_cpus: None,
                pids: Some(10)
            }
        );
        assert_eq!(
            c.mounts[1],
            MountSpec::Volume {
                source: "/v/data/_data".into(),
                target: "/d".into(),
                readonly: false
            }
        );
        let (sig, grace) = stop_params(&spec, &image());
        assert_eq!((sig, grace), (Signal::SIGQUIT, DEFAULT_STOP_GRACE));
        let spec = ServiceSpec { stop_signal: "usr1".into(), ..spec };
        assert_eq!(stop_params(&spec, &image()).0, Signal::SIGUSR1, "the spec's signal wins");
    }

    #[test]
    fn exits_map_to_states() {
        let e = |code, oom| ExitInfo {
            code: Some(code),
            signal: None,
            oom_killed: oom,
            finished_at: None,
        };
        assert_eq!(exit_status("t", "t", &e(0, false)).state, "complete");
        let f = exit_status("t", "t", &e(3, false));
        assert_eq!(
            (f.state.as_str(), f.error.as_str(), f.exit_code),
            ("failed", "exit code 3", Some(3))
        );
        assert_eq!(exit_status("t", "t", &e(137, true)).error, "OOM killed");
    }
}

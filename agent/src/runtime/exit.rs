//! Observing a container's exit: the agent is a child subreaper, so a detached container's init
//! (orphaned when `runc create` exits) becomes our child and we can read its exit status through
//! a pidfd. Containers adopted after an agent restart are not our children: their exit is still
//! seen through the pidfd, but the code is unknown. OOM kills are read from the memory cgroup.

use std::collections::HashMap;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

/// How a container's init process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, 128+n when killed by signal n; `None` = unknown (the container exited while
    /// no agent that started it was there to see it).
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the container (its memory limit was hit).
    pub oom_killed: bool,
    pub finished_at: Option<SystemTime>,
}

impl ExitInfo {
    /// A short human description ("exited with code 0", "OOM killed", ...).
    pub fn describe(&self) -> String {
        match (self.oom_killed, self.code, self.signal) {
            (true, _, _) => "OOM killed".to_string(),
            (false, Some(c), Some(s)) => format!("killed by signal {s} (exit code {c})"),
            (false, Some(c), None) => format!("exited with code {c}"),
            (false, None, _) => "exited with an unknown exit code".to_string(),
        }
    }
}

/// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`), so that the detached
/// containers it starts are reparented to it.
pub fn become_subreaper() -> std::io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)
}

/// A pidfd of a container's init, readable once it has exited.
pub struct PidFd {
    fd: AsyncFd<OwnedFd>,
}

impl PidFd {
    /// Opens a pidfd for `pid` (must be called from within a tokio runtime).
    pub fn open(pid: i32) -> std::io::Result<Self> {
        if pid <= 0 {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let raw = i32::try_from(raw).map_err(std::io::Error::other)?;
        // SAFETY: `raw` is a freshly opened fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the AsyncFd owns `fd`, which stays open and unchanged for its whole life.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        Ok(PidFd { fd })
    }

    /// Waits until the process has exited.
    pub async fn exited(&self) -> std::io::Result<()> {
        let mut guard = self.fd.readable().await?;
        guard.retain_ready();
        Ok(())
    }

    /// Reaps the exited process if it is our child: `Some((code, signal))`, else `None`.
    pub fn reap(&self) -> Option<(i32, Option<i32>)> {
        match waitid(
            Id::PIDFd(self.fd.get_ref().as_fd()),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
        ) {
            Ok(WaitStatus::Exited(_, code)) => Some((code, None)),
            Ok(WaitStatus::Signaled(_, sig, _)) => Some((128 + sig as i32, Some(sig as i32))),
            _ => None,
        }
    }
}

/// Reaps zombie children of this process that were container processes (deeper pid namespace,
/// not a namespace's init; inits are reaped by their watchers). As a subreaper we inherit
/// processes started by `runc exec` whose runc died before them; unreaped, they would also keep
/// their container's init from ever finishing its exit (the kernel waits for the whole pid
/// namespace). Returns how many were reaped.
pub fn reap_orphans() -> usize {
    let Some(our_depth) = nspid(std::process::id() as i32).map(|v| v.len()) else {
        return 0;
    };
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut reaped = 0;
    for t in tasks.flatten() {
        let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                continue;
            };
            let zombie = status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'));
            let ns = parse_nspid(&status);
            if zombie && ns.len() > our_depth && ns.last() != Some(&1) {
                let pid = nix::unistd::Pid::from_raw(pid);
                if nix::sys::wait::waitpid(pid, Some(WaitPidFlag::WNOHANG)).is_ok() {
                    reaped += 1;
                }
            }
        }
    }
    reaped
}

fn nspid(pid: i32) -> Option<Vec<i32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(parse_nspid(&status)).filter(|v| !v.is_empty())
}

/// The `NSpid:` line of `/proc/<pid>/status`: the pid in each nested pid namespace.
fn parse_nspid(status: &str) -> Vec<i32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Start time of a process in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// What runc records about a container in `<root>/<id>/state.json` that `runc state` omits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuncInternalState {
    /// Controller (`""` = unified hierarchy) to cgroup directory.
    pub cgroup_paths: HashMap<String, PathBuf>,
    /// Start time of the init process, in clock ticks (as in [`proc_start_time`]).
    pub init_process_start: Option<u64>,
}

impl RuncInternalState {
    pub fn load(runc_root: &Path, id: &str) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(runc_root.join(id).join("state.json"))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(std::io::Error::other)?;
        let cgroup_paths = v
            .get("cgroup_paths")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, p)| Some((k.clone(), PathBuf::from(p.as_str()?))))
                    .collect()
            })
            .unwrap_or_default();
        let init_process_start = match v.get("init_process_start") {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        Ok(RuncInternalState {
            cgroup_paths,
            init_process_start,
        })
    }

    /// Whether the OOM killer killed something in the container's memory cgroup: cgroup v1
    /// `memory.oom_control` (`oom_kill`), else cgroup v2 `memory.events` (`oom_kill`). On old
    /// v1 kernels without that counter: `memory.failcnt` > 0 and the init died of SIGKILL.
    pub fn oom_killed(&self, signal: Option<i32>) -> bool {
        if let Some(dir) = self.cgroup_paths.get("memory") {
            if let Some(n) = counter(&dir.join("memory.oom_control"), "oom_kill") {
                return n > 0;
            }
            let failcnt = std::fs::read_to_string(dir.join("memory.failcnt")).ok();
            let failed = failcnt
                .and_then(|s| s.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0);
            return failed && signal == Some(libc::SIGKILL);
        }
        self.cgroup_paths
            .get("")
            .and_then(|dir| counter(&dir.join("memory.events"), "oom_kill"))
            .is_some_and(|n| n > 0)
    }
}

/// Reads `key N` from a flat-keyed cgroup file.
fn counter(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Exit info persisted next to the bundle so a restarted agent still knows it.
pub fn save_exit(dir: &Path, info: &ExitInfo) -> std::io::Result<()> {
    let tmp = dir.join("exit.json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(info).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, dir.join("exit.json"))
}

pub fn load_exit(dir: &Path) -> Option<ExitInfo> {
    serde_json::from_slice(&std::fs::read(dir.join("exit.json")).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_start_time_and_counters() {
        let pid = std::process::id() as i32;
        assert!(proc_start_time(pid).is_some_and(|t| t > 0));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        let mut st = RuncInternalState::default();
        st.cgroup_paths
            .insert("memory".into(), dir.path().to_path_buf());
        assert!(st.oom_killed(None));
        std::fs::write(dir.path().join("memory.oom_control"), "oom_kill 0\n").unwrap();
        assert!(!st.oom_killed(Some(9)));
        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(
            v2.path().join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        let mut st = RuncInternalState::default();
        st.cgroup_paths
            .insert(String::new(), v2.path().to_path_buf());
        assert!(st.oom_killed(None));
    }

    #[test]
    fn nspid_parses() {
        assert_eq!(parse_nspid("Name:\tsh\nNSpid:\t4242\t7\n"), vec![4242, 7]);
        assert!(parse_nspid("Name:\tsh\n").is_empty());
        assert_eq!(nspid(std::process::id() as i32).map(|v| v.len()), Some(1));
        assert_eq!(reap_orphans(), 0);
    }

    #[test]
    fn exit_info_round_trips_and_describes() {
        let dir = tempfile::tempdir().unwrap();
        let info = ExitInfo {
            code: Some(137),
            signal: Some(9),
            oom_killed: true,
            finished_at: Some(SystemTime::now()),
        };
        save_exit(dir.path(), &info).unwrap();
        assert_eq!(load_exit(dir.path()), Some(info.clone()));
        assert_eq!(info.describe(), "OOM killed");
        let plain = ExitInfo {
            code: Some(0),
            signal: None,
            oom_killed: false,
            finished_at: None,
        };
        assert_eq!(plain.describe(), "exited with code 0");
    }
}

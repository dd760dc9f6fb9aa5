//! A cluster of manager processes on 127.0.0.1, each with its own temp data dir and port.
//!
//! Dropping a [`Lab`] kills every process it started (also when a test panics) and, unless the
//! test called [`Lab::passed`] (so on a panic or an early error return), prints the tail of each
//! manager's logs first. Set `E2E_KEEP=1` to keep the data dirs of a failed test.

use crate::bins::{self, CLI_BIN, MANAGER_BIN};
use crate::client::{self, CALL_TIMEOUT, Control};
use crate::process::{INIT_DONE, JOIN_DONE, Manager};
use crate::tuning::Tuning;
use crate::wait::eventually;
use anyhow::{Context, Result, anyhow, bail, ensure};
use identity::AdminConfig;
use proto::v1 as pb;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long `init` or `join` may take to print that they are done.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long tests wait for a leader, voters, or catch-up unless they say otherwise.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// One status call while polling.
const POLL_CALL: Duration = Duration::from_secs(3);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Log lines printed per manager when a test fails.
const TAIL_LINES: usize = 60;

pub struct Lab {
    pub name: String,
    /// Index `i` is hostname `m{i+1}`.
    pub managers: Vec<Manager>,
    bin_dir: PathBuf,
    admin: Option<(PathBuf, AdminConfig)>,
    /// Set by [`Lab::passed`]: a lab dropped without it (an early `?` return, a panic) prints
    /// its managers' logs.
    passed: bool,
    // Declared last: dropped after the managers are killed.
    root: Option<tempfile::TempDir>,
}

/// What a CLI run printed.
#[derive(Debug)]
pub struct CliOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Lab {
    /// An empty lab: finds the binaries and makes a temp dir; starts nothing.
    pub fn new(name: &str) -> Result<Self> {
        client::init_crypto();
        let bin_dir = bins::bin_dir()?;
        bins::binary_in(&bin_dir, MANAGER_BIN)?;
        let root = tempfile::Builder::new()
            .prefix(&format!("e2e-{name}-"))
            .tempdir()
            .context("cannot create a temp dir")?;
        Ok(Lab {
            name: name.to_string(),
            managers: Vec::new(),
            bin_dir,
            admin: None,
            passed: false,
            root: Some(root),
        })
    }

    /// A cluster of `n` managers (init + `n - 1` joins), every one a voter, all with `tuning`.
    pub async fn cluster(name: &str, n: usize, tuning: Tuning) -> Result<Self> {
        let mut lab = Lab::new(name)?;
        lab.init(tuning.clone()).await?;
        for _ in 1..n {
            lab.join(tuning.clone()).await?;
        }
        lab.wait_voters(n, CONVERGE_TIMEOUT).await?;
        Ok(lab)
    }

    /// The directory holding every manager's data dir.
    pub fn root(&self) -> &Path {
        self.root
            .as_ref()
            .map(|r| r.path())
            .unwrap_or_else(|| Path::new("/nonexistent"))
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    fn add_manager(&mut self, tuning: Tuning) -> Result<usize> {
        let index = self.managers.len();
        let name = format!("m{}", index + 1);
        let addr = crate::ports::free_addr()?;
        let data_dir = self.root().join(&name);
        let bin = bins::binary_in(&self.bin_dir, MANAGER_BIN)?;
        self.managers
            .push(Manager::new(bin, &name, addr, data_dir, tuning));
        Ok(index)
    }

    /// Starts a new cluster (`init`) on a new manager; waits until it answers `Info`.
    pub async fn init(&mut self, tuning: Tuning) -> Result<usize> {
        ensure!(self.admin.is_none(), "this lab already has a cluster");
        let i = self.add_manager(tuning)?;
        self.managers[i].start_init()?;
        self.managers[i]
            .wait_stdout(INIT_DONE, START_TIMEOUT)
            .await?;
        let path = self.managers[i].data_dir.join("admin.json");
        let config = AdminConfig::load(&path)
            .with_context(|| format!("{} after init", self.managers[i].name))?;
        ensure!(
            config.managers.contains(&self.managers[i].addr),
            "admin.json lists managers {:?}, not {}",
            config.managers,
            self.managers[i].addr
        );
        self.admin = Some((path, config));
        self.wait_info(i, CONVERGE_TIMEOUT).await?;
        Ok(i)
    }

    /// Joins a new manager with the manager token through a running manager; waits until it
    /// says it joined and answers `Info`.
    pub async fn join(&mut self, tuning: Tuning) -> Result<usize> {
        let via = self
            .running()
            .first()
            .copied()
            .ok_or_else(|| anyhow!("no manager is running to join through"))?;
        let token = client::join_token(&mut self.control(via).await?, "manager", false)
            .await
            .map_err(|s| anyhow!("GetJoinToken(manager): {}", client::describe(&s)))?;
        let join_addr = self.managers[via].addr.clone();
        let i = self.add_manager(tuning)?;
        self.managers[i].start_join(&token, &join_addr)?;
        self.managers[i]
            .wait_stdout(JOIN_DONE, START_TIMEOUT)
            .await?;
        self.wait_info(i, CONVERGE_TIMEOUT).await?;
        Ok(i)
    }

    /// The admin config written by `init`.
    pub fn admin(&self) -> &AdminConfig {
        &self
            .admin
            .as_ref()
            .expect("the lab has no cluster yet: call init first")
            .1
    }

    /// Where `init` wrote admin.json.
    pub fn admin_path(&self) -> &Path {
        &self
            .admin
            .as_ref()
            .expect("the lab has no cluster yet: call init first")
            .0
    }

    pub fn addr(&self, i: usize) -> &str {
        &self.managers[i].addr
    }

    /// The hostname of manager `i` (`m{i+1}`), usable as a node reference.
    pub fn hostname(&self, i: usize) -> &str {
        &self.managers[i].name
    }

    /// Indexes of the managers whose process is alive.
    pub fn running(&mut self) -> Vec<usize> {
        (0..self.managers.len())
            .filter(|&i| self.managers[i].is_running())
            .collect()
    }

    /// The index of the manager with Raft id `raft_id`.
    pub fn index_of(&self, raft_id: u64) -> Option<usize> {
        self.managers
            .iter()
            .position(|m| m.raft_id().ok() == Some(raft_id))
    }

    /// A Control client with the admin credentials on manager `i`.
    pub async fn control(&self, i: usize) -> Result<Control> {
        client::control(&self.managers[i].addr, &self.admin().credentials).await
    }

    /// `Info` from manager `i` (fresh connection, bounded).
    pub async fn info(&self, i: usize) -> Result<pb::InfoResponse> {
        let mut control = self.control(i).await?;
        client::info(&mut control, POLL_CALL).await.map_err(|s| {
            anyhow!(
                "Info on {}: {}",
                self.managers[i].name,
                client::describe(&s)
            )
        })
    }

    /// Waits until manager `i` answers `Info`.
    pub async fn wait_info(&self, i: usize, timeout: Duration) -> Result<pb::InfoResponse> {
        let what = format!("{} to answer Info", self.managers[i].name);
        eventually(&what, timeout, POLL_INTERVAL, || self.info(i)).await
    }

    /// Waits until a running manager is leader, as seen by another manager and by itself;
    /// returns its index.
    pub async fn wait_leader(&mut self, timeout: Duration) -> Result<usize> {
        let running = self.running();
        let this = &*self;
        eventually("a leader", timeout, POLL_INTERVAL, || {
            let running = running.clone();
            async move {
                let mut last = anyhow!("no manager is running");
                for &i in &running {
                    let leader_id = match this.info(i).await {
                        Ok(info) if info.leader_id != 0 => info.leader_id,
                        Ok(_) => {
                            last = anyhow!("{} knows no leader", this.managers[i].name);
                            continue;
                        }
                        Err(e) => {
                            last = e;
                            continue;
                        }
                    };
                    let Some(leader) = this.index_of(leader_id) else {
                        last = anyhow!("leader {leader_id:016x} is not one of this lab's managers");
                        continue;
                    };
                    if !running.contains(&leader) {
                        last = anyhow!(
                            "{} still names {} as leader, which is down",
                            this.managers[i].name,
                            this.managers[leader].name
                        );
                        continue;
                    }
                    let own = this.info(leader).await?;
                    if own.leader_id == leader_id {
                        return Ok(leader);
                    }
                    last = anyhow!(
                        "{} does not consider itself leader yet",
                        this.managers[leader].name
                    );
                }
                Err(last)
            }
        })
        .await
    }

    /// Waits until the leader lists `n` managers, all reachable voters; returns its `Info`.
    pub async fn wait_voters(&mut self, n: usize, timeout: Duration) -> Result<pb::InfoResponse> {
        let leader = self.wait_leader(timeout).await?;
        let what = format!("{n} reachable voters");
        let this = &*self;
        eventually(&what, timeout, POLL_INTERVAL, || async move {
            let info = this.info(leader).await?;
            let good = info
                .managers
                .iter()
                .filter(|m| m.reachability == "reachable" && m.membership == "voter")
                .count();
            if info.managers.len() == n && good == n {
                Ok(info)
            } else {
                Err(anyhow!("managers: {:?}", summary(&info)))
            }
        })
        .await
    }

    /// Waits until manager `i` has applied at least `index`; returns its `Info`.
    pub async fn wait_applied(
        &self,
        i: usize,
        index: u64,
        timeout: Duration,
    ) -> Result<pb::InfoResponse> {
        let what = format!("{} to apply index {index}", self.managers[i].name);
        eventually(&what, timeout, POLL_INTERVAL, || async move {
            let info = self.info(i).await?;
            if info.raft_applied_index >= index {
                Ok(info)
            } else {
                Err(anyhow!("applied {} of {index}", info.raft_applied_index))
            }
        })
        .await
    }

    /// SIGKILL manager `i` and reap it.
    pub fn kill_9(&mut self, i: usize) -> Result<()> {
        self.managers[i].kill_9()
    }

    /// Restarts manager `i` from its data dir (`run`) with its current tuning.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.managers[i].restart()
    }

    /// `cluster --config admin.json ARGS...`, bounded in time.
    pub async fn cli(&self, args: &[&str]) -> Result<CliOutput> {
        let bin = bins::binary_in(&self.bin_dir, CLI_BIN)?;
        let mut command = tokio::process::Command::new(&bin);
        command
            .arg("--config")
            .arg(self.admin_path())
            .args(args)
            .kill_on_drop(true);
        command.env_remove("CLUSTER_CONFIG");
        let output = tokio::time::timeout(CALL_TIMEOUT * 3, command.output())
            .await
            .map_err(|_| anyhow!("`cluster {}` did not finish in time", args.join(" ")))?
            .with_context(|| format!("cannot run {}", bin.display()))?;
        Ok(CliOutput {
            success: output.status.success(),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Prints the tail of every manager's logs on stderr.
    pub fn dump_logs(&self) {
        eprintln!(
            "===== e2e lab {:?}: logs in {} =====",
            self.name,
            self.root().display()
        );
        for m in &self.managers {
            eprintln!(
                "----- {} ({}) stdout -----\n{}",
                m.name,
                m.addr,
                m.stdout_tail(10)
            );
            eprintln!(
                "----- {} ({}) stderr (last {TAIL_LINES} lines) -----\n{}",
                m.name,
                m.addr,
                m.stderr_tail(TAIL_LINES)
            );
        }
        eprintln!("===== end of lab {:?} =====", self.name);
    }

    /// Marks the test as passed: dropping the lab then stays quiet. Without it, dropping the lab
    /// prints the tail of every manager's logs (the test failed or returned an error).
    pub fn passed(&mut self) {
        self.passed = true;
    }

    /// Kills every manager (also done on drop).
    pub fn kill_all(&mut self) {
        for m in &mut self.managers {
            let _ = m.kill_9();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() || !self.passed {
            self.dump_logs();
            if std::env::var_os("E2E_KEEP").is_some()
                && let Some(root) = self.root.take()
            {
                eprintln!("E2E_KEEP: keeping {}", root.keep().display());
            }
        }
        self.kill_all();
    }
}

/// A compact view of the managers in an `Info`, for messages.
pub fn summary(info: &pb::InfoResponse) -> Vec<String> {
    info.managers
        .iter()
        .map(|m| {
            format!(
                "{}{} {} {} {} matched={}",
                m.hostname,
                if m.leader { "*" } else { "" },
                m.addr,
                m.reachability,
                m.membership,
                m.matched_index
            )
        })
        .collect()
}

/// Fails unless `result` is an error with `code`; returns the error.
pub fn expect_code<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    what: &str,
) -> Result<tonic::Status> {
    match result {
        Ok(value) => bail!("{what}: expected {code:?}, but the call succeeded: {value:?}"),
        Err(status) if status.code() == code => Ok(status),
        Err(status) => bail!(
            "{what}: expected {code:?}, got {}",
            client::describe(&status)
        ),
    }
}

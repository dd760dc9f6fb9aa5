//! A multi-host lab on one machine: network namespaces `cl-<name>-h<i>` joined by veth pairs to a
//! bridge in a namespace of its own (`cl-<name>-net`; nothing is added to the root namespace),
//! a docker-registry with a busybox image in h1, a manager in h1 and an agent in every host.
//! [`NetLab::up_with_managers`] adds managers in h2..hN that join with the manager token (for
//! failover tests); the CLI config then lists every manager.
//!
//! Addresses are `10.213.<k>.<i>/24`, `k` derived from the lab name. Every lab has its own
//! bridge namespace, so labs never see each other even when their `k` collide.
//!
//! The test process stays in the root namespace: it reaches the lab through processes started
//! in a host's namespace ([`NetLab::exec_in`], [`NetLab::cli`]) or a thread that entered it
//! ([`NetLab::in_host`]).
//!
//! State lives in `/tmp/cluster-lab-<name>/` (data dirs, logs, `pids`), so [`NetLab::teardown`]
//! works from another process and [`NetLab::cleanup_stale`] repairs a crashed run.
//!
//! Needs root, iproute2 (`ip`), runc, docker-registry and /bin/busybox (busybox-static):
//! see [`requirements`].

pub mod disk;
pub mod image;
pub mod services;

use crate::process::{INIT_DONE, JOIN_DONE, spawn_tied};
use crate::wait::Deadline;
use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Port of the registry in h1.
pub const REGISTRY_PORT: u16 = 5000;
/// Port of the manager in h1 (and of the managers in other hosts, if any).
pub const MANAGER_PORT: u16 = 4242;
/// Hostname of the manager's own node (h1 also runs an agent, whose node is `h1`).
pub const MANAGER_HOSTNAME: &str = "h1-manager";

/// Hostname of the node of the manager in host `i` (`h<i>-manager`).
pub fn manager_hostname(i: usize) -> String {
    format!("h{i}-manager")
}

/// The lab's process name of the manager in host `i`: `manager` for h1, `manager-h<i>` else.
fn manager_proc(i: usize) -> String {
    if i == 1 {
        "manager".to_string()
    } else {
        format!("manager-h{i}")
    }
}
/// How long one CLI run may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The lab's directory.
pub fn lab_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/cluster-lab-{name}"))
}

/// The third octet of the lab's addresses (1..=250), from the name.
pub fn subnet(name: &str) -> u8 {
    // FNV-1a.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % 250) as u8 + 1
}

/// The namespace of host `i` (1-based).
pub fn host_ns(name: &str, i: usize) -> String {
    format!("cl-{name}-h{i}")
}

/// The namespace holding the bridge.
pub fn bridge_ns(name: &str) -> String {
    format!("cl-{name}-net")
}

/// Every namespace of lab `name` that exists now (`cl-<name>-net`, `cl-<name>-h<N>`).
pub fn namespaces(name: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let prefix = format!("cl-{name}-");
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| {
            ns.strip_prefix(&prefix).is_some_and(|rest| {
                rest == "net"
                    || rest
                        .strip_prefix('h')
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .map(str::to_string)
        .collect()
}

fn have_binary(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What is missing to run a lab (empty: all there).
pub fn requirements() -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root");
    }
    if !have_binary("ip") {
        missing.push("the ip command (Debian package iproute2)");
    }
    if !have_binary("runc") {
        missing.push("runc (Debian package runc)");
    }
    if !have_binary("docker-registry") {
        missing.push("docker-registry (Debian package docker-registry)");
    }
    if !Path::new(image::BUSYBOX).exists() {
        missing.push("/bin/busybox (Debian package busybox-static)");
    }
    missing
}

/// Whether a test may run: with CI=true a missing requirement is a failure (panics), otherwise
/// the test is skipped with a printed reason.
pub fn require(test: &str) -> bool {
    let missing = requirements();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test}: requirements missing under CI=true: {}",
            missing.join(", ")
        );
    }
    eprintln!("SKIPPED {test}: requires {}", missing.join(", "));
    false
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A process of the lab.
struct Proc {
    /// `registry`, `manager`, `manager-h<i>`, `agent-h<i>`.
    name: String,
    child: Child,
}

pub struct NetLab {
    pub name: String,
    pub hosts: usize,
    /// How many managers: one in each of h1..=h`managers` (1 unless
    /// [`NetLab::up_with_managers`]).
    pub managers: usize,
    /// Third octet of the addresses.
    pub k: u8,
    pub dir: PathBuf,
    bin_dir: PathBuf,
    procs: Vec<Proc>,
    /// Children die with this process (tests); otherwise they outlive it (`lab up`).
    tied: bool,
    /// Set once torn down or detached: Drop does nothing.
    done: bool,
}

impl NetLab {
    /// Builds and starts a lab of `hosts` hosts whose processes die with this process; tears
    /// down leftovers of an earlier run of the same name first.
    pub fn up(name: &str, hosts: usize) -> Result<NetLab> {
        Self::start(name, hosts, 1, true, None)
    }

    /// Like [`NetLab::up`], with a manager in each of the hosts h1..=h`managers`: h1's creates
    /// the cluster, the others join it with the manager token (every one a voter before the
    /// agents start, so the agents learn every manager's address). No manager node takes tasks.
    pub fn up_with_managers(name: &str, hosts: usize, managers: usize) -> Result<NetLab> {
        Self::start(name, hosts, managers, true, None)
    }

    /// Like [`NetLab::up`], but the processes outlive this one (for a `lab up` command); call
    /// [`NetLab::detach`] and later `NetLab::teardown(name)` from any process.
    pub fn up_detached(name: &str, hosts: usize) -> Result<NetLab> {
        Self::start(name, hosts, 1, false, None)
    }

    /// Like [`NetLab::up_detached`], with the daemons' binaries taken from `bin_dir` instead of
    /// [`crate::bins::bin_dir`] (`cluster lab up` uses its own directory).
    pub fn up_detached_with_bins(name: &str, hosts: usize, bin_dir: PathBuf) -> Result<NetLab> {
        Self::start(name, hosts, 1, false, Some(bin_dir))
    }

    fn start(
        name: &str,
        hosts: usize,
        managers: usize,
        tied: bool,
        bin_dir: Option<PathBuf>,
    ) -> Result<NetLab> {
        anyhow::ensure!((1..=250).contains(&hosts), "hosts must be 1..=250");
        anyhow::ensure!(
            (1..=hosts).contains(&managers),
            "managers must be 1..=hosts ({hosts})"
        );
        anyhow::ensure!(
            !name.is_empty()
                && name.len() <= 20
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "lab name must be 1-20 characters of [A-Za-z0-9_-]"
        );
        let missing = requirements();
        if !missing.is_empty() {
            bail!("a lab needs {}", missing.join(", "));
        }
        let bin_dir = match bin_dir {
            Some(dir) => dir,
            None => crate::bins::bin_dir()?,
        };
        for b in ["cluster-manager", "cluster-agent", "cluster"] {
            crate::bins::binary_in(&bin_dir, b)?;
        }
        Self::cleanup_stale(name)?;
        let dir = lab_dir(name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut lab = NetLab {
            name: name.to_string(),
            hosts,
            managers,
            k: subnet(name),
            dir,
            bin_dir,
            procs: Vec::new(),
            tied,
            done: false,
        };
        let started = Instant::now();
        let result = (|| -> Result<()> {
            lab.create_network()?;
            lab.start_registry()?;
            lab.start_manager()?;
            lab.join_managers()?;
            lab.start_agents()?;
            Ok(())
        })();
        if let Err(e) = result {
            let logs = lab.logs_tail(20);
            lab.down();
            return Err(e.context(format!("lab {name} did not come up; logs:\n{logs}")));
        }
        eprintln!(
            "lab {name}: {hosts} hosts up in {:.1}s (10.213.{}.0/24, dir {})",
            started.elapsed().as_secs_f64(),
            lab.k,
            lab.dir.display()
        );
        Ok(lab)
    }

    /// The address of host `i` (1-based).
    pub fn addr(&self, i: usize) -> String {
        format!("10.213.{}.{i}", self.k)
    }

    pub fn manager_addr(&self) -> String {
        self.manager_addr_of(1)
    }

    /// The address of the manager in host `i` (1..=[`NetLab::managers`]).
    pub fn manager_addr_of(&self, i: usize) -> String {
        format!("{}:{MANAGER_PORT}", self.addr(i))
    }

    /// The host (1-based) of the manager listening at `addr`, if it is one of the lab's.
    pub fn manager_host(&self, addr: &str) -> Option<usize> {
        (1..=self.managers).find(|&i| self.manager_addr_of(i) == addr)
    }

    pub fn registry_addr(&self) -> String {
        format!("{}:{REGISTRY_PORT}", self.addr(1))
    }

    /// The busybox image in the lab's registry.
    pub fn busybox(&self) -> String {
        format!("{}/busybox:latest", self.registry_addr())
    }

    pub fn ns(&self, i: usize) -> String {
        host_ns(&self.name, i)
    }

    /// Pushes a busybox image with extra `files` (path, content) to the lab's registry as
    /// `repo_tag`; returns its reference.
    pub fn push_image(&self, repo_tag: &str, files: &[(&str, &str)]) -> Result<String> {
        let addr = self.registry_addr();
        let tag = repo_tag.to_string();
        let files: Vec<(String, String)> =
            files.iter().map(|(p, c)| (p.to_string(), c.to_string())).collect();
        self.in_host(1, move || -> Result<String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let files: Vec<(&str, &[u8])> =
                files.iter().map(|(p, c)| (p.as_str(), c.as_bytes())).collect();
            rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(10),
                    image::push_busybox_with(&addr, &tag, &files),
                )
                .await
                .map_err(|_| anyhow!("push timed out"))?
            })
        })??;
        Ok(format!("{}/{repo_tag}", self.registry_addr()))
    }

    pub fn admin_path(&self) -> PathBuf {
        self.dir.join("h1/manager/admin.json")
    }

    pub fn agent_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("h{i}/agent"))
    }

    /// The data dir of the manager in host `i`.
    pub fn manager_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("h{i}/manager"))
    }

    /// The log of the agent of host `i` (its tracing output goes to stdout).
    pub fn agent_log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("logs/agent-h{i}.out"))
    }

    /// The stderr log (tracing output) of the manager in host `i`.
    pub fn manager_log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("logs/{}.log", manager_proc(i)))
    }

    fn create_network(&self) -> Result<()> {
        let net = bridge_ns(&self.name);
        ip(&["netns", "add", &net])?;
        ip(&["-n", &net, "link", "set", "lo", "up"])?;
        ip(&["-n", &net, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &net, "link", "set", "br0", "up"])?;
        for i in 1..=self.hosts {
            let ns = self.ns(i);
            let port = format!("vh{i}");
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &port, "netns", &net, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &net, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &net, "link", "set", &port, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.addr(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// A command that runs in host `i`'s network namespace (the mount namespace stays the
    /// root's, so the agents' mounts are visible to [`NetLab::down`]).
    pub fn command_in(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let path = format!("/run/netns/{}", self.ns(i));
        let ns = File::open(&path).with_context(|| format!("cannot open {path}"))?;
        let mut command = Command::new(program);
        // SAFETY: setns is a plain system call, async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        Ok(command)
    }

    /// Runs `program args` in host `i`'s namespace, killed after [`CLI_TIMEOUT`].
    pub fn exec_in(&self, i: usize, program: &str, args: &[&str]) -> Result<Output> {
        let mut command = self.command_in(i, "timeout")?;
        command
            .args(["--signal=KILL", &CLI_TIMEOUT.as_secs().to_string(), program])
            .args(args)
            .stdin(Stdio::null());
        command
            .output()
            .with_context(|| format!("cannot run {program} in {}", self.ns(i)))
    }

    /// A `cluster --config admin.json ARGS` command in h1 that the caller runs (for long-lived
    /// ones such as `service logs -f`; the caller bounds and kills it).
    pub fn cli_command(&self, args: &[&str]) -> Result<Command> {
        let mut command = self.command_in(1, self.bin_dir.join("cluster"))?;
        command
            .arg("--config")
            .arg(self.admin_path())
            .args(args)
            .stdin(Stdio::null());
        Ok(command)
    }

    /// `cluster --config admin.json ARGS` in h1; fails unless it exits 0; returns stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let bin = self.bin_dir.join("cluster").display().to_string();
        let admin = self.admin_path().display().to_string();
        let mut full = vec!["--config", admin.as_str()];
        full.extend_from_slice(args);
        let out = self.exec_in(1, &bin, &full)?;
        if !out.status.success() {
            bail!(
                "cluster {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `cluster ARGS --format json`, parsed.
    pub fn cli_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut full = args.to_vec();
        full.extend_from_slice(&["--format", "json"]);
        let text = self.cli(&full)?;
        serde_json::from_str(&text)
            .with_context(|| format!("cluster {}: not JSON: {text}", args.join(" ")))
    }

    /// Runs `f` on a thread that entered host `i`'s network namespace (its sockets live there).
    pub fn in_host<T: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let path = format!("/run/netns/{}", self.ns(i));
        let ns = File::open(&path).with_context(|| format!("cannot open {path}"))?;
        std::thread::spawn(move || -> Result<T> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .context("setns into the host's network namespace")?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("the thread in host {i} panicked"))?
    }

    fn spawn(&mut self, name: &str, host: usize, program: &Path, args: &[String]) -> Result<()> {
        let log_dir = self.dir.join("logs");
        std::fs::create_dir_all(&log_dir)?;
        // Appended to, so a restarted process keeps its predecessor's logs.
        let append = |path: PathBuf| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        };
        let stdout = append(log_dir.join(format!("{name}.out")))?;
        let stderr = append(log_dir.join(format!("{name}.log")))?;
        let mut command = self.command_in(host, program)?;
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info,openraft=warn,hickory_server=warn");
        }
        let child = if self.tied {
            spawn_tied(command)
        } else {
            command.process_group(0).spawn()
        }
        .with_context(|| format!("cannot start {}", program.display()))?;
        use std::io::Write;
        let mut pids = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("pids"))?;
        writeln!(pids, "{name} {}", child.id())?;
        self.procs.push(Proc {
            name: name.to_string(),
            child,
        });
        Ok(())
    }

    fn proc_mut(&mut self, name: &str) -> Result<&mut Proc> {
        self.procs
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| anyhow!("no process {name} in the lab"))
    }

    fn ensure_alive(&mut self, name: &str) -> Result<()> {
        let p = self.proc_mut(name)?;
        if let Some(status) = p.child.try_wait()? {
            bail!("{name} exited ({status})");
        }
        Ok(())
    }

    fn start_registry(&mut self) -> Result<()> {
        let dir = self.dir.join("registry");
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage)?;
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            image::registry_config(&storage, &self.registry_addr()),
        )?;
        self.spawn(
            "registry",
            1,
            Path::new("docker-registry"),
            &["serve".into(), config.display().to_string()],
        )?;
        let addr = self.registry_addr();
        let deadline = Deadline::after(Duration::from_secs(30));
        loop {
            let a = addr.clone();
            let pushed = self.in_host(1, move || -> Result<String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    tokio::time::timeout(
                        Duration::from_secs(10),
                        image::push_busybox(&a, "busybox:latest"),
                    )
                    .await
                    .map_err(|_| anyhow!("push timed out"))?
                })
            })?;
            match pushed {
                Ok(_) => return Ok(()),
                Err(e) => {
                    self.ensure_alive("registry")?;
                    if deadline.passed() {
                        return Err(e.context("cannot push busybox to the lab's registry"));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn start_manager(&mut self) -> Result<()> {
        let bin = self.bin_dir.join("cluster-manager");
        let data = self.dir.join("h1/manager");
        let args = vec![
            "init".to_string(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen-addr".into(),
            self.manager_addr(),
            "--hostname".into(),
            MANAGER_HOSTNAME.into(),
            // Service images are pinned to their digest at the lab's (plain http) registry.
            "--insecure-registry".into(),
            self.registry_addr(),
        ];
        self.spawn("manager", 1, &bin, &args)?;
        let out = self.dir.join("logs/manager.out");
        let deadline = Deadline::after(START_TIMEOUT);
        while !std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains(INIT_DONE)
        {
            self.ensure_alive("manager")?;
            if deadline.passed() {
                bail!("the manager did not print {INIT_DONE:?} within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        std::fs::copy(self.admin_path(), self.dir.join("admin.json"))?;
        Ok(())
    }

    /// Joins the managers of h2..=h`managers` one after the other, waits until all are
    /// reachable voters, and lists them all in the CLI config.
    fn join_managers(&mut self) -> Result<()> {
        if self.managers < 2 {
            return Ok(());
        }
        let token = self
            .cli(&["join-token", "manager", "-q"])?
            .trim()
            .to_string();
        let bin = self.bin_dir.join("cluster-manager");
        for i in 2..=self.managers {
            let name = manager_proc(i);
            let args = vec![
                "join".to_string(),
                "--token".into(),
                token.clone(),
                "--join-addr".into(),
                self.manager_addr(),
                "--listen-addr".into(),
                self.manager_addr_of(i),
                "--hostname".into(),
                manager_hostname(i),
                "--data-dir".into(),
                self.manager_dir(i).display().to_string(),
                "--insecure-registry".into(),
                self.registry_addr(),
            ];
            self.spawn(&name, i, &bin, &args)?;
            let out = self.dir.join(format!("logs/{name}.out"));
            let deadline = Deadline::after(START_TIMEOUT);
            while !std::fs::read_to_string(&out)
                .unwrap_or_default()
                .contains(JOIN_DONE)
            {
                self.ensure_alive(&name)?;
                if deadline.passed() {
                    bail!("{name} did not print {JOIN_DONE:?} within {START_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        let deadline = Deadline::after(START_TIMEOUT);
        loop {
            let info = self.cli_json(&["info"]);
            let voters = info.as_ref().map_or(0, |info| {
                info["managers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|m| m["reachability"] == "reachable" && m["membership"] == "voter")
                    .count()
            });
            if voters == self.managers {
                break;
            }
            if deadline.passed() {
                bail!(
                    "{voters} of {} managers are reachable voters after {START_TIMEOUT:?}: {info:?}",
                    self.managers
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The CLI tries the managers in order: it keeps working when some are down.
        let mut config = identity::AdminConfig::load(&self.admin_path())?;
        config.managers = (1..=self.managers)
            .map(|i| self.manager_addr_of(i))
            .collect();
        config.save(&self.admin_path())?;
        config.save(&self.dir.join("admin.json"))?;
        Ok(())
    }

    /// kill -9 the manager in host `i` (as a crash of its host's daemon).
    pub fn kill_manager(&mut self, i: usize) -> Result<()> {
        let p = self.proc_mut(&manager_proc(i))?;
        if p.child.try_wait()?.is_none() {
            kill(Pid::from_raw(p.child.id() as i32), Signal::SIGKILL)?;
        }
        p.child.wait()?;
        Ok(())
    }

    fn start_agents(&mut self) -> Result<()> {
        let token = self
            .cli(&["join-token", "worker", "-q"])?
            .trim()
            .to_string();
        let bin = self.bin_dir.join("cluster-agent");
        for i in 1..=self.hosts {
            let args = vec![
                "join".to_string(),
                "--token".into(),
                token.clone(),
                "--join-addr".into(),
                self.manager_addr(),
                "--data-dir".into(),
                self.agent_dir(i).display().to_string(),
                "--advertise-addr".into(),
                self.addr(i),
                "--hostname".into(),
                format!("h{i}"),
                "--insecure-registry".into(),
                self.registry_addr(),
            ];
            self.spawn(&format!("agent-h{i}"), i, &bin, &args)?;
        }
        // The managers' own nodes run no agent: keep tasks off them.
        for i in 1..=self.managers {
            self.cli(&[
                "node",
                "update",
                "--availability",
                "drain",
                &manager_hostname(i),
            ])?;
        }
        let deadline = Deadline::after(START_TIMEOUT);
        loop {
            let ready = self.ready_hosts()?;
            if ready.len() == self.hosts {
                return Ok(());
            }
            for i in 1..=self.hosts {
                self.ensure_alive(&format!("agent-h{i}"))?;
            }
            if deadline.passed() {
                bail!(
                    "only {ready:?} of {} hosts are ready after {START_TIMEOUT:?}",
                    self.hosts
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Hostnames of the worker nodes that are `ready`.
    pub fn ready_hosts(&self) -> Result<Vec<String>> {
        let nodes = self.cli_json(&["node", "ls"])?;
        let mut ready: Vec<String> = nodes
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["role"] == "worker" && n["state"] == "ready")
            .filter_map(|n| n["hostname"].as_str().map(str::to_string))
            .collect();
        ready.sort();
        Ok(ready)
    }

    /// Node id -> hostname.
    pub fn node_names(&self) -> Result<std::collections::HashMap<String, String>> {
        let nodes = self.cli_json(&["node", "ls"])?;
        Ok(nodes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| {
                Some((
                    n["id"].as_str()?.to_string(),
                    n["hostname"].as_str()?.to_string(),
                ))
            })
            .collect())
    }

    /// kill -9 the agent of host `i` (its containers keep running, as after a crash).
    pub fn kill_agent(&mut self, i: usize) -> Result<()> {
        let p = self.proc_mut(&format!("agent-h{i}"))?;
        if p.child.try_wait()?.is_none() {
            kill(Pid::from_raw(p.child.id() as i32), Signal::SIGKILL)?;
        }
        p.child.wait()?;
        Ok(())
    }

    /// The pid and kernel start time (clock ticks since boot) of the init process of a running
    /// container of host `i`'s agent, read through `runc state` and /proc: equal before and after
    /// something means the very same process kept running.
    pub fn container_process(&self, i: usize, container: &str) -> Result<(i32, u64)> {
        let out = Command::new("runc")
            .arg("--root")
            .arg(self.agent_dir(i).join("runtime/runc"))
            .args(["state", container])
            .output()
            .context("runc state")?;
        if !out.status.success() {
            bail!(
                "runc state {container} on h{i}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let state: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("runc state: not JSON")?;
        if state["status"] != "running" {
            bail!("container {container} on h{i} is not running: {state}");
        }
        let pid = state["pid"].as_i64().context("runc state: no pid")? as i32;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // Field 22 (starttime), counted after the parenthesised command name.
        let start = stat
            .rfind(')')
            .and_then(|i| stat.get(i + 2..))
            .and_then(|rest| rest.split_whitespace().nth(19))
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat has no start time"))?;
        Ok((pid, start))
    }

    /// Stops the agent of host `i` with SIGTERM (a clean daemon stop: its containers keep
    /// running, as on `systemctl stop`).
    pub fn stop_agent(&mut self, i: usize) -> Result<()> {
        let p = self.proc_mut(&format!("agent-h{i}"))?;
        if p.child.try_wait()?.is_none() {
            kill(Pid::from_raw(p.child.id() as i32), Signal::SIGTERM)?;
        }
        let deadline = Deadline::after(Duration::from_secs(10));
        while p.child.try_wait()?.is_none() {
            if deadline.passed() {
                bail!("agent-h{i} did not exit within 10s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Starts the agent of host `i` again (`cluster-agent run` on its data dir) after
    /// [`NetLab::kill_agent`] or [`NetLab::stop_agent`].
    pub fn restart_agent(&mut self, i: usize) -> Result<()> {
        let name = format!("agent-h{i}");
        let p = self.proc_mut(&name)?;
        if p.child.try_wait()?.is_none() {
            bail!("{name} is still running");
        }
        self.procs.retain(|p| p.name != name);
        let bin = self.bin_dir.join("cluster-agent");
        let args = vec![
            "run".to_string(),
            "--data-dir".into(),
            self.agent_dir(i).display().to_string(),
        ];
        self.spawn(&name, i, &bin, &args)
    }

    /// The last `lines` lines of every process's logs.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for p in &self.procs {
            for ext in ["log", "out"] {
                let path = self.dir.join(format!("logs/{}.{ext}", p.name));
                let tail = crate::process::tail(&path, lines);
                if !tail.trim().is_empty() {
                    out.push_str(&format!("--- {} ---\n{tail}\n", path.display()));
                }
            }
        }
        out
    }

    /// Forgets the lab without stopping it (its processes were started with
    /// [`NetLab::up_detached`]); stop it later with [`NetLab::teardown`].
    pub fn detach(mut self) {
        self.done = true;
    }

    /// Stops everything and removes the namespaces and the lab dir. Idempotent.
    pub fn down(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        for p in &mut self.procs {
            if p.child.try_wait().ok().flatten().is_none() {
                let _ = kill(Pid::from_raw(p.child.id() as i32), Signal::SIGKILL);
            }
            let _ = p.child.wait();
        }
        self.procs.clear();
        if let Err(e) = Self::teardown(&self.name) {
            eprintln!("lab {}: teardown: {e:#}", self.name);
        }
    }

    /// Removes what a run of lab `name` left: processes listed in its `pids` file or living in
    /// its namespaces, the agents' containers, mounts under its dir, its namespaces, its dir.
    pub fn cleanup_stale(name: &str) -> Result<()> {
        Self::teardown(name)
    }

    /// Stops lab `name` from any process (see [`NetLab::cleanup_stale`]).
    pub fn teardown(name: &str) -> Result<()> {
        let dir = lab_dir(name);
        let dir_text = dir.display().to_string();
        // 1. Processes: from the pids file (only if their command line names the lab dir, in
        //    case a pid was reused), and whatever still lives in the lab's namespaces.
        let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&dir_text))
            })
            .collect();
        for ns in namespaces(name) {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                pids.extend(
                    String::from_utf8_lossy(&out.stdout)
                        .split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
        for &pid in &pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let deadline = Deadline::after(Duration::from_secs(10));
        for &pid in &pids {
            // Our children are reaped by down(); others by their parent or init.
            let _ = nix::sys::wait::waitpid(
                Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
            while Path::new(&format!("/proc/{pid}")).exists()
                && !is_zombie(pid)
                && !deadline.passed()
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // 2. The agents' containers.
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let root = entry.path().join("agent/runtime/runc");
            for c in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                let id = c.file_name().to_string_lossy().into_owned();
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", &id])
                    .output();
            }
        }
        // 3. Mounts under the dir, deepest first.
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(unescape_mount))
            .filter(|m| m == &dir_text || m.starts_with(&format!("{dir_text}/")))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in &mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        // 4. Namespaces (their veths go with them): the agents' own (overlay networks and
        //    containers, named after their node id), then the lab's.
        let mut errors = Vec::new();
        for tag in agent_node_tags(&dir) {
            let prefix = format!("cl-{tag}-");
            for entry in std::fs::read_dir("/run/netns")
                .into_iter()
                .flatten()
                .flatten()
            {
                let ns = entry.file_name().to_string_lossy().into_owned();
                if ns.starts_with(&prefix)
                    && let Err(e) = ip(&["netns", "del", &ns])
                {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        for ns in namespaces(name) {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                errors.push(format!("{e:#}"));
            }
        }
        // 5. The dir.
        if dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            errors.push(format!("cannot remove {}: {e}", dir.display()));
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("; "));
        }
        Ok(())
    }

    /// A summary of lab `name` (for `lab status`): namespaces, processes, nodes.
    pub fn status(name: &str) -> String {
        let dir = lab_dir(name);
        let mut out = format!(
            "lab {name}: dir {}\nnamespaces: {:?}\n",
            dir.display(),
            namespaces(name)
        );
        for line in std::fs::read_to_string(dir.join("pids"))
            .unwrap_or_default()
            .lines()
        {
            let mut parts = line.split_whitespace();
            let (Some(proc_name), Some(pid)) = (parts.next(), parts.next()) else {
                continue;
            };
            let alive =
                Path::new(&format!("/proc/{pid}")).exists() && !pid.parse().is_ok_and(is_zombie);
            out.push_str(&format!(
                "{proc_name:<12} pid {pid:<8} {}\n",
                if alive { "running" } else { "gone" }
            ));
        }
        out
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        if !self.done && std::thread::panicking() {
            eprintln!("lab {} logs:\n{}", self.name, self.logs_tail(30));
        }
        self.down();
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Mount points in mountinfo escape space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The namespace tags (`{node id:016x}`) of the agents that joined in lab dir `dir`.
fn agent_node_tags(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("agent/agent.json")).ok())
        .filter_map(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .filter_map(|v| v["node_id"].as_u64())
        .map(|id| format!("{id:016x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_is_stable_and_in_range() {
        assert_eq!(subnet("a"), subnet("a"));
        for n in ["a", "b", "lab", "x-y_z"] {
            assert!((1..=250).contains(&subnet(n)));
        }
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mount("/tmp/ab"), "/tmp/ab");
    }
}

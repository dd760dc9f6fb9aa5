//! `bench-swarm`: the container workloads of `bench-containers` on ours and on Docker Swarm, on
//! this machine, in one run, side by side (ratio ours/Swarm; lower is better for times).
//!
//! - Ours: the network-namespace lab (`e2e::netlab`), one host, default settings; the scenarios
//!   of `e2e::bench::containers`, timed with the manager's timestamps.
//! - Swarm: the local Docker engine as a single-node swarm (`docker swarm init` on 127.0.0.1), a
//!   busybox image built from /bin/busybox and `docker import`ed (no registry); the services
//!   reference it by image ID, so Swarm neither resolves nor pulls it. Timed with the tasks'
//!   `CreatedAt` and `Status.Timestamp` (Docker's own timestamps).
//!
//! Scenarios, on both: `service create --replicas N` to all running (N = 100); one-task services
//! created one at a time, create to running; scale 10 -> 50 -> 10 of an existing service.
//!
//! The engine is left as found: the services, the swarm (only if this run created it) and the
//! image are removed on exit, also on error or Ctrl-C. Skips when no Docker engine runs or the
//! engine is already part of a swarm. Needs root and what `bench-containers` needs.

use anyhow::{Context, Result, bail};
use clap::Parser;
use e2e::Summary;
use e2e::bench::containers::{self as ours, BulkRun, TASK_COMMAND};
use e2e::netlab::{self, NetLab};
use serde::Serialize;
use serde_json::Value;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "bench-swarm",
    about = "The bench-containers workloads on ours and on Docker Swarm, side by side"
)]
struct Args {
    /// Replicas of the bulk-start service.
    #[arg(long, default_value_t = 100)]
    replicas: usize,
    /// Bulk-start runs.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// One-task services created one after another.
    #[arg(long, default_value_t = 20)]
    single_runs: usize,
    /// Scale 10 -> 50 -> 10 runs.
    #[arg(long, default_value_t = 3)]
    scale_runs: usize,
    /// 10 replicas, one bulk run, 3 one-task services, one scale run.
    #[arg(long)]
    quick: bool,
    /// Where to write the results as JSON (default: <target dir>/bench-swarm.json).
    #[arg(long)]
    json: Option<PathBuf>,
}

const SCALE_FROM: usize = 10;
const SCALE_TO: usize = 50;
/// How long one wait for convergence may take.
const WAIT: Duration = Duration::from_secs(180);
/// How long one docker CLI call may take.
const DOCKER_CALL: Duration = Duration::from_secs(60);
/// Prefix of every service this benchmark creates on Swarm.
const PREFIX: &str = "cbench-";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

#[derive(Serialize, Default)]
struct Side {
    bulk_runs: Vec<BulkRun>,
    bulk_total: Summary,
    task_latency: Summary,
    single_task: Summary,
    scale_up: Summary,
    scale_down: Summary,
}

#[derive(Serialize)]
struct Row {
    name: String,
    ours: String,
    swarm: String,
    ratio: String,
    runs: String,
}

#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    profile: &'static str,
    replicas: usize,
    docker_version: String,
    ours: Side,
    swarm: Side,
    rows: Vec<Row>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-swarm: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.replicas = 10;
        args.runs = 1;
        args.single_runs = 3;
        args.scale_runs = 1;
    }
    let missing = netlab::requirements();
    if !missing.is_empty() {
        println!("bench-swarm: skipped, needs {}", missing.join(", "));
        return Ok(());
    }
    let version = match docker(&["info", "--format", "{{.ServerVersion}}"]) {
        Ok(v) => v.trim().to_string(),
        Err(e) => {
            println!("bench-swarm: skipped, no Docker engine ({e:#})");
            return Ok(());
        }
    };
    let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])?;
    let state = state.trim();
    if state != "inactive" {
        println!(
            "bench-swarm: skipped, the Docker engine is already in a swarm (state {state}); \
             this benchmark only uses a swarm it creates and leaves"
        );
        return Ok(());
    }
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_signal),
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic.
        unsafe { nix::sys::signal::sigaction(sig, &action) }?;
    }

    // Ours first, on a quiet machine (the swarm does not exist yet).
    let mut lab = NetLab::up("bsw1", 1)?;
    let measured = measure_ours(&mut lab, &args);
    let ours = ours::keep_logs_on_error(lab, measured)?;
    check_interrupted()?;

    // Swarm: everything it creates is undone by the guard's Drop.
    let mut guard = SwarmGuard::default();
    let swarm = measure_swarm(&mut guard, &args);
    drop(guard);
    let swarm = swarm?;
    verify_left_as_found()?;

    let rows = rows(&ours, &swarm, &args);
    let report = Report {
        benchmark: "bench-swarm",
        profile: e2e::bench::profile(),
        replicas: args.replicas,
        docker_version: version,
        ours,
        swarm,
        rows,
    };
    print_table(&report);
    e2e::bench::write_report("bench-swarm", args.json, &report)?;
    Ok(())
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn measure_ours(lab: &mut NetLab, args: &Args) -> Result<Side> {
    println!("== ours ==");
    let (bulk_runs, tasks, single, _false_down) =
        ours::bulk_start(lab, args.replicas, args.runs, args.single_runs, None)?;
    check_interrupted()?;
    let (up, down) = ours::scale(lab, SCALE_FROM, SCALE_TO, args.scale_runs)?;
    Ok(side(bulk_runs, &tasks, &single, &up, &down))
}

fn side(
    bulk_runs: Vec<BulkRun>,
    tasks: &[Duration],
    single: &[Duration],
    up: &[Duration],
    down: &[Duration],
) -> Side {
    let totals: Vec<Duration> = bulk_runs
        .iter()
        .map(|r| Duration::from_secs_f64(r.total_ms / 1000.0))
        .collect();
    Side {
        bulk_total: Summary::of(&totals),
        bulk_runs,
        task_latency: Summary::of(tasks),
        single_task: Summary::of(single),
        scale_up: Summary::of(up),
        scale_down: Summary::of(down),
    }
}

fn rows(ours: &Side, swarm: &Side, args: &Args) -> Vec<Row> {
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "-".into()
        }
    };
    let mm = |s: &Summary| format!("{:.0}/{:.0}/{:.0}", s.min_ms, s.p50_ms, s.max_ms);
    let runs = |a: &Summary, b: &Summary, what: &str| {
        format!(
            "{} {what}; ours {} ms, Swarm {} ms",
            a.count.min(b.count),
            mm(a),
            mm(b)
        )
    };
    let ms = |v: f64| format!("{v:.0} ms");
    vec![
        Row {
            name: format!(
                "create --replicas {} to all running (median)",
                args.replicas
            ),
            ours: ms(ours.bulk_total.p50_ms),
            swarm: ms(swarm.bulk_total.p50_ms),
            ratio: ratio(ours.bulk_total.p50_ms, swarm.bulk_total.p50_ms),
            runs: runs(&ours.bulk_total, &swarm.bulk_total, "runs"),
        },
        Row {
            name: "per task inside the bulk start, create to running p50".into(),
            ours: ms(ours.task_latency.p50_ms),
            swarm: ms(swarm.task_latency.p50_ms),
            ratio: ratio(ours.task_latency.p50_ms, swarm.task_latency.p50_ms),
            runs: runs(&ours.task_latency, &swarm.task_latency, "tasks"),
        },
        Row {
            name: "one-task service, create to running p50".into(),
            ours: ms(ours.single_task.p50_ms),
            swarm: ms(swarm.single_task.p50_ms),
            ratio: ratio(ours.single_task.p50_ms, swarm.single_task.p50_ms),
            runs: runs(&ours.single_task, &swarm.single_task, "services"),
        },
        Row {
            name: "one-task service, create to running p99".into(),
            ours: ms(ours.single_task.p99_ms),
            swarm: ms(swarm.single_task.p99_ms),
            ratio: ratio(ours.single_task.p99_ms, swarm.single_task.p99_ms),
            runs: runs(&ours.single_task, &swarm.single_task, "services"),
        },
        Row {
            name: format!("scale {SCALE_FROM} -> {SCALE_TO}, to all running (median)"),
            ours: ms(ours.scale_up.p50_ms),
            swarm: ms(swarm.scale_up.p50_ms),
            ratio: ratio(ours.scale_up.p50_ms, swarm.scale_up.p50_ms),
            runs: runs(&ours.scale_up, &swarm.scale_up, "runs"),
        },
        Row {
            name: format!("scale {SCALE_TO} -> {SCALE_FROM}, to all stopped (median)"),
            ours: ms(ours.scale_down.p50_ms),
            swarm: ms(swarm.scale_down.p50_ms),
            ratio: ratio(ours.scale_down.p50_ms, swarm.scale_down.p50_ms),
            runs: runs(&ours.scale_down, &swarm.scale_down, "runs"),
        },
    ]
}

fn print_table(report: &Report) {
    println!(
        "\nbench-swarm ({} build; ours: runc containers in the lab; Swarm: Docker {} single node)",
        report.profile, report.docker_version
    );
    println!(
        "| figure | ours | Swarm | ratio ours/Swarm (lower is better) | runs (min/median/max) |\n|---|---|---|---|---|"
    );
    for r in &report.rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.name, r.ours, r.swarm, r.ratio, r.runs
        );
    }
}

// ---- Docker ----

/// Runs `docker ARGS` with a time limit; its stdout, or an error with its stderr.
fn docker(args: &[&str]) -> Result<String> {
    let (ok, out, err) = docker_raw(args)?;
    if !ok {
        bail!("docker {} failed: {}", args.join(" "), err.trim());
    }
    Ok(out)
}

/// Runs `docker ARGS` with a time limit: (success, stdout, stderr).
fn docker_raw(args: &[&str]) -> Result<(bool, String, String)> {
    let mut child = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run docker")?;
    let mut out = child.stdout.take().context("no stdout")?;
    let mut err = child.stderr.take().context("no stderr")?;
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + DOCKER_CALL;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("docker {} took longer than {DOCKER_CALL:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    Ok((status.success(), out, err))
}

/// What this run created on the engine; Drop undoes it.
#[derive(Default)]
struct SwarmGuard {
    created_swarm: bool,
    tag: Option<String>,
    tmp: Option<tempfile::TempDir>,
}

impl Drop for SwarmGuard {
    fn drop(&mut self) {
        if let Ok(ls) = docker(&["service", "ls", "-q", "--filter", &format!("name={PREFIX}")]) {
            let ids: Vec<&str> = ls.split_whitespace().collect();
            if !ids.is_empty() {
                let mut a = vec!["service", "rm"];
                a.extend(ids);
                if let Err(e) = docker(&a) {
                    eprintln!("bench-swarm: cleanup: {e:#}");
                }
            }
        }
        if self.created_swarm {
            let _ = wait_swarm_containers_gone(None);
            match docker(&["swarm", "leave", "--force"]) {
                Ok(_) => println!("bench-swarm: left the swarm this run created"),
                Err(e) => eprintln!("bench-swarm: cleanup: {e:#}"),
            }
        }
        if let Some(tag) = self.tag.take() {
            // Containers of removed tasks may linger briefly; retry a bounded number of times.
            for attempt in 0..20 {
                match docker(&["rmi", "--force", &tag]) {
                    Ok(_) => break,
                    Err(e) if attempt == 19 => eprintln!("bench-swarm: cleanup: {e:#}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(500)),
                }
            }
        }
        self.tmp.take();
    }
}

fn verify_left_as_found() -> Result<()> {
    let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])?;
    if state.trim() != "inactive" {
        bail!("engine left in swarm state {}", state.trim());
    }
    let images = docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"])?;
    if let Some(left) = images
        .lines()
        .find(|l| l.starts_with("cluster-bench-busybox:"))
    {
        bail!("image {left} left on the engine");
    }
    println!("bench-swarm: engine left as found (swarm inactive, image removed)");
    Ok(())
}

/// Builds the busybox rootfs tarball, imports it, returns the image ID.
fn import_image(guard: &mut SwarmGuard) -> Result<String> {
    let tmp = tempfile::Builder::new().prefix("bench-swarm-").tempdir()?;
    let tar = tmp.path().join("busybox.tar");
    std::fs::write(&tar, netlab::image::busybox_tar()?)?;
    let tag = format!("cluster-bench-busybox:{}", std::process::id());
    guard.tmp = Some(tmp);
    guard.tag = Some(tag.clone());
    docker(&[
        "import",
        "--change",
        "ENV PATH=/bin",
        &tar.to_string_lossy(),
        &tag,
    ])?;
    let id = docker(&["image", "inspect", "--format", "{{.Id}}", &tag])?;
    Ok(id.trim().to_string())
}

struct Task {
    created_ms: i64,
    timestamp_ms: i64,
    state: String,
    desired: String,
}

/// All tasks of a service with Docker's timestamps.
fn tasks(name: &str) -> Result<Vec<Task>> {
    let ids = docker(&["service", "ps", "-q", "--no-trunc", name])?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut a = vec!["inspect", "--type", "task"];
    a.extend(ids);
    // A task listed a moment ago may be gone already (scale-down): inspect prints the others
    // and fails for that one.
    let (ok, out, err) = docker_raw(&a)?;
    if !ok && !err.contains("not found") {
        bail!("docker inspect of tasks failed: {}", err.trim());
    }
    let v: Value = serde_json::from_str(&out)
        .with_context(|| format!("docker inspect of tasks: {}", err.trim()))?;
    let mut out = Vec::new();
    for t in v.as_array().cloned().unwrap_or_default() {
        let ts = |v: &Value| v.as_str().and_then(rfc3339_ms).unwrap_or(0);
        out.push(Task {
            created_ms: ts(&t["CreatedAt"]),
            timestamp_ms: ts(&t["Status"]["Timestamp"]),
            state: t["Status"]["State"].as_str().unwrap_or("").to_string(),
            desired: t["DesiredState"].as_str().unwrap_or("").to_string(),
        });
    }
    Ok(out)
}

/// Milliseconds since the epoch of `2026-11-26T13:25:01.535456532Z` (UTC only).
fn rfc3339_ms(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (h, min, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let frac: String = frac.chars().chain("000".chars()).take(3).collect();
    let ms: i64 = frac.parse().ok()?;
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + min) * 60_000 + sec * 1000 + ms)
}

fn swarm_running(tasks: &[Task]) -> Vec<&Task> {
    tasks
        .iter()
        .filter(|t| t.desired == "running" && t.state == "running")
        .collect()
}

/// Polls the service's tasks until `done` accepts them.
fn swarm_wait(name: &str, done: impl Fn(&[Task]) -> bool) -> Result<Vec<Task>> {
    let started = Instant::now();
    loop {
        check_interrupted()?;
        let t = tasks(name)?;
        if done(&t) {
            return Ok(t);
        }
        if started.elapsed() > WAIT {
            let mut states = std::collections::BTreeMap::new();
            for t in &t {
                *states
                    .entry(format!("{} -> {}", t.state, t.desired))
                    .or_insert(0usize) += 1;
            }
            bail!("Swarm service {name} did not converge within {WAIT:?}: {states:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until no container of `service` (any of ours if None) is left on the engine.
fn wait_swarm_containers_gone(service: Option<&str>) -> Result<()> {
    let filter = match service {
        Some(s) => format!("label=com.docker.swarm.service.name={s}"),
        None => "label=com.docker.swarm.service.name".to_string(),
    };
    let started = Instant::now();
    loop {
        let left = docker(&["ps", "-aq", "--filter", &filter])?;
        let left = left.split_whitespace().count();
        if left == 0 {
            return Ok(());
        }
        if started.elapsed() > WAIT {
            bail!("{left} Swarm containers still there after {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn swarm_create(name: &str, replicas: usize, image: &str) -> Result<()> {
    let replicas = replicas.to_string();
    docker(&[
        "service",
        "create",
        "-d",
        "--no-resolve-image",
        "--name",
        name,
        "--replicas",
        &replicas,
        image,
        TASK_COMMAND[0],
        TASK_COMMAND[1],
        TASK_COMMAND[2],
    ])?;
    Ok(())
}

fn swarm_remove(name: &str) -> Result<()> {
    docker(&["service", "rm", name])?;
    wait_swarm_containers_gone(Some(name))
}

fn measure_swarm(guard: &mut SwarmGuard, args: &Args) -> Result<Side> {
    println!("== Docker Swarm ==");
    docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"])?;
    guard.created_swarm = true;
    let image = import_image(guard)?;

    let warm = format!("{PREFIX}warm");
    swarm_create(&warm, 1, &image)?;
    swarm_wait(&warm, |t| swarm_running(t).len() == 1)?;
    swarm_remove(&warm)?;

    let n = args.replicas;
    let mut bulk_runs = Vec::new();
    let mut samples = Vec::new();
    for run in 0..args.runs {
        let name = format!("{PREFIX}bulk{run}");
        let created = ours::now_ms();
        swarm_create(&name, n, &image)?;
        let tasks = swarm_wait(&name, |t| swarm_running(t).len() == n)?;
        let up = swarm_running(&tasks);
        let last = up.iter().map(|t| t.timestamp_ms).max().unwrap_or(created);
        let total_ms = (last - created).max(0) as f64;
        let run_samples: Vec<Duration> = up
            .iter()
            .map(|t| Duration::from_millis((t.timestamp_ms - t.created_ms).max(0) as u64))
            .collect();
        let tasks = Summary::of(&run_samples);
        println!(
            "Swarm bulk run {}: {n} running {total_ms:.0} ms after create; per task p50 {:.0} ms p99 {:.0} ms",
            run + 1,
            tasks.p50_ms,
            tasks.p99_ms
        );
        samples.extend(run_samples);
        bulk_runs.push(BulkRun { total_ms, tasks });
        swarm_remove(&name)?;
    }

    let mut single = Vec::new();
    for run in 0..args.single_runs {
        let name = format!("{PREFIX}one{run}");
        swarm_create(&name, 1, &image)?;
        let tasks = swarm_wait(&name, |t| swarm_running(t).len() == 1)?;
        let t = swarm_running(&tasks)[0];
        single.push(Duration::from_millis(
            (t.timestamp_ms - t.created_ms).max(0) as u64,
        ));
        swarm_remove(&name)?;
    }
    let s = Summary::of(&single);
    println!(
        "Swarm one-task services: {} created one at a time, create to running p50 {:.0} ms p99 {:.0} ms",
        s.count, s.p50_ms, s.p99_ms
    );

    let name = format!("{PREFIX}scale");
    swarm_create(&name, SCALE_FROM, &image)?;
    swarm_wait(&name, |t| swarm_running(t).len() == SCALE_FROM)?;
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for run in 0..args.scale_runs {
        let started = ours::now_ms();
        docker(&["service", "scale", "-d", &format!("{name}={SCALE_TO}")])?;
        let tasks = swarm_wait(&name, |t| swarm_running(t).len() == SCALE_TO)?;
        let last = swarm_running(&tasks)
            .iter()
            .filter(|t| t.created_ms >= started)
            .map(|t| t.timestamp_ms)
            .max()
            .unwrap_or(started);
        let up_ms = (last - started).max(0);
        let started = ours::now_ms();
        docker(&["service", "scale", "-d", &format!("{name}={SCALE_FROM}")])?;
        let tasks = swarm_wait(&name, |t| {
            t.iter().filter(|t| t.state == "running").count() == SCALE_FROM
                && t.iter()
                    .all(|t| t.desired == "running" || t.state != "running")
        })?;
        let last = tasks
            .iter()
            .filter(|t| t.desired != "running" && t.timestamp_ms >= started)
            .map(|t| t.timestamp_ms)
            .max()
            // Swarm deletes the removed tasks once stopped: then the poll's own time.
            .unwrap_or_else(ours::now_ms);
        let down_ms = (last - started).max(0);
        println!(
            "Swarm scale run {}: {SCALE_FROM} -> {SCALE_TO} running {up_ms} ms, {SCALE_TO} -> {SCALE_FROM} stopped {down_ms} ms",
            run + 1
        );
        up.push(Duration::from_millis(up_ms as u64));
        down.push(Duration::from_millis(down_ms as u64));
    }
    swarm_remove(&name)?;
    Ok(side(bulk_runs, &samples, &single, &up, &down))
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339() {
        assert_eq!(super::rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(
            super::rfc3339_ms("2026-11-26T13:25:01.535456532Z"),
            Some(1_795_699_501_535)
        );
    }
}

//! The scale scenario: many simulated agents against a real 3-manager cluster, and many tasks
//! placed on them.
//!
//! Simulated agents: real mTLS gRPC sessions and heartbeats against the real managers; a fake
//! runtime that reports RUNNING without starting containers. Each one joins like a real agent
//! (worker join token, CSR, `Ca.IssueCertificate` with the CA pinned by the token), keeps a
//! `Dispatcher.Session` stream with the leader (following the `leader-addr` hint), sends
//! `Heartbeat` at the period the session gives, and answers every assignment with an
//! `UpdateTaskStatus`: "running" for a task whose desired state is running, "shutdown" for one
//! whose desired state is beyond it. A node's reports are batched and flushed every 100 ms.

use crate::client::{self, CALL_TIMEOUT, Control, describe};
use agent::daemon::session::Beat;
use crate::wait::Deadline;
use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use identity::Credentials;
use proto::v1 as pb;
use proto::v1::dispatcher_client::DispatcherClient;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// How often a simulated agent flushes its queued status reports.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// The heartbeat period until the session says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The address the simulated nodes advertise (nothing listens there).
const SIM_ADVERTISE: &str = "127.0.0.9";
/// An image that is never resolved nor pulled (the runtime is fake).
pub const SIM_IMAGE: &str =
    "busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// Counters shared by every simulated agent.
#[derive(Default, Debug)]
pub struct AgentCounters {
    /// Sessions opened (a first message received), reconnections included.
    pub sessions_opened: AtomicU64,
    /// Sessions that ended or broke after being open.
    pub sessions_ended: AtomicU64,
    /// Redirects followed (`FailedPrecondition` with `leader-addr`).
    pub redirects: AtomicU64,
    /// Session attempts that failed otherwise (connect error, refusal).
    pub session_failures: AtomicU64,
    pub heartbeats: AtomicU64,
    pub heartbeat_failures: AtomicU64,
    /// Task states reported (accepted by the manager).
    pub reports: AtomicU64,
    /// `UpdateTaskStatus` calls accepted.
    pub report_calls: AtomicU64,
    pub report_failures: AtomicU64,
    /// The latest error of each kind (connect, session, heartbeat, report).
    pub last_errors: Mutex<std::collections::BTreeMap<&'static str, String>>,
}

/// A snapshot of [`AgentCounters`], for the report.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AgentStats {
    pub sessions_opened: u64,
    pub sessions_ended: u64,
    pub redirects: u64,
    pub session_failures: u64,
    pub heartbeats: u64,
    pub heartbeat_failures: u64,
    pub reports: u64,
    pub report_calls: u64,
    pub report_failures: u64,
    pub last_errors: std::collections::BTreeMap<String, String>,
}

impl AgentCounters {
    pub fn snapshot(&self) -> AgentStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AgentStats {
            sessions_opened: get(&self.sessions_opened),
            sessions_ended: get(&self.sessions_ended),
            redirects: get(&self.redirects),
            session_failures: get(&self.session_failures),
            heartbeats: get(&self.heartbeats),
            heartbeat_failures: get(&self.heartbeat_failures),
            reports: get(&self.reports),
            report_calls: get(&self.report_calls),
            report_failures: get(&self.report_failures),
            last_errors: self
                .last_errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    /// Counts a failure of `kind` and keeps its message.
    fn failed(&self, counter: &AtomicU64, kind: &'static str, message: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.last_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind, message);
    }
}

/// A joined simulated node.
#[derive(Clone)]
pub struct SimNode {
    pub hostname: String,
    pub node_id: String,
    pub creds: Credentials,
}

/// Joins `count` simulated nodes (`{prefix}{i}`) through `addr` with the worker `token`, at most
/// `concurrency` at a time, each exactly as an agent joins (see [`client::join_worker`]).
pub async fn join_nodes(
    addr: &str,
    token: &str,
    prefix: &str,
    count: usize,
    concurrency: usize,
    deadline: Deadline,
) -> Result<Vec<SimNode>> {
    let joins = futures::stream::iter(0..count)
        .map(|i| async move {
            let hostname = format!("{prefix}{i}");
            let mut attempt = 0;
            loop {
                attempt += 1;
                match client::join_worker(addr, token, &hostname).await {
                    Ok((creds, node_id)) => {
                        return Ok(SimNode {
                            hostname,
                            node_id,
                            creds,
                        });
                    }
                    Err(e) if attempt < 5 && !deadline.passed() => {
                        eprintln!("bench-scale: join of {hostname} failed (retrying): {e:#}");
                        tokio::time::sleep(BACKOFF_MIN * attempt).await;
                    }
                    Err(e) => return Err(e.context(format!("joining {hostname}"))),
                }
            }
        })
        .buffer_unordered(concurrency.max(1));
    let all = tokio::time::timeout(
        deadline.remaining(),
        joins.collect::<Vec<Result<SimNode>>>(),
    )
    .await
    .map_err(|_| anyhow!("joining {count} simulated nodes did not finish in time"))?;
    all.into_iter().collect()
}

/// The running simulated agents; aborted on drop.
pub struct Agents {
    pub counters: Arc<AgentCounters>,
    handles: Vec<JoinHandle<()>>,
}

impl Agents {
    /// Starts one simulated agent per node, each with its own mTLS connection, first trying
    /// `addrs[i % addrs.len()]` (followers redirect it to the leader).
    pub fn start(nodes: &[SimNode], addrs: &[String]) -> Agents {
        let counters = Arc::new(AgentCounters::default());
        let handles = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let mut order = addrs.to_vec();
                order.rotate_left(i % addrs.len().max(1));
                tokio::spawn(run_agent(node.clone(), order, counters.clone()))
            })
            .collect();
        Agents { counters, handles }
    }

    /// Sessions currently open.
    pub fn open_sessions(&self) -> u64 {
        let opened = self.counters.sessions_opened.load(Ordering::Relaxed);
        let ended = self.counters.sessions_ended.load(Ordering::Relaxed);
        opened.saturating_sub(ended)
    }

    pub fn stop(&mut self) {
        for h in self.handles.drain(..) {
            h.abort();
        }
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One simulated agent: a session with the leader forever, reconnecting with bounded backoff.
async fn run_agent(node: SimNode, mut addrs: Vec<String>, counters: Arc<AgentCounters>) {
    let mut next = 0usize;
    let mut backoff = BACKOFF_MIN;
    loop {
        let addr = addrs[next % addrs.len()].clone();
        match session_once(&node, &addr, &counters).await {
            SessionEnd::Leader(leader) => {
                counters.redirects.fetch_add(1, Ordering::Relaxed);
                if !addrs.contains(&leader) {
                    addrs.push(leader.clone());
                }
                next = addrs.iter().position(|a| *a == leader).unwrap_or(0);
                tokio::time::sleep(BACKOFF_MIN).await;
                continue;
            }
            SessionEnd::Ended { opened } => {
                if opened {
                    backoff = BACKOFF_MIN;
                }
                next += 1;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

enum SessionEnd {
    Leader(String),
    Ended { opened: bool },
}

/// What the fake runtime has reported per task: the last state sent.
type Reported = HashMap<String, &'static str>;

async fn session_once(node: &SimNode, addr: &str, counters: &Arc<AgentCounters>) -> SessionEnd {
    let channel = match tokio::time::timeout(
        client::CONNECT_TIMEOUT,
        identity::connect(addr, &node.creds),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            counters.failed(
                &counters.session_failures,
                "connect",
                format!("{addr}: {e}"),
            );
            return SessionEnd::Ended { opened: false };
        }
        Err(_) => {
            counters.failed(
                &counters.session_failures,
                "connect",
                format!("{addr}: timed out"),
            );
            return SessionEnd::Ended { opened: false };
        }
    };
    let mut client = DispatcherClient::new(channel.clone());
    let request = pb::SessionRequest {
        hostname: node.hostname.clone(),
        addr: SIM_ADVERTISE.to_string(),
        ..Default::default()
    };
    let mut stream = match tokio::time::timeout(CALL_TIMEOUT, client.session(request)).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(status)) => {
            if status.code() == tonic::Code::FailedPrecondition
                && let Some(leader) = status
                    .metadata()
                    .get("leader-addr")
                    .and_then(|v| v.to_str().ok())
                && !leader.is_empty()
                && leader != addr
            {
                return SessionEnd::Leader(leader.to_string());
            }
            counters.failed(
                &counters.session_failures,
                "session",
                format!("{addr}: {}", describe(&status)),
            );
            return SessionEnd::Ended { opened: false };
        }
        Err(_) => {
            counters.failed(
                &counters.session_failures,
                "session",
                format!("{addr}: no answer within {CALL_TIMEOUT:?}"),
            );
            return SessionEnd::Ended { opened: false };
        }
    };
    let queue: Arc<Mutex<Vec<pb::TaskStatus>>> = Arc::default();
    let (period_tx, period_rx) = tokio::sync::watch::channel(DEFAULT_HEARTBEAT);
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let mut reported: Reported = HashMap::new();
    let mut opened = false;
    loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                counters
                    .last_errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert("session-end", format!("{addr}: ended by the manager"));
                break;
            }
            Err(status) => {
                counters
                    .last_errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert("session-end", format!("{addr}: {}", describe(&status)));
                break;
            }
        };
        if !opened {
            opened = true;
            counters.sessions_opened.fetch_add(1, Ordering::Relaxed);
            workers.push(tokio::spawn(heartbeats(
                channel.clone(),
                msg.session_id.clone(),
                period_rx.clone(),
                counters.clone(),
            )));
            workers.push(tokio::spawn(reporter(
                channel.clone(),
                msg.session_id.clone(),
                queue.clone(),
                counters.clone(),
            )));
        }
        if msg.heartbeat_period_ms > 0 {
            let period = Duration::from_millis(u64::from(msg.heartbeat_period_ms));
            period_tx.send_if_modified(|p| std::mem::replace(p, period) != period);
        }
        if msg.kind == "full" {
            let live: std::collections::HashSet<&str> = msg
                .assignments
                .iter()
                .filter_map(|a| a.task.as_ref().map(|t| t.id.as_str()))
                .collect();
            reported.retain(|id, _| live.contains(id.as_str()));
        }
        for id in &msg.removed {
            reported.remove(id);
        }
        if !msg.removed.is_empty() {
            let removed: std::collections::HashSet<&str> =
                msg.removed.iter().map(String::as_str).collect();
            queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|u| !removed.contains(u.task_id.as_str()));
        }
        let mut fresh = Vec::new();
        for task in msg.assignments.iter().filter_map(|a| a.task.as_ref()) {
            let want: &'static str = if task.desired_state == "running" {
                "running"
            } else if is_beyond_running(&task.desired_state) {
                "shutdown"
            } else {
                continue;
            };
            // Already there (observed), or already told: nothing to say.
            if task.state == want || (want == "running" && is_beyond_running(&task.state)) {
                reported.insert(task.id.clone(), want);
                continue;
            }
            if reported.get(&task.id) == Some(&want) {
                continue;
            }
            reported.insert(task.id.clone(), want);
            fresh.push(pb::TaskStatus {
                task_id: task.id.clone(),
                state: want.to_string(),
                message: "simulated".to_string(),
                timestamp_ms: now_ms(),
                container_id: format!("sim-{}", task.id),
                ..Default::default()
            });
        }
        if !fresh.is_empty() {
            queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(fresh);
        }
    }
    for w in workers {
        w.abort();
    }
    if opened {
        counters.sessions_ended.fetch_add(1, Ordering::Relaxed);
    }
    SessionEnd::Ended { opened }
}

/// The index `i` in a refusal that names `updates[i]`.
fn refused_index(message: &str) -> Option<usize> {
    let rest = &message[message.find("updates[")? + "updates[".len()..];
    rest[..rest.find(']')?].parse().ok()
}

/// Whether a task state lies beyond running (complete, shutdown, failed, rejected, remove,
/// orphaned).
fn is_beyond_running(state: &str) -> bool {
    matches!(
        state,
        "complete" | "shutdown" | "failed" | "rejected" | "remove" | "orphaned"
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The agent's own heartbeat schedule, counted.
async fn heartbeats(
    channel: Channel,
    session_id: String,
    period: tokio::sync::watch::Receiver<Duration>,
    counters: Arc<AgentCounters>,
) {
    agent::daemon::session::heartbeats(channel, session_id, period, |beat| match beat {
        Beat::Answered => {
            counters.heartbeats.fetch_add(1, Ordering::Relaxed);
        }
        Beat::Refused(status) => {
            counters.failed(&counters.heartbeat_failures, "heartbeat", describe(&status));
        }
        Beat::Unanswered(timeout) => {
            counters.failed(
                &counters.heartbeat_failures,
                "heartbeat",
                format!("no answer within {timeout:?}"),
            );
        }
    })
    .await
}

/// Flushes the queued reports every [`FLUSH_EVERY`], retrying a failed batch.
async fn reporter(
    channel: Channel,
    session_id: String,
    queue: Arc<Mutex<Vec<pb::TaskStatus>>>,
    counters: Arc<AgentCounters>,
) {
    let mut client = DispatcherClient::new(channel);
    let mut backoff = BACKOFF_MIN;
    loop {
        tokio::time::sleep(FLUSH_EVERY).await;
        let batch = std::mem::take(&mut *queue.lock().unwrap_or_else(|e| e.into_inner()));
        if batch.is_empty() {
            continue;
        }
        let n = batch.len() as u64;
        let request = pb::UpdateTaskStatusRequest {
            session_id: session_id.clone(),
            updates: batch.clone(),
        };
        match tokio::time::timeout(CALL_TIMEOUT, client.update_task_status(request)).await {
            Ok(Ok(_)) => {
                counters.reports.fetch_add(n, Ordering::Relaxed);
                counters.report_calls.fetch_add(1, Ordering::Relaxed);
                backoff = BACKOFF_MIN;
            }
            outcome => {
                let status = match outcome {
                    Ok(Err(status)) => status,
                    _ => tonic::Status::deadline_exceeded(format!(
                        "no answer within {CALL_TIMEOUT:?}"
                    )),
                };
                counters.failed(&counters.report_failures, "report", describe(&status));
                let mut batch = batch;
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument | tonic::Code::PermissionDenied
                ) {
                    // One report the manager will never take (the task left this node):
                    // drop it, or the whole batch if it does not say which.
                    match refused_index(status.message()).filter(|&i| i < batch.len()) {
                        Some(i) => {
                            batch.remove(i);
                        }
                        None => batch.clear(),
                    }
                }
                {
                    let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                    let newer = std::mem::replace(&mut *q, batch);
                    q.extend(newer);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Sizes and limits of one run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    pub agents: usize,
    pub services: usize,
    pub replicas: usize,
    /// Joins in flight at once.
    pub join_concurrency: usize,
    /// `CreateService` calls in flight at once.
    pub create_concurrency: usize,
    /// Bound of each phase (joins + sessions; creates to all running).
    #[serde(skip)]
    pub timeout: Duration,
    /// The managers' flags.
    #[serde(skip)]
    pub tuning: crate::Tuning,
}

impl Plan {
    pub fn tasks(&self) -> usize {
        self.services * self.replicas
    }
}

/// What one run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunResult {
    pub run: usize,
    pub tasks: usize,
    /// All simulated nodes joined (certificates issued), from the first join.
    pub join_s: f64,
    /// From the first join until every simulated node is READY on the leader.
    pub ready_s: f64,
    /// From the first `CreateService` until all of them were answered.
    pub create_s: f64,
    /// From the first `CreateService` until every service reports running == replicas.
    pub converge_s: f64,
    pub placements_per_sec: f64,
    /// `GetService` on one service every 50 ms while the run converges.
    pub api_latency: crate::Summary,
    pub api_errors: usize,
    pub api_first_error: Option<String>,
    /// The leader's peak resident memory (VmHWM) and current one (VmRSS) after convergence.
    pub leader_vm_hwm_kib: u64,
    pub leader_vm_rss_kib: u64,
    /// Worker nodes not READY when the run converged (heartbeats missed under load).
    pub nodes_not_ready_at_end: usize,
    /// Whether the leader at the end is the one the run started with.
    pub same_leader: bool,
    /// The Raft term when the creates began and at the end (a higher one: elections during
    /// the run).
    pub raft_terms: (u64, u64),
    /// (seconds since the first create, tasks running) at every poll.
    pub progress: Vec<(f64, u64)>,
    pub agents: AgentStats,
}

const SERVICE_PREFIX: &str = "scale-";
/// `ListServices` polls while the agents still wait for some of their reports to be accepted
/// (progress only: a poll counts every task of every service on the leader).
const POLL_EVERY: Duration = Duration::from_secs(2);
/// `ListServices` polls once every task has had a report accepted (convergence is near).
const POLL_EVERY_NEAR: Duration = Duration::from_millis(50);
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// `ListNodes` polls while the nodes join.
const READY_POLL_EVERY: Duration = Duration::from_millis(250);

/// Waits before the next `ListServices` poll: [`POLL_EVERY_NEAR`] once the simulated agents have
/// had at least `tasks` status reports accepted (a report is accepted once committed, so the
/// tasks should all be running), else until that happens or [`POLL_EVERY`] has passed. The
/// figure still comes from the manager's answer; the agents' counter only says when to ask.
async fn pause_before_poll(counters: &AgentCounters, tasks: usize) {
    let near = || counters.reports.load(Ordering::Relaxed) >= tasks as u64;
    if near() {
        tokio::time::sleep(POLL_EVERY_NEAR).await;
        return;
    }
    let until = Instant::now() + POLL_EVERY;
    while Instant::now() < until && !near() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One run on a fresh 3-manager cluster: join the simulated nodes, open their sessions, then
/// create the services and time them to all running. The cluster is gone when this returns.
pub async fn run_once(plan: &Plan, run: usize) -> Result<RunResult> {
    let say = |m: String| eprintln!("bench-scale: run {run}: {m}");
    let mut lab = crate::Lab::cluster("bench-scale", 3, plan.tuning.clone()).await?;
    let leader = lab.wait_leader(crate::lab::CONVERGE_TIMEOUT).await?;
    let leader_addr = lab.addr(leader).to_string();
    let start_info = lab.info(leader).await?;
    let leader_id = start_info.leader_id;
    let mut control = lab.control(leader).await?;
    let token = client::join_token(&mut control, "worker", false)
        .await
        .map_err(|s| anyhow!("GetJoinToken(worker): {}", describe(&s)))?;

    // Joins and sessions.
    say(format!(
        "3 managers up (leader {}); joining {} simulated nodes, {} at a time",
        lab.hostname(leader),
        plan.agents,
        plan.join_concurrency
    ));
    let deadline = Deadline::after(plan.timeout);
    let started = Instant::now();
    let nodes = join_nodes(
        &leader_addr,
        &token,
        "sim-",
        plan.agents,
        plan.join_concurrency,
        deadline,
    )
    .await?;
    let join_s = started.elapsed().as_secs_f64();
    let addrs: Vec<String> = (0..3).map(|i| lab.addr(i).to_string()).collect();
    let mut agents = Agents::start(&nodes, &addrs);
    drop(nodes);
    say(format!(
        "joined in {join_s:.1} s; waiting for {} READY nodes",
        plan.agents
    ));
    wait_ready(&mut control, plan.agents, &agents, deadline).await?;
    let ready_s = started.elapsed().as_secs_f64();
    say(format!(
        "{} nodes READY after {ready_s:.1} s; creating {} services x {} replicas",
        plan.agents, plan.services, plan.replicas
    ));

    // Creates, sampler, poller.
    let deadline = Deadline::after(plan.timeout);
    let t0 = Instant::now();
    create_service(&mut control, 0, plan.replicas, deadline).await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn(sample_api(
        lab.control(leader).await?,
        format!("{SERVICE_PREFIX}0"),
        stop.clone(),
    ));
    let creator = {
        let channel = client::channel(&leader_addr, &lab.admin().credentials).await?;
        let (services, replicas, concurrency) =
            (plan.services, plan.replicas, plan.create_concurrency);
        tokio::spawn(async move {
            let results: Vec<Result<()>> = futures::stream::iter(1..services)
                .map(|i| {
                    let mut c = client::control_on(channel.clone());
                    async move { create_service(&mut c, i, replicas, deadline).await }
                })
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await;
            results.into_iter().collect::<Result<Vec<()>>>()?;
            Ok::<Duration, anyhow::Error>(t0.elapsed())
        })
    };
    let mut pollers = Vec::new();
    for i in 0..lab.managers.len() {
        pollers.push(lab.control(i).await?);
    }
    let mut poll_on = leader;
    let mut creator = Some(creator);
    let mut create_s = None;
    let mut progress = Vec::new();
    let mut last_report = Instant::now();
    let converge = loop {
        if let Some(c) = creator.as_ref()
            && c.is_finished()
        {
            let c = creator.take().expect("checked");
            let took = c.await.context("the creator task")??;
            create_s = Some(took.as_secs_f64());
        }
        // Polled on the first leader; a manager that cannot answer (no quorum, lagging
        // behind) hands the polling to the next one.
        match list_running(&mut pollers[poll_on]).await {
            Ok((count, running, all_running)) => {
                let elapsed = t0.elapsed();
                progress.push((elapsed.as_secs_f64(), running));
                if count == plan.services && all_running && creator.is_none() {
                    break elapsed;
                }
                if last_report.elapsed() >= Duration::from_secs(5) {
                    last_report = Instant::now();
                    let raft = match lab.info(leader).await {
                        Ok(i) => format!("term {}, leader {:016x}", i.raft_term, i.leader_id),
                        Err(e) => format!("Info: {e:#}"),
                    };
                    say(format!(
                        "{:.1} s: {count} services, {running} of {} tasks running ({} sessions open; {raft})",
                        elapsed.as_secs_f64(),
                        plan.tasks(),
                        agents.open_sessions()
                    ));
                }
            }
            Err(status) if client::is_transient(&status) => {
                poll_on = (poll_on + 1) % pollers.len();
                if last_report.elapsed() >= Duration::from_secs(5) {
                    last_report = Instant::now();
                    say(format!(
                        "{:.1} s: ListServices failed ({}); {} sessions open",
                        t0.elapsed().as_secs_f64(),
                        describe(&status),
                        agents.open_sessions()
                    ));
                }
            }
            Err(status) => bail!("ListServices: {}", describe(&status)),
        }
        if deadline.passed() {
            stop.store(true, Ordering::Relaxed);
            let (at, last) = progress.last().copied().unwrap_or((0.0, 0));
            bail!(
                "timed out after {:?}: {last} of {} tasks running at the last answered poll \
                 ({at:.1} s after the first create; {} polls answered) (creates {}); agents: {:?}",
                plan.timeout,
                plan.tasks(),
                progress.len(),
                if creator.is_some() {
                    "still running"
                } else {
                    "done"
                },
                agents.counters.snapshot()
            );
        }
        pause_before_poll(&agents.counters, plan.tasks()).await;
    };
    stop.store(true, Ordering::Relaxed);
    let (latencies, api_errors, api_first_error) = sampler.await.context("the sampler task")?;
    // The leader at the end (the first one unless leadership moved).
    let end_leader = match lab.info(poll_on).await {
        Ok(info) => lab.index_of(info.leader_id).unwrap_or(leader),
        Err(_) => leader,
    };
    let leader_pid = lab.managers[end_leader]
        .pid()
        .ok_or_else(|| anyhow!("the leader has no process"))?;
    let (vm_hwm, vm_rss) = proc_memory(leader_pid)?;
    let nodes = client::list_nodes(&mut pollers[end_leader], CALL_TIMEOUT)
        .await
        .map_err(|s| anyhow!("ListNodes: {}", describe(&s)))?;
    let not_ready = nodes
        .iter()
        .filter(|n| n.role == "worker" && n.state != "ready")
        .count();
    let end_info = lab.info(end_leader).await.ok();
    let same_leader =
        end_leader == leader && end_info.as_ref().map(|i| i.leader_id) == Some(leader_id);
    let end_term = end_info.map(|i| i.raft_term).unwrap_or(0);
    let converge_s = converge.as_secs_f64();
    let result = RunResult {
        run,
        tasks: plan.tasks(),
        join_s,
        ready_s,
        create_s: create_s.unwrap_or(converge_s),
        converge_s,
        placements_per_sec: plan.tasks() as f64 / converge_s.max(1e-9),
        api_latency: crate::Summary::of(&latencies),
        api_errors,
        api_first_error,
        leader_vm_hwm_kib: vm_hwm,
        leader_vm_rss_kib: vm_rss,
        nodes_not_ready_at_end: not_ready,
        same_leader,
        raft_terms: (start_info.raft_term, end_term),
        progress,
        agents: agents.counters.snapshot(),
    };
    say(format!(
        "{} tasks running after {converge_s:.2} s: {:.0} placements/s; API p50 {:.2} ms p99 {:.2} ms; leader VmHWM {} MiB",
        result.tasks,
        result.placements_per_sec,
        result.api_latency.p50_ms,
        result.api_latency.p99_ms,
        vm_hwm / 1024
    ));
    agents.stop();
    lab.passed();
    Ok(result)
}

/// Waits until the leader lists `want` READY worker nodes.
async fn wait_ready(
    control: &mut Control,
    want: usize,
    agents: &Agents,
    deadline: Deadline,
) -> Result<()> {
    let mut last = String::from("no answer yet");
    while !deadline.passed() {
        match client::list_nodes(control, CALL_TIMEOUT).await {
            Ok(nodes) => {
                let ready = nodes
                    .iter()
                    .filter(|n| n.role == "worker" && n.state == "ready")
                    .count();
                if ready >= want {
                    return Ok(());
                }
                last = format!(
                    "{ready} of {want} READY, {} sessions open",
                    agents.open_sessions()
                );
            }
            Err(status) => last = describe(&status),
        }
        tokio::time::sleep(READY_POLL_EVERY).await;
    }
    bail!(
        "the simulated nodes were not all READY in time: {last}; agents: {:?}",
        agents.counters.snapshot()
    )
}

/// `CreateService` of `scale-{i}` with `replicas` replicas, not waiting for its tasks; a
/// transient failure (no leader, no quorum) is retried until `deadline` (a retry finding the
/// service created counts as done).
async fn create_service(
    control: &mut Control,
    i: usize,
    replicas: usize,
    deadline: Deadline,
) -> Result<()> {
    let spec = pb::ServiceSpec {
        name: format!("{SERVICE_PREFIX}{i}"),
        image: SIM_IMAGE.to_string(),
        mode: Some(pb::ServiceMode {
            kind: "replicated".into(),
            replicas: Some(replicas as u64),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let request = pb::CreateServiceRequest {
            spec: Some(spec.clone()),
            no_resolve_image: true,
        };
        match client::call(CALL_TIMEOUT, control.create_service(request)).await {
            Ok(_) => return Ok(()),
            Err(s) if attempt > 1 && s.code() == tonic::Code::AlreadyExists => return Ok(()),
            Err(s) if client::is_transient(&s) && !deadline.passed() => {
                tokio::time::sleep((BACKOFF_MIN * attempt).min(BACKOFF_MAX)).await;
            }
            Err(s) => bail!("CreateService {}: {}", spec.name, describe(&s)),
        }
    }
}

/// (services, tasks running, whether every service runs all its replicas).
async fn list_running(control: &mut Control) -> Result<(usize, u64, bool), tonic::Status> {
    let request = pb::ListServicesRequest {
        filters: [("name".to_string(), SERVICE_PREFIX.to_string())]
            .into_iter()
            .collect(),
    };
    let services = client::call(CALL_TIMEOUT, control.list_services(request))
        .await?
        .services;
    let running = services.iter().map(|s| s.running).sum();
    let all = services
        .iter()
        .all(|s| s.desired > 0 && s.running >= s.desired);
    Ok((services.len(), running, all))
}

/// `GetService` on `name` every [`SAMPLE_EVERY`] until `stop`: the latencies of the answered
/// calls, the number of failed ones and the first failure.
async fn sample_api(
    mut control: Control,
    name: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Vec<Duration>, usize, Option<String>) {
    let mut latencies = Vec::new();
    let (mut errors, mut first) = (0, None);
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let sent = Instant::now();
        let request = pb::GetServiceRequest {
            reference: name.clone(),
        };
        match client::call(CALL_TIMEOUT, control.get_service(request)).await {
            Ok(_) => latencies.push(sent.elapsed()),
            Err(s) => {
                errors += 1;
                first.get_or_insert_with(|| describe(&s));
            }
        }
    }
    (latencies, errors, first)
}

/// VmHWM and VmRSS of process `pid`, in KiB.
pub fn proc_memory(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("{path} has no {name}"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

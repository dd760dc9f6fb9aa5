//! Health checks as Docker Swarm runs them: the service's test runs inside each running
//! container every `interval` (first one `interval` after the start), each run bounded by
//! `timeout` (a run that times out is killed and is a failure).
//!
//! - [`Monitor`]: the pure state machine (Docker's rules): `starting` until the first success
//!   (`healthy`); `unhealthy` after `retries` consecutive failures, failures within the start
//!   period not counted while still `starting`.
//! - [`Probes`]: one prober task per running container with a check. Each change of health is
//!   reported as a RUNNING status with `health` set; on `unhealthy` the prober stops the
//!   container, and the executor reports its exit as FAILED ("unhealthy container"), so the
//!   manager's restart supervisor replaces the task.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::v1::{Assignment, ServiceSpec, TaskStatus};
use tokio::task::AbortHandle;

use super::container::status;
use super::executor::StatusQueue;
use crate::runtime::runc::RuncError;
use crate::runtime::{ContainerRuntime, DEFAULT_STOP_GRACE, ExecOptions, RuntimeError, Signal};

/// Docker's defaults for absent values.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RETRIES: u32 = 3;

/// The error of a task whose container was stopped for being unhealthy.
pub const UNHEALTHY_ERROR: &str = "unhealthy container";

/// A service's health check, ready to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// The command run inside the container (CMD-SHELL: `/bin/sh -c <line>`).
    pub args: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
    /// The grace of the stop that follows `unhealthy`.
    pub stop_grace: Duration,
}

impl Check {
    /// The spec's check; `None` without one (absent, NONE, or not a test this agent runs).
    pub fn of(spec: &ServiceSpec) -> Option<Check> {
        let hc = spec.healthcheck.as_ref()?;
        let args = match hc.test.split_first() {
            Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
            Some((kind, [line])) if kind == "CMD-SHELL" => {
                vec!["/bin/sh".into(), "-c".into(), line.clone()]
            }
            _ => return None,
        };
        let ms = |v: Option<u64>, default: Duration| {
            v.filter(|&v| v > 0).map_or(default, Duration::from_millis)
        };
        Some(Check {
            args,
            interval: ms(hc.interval_ms, DEFAULT_INTERVAL),
            timeout: ms(hc.timeout_ms, DEFAULT_TIMEOUT),
            retries: hc.retries.filter(|&r| r > 0).unwrap_or(DEFAULT_RETRIES),
            start_period: Duration::from_millis(hc.start_period_ms),
            stop_grace: spec
                .stop_grace_period_ms
                .map_or(DEFAULT_STOP_GRACE, Duration::from_millis),
        })
    }
}

/// A container's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// Docker's health state machine for one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Monitor {
    health: Health,
    /// Consecutive failures counted.
    failing: u32,
    retries: u32,
    start_period: Duration,
}

impl Monitor {
    pub fn new(retries: u32, start_period: Duration) -> Monitor {
        Monitor {
            health: Health::Starting,
            failing: 0,
            retries: retries.max(1),
            start_period,
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// Records the result of one probe run `since_start` after the container started; returns
    /// the new health when it changed.
    pub fn record(&mut self, success: bool, since_start: Duration) -> Option<Health> {
        let before = self.health;
        if success {
            self.failing = 0;
            self.health = Health::Healthy;
        } else if self.health == Health::Starting && since_start < self.start_period {
            // Still starting up: not counted.
        } else {
            self.failing += 1;
            if self.failing >= self.retries {
                self.health = Health::Unhealthy;
            }
        }
        (self.health != before).then_some(self.health)
    }
}

/// Turns the exit report of a container stopped for being unhealthy into Swarm's: FAILED,
/// "unhealthy container".
pub fn unhealthy_exit(st: &mut TaskStatus) {
    st.state = "failed".into();
    st.message = "task: unhealthy".into();
    st.error = UNHEALTHY_ERROR.into();
    st.health = Health::Unhealthy.as_str().into();
}

#[derive(Default)]
struct Inner {
    /// The prober of each probed container.
    running: HashMap<String, AbortHandle>,
    /// Containers their prober stopped for being unhealthy.
    unhealthy: HashSet<String>,
    /// Re-adopted containers waiting for their assignment (and so their check).
    adopted: HashSet<String>,
}

/// The probers of the executor's containers; clones share them.
#[derive(Clone, Default)]
pub struct Probes {
    inner: Arc<Mutex<Inner>>,
}

impl Probes {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// The probe of a container about to run for `assignment`, if its spec has a check.
    pub fn probe(&self, assignment: Option<&Assignment>, signal: Signal) -> Option<Probe> {
        let check = Check::of(assignment?.spec.as_ref()?)?;
        Some(Probe {
            check,
            signal,
            probes: self.clone(),
        })
    }

    /// Stops probing `id` (its container ended); whether it was stopped for being unhealthy.
    pub fn end(&self, id: &str) -> bool {
        self.with(|p| {
            p.adopted.remove(id);
            if let Some(h) = p.running.remove(id) {
                h.abort();
            }
            p.unhealthy.remove(id)
        })
    }

    /// A container running since before this agent process: probed once its assignment is
    /// known (see [`Probes::resume`]).
    pub fn adopted(&self, id: &str) {
        self.with(|p| p.adopted.insert(id.to_string()));
    }

    /// Starts probing the re-adopted containers whose assignment is known (once the full set
    /// of assignments is known, the others are forgotten: they are stopped anyway). Their
    /// health starts again at `starting`, reported at the first change.
    pub fn resume<R: ContainerRuntime>(
        &self,
        assigned: &BTreeMap<String, Assignment>,
        signal: Signal,
        runtime: &Arc<R>,
        statuses: &StatusQueue,
    ) {
        let adopted: Vec<String> = self.with(|p| p.adopted.drain().collect());
        for id in adopted {
            if let Some(probe) = self.probe(assigned.get(&id), signal) {
                let mut running = status(&id, "running", "started");
                running.container_id = id.clone();
                probe.spawn(runtime.clone(), running, statuses.clone());
            }
        }
    }
}

/// A check about to be run for one container.
pub struct Probe {
    check: Check,
    signal: Signal,
    probes: Probes,
}

impl Probe {
    /// Starts probing the container of `running` (its RUNNING report, about to be sent): the
    /// report says `starting`, the prober reports the changes after it.
    pub fn start<R: ContainerRuntime>(
        self,
        runtime: &Arc<R>,
        running: &mut TaskStatus,
        statuses: &StatusQueue,
    ) {
        running.health = Health::Starting.as_str().into();
        self.spawn(runtime.clone(), running.clone(), statuses.clone());
    }

    fn spawn<R: ContainerRuntime>(
        self,
        runtime: Arc<R>,
        running: TaskStatus,
        statuses: StatusQueue,
    ) {
        let id = running.task_id.clone();
        let probes = self.probes.clone();
        // Registered under the lock before it can report, so `end` always finds it.
        probes.with(|p| {
            let task = tokio::spawn(self.run(runtime, running, statuses));
            if let Some(old) = p.running.insert(id, task.abort_handle()) {
                old.abort();
            }
        });
    }

    async fn run<R: ContainerRuntime>(
        self,
        runtime: Arc<R>,
        running: TaskStatus,
        statuses: StatusQueue,
    ) {
        let id = running.task_id.clone();
        let started = tokio::time::Instant::now();
        let mut monitor = Monitor::new(self.check.retries, self.check.start_period);
        let opts = ExecOptions {
            args: self.check.args.clone(),
            timeout: Some(self.check.timeout),
            output_limit: 4096,
            ..Default::default()
        };
        loop {
            tokio::time::sleep(self.check.interval).await;
            let success = match runtime.exec(&id, &opts).await {
                Ok(out) if out.timed_out => {
                    tracing::debug!(task = %id, timeout = ?self.check.timeout, "health check timed out");
                    false
                }
                Ok(out) => {
                    if out.exit_code != Some(0) {
                        tracing::debug!(
                            task = %id,
                            code = ?out.exit_code,
                            output = %String::from_utf8_lossy(&out.stdout),
                            error = %String::from_utf8_lossy(&out.stderr),
                            "health check failed"
                        );
                    }
                    out.exit_code == Some(0)
                }
                // The container is gone: its exit ends this prober.
                Err(RuntimeError::NotFound(_) | RuntimeError::Runc(RuncError::NotRunning(_))) => {
                    return;
                }
                Err(e) => {
                    tracing::debug!(task = %id, error = %e, "health check could not run");
                    false
                }
            };
            let Some(health) = monitor.record(success, started.elapsed()) else {
                continue;
            };
            tracing::info!(task = %id, health = health.as_str(), "container health");
            let mut st = running.clone();
            st.timestamp_ms = status(&id, "running", "").timestamp_ms;
            st.health = health.as_str().into();
            if health == Health::Unhealthy {
                // Marked first: the exit this stop causes is reported as unhealthy.
                self.probes.with(|p| p.unhealthy.insert(id.clone()));
                statuses.push(st);
                if let Err(e) = runtime.stop(&id, self.signal, self.check.stop_grace).await {
                    tracing::warn!(task = %id, error = %e, "cannot stop the unhealthy container");
                }
                return;
            }
            statuses.push(st);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::HealthCheck;

    fn spec(test: &[&str]) -> ServiceSpec {
        ServiceSpec {
            healthcheck: Some(HealthCheck {
                test: test.iter().map(|t| t.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn checks_follow_dockers_test_forms_and_defaults() {
        let c = Check::of(&spec(&["CMD-SHELL", "test -f /tmp/ok"])).unwrap();
        assert_eq!(c.args, ["/bin/sh", "-c", "test -f /tmp/ok"]);
        assert_eq!(
            (
                c.interval,
                c.timeout,
                c.retries,
                c.start_period,
                c.stop_grace
            ),
            (
                DEFAULT_INTERVAL,
                DEFAULT_TIMEOUT,
                3,
                Duration::ZERO,
                DEFAULT_STOP_GRACE
            )
        );
        let mut s = spec(&["CMD", "curl", "-f", "http://localhost"]);
        let hc = s.healthcheck.as_mut().unwrap();
        (
            hc.interval_ms,
            hc.timeout_ms,
            hc.retries,
            hc.start_period_ms,
        ) = (Some(200), Some(100), Some(2), 1000);
        s.stop_grace_period_ms = Some(1);
        let c = Check::of(&s).unwrap();
        assert_eq!(c.args, ["curl", "-f", "http://localhost"]);
        assert_eq!(
            (
                c.interval,
                c.timeout,
                c.retries,
                c.start_period,
                c.stop_grace
            ),
            (
                Duration::from_millis(200),
                Duration::from_millis(100),
                2,
                Duration::from_secs(1),
                Duration::from_millis(1)
            )
        );
        for none in [
            spec(&["NONE"]),
            spec(&[]),
            spec(&["CMD"]),
            ServiceSpec::default(),
        ] {
            assert_eq!(Check::of(&none), None);
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn one_success_makes_healthy_and_retries_failures_unhealthy() {
        let mut m = Monitor::new(3, Duration::ZERO);
        assert_eq!(m.health(), Health::Starting);
        assert_eq!(m.record(false, S), None);
        assert_eq!(m.record(true, S), Some(Health::Healthy));
        assert_eq!(m.record(true, S), None);
        assert_eq!(m.record(false, S), None);
        assert_eq!(m.record(false, S), None);
        assert_eq!(m.record(true, S), None, "a success resets the streak");
        assert_eq!(m.record(false, S), None);
        assert_eq!(m.record(false, S), None);
        assert_eq!(m.record(false, S), Some(Health::Unhealthy));
        assert_eq!(m.record(false, S), None);
        assert_eq!(m.record(true, S), Some(Health::Healthy), "Docker's rule");
    }

    #[test]
    fn failures_while_starting_count_after_the_start_period() {
        let mut m = Monitor::new(2, 10 * S);
        for _ in 0..5 {
            assert_eq!(m.record(false, S), None, "within the start period");
        }
        assert_eq!(m.record(false, 11 * S), None);
        assert_eq!(m.record(false, 12 * S), Some(Health::Unhealthy));

        let mut m = Monitor::new(2, 10 * S);
        assert_eq!(m.record(false, S), None);
        assert_eq!(m.record(true, 2 * S), Some(Health::Healthy));
        assert_eq!(m.record(false, 3 * S), None);
        assert_eq!(
            m.record(false, 4 * S),
            Some(Health::Unhealthy),
            "after a success, failures count even within the start period"
        );

        let mut m = Monitor::new(0, Duration::ZERO);
        assert_eq!(
            m.record(false, S),
            Some(Health::Unhealthy),
            "at least one failure"
        );
    }

    /// Executor runs over the fake runtime: a check that succeeds, then one that fails.
    mod executor {
        use super::*;
        use crate::daemon::executor::{Collected, Executor, Images, Input, Prepared};
        use crate::daemon::plan::Keep;
        use crate::runtime::ExecOutput;
        use crate::runtime::fake::FakeRuntime;
        use proto::v1::Task;
        use std::path::PathBuf;
        use tokio::sync::mpsc;

        struct NoImages;

        impl Images for NoImages {
            async fn prepare(&self, reference: &str, task_id: &str) -> Result<Prepared, String> {
                Ok(Prepared {
                    image: reference.into(),
                    config: Default::default(),
                    rootfs: PathBuf::from("/containers").join(task_id),
                })
            }
            async fn release(&self, _task_id: &str) {}
            async fn collect(&self, _keep: &Keep) -> Result<Option<Collected>, String> {
                Ok(None)
            }
        }

        fn assign(id: &str) -> Assignment {
            let mut spec = spec(&["CMD-SHELL", "test -f /tmp/ok"]);
            let hc = spec.healthcheck.as_mut().unwrap();
            (hc.interval_ms, hc.retries) = (Some(10), Some(2));
            spec.image = "busybox".into();
            let task = Task {
                id: id.into(),
                desired_state: "running".into(),
                state: "assigned".into(),
                ..Default::default()
            };
            Assignment {
                task: Some(task),
                spec: Some(spec),
            }
        }

        /// An executor over `rt` running in the background: its input and its statuses.
        fn start(rt: &FakeRuntime) -> (mpsc::Sender<Input>, StatusQueue) {
            let statuses = StatusQueue::default();
            let (tx, rx) = mpsc::channel(4);
            let ex = Executor::new(Arc::new(rt.clone()), Arc::new(NoImages), "/volumes".into(), statuses.clone());
            tokio::spawn(ex.run(rx));
            (tx, statuses)
        }

        /// Waits until `f` holds for the statuses of `id` seen so far.
        async fn wait_for(
            statuses: &StatusQueue,
            seen: &mut Vec<TaskStatus>,
            what: &str,
            f: impl Fn(&[TaskStatus]) -> bool,
        ) {
            for _ in 0..500 {
                seen.extend(statuses.take());
                if f(seen) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("timed out waiting for {what}: {seen:?}");
        }

        fn states(seen: &[TaskStatus]) -> Vec<(String, String)> {
            seen.iter()
                .filter(|s| rank_running_or_later(&s.state))
                .map(|s| (s.state.clone(), s.health.clone()))
                .collect()
        }

        fn rank_running_or_later(state: &str) -> bool {
            crate::daemon::container::rank(state) >= crate::daemon::container::rank("running")
        }

        #[tokio::test]
        async fn healthy_then_unhealthy_stops_the_container_as_failed() {
            let rt = FakeRuntime::new();
            let (tx, statuses) = start(&rt);
            tx.send(Input::Full(vec![assign("t1")])).await.unwrap();
            let mut seen = Vec::new();
            wait_for(&statuses, &mut seen, "healthy", |s| {
                s.iter().any(|s| s.health == "healthy")
            })
            .await;
            assert_eq!(
                states(&seen)[..2],
                [
                    ("running".to_string(), "starting".to_string()),
                    ("running".to_string(), "healthy".to_string())
                ]
            );
            let (_, opts) = &rt.execs()[0];
            assert_eq!(opts.args, ["/bin/sh", "-c", "test -f /tmp/ok"]);
            assert_eq!(opts.timeout, Some(DEFAULT_TIMEOUT));

            rt.set_exec_result(
                "t1",
                ExecOutput {
                    exit_code: Some(1),
                    ..Default::default()
                },
            );
            wait_for(&statuses, &mut seen, "failed", |s| {
                s.iter().any(|s| s.state == "failed")
            })
            .await;
            let failed = seen.iter().find(|s| s.state == "failed").unwrap();
            assert_eq!(
                (failed.error.as_str(), failed.health.as_str()),
                (UNHEALTHY_ERROR, "unhealthy")
            );
            let states = states(&seen);
            assert_eq!(
                states[states.len() - 2..],
                [
                    ("running".to_string(), "unhealthy".to_string()),
                    ("failed".to_string(), "unhealthy".to_string())
                ]
            );
            assert_eq!(rt.stops().len(), 1, "stopped once");
            let probes = rt.execs().len();
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(rt.execs().len(), probes, "no probe after the exit");
        }

        #[tokio::test]
        async fn re_adopted_containers_are_probed_once_assigned() {
            let rt = FakeRuntime::new();
            let cspec = crate::runtime::ContainerSpec {
                id: "t2".into(),
                ..Default::default()
            };
            rt.run(&cspec).await.unwrap();
            rt.set_exec_result(
                "t2",
                ExecOutput {
                    exit_code: Some(7),
                    ..Default::default()
                },
            );
            let (tx, statuses) = start(&rt);
            let mut a = assign("t2");
            a.task.as_mut().unwrap().state = "running".into();
            tx.send(Input::Full(vec![a])).await.unwrap();
            let mut seen = Vec::new();
            wait_for(&statuses, &mut seen, "failed", |s| {
                s.iter().any(|s| s.state == "failed")
            })
            .await;
            assert_eq!(
                states(&seen),
                [
                    ("running".to_string(), "unhealthy".to_string()),
                    ("failed".to_string(), "unhealthy".to_string())
                ],
                "no starting report for a container already running"
            );
        }
    }
}

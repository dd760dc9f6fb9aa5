//! A service and its spec: what the user asked for, which the orchestrators turn into tasks.
//! Amounts of 0 mean "not set" throughout (no reservation, no limit, unlimited).

use super::Meta;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A service: its name and labels (unique name, used by the API) and the spec the orchestrators
/// realise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub meta: Meta,
    pub name: String,
    /// Labels of the service itself (the container labels are `spec.labels`).
    pub labels: BTreeMap<String, String>,
    pub spec: ServiceSpec,
    /// The spec before the last update, for `service rollback`.
    pub previous_spec: Option<Box<ServiceSpec>>,
    /// Jobs only: bumped to run the job again; tasks of older iterations are shut down.
    pub job_iteration: u64,
    /// The last rolling update or rollback; `None` until an update first replaces tasks.
    pub update_status: Option<UpdateStatus>,
}

/// Where a rolling update stands (Swarm's states), and what the updater keeps between rounds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub started_ms: i64,
    /// 0 while in progress.
    pub completed_ms: i64,
    pub message: String,
    /// The replacement tasks being watched, with the time each was first seen running (and
    /// healthy); 0 while it is still starting.
    pub watching: BTreeMap<String, i64>,
    /// Replacement tasks that failed while watched.
    pub failures: u64,
    /// No further task is replaced before this time (the delay after the last one ran).
    pub next_batch_ms: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateState {
    #[default]
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }

    /// Whether the updater is replacing tasks.
    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }

    pub fn is_rollback(self) -> bool {
        matches!(self, UpdateState::RollbackStarted | UpdateState::RollbackPaused | UpdateState::RollbackCompleted)
    }
}

/// Swarm's update_config / rollback_config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateConfig {
    /// Tasks replaced at once; 0: all.
    pub parallelism: u64,
    pub delay_ms: u64,
    pub failure_action: FailureAction,
    pub monitor_ms: u64,
    /// Failed replacements tolerated, in millionths of the tasks replaced (0 to 1,000,000).
    pub max_failure_ppm: u32,
    pub order: UpdateOrder,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            failure_action: FailureAction::Pause,
            monitor_ms: 5_000,
            max_failure_ppm: 0,
            order: UpdateOrder::StopFirst,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    Rollback,
}

impl FailureAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureAction::Pause => "pause",
            FailureAction::Continue => "continue",
            FailureAction::Rollback => "rollback",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateOrder {
    #[default]
    StopFirst,
    StartFirst,
}

impl UpdateOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateOrder::StopFirst => "stop-first",
            UpdateOrder::StartFirst => "start-first",
        }
    }
}

/// Everything needed to run the tasks of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceSpec {
    /// Image reference, pinned to a digest at service create (`name@sha256:...`).
    pub image: String,
    /// Overrides the image's ENTRYPOINT when not empty.
    pub entrypoint: Vec<String>,
    /// Overrides the image's CMD when not empty (docker's `service create IMAGE COMMAND ARGS`).
    pub command: Vec<String>,
    /// `KEY=VALUE` entries, in order.
    pub env: Vec<String>,
    /// Container labels.
    pub labels: BTreeMap<String, String>,
    pub hostname: String,
    pub user: String,
    pub workdir: String,
    pub mounts: Vec<Mount>,
    pub resources: Resources,
    pub restart: RestartPolicy,
    pub placement: Placement,
    pub mode: ServiceMode,
    pub endpoint: EndpointSpec,
    pub stop_grace_period_ms: u64,
    /// How many finished tasks are kept per slot (replicated) or node (global).
    pub task_history_limit: u64,
    /// The overlay networks the tasks attach to, by network id.
    pub networks: Vec<NetworkAttachment>,
    /// Swarm's health check, with Docker's defaults filled in; `None`: none (the image's
    /// HEALTHCHECK is not read).
    pub healthcheck: Option<HealthCheck>,
    /// Secrets given to the tasks (files under /run/secrets), by secret id.
    pub secrets: Vec<FileRef>,
    /// Configs given to the tasks (files at their target paths), by config id.
    pub configs: Vec<FileRef>,
    pub update_config: UpdateConfig,
    pub rollback_config: UpdateConfig,
    /// Bumped by a forced update, so that every task differs from the spec.
    pub force_update: u64,
    /// The signal that stops the containers (`SIGTERM`, `TERM` or `15`); empty: the image's.
    pub stop_signal: String,
}

/// A secret or config given to a service's tasks. `id` is resolved from the name or id prefix
/// the user gave; `target` and `mode` hold their defaults once resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub id: String,
    /// The secret's or config's name when the spec was resolved.
    pub name: String,
    /// Secrets: a file name under /run/secrets. Configs: an absolute path.
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// A health check run inside every container of the service (Docker's rules: healthy after one
/// success, unhealthy after `retries` consecutive failures, failures within `start_period_ms`
/// not counted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command line]`.
    pub test: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    pub start_period_ms: u64,
}

impl HealthCheck {
    /// Whether a check runs (a test other than NONE).
    pub fn is_active(&self) -> bool {
        self.test.first().is_some_and(|t| t != "NONE")
    }
}

/// A service's attachment to a network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    pub network_id: String,
    /// Extra DNS names of the service on that network.
    pub aliases: Vec<String>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            image: String::new(),
            entrypoint: Vec::new(),
            command: Vec::new(),
            env: Vec::new(),
            labels: BTreeMap::new(),
            hostname: String::new(),
            user: String::new(),
            workdir: String::new(),
            mounts: Vec::new(),
            resources: Resources::default(),
            restart: RestartPolicy::default(),
            placement: Placement::default(),
            mode: ServiceMode::default(),
            endpoint: EndpointSpec::default(),
            stop_grace_period_ms: 10_000,
            task_history_limit: 5,
            networks: Vec::new(),
            healthcheck: None,
            secrets: Vec::new(),
            configs: Vec::new(),
            update_config: UpdateConfig::default(),
            rollback_config: UpdateConfig::default(),
            force_update: 0,
            stop_signal: String::new(),
        }
    }
}

impl ServiceSpec {
    /// Whether the tasks run to completion (jobs) rather than forever.
    pub fn is_job(&self) -> bool {
        matches!(self.mode, ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob)
    }

    /// The desired state of a task that should be executing: COMPLETE for jobs, else RUNNING.
    pub fn run_state(&self) -> super::TaskState {
        if self.is_job() { super::TaskState::Complete } else { super::TaskState::Running }
    }

    /// Whether the tasks run a health check: they are routed to (DNS, VIPs) and counted as
    /// running only once healthy.
    pub fn has_health_check(&self) -> bool {
        self.healthcheck.as_ref().is_some_and(HealthCheck::is_active)
    }

    /// Whether a task created from `self` runs just as one created from `other` would: every
    /// field but those that only steer the orchestrators (mode, update and rollback configs,
    /// history limit) and the endpoint (routing follows the service, not the task). A task
    /// whose spec differs is replaced by the rolling updater.
    pub fn same_task_as(&self, other: &ServiceSpec) -> bool {
        // Destructured so that a new field must be placed on one side of this line or the other.
        let ServiceSpec {
            image,
            entrypoint,
            command,
            env,
            labels,
            hostname,
            user,
            workdir,
            mounts,
            resources,
            restart,
            placement,
            mode: _,
            endpoint: _,
            stop_grace_period_ms,
            stop_signal,
            task_history_limit: _,
            networks,
            healthcheck,
            secrets,
            configs,
            update_config: _,
            rollback_config: _,
            force_update,
        } = self;
        *image == other.image
            && *entrypoint == other.entrypoint
            && *command == other.command
            && *env == other.env
            && *labels == other.labels
            && *hostname == other.hostname
            && *user == other.user
            && *workdir == other.workdir
            && *mounts == other.mounts
            && *resources == other.resources
            && *restart == other.restart
            && *placement == other.placement
            && *stop_grace_period_ms == other.stop_grace_period_ms
            && *stop_signal == other.stop_signal
            && *networks == other.networks
            && *healthcheck == other.healthcheck
            && *secrets == other.secrets
            && *configs == other.configs
            && *force_update == other.force_update
    }

    /// The host-mode published ports `(port, protocol)`; ingress ports hold no host port.
    pub fn host_ports(&self) -> impl Iterator<Item = (u16, Protocol)> + '_ {
        self.endpoint
            .ports
            .iter()
            .filter(|p| p.mode == PublishMode::Host && p.published != 0)
            .map(|p| (p.published, p.protocol))
    }
}

/// How many tasks a service runs, and whether they run forever or to completion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceMode {
    /// `replicas` tasks in slots 1..=replicas.
    Replicated { replicas: u64 },
    /// One task on every eligible node.
    Global,
    /// Runs until `total_completions` tasks completed, at most `max_concurrent` at a time
    /// (0: as many as `total_completions`).
    ReplicatedJob { max_concurrent: u64, total_completions: u64 },
    /// One task to completion on every eligible node.
    GlobalJob,
}

impl Default for ServiceMode {
    fn default() -> Self {
        ServiceMode::Replicated { replicas: 1 }
    }
}

/// A filesystem mounted into the container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub kind: MountKind,
    /// Host path (bind), volume name (volume); empty for tmpfs.
    pub source: String,
    pub target: String,
    pub readonly: bool,
    /// tmpfs only; 0: unlimited.
    pub tmpfs_size_bytes: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    Bind,
    #[default]
    Volume,
    Tmpfs,
}

/// Reservations (what the scheduler sets aside on a node) and limits (what the runtime enforces).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub reservations: ResourceAmounts,
    pub limits: ResourceAmounts,
}

/// Amounts of resources; 0 means none (no reservation, no limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceAmounts {
    /// CPU in billionths of a core.
    pub nano_cpus: u64,
    pub memory_bytes: u64,
    /// Limits only: the maximum number of processes.
    pub pids: u64,
}

/// When a task that ended is replaced in its slot (or on its node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    /// Time between the end of a task and the start of its replacement.
    pub delay_ms: u64,
    /// Restarts allowed within `window_ms` (0: unlimited).
    pub max_attempts: u64,
    /// The window in which `max_attempts` are counted (0: the whole life of the slot).
    pub window_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy { condition: RestartCondition::Any, delay_ms: 5_000, max_attempts: 0, window_ms: 0 }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartCondition {
    None,
    /// Any end but a successful completion (exit code 0).
    OnFailure,
    #[default]
    Any,
}

/// Where tasks may go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// `node.labels.zone==a`, `node.role!=manager`, ... (see `scheduler::parse_constraint`).
    pub constraints: Vec<String>,
    /// `spread=node.labels.zone`, outermost first (see `scheduler::parse_preference`).
    pub preferences: Vec<String>,
    /// 0: unlimited.
    pub max_replicas_per_node: u64,
}

/// How the service is reached.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    pub mode: EndpointMode,
    pub ports: Vec<PortConfig>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointMode {
    /// A virtual IP balanced across the tasks.
    #[default]
    Vip,
    /// DNS round robin over the task addresses.
    Dnsrr,
}

/// A published port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConfig {
    /// The port inside the container.
    pub target: u16,
    /// The port on the hosts; 0: none (ingress: one is chosen; host: a dynamic port).
    pub published: u16,
    pub protocol: Protocol,
    pub mode: PublishMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublishMode {
    /// Every node accepts and balances across all tasks.
    #[default]
    Ingress,
    /// Only the node a task runs on, which holds the host port.
    Host,
}

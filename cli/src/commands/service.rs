//! `cluster service create|ls|ps|inspect|scale|update|rollback|rm` (`logs` is in
//! `service_logs`).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use proto::v1::control_client::ControlClient;
use proto::v1::{
    CreateServiceRequest, EndpointSpec, GetNetworkRequest, GetServiceRequest, ListServicesRequest,
    ListTasksRequest, Mount, NetworkAttachment, Placement, PortConfig, RemoveServiceRequest,
    ResourceAmounts, Resources, RestartPolicy, Service, ServiceMode, ServiceSpec,
    UpdateServiceRequest,
};
use tonic::transport::Channel;

use super::for_each_ref;
use super::network::parse_network_attachment;
use super::service_health::HealthArgs;
use super::service_rollout::{RolloutArgs, update_outcome, update_progress};
use super::service_view::{
    converged, inspect_pretty, mode_kind, progress, services_table, sort_services,
};
use super::task_list::{self, Listing, merge};
use crate::connect::{Target, rpc};
use crate::output::{Format, InspectFormat, json, print, print_inspected};
use crate::parse::{
    SERVICE_FILTER_KEYS, TASK_FILTER_KEYS, duration_ms, filter_map, parse_cpus, parse_duration,
    parse_env, parse_env_key, parse_filter, parse_label, parse_label_key, parse_memory,
    parse_mount, parse_placement_pref, parse_publish, parse_scale,
};

/// How often convergence is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Manage services.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service.
    Create(Box<CreateArgs>),
    /// List services.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// List the tasks of one or more services.
    Ps(PsArgs),
    /// Show one or more services in detail (JSON by default).
    Inspect(InspectArgs),
    /// Change the number of replicas of replicated services.
    Scale(ScaleArgs),
    /// Update a service.
    Update(Box<UpdateArgs>),
    /// Go back to a service's previous spec.
    Rollback(RollbackArgs),
    /// Remove services.
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Show the logs of a service or a task.
    Logs(super::service_logs::LogsArgs),
}

/// Service modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    #[default]
    Replicated,
    Global,
    ReplicatedJob,
    GlobalJob,
}

impl Mode {
    fn kind(self) -> &'static str {
        match self {
            Mode::Replicated => "replicated",
            Mode::Global => "global",
            Mode::ReplicatedJob => "replicated-job",
            Mode::GlobalJob => "global-job",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RestartCondition {
    None,
    OnFailure,
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EndpointMode {
    Vip,
    Dnsrr,
}

/// Flags shared by the commands that wait for convergence.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Exit immediately instead of waiting for the service to converge.
    #[arg(short, long)]
    pub detach: bool,
    /// Stop waiting for convergence after this long (it goes on in the background).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Service name (unique).
    #[arg(long)]
    pub name: Option<String>,
    /// Number of tasks (replicated), or of completions (replicated-job).
    #[arg(long, value_name = "N")]
    pub replicas: Option<u64>,
    /// Service mode.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// replicated-job: at most this many tasks at a time.
    #[arg(long = "max-concurrent", value_name = "N")]
    pub max_concurrent: Option<u64>,
    /// Set an environment variable: KEY=VALUE (repeatable).
    #[arg(short, long, value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<String>,
    /// Service label: KEY[=VALUE] (repeatable).
    #[arg(short, long, value_name = "KEY[=VALUE]", value_parser = parse_label)]
    pub label: Vec<(String, String)>,
    /// Container label: KEY[=VALUE] (repeatable).
    #[arg(long = "container-label", value_name = "KEY[=VALUE]", value_parser = parse_label)]
    pub container_label: Vec<(String, String)>,
    /// Placement constraint, e.g. node.labels.zone==a (repeatable).
    #[arg(long, value_name = "EXPR")]
    pub constraint: Vec<String>,
    /// Placement preference: spread=node.labels.NAME (repeatable).
    #[arg(long = "placement-pref", value_name = "spread=EXPR", value_parser = parse_placement_pref)]
    pub placement_pref: Vec<String>,
    /// At most this many tasks per node (0: unlimited).
    #[arg(long = "replicas-max-per-node", value_name = "N")]
    pub replicas_max_per_node: Option<u64>,
    /// CPUs to reserve, e.g. 0.5.
    #[arg(long = "reserve-cpu", value_name = "CPUS", value_parser = parse_cpus)]
    pub reserve_cpu: Option<u64>,
    /// Memory to reserve, e.g. 64M.
    #[arg(long = "reserve-memory", value_name = "SIZE", value_parser = parse_memory)]
    pub reserve_memory: Option<u64>,
    /// CPU limit, e.g. 1.5.
    #[arg(long = "limit-cpu", value_name = "CPUS", value_parser = parse_cpus)]
    pub limit_cpu: Option<u64>,
    /// Memory limit, e.g. 256M.
    #[arg(long = "limit-memory", value_name = "SIZE", value_parser = parse_memory)]
    pub limit_memory: Option<u64>,
    /// Maximum number of processes.
    #[arg(long = "limit-pids", value_name = "N")]
    pub limit_pids: Option<u64>,
    /// When to restart tasks.
    #[arg(long = "restart-condition", value_enum)]
    pub restart_condition: Option<RestartCondition>,
    /// Delay between restarts, e.g. 5s.
    #[arg(long = "restart-delay", value_name = "DURATION", value_parser = parse_duration)]
    pub restart_delay: Option<Duration>,
    /// Give up restarting after this many attempts (0: unlimited).
    #[arg(long = "restart-max-attempts", value_name = "N")]
    pub restart_max_attempts: Option<u64>,
    /// The window in which restart attempts are counted, e.g. 10s.
    #[arg(long = "restart-window", value_name = "DURATION", value_parser = parse_duration)]
    pub restart_window: Option<Duration>,
    /// Mount: type=bind|volume|tmpfs,source=..,target=..[,readonly] (repeatable).
    #[arg(long, value_name = "SPEC", value_parser = parse_mount)]
    pub mount: Vec<Mount>,
    /// Publish a port: published=8080,target=80[,protocol=tcp][,mode=ingress|host], or
    /// 8080:80[/udp] (repeatable).
    #[arg(short, long, value_name = "SPEC", value_parser = parse_publish)]
    pub publish: Vec<PortConfig>,
    /// Time to wait before killing a container, e.g. 10s.
    #[arg(long = "stop-grace-period", value_name = "DURATION", value_parser = parse_duration)]
    pub stop_grace_period: Option<Duration>,
    /// Signal that stops the containers, e.g. SIGQUIT (default: the image's, else SIGTERM).
    #[arg(long = "stop-signal", value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Container hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// User in the container (USER[:GROUP]).
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory in the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Override the image's entrypoint (split on whitespace).
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
    /// vip or dnsrr.
    #[arg(long = "endpoint-mode", value_enum)]
    pub endpoint_mode: Option<EndpointMode>,
    /// Do not ask the image's registry for its digest: each node resolves the tag itself.
    #[arg(long = "no-resolve-image")]
    pub no_resolve_image: bool,
    /// Attach to a network: NAME or name=NAME[,alias=ALIAS] (repeatable).
    #[arg(long, value_name = "NETWORK", value_parser = parse_network_attachment)]
    pub network: Vec<NetworkAttachment>,
    #[command(flatten)]
    pub files: super::secret::FileArgs,
    #[command(flatten)]
    pub health: HealthArgs,
    #[command(flatten)]
    pub rollout: RolloutArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Image to run.
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Command and arguments (override the image's CMD).
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only print service ids.
    #[arg(short, long)]
    pub quiet: bool,
    /// Filter: id=PREFIX, name=PREFIX, label=K or K=V, mode=replicated|global|...
    #[arg(short, long, value_name = "KEY=VALUE", value_parser = parse_filter)]
    pub filter: Vec<(String, String)>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Only print task ids.
    #[arg(short, long)]
    pub quiet: bool,
    /// Filter: id=PREFIX, node=NODE, desired-state=STATE.
    #[arg(short, long, value_name = "KEY=VALUE", value_parser = parse_filter)]
    pub filter: Vec<(String, String)>,
    /// Do not truncate ids and errors, and show images with their pinned digest.
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Service ids, unique id prefixes or names.
    #[arg(required = true, value_name = "SERVICE")]
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Print a human-readable summary instead of JSON.
    #[arg(long, conflicts_with = "format")]
    pub pretty: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = InspectFormat::Json)]
    pub format: InspectFormat,
    /// Service ids, unique id prefixes or names.
    #[arg(required = true, value_name = "SERVICE")]
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub wait: WaitArgs,
    /// SERVICE=REPLICAS pairs.
    #[arg(required = true, value_name = "SERVICE=REPLICAS", value_parser = parse_scale)]
    pub scales: Vec<(String, u64)>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Number of tasks (replicated modes only).
    #[arg(long, value_name = "N")]
    pub replicas: Option<u64>,
    /// New image.
    #[arg(long)]
    pub image: Option<String>,
    /// New stop signal ("" for the image's again).
    #[arg(long = "stop-signal", value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Add or replace an environment variable: KEY=VALUE (repeatable).
    #[arg(long = "env-add", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env_add: Vec<String>,
    /// Remove an environment variable by name (repeatable).
    #[arg(long = "env-rm", value_name = "KEY", value_parser = parse_env_key)]
    pub env_rm: Vec<String>,
    /// Add or change a service label: KEY[=VALUE] (repeatable).
    #[arg(long = "label-add", value_name = "KEY[=VALUE]", value_parser = parse_label)]
    pub label_add: Vec<(String, String)>,
    /// Remove a service label by key (repeatable).
    #[arg(long = "label-rm", value_name = "KEY", value_parser = parse_label_key)]
    pub label_rm: Vec<String>,
    /// Add a placement constraint (repeatable).
    #[arg(long = "constraint-add", value_name = "EXPR")]
    pub constraint_add: Vec<String>,
    /// Remove a placement constraint (exact text, repeatable).
    #[arg(long = "constraint-rm", value_name = "EXPR")]
    pub constraint_rm: Vec<String>,
    /// Attach to a network: NAME or name=NAME[,alias=ALIAS] (repeatable).
    #[arg(long = "network-add", value_name = "NETWORK", value_parser = parse_network_attachment)]
    pub network_add: Vec<NetworkAttachment>,
    /// Detach from a network: its name, id or unique id prefix (repeatable).
    #[arg(long = "network-rm", value_name = "NETWORK")]
    pub network_rm: Vec<String>,
    #[command(flatten)]
    pub files: super::secret::FileUpdateArgs,
    /// Replace the tasks even if nothing changed.
    #[arg(long)]
    pub force: bool,
    /// Do not ask the new image's registry for its digest: each node resolves the tag itself.
    #[arg(long = "no-resolve-image")]
    pub no_resolve_image: bool,
    #[command(flatten)]
    pub health: HealthArgs,
    #[command(flatten)]
    pub rollout: RolloutArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Service id, unique id prefix or name.
    #[arg(value_name = "SERVICE")]
    pub service: String,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Service id, unique id prefix or name.
    #[arg(value_name = "SERVICE")]
    pub service: String,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Service ids, unique id prefixes or names.
    #[arg(required = true, value_name = "SERVICE")]
    pub services: Vec<String>,
}

/// Runs a `service` subcommand.
pub async fn run(command: ServiceCommand, target: &Target) -> anyhow::Result<()> {
    match command {
        ServiceCommand::Create(args) => create(*args, target).await,
        ServiceCommand::Ls(args) => ls(args, target).await,
        ServiceCommand::Ps(args) => ps(args, target).await,
        ServiceCommand::Inspect(args) => inspect(args, target).await,
        ServiceCommand::Scale(args) => scale(args, target).await,
        ServiceCommand::Update(args) => update(*args, target).await,
        ServiceCommand::Rollback(args) => rollback(args, target).await,
        ServiceCommand::Rm(args) => rm(args, target).await,
        ServiceCommand::Logs(args) => super::service_logs::run(args, target).await,
    }
}

fn amounts(cpu: Option<u64>, memory: Option<u64>, pids: Option<u64>) -> Option<ResourceAmounts> {
    (cpu.is_some() || memory.is_some() || pids.is_some()).then(|| ResourceAmounts {
        nano_cpus: cpu.unwrap_or(0),
        memory_bytes: memory.unwrap_or(0),
        pids: pids.unwrap_or(0),
    })
}

/// The spec for `service create`; the manager validates it (errors name the field).
fn create_spec(args: &CreateArgs) -> anyhow::Result<ServiceSpec> {
    let (mut update_config, mut rollback_config) = (None, None);
    args.rollout
        .apply(&mut update_config, &mut rollback_config)?;
    let mode = args.mode.unwrap_or_default();
    if args.replicas.is_some() && matches!(mode, Mode::Global | Mode::GlobalJob) {
        bail!("--replicas cannot be used with --mode {}", mode.kind());
    }
    if args.max_concurrent.is_some() && mode != Mode::ReplicatedJob {
        bail!("--max-concurrent needs --mode replicated-job");
    }
    let service_mode = (args.mode.is_some()
        || args.replicas.is_some()
        || args.max_concurrent.is_some())
    .then(|| ServiceMode {
        kind: mode.kind().to_string(),
        replicas: args.replicas,
        max_concurrent: args.max_concurrent.unwrap_or(0),
    });
    let reservations = amounts(args.reserve_cpu, args.reserve_memory, None);
    let limits = amounts(args.limit_cpu, args.limit_memory, args.limit_pids);
    let resources = (reservations.is_some() || limits.is_some()).then_some(Resources {
        reservations,
        limits,
    });
    let restart = (args.restart_condition.is_some()
        || args.restart_delay.is_some()
        || args.restart_max_attempts.is_some()
        || args.restart_window.is_some())
    .then(|| RestartPolicy {
        condition: match args.restart_condition {
            None => String::new(),
            Some(RestartCondition::None) => "none".to_string(),
            Some(RestartCondition::OnFailure) => "on-failure".to_string(),
            Some(RestartCondition::Any) => "any".to_string(),
        },
        delay_ms: args.restart_delay.map(duration_ms),
        max_attempts: args.restart_max_attempts.unwrap_or(0),
        window_ms: args.restart_window.map_or(0, duration_ms),
    });
    let placement = (!args.constraint.is_empty()
        || !args.placement_pref.is_empty()
        || args.replicas_max_per_node.is_some())
    .then(|| Placement {
        constraints: args.constraint.clone(),
        preferences: args.placement_pref.clone(),
        max_replicas_per_node: args.replicas_max_per_node.unwrap_or(0),
    });
    let endpoint =
        (args.endpoint_mode.is_some() || !args.publish.is_empty()).then(|| EndpointSpec {
            mode: match args.endpoint_mode {
                None => String::new(),
                Some(EndpointMode::Vip) => "vip".to_string(),
                Some(EndpointMode::Dnsrr) => "dnsrr".to_string(),
            },
            ports: args.publish.clone(),
        });
    Ok(ServiceSpec {
        name: args.name.clone().unwrap_or_default(),
        labels: args.label.iter().cloned().collect(),
        image: args.image.clone(),
        entrypoint: args
            .entrypoint
            .as_deref()
            .map(|e| e.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        command: args.command.clone(),
        env: args.env.clone(),
        container_labels: args.container_label.iter().cloned().collect(),
        hostname: args.hostname.clone().unwrap_or_default(),
        user: args.user.clone().unwrap_or_default(),
        workdir: args.workdir.clone().unwrap_or_default(),
        mounts: args.mount.clone(),
        resources,
        restart,
        placement,
        mode: service_mode,
        endpoint,
        stop_grace_period_ms: args.stop_grace_period.map(duration_ms),
        stop_signal: args.stop_signal.clone().unwrap_or_default(),
        task_history_limit: None,
        networks: args.network.clone(),
        secrets: args.files.secret.clone(),
        configs: args.files.config.clone(),
        healthcheck: args.health.for_create()?,
        update_config,
        rollback_config,
        force_update: 0,
    })
}

async fn create(args: CreateArgs, target: &Target) -> anyhow::Result<()> {
    let spec = create_spec(&args)?;
    let mut client = target.connect().await?.control();
    let service = rpc(client.create_service(CreateServiceRequest {
        spec: Some(spec),
        no_resolve_image: args.no_resolve_image,
    }))
    .await?;
    print_warnings(&service);
    print(&format!("{}\n", service.id))?;
    if !args.wait.detach {
        wait_converged(&mut client, &service.id, args.wait.timeout, Awaited::Tasks).await?;
    }
    Ok(())
}

/// Prints the warnings of a create or update (e.g. an image that could not be pinned) on stderr.
fn print_warnings(service: &Service) {
    for warning in &service.warnings {
        eprintln!("{warning}");
    }
}

/// What a command waits for besides the tasks running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaited {
    /// Nothing: the tasks running is enough (create, scale, an update that replaces no task).
    Tasks,
    /// The rolling update the command started: it fails if the update pauses or rolls back.
    Update,
    /// The rollback the command started.
    Rollback,
}

impl Awaited {
    /// What to wait for after an update call answered `service`.
    fn after(service: &Service, rollback: bool) -> Self {
        let started = service
            .update_status
            .as_ref()
            .is_some_and(|s| matches!(s.state.as_str(), "updating" | "rollback_started"));
        match (started, rollback) {
            (false, _) => Awaited::Tasks,
            (true, false) => Awaited::Update,
            (true, true) => Awaited::Rollback,
        }
    }
}

/// Polls the service until it converges (and its update ends, if one is awaited), printing
/// a progress line on stderr whenever it changes. Gives up (successfully) after `timeout`:
/// convergence goes on in the background. An awaited update that pauses or rolls back is an
/// error.
async fn wait_converged(
    client: &mut ControlClient<Channel>,
    reference: &str,
    timeout: Duration,
    awaited: Awaited,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let service = rpc(client.get_service(GetServiceRequest {
            reference: reference.to_string(),
        }))
        .await?;
        let mut line = progress(&service);
        if let Some(update) = update_progress(&service).filter(|_| awaited != Awaited::Tasks) {
            line = format!("{line}, {update}");
        }
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        let update_done = match awaited {
            Awaited::Tasks => true,
            Awaited::Update | Awaited::Rollback => {
                match update_outcome(&service, awaited == Awaited::Rollback) {
                    None => false,
                    Some(Ok(())) => true,
                    Some(Err(reason)) => bail!("{reason}"),
                }
            }
        };
        if update_done && converged(&service) {
            let name = service.spec.map(|s| s.name).unwrap_or_default();
            eprintln!("{name}: converged");
            return Ok(());
        }
        if start.elapsed() >= timeout {
            let name = service.spec.map(|s| s.name).unwrap_or_default();
            eprintln!(
                "{name}: not converged after {}s; the cluster keeps converging in the background \
                 (see `cluster service ps {name}`; pass -d to return at once)",
                timeout.as_secs_f64()
            );
            return Ok(());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn ls(args: LsArgs, target: &Target) -> anyhow::Result<()> {
    let filters = filter_map(&args.filter, &SERVICE_FILTER_KEYS).map_err(anyhow::Error::msg)?;
    let mut client = target.connect().await?.control();
    let mut services = rpc(client.list_services(ListServicesRequest { filters }))
        .await?
        .services;
    sort_services(&mut services);
    let text = if args.quiet {
        services.iter().map(|s| format!("{}\n", s.id)).collect()
    } else {
        match args.format {
            Format::Table => services_table(&services),
            Format::Json => json(&services)?,
        }
    };
    print(&text)?;
    Ok(())
}

async fn ps(args: PsArgs, target: &Target) -> anyhow::Result<()> {
    let filters = filter_map(&args.filter, &TASK_FILTER_KEYS).map_err(anyhow::Error::msg)?;
    let client = target.connect().await?.control();
    let (found, failed) = for_each_ref(&args.services, |reference| {
        let mut client = client.clone();
        let mut filters = filters.clone();
        async move {
            let service = rpc(client.get_service(GetServiceRequest {
                reference: reference.clone(),
            }))
            .await?;
            filters.insert("service".to_string(), service.id.clone());
            let tasks = rpc(client.list_tasks(ListTasksRequest { filters }))
                .await?
                .tasks;
            Ok((service, tasks))
        }
    })
    .await;
    let mut images = HashMap::new();
    let mut lists = Vec::new();
    for (service, tasks) in found {
        images.insert(
            service.id.clone(),
            service.spec.map(|s| s.image).unwrap_or_default(),
        );
        lists.push(tasks);
    }
    let listing = Listing {
        quiet: args.quiet,
        format: args.format,
        no_trunc: args.no_trunc,
    };
    let text = task_list::render(&mut client.clone(), merge(lists), &images, listing).await?;
    print(&text)?;
    failed.map_or(Ok(()), |r| Err(r.into()))
}

async fn inspect(args: InspectArgs, target: &Target) -> anyhow::Result<()> {
    let client = target.connect().await?.control();
    let (services, failed) = for_each_ref(&args.services, |reference| {
        let mut client = client.clone();
        async move { rpc(client.get_service(GetServiceRequest { reference })).await }
    })
    .await;
    let pretty = args.pretty || args.format == InspectFormat::Pretty;
    print_inspected(&services, pretty, inspect_pretty)?;
    failed.map_or(Ok(()), |r| Err(r.into()))
}

/// Sets the replicas of a replicated (or replicated-job) spec.
fn set_replicas(spec: &mut ServiceSpec, replicas: u64) -> anyhow::Result<()> {
    let kind = mode_kind(spec).to_string();
    if kind != "replicated" && kind != "replicated-job" {
        bail!(
            "{}: the service is {kind}; only replicated services can be scaled",
            spec.name
        );
    }
    let mode = spec.mode.get_or_insert_with(ServiceMode::default);
    mode.replicas = Some(replicas);
    Ok(())
}

async fn scale(args: ScaleArgs, target: &Target) -> anyhow::Result<()> {
    let client = target.connect().await?.control();
    let refs: Vec<String> = args.scales.iter().map(|(name, _)| name.clone()).collect();
    let wanted: HashMap<String, u64> = args.scales.iter().cloned().collect();
    let (scaled, mut failed) = for_each_ref(&refs, |reference| {
        let mut client = client.clone();
        let replicas = wanted[&reference];
        async move {
            let service = rpc(client.get_service(GetServiceRequest {
                reference: reference.clone(),
            }))
            .await?;
            let mut spec = service.spec.unwrap_or_default();
            set_replicas(&mut spec, replicas)?;
            let updated = rpc(client.update_service(UpdateServiceRequest {
                reference: service.id,
                version: service.version,
                spec: Some(spec),
                force: false,
                // The image is unchanged: the manager keeps it as recorded.
                no_resolve_image: false,
                rollback: false,
            }))
            .await?;
            print(&format!("{reference} scaled to {replicas}\n"))?;
            Ok(updated.id)
        }
    })
    .await;
    if !args.wait.detach {
        for id in scaled {
            let mut client = client.clone();
            if let Err(e) = wait_converged(&mut client, &id, args.wait.timeout, Awaited::Tasks).await {
                eprintln!("error: {id}: {e:#}");
                failed = Some(crate::output::Reported);
            }
        }
    }
    failed.map_or(Ok(()), |r| Err(r.into()))
}

/// Applies `service update` flags to the current spec.
fn apply_update(spec: &mut ServiceSpec, args: &UpdateArgs) -> anyhow::Result<()> {
    if let Some(replicas) = args.replicas {
        set_replicas(spec, replicas)?;
    }
    if let Some(image) = &args.image {
        spec.image = image.clone();
    }
    if let Some(signal) = &args.stop_signal {
        spec.stop_signal = signal.clone();
    }
    let env_key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_string();
    let removed: Vec<String> = args
        .env_rm
        .iter()
        .cloned()
        .chain(args.env_add.iter().map(|e| env_key(e)))
        .collect();
    spec.env.retain(|e| !removed.contains(&env_key(e)));
    spec.env.extend(args.env_add.iter().cloned());
    let labels_add: BTreeMap<String, String> = args.label_add.iter().cloned().collect();
    if let Some(key) = args.label_rm.iter().find(|k| labels_add.contains_key(*k)) {
        bail!("label {key:?} is both added and removed");
    }
    for key in &args.label_rm {
        spec.labels.remove(key);
    }
    spec.labels.extend(labels_add);
    args.health.update(&mut spec.healthcheck)?;
    args.rollout
        .apply(&mut spec.update_config, &mut spec.rollback_config)?;
    if !args.constraint_add.is_empty() || !args.constraint_rm.is_empty() {
        let placement = spec.placement.get_or_insert_with(Placement::default);
        placement
            .constraints
            .retain(|c| !args.constraint_rm.contains(c));
        for c in &args.constraint_add {
            if !placement.constraints.contains(c) {
                placement.constraints.push(c.clone());
            }
        }
    }
    Ok(())
}

async fn update(args: UpdateArgs, target: &Target) -> anyhow::Result<()> {
    let nothing = args.replicas.is_none()
        && args.image.is_none()
        && args.env_add.is_empty()
        && args.env_rm.is_empty()
        && args.label_add.is_empty()
        && args.label_rm.is_empty()
        && args.constraint_add.is_empty()
        && args.constraint_rm.is_empty()
        && args.network_add.is_empty()
        && args.network_rm.is_empty()
        && args.files.is_empty()
        && !args.health.any()
        && !args.rollout.any()
        && args.stop_signal.is_none();
    if nothing && !args.force {
        bail!(
            "nothing to update: pass --replicas, --image, --env-add/--env-rm, \
             --label-add/--label-rm, --constraint-add/--constraint-rm, \
             --network-add/--network-rm, --secret-add/--secret-rm, --config-add/--config-rm, \
             --health-*, --update-*/--rollback-*, --stop-signal or --force"
        );
    }
    let mut client = target.connect().await?.control();
    let service = rpc(client.get_service(GetServiceRequest {
        reference: args.service.clone(),
    }))
    .await?;
    let mut spec = service
        .spec
        .clone()
        .ok_or_else(|| anyhow!("the manager returned service {} without a spec", service.id))?;
    apply_update(&mut spec, &args)?;
    // The stored spec names networks by id: detach by the ids the references resolve to.
    for reference in &args.network_rm {
        let network = rpc(client.get_network(GetNetworkRequest {
            reference: reference.clone(),
        }))
        .await?;
        let before = spec.networks.len();
        spec.networks.retain(|n| n.target != network.id);
        if spec.networks.len() == before {
            bail!(
                "{}: the service is not attached to network {}",
                args.service,
                network.name
            );
        }
    }
    spec.networks.extend(args.network_add.iter().cloned());
    args.files
        .apply(&mut client, &args.service, &mut spec)
        .await?;
    let updated: Service = rpc(client.update_service(UpdateServiceRequest {
        reference: service.id.clone(),
        version: service.version,
        spec: Some(spec),
        force: args.force,
        no_resolve_image: args.no_resolve_image,
        rollback: false,
    }))
    .await?;
    print_warnings(&updated);
    print(&format!("{}\n", args.service))?;
    if !args.wait.detach {
        let awaited = Awaited::after(&updated, false);
        wait_converged(&mut client, &updated.id, args.wait.timeout, awaited).await?;
    }
    Ok(())
}

async fn rollback(args: RollbackArgs, target: &Target) -> anyhow::Result<()> {
    let mut client = target.connect().await?.control();
    let service: Service = rpc(client.update_service(UpdateServiceRequest {
        reference: args.service.clone(),
        rollback: true,
        ..Default::default()
    }))
    .await?;
    print(&format!("{}\n", args.service))?;
    if !args.wait.detach {
        let awaited = Awaited::after(&service, true);
        wait_converged(&mut client, &service.id, args.wait.timeout, awaited).await?;
    }
    Ok(())
}

async fn rm(args: RmArgs, target: &Target) -> anyhow::Result<()> {
    let client = target.connect().await?.control();
    let (_, failed) = for_each_ref(&args.services, |reference| {
        let mut client = client.clone();
        async move {
            rpc(client.remove_service(RemoveServiceRequest {
                reference: reference.clone(),
            }))
            .await?;
            print(&format!("{reference}\n"))?;
            Ok(())
        }
    })
    .await;
    failed.map_or(Ok(()), |r| Err(r.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(subcommand)]
        command: ServiceCommand,
    }

    fn parse(args: &[&str]) -> ServiceCommand {
        let mut all = vec!["service"];
        all.extend_from_slice(args);
        Wrap::try_parse_from(all).unwrap().command
    }

    fn create_args(args: &[&str]) -> CreateArgs {
        let mut all = vec!["create"];
        all.extend_from_slice(args);
        match parse(&all) {
            ServiceCommand::Create(args) => *args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_builds_the_spec() {
        let args = create_args(&[
            "--name",
            "web",
            "--replicas",
            "3",
            "-e",
            "A=1",
            "--label",
            "tier=front",
            "--constraint",
            "node.role==worker",
            "--placement-pref",
            "spread=node.labels.zone",
            "--reserve-cpu",
            "0.5",
            "--reserve-memory",
            "64M",
            "--limit-memory",
            "128M",
            "--limit-pids",
            "100",
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "2s",
            "--mount",
            "type=tmpfs,target=/tmp",
            "-p",
            "8080:80",
            "--stop-grace-period",
            "1m",
            "--entrypoint",
            "/bin/sh -c",
            "-d",
            "busybox",
            "httpd",
            "-f",
            "-p",
            "80",
        ]);
        assert!(args.wait.detach);
        let spec = create_spec(&args).unwrap();
        assert_eq!(spec.name, "web");
        assert_eq!(spec.image, "busybox");
        assert_eq!(spec.command, ["httpd", "-f", "-p", "80"]);
        assert_eq!(spec.entrypoint, ["/bin/sh", "-c"]);
        assert_eq!(spec.env, ["A=1"]);
        assert_eq!(spec.labels.get("tier").map(String::as_str), Some("front"));
        let mode = spec.mode.unwrap();
        assert_eq!((mode.kind.as_str(), mode.replicas), ("replicated", Some(3)));
        let placement = spec.placement.unwrap();
        assert_eq!(placement.constraints, ["node.role==worker"]);
        assert_eq!(placement.preferences, ["spread=node.labels.zone"]);
        let resources = spec.resources.unwrap();
        let reservations = resources.reservations.unwrap();
        assert_eq!(reservations.nano_cpus, 500_000_000);
        assert_eq!(reservations.memory_bytes, 64 << 20);
        let limits = resources.limits.unwrap();
        assert_eq!(
            (limits.memory_bytes, limits.pids, limits.nano_cpus),
            (128 << 20, 100, 0)
        );
        let restart = spec.restart.unwrap();
        assert_eq!(restart.condition, "on-failure");
        assert_eq!(restart.delay_ms, Some(2000));
        assert_eq!(spec.mounts[0].r#type, "tmpfs");
        assert_eq!(spec.endpoint.unwrap().ports[0].published, 8080);
        assert_eq!(spec.stop_grace_period_ms, Some(60_000));
    }

    #[test]
    fn create_defaults_leave_the_spec_empty() {
        let args = create_args(&["busybox"]);
        assert!(!args.wait.detach);
        assert_eq!(args.wait.timeout, Duration::from_secs(60));
        let spec = create_spec(&args).unwrap();
        assert!(spec.mode.is_none() && spec.restart.is_none() && spec.resources.is_none());
        assert!(spec.placement.is_none() && spec.endpoint.is_none());
        assert!(spec.stop_grace_period_ms.is_none());
        let err = create_spec(&create_args(&["--mode", "global", "--replicas", "2", "x"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--replicas"), "{err}");
    }

    #[test]
    fn bad_flags_name_the_flag() {
        for (args, flag) in [
            (
                vec!["service", "create", "--restart-delay", "5", "x"],
                "--restart-delay",
            ),
            (
                vec!["service", "create", "--reserve-memory", "6Q", "x"],
                "--reserve-memory",
            ),
            (
                vec!["service", "create", "--publish", "a:b", "x"],
                "--publish",
            ),
            (
                vec!["service", "create", "--mount", "source=/a", "x"],
                "--mount",
            ),
            (vec!["service", "scale", "web"], "SERVICE=REPLICAS"),
        ] {
            let err = Wrap::try_parse_from(&args).unwrap_err().to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }

    fn update_args(args: &[&str]) -> UpdateArgs {
        let mut all = vec!["update"];
        all.extend_from_slice(args);
        match parse(&all) {
            ServiceCommand::Update(args) => *args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn updates_modify_the_spec() {
        let mut spec = ServiceSpec {
            name: "web".to_string(),
            image: "a:1".to_string(),
            env: vec!["A=1".to_string(), "B=2".to_string()],
            labels: HashMap::from([("x".to_string(), "1".to_string())]),
            placement: Some(Placement {
                constraints: vec!["node.role==worker".to_string()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let args = update_args(&[
            "--replicas",
            "4",
            "--image",
            "a:2",
            "--env-add",
            "B=3",
            "--env-rm",
            "A",
            "--label-add",
            "y=2",
            "--label-rm",
            "x",
            "--constraint-rm",
            "node.role==worker",
            "--constraint-add",
            "node.labels.zone==a",
            "web",
        ]);
        apply_update(&mut spec, &args).unwrap();
        assert_eq!(spec.mode.unwrap().replicas, Some(4));
        assert_eq!(spec.image, "a:2");
        assert_eq!(spec.env, ["B=3"]);
        assert_eq!(
            spec.labels,
            HashMap::from([("y".to_string(), "2".to_string())])
        );
        assert_eq!(spec.placement.unwrap().constraints, ["node.labels.zone==a"]);
    }

    #[test]
    fn only_replicated_services_scale() {
        let mut spec = ServiceSpec {
            name: "agent".to_string(),
            mode: Some(ServiceMode {
                kind: "global".to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = set_replicas(&mut spec, 2).unwrap_err().to_string();
        assert!(err.contains("only replicated"), "{err}");
        let mut spec = ServiceSpec::default();
        set_replicas(&mut spec, 2).unwrap();
        assert_eq!(spec.mode.unwrap().replicas, Some(2));
    }
}

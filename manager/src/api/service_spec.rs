//! Service specs between the API and the store: validation (every error names the field, and
//! nothing is written for an invalid spec) and conversion both ways. Absent optional fields
//! take the store's defaults.

use crate::scheduler::{parse_constraint, parse_preference};
use crate::store::{
    EndpointMode, EndpointSpec, FailureAction, HealthCheck, Mount, MountKind, NetworkAttachment, Placement, PortConfig,
    Protocol, PublishMode, ResourceAmounts, Resources, RestartCondition, RestartPolicy, ServiceMode, ServiceSpec,
    UpdateConfig, UpdateOrder,
};
use proto::v1 as pb;
use std::collections::BTreeMap;
use tonic::Status;

/// The smallest memory limit a container can start with.
pub const MIN_MEMORY_LIMIT: u64 = 4 * 1024 * 1024;

/// A validated spec: the service's name and labels, and the spec its tasks run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub spec: ServiceSpec,
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("invalid service spec: {field}: {reason}"))
}

/// Whether `name` follows Swarm's rule for service names: `[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}`.
pub fn valid_service_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    first_ok && name.len() <= 63 && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Validates `spec` and converts it for the store.
pub fn spec_from_proto(spec: &pb::ServiceSpec) -> Result<ValidSpec, Status> {
    if !valid_service_name(&spec.name) {
        return Err(invalid(
            "spec.name",
            format!("{:?} is invalid: 1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit", spec.name),
        ));
    }
    if spec.image.trim().is_empty() || spec.image.chars().any(char::is_whitespace) {
        return Err(invalid("spec.image", format!("{:?} is invalid: an image reference is required, without spaces", spec.image)));
    }
    check_labels("spec.labels", &spec.labels)?;
    check_labels("spec.container_labels", &spec.container_labels)?;
    for (i, entry) in spec.env.iter().enumerate() {
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
        if key.is_empty() || key.chars().any(char::is_whitespace) {
            return Err(invalid(&format!("spec.env[{i}]"), format!("{entry:?} is invalid: expected KEY=VALUE")));
        }
    }
    Ok(ValidSpec {
        name: spec.name.clone(),
        labels: to_map(&spec.labels),
        spec: ServiceSpec {
            image: spec.image.clone(),
            entrypoint: spec.entrypoint.clone(),
            command: spec.command.clone(),
            env: spec.env.clone(),
            labels: to_map(&spec.container_labels),
            hostname: spec.hostname.clone(),
            user: spec.user.clone(),
            workdir: spec.workdir.clone(),
            mounts: mounts(&spec.mounts)?,
            resources: resources(spec.resources.as_ref())?,
            restart: restart(spec.restart.as_ref())?,
            placement: placement(spec.placement.as_ref())?,
            mode: mode(spec.mode.as_ref())?,
            endpoint: endpoint(spec.endpoint.as_ref())?,
            stop_grace_period_ms: spec.stop_grace_period_ms.unwrap_or(ServiceSpec::default().stop_grace_period_ms),
            task_history_limit: spec.task_history_limit.unwrap_or(ServiceSpec::default().task_history_limit),
            networks: networks(&spec.networks)?,
            healthcheck: healthcheck(spec.healthcheck.as_ref())?,
            secrets: super::secrets::file_refs("secrets", &spec.secrets)?,
            configs: super::secrets::file_refs("configs", &spec.configs)?,
            update_config: update_config("update_config", spec.update_config.as_ref())?,
            rollback_config: update_config("rollback_config", spec.rollback_config.as_ref())?,
            force_update: spec.force_update,
            stop_signal: stop_signal(&spec.stop_signal)?,
        },
    })
}

/// The signals a container can be stopped with, without their `SIG` prefix.
const SIGNALS: [&str; 31] = [
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE", "ALRM",
    "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF",
    "WINCH", "IO", "PWR", "SYS",
];

/// A stop signal as Docker takes it: a name with or without `SIG`, or a number from 1 to 64.
fn stop_signal(signal: &str) -> Result<String, Status> {
    let signal = signal.trim();
    let upper = signal.to_ascii_uppercase();
    let known = signal.is_empty()
        || signal.parse::<u8>().is_ok_and(|n| (1..=64).contains(&n))
        || SIGNALS.contains(&upper.strip_prefix("SIG").unwrap_or(&upper));
    if !known {
        return Err(invalid("spec.stop_signal", format!("{signal:?} is not a signal (e.g. SIGTERM, TERM or 15)")));
    }
    Ok(signal.to_string())
}

/// An update or rollback config with Swarm's defaults filled in. A rollback cannot fail over
/// to another rollback.
fn update_config(name: &str, config: Option<&pb::UpdateConfig>) -> Result<UpdateConfig, Status> {
    let Some(config) = config else { return Ok(UpdateConfig::default()) };
    let field = |f: &str| format!("spec.{name}.{f}");
    let defaults = UpdateConfig::default();
    let failure_action = match config.failure_action.as_str() {
        "" | "pause" => FailureAction::Pause,
        "continue" => FailureAction::Continue,
        "rollback" if name == "update_config" => FailureAction::Rollback,
        other => {
            let allowed = if name == "update_config" { "pause, continue or rollback" } else { "pause or continue" };
            return Err(invalid(&field("failure_action"), format!("{other:?} is invalid: use {allowed}")));
        }
    };
    let order = match config.order.as_str() {
        "" | "stop-first" => UpdateOrder::StopFirst,
        "start-first" => UpdateOrder::StartFirst,
        other => return Err(invalid(&field("order"), format!("{other:?} is invalid: use stop-first or start-first"))),
    };
    let ratio = config.max_failure_ratio;
    if !(0.0..=1.0).contains(&ratio) {
        return Err(invalid(&field("max_failure_ratio"), format!("{ratio} is invalid: use a fraction from 0 to 1")));
    }
    Ok(UpdateConfig {
        parallelism: config.parallelism.unwrap_or(defaults.parallelism),
        delay_ms: config.delay_ms,
        failure_action,
        monitor_ms: config.monitor_ms.unwrap_or(defaults.monitor_ms),
        max_failure_ppm: (f64::from(ratio) * 1_000_000.0).round() as u32,
        order,
    })
}

pub fn update_config_to_proto(config: &UpdateConfig) -> pb::UpdateConfig {
    pb::UpdateConfig {
        parallelism: Some(config.parallelism),
        delay_ms: config.delay_ms,
        failure_action: config.failure_action.as_str().into(),
        monitor_ms: Some(config.monitor_ms),
        max_failure_ratio: config.max_failure_ppm as f32 / 1_000_000.0,
        order: config.order.as_str().into(),
    }
}

/// Docker's health check defaults: every 30 s, 30 s allowed per probe, unhealthy after 3
/// consecutive failures.
pub const HEALTH_INTERVAL_MS: u64 = 30_000;
pub const HEALTH_TIMEOUT_MS: u64 = 30_000;
pub const HEALTH_RETRIES: u32 = 3;

/// The health check with Docker's defaults filled in. The test is `["NONE"]`, `["CMD", args...]`
/// or `["CMD-SHELL", command line]` (an empty test would mean the image's HEALTHCHECK, which is
/// not read: refused).
fn healthcheck(check: Option<&pb::HealthCheck>) -> Result<Option<HealthCheck>, Status> {
    let Some(check) = check else { return Ok(None) };
    let field = |name: &str| format!("spec.healthcheck.{name}");
    match check.test.first().map(String::as_str) {
        Some("NONE") if check.test.len() > 1 => return Err(invalid(&field("test"), "NONE takes no arguments")),
        Some("NONE") => {}
        Some("CMD") if check.test.len() < 2 || check.test[1].trim().is_empty() => {
            return Err(invalid(&field("test"), "CMD needs a command: [\"CMD\", program, args...]"));
        }
        Some("CMD") => {}
        Some("CMD-SHELL") if check.test.len() != 2 || check.test[1].trim().is_empty() => {
            return Err(invalid(&field("test"), "CMD-SHELL needs exactly one command line: [\"CMD-SHELL\", \"command\"]"));
        }
        Some("CMD-SHELL") => {}
        Some(other) => {
            return Err(invalid(&field("test"), format!("{other:?} is invalid: the test starts with NONE, CMD or CMD-SHELL")));
        }
        None => return Err(invalid(&field("test"), "a test is required: [\"NONE\"], [\"CMD\", ...] or [\"CMD-SHELL\", ...]")),
    }
    let at_least_1ms = |name: &str, value: Option<u64>, default: u64| match value {
        Some(0) => Err(invalid(&field(name), "must be at least 1 ms (absent: Docker's default)")),
        Some(v) => Ok(v),
        None => Ok(default),
    };
    let interval_ms = at_least_1ms("interval_ms", check.interval_ms, HEALTH_INTERVAL_MS)?;
    let timeout_ms = at_least_1ms("timeout_ms", check.timeout_ms, HEALTH_TIMEOUT_MS)?;
    let retries = match check.retries {
        Some(0) => return Err(invalid(&field("retries"), "must be at least 1 (absent: 3)")),
        Some(r) => r,
        None => HEALTH_RETRIES,
    };
    Ok(Some(HealthCheck { test: check.test.clone(), interval_ms, timeout_ms, retries, start_period_ms: check.start_period_ms }))
}

fn to_map(labels: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn check_labels(field: &str, labels: &std::collections::HashMap<String, String>) -> Result<(), Status> {
    match labels.keys().find(|k| k.is_empty() || k.contains('=') || k.chars().any(char::is_whitespace)) {
        Some(key) => Err(invalid(field, format!("label key {key:?} is invalid: non-empty, without '=' or spaces"))),
        None => Ok(()),
    }
}

fn mode(mode: Option<&pb::ServiceMode>) -> Result<ServiceMode, Status> {
    let default = pb::ServiceMode::default();
    let mode = mode.unwrap_or(&default);
    let global = matches!(mode.kind.as_str(), "global" | "global-job");
    if global && mode.replicas.is_some() {
        return Err(invalid("spec.mode.replicas", format!("a {} service has no replicas (one task per eligible node)", mode.kind)));
    }
    if mode.kind != "replicated-job" && mode.max_concurrent != 0 {
        return Err(invalid("spec.mode.max_concurrent", "only replicated-job services have max_concurrent"));
    }
    match mode.kind.as_str() {
        "" | "replicated" => Ok(ServiceMode::Replicated { replicas: mode.replicas.unwrap_or(1) }),
        "global" => Ok(ServiceMode::Global),
        "replicated-job" => Ok(ServiceMode::ReplicatedJob {
            max_concurrent: mode.max_concurrent,
            total_completions: mode.replicas.unwrap_or(1),
        }),
        "global-job" => Ok(ServiceMode::GlobalJob),
        other => Err(invalid(
            "spec.mode.kind",
            format!("{other:?} is invalid: use replicated, global, replicated-job or global-job"),
        )),
    }
}

fn mounts(mounts: &[pb::Mount]) -> Result<Vec<Mount>, Status> {
    let mut out: Vec<Mount> = Vec::with_capacity(mounts.len());
    for (i, m) in mounts.iter().enumerate() {
        let field = |name: &str| format!("spec.mounts[{i}].{name}");
        let kind = match m.r#type.as_str() {
            "bind" => MountKind::Bind,
            "" | "volume" => MountKind::Volume,
            "tmpfs" => MountKind::Tmpfs,
            other => return Err(invalid(&field("type"), format!("{other:?} is invalid: use bind, volume or tmpfs"))),
        };
        if !m.target.starts_with('/') || m.target == "/" {
            return Err(invalid(&field("target"), format!("{:?} is invalid: an absolute path other than /", m.target)));
        }
        if let Some(j) = out.iter().position(|other| other.target == m.target) {
            return Err(invalid(&field("target"), format!("{} is already the target of spec.mounts[{j}]", m.target)));
        }
        match kind {
            MountKind::Bind if !m.source.starts_with('/') => {
                return Err(invalid(&field("source"), format!("{:?} is invalid: a bind mount needs an absolute host path", m.source)));
            }
            MountKind::Volume if !m.source.is_empty() && !valid_service_name(&m.source) => {
                return Err(invalid(&field("source"), format!("{:?} is not a valid volume name", m.source)));
            }
            MountKind::Tmpfs if !m.source.is_empty() => {
                return Err(invalid(&field("source"), "a tmpfs mount has no source"));
            }
            _ => {}
        }
        if kind != MountKind::Tmpfs && m.tmpfs_size_bytes != 0 {
            return Err(invalid(&field("tmpfs_size_bytes"), "only tmpfs mounts have a size"));
        }
        out.push(Mount {
            kind,
            source: m.source.clone(),
            target: m.target.clone(),
            readonly: m.readonly,
            tmpfs_size_bytes: m.tmpfs_size_bytes,
        });
    }
    Ok(out)
}

/// The attachments as given: `network_id` still holds the user's target (a name, id or id
/// prefix), which [`super::networks::resolve_attachments`] turns into an id against the store.
fn networks(networks: &[pb::NetworkAttachment]) -> Result<Vec<NetworkAttachment>, Status> {
    let mut out = Vec::with_capacity(networks.len());
    for (i, n) in networks.iter().enumerate() {
        let target = n.target.trim();
        if target.is_empty() {
            return Err(invalid(&format!("spec.networks[{i}].target"), "a network name or id is required"));
        }
        for (j, alias) in n.aliases.iter().enumerate() {
            if !valid_service_name(alias) {
                return Err(invalid(
                    &format!("spec.networks[{i}].aliases[{j}]"),
                    format!("{alias:?} is invalid: 1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit"),
                ));
            }
        }
        out.push(NetworkAttachment { network_id: target.to_string(), aliases: n.aliases.clone() });
    }
    Ok(out)
}

fn amounts(amounts: Option<&pb::ResourceAmounts>) -> ResourceAmounts {
    amounts.map_or_else(ResourceAmounts::default, |a| ResourceAmounts {
        nano_cpus: a.nano_cpus,
        memory_bytes: a.memory_bytes,
        pids: a.pids,
    })
}

fn resources(resources: Option<&pb::Resources>) -> Result<Resources, Status> {
    let Some(resources) = resources else { return Ok(Resources::default()) };
    let reservations = amounts(resources.reservations.as_ref());
    let limits = amounts(resources.limits.as_ref());
    if limits.memory_bytes != 0 && limits.memory_bytes < MIN_MEMORY_LIMIT {
        return Err(invalid(
            "spec.resources.limits.memory_bytes",
            format!("{} bytes is too small: the minimum is 4 MiB ({MIN_MEMORY_LIMIT} bytes)", limits.memory_bytes),
        ));
    }
    if limits.memory_bytes != 0 && reservations.memory_bytes > limits.memory_bytes {
        return Err(invalid("spec.resources.reservations.memory_bytes", "the reservation exceeds the limit"));
    }
    if limits.nano_cpus != 0 && reservations.nano_cpus > limits.nano_cpus {
        return Err(invalid("spec.resources.reservations.nano_cpus", "the reservation exceeds the limit"));
    }
    if reservations.pids != 0 {
        return Err(invalid("spec.resources.reservations.pids", "pids is a limit only"));
    }
    Ok(Resources { reservations, limits })
}

fn restart(policy: Option<&pb::RestartPolicy>) -> Result<RestartPolicy, Status> {
    let default = RestartPolicy::default();
    let Some(policy) = policy else { return Ok(default) };
    let condition = match policy.condition.as_str() {
        "" | "any" => RestartCondition::Any,
        "on-failure" => RestartCondition::OnFailure,
        "none" => RestartCondition::None,
        other => {
            return Err(invalid("spec.restart.condition", format!("{other:?} is invalid: use none, on-failure or any")));
        }
    };
    Ok(RestartPolicy {
        condition,
        delay_ms: policy.delay_ms.unwrap_or(default.delay_ms),
        max_attempts: policy.max_attempts,
        window_ms: policy.window_ms,
    })
}

fn placement(placement: Option<&pb::Placement>) -> Result<Placement, Status> {
    let Some(placement) = placement else { return Ok(Placement::default()) };
    for (i, text) in placement.constraints.iter().enumerate() {
        parse_constraint(text).map_err(|e| invalid(&format!("spec.placement.constraints[{i}]"), e))?;
    }
    for (i, text) in placement.preferences.iter().enumerate() {
        parse_preference(text).map_err(|e| invalid(&format!("spec.placement.preferences[{i}]"), e))?;
    }
    Ok(Placement {
        constraints: placement.constraints.clone(),
        preferences: placement.preferences.clone(),
        max_replicas_per_node: placement.max_replicas_per_node,
    })
}

fn endpoint(endpoint: Option<&pb::EndpointSpec>) -> Result<EndpointSpec, Status> {
    let Some(endpoint) = endpoint else { return Ok(EndpointSpec::default()) };
    let mode = match endpoint.mode.as_str() {
        "" | "vip" => EndpointMode::Vip,
        "dnsrr" => EndpointMode::Dnsrr,
        other => return Err(invalid("spec.endpoint.mode", format!("{other:?} is invalid: use vip or dnsrr"))),
    };
    let mut ports: Vec<PortConfig> = Vec::with_capacity(endpoint.ports.len());
    for (i, p) in endpoint.ports.iter().enumerate() {
        let field = |name: &str| format!("spec.endpoint.ports[{i}].{name}");
        let target = u16::try_from(p.target).ok().filter(|&t| t != 0).ok_or_else(|| {
            invalid(&field("target"), format!("{} is not a port (1-65535)", p.target))
        })?;
        let published = u16::try_from(p.published)
            .map_err(|_| invalid(&field("published"), format!("{} is not a port (0-65535)", p.published)))?;
        let protocol = match p.protocol.as_str() {
            "" | "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            other => return Err(invalid(&field("protocol"), format!("{other:?} is invalid: use tcp, udp or sctp"))),
        };
        let publish_mode = match p.mode.as_str() {
            "" | "ingress" => PublishMode::Ingress,
            "host" => PublishMode::Host,
            other => return Err(invalid(&field("mode"), format!("{other:?} is invalid: use ingress or host"))),
        };
        if mode == EndpointMode::Dnsrr && publish_mode == PublishMode::Ingress {
            return Err(invalid(&field("mode"), "ingress ports need endpoint mode vip (dnsrr has no virtual IP)"));
        }
        let clash = ports.iter().position(|o| published != 0 && o.published == published && o.protocol == protocol);
        if let Some(j) = clash {
            return Err(invalid(
                &field("published"),
                format!("port {published}/{} is already published by spec.endpoint.ports[{j}]", protocol.as_str()),
            ));
        }
        ports.push(PortConfig { target, published, protocol, mode: publish_mode });
    }
    Ok(EndpointSpec { mode, ports })
}

/// The API form of a service's name, labels and spec.
pub fn spec_to_proto(name: &str, labels: &BTreeMap<String, String>, spec: &ServiceSpec) -> pb::ServiceSpec {
    let amounts = |a: &ResourceAmounts| pb::ResourceAmounts { nano_cpus: a.nano_cpus, memory_bytes: a.memory_bytes, pids: a.pids };
    let (kind, replicas, max_concurrent) = match spec.mode {
        ServiceMode::Replicated { replicas } => ("replicated", Some(replicas), 0),
        ServiceMode::Global => ("global", None, 0),
        ServiceMode::ReplicatedJob { max_concurrent, total_completions } => {
            ("replicated-job", Some(total_completions), max_concurrent)
        }
        ServiceMode::GlobalJob => ("global-job", None, 0),
    };
    pb::ServiceSpec {
        name: name.to_string(),
        labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        image: spec.image.clone(),
        entrypoint: spec.entrypoint.clone(),
        command: spec.command.clone(),
        env: spec.env.clone(),
        container_labels: spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        hostname: spec.hostname.clone(),
        user: spec.user.clone(),
        workdir: spec.workdir.clone(),
        mounts: spec
            .mounts
            .iter()
            .map(|m| pb::Mount {
                r#type: match m.kind {
                    MountKind::Bind => "bind",
                    MountKind::Volume => "volume",
                    MountKind::Tmpfs => "tmpfs",
                }
                .into(),
                source: m.source.clone(),
                target: m.target.clone(),
                readonly: m.readonly,
                tmpfs_size_bytes: m.tmpfs_size_bytes,
            })
            .collect(),
        resources: Some(pb::Resources {
            reservations: Some(amounts(&spec.resources.reservations)),
            limits: Some(amounts(&spec.resources.limits)),
        }),
        restart: Some(pb::RestartPolicy {
            condition: match spec.restart.condition {
                RestartCondition::None => "none",
                RestartCondition::OnFailure => "on-failure",
                RestartCondition::Any => "any",
            }
            .into(),
            delay_ms: Some(spec.restart.delay_ms),
            max_attempts: spec.restart.max_attempts,
            window_ms: spec.restart.window_ms,
        }),
        placement: Some(pb::Placement {
            constraints: spec.placement.constraints.clone(),
            preferences: spec.placement.preferences.clone(),
            max_replicas_per_node: spec.placement.max_replicas_per_node,
        }),
        mode: Some(pb::ServiceMode { kind: kind.into(), replicas, max_concurrent }),
        endpoint: Some(pb::EndpointSpec {
            mode: match spec.endpoint.mode {
                EndpointMode::Vip => "vip",
                EndpointMode::Dnsrr => "dnsrr",
            }
            .into(),
            ports: spec
                .endpoint
                .ports
                .iter()
                .map(|p| pb::PortConfig {
                    target: p.target.into(),
                    published: p.published.into(),
                    protocol: p.protocol.as_str().into(),
                    mode: match p.mode {
                        PublishMode::Ingress => "ingress",
                        PublishMode::Host => "host",
                    }
                    .into(),
                })
                .collect(),
        }),
        stop_grace_period_ms: Some(spec.stop_grace_period_ms),
        task_history_limit: Some(spec.task_history_limit),
        networks: spec
            .networks
            .iter()
            .map(|a| pb::NetworkAttachment { target: a.network_id.clone(), aliases: a.aliases.clone() })
            .collect(),
        secrets: super::secrets::file_refs_to_proto(&spec.secrets),
        configs: super::secrets::file_refs_to_proto(&spec.configs),
        healthcheck: spec.healthcheck.as_ref().map(|h| pb::HealthCheck {
            test: h.test.clone(),
            interval_ms: Some(h.interval_ms),
            timeout_ms: Some(h.timeout_ms),
            retries: Some(h.retries),
            start_period_ms: h.start_period_ms,
        }),
        update_config: Some(update_config_to_proto(&spec.update_config)),
        rollback_config: Some(update_config_to_proto(&spec.rollback_config)),
        force_update: spec.force_update,
        stop_signal: spec.stop_signal.clone(),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod health_tests;

//! The `deploy` section of a service: mode and replicas, resources, restart policy, placement,
//! endpoint mode, service labels, update and rollback configs. Values the manager would refuse
//! (a memory limit under 4 MiB, a reservation over its limit, a malformed constraint) are
//! refused here, where the file's position is known, so that a deployment never stops half-way.

use proto::v1::{
    EndpointSpec, Placement, ResourceAmounts, Resources, RestartPolicy, ServiceMode, ServiceSpec,
    UpdateConfig,
};
use serde_norway::Value;

use super::check::Check;
use super::locate::Path;
use crate::parse::duration_ms;

const DEPLOY_KEYS: [&str; 9] = [
    "mode",
    "replicas",
    "resources",
    "restart_policy",
    "placement",
    "endpoint_mode",
    "labels",
    "update_config",
    "rollback_config",
];

/// The smallest memory limit the cluster accepts.
const MIN_MEMORY_LIMIT: u64 = 4 << 20;

/// `KEY==VALUE` or `KEY!=VALUE` with a non-empty key and value (the manager checks the keys).
fn check_constraint(text: &str) -> Result<(), String> {
    let at = [text.find("=="), text.find("!=")]
        .into_iter()
        .flatten()
        .min();
    let Some(at) = at else {
        return Err(format!(
            "invalid constraint {text:?}: expected KEY==VALUE or KEY!=VALUE (e.g. node.role==worker)"
        ));
    };
    let (key, value) = (text[..at].trim(), text[at + 2..].trim());
    if key.is_empty() || value.is_empty() || value.contains("==") || value.contains("!=") {
        return Err(format!(
            "invalid constraint {text:?}: expected KEY==VALUE or KEY!=VALUE (e.g. node.role==worker)"
        ));
    }
    Ok(())
}

impl Check<'_> {
    pub fn deploy(&mut self, value: &Value, path: &Path, spec: &mut ServiceSpec) {
        let mut kind = None;
        let mut replicas = None;
        for (key, v) in self.mapping(value, path) {
            let p = path.key(&key);
            match key.as_str() {
                "mode" => {
                    kind = self
                        .choice(
                            v,
                            &p,
                            &["replicated", "global", "replicated-job", "global-job"],
                        )
                        .map(|k| (k, p.clone()))
                }
                "replicas" => replicas = self.u64(v, &p).map(|r| (r, p.clone())),
                "resources" => spec.resources = self.resources(v, &p),
                "restart_policy" => spec.restart = self.restart_policy(v, &p),
                "placement" => spec.placement = self.placement(v, &p),
                "endpoint_mode" => {
                    if let Some(mode) = self.choice(v, &p, &["vip", "dnsrr"]) {
                        spec.endpoint.get_or_insert_with(EndpointSpec::default).mode = mode;
                    }
                }
                "labels" => {
                    spec.labels = self
                        .key_values(v, &p)
                        .into_iter()
                        .map(|(k, v)| (k, v.unwrap_or_default()))
                        .collect()
                }
                "update_config" => spec.update_config = self.update_config(v, &p, true),
                "rollback_config" => spec.rollback_config = self.update_config(v, &p, false),
                k if k.starts_with("x-") => {}
                _ => self.unknown(&p, &DEPLOY_KEYS),
            }
        }
        if let (Some((kind, _)), Some((_, p))) = (&kind, &replicas)
            && kind.starts_with("global")
        {
            self.error(p, format!("replicas cannot be used with mode {kind}"));
        }
        if kind.is_some() || replicas.is_some() {
            spec.mode = Some(ServiceMode {
                kind: kind
                    .map(|(k, _)| k)
                    .unwrap_or_else(|| "replicated".to_string()),
                replicas: replicas.map(|(r, _)| r),
                max_concurrent: 0,
            });
        }
    }

    /// `update_config` (`update`) or `rollback_config`: a rollback cannot fail over to another
    /// rollback.
    fn update_config(&mut self, value: &Value, path: &Path, update: bool) -> Option<UpdateConfig> {
        const KEYS: [&str; 6] = [
            "parallelism",
            "delay",
            "failure_action",
            "monitor",
            "max_failure_ratio",
            "order",
        ];
        let actions: &[&str] = if update {
            &["pause", "continue", "rollback"]
        } else {
            &["pause", "continue"]
        };
        let mut config = UpdateConfig::default();
        for (key, v) in self.mapping(value, path) {
            let p = path.key(&key);
            match key.as_str() {
                "parallelism" => config.parallelism = self.u64(v, &p),
                "delay" => config.delay_ms = self.duration(v, &p).map_or(0, duration_ms),
                "failure_action" => {
                    config.failure_action = self.choice(v, &p, actions).unwrap_or_default()
                }
                "monitor" => config.monitor_ms = self.duration(v, &p).map(duration_ms),
                "max_failure_ratio" => config.max_failure_ratio = self.ratio(v, &p).unwrap_or(0.0),
                "order" => {
                    config.order = self
                        .choice(v, &p, &["stop-first", "start-first"])
                        .unwrap_or_default()
                }
                k if k.starts_with("x-") => {}
                _ => self.unknown(&p, &KEYS),
            }
        }
        Some(config)
    }

    /// A fraction from 0 to 1 (a number, or a string holding one).
    fn ratio(&mut self, value: &Value, path: &Path) -> Option<f32> {
        let parsed = match value {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        match parsed {
            Some(r) if (0.0..=1.0).contains(&r) => Some(r as f32),
            _ => {
                self.invalid(path, value, "a fraction from 0 to 1");
                None
            }
        }
    }

    fn amounts(&mut self, value: &Value, path: &Path, limits: bool) -> Option<ResourceAmounts> {
        let mut amounts = ResourceAmounts::default();
        for (key, v) in self.mapping(value, path) {
            let p = path.key(&key);
            match key.as_str() {
                "cpus" => amounts.nano_cpus = self.cpus(v, &p).unwrap_or(0),
                "memory" => amounts.memory_bytes = self.memory(v, &p).unwrap_or(0),
                "pids" if limits => amounts.pids = self.u64(v, &p).unwrap_or(0),
                "generic_resources" | "devices" if !limits => {
                    self.warn(&p, "not applied yet: ignored")
                }
                _ if limits => self.unknown(&p, &["cpus", "memory", "pids"]),
                _ => self.unknown(&p, &["cpus", "memory", "generic_resources", "devices"]),
            }
        }
        Some(amounts)
    }

    fn resources(&mut self, value: &Value, path: &Path) -> Option<Resources> {
        let mut resources = Resources::default();
        for (key, v) in self.mapping(value, path) {
            let p = path.key(&key);
            match key.as_str() {
                "limits" => resources.limits = self.amounts(v, &p, true),
                "reservations" => resources.reservations = self.amounts(v, &p, false),
                _ => self.unknown(&p, &["limits", "reservations"]),
            }
        }
        let limits = resources.limits.unwrap_or_default();
        let reservations = resources.reservations.unwrap_or_default();
        if limits.memory_bytes != 0 && limits.memory_bytes < MIN_MEMORY_LIMIT {
            self.error(
                &path.key("limits").key("memory"),
                format!(
                    "{} bytes is too small: the minimum is 4 MiB",
                    limits.memory_bytes
                ),
            );
        }
        if limits.memory_bytes != 0 && reservations.memory_bytes > limits.memory_bytes {
            self.error(
                &path.key("reservations").key("memory"),
                "the reservation exceeds the limit",
            );
        }
        if limits.nano_cpus != 0 && reservations.nano_cpus > limits.nano_cpus {
            self.error(
                &path.key("reservations").key("cpus"),
                "the reservation exceeds the limit",
            );
        }
        Some(resources)
    }

    fn restart_policy(&mut self, value: &Value, path: &Path) -> Option<RestartPolicy> {
        let mut policy = RestartPolicy::default();
        for (key, v) in self.mapping(value, path) {
            let p = path.key(&key);
            match key.as_str() {
                "condition" => {
                    policy.condition = self
                        .choice(v, &p, &["none", "on-failure", "any"])
                        .unwrap_or_default()
                }
                "delay" => policy.delay_ms = self.duration(v, &p).map(duration_ms),
                "max_attempts" => policy.max_attempts = self.u64(v, &p).unwrap_or(0),
                "window" => policy.window_ms = self.duration(v, &p).map_or(0, duration_ms),
                _ => self.unknown(&p, &["condition", "delay", "max_attempts", "window"]),
            }
        }
        Some(policy)
    }

    fn placement(&mut self, value: &Value, path: &Path) -> Option<Placement> {
        let mut placement = Placement::default();
        for (key, v) in self.mapping(value, path) {
            let p = path.key(&key);
            match key.as_str() {
                "constraints" => {
                    placement.constraints = self.strings(v, &p, false);
                    for (i, text) in placement.constraints.iter().enumerate() {
                        if let Err(e) = check_constraint(text) {
                            self.error(&p.index(i), e);
                        }
                    }
                }
                "preferences" => {
                    let Value::Sequence(items) = v else {
                        self.invalid(&p, v, "a list of {spread: EXPR}");
                        continue;
                    };
                    for (i, item) in items.iter().enumerate() {
                        let ip = p.index(i);
                        for (k, expr) in self.mapping(item, &ip) {
                            if k == "spread" {
                                if let Some(expr) = self.string(expr, &ip.key(&k)) {
                                    let label = expr.trim().strip_prefix("node.labels.");
                                    if label.is_none_or(str::is_empty) {
                                        self.invalid(
                                            &ip.key(&k),
                                            &Value::String(expr.clone()),
                                            "node.labels.NAME",
                                        );
                                    }
                                    placement
                                        .preferences
                                        .push(format!("spread={}", expr.trim()));
                                }
                            } else {
                                self.unknown(&ip.key(&k), &["spread"]);
                            }
                        }
                    }
                }
                "max_replicas_per_node" => {
                    placement.max_replicas_per_node = self.u64(v, &p).unwrap_or(0)
                }
                _ => self.unknown(&p, &["constraints", "preferences", "max_replicas_per_node"]),
            }
        }
        Some(placement)
    }
}

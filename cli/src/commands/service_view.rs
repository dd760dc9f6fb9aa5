//! How services and tasks look: the `service ls` and `service ps` tables, the
//! `service inspect --pretty` summary and the convergence progress line.

use std::collections::HashMap;

use proto::v1::{PortConfig, Service, ServiceSpec, Task};

use crate::output::{capitalize, format_time_ms, key_values, table};

/// Ids in tables are cut to this many characters unless `--no-trunc` (docker's width).
pub const SHORT_ID: usize = 12;

/// `id` cut to [`SHORT_ID`] characters.
pub fn short_id(id: &str) -> &str {
    id.get(..SHORT_ID).unwrap_or(id)
}

/// An image as tables show it: without the `@sha256:...` the manager pinned, unless `no_trunc`.
pub fn display_image(image: &str, no_trunc: bool) -> &str {
    if no_trunc {
        image
    } else {
        image.split_once('@').map_or(image, |(name, _)| name)
    }
}

/// The service's mode, "replicated" when unset.
pub fn mode_kind(spec: &ServiceSpec) -> &str {
    match spec.mode.as_ref().map(|m| m.kind.as_str()) {
        None | Some("") => "replicated",
        Some(kind) => kind,
    }
}

fn is_job(spec: &ServiceSpec) -> bool {
    mode_kind(spec).ends_with("-job")
}

/// The REPLICAS column: "running/desired", plus "(N/M completed)" for jobs.
pub fn replicas(service: &Service) -> String {
    let spec = service.spec.clone().unwrap_or_default();
    let mut text = format!("{}/{}", service.running, service.desired);
    if is_job(&spec) {
        let total = if mode_kind(&spec) == "replicated-job" {
            spec.mode.and_then(|m| m.replicas).unwrap_or(1).to_string()
        } else {
            "-".to_string()
        };
        text.push_str(&format!(" ({}/{total} completed)", service.completed));
    }
    text
}

/// `*:8080->80/tcp`, or `:8080->80/tcp (host)` for host-mode ports.
pub fn port(p: &PortConfig) -> String {
    let protocol = if p.protocol.is_empty() {
        "tcp"
    } else {
        &p.protocol
    };
    let published = if p.published == 0 {
        String::new()
    } else {
        p.published.to_string()
    };
    let mut text = format!("*:{published}->{}/{protocol}", p.target);
    if p.mode == "host" {
        text.push_str(" (host)");
    }
    text
}

fn ports(spec: &ServiceSpec) -> String {
    spec.endpoint
        .as_ref()
        .map(|e| e.ports.iter().map(port).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

/// Sorts services by name, then id.
pub fn sort_services(services: &mut [Service]) {
    services.sort_by(|a, b| {
        let name = |s: &Service| s.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        name(a).cmp(&name(b)).then_with(|| a.id.cmp(&b.id))
    });
}

/// The `service ls` table.
pub fn services_table(services: &[Service]) -> String {
    let headers = ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"];
    let rows = services.iter().map(|s| {
        let spec = s.spec.clone().unwrap_or_default();
        vec![
            short_id(&s.id).to_string(),
            spec.name.clone(),
            mode_kind(&spec).to_string(),
            replicas(s),
            display_image(&spec.image, false).to_string(),
            ports(&spec),
        ]
    });
    table(&headers, rows)
}

/// Docker's human durations: "Less than a second", "5 seconds", "About a minute", "3 hours"...
pub fn human_duration(ms: i64) -> String {
    let seconds = ms / 1000;
    let minutes = seconds / 60;
    let hours = minutes / 60;
    if seconds < 1 {
        "Less than a second".to_string()
    } else if seconds == 1 {
        "1 second".to_string()
    } else if seconds < 60 {
        format!("{seconds} seconds")
    } else if minutes == 1 {
        "About a minute".to_string()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 && minutes < 90 {
        "About an hour".to_string()
    } else if hours < 48 {
        format!("{} hours", hours.max(2))
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", hours / 24 / 365)
    }
}

/// "Running 5 seconds ago"; the state alone when its time is unknown. A running task's health,
/// when it has a health check, follows: "Running 5 seconds ago (healthy)".
pub fn current_state(task: &Task, now_ms: i64) -> String {
    let state = capitalize(&task.state);
    let at = if task.timestamp_ms != 0 {
        task.timestamp_ms
    } else {
        task.updated_at_ms
    };
    let text = if at == 0 {
        state
    } else {
        format!("{state} {} ago", human_duration((now_ms - at).max(0)))
    };
    if task.state == "running" && !task.health.is_empty() {
        format!("{text} ({})", task.health)
    } else {
        text
    }
}

/// Sorts tasks by service name, then slot (or node), newest first within a slot.
pub fn sort_tasks(tasks: &mut [Task]) {
    tasks.sort_by(|a, b| {
        a.service_name
            .cmp(&b.service_name)
            .then_with(|| a.slot.cmp(&b.slot))
            .then_with(|| a.node_id.cmp(&b.node_id).then(std::cmp::Ordering::Equal))
            .then_with(|| b.created_at_ms.cmp(&a.created_at_ms))
            .then_with(|| a.id.cmp(&b.id))
    });
}

/// `<service>.<slot>`, or `<service>.<node id>` for global tasks (slot 0).
pub fn task_name(task: &Task, no_trunc: bool) -> String {
    if task.slot != 0 {
        format!("{}.{}", task.service_name, task.slot)
    } else if task.node_id.is_empty() {
        task.service_name.clone()
    } else if no_trunc {
        format!("{}.{}", task.service_name, task.node_id)
    } else {
        format!("{}.{}", task.service_name, short_id(&task.node_id))
    }
}

/// The `service ps` table. `images` maps service ids to images, `nodes` node ids to hostnames.
/// Older tasks of a slot are shown as ` \_ name`, like docker.
pub fn tasks_table(
    tasks: &[Task],
    images: &HashMap<String, String>,
    nodes: &HashMap<String, String>,
    now_ms: i64,
    no_trunc: bool,
) -> String {
    let headers = [
        "ID",
        "NAME",
        "IMAGE",
        "NODE",
        "DESIRED STATE",
        "CURRENT STATE",
        "ERROR",
    ];
    let mut previous: Option<String> = None;
    let rows = tasks.iter().map(|t| {
        let name = task_name(t, true);
        let shown = if previous.as_deref() == Some(name.as_str()) {
            format!(" \\_ {}", task_name(t, no_trunc))
        } else {
            task_name(t, no_trunc)
        };
        previous = Some(name);
        let node = if t.node_id.is_empty() {
            String::new()
        } else {
            nodes
                .get(&t.node_id)
                .cloned()
                .unwrap_or_else(|| t.node_id.clone())
        };
        let mut error = t.err.clone();
        if !no_trunc && error.chars().count() > 30 {
            error = format!("\"{}…\"", error.chars().take(29).collect::<String>());
        } else if !error.is_empty() {
            error = format!("\"{error}\"");
        }
        vec![
            if no_trunc {
                t.id.clone()
            } else {
                short_id(&t.id).to_string()
            },
            shown,
            images
                .get(&t.service_id)
                .map(|i| display_image(i, no_trunc).to_string())
                .unwrap_or_default(),
            node,
            capitalize(&t.desired_state),
            current_state(t, now_ms),
            error,
        ]
    });
    table(&headers, rows.collect::<Vec<_>>())
}

/// One convergence progress line: "web: 3/6 running".
pub fn progress(service: &Service) -> String {
    let spec = service.spec.clone().unwrap_or_default();
    if is_job(&spec) {
        format!(
            "{}: {} running, {} completed",
            spec.name, service.running, service.completed
        )
    } else {
        format!(
            "{}: {}/{} running",
            spec.name, service.running, service.desired
        )
    }
}

/// Whether the service has converged: all desired tasks running (jobs: none left to run).
pub fn converged(service: &Service) -> bool {
    let spec = service.spec.clone().unwrap_or_default();
    if is_job(&spec) {
        service.desired == 0 && service.running == 0
    } else {
        service.running == service.desired
    }
}

fn or_default(value: &str, default: &str) -> String {
    if value.is_empty() { default } else { value }.to_string()
}

fn ms(d: Option<u64>, default: &str) -> String {
    d.map_or_else(
        || default.to_string(),
        |ms| {
            if ms % 1000 == 0 {
                format!("{}s", ms / 1000)
            } else {
                format!("{ms}ms")
            }
        },
    )
}

fn map_entries(
    entries: &mut Vec<(&str, String)>,
    key: &'static str,
    map: &HashMap<String, String>,
) {
    let mut items: Vec<_> = map.iter().collect();
    items.sort();
    if items.is_empty() {
        return;
    }
    entries.push((key, String::new()));
    for (k, v) in items {
        entries.push(("", format!(" - {k}={v}")));
    }
}

/// The `service inspect --pretty` summary of one service.
pub fn inspect_pretty(service: &Service) -> String {
    let spec = service.spec.clone().unwrap_or_default();
    let mut entries: Vec<(&str, String)> =
        vec![("ID", service.id.clone()), ("Name", spec.name.clone())];
    map_entries(&mut entries, "Labels", &spec.labels);
    entries.push(("Mode", capitalize(mode_kind(&spec))));
    if let Some(r) = spec.mode.as_ref().and_then(|m| m.replicas) {
        entries.push((" Replicas", r.to_string()));
    }
    entries.push((
        "Running/desired",
        format!("{}/{}", service.running, service.desired),
    ));
    entries.push(("Created at", format_time_ms(service.created_at_ms)));
    entries.push(("Updated at", format_time_ms(service.updated_at_ms)));
    entries.push(("Version", service.version.to_string()));
    if let Some(status) = &service.update_status {
        entries.push(("UpdateStatus", String::new()));
        entries.push((" State", status.state.clone()));
        entries.push((" Started", format_time_ms(status.started_at_ms)));
        if status.completed_at_ms != 0 {
            entries.push((" Completed", format_time_ms(status.completed_at_ms)));
        }
        entries.push((" Message", status.message.clone()));
    }
    if let Some(p) = &spec.placement
        && (!p.constraints.is_empty() || !p.preferences.is_empty() || p.max_replicas_per_node != 0)
    {
        entries.push(("Placement", String::new()));
        if !p.constraints.is_empty() {
            entries.push((" Constraints", format!("{:?}", p.constraints)));
        }
        if !p.preferences.is_empty() {
            entries.push((" Preferences", format!("{:?}", p.preferences)));
        }
        if p.max_replicas_per_node != 0 {
            entries.push((
                " Max replicas per node",
                p.max_replicas_per_node.to_string(),
            ));
        }
    }
    let restart = spec.restart.clone().unwrap_or_default();
    entries.push(("RestartPolicy", String::new()));
    entries.push((
        " Condition",
        if restart.condition.is_empty() {
            "any".to_string()
        } else {
            restart.condition.clone()
        },
    ));
    entries.push((" Delay", ms(restart.delay_ms, "5s")));
    entries.push((
        " Max attempts",
        if restart.max_attempts == 0 {
            "unlimited".to_string()
        } else {
            restart.max_attempts.to_string()
        },
    ));
    for (key, config) in [
        ("UpdateConfig", &spec.update_config),
        ("RollbackConfig", &spec.rollback_config),
    ] {
        let Some(config) = config else { continue };
        entries.push((key, String::new()));
        entries.push((" Parallelism", config.parallelism.unwrap_or(1).to_string()));
        entries.push((" Delay", ms(Some(config.delay_ms), "0s")));
        entries.push((" On failure", or_default(&config.failure_action, "pause")));
        entries.push((" Monitoring period", ms(config.monitor_ms, "5s")));
        entries.push((" Max failure ratio", config.max_failure_ratio.to_string()));
        entries.push((" Update order", or_default(&config.order, "stop-first")));
    }
    entries.push(("ContainerSpec", String::new()));
    entries.push((" Image", spec.image.clone()));
    if !spec.entrypoint.is_empty() {
        entries.push((" Entrypoint", spec.entrypoint.join(" ")));
    }
    if !spec.command.is_empty() {
        entries.push((" Args", spec.command.join(" ")));
    }
    if !spec.env.is_empty() {
        entries.push((" Env", spec.env.join(" ")));
    }
    for (key, value) in [
        (" Hostname", &spec.hostname),
        (" User", &spec.user),
        (" Dir", &spec.workdir),
    ] {
        if !value.is_empty() {
            entries.push((key, value.clone()));
        }
    }
    entries.push((" Stop grace period", ms(spec.stop_grace_period_ms, "10s")));
    if !spec.mounts.is_empty() {
        entries.push(("Mounts", String::new()));
        for m in &spec.mounts {
            let kind = if m.r#type.is_empty() {
                "volume"
            } else {
                &m.r#type
            };
            let ro = if m.readonly { " (read-only)" } else { "" };
            entries.push(("", format!(" - {kind} {} -> {}{ro}", m.source, m.target)));
        }
    }
    if let Some(r) = &spec.resources {
        for (key, amounts) in [("Reservations", &r.reservations), ("Limits", &r.limits)] {
            let Some(a) = amounts else { continue };
            if a.nano_cpus == 0 && a.memory_bytes == 0 && a.pids == 0 {
                continue;
            }
            entries.push((key, String::new()));
            if a.nano_cpus != 0 {
                entries.push((" CPU", format!("{}", a.nano_cpus as f64 / 1e9)));
            }
            if a.memory_bytes != 0 {
                entries.push((" Memory", format!("{} bytes", a.memory_bytes)));
            }
            if a.pids != 0 {
                entries.push((" PIDs", a.pids.to_string()));
            }
        }
    }
    if let Some(e) = &spec.endpoint {
        entries.push((
            "Endpoint mode",
            if e.mode.is_empty() {
                "vip".to_string()
            } else {
                e.mode.clone()
            },
        ));
        if !e.ports.is_empty() {
            entries.push(("Ports", String::new()));
            for p in &e.ports {
                entries.push(("", format!(" - {}", port(p))));
            }
        }
    }
    if !spec.networks.is_empty() {
        let networks: Vec<String> = spec
            .networks
            .iter()
            .map(|n| {
                if n.aliases.is_empty() {
                    n.target.clone()
                } else {
                    format!("{} (aliases: {})", n.target, n.aliases.join(", "))
                }
            })
            .collect();
        entries.push(("Networks", networks.join("; ")));
    }
    key_values(&entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::{EndpointSpec, ServiceMode};

    fn service(
        name: &str,
        kind: &str,
        replicas: Option<u64>,
        running: u64,
        desired: u64,
    ) -> Service {
        Service {
            id: format!("{name}0123456789abcdef"),
            spec: Some(ServiceSpec {
                name: name.to_string(),
                image: "busybox".to_string(),
                mode: Some(ServiceMode {
                    kind: kind.to_string(),
                    replicas,
                    max_concurrent: 0,
                }),
                ..Default::default()
            }),
            running,
            desired,
            ..Default::default()
        }
    }

    fn task(slot: u64, node: &str, state: &str, created: i64) -> Task {
        Task {
            id: format!("t{slot}{created}aaaaaaaaaaaaaaaa"),
            service_id: "svc".to_string(),
            service_name: "web".to_string(),
            slot,
            node_id: node.to_string(),
            desired_state: "running".to_string(),
            state: state.to_string(),
            timestamp_ms: 1_000_000,
            created_at_ms: created,
            ..Default::default()
        }
    }

    #[test]
    fn table_of_services() {
        let mut web = service("web", "", Some(3), 1, 3);
        web.spec.as_mut().unwrap().endpoint = Some(EndpointSpec {
            mode: String::new(),
            ports: vec![PortConfig {
                target: 80,
                published: 8080,
                protocol: String::new(),
                mode: String::new(),
            }],
        });
        let mut services = vec![web, service("agent", "global", None, 0, 0)];
        sort_services(&mut services);
        let expected = "\
ID             NAME    MODE         REPLICAS   IMAGE     PORTS
agent0123456   agent   global       0/0        busybox
web012345678   web     replicated   1/3        busybox   *:8080->80/tcp
";
        assert_eq!(services_table(&services), expected);
        let job = service("once", "replicated-job", Some(4), 1, 2);
        assert_eq!(replicas(&job), "1/2 (0/4 completed)");
    }

    #[test]
    fn table_of_tasks() {
        let mut tasks = vec![
            task(2, "", "pending", 5),
            task(1, "00000000000000a1", "running", 3),
            task(1, "00000000000000a1", "failed", 1),
        ];
        tasks[2].desired_state = "shutdown".to_string();
        tasks[2].err = "task: non-zero exit (1)".to_string();
        sort_tasks(&mut tasks);
        let images = HashMap::from([("svc".to_string(), "busybox".to_string())]);
        let nodes = HashMap::from([("00000000000000a1".to_string(), "m1".to_string())]);
        let text = tasks_table(&tasks, &images, &nodes, 1_005_000, false);
        let expected = "\
ID             NAME        IMAGE     NODE   DESIRED STATE   CURRENT STATE           ERROR
t13aaaaaaaaa   web.1       busybox   m1     Running         Running 5 seconds ago
t11aaaaaaaaa    \\_ web.1   busybox   m1     Shutdown        Failed 5 seconds ago    \"task: non-zero exit (1)\"
t25aaaaaaaaa   web.2       busybox          Running         Pending 5 seconds ago
";
        assert_eq!(text, expected);
        let global = task(0, "00000000000000a1ffff", "running", 1);
        assert_eq!(
            task_name(&global, false),
            "web.00000000000000a1".get(..16).unwrap()
        );
        assert_eq!(task_name(&global, true), "web.00000000000000a1ffff");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(500), "Less than a second");
        assert_eq!(human_duration(1_000), "1 second");
        assert_eq!(human_duration(45_000), "45 seconds");
        assert_eq!(human_duration(61_000), "About a minute");
        assert_eq!(human_duration(10 * 60_000), "10 minutes");
        assert_eq!(human_duration(65 * 60_000), "About an hour");
        assert_eq!(human_duration(5 * 3_600_000), "5 hours");
        assert_eq!(human_duration(3 * 86_400_000), "3 days");
    }

    #[test]
    fn progress_and_convergence() {
        let s = service("web", "", Some(6), 3, 6);
        assert_eq!(progress(&s), "web: 3/6 running");
        assert!(!converged(&s));
        assert!(converged(&service("web", "", Some(6), 6, 6)));
    }

    #[test]
    fn pretty_inspect() {
        let text = inspect_pretty(&service("web", "", Some(3), 1, 3));
        assert!(text.contains("Name:"), "{text}");
        assert!(
            text.contains("Mode:                 Replicated\n"),
            "{text}"
        );
        assert!(text.contains(" Image:               busybox\n"), "{text}");
    }
}

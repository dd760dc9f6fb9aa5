//! One compose service -> the parts of a `ServiceSpec` it sets (the stack's names are applied
//! later, in `ServiceDef::spec`).

use proto::v1::{EndpointSpec, HealthCheck, Mount, PortConfig, ServiceSpec};
use serde_norway::Value;

use super::check::Check;
use super::files::FileKind;
use super::interpolate::parse_env_file;
use super::locate::Path;
use crate::parse::{duration_ms, parse_publish};

/// The service keys read here.
pub const SERVICE_KEYS: [&str; 18] = [
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "networks",
    "volumes",
    "hostname",
    "user",
    "working_dir",
    "labels",
    "stop_grace_period",
    "stop_signal",
    "deploy",
    "secrets",
    "configs",
    "healthcheck",
];

/// Keys `docker stack deploy` ignores too: a warning, not an error.
pub const SWARM_IGNORES: [&str; 11] = [
    "build",
    "cgroup_parent",
    "container_name",
    "depends_on",
    "devices",
    "external_links",
    "links",
    "network_mode",
    "restart",
    "security_opt",
    "userns_mode",
];

/// Valid compose keys this cluster does not apply yet: a warning, so nothing passes silently.
pub const NOT_YET: [&str; 23] = [
    "cap_add",
    "cap_drop",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "expose",
    "extra_hosts",
    "init",
    "ipc",
    "isolation",
    "logging",
    "mac_address",
    "pid",
    "privileged",
    "read_only",
    "shm_size",
    "stdin_open",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "credential_spec",
];

/// A service as the file describes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceDef {
    /// Everything but the name, the networks and the stack's labels.
    pub spec: ServiceSpec,
    /// The `networks` key: (network key in the file, aliases); `None` when absent.
    pub networks: Option<Vec<(String, Vec<String>)>>,
    /// Named volumes used by the mounts (keys of the top-level `volumes`), per mount index.
    pub named_volumes: Vec<(usize, String)>,
}

/// Sets `KEY=VALUE` in `env`, replacing an earlier value of KEY (keeping its place).
fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    let entry = format!("{key}={value}");
    match env
        .iter_mut()
        .find(|e| e.split_once('=').is_some_and(|(k, _)| k == key))
    {
        Some(slot) => *slot = entry,
        None => env.push(entry),
    }
}

impl Check<'_> {
    /// Reads the service at `path`.
    pub fn service(&mut self, value: &Value, path: &Path) -> ServiceDef {
        let mut def = ServiceDef::default();
        let spec = &mut def.spec;
        let entries = self.mapping(value, path);
        let mut env_files = Vec::new();
        let mut environment = None;
        for (key, value) in &entries {
            let p = path.key(key);
            match key.as_str() {
                "image" => spec.image = self.string(value, &p).unwrap_or_default(),
                "command" => spec.command = self.command(value, &p).unwrap_or_default(),
                "entrypoint" => spec.entrypoint = self.command(value, &p).unwrap_or_default(),
                "environment" => environment = Some((*value, p)),
                "env_file" => env_files = self.env_files(value, &p),
                "ports" => {
                    let ports = self.ports(value, &p);
                    spec.endpoint
                        .get_or_insert_with(EndpointSpec::default)
                        .ports = ports;
                }
                "networks" => def.networks = Some(self.service_networks(value, &p)),
                "volumes" => {
                    let (mounts, named) = self.mounts(value, &p);
                    spec.mounts = mounts;
                    def.named_volumes = named;
                }
                "hostname" => spec.hostname = self.string(value, &p).unwrap_or_default(),
                "user" => spec.user = self.string(value, &p).unwrap_or_default(),
                "working_dir" => spec.workdir = self.string(value, &p).unwrap_or_default(),
                "labels" => {
                    spec.container_labels = self
                        .key_values(value, &p)
                        .into_iter()
                        .map(|(k, v)| (k, v.unwrap_or_default()))
                        .collect()
                }
                "stop_grace_period" => {
                    spec.stop_grace_period_ms = self.duration(value, &p).map(duration_ms)
                }
                "stop_signal" => spec.stop_signal = self.string(value, &p).unwrap_or_default(),
                "deploy" => self.deploy(value, &p, spec),
                "secrets" => spec.secrets = self.file_refs(FileKind::Secret, value, &p),
                "configs" => spec.configs = self.file_refs(FileKind::Config, value, &p),
                "healthcheck" => spec.healthcheck = self.healthcheck(value, &p),
                k if k.starts_with("x-") => {}
                k if SWARM_IGNORES.contains(&k) => {
                    self.warn(&p, "ignored: swarm stacks do not use it (like docker)")
                }
                k if NOT_YET.contains(&k) => self.warn(&p, "not applied yet: ignored"),
                _ => self.unknown(&p, &SERVICE_KEYS),
            }
        }
        if let Some(endpoint) = &spec.endpoint
            && endpoint.mode == "dnsrr"
            && endpoint.ports.iter().any(|p| p.mode != "host")
        {
            self.error(
                &path.key("deploy").key("endpoint_mode"),
                "dnsrr has no virtual IP: published ports need mode: host",
            );
        }
        if spec.image.is_empty() && !entries.is_empty() {
            self.error(path, "image is required (stacks build no images)");
        } else if entries.is_empty() {
            self.error(path, "a service needs at least an image");
        }
        // env_file entries first, in order; `environment` overrides them.
        for (file, p) in env_files {
            let full = self.resolve(&file);
            match std::fs::read_to_string(&full) {
                Ok(text) => match parse_env_file(&text) {
                    Ok(vars) => {
                        let mut vars: Vec<_> = vars.into_iter().collect();
                        vars.sort();
                        for (k, v) in vars {
                            set_env(&mut def.spec.env, &k, &v);
                        }
                    }
                    Err(e) => self.error(&p, format!("{}: {e}", full.display())),
                },
                Err(e) => self.error(&p, format!("cannot read {}: {e}", full.display())),
            }
        }
        if let Some((value, p)) = environment {
            for (key, val) in self.key_values(value, &p) {
                // `KEY` alone takes its value from this environment; unset, it is left out.
                let val = val.or_else(|| self.vars.get(&key).map(str::to_string));
                if let Some(val) = val {
                    set_env(&mut def.spec.env, &key, &val);
                }
            }
        }
        def
    }

    /// `healthcheck`: a string test runs in a shell (`CMD-SHELL`); a list starts with `NONE`,
    /// `CMD` or `CMD-SHELL`; `disable: true` is `["NONE"]`. There is no test to inherit (the
    /// image's HEALTHCHECK is not read), so one is required.
    fn healthcheck(&mut self, value: &Value, path: &Path) -> Option<HealthCheck> {
        const KEYS: [&str; 7] = [
            "test",
            "interval",
            "timeout",
            "retries",
            "start_period",
            "start_interval",
            "disable",
        ];
        let mut check = HealthCheck::default();
        let mut test = None;
        let mut disable = None;
        for (key, v) in self.mapping(value, path) {
            let p = path.key(&key);
            match key.as_str() {
                "test" => test = self.health_test(v, &p).map(|t| (t, p)),
                "interval" => check.interval_ms = self.positive_ms(v, &p),
                "timeout" => check.timeout_ms = self.positive_ms(v, &p),
                "retries" => match self.u64(v, &p) {
                    Some(0) => self.error(&p, "must be at least 1 (absent: 3)"),
                    Some(n) => match u32::try_from(n) {
                        Ok(n) => check.retries = Some(n),
                        Err(_) => self.invalid(&p, v, "at most 4294967295"),
                    },
                    None => {}
                },
                "start_period" => {
                    check.start_period_ms = self.duration(v, &p).map_or(0, duration_ms)
                }
                "start_interval" => self.warn(&p, "not applied yet: ignored"),
                "disable" => disable = self.bool(v, &p).map(|d| (d, p)),
                k if k.starts_with("x-") => {}
                _ => self.unknown(&p, &KEYS),
            }
        }
        match (disable, test) {
            (Some((true, _)), Some((test, p))) if test != ["NONE"] => {
                self.error(&p, "a test cannot be combined with disable: true");
                None
            }
            (Some((true, _)), _) => Some(HealthCheck {
                test: vec!["NONE".to_string()],
                ..Default::default()
            }),
            (_, Some((test, _))) => {
                check.test = test;
                Some(check)
            }
            (_, None) => {
                if !self.errors.iter().any(|e| e.path == path.key("test")) {
                    self.error(
                        path,
                        "test is required (the image's HEALTHCHECK is not read); use disable: true to turn it off",
                    );
                }
                None
            }
        }
    }

    /// A health check test, in the form the managers take.
    fn health_test(&mut self, value: &Value, path: &Path) -> Option<Vec<String>> {
        let test = match value {
            Value::String(s) if s.trim().is_empty() => {
                self.error(path, "the command is empty");
                return None;
            }
            Value::String(s) => return Some(vec!["CMD-SHELL".to_string(), s.clone()]),
            Value::Sequence(_) => self.strings(value, path, false),
            other => {
                self.invalid(
                    path,
                    other,
                    "a command line or a list starting with NONE, CMD or CMD-SHELL",
                );
                return None;
            }
        };
        let problem = match test.first().map(String::as_str) {
            Some("NONE") if test.len() > 1 => Some("NONE takes no arguments"),
            Some("CMD") if test.len() < 2 || test[1].trim().is_empty() => {
                Some("CMD needs a command: [CMD, program, args...]")
            }
            Some("CMD-SHELL") if test.len() != 2 || test[1].trim().is_empty() => {
                Some("CMD-SHELL needs exactly one command line: [CMD-SHELL, \"command\"]")
            }
            Some("NONE" | "CMD" | "CMD-SHELL") => None,
            _ => Some("the list starts with NONE, CMD or CMD-SHELL"),
        };
        match problem {
            Some(problem) => {
                self.error(path, problem);
                None
            }
            None => Some(test),
        }
    }

    /// A duration of at least 1 ms, in ms (the managers take 0 as a mistake).
    fn positive_ms(&mut self, value: &Value, path: &Path) -> Option<u64> {
        let ms = self.duration(value, path).map(duration_ms)?;
        if ms == 0 {
            self.error(path, "must be at least 1ms");
            return None;
        }
        Some(ms)
    }

    fn env_files(&mut self, value: &Value, path: &Path) -> Vec<(String, Path)> {
        match value {
            Value::String(s) => vec![(s.clone(), path.clone())],
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let p = path.index(i);
                    let file = match item {
                        Value::Mapping(_) => {
                            let mut file = None;
                            for (k, v) in self.mapping(item, &p) {
                                match k.as_str() {
                                    "path" => file = self.string(v, &p.key(&k)),
                                    "required" => {
                                        self.bool(v, &p.key(&k));
                                    }
                                    _ => self.unknown(&p.key(&k), &["path", "required"]),
                                }
                            }
                            file
                        }
                        other => self.string(other, &p),
                    };
                    file.map(|f| (f, p))
                })
                .collect(),
            other => {
                self.invalid(path, other, "a file name or a list of them");
                Vec::new()
            }
        }
    }

    fn ports(&mut self, value: &Value, path: &Path) -> Vec<PortConfig> {
        let Value::Sequence(items) = value else {
            self.invalid(path, value, "a list of ports");
            return Vec::new();
        };
        let mut ports = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = path.index(i);
            match item {
                Value::String(_) | Value::Number(_) => {
                    let mut text = self.string(item, &p).unwrap_or_default();
                    // HOST_IP:PUBLISHED:TARGET: the routing mesh listens on every address.
                    if text.matches(':').count() == 2
                        && let Some((ip, rest)) = text.split_once(':')
                        && ip.parse::<std::net::Ipv4Addr>().is_ok()
                    {
                        self.warn(&p, format!("the host IP {ip} is not applied yet: ignored"));
                        text = rest.to_string();
                    }
                    match parse_publish(&text) {
                        Ok(port) if !text.contains('=') => ports.push(port),
                        Ok(_) => self.invalid(&p, item, "PUBLISHED:TARGET[/PROTOCOL]"),
                        Err(e) => self.error(&p, e),
                    }
                }
                Value::Mapping(_) => {
                    if let Some(port) = self.long_port(item, &p) {
                        ports.push(port);
                    }
                }
                other => self.invalid(&p, other, "\"PUBLISHED:TARGET\" or a mapping"),
            }
            if ports.len() == i + 1 {
                let new = &ports[i];
                let protocol = |p: &PortConfig| {
                    if p.protocol.is_empty() {
                        "tcp".to_string()
                    } else {
                        p.protocol.clone()
                    }
                };
                if new.published != 0
                    && ports[..i]
                        .iter()
                        .any(|o| o.published == new.published && protocol(o) == protocol(new))
                {
                    self.error(
                        &p,
                        format!(
                            "port {}/{} is published twice",
                            new.published,
                            protocol(new)
                        ),
                    );
                }
            } else {
                // Keep indexes aligned with the file for the check above.
                ports.push(PortConfig::default());
            }
        }
        ports.retain(|p| p.target != 0);
        ports
    }

    fn port_number(&mut self, value: &Value, path: &Path, min: u64) -> Option<u32> {
        let n = self.u64(value, path)?;
        if n < min || n > 65535 {
            self.invalid(path, value, &format!("a port number in {min}-65535"));
            return None;
        }
        u32::try_from(n).ok()
    }

    fn long_port(&mut self, value: &Value, path: &Path) -> Option<PortConfig> {
        const KEYS: [&str; 5] = ["target", "published", "protocol", "mode", "host_ip"];
        let mut port = PortConfig::default();
        let mut target = None;
        for (key, v) in self.mapping(value, path) {
            let p = path.key(&key);
            match key.as_str() {
                "target" => target = self.port_number(v, &p, 1),
                "published" => port.published = self.port_number(v, &p, 0).unwrap_or(0),
                "protocol" => {
                    port.protocol = self
                        .choice(v, &p, &["tcp", "udp", "sctp"])
                        .unwrap_or_default()
                }
                "mode" => port.mode = self.choice(v, &p, &["ingress", "host"]).unwrap_or_default(),
                "host_ip" | "name" | "app_protocol" => self.warn(&p, "not applied yet: ignored"),
                k if k.starts_with("x-") => {}
                _ => self.unknown(&p, &KEYS),
            }
        }
        match target {
            Some(t) => {
                port.target = t;
                Some(port)
            }
            None => {
                if !self.errors.iter().any(|e| e.path == path.key("target")) {
                    self.error(path, "target is required");
                }
                None
            }
        }
    }

    fn service_networks(&mut self, value: &Value, path: &Path) -> Vec<(String, Vec<String>)> {
        match value {
            Value::Sequence(_) => self
                .strings(value, path, false)
                .into_iter()
                .map(|n| (n, Vec::new()))
                .collect(),
            Value::Mapping(_) => {
                let mut out = Vec::new();
                for (name, v) in self.mapping(value, path) {
                    let p = path.key(&name);
                    let mut aliases = Vec::new();
                    for (key, item) in self.mapping(v, &p) {
                        let kp = p.key(&key);
                        match key.as_str() {
                            "aliases" => {
                                aliases = self.strings(item, &kp, false);
                                for (i, alias) in aliases.iter().enumerate() {
                                    if super::plan::check_name("alias", alias).is_err() {
                                        self.error(
                                            &kp.index(i),
                                            format!("invalid alias {alias:?}: 1-63 characters of [a-zA-Z0-9_.-], starting with a letter or digit"),
                                        );
                                    }
                                }
                            }
                            "ipv4_address" | "ipv6_address" | "link_local_ips" | "priority"
                            | "driver_opts" | "mac_address" | "gw_priority" => {
                                self.warn(&kp, "not applied yet: ignored")
                            }
                            k if k.starts_with("x-") => {}
                            _ => self.unknown(&kp, &["aliases"]),
                        }
                    }
                    out.push((name, aliases));
                }
                out
            }
            other => {
                self.invalid(path, other, "a list of networks or a mapping");
                Vec::new()
            }
        }
    }

    /// Service `volumes`: the mounts, and which of them name a top-level volume.
    fn mounts(&mut self, value: &Value, path: &Path) -> (Vec<Mount>, Vec<(usize, String)>) {
        let Value::Sequence(items) = value else {
            self.invalid(path, value, "a list of volumes");
            return (Vec::new(), Vec::new());
        };
        let mut mounts = Vec::new();
        let mut named = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = path.index(i);
            let mount = match item {
                Value::String(text) => self.short_mount(text, &p),
                Value::Mapping(_) => self.long_mount(item, &p),
                other => {
                    self.invalid(&p, other, "\"SOURCE:TARGET[:ro]\" or a mapping");
                    None
                }
            };
            let Some(mut mount) = mount else { continue };
            if !mount.target.starts_with('/') || mount.target == "/" {
                self.error(
                    &p,
                    format!(
                        "the target {:?} is not an absolute path other than /",
                        mount.target
                    ),
                );
                continue;
            }
            if mounts.iter().any(|m: &Mount| m.target == mount.target) {
                self.error(
                    &p,
                    format!("{} is the target of another volume", mount.target),
                );
                continue;
            }
            if mount.r#type == "bind" {
                mount.source = self.resolve(&mount.source).display().to_string();
            }
            if mount.r#type == "volume" && !mount.source.is_empty() {
                named.push((mounts.len(), mount.source.clone()));
            }
            mounts.push(mount);
        }
        (mounts, named)
    }

    fn short_mount(&mut self, text: &str, path: &Path) -> Option<Mount> {
        let parts: Vec<&str> = text.split(':').collect();
        let (source, target, options) = match parts.as_slice() {
            [target] => ("", *target, ""),
            [source, target] => (*source, *target, ""),
            [source, target, options] => (*source, *target, *options),
            _ => {
                self.error(
                    path,
                    format!("invalid volume {text:?}: expected [SOURCE:]TARGET[:ro]"),
                );
                return None;
            }
        };
        let mut readonly = false;
        for option in options.split(',').filter(|o| !o.is_empty()) {
            match option {
                "ro" => readonly = true,
                "rw" => readonly = false,
                "z" | "Z" | "nocopy" | "cached" | "delegated" | "consistent" => {}
                other => {
                    self.error(
                        path,
                        format!("invalid volume {text:?}: unknown option {other:?}"),
                    );
                    return None;
                }
            }
        }
        let bind = source.starts_with('/') || source.starts_with('.') || source.starts_with('~');
        Some(Mount {
            r#type: if bind { "bind" } else { "volume" }.to_string(),
            source: source.to_string(),
            target: target.to_string(),
            readonly,
            tmpfs_size_bytes: 0,
        })
    }

    fn long_mount(&mut self, value: &Value, path: &Path) -> Option<Mount> {
        const KEYS: [&str; 8] = [
            "type",
            "source",
            "target",
            "read_only",
            "bind",
            "volume",
            "tmpfs",
            "consistency",
        ];
        let mut mount = Mount::default();
        for (key, v) in self.mapping(value, path) {
            let p = path.key(&key);
            match key.as_str() {
                "type" => {
                    mount.r#type = self.choice(v, &p, &["volume", "bind", "tmpfs"])?;
                }
                "source" => mount.source = self.string(v, &p).unwrap_or_default(),
                "target" => mount.target = self.string(v, &p).unwrap_or_default(),
                "read_only" => mount.readonly = self.bool(v, &p).unwrap_or(false),
                "tmpfs" => {
                    for (k, item) in self.mapping(v, &p) {
                        match k.as_str() {
                            "size" => {
                                mount.tmpfs_size_bytes = self.memory(item, &p.key(&k)).unwrap_or(0)
                            }
                            "mode" => self.warn(&p.key(&k), "not applied yet: ignored"),
                            _ => self.unknown(&p.key(&k), &["size", "mode"]),
                        }
                    }
                }
                "bind" | "volume" => {
                    for (k, _) in self.mapping(v, &p) {
                        self.warn(&p.key(&k), "not applied yet: ignored");
                    }
                }
                "consistency" => {}
                k if k.starts_with("x-") => {}
                _ => self.unknown(&p, &KEYS),
            }
        }
        if mount.r#type.is_empty() {
            self.error(path, "type is required (volume, bind or tmpfs)");
            return None;
        }
        if mount.target.is_empty() {
            self.error(path, "target is required");
            return None;
        }
        match mount.r#type.as_str() {
            "bind" if mount.source.is_empty() => {
                self.error(path, "a bind mount needs a source");
                None
            }
            "tmpfs" if !mount.source.is_empty() => {
                self.error(&path.key("source"), "a tmpfs mount has no source");
                None
            }
            _ => Some(mount),
        }
    }
}

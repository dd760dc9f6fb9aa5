//! The whole stack file: top-level keys, networks, volumes, secrets and configs; and the specs a
//! deployment of it under a stack name sends to the cluster.

use std::collections::{BTreeMap, HashMap};

use proto::v1::{NetworkAttachment, NetworkSpec, ServiceSpec};
use serde_norway::Value;

use super::check::Check;
use super::files::{FileDef, FileKind};
use super::locate::Path;
use super::service::ServiceDef;

/// The label that ties services and networks to their stack (the one docker uses; the
/// cluster's DNS resolves a stack's services by their short names through it).
pub const STACK_LABEL: &str = "com.docker.stack.namespace";

const TOP_KEYS: [&str; 7] = [
    "version", "name", "services", "networks", "volumes", "secrets", "configs",
];
const NETWORK_KEYS: [&str; 7] = [
    "driver",
    "attachable",
    "labels",
    "ipam",
    "external",
    "name",
    "internal",
];

/// A top-level network.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetworkDef {
    /// Not created by the stack: it must exist (under `name`, or the key).
    pub external: bool,
    /// An explicit name (`name:`), used as it is instead of `STACK_KEY`.
    pub name: Option<String>,
    /// The spec to create (its name is set by [`StackDef::network_name`]).
    pub spec: NetworkSpec,
}

/// A top-level volume.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VolumeDef {
    pub external: bool,
    pub name: Option<String>,
}

/// A checked stack file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StackDef {
    pub services: BTreeMap<String, ServiceDef>,
    pub networks: BTreeMap<String, NetworkDef>,
    pub volumes: BTreeMap<String, VolumeDef>,
    pub secrets: BTreeMap<String, FileDef>,
    pub configs: BTreeMap<String, FileDef>,
}

/// What the cluster calls the stack's objects, by their keys in the file: ids once they exist
/// (so that a spec compares equal to the stored one), else nothing (names are used).
#[derive(Clone, Debug, Default)]
pub struct Ids {
    pub networks: HashMap<String, String>,
    pub secrets: HashMap<String, String>,
    pub configs: HashMap<String, String>,
}

/// Names of services, networks and volumes: what the cluster accepts (before the prefix).
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl Check<'_> {
    /// An `external` value: `true`/`false`, or the old form `external: {name: N}`, which sets
    /// `name`.
    pub(super) fn external(&mut self, value: &Value, path: &Path, name: &mut Option<String>) -> bool {
        let Value::Mapping(_) = value else { return self.bool(value, path).unwrap_or(false) };
        for (k, item) in self.mapping(value, path) {
            if k == "name" {
                *name = self.string(item, &path.key(&k));
            } else {
                self.unknown(&path.key(&k), &["name"]);
            }
        }
        true
    }

    /// Reads the merged document.
    pub fn stack(&mut self, doc: &Value) -> StackDef {
        let root = Path::default();
        let mut stack = StackDef::default();
        let mut services = None;
        for (key, value) in self.mapping(doc, &root) {
            let p = root.key(&key);
            match key.as_str() {
                "version" | "name" => {}
                "services" => services = Some((value, p)),
                "networks" => {
                    for (name, v) in self.mapping(value, &p) {
                        let np = p.key(&name);
                        if !valid_name(&name) {
                            self.error(&np, "invalid network name: [a-zA-Z0-9][a-zA-Z0-9_.-]*");
                        }
                        let def = self.network(v, &np);
                        stack.networks.insert(name, def);
                    }
                }
                "volumes" => {
                    for (name, v) in self.mapping(value, &p) {
                        let vp = p.key(&name);
                        if !valid_name(&name) {
                            self.error(&vp, "invalid volume name: [a-zA-Z0-9][a-zA-Z0-9_.-]*");
                        }
                        let def = self.volume(v, &vp);
                        stack.volumes.insert(name, def);
                    }
                }
                "secrets" | "configs" => {
                    let kind = if key == "secrets" {
                        FileKind::Secret
                    } else {
                        FileKind::Config
                    };
                    for (name, v) in self.mapping(value, &p) {
                        let fp = p.key(&name);
                        if !valid_name(&name) {
                            self.error(
                                &fp,
                                format!("invalid {} name: [a-zA-Z0-9][a-zA-Z0-9_.-]*", kind.word()),
                            );
                        }
                        let def = self.file_def(kind, v, &fp);
                        stack.files_mut(kind).insert(name, def);
                    }
                }
                k if k.starts_with("x-") => {}
                _ => self.unknown(&p, &TOP_KEYS),
            }
        }
        let Some((services, sp)) = services else {
            self.error(&root, "the file has no services");
            return stack;
        };
        for (name, value) in self.mapping(services, &sp) {
            let p = sp.key(&name);
            if !valid_name(&name) {
                self.error(&p, "invalid service name: [a-zA-Z0-9][a-zA-Z0-9_.-]*");
            }
            let def = self.service(value, &p);
            for (i, (network, _)) in def.networks.iter().flatten().enumerate() {
                if network != "default" && !stack.networks.contains_key(network) {
                    let np = match value.get("networks") {
                        Some(Value::Sequence(_)) => p.key("networks").index(i),
                        _ => p.key("networks").key(network),
                    };
                    self.error(
                        &np,
                        format!("network {network:?} is not defined in the top-level networks"),
                    );
                }
            }
            for kind in [FileKind::Secret, FileKind::Config] {
                let refs = match kind {
                    FileKind::Secret => &def.spec.secrets,
                    FileKind::Config => &def.spec.configs,
                };
                for (i, reference) in refs.iter().enumerate() {
                    // An empty source is an error already.
                    if !reference.source.is_empty()
                        && !stack.files(kind).contains_key(&reference.source)
                    {
                        self.error(
                            &p.key(kind.section()).index(i),
                            format!(
                                "{} {:?} is not defined in the top-level {}",
                                kind.word(),
                                reference.source,
                                kind.section()
                            ),
                        );
                    }
                }
            }
            for (_, volume) in &def.named_volumes {
                if !stack.volumes.contains_key(volume) {
                    self.error(
                        &p.key("volumes"),
                        format!("volume {volume:?} is not defined in the top-level volumes"),
                    );
                }
            }
            stack.services.insert(name, def);
        }
        if stack.services.is_empty() && self.errors.is_empty() {
            self.error(&sp, "the file has no services");
        }
        stack
    }

    fn network(&mut self, value: &Value, path: &Path) -> NetworkDef {
        let mut def = NetworkDef::default();
        for (key, v) in self.mapping(value, path) {
            let p = path.key(&key);
            match key.as_str() {
                "driver" => {
                    if let Some(driver) = self.choice(v, &p, &["overlay"]) {
                        def.spec.driver = driver;
                    }
                }
                "attachable" => def.spec.attachable = self.bool(v, &p).unwrap_or(false),
                "labels" => {
                    def.spec.labels = self
                        .key_values(v, &p)
                        .into_iter()
                        .map(|(k, v)| (k, v.unwrap_or_default()))
                        .collect()
                }
                "ipam" => def.spec.subnet = self.ipam(v, &p),
                "external" => def.external = self.external(v, &p, &mut def.name),
                "name" => def.name = self.string(v, &p),
                "internal" | "driver_opts" | "enable_ipv6" => {
                    self.warn(&p, "not applied yet: ignored")
                }
                k if k.starts_with("x-") => {}
                _ => self.unknown(&p, &NETWORK_KEYS),
            }
        }
        def
    }

    fn ipam(&mut self, value: &Value, path: &Path) -> String {
        let mut subnet = String::new();
        for (key, v) in self.mapping(value, path) {
            let p = path.key(&key);
            match key.as_str() {
                "driver" => {
                    self.choice(v, &p, &["default"]);
                }
                "config" => {
                    let Value::Sequence(items) = v else {
                        self.invalid(&p, v, "a list of {subnet: CIDR}");
                        continue;
                    };
                    if items.len() > 1 {
                        self.error(&p, "only one subnet per network is supported");
                    }
                    for (i, item) in items.iter().enumerate() {
                        let ip = p.index(i);
                        for (k, s) in self.mapping(item, &ip) {
                            match k.as_str() {
                                "subnet" => {
                                    subnet = self.string(s, &ip.key(&k)).unwrap_or_default()
                                }
                                "gateway" | "ip_range" | "aux_addresses" => {
                                    self.warn(&ip.key(&k), "not applied yet: ignored")
                                }
                                _ => self.unknown(&ip.key(&k), &["subnet"]),
                            }
                        }
                    }
                }
                "options" => self.warn(&p, "not applied yet: ignored"),
                _ => self.unknown(&p, &["driver", "config"]),
            }
        }
        subnet
    }

    fn volume(&mut self, value: &Value, path: &Path) -> VolumeDef {
        let mut def = VolumeDef::default();
        for (key, v) in self.mapping(value, path) {
            let p = path.key(&key);
            match key.as_str() {
                "external" => match v {
                    Value::Mapping(_) => def.external = true,
                    other => def.external = self.bool(other, &p).unwrap_or(false),
                },
                "name" => def.name = self.string(v, &p),
                "driver" => {
                    if self.string(v, &p).is_some_and(|d| d != "local") {
                        self.warn(&p, "not applied yet: volumes use the local driver");
                    }
                }
                "driver_opts" | "labels" => self.warn(&p, "not applied yet: ignored"),
                k if k.starts_with("x-") => {}
                _ => self.unknown(&p, &["driver", "driver_opts", "external", "labels", "name"]),
            }
        }
        def
    }
}

impl StackDef {
    /// The top-level secrets or configs.
    pub fn files(&self, kind: FileKind) -> &BTreeMap<String, FileDef> {
        match kind {
            FileKind::Secret => &self.secrets,
            FileKind::Config => &self.configs,
        }
    }

    fn files_mut(&mut self, kind: FileKind) -> &mut BTreeMap<String, FileDef> {
        match kind {
            FileKind::Secret => &mut self.secrets,
            FileKind::Config => &mut self.configs,
        }
    }

    /// The cluster name of secret or config `key`: `name:`, else the key when external, else
    /// `STACK_KEY`.
    pub fn file_name(&self, kind: FileKind, stack: &str, key: &str) -> String {
        match self.files(kind).get(key) {
            Some(FileDef {
                name: Some(name), ..
            }) => name.clone(),
            Some(FileDef { external: true, .. }) => key.to_string(),
            _ => format!("{stack}_{key}"),
        }
    }

    /// The keys of the secrets or configs the services use (only those are created or looked
    /// up, as docker does).
    pub fn used_files(&self, kind: FileKind) -> Vec<&str> {
        let mut keys: Vec<&str> = self
            .services
            .values()
            .flat_map(|s| match kind {
                FileKind::Secret => &s.spec.secrets,
                FileKind::Config => &s.spec.configs,
            })
            .map(|r| r.source.as_str())
            .filter(|k| self.files(kind).contains_key(*k))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// The cluster name of network `key` (declared, or the implicit `default`).
    pub fn network_name(&self, stack: &str, key: &str) -> String {
        match self.networks.get(key) {
            Some(NetworkDef {
                name: Some(name), ..
            }) => name.clone(),
            Some(NetworkDef { external: true, .. }) => key.to_string(),
            _ => format!("{stack}_{key}"),
        }
    }

    /// The networks the deployment creates: (key, spec with name and stack label), the implicit
    /// `default` included when a service joins it.
    pub fn network_specs(&self, stack: &str) -> Vec<(String, NetworkSpec)> {
        let mut keys: Vec<&str> = Vec::new();
        for service in self.services.values() {
            match &service.networks {
                None => keys.push("default"),
                Some(networks) => keys.extend(networks.iter().map(|(n, _)| n.as_str())),
            }
        }
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter()
            .filter(|k| !self.networks.get(*k).is_some_and(|n| n.external))
            .map(|key| {
                let mut spec = self
                    .networks
                    .get(key)
                    .map(|n| n.spec.clone())
                    .unwrap_or_default();
                spec.name = self.network_name(stack, key);
                if spec.driver.is_empty() {
                    spec.driver = "overlay".to_string();
                }
                spec.labels
                    .insert(STACK_LABEL.to_string(), stack.to_string());
                (key.to_string(), spec)
            })
            .collect()
    }

    /// The spec of service `key` under `stack`, its networks, secrets and configs named by `ids`
    /// where known.
    pub fn service_spec(&self, stack: &str, key: &str, ids: &Ids) -> Option<ServiceSpec> {
        let def = self.services.get(key)?;
        let mut spec = def.spec.clone();
        spec.name = format!("{stack}_{key}");
        spec.labels
            .insert(STACK_LABEL.to_string(), stack.to_string());
        spec.container_labels
            .insert(STACK_LABEL.to_string(), stack.to_string());
        let networks = match &def.networks {
            None => vec![("default".to_string(), Vec::new())],
            Some(networks) => networks.clone(),
        };
        spec.networks = networks
            .into_iter()
            .map(|(network, aliases)| NetworkAttachment {
                target: ids
                    .networks
                    .get(&network)
                    .cloned()
                    .unwrap_or_else(|| self.network_name(stack, &network)),
                aliases,
            })
            .collect();
        for (index, volume) in &def.named_volumes {
            let name = match self.volumes.get(volume) {
                Some(VolumeDef {
                    name: Some(name), ..
                }) => name.clone(),
                Some(VolumeDef { external: true, .. }) => volume.clone(),
                _ => format!("{stack}_{volume}"),
            };
            if let Some(mount) = spec.mounts.get_mut(*index) {
                mount.source = name;
            }
        }
        for (kind, refs, known) in [
            (FileKind::Secret, &mut spec.secrets, &ids.secrets),
            (FileKind::Config, &mut spec.configs, &ids.configs),
        ] {
            for reference in refs {
                reference.source = known
                    .get(&reference.source)
                    .cloned()
                    .unwrap_or_else(|| self.file_name(kind, stack, &reference.source));
            }
        }
        Some(spec)
    }
}

//! What `stack deploy` has to do: given the checked file and what the cluster holds, which
//! networks, secrets and configs to create, which services to create, update or leave alone, and
//! (with `--prune`) which to remove. Pure, so that it is decided, and refused, before anything
//! is written.

use std::collections::HashMap;

use proto::v1::{Network, NetworkSpec, Secret, SecretSpec, Service, ServiceSpec};

use super::files::FileKind;
use super::model::{Ids, STACK_LABEL, StackDef};

/// The label on a stack's secrets holding the SHA-256 of their data: the managers never return
/// a secret's data, and a redeployment has to know whether the file still holds the same. (It
/// tells nothing an admin of the cluster cannot read anyway, by mounting the secret.)
pub const DIGEST_LABEL: &str = "com.cluster.stack.sha256";

/// The hex SHA-256 of `data` (the TLS stack's implementation: the CLI has no other).
pub fn digest(data: &[u8]) -> String {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .expect("a TLS 1.3 suite");
    suite
        .common
        .hash_provider
        .hash(data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The secrets or configs of a deployment.
#[derive(Debug, Default)]
pub struct FilePlan {
    /// (key in the file, spec) for those that do not exist yet.
    pub create: Vec<(String, SecretSpec)>,
    /// Key -> id, for those that exist (external, or created by an earlier deployment with the
    /// same data).
    pub ids: HashMap<String, String>,
}

/// The networks of a deployment.
#[derive(Debug, Default)]
pub struct NetworkPlan {
    /// (key in the file, spec) for the networks that do not exist yet.
    pub create: Vec<(String, NetworkSpec)>,
    /// Network key -> id, for those that exist.
    pub ids: HashMap<String, String>,
}

/// What happens to one service.
#[derive(Debug)]
pub enum ServiceStep {
    Create(ServiceSpec),
    Update {
        id: String,
        version: u64,
        spec: ServiceSpec,
    },
    Unchanged {
        name: String,
    },
    Remove {
        id: String,
        name: String,
    },
}

/// A name the cluster accepts: `[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}`.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 63;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} name {name:?}: 1-63 characters of [a-zA-Z0-9_.-], starting with a \
             letter or digit"
        ))
    }
}

/// Matches the stack's networks against the cluster's. Refuses names that would clash with a
/// network of another stack (or of none) and external networks that do not exist.
pub fn plan_networks(
    def: &StackDef,
    stack: &str,
    existing: &[Network],
) -> Result<NetworkPlan, Vec<String>> {
    let mut plan = NetworkPlan::default();
    let mut errors = Vec::new();
    let by_name: HashMap<&str, &Network> = existing.iter().map(|n| (n.name.as_str(), n)).collect();
    for (key, network) in &def.networks {
        if network.external {
            let name = def.network_name(stack, key);
            match by_name.get(name.as_str()) {
                Some(found) => {
                    plan.ids.insert(key.clone(), found.id.clone());
                }
                None => errors.push(format!(
                    "network {name:?} is declared as external, but the cluster has no network \
                     of that name"
                )),
            }
        }
    }
    for (key, spec) in def.network_specs(stack) {
        if let Err(e) = check_name("network", &spec.name) {
            errors.push(e);
            continue;
        }
        match by_name.get(spec.name.as_str()) {
            Some(found) if found.labels.get(STACK_LABEL).map(String::as_str) == Some(stack) => {
                plan.ids.insert(key, found.id.clone());
            }
            Some(_) => errors.push(format!(
                "network {:?} already exists and is not part of stack {stack:?}",
                spec.name
            )),
            None => plan.create.push((key, spec)),
        }
    }
    if errors.is_empty() {
        Ok(plan)
    } else {
        Err(errors)
    }
}

/// Matches the secrets or configs the services use against the cluster's. Both are immutable:
/// one the stack created earlier is reused when its data is the same, and refused when it is
/// not (it needs a new name). Refuses external ones that do not exist and names taken outside
/// the stack. Errors name the declaration's place in the file.
pub fn plan_files(
    def: &StackDef,
    stack: &str,
    kind: FileKind,
    existing: &[Secret],
) -> Result<FilePlan, Vec<String>> {
    let mut plan = FilePlan::default();
    let mut errors = Vec::new();
    let by_name: HashMap<&str, &Secret> = existing
        .iter()
        .filter_map(|s| Some((s.spec.as_ref()?.name.as_str(), s)))
        .collect();
    let what = kind.word();
    // Cluster name -> key: two keys cannot name one object.
    let mut seen: HashMap<String, &str> = HashMap::new();
    for key in def.used_files(kind) {
        let file = &def.files(kind)[key];
        let at = &file.at;
        let name = def.file_name(kind, stack, key);
        if let Err(e) = check_name(what, &name) {
            errors.push(format!("{at}: {e}"));
            continue;
        }
        if let Some(other) = seen.insert(name.clone(), key) {
            errors.push(format!(
                "{at}: the {what} name {name:?} is also the name of {}.{other}",
                kind.section()
            ));
            continue;
        }
        let found = by_name.get(name.as_str());
        if file.external {
            match found {
                Some(found) => {
                    plan.ids.insert(key.to_string(), found.id.clone());
                }
                None => errors.push(format!(
                    "{at}: {what} {name:?} is declared as external, but the cluster has no \
                     {what} of that name"
                )),
            }
            continue;
        }
        let mut labels = file.labels.clone();
        labels.insert(STACK_LABEL.to_string(), stack.to_string());
        if kind == FileKind::Secret {
            labels.insert(DIGEST_LABEL.to_string(), digest(&file.data));
        }
        let Some(found) = found else {
            let spec = SecretSpec {
                name,
                labels,
                data: file.data.clone(),
            };
            plan.create.push((key.to_string(), spec));
            continue;
        };
        let found_spec = found.spec.clone().unwrap_or_default();
        if found_spec.labels.get(STACK_LABEL).map(String::as_str) != Some(stack) {
            errors.push(format!(
                "{at}: {what} {name:?} already exists and is not part of stack {stack:?}"
            ));
            continue;
        }
        let same = match kind {
            FileKind::Secret => found_spec.labels.get(DIGEST_LABEL) == labels.get(DIGEST_LABEL),
            FileKind::Config => found_spec.data == file.data,
        };
        if same {
            plan.ids.insert(key.to_string(), found.id.clone());
        } else {
            errors.push(format!(
                "{at}: {what} {name:?} already exists with other data, and a {what} cannot be \
                 changed: give the new data a new name (name: in the file, or a new key), or \
                 remove the stack first"
            ));
        }
    }
    if errors.is_empty() {
        Ok(plan)
    } else {
        Err(errors)
    }
}

/// Fills in what the manager fills in when it stores a spec, so that a stored spec and the one
/// a file gives compare equal when they mean the same (see the defaults in cluster.proto).
pub fn normalized(spec: &ServiceSpec) -> ServiceSpec {
    let mut s = spec.clone();
    let resources = s.resources.get_or_insert_with(Default::default);
    resources.reservations.get_or_insert_with(Default::default);
    resources.limits.get_or_insert_with(Default::default);
    let restart = s.restart.get_or_insert_with(Default::default);
    if restart.condition.is_empty() {
        restart.condition = "any".to_string();
    }
    restart.delay_ms.get_or_insert(5_000);
    s.placement.get_or_insert_with(Default::default);
    let mode = s.mode.get_or_insert_with(Default::default);
    if mode.kind.is_empty() {
        mode.kind = "replicated".to_string();
    }
    if mode.kind == "replicated" || mode.kind == "replicated-job" {
        mode.replicas.get_or_insert(1);
    }
    let endpoint = s.endpoint.get_or_insert_with(Default::default);
    if endpoint.mode.is_empty() {
        endpoint.mode = "vip".to_string();
    }
    for port in &mut endpoint.ports {
        if port.protocol.is_empty() {
            port.protocol = "tcp".to_string();
        }
        if port.mode.is_empty() {
            port.mode = "ingress".to_string();
        }
    }
    s.stop_grace_period_ms.get_or_insert(10_000);
    s.task_history_limit.get_or_insert(5);
    for file in s.secrets.iter_mut().chain(s.configs.iter_mut()) {
        file.mode.get_or_insert(0o444);
    }
    if let Some(check) = &mut s.healthcheck {
        check.interval_ms.get_or_insert(30_000);
        check.timeout_ms.get_or_insert(30_000);
        check.retries.get_or_insert(3);
    }
    for config in [&mut s.update_config, &mut s.rollback_config] {
        let config = config.get_or_insert_with(Default::default);
        config.parallelism.get_or_insert(1);
        config.monitor_ms.get_or_insert(5_000);
        if config.failure_action.is_empty() {
            config.failure_action = "pause".to_string();
        }
        if config.order.is_empty() {
            config.order = "stop-first".to_string();
        }
        // Stored in millionths.
        let ppm = (f64::from(config.max_failure_ratio) * 1_000_000.0).round() as u32;
        config.max_failure_ratio = ppm as f32 / 1_000_000.0;
    }
    s
}

/// Whether deploying `desired` over `current` would change nothing: equal once normalised,
/// where an image the manager pinned to a digest still matches its tag and an ingress port
/// published as 0 matches the port the manager chose.
pub fn unchanged(desired: &ServiceSpec, current: &ServiceSpec) -> bool {
    let mut want = normalized(desired);
    let have = normalized(current);
    // A file never forces an update; the manager keeps the larger counter anyway.
    want.force_update = have.force_update;
    if have.image != want.image && have.image.starts_with(&format!("{}@", want.image)) {
        want.image = have.image.clone();
    }
    if let (Some(w), Some(h)) = (&mut want.endpoint, &have.endpoint)
        && w.ports.len() == h.ports.len()
    {
        for (w, h) in w.ports.iter_mut().zip(&h.ports) {
            if w.published == 0 && w.mode == "ingress" {
                w.published = h.published;
            }
        }
    }
    want == have
}

/// The (published port, protocol) pairs a spec publishes on the routing mesh.
fn ingress_ports(spec: &ServiceSpec) -> Vec<(u32, String)> {
    let spec = normalized(spec);
    spec.endpoint
        .map(|e| e.ports)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.published != 0 && p.mode == "ingress")
        .map(|p| (p.published, p.protocol))
        .collect()
}

/// The services of `existing` that belong to `stack`, by name.
fn stack_services<'a>(stack: &str, existing: &'a [Service]) -> HashMap<&'a str, &'a Service> {
    existing
        .iter()
        .filter_map(|s| {
            let spec = s.spec.as_ref()?;
            (spec.labels.get(STACK_LABEL).map(String::as_str) == Some(stack))
                .then_some((spec.name.as_str(), s))
        })
        .collect()
}

/// Decides each service's step. `ids` names the networks, secrets and configs that exist
/// (names are used for those still to be created). Refuses a mode change and a name taken by a
/// service outside the stack.
pub fn plan_services(
    def: &StackDef,
    stack: &str,
    ids: &Ids,
    existing: &[Service],
    prune: bool,
) -> Result<Vec<ServiceStep>, Vec<String>> {
    let ours = stack_services(stack, existing);
    let all: HashMap<&str, &Service> = existing
        .iter()
        .filter_map(|s| Some((s.spec.as_ref()?.name.as_str(), s)))
        .collect();
    let mut steps = Vec::new();
    let mut errors = Vec::new();
    let in_file = |name: &str| def.services.keys().any(|k| format!("{stack}_{k}") == name);
    // Ingress ports held by services that stay as they are (outside the stack, or in it and
    // kept because there is no --prune).
    let mut taken: HashMap<(u32, String), &str> = HashMap::new();
    for service in existing {
        let Some(spec) = &service.spec else { continue };
        let ours = spec.labels.get(STACK_LABEL).map(String::as_str) == Some(stack);
        if in_file(&spec.name) || (ours && prune) {
            continue;
        }
        for port in ingress_ports(spec) {
            taken.insert(port, spec.name.as_str());
        }
    }
    for key in def.services.keys() {
        let Some(spec) = def.service_spec(stack, key, ids) else {
            continue;
        };
        if let Err(e) = check_name("service", &spec.name) {
            errors.push(e);
            continue;
        }
        for (published, protocol) in ingress_ports(&spec) {
            if let Some(holder) = taken.get(&(published, protocol.clone())) {
                errors.push(format!(
                    "service {}: port {published}/{protocol} is already published by service \
                     {holder}",
                    spec.name
                ));
            }
        }
        match (ours.get(spec.name.as_str()), all.get(spec.name.as_str())) {
            (Some(current), _) => {
                let current_spec = current.spec.clone().unwrap_or_default();
                let kind = |s: &ServiceSpec| normalized(s).mode.unwrap_or_default().kind;
                if kind(&spec) != kind(&current_spec) {
                    errors.push(format!(
                        "service {}: the mode cannot change from {} to {}; remove the service \
                         (or the stack) first",
                        spec.name,
                        kind(&current_spec),
                        kind(&spec)
                    ));
                } else if unchanged(&spec, &current_spec) {
                    steps.push(ServiceStep::Unchanged { name: spec.name });
                } else {
                    steps.push(ServiceStep::Update {
                        id: current.id.clone(),
                        version: current.version,
                        spec,
                    });
                }
            }
            (None, Some(_)) => errors.push(format!(
                "service {:?} already exists and is not part of stack {stack:?}",
                spec.name
            )),
            (None, None) => steps.push(ServiceStep::Create(spec)),
        }
    }
    if prune {
        let mut gone: Vec<(&str, &Service)> = ours
            .iter()
            .filter(|(name, _)| {
                !def.services
                    .keys()
                    .any(|k| format!("{stack}_{k}") == **name)
            })
            .map(|(n, s)| (*n, *s))
            .collect();
        gone.sort_by_key(|(n, _)| *n);
        // First, as docker does: what they free (ports, names) is then free for the rest.
        let removals = gone.into_iter().map(|(name, service)| ServiceStep::Remove {
            id: service.id.clone(),
            name: name.to_string(),
        });
        steps.splice(0..0, removals);
    }
    if errors.is_empty() {
        Ok(steps)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path as FsPath;

    use proto::v1::{EndpointSpec, PortConfig, SecretSpec};

    use super::*;
    use crate::compose::interpolate::Vars;
    use crate::compose::{Source, load};

    fn stack(text: &str) -> StackDef {
        let sources = [Source {
            name: "s.yml".to_string(),
            text: text.to_string(),
        }];
        load(&sources, &Vars::default(), FsPath::new("/"))
            .unwrap()
            .stack
    }

    fn networks(ids: HashMap<String, String>) -> Ids {
        Ids {
            networks: ids,
            ..Default::default()
        }
    }

    const FILE: &str = "services:
  web: {image: web, ports: ['80']}
  db: {image: db, networks: [back]}
networks:
  back:
";

    /// What the manager would store for `spec`: defaults filled, the image pinned, the port
    /// published and the network named by id.
    fn stored(spec: &ServiceSpec, id: &str, network_ids: &HashMap<&str, &str>) -> Service {
        let mut spec = normalized(spec);
        spec.image = format!("{}@sha256:abc", spec.image);
        for port in &mut spec.endpoint.as_mut().unwrap().ports {
            port.published = 30000;
        }
        for n in &mut spec.networks {
            n.target = network_ids[n.target.as_str()].to_string();
        }
        Service {
            id: id.to_string(),
            spec: Some(spec),
            version: 7,
            ..Default::default()
        }
    }

    #[test]
    fn deploys_then_updates_only_what_changed() {
        let def = stack(FILE);
        let net = plan_networks(&def, "s", &[]).unwrap();
        let names: Vec<&str> = net.create.iter().map(|(_, n)| n.name.as_str()).collect();
        assert_eq!(names, ["s_back", "s_default"]);
        let steps = plan_services(&def, "s", &networks(net.ids.clone()), &[], false).unwrap();
        assert!(steps.iter().all(|s| matches!(s, ServiceStep::Create(_))));
        assert_eq!(steps.len(), 2);

        // Deployed: the cluster holds the stored form.
        let ids = networks(HashMap::from([
            ("back".to_string(), "N1".to_string()),
            ("default".to_string(), "N2".to_string()),
        ]));
        let by_name = HashMap::from([("N1", "N1"), ("N2", "N2")]);
        let existing: Vec<Service> = ["db", "web"]
            .iter()
            .map(|k| stored(&def.service_spec("s", k, &ids).unwrap(), k, &by_name))
            .collect();
        let steps = plan_services(&def, "s", &ids, &existing, false).unwrap();
        assert!(
            steps
                .iter()
                .all(|s| matches!(s, ServiceStep::Unchanged { .. })),
            "{steps:?}"
        );

        // One change, and one service dropped from the file.
        let def2 = stack("services:\n  web: {image: web:2, ports: ['80']}\n");
        let steps = plan_services(&def2, "s", &ids, &existing, true).unwrap();
        assert_eq!(steps.len(), 2, "{steps:?}");
        match &steps[1] {
            ServiceStep::Update { id, version, spec } => {
                assert_eq!(
                    (id.as_str(), *version, spec.image.as_str()),
                    ("web", 7, "web:2")
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&steps[0], ServiceStep::Remove { name, .. } if name == "s_db"));
    }

    #[test]
    fn refuses_clashes_and_mode_changes() {
        let def = stack(FILE);
        let foreign = Network {
            id: "X".to_string(),
            name: "s_back".to_string(),
            ..Default::default()
        };
        let errs = plan_networks(&def, "s", &[foreign]).unwrap_err();
        assert!(errs[0].contains("not part of stack"), "{errs:?}");

        let other = Service {
            id: "o".to_string(),
            spec: Some(ServiceSpec {
                name: "s_web".to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let errs = plan_services(&def, "s", &Ids::default(), &[other], false).unwrap_err();
        assert!(errs[0].contains("not part of stack"), "{errs:?}");

        let global = stack("services:\n  web: {image: web, deploy: {mode: global}}\n");
        let current = def.service_spec("s", "web", &Ids::default()).unwrap();
        let existing = [Service {
            id: "w".to_string(),
            spec: Some(current),
            ..Default::default()
        }];
        let errs = plan_services(&global, "s", &Ids::default(), &existing, false).unwrap_err();
        assert!(errs[0].contains("mode cannot change"), "{errs:?}");
        assert!(check_name("stack", &"x".repeat(70)).is_err());

        // A port another service publishes.
        let web = stack("services:\n  web: {image: web, ports: ['8080:80']}\n");
        let holder = Service {
            id: "h".to_string(),
            spec: Some(ServiceSpec {
                name: "other".to_string(),
                endpoint: Some(EndpointSpec {
                    mode: String::new(),
                    ports: vec![PortConfig {
                        target: 1,
                        published: 8080,
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let errs = plan_services(&web, "s", &Ids::default(), &[holder], false).unwrap_err();
        assert!(
            errs[0].contains("port 8080/tcp is already published by service other"),
            "{errs:?}"
        );
    }

    #[test]
    fn explicit_ports_must_match() {
        let spec = ServiceSpec {
            endpoint: Some(EndpointSpec {
                mode: String::new(),
                ports: vec![PortConfig {
                    target: 80,
                    published: 8080,
                    ..Default::default()
                }],
            }),
            ..Default::default()
        };
        let mut other = normalized(&spec);
        assert!(unchanged(&spec, &other));
        other.endpoint.as_mut().unwrap().ports[0].published = 8081;
        assert!(!unchanged(&spec, &other));
    }

    /// A stack with a file secret, an external secret and a file config, loaded from a
    /// directory holding their files.
    fn file_stack(secret: &str) -> StackDef {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), secret).unwrap();
        std::fs::write(dir.path().join("conf"), "c=1").unwrap();
        let sources = [Source {
            name: "s.yml".to_string(),
            text: "services:
  web: {image: web, secrets: [pw, ext], configs: [conf]}
secrets:
  pw: {file: ./pw}
  ext: {external: true}
  unused: {external: true}
configs:
  conf: {file: ./conf}
"
            .to_string(),
        }];
        load(&sources, &Vars::default(), dir.path()).unwrap().stack
    }

    fn blob(id: &str, spec: SecretSpec) -> Secret {
        Secret {
            id: id.to_string(),
            spec: Some(spec),
            ..Default::default()
        }
    }

    #[test]
    fn secrets_are_created_reused_or_refused() {
        assert_eq!(
            digest(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let def = file_stack("one");
        let errs = plan_files(&def, "s", FileKind::Secret, &[]).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("s.yml:5:3: secrets.ext: secret \"ext\" is declared as external"),
            "{errs:?}"
        );

        let ext = blob(
            "E",
            SecretSpec {
                name: "ext".to_string(),
                ..Default::default()
            },
        );
        let plan = plan_files(&def, "s", FileKind::Secret, std::slice::from_ref(&ext)).unwrap();
        assert_eq!(
            plan.ids,
            HashMap::from([("ext".to_string(), "E".to_string())])
        );
        let [(key, spec)] = plan.create.as_slice() else {
            panic!("{plan:?}")
        };
        assert_eq!((key.as_str(), spec.name.as_str()), ("pw", "s_pw"));
        assert_eq!(spec.data, b"one");
        assert_eq!(spec.labels[STACK_LABEL], "s");
        assert_eq!(spec.labels[DIGEST_LABEL], digest(b"one"));

        // Deployed again: what the cluster returns has no data, only the labels.
        let mut stored = spec.clone();
        stored.data.clear();
        let existing = [ext, blob("P", stored)];
        let plan = plan_files(&def, "s", FileKind::Secret, &existing).unwrap();
        assert!(plan.create.is_empty());
        assert_eq!(plan.ids["pw"], "P");

        // Other data under the same name: refused, in the file's terms.
        let errs = plan_files(&file_stack("two"), "s", FileKind::Secret, &existing).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with(
                "s.yml:4:3: secrets.pw: secret \"s_pw\" already exists with other data"
            ),
            "{errs:?}"
        );

        // The name taken outside the stack.
        let foreign = blob(
            "F",
            SecretSpec {
                name: "s_pw".to_string(),
                ..Default::default()
            },
        );
        let errs =
            plan_files(&def, "s", FileKind::Secret, &[existing[0].clone(), foreign]).unwrap_err();
        assert!(errs[0].contains("is not part of stack \"s\""), "{errs:?}");
    }

    #[test]
    fn configs_compare_their_data() {
        let def = file_stack("x");
        let plan = plan_files(&def, "s", FileKind::Config, &[]).unwrap();
        let mut stored = plan.create[0].1.clone();
        assert!(!stored.labels.contains_key(DIGEST_LABEL));
        assert_eq!(stored.data, b"c=1");
        let existing = [blob("C", stored.clone())];
        let plan = plan_files(&def, "s", FileKind::Config, &existing).unwrap();
        assert_eq!(plan.ids["conf"], "C");
        stored.data = b"c=2".to_vec();
        let errs = plan_files(&def, "s", FileKind::Config, &[blob("C", stored)]).unwrap_err();
        assert!(
            errs[0].contains("config \"s_conf\" already exists with other data"),
            "{errs:?}"
        );
    }

    #[test]
    fn stored_defaults_of_files_health_and_updates_compare_equal() {
        let def = stack(
            "services:
  web:
    image: web
    healthcheck: {test: [CMD, check]}
    deploy:
      update_config: {max_failure_ratio: 0.1, order: start-first}
",
        );
        let ids = Ids {
            secrets: HashMap::from([("pw".to_string(), "P".to_string())]),
            ..Default::default()
        };
        let mut desired = def.service_spec("s", "web", &ids).unwrap();
        desired.secrets.push(proto::v1::FileReference {
            source: "P".to_string(),
            target: "pw".to_string(),
            ..Default::default()
        });
        // What the manager returns: every default filled, the ratio through millionths.
        let mut stored = desired.clone();
        stored.secrets[0].mode = Some(0o444);
        let check = stored.healthcheck.as_mut().unwrap();
        (check.interval_ms, check.timeout_ms, check.retries) =
            (Some(30_000), Some(30_000), Some(3));
        let filled = |ratio: f32, order: &str| proto::v1::UpdateConfig {
            parallelism: Some(1),
            delay_ms: 0,
            failure_action: "pause".to_string(),
            monitor_ms: Some(5_000),
            max_failure_ratio: ratio,
            order: order.to_string(),
        };
        stored.update_config = Some(filled((100_000_f64 / 1e6) as f32, "start-first"));
        stored.rollback_config = Some(filled(0.0, "stop-first"));
        stored.force_update = 2;
        assert!(unchanged(&desired, &stored));

        let mut other = stored.clone();
        other.secrets[0].source = "Q".to_string();
        assert!(!unchanged(&desired, &other));
        let mut other = stored.clone();
        other.update_config.as_mut().unwrap().order = "stop-first".to_string();
        assert!(!unchanged(&desired, &other));
        let mut other = stored;
        other.healthcheck.as_mut().unwrap().retries = Some(4);
        assert!(!unchanged(&desired, &other));
    }

    #[test]
    fn two_keys_cannot_name_one_object() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let sources = [Source {
            name: "s.yml".to_string(),
            text: "services:
  web: {image: web, configs: [a, b]}
configs:
  a: {file: ./f, name: same}
  b: {file: ./f, name: same}
"
            .to_string(),
        }];
        let def = load(&sources, &Vars::default(), dir.path()).unwrap().stack;
        let errs = plan_files(&def, "s", FileKind::Config, &[]).unwrap_err();
        assert_eq!(
            errs,
            ["s.yml:5:3: configs.b: the config name \"same\" is also the name of configs.a"]
        );
    }
}

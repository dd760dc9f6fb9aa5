//! The in-memory record table the embedded DNS server answers from.
//!
//! The agent fills it from the managers' state: services (name, stack, endpoint mode, the networks
//! they are attached to and their VIP there) and the *routable* tasks (RUNNING, and healthy where a
//! health check exists) with their addresses per network. The caller decides what is routable: a
//! task that stops being routable is removed with [`DnsTable::remove_task`].
//!
//! Names answered (case-insensitive, with or without a trailing dot), only on the networks the
//! asking container is attached to:
//! - `<service>`: the VIP (endpoint mode vip) or every task address (dnsrr);
//! - `tasks.<service>`: every task address;
//! - each name listed in [`TaskRecord::names`] (the task name `<service>.<slot>.<taskid>`, the
//!   container's hostname): that task's address;
//! - for a container of stack `shop`, `web` and `tasks.web` also name the service `shop_web` of
//!   that stack (the stack-local name is tried before a global service of that name).

use rand::seq::SliceRandom;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A network's id (cheap to clone).
pub type NetworkId = Arc<str>;

/// How a service name resolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointMode {
    /// The service name answers its virtual IP on the asker's network.
    Vip,
    /// The service name answers the addresses of its routable tasks.
    Dnsrr,
}

/// A service attached to a network, with its VIP there (endpoint mode vip).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceNetwork {
    pub network: NetworkId,
    pub vip: Option<IpAddr>,
    /// Extra names of the service on this network only (`--network name=N,alias=A`).
    pub aliases: Vec<String>,
}

/// A service as the DNS sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRecord {
    pub id: String,
    /// Full name (`shop_web` for the service `web` of stack `shop`).
    pub name: String,
    /// The stack (namespace) it belongs to, if any.
    pub stack: Option<String>,
    pub mode: EndpointMode,
    pub networks: Vec<ServiceNetwork>,
}

/// A routable task: its names and its address on each of its networks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRecord {
    pub id: String,
    pub service_id: String,
    /// Extra names of this task: its task name (see [`task_name`]), its hostname.
    pub names: Vec<String>,
    pub addrs: Vec<(NetworkId, IpAddr)>,
}

/// The task name Docker gives a container: `<service>.<slot>.<taskid>` (for a global service
/// the node id takes the place of the slot).
pub fn task_name(service: &str, slot_or_node: &str, task_id: &str) -> String {
    format!("{service}.{slot_or_node}.{task_id}")
}

/// Who is asking: the networks the container is attached to and its stack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Asker {
    pub networks: Vec<NetworkId>,
    pub stack: Option<String>,
}

impl Asker {
    pub fn new(
        networks: impl IntoIterator<Item = impl Into<NetworkId>>,
        stack: Option<&str>,
    ) -> Self {
        Asker {
            networks: networks.into_iter().map(Into::into).collect(),
            stack: stack.map(str::to_ascii_lowercase),
        }
    }
    fn on(&self, network: &NetworkId) -> bool {
        self.networks.iter().any(|n| n == network)
    }
}

/// The result of a lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A name of the cluster visible to the asker; its addresses (possibly none: NODATA).
    Found(Vec<IpAddr>),
    /// In the cluster's namespace (a single label, `tasks.*`, `<known service>.*`, or a name of a
    /// network the asker is not on) but unknown to the asker: NXDOMAIN.
    NxDomain,
    /// Not a cluster name: for the upstream resolvers.
    NotOurs,
}

#[derive(Default, Debug)]
struct Inner {
    services: HashMap<String, ServiceRecord>,
    /// lowercased full service name -> service id
    service_by_name: HashMap<String, String>,
    /// lowercased alias -> (service id, the network it names the service on)
    service_by_alias: HashMap<String, Vec<(String, NetworkId)>>,
    tasks: HashMap<String, TaskRecord>,
    /// service id -> its routable task ids
    tasks_by_service: HashMap<String, HashSet<String>>,
    /// lowercased task name / hostname -> task ids
    task_by_name: HashMap<String, Vec<String>>,
}

/// The record table; clones share it. Updates are visible to the next query.
#[derive(Clone, Default, Debug)]
pub struct DnsTable {
    inner: Arc<RwLock<Inner>>,
}

fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

impl DnsTable {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // A writer never panics while holding the lock (no user code runs under it), so a
        // poisoned lock still guards consistent data.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or replaces a service.
    pub fn set_service(&self, service: ServiceRecord) {
        self.write().set_service(service);
    }

    /// Removes a service and its tasks.
    pub fn remove_service(&self, service_id: &str) {
        let mut inner = self.write();
        if let Some(ids) = inner.tasks_by_service.get(service_id).cloned() {
            for id in ids {
                inner.remove_task(&id);
            }
        }
        inner.remove_service(service_id);
    }

    /// Adds or replaces a routable task.
    pub fn set_task(&self, task: TaskRecord) {
        self.write().set_task(task);
    }

    /// Removes a task (stopped, unhealthy, gone). Unknown ids are ignored.
    pub fn remove_task(&self, task_id: &str) {
        self.write().remove_task(task_id);
    }

    /// Replaces the whole content with a snapshot.
    pub fn replace(
        &self,
        services: impl IntoIterator<Item = ServiceRecord>,
        tasks: impl IntoIterator<Item = TaskRecord>,
    ) {
        let mut fresh = Inner::default();
        for s in services {
            fresh.set_service(s);
        }
        for t in tasks {
            fresh.set_task(t);
        }
        *self.write() = fresh;
    }

    /// Counts of services and tasks held.
    pub fn len(&self) -> (usize, usize) {
        let inner = self.read();
        (inner.services.len(), inner.tasks.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }

    /// Resolves `name` for `asker`. Addresses of dnsrr services and `tasks.*` come shuffled.
    pub fn lookup(&self, name: &str, asker: &Asker) -> Lookup {
        let name = normalize(name);
        let inner = self.read();
        if let Some(found) = inner.lookup(&name, asker) {
            return Lookup::Found(found);
        }
        let ours = !name.contains('.')
            || name.starts_with("tasks.")
            || inner.service_by_name.contains_key(&name)
            || inner.service_by_alias.contains_key(&name)
            || inner.task_by_name.contains_key(&name)
            || name
                .split('.')
                .next()
                .is_some_and(|first| inner.service_by_name.contains_key(first));
        if ours {
            Lookup::NxDomain
        } else {
            Lookup::NotOurs
        }
    }
}

impl Inner {
    fn set_service(&mut self, service: ServiceRecord) {
        self.remove_service(&service.id);
        self.service_by_name
            .insert(service.name.to_ascii_lowercase(), service.id.clone());
        for n in &service.networks {
            for alias in &n.aliases {
                self.service_by_alias
                    .entry(normalize(alias))
                    .or_default()
                    .push((service.id.clone(), n.network.clone()));
            }
        }
        self.services.insert(service.id.clone(), service);
    }

    fn remove_service(&mut self, id: &str) {
        if let Some(old) = self.services.remove(id) {
            let key = old.name.to_ascii_lowercase();
            if self.service_by_name.get(&key).is_some_and(|v| v == id) {
                self.service_by_name.remove(&key);
            }
            for alias in old.networks.iter().flat_map(|n| &n.aliases) {
                let key = normalize(alias);
                if let Some(entries) = self.service_by_alias.get_mut(&key) {
                    entries.retain(|(s, _)| s != id);
                    if entries.is_empty() {
                        self.service_by_alias.remove(&key);
                    }
                }
            }
        }
    }

    fn set_task(&mut self, task: TaskRecord) {
        self.remove_task(&task.id);
        self.tasks_by_service
            .entry(task.service_id.clone())
            .or_default()
            .insert(task.id.clone());
        for n in &task.names {
            let ids = self.task_by_name.entry(normalize(n)).or_default();
            if !ids.contains(&task.id) {
                ids.push(task.id.clone());
            }
        }
        self.tasks.insert(task.id.clone(), task);
    }

    fn remove_task(&mut self, id: &str) {
        let Some(old) = self.tasks.remove(id) else {
            return;
        };
        if let Some(set) = self.tasks_by_service.get_mut(&old.service_id) {
            set.remove(id);
            if set.is_empty() {
                self.tasks_by_service.remove(&old.service_id);
            }
        }
        for n in &old.names {
            let key = normalize(n);
            if let Some(ids) = self.task_by_name.get_mut(&key) {
                ids.retain(|t| t != id);
                if ids.is_empty() {
                    self.task_by_name.remove(&key);
                }
            }
        }
    }

    /// The service a (lowercased) name means to this asker: stack-local first, then global.
    fn service_for(&self, name: &str, asker: &Asker) -> Option<&ServiceRecord> {
        let visible = |s: &&ServiceRecord| s.networks.iter().any(|n| asker.on(&n.network));
        if let Some(stack) = &asker.stack {
            let local = self
                .service_by_name
                .get(&format!("{stack}_{name}"))
                .and_then(|id| self.services.get(id))
                .filter(|s| {
                    s.stack
                        .as_deref()
                        .is_some_and(|st| st.eq_ignore_ascii_case(stack))
                })
                .filter(visible);
            if local.is_some() {
                return local;
            }
        }
        self.service_by_name
            .get(name)
            .and_then(|id| self.services.get(id))
            .filter(visible)
    }

    fn task_addrs(&self, service: &ServiceRecord, asker: &Asker) -> Vec<IpAddr> {
        let mut out = Vec::new();
        if let Some(ids) = self.tasks_by_service.get(&service.id) {
            for t in ids.iter().filter_map(|id| self.tasks.get(id)) {
                for (net, ip) in &t.addrs {
                    if asker.on(net)
                        && service.networks.iter().any(|n| &n.network == net)
                        && !out.contains(ip)
                    {
                        out.push(*ip);
                    }
                }
            }
        }
        out.shuffle(&mut rand::rng());
        out
    }

    /// An alias names its service only on the network it was given for: the VIP there (vip) or
    /// the tasks' addresses there (dnsrr).
    fn alias_lookup(&self, name: &str, asker: &Asker) -> Option<Vec<IpAddr>> {
        let entries = self.service_by_alias.get(name)?;
        let mut out = Vec::new();
        let mut visible = false;
        for (id, net) in entries.iter().filter(|(_, net)| asker.on(net)) {
            let Some(s) = self.services.get(id) else {
                continue;
            };
            visible = true;
            let on_net = Asker {
                networks: vec![net.clone()],
                stack: asker.stack.clone(),
            };
            let addrs = match s.mode {
                EndpointMode::Vip => s
                    .networks
                    .iter()
                    .filter(|n| &n.network == net)
                    .filter_map(|n| n.vip)
                    .collect(),
                EndpointMode::Dnsrr => self.task_addrs(s, &on_net),
            };
            for a in addrs {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        visible.then_some(out)
    }

    fn lookup(&self, name: &str, asker: &Asker) -> Option<Vec<IpAddr>> {
        if let Some(s) = self.service_for(name, asker) {
            return Some(match s.mode {
                EndpointMode::Vip => {
                    let mut vips = Vec::new();
                    // in the asker's network order
                    for net in &asker.networks {
                        for sn in s.networks.iter().filter(|sn| &sn.network == net) {
                            if let Some(v) = sn.vip.filter(|v| !vips.contains(v)) {
                                vips.push(v);
                            }
                        }
                    }
                    vips
                }
                EndpointMode::Dnsrr => self.task_addrs(s, asker),
            });
        }
        if let Some(svc) = name.strip_prefix("tasks.")
            && let Some(s) = self.service_for(svc, asker)
        {
            return Some(self.task_addrs(s, asker));
        }
        if let Some(found) = self.alias_lookup(name, asker) {
            return Some(found);
        }
        let ids = self.task_by_name.get(name)?;
        let mut out = Vec::new();
        let mut visible = false;
        for t in ids.iter().filter_map(|id| self.tasks.get(id)) {
            for (net, ip) in &t.addrs {
                if asker.on(net) {
                    visible = true;
                    if !out.contains(ip) {
                        out.push(*ip);
                    }
                }
            }
        }
        visible.then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn svc(
        id: &str,
        name: &str,
        stack: Option<&str>,
        mode: EndpointMode,
        nets: &[(&str, Option<&str>)],
    ) -> ServiceRecord {
        ServiceRecord {
            id: id.into(),
            name: name.into(),
            stack: stack.map(Into::into),
            mode,
            networks: nets
                .iter()
                .map(|(n, v)| ServiceNetwork {
                    network: (*n).into(),
                    vip: v.map(ip),
                    aliases: Vec::new(),
                })
                .collect(),
        }
    }

    fn task(id: &str, service_id: &str, names: &[&str], addrs: &[(&str, &str)]) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            service_id: service_id.into(),
            names: names.iter().map(|s| s.to_string()).collect(),
            addrs: addrs.iter().map(|(n, a)| ((*n).into(), ip(a))).collect(),
        }
    }

    fn sorted(l: Lookup) -> Lookup {
        match l {
            Lookup::Found(mut v) => {
                v.sort();
                Lookup::Found(v)
            }
            other => other,
        }
    }

    fn found(addrs: &[&str]) -> Lookup {
        let mut v: Vec<IpAddr> = addrs.iter().map(|a| ip(a)).collect();
        v.sort();
        Lookup::Found(v)
    }

    fn sample() -> DnsTable {
        let t = DnsTable::new();
        t.set_service(svc(
            "s1",
            "web",
            None,
            EndpointMode::Vip,
            &[("front", Some("10.0.0.2"))],
        ));
        t.set_service(svc(
            "s2",
            "db",
            None,
            EndpointMode::Dnsrr,
            &[("back", None)],
        ));
        t.set_task(task("t1", "s1", &["web.1.t1"], &[("front", "10.0.1.3")]));
        t.set_task(task(
            "t2",
            "s1",
            &["web.2.t2", "myhost"],
            &[("front", "10.0.2.3")],
        ));
        t.set_task(task("t3", "s2", &["db.1.t3"], &[("back", "10.1.1.3")]));
        t.set_task(task("t4", "s2", &["db.2.t4"], &[("back", "10.1.1.4")]));
        t
    }

    #[test]
    fn vip_dnsrr_tasks_and_task_names() {
        let t = sample();
        let front = Asker::new(["front"], None);
        let back = Asker::new(["back"], None);
        assert_eq!(t.lookup("web", &front), found(&["10.0.0.2"]));
        assert_eq!(t.lookup("WEB.", &front), found(&["10.0.0.2"]));
        assert_eq!(
            sorted(t.lookup("tasks.web", &front)),
            found(&["10.0.1.3", "10.0.2.3"])
        );
        assert_eq!(
            sorted(t.lookup("db", &back)),
            found(&["10.1.1.3", "10.1.1.4"])
        );
        assert_eq!(
            sorted(t.lookup("tasks.db.", &back)),
            found(&["10.1.1.3", "10.1.1.4"])
        );
        assert_eq!(t.lookup("web.1.t1", &front), found(&["10.0.1.3"]));
        assert_eq!(t.lookup("MyHost", &front), found(&["10.0.2.3"]));
    }

    #[test]
    fn isolation_by_network() {
        let t = sample();
        let front = Asker::new(["front"], None);
        assert_eq!(t.lookup("db", &front), Lookup::NxDomain);
        assert_eq!(t.lookup("tasks.db", &front), Lookup::NxDomain);
        assert_eq!(t.lookup("db.1.t3", &front), Lookup::NxDomain);
        assert_eq!(t.lookup("nothing", &front), Lookup::NxDomain);
        assert_eq!(t.lookup("example.com", &front), Lookup::NotOurs);
        let both = Asker::new(["front", "back"], None);
        assert_eq!(
            sorted(t.lookup("db", &both)),
            found(&["10.1.1.3", "10.1.1.4"])
        );
        assert_eq!(t.lookup("web", &both), found(&["10.0.0.2"]));
    }

    #[test]
    fn updates_remove_and_replace() {
        let t = sample();
        let back = Asker::new(["back"], None);
        t.remove_task("t3");
        assert_eq!(t.lookup("db", &back), found(&["10.1.1.4"]));
        assert_eq!(t.lookup("db.1.t3", &back), Lookup::NxDomain);
        t.remove_task("t4");
        assert_eq!(t.lookup("db", &back), Lookup::Found(vec![]));
        t.set_task(task("t4", "s2", &["db.2.t4"], &[("back", "10.1.1.9")]));
        assert_eq!(t.lookup("db.2.t4", &back), found(&["10.1.1.9"]));
        t.remove_service("s2");
        assert_eq!(t.lookup("db", &back), Lookup::NxDomain);
        assert_eq!(t.lookup("db.2.t4", &back), Lookup::NotOurs);
        assert_eq!(t.len(), (1, 2));
        t.replace(
            vec![svc(
                "s9",
                "api",
                None,
                EndpointMode::Vip,
                &[("back", Some("10.1.0.9"))],
            )],
            vec![],
        );
        assert_eq!(t.lookup("api", &back), found(&["10.1.0.9"]));
        assert_eq!(
            t.lookup("web", &Asker::new(["front"], None)),
            Lookup::NxDomain
        );
        assert_eq!(t.len(), (1, 0));
    }

    #[test]
    fn stack_short_names() {
        let t = DnsTable::new();
        t.set_service(svc(
            "s1",
            "shop_web",
            Some("shop"),
            EndpointMode::Vip,
            &[("shop_net", Some("10.2.0.2"))],
        ));
        t.set_service(svc(
            "s2",
            "web",
            None,
            EndpointMode::Vip,
            &[("shop_net", Some("10.2.0.7"))],
        ));
        t.set_task(task("t1", "s1", &[], &[("shop_net", "10.2.1.3")]));
        let in_stack = Asker::new(["shop_net"], Some("shop"));
        let outside = Asker::new(["shop_net"], None);
        assert_eq!(t.lookup("web", &in_stack), found(&["10.2.0.2"]));
        assert_eq!(t.lookup("tasks.web", &in_stack), found(&["10.2.1.3"]));
        assert_eq!(t.lookup("shop_web", &in_stack), found(&["10.2.0.2"]));
        assert_eq!(t.lookup("web", &outside), found(&["10.2.0.7"]));
        assert_eq!(t.lookup("shop_web", &outside), found(&["10.2.0.2"]));
        let other_stack = Asker::new(["shop_net"], Some("blog"));
        assert_eq!(t.lookup("web", &other_stack), found(&["10.2.0.7"]));
    }

    #[test]
    fn dnsrr_order_is_shuffled() {
        let t = DnsTable::new();
        t.set_service(svc("s", "rr", None, EndpointMode::Dnsrr, &[("n", None)]));
        for i in 0..8 {
            t.set_task(task(
                &format!("t{i}"),
                "s",
                &[],
                &[("n", &format!("10.3.0.{}", i + 2))],
            ));
        }
        let a = Asker::new(["n"], None);
        let firsts: HashSet<IpAddr> = (0..200)
            .filter_map(|_| match t.lookup("rr", &a) {
                Lookup::Found(v) => v.first().copied(),
                _ => None,
            })
            .collect();
        assert!(firsts.len() > 1, "first answer never changes: {firsts:?}");
    }

    #[test]
    fn aliases_name_the_service_on_their_network_only() {
        let t = DnsTable::new();
        let mut s = svc(
            "s1",
            "web",
            None,
            EndpointMode::Vip,
            &[("front", Some("10.0.0.2")), ("back", Some("10.1.0.2"))],
        );
        s.networks[1].aliases = vec!["Api".into()];
        t.set_service(s);
        let back = Asker::new(["back"], None);
        let front = Asker::new(["front"], None);
        assert_eq!(t.lookup("api", &back), found(&["10.1.0.2"]));
        assert_eq!(t.lookup("api.", &front), Lookup::NxDomain);
        t.remove_service("s1");
        assert_eq!(
            t.lookup("api", &back),
            Lookup::NxDomain,
            "a single label stays ours"
        );
    }
}

//! Overlay networking on this host, driven by the network views the managers push in the session
//! (see `proto` `NetworkView`): for every network the node holds a lease of, a network namespace
//! with the bridge, the VxLAN device and the routes to the other hosts ([`overlay::dataplane`]),
//! an embedded DNS server at the gateway address ([`overlay::dns`]) and the VIP balancer
//! ([`overlay::dataplane::lb`]). Containers get a namespace of their own with one veth per network
//! and an address from the node's lease, chosen here without asking the managers.
//!
//! Names: network namespaces `cl-<node>-net-<network id>`, container namespaces
//! `cl-<node>-task-<task id>` (the node part keeps several agents on one machine apart). What
//! containers are attached where is saved in `<data dir>/network/attachments.json`, so that a
//! restarted agent keeps their addresses and cleans up after tasks that went away meanwhile.
//! Every netlink call blocks: they run on `spawn_blocking` threads.

mod attach;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use overlay::dataplane::{self, Attachment, NetworkConfig, RemoteHost, Subnet, lb, mesh};
use overlay::dns::{Asker, DnsConfig, DnsServer, DnsTable, SourceMap};
use proto::v1::{NetworkView, TaskAddress};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Notify, watch};

/// How long a container waits for the managers to lease this node a subnet of its network.
const LEASE_WAIT: Duration = Duration::from_secs(30);
/// How often the remote entries and VIP rules are checked against the views (repairs what
/// someone else changed or what failed before).
const REPAIR_INTERVAL: Duration = Duration::from_secs(30);
/// The embedded DNS server's port.
const DNS_PORT: u16 = 53;
/// The agent's own network namespace (the host's, holding the underlay address).
const OWN_NETNS: &str = "/proc/self/ns/net";

/// What the agent knows of its host for overlay networking.
#[derive(Clone, Debug)]
pub struct OverlaySettings {
    /// Tells this node's namespaces apart from other agents' on the same machine (the node id).
    pub node_tag: String,
    /// The address VxLAN packets leave from and arrive at.
    pub underlay_ip: Ipv4Addr,
    pub underlay_mtu: u32,
    /// `<data dir>/network`: the saved attachments and the containers' resolv.conf files.
    pub state_dir: PathBuf,
    pub dns: DnsConfig,
}

/// A container's attachment to its networks, ready for runc.
#[derive(Clone, Debug)]
pub struct Attached {
    /// The container's network namespace.
    pub netns: PathBuf,
    /// To bind-mount at `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// Its address on each network, for the managers.
    pub addresses: Vec<TaskAddress>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Saved {
    tasks: BTreeMap<String, SavedTask>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SavedTask {
    netns: String,
    stack: Option<String>,
    links: Vec<SavedLink>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SavedLink {
    network_id: String,
    /// The veth end in the network's namespace.
    host_ifname: String,
    address: Ipv4Addr,
}

/// A network set up on this host.
struct LocalNetwork {
    config: NetworkConfig,
    dns: Option<DnsServer<SourceMap>>,
    /// What was last applied (`None`: apply again).
    remotes: Option<Vec<RemoteHost>>,
    vip_rules: Option<String>,
    /// The ingress network: the host's own veth into it is up, and the published-port rules last
    /// applied in the host namespace.
    mesh: Option<Option<String>>,
    /// The container address given out last ([`plan::next_address`] goes on from there).
    last_address: Option<Ipv4Addr>,
}

#[derive(Default)]
struct State {
    networks: HashMap<String, LocalNetwork>,
    saved: Saved,
    /// Network namespaces of ours found at start-up that no view has claimed yet.
    leftovers: BTreeSet<String>,
}

impl State {
    fn in_use(&self, network_id: &str) -> bool {
        self.saved
            .tasks
            .values()
            .any(|t| t.links.iter().any(|l| l.network_id == network_id))
    }

    fn used_addresses(&self, network_id: &str) -> BTreeSet<Ipv4Addr> {
        self.saved
            .tasks
            .values()
            .flat_map(|t| t.links.iter())
            .filter(|l| l.network_id == network_id)
            .map(|l| l.address)
            .collect()
    }
}

/// A view change applied later than this after it arrived is logged.
const SLOW_SYNC: Duration = Duration::from_millis(100);

/// The overlay networks of this host.
pub struct Overlay {
    settings: OverlaySettings,
    state: Mutex<State>,
    views: watch::Sender<Arc<Vec<NetworkView>>>,
    table: DnsTable,
    sources: SourceMap,
    sync_wanted: Notify,
    /// Whether the managers' views arrived at least once since the agent started.
    views_received: std::sync::atomic::AtomicBool,
}

fn blocking_error(e: tokio::task::JoinError) -> String {
    format!("network task failed: {e}")
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> dataplane::Result<T> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(blocking_error)?
        .map_err(|e| e.to_string())
}

impl Overlay {
    /// Loads the saved attachments; call [`Overlay::recover`] once the live containers are known.
    pub fn new(settings: OverlaySettings) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&settings.state_dir)?;
        let saved = match std::fs::read(settings.state_dir.join("attachments.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "network: unreadable attachments file, starting empty");
                Saved::default()
            }),
            Err(_) => Saved::default(),
        };
        let (views, _) = watch::channel(Arc::new(Vec::new()));
        Ok(Arc::new(Overlay {
            settings,
            state: Mutex::new(State {
                saved,
                ..State::default()
            }),
            views,
            table: DnsTable::new(),
            sources: SourceMap::new(),
            sync_wanted: Notify::new(),
            views_received: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The DNS records served to this host's containers.
    pub fn dns_table(&self) -> &DnsTable {
        &self.table
    }

    fn network_netns_name(&self, network_id: &str) -> String {
        format!("cl-{}-net-{network_id}", self.settings.node_tag)
    }

    fn task_netns_name(&self, task_id: &str) -> String {
        format!("cl-{}-task-{task_id}", self.settings.node_tag)
    }

    fn netns_path(name: &str) -> PathBuf {
        Path::new("/run/netns").join(name)
    }

    fn config_of(&self, view: &NetworkView) -> Result<NetworkConfig, String> {
        let subnet: Subnet = view
            .lease
            .parse()
            .map_err(|e| format!("network {}: lease {:?}: {e}", view.name, view.lease))?;
        Ok(NetworkConfig {
            netns: Self::netns_path(&self.network_netns_name(&view.id)),
            underlay_netns: None,
            vni: view.vni,
            subnet,
            underlay_ip: self.settings.underlay_ip,
            underlay_mtu: self.settings.underlay_mtu,
        })
    }

    /// Keeps the containers that still exist (their addresses stay taken, their DNS asker
    /// context comes back) and removes the attachments and namespaces of the others.
    pub async fn recover(&self, live_tasks: &BTreeSet<String>) {
        let mut st = self.state.lock().await;
        let gone: Vec<String> = st
            .saved
            .tasks
            .keys()
            .filter(|id| !live_tasks.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.detach_locked(&mut st, &id).await;
        }
        for task in st.saved.tasks.values() {
            let networks: Vec<&str> = task.links.iter().map(|l| l.network_id.as_str()).collect();
            for link in &task.links {
                self.sources.insert(
                    IpAddr::V4(link.address),
                    Asker::new(networks.iter().copied(), task.stack.as_deref()),
                );
            }
        }
        // Namespaces of ours nobody accounts for: containers' go now, networks' once the first
        // views tell whether they are still wanted.
        let prefix = format!("cl-{}-", self.settings.node_tag);
        let kept: BTreeSet<String> = st.saved.tasks.values().map(|t| t.netns.clone()).collect();
        let names: Vec<String> = std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        for name in names {
            if name.starts_with(&format!("{prefix}net-")) {
                st.leftovers.insert(name);
            } else if !kept.contains(&name) {
                let n = name.clone();
                if let Err(e) = blocking(move || dataplane::delete_named_netns(&n)).await {
                    tracing::warn!(netns = %name, error = %e, "network: cannot remove a leftover namespace");
                }
            }
        }
        self.save(&st);
    }

    /// Takes the views of a session message: the DNS records change at once, the data plane in
    /// the background ([`Overlay::run`]).
    pub fn set_views(&self, views: Vec<NetworkView>) {
        let (services, tasks) = plan::dns_records(&views);
        self.table.replace(services, tasks);
        self.views.send_replace(Arc::new(views));
        self.views_received
            .store(true, std::sync::atomic::Ordering::Release);
        self.sync_wanted.notify_one();
    }

    /// Keeps the data plane in line with the views, until the agent stops.
    pub async fn run(self: Arc<Self>) {
        let mut repair = tokio::time::interval(REPAIR_INTERVAL);
        repair.tick().await;
        loop {
            let force = tokio::select! {
                () = self.sync_wanted.notified() => false,
                _ = repair.tick() => true,
            };
            // Nothing is known before the managers' first views arrive (the session may take a
            // while after a restart): leave everything as it is until then.
            if !self
                .views_received
                .load(std::sync::atomic::Ordering::Acquire)
            {
                continue;
            }
            let views = self.views.borrow().clone();
            let started = tokio::time::Instant::now();
            let mut st = self.state.lock().await;
            let locked = started.elapsed();
            if force {
                for n in st.networks.values_mut() {
                    n.remotes = None;
                    n.vip_rules = None;
                    if let Some(rules) = &mut n.mesh {
                        *rules = None;
                    }
                }
            }
            self.sync_locked(&mut st, &views).await;
            if started.elapsed() > SLOW_SYNC {
                tracing::info!(
                    waited_ms = locked.as_millis() as u64,
                    took_ms = started.elapsed().as_millis() as u64,
                    "network: views applied slowly"
                );
            }
        }
    }

    async fn sync_locked(&self, st: &mut State, views: &[NetworkView]) {
        let wanted: BTreeSet<&str> = views.iter().map(|v| v.id.as_str()).collect();
        let unwanted: Vec<String> = st
            .networks
            .keys()
            .filter(|id| !wanted.contains(id.as_str()) && !st.in_use(id))
            .cloned()
            .collect();
        for id in unwanted {
            self.remove_network(st, &id).await;
        }
        for view in views {
            if let Err(e) = self.ensure_network(st, view).await {
                tracing::warn!(network = %view.name, error = %e, "network: cannot set up");
            }
        }
        let claimed: BTreeSet<String> = views
            .iter()
            .map(|v| self.network_netns_name(&v.id))
            .collect();
        let prefix = self.network_netns_name("");
        let (in_use, leftovers): (Vec<String>, Vec<String>) = std::mem::take(&mut st.leftovers)
            .into_iter()
            .filter(|n| !claimed.contains(n))
            .partition(|n| n.strip_prefix(&prefix).is_some_and(|id| st.in_use(id)));
        // Still used by containers of ours: kept until they go.
        st.leftovers = in_use.into_iter().collect();
        for name in leftovers {
            let n = name.clone();
            if let Err(e) = blocking(move || dataplane::delete_named_netns(&n)).await {
                tracing::warn!(netns = %name, error = %e, "network: cannot remove a leftover namespace");
            }
        }
    }

    async fn remove_network(&self, st: &mut State, id: &str) {
        let Some(mut n) = st.networks.remove(id) else {
            return;
        };
        if let Some(dns) = n.dns.take() {
            dns.shutdown().await;
        }
        if n.mesh.is_some() {
            let removed = blocking(|| {
                mesh::remove_forwarding();
                lb::apply_ruleset(Path::new(OWN_NETNS), &mesh::render_ruleset(&[]))
            })
            .await;
            if let Err(e) = removed {
                tracing::warn!(error = %e, "network: cannot remove the published-port rules");
            }
        }
        let name = self.network_netns_name(id);
        let config = n.config.clone();
        let result = blocking(move || {
            dataplane::teardown_network(&config)?;
            dataplane::delete_named_netns(&name)
        })
        .await;
        match result {
            Ok(()) => tracing::info!(network = %id, "network: removed from this host"),
            Err(e) => tracing::warn!(network = %id, error = %e, "network: teardown failed"),
        }
    }

    /// Sets up (or checks) one network: namespace, devices, DNS server, remote entries, VIPs.
    async fn ensure_network(&self, st: &mut State, view: &NetworkView) -> Result<(), String> {
        let config = self.config_of(view)?;
        if let Some(n) = st.networks.get(&view.id)
            && (n.config.vni != config.vni || n.config.subnet != config.subnet)
        {
            if st.in_use(&view.id) {
                return Err(format!(
                    "the lease changed to {} while containers use {}",
                    config.subnet, n.config.subnet
                ));
            }
            self.remove_network(st, &view.id).await;
        }
        if !st.networks.contains_key(&view.id) {
            let name = self.network_netns_name(&view.id);
            let c = config.clone();
            blocking(move || {
                dataplane::create_named_netns(&name)?;
                dataplane::ensure_network(&c)
            })
            .await?;
            let dns = self.start_dns(&config).await;
            tracing::info!(network = %view.name, vni = view.vni, lease = %config.subnet, "network: set up on this host");
            // After a restart, go on after the highest address in use.
            let last_address = st.used_addresses(&view.id).last().copied();
            st.networks.insert(
                view.id.clone(),
                LocalNetwork {
                    config,
                    dns,
                    remotes: None,
                    vip_rules: None,
                    mesh: None,
                    last_address,
                },
            );
        }
        let Some(n) = st.networks.get_mut(&view.id) else {
            return Ok(());
        };
        let remotes = plan::remote_hosts(view, self.settings.underlay_ip);
        if n.remotes.as_ref() != Some(&remotes) {
            let (c, r) = (n.config.clone(), remotes.clone());
            let changes = blocking(move || dataplane::reconcile_remotes(&c, &r)).await?;
            if !changes.is_empty() {
                tracing::debug!(network = %view.name, changes = changes.len(), "network: remote hosts updated");
            }
            n.remotes = Some(remotes);
        }
        let rules = lb::render_ruleset(n.config.subnet, &plan::vip_services(view));
        if n.vip_rules.as_ref() != Some(&rules) {
            let (netns, r) = (n.config.netns.clone(), rules.clone());
            blocking(move || lb::apply_ruleset(&netns, &r)).await?;
            tracing::debug!(network = %view.name, "network: VIP rules applied");
            n.vip_rules = Some(rules);
        }
        if view.ingress {
            Self::ensure_mesh(n, view).await?;
        }
        Ok(())
    }

    /// The routing mesh on this host: its own veth into the ingress network (address
    /// [`plan::host_address`] of the lease), forwarding allowed, and the published-port rules.
    async fn ensure_mesh(n: &mut LocalNetwork, view: &NetworkView) -> Result<(), String> {
        let config = n.config.clone();
        if n.mesh.is_none() {
            let network: Subnet = view
                .subnet
                .parse()
                .map_err(|e| format!("subnet {:?}: {e}", view.subnet))?;
            let c = config.clone();
            blocking(move || {
                let address = plan::host_address(c.subnet);
                // Kept across agent restarts: re-creating it would cut the mesh's connections.
                if dataplane::link_has_address(None, mesh::GATEWAY_IFNAME, address)? {
                    return mesh::allow_forwarding();
                }
                let attachment = Attachment {
                    container_netns: PathBuf::from(OWN_NETNS),
                    host_ifname: "chost".into(),
                    container_ifname: mesh::GATEWAY_IFNAME.into(),
                    address,
                    routes: vec![network],
                };
                dataplane::attach_container(&c, &attachment)?;
                std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| {
                    dataplane::Error::Io {
                        context: "enable IPv4 forwarding".into(),
                        source: e,
                    }
                })?;
                mesh::allow_forwarding()
            })
            .await?;
            tracing::info!(address = %plan::host_address(config.subnet), "network: routing mesh ready on this host");
            n.mesh = Some(None);
        }
        let rules = mesh::render_ruleset(&plan::published_ports(view, config.subnet));
        if n.mesh.as_ref().and_then(|r| r.as_ref()) != Some(&rules) {
            let r = rules.clone();
            blocking(move || lb::apply_ruleset(Path::new(OWN_NETNS), &r)).await?;
            tracing::debug!(rules = %rules, "network: published-port rules applied");
            n.mesh = Some(Some(rules));
        }
        Ok(())
    }

    /// The network's DNS server at its gateway address (a failure is logged: the network works
    /// without names).
    async fn start_dns(&self, config: &NetworkConfig) -> Option<DnsServer<SourceMap>> {
        let addr = SocketAddr::new(IpAddr::V4(config.subnet.gateway()), DNS_PORT);
        let netns = config.netns.clone();
        let bound = blocking(move || dataplane::bind_in_netns(&netns, addr)).await;
        let server = bound.and_then(|(udp, tcp)| {
            DnsServer::from_std(
                udp,
                tcp,
                self.table.clone(),
                self.sources.clone(),
                self.settings.dns.clone(),
            )
            .map_err(|e| e.to_string())
        });
        match server {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "network: cannot start the DNS server");
                None
            }
        }
    }

    fn save(&self, st: &State) {
        let path = self.settings.state_dir.join("attachments.json");
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&st.saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "network: cannot save the attachments");
        }
    }

    /// Stops the DNS servers (the namespaces, links and containers stay: a restarted agent takes
    /// them over).
    pub async fn shutdown(&self) {
        let mut st = self.state.lock().await;
        for n in st.networks.values_mut() {
            if let Some(dns) = n.dns.take() {
                dns.shutdown().await;
            }
        }
    }
}

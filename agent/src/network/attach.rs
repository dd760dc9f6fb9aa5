//! Containers' attachments: a task's network namespace, its links and addresses (reserved under
//! the overlay's lock, wired outside it), and their removal.

use std::net::IpAddr;
use std::path::PathBuf;

use overlay::dataplane::{self, Attachment, NetworkConfig, Subnet};
use overlay::dns::Asker;
use proto::v1::{NetworkView, ServiceSpec, TaskAddress};

use super::{Attached, LEASE_WAIT, Overlay, SavedLink, SavedTask, State, blocking, plan};

/// One link of a container being attached, planned under the lock and made outside it.
struct Wiring {
    network_id: String,
    network_name: String,
    config: NetworkConfig,
    attachment: Attachment,
}

impl Overlay {
    /// Waits until the views hold every network the task joins (the managers lease this node a
    /// subnet when the task is assigned here; the lease may come a moment after the assignment).
    async fn wait_views(&self, spec: &ServiceSpec) -> Result<Vec<NetworkView>, String> {
        let mut rx = self.views.subscribe();
        let deadline = tokio::time::Instant::now() + LEASE_WAIT;
        loop {
            let missing = match plan::task_views(spec, &rx.borrow_and_update()) {
                Ok(found) => return Ok(found),
                Err(missing) => missing,
            };
            if !matches!(
                tokio::time::timeout_at(deadline, rx.changed()).await,
                Ok(Ok(()))
            ) {
                return Err(format!(
                    "no subnet of network(s) {missing:?} was leased to this node within {LEASE_WAIT:?}"
                ));
            }
        }
    }

    /// Gives the task's container a namespace with an interface and an address on each of its
    /// networks. `None` for a task without networks (it keeps a loopback-only namespace).
    pub async fn attach(
        &self,
        task_id: &str,
        spec: &ServiceSpec,
    ) -> Result<Option<Attached>, String> {
        let publishes = spec.endpoint.as_ref().is_some_and(|e| !e.ports.is_empty());
        if spec.networks.is_empty() && !publishes {
            return Ok(None);
        }
        let views = self.wait_views(spec).await?;
        // Names resolve on the task's own networks, not on the routing mesh (as in Swarm).
        let named: Vec<&NetworkView> = views.iter().filter(|v| !v.ingress).collect();
        let dns_view = named.first().copied().unwrap_or(&views[0]);
        let ids: Vec<String> = named.iter().map(|v| v.id.clone()).collect();
        // Under the lock: the networks, and the task's addresses reserved (recorded before any
        // link exists, so that a failure half-way is cleaned up too and no other task takes
        // them). The links themselves are made after the lock is released, so that the
        // containers of a burst are wired in parallel.
        let (netns_name, wiring, gateway) = {
            let mut st = self.state.lock().await;
            if st.saved.tasks.contains_key(task_id) {
                self.detach_locked(&mut st, task_id).await;
            }
            for view in &views {
                self.ensure_network(&mut st, view).await?;
            }
            let (wiring, links) = Self::reserve(&st, &views)?;
            for link in &links {
                if let Some(network) = st.networks.get_mut(&link.network_id) {
                    network.last_address = Some(link.address);
                }
            }
            let gateway = st
                .networks
                .get(&dns_view.id)
                .map(|n| n.config.subnet.gateway());
            let netns_name = self.task_netns_name(task_id);
            st.saved.tasks.insert(
                task_id.to_string(),
                SavedTask {
                    netns: netns_name.clone(),
                    stack: spec.labels.get(plan::STACK_LABEL).cloned(),
                    links,
                },
            );
            self.save(&st);
            (netns_name, wiring, gateway)
        };
        let gateway = gateway.ok_or_else(|| "the network went away while attaching".to_string())?;
        let wired = self.wire(&netns_name, wiring).await;
        let (netns, addresses) = match wired {
            Ok(w) => w,
            Err(e) => {
                self.detach(task_id).await;
                return Err(e);
            }
        };
        let stack = spec.labels.get(plan::STACK_LABEL).cloned();
        let asker = Asker::new(ids.iter().map(String::as_str), stack.as_deref());
        for a in &addresses {
            if let Ok(ip) = a.address.parse() {
                self.sources.insert(ip, asker.clone());
            }
        }
        let dir = self.settings.state_dir.join(task_id);
        let resolv_conf = dir.join("resolv.conf");
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&resolv_conf, plan::resolv_conf(gateway)))
            .map_err(|e| format!("write {}: {e}", resolv_conf.display()))?;
        Ok(Some(Attached {
            netns,
            resolv_conf,
            addresses,
        }))
    }

    /// The next free address of the node's lease on each of `views` for a new container, and
    /// what linking it needs.
    fn reserve(st: &State, views: &[NetworkView]) -> Result<(Vec<Wiring>, Vec<SavedLink>), String> {
        let mut wiring = Vec::new();
        let mut links: Vec<SavedLink> = Vec::new();
        for (index, view) in views.iter().enumerate() {
            let config = st
                .networks
                .get(&view.id)
                .map(|n| n.config.clone())
                .ok_or_else(|| format!("network {}: not set up on this host", view.name))?;
            let mut used = st.used_addresses(&view.id);
            used.extend(
                links
                    .iter()
                    .filter(|l| l.network_id == view.id)
                    .map(|l| l.address),
            );
            let last = links
                .iter()
                .rev()
                .find(|l| l.network_id == view.id)
                .map(|l| l.address)
                .or_else(|| st.networks.get(&view.id).and_then(|n| n.last_address));
            let address = plan::next_address(config.subnet, &used, last).ok_or_else(|| {
                format!(
                    "network {}: no free address left in {}",
                    view.name, config.subnet
                )
            })?;
            let network: Subnet = view
                .subnet
                .parse()
                .map_err(|e| format!("network {}: subnet {:?}: {e}", view.name, view.subnet))?;
            let host_ifname = format!("c{:08x}", u32::from(address));
            links.push(SavedLink {
                network_id: view.id.clone(),
                host_ifname: host_ifname.clone(),
                address,
            });
            wiring.push(Wiring {
                network_id: view.id.clone(),
                network_name: view.name.clone(),
                config,
                attachment: Attachment {
                    // Set by `wire` once the namespace exists.
                    container_netns: PathBuf::new(),
                    host_ifname,
                    container_ifname: format!("eth{index}"),
                    address,
                    routes: vec![network],
                },
            });
        }
        Ok((wiring, links))
    }

    /// Creates the container's namespace and its links (no lock held).
    async fn wire(
        &self,
        netns_name: &str,
        wiring: Vec<Wiring>,
    ) -> Result<(PathBuf, Vec<TaskAddress>), String> {
        let n = netns_name.to_string();
        let netns = blocking(move || dataplane::create_named_netns(&n)).await?;
        let mut addresses = Vec::new();
        for w in wiring {
            let Wiring {
                network_id,
                network_name,
                config,
                mut attachment,
            } = w;
            attachment.container_netns = netns.clone();
            let address = attachment.address.to_string();
            blocking(move || dataplane::attach_container(&config, &attachment))
                .await
                .map_err(|e| format!("network {network_name}: {e}"))?;
            addresses.push(TaskAddress {
                network_id,
                address,
            });
        }
        Ok((netns, addresses))
    }

    /// Removes the task's interfaces, namespace and addresses; idempotent.
    pub async fn detach(&self, task_id: &str) {
        let mut st = self.state.lock().await;
        if st.saved.tasks.contains_key(task_id) {
            self.detach_locked(&mut st, task_id).await;
            let views = self.views.borrow().clone();
            // Networks nobody uses any more and no view wants go now.
            self.sync_locked(&mut st, &views).await;
        }
    }

    pub(super) async fn detach_locked(&self, st: &mut State, task_id: &str) {
        let Some(task) = st.saved.tasks.remove(task_id) else {
            return;
        };
        for link in &task.links {
            self.sources.remove(IpAddr::V4(link.address));
            let netns = Self::netns_path(&self.network_netns_name(&link.network_id));
            if !netns.exists() {
                continue;
            }
            let ifname = link.host_ifname.clone();
            let result = blocking(move || dataplane::detach_veth(&netns, &ifname)).await;
            if let Err(e) = result {
                tracing::warn!(task = %task_id, error = %e, "network: cannot remove a container link");
            }
        }
        let name = task.netns.clone();
        if let Err(e) = blocking(move || dataplane::delete_named_netns(&name)).await {
            tracing::warn!(task = %task_id, error = %e, "network: cannot remove the container namespace");
        }
        let _ = std::fs::remove_dir_all(self.settings.state_dir.join(task_id));
        self.save(st);
    }
}

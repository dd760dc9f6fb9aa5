//! Netlink I/O of the data plane: every function here opens its rtnetlink connection on a thread
//! that has entered the target network namespace.

use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

use super::{
    Attachment, BRIDGE_NAME, bridge_mac, Change, Error, NetworkConfig, ObservedRemotes, RemoteHost, Result,
    Subnet, VXLAN_NAME, VXLAN_PORT, plan_remotes,
};

fn nl(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let context = context.into();
    move |source| Error::Netlink { context, source }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Runs `f` with a netlink handle opened inside `netns` (`None`: the process's namespace), on a
/// thread of its own that has entered the namespace, and waits for it.
fn in_netns<T, F, Fut>(netns: Option<&Path>, f: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T>>,
    T: Send,
{
    std::thread::scope(|s| {
        s.spawn(move || {
            if let Some(p) = netns {
                enter_netns(p)?;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(io("tokio runtime"))?;
            rt.block_on(async move {
                let (conn, handle, _) =
                    rtnetlink::new_connection().map_err(io("netlink socket"))?;
                let conn = tokio::spawn(conn);
                let out = f(handle).await;
                conn.abort();
                out
            })
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Invalid("netlink thread panicked".into())))
    })
}

fn enter_netns(p: &Path) -> Result<()> {
    let f = File::open(p).map_err(io(format!("open netns {}", p.display())))?;
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| Error::Io {
        context: format!("setns {}", p.display()),
        source: e.into(),
    })
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

/// The index and message of link `name`, if it exists.
async fn find_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(m) => Ok(m),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(nl(format!("get link {name}"))(e)),
    }
}

async fn del_link_if_exists(h: &Handle, name: &str) -> Result<()> {
    if let Some(m) = find_link(h, name).await? {
        match h.link().del(m.header.index).execute().await {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc::ENODEV) => {}
            Err(e) => return Err(nl(format!("delete link {name}"))(e)),
        }
    }
    Ok(())
}

async fn link_index(h: &Handle, name: &str) -> Result<u32> {
    find_link(h, name)
        .await?
        .map(|m| m.header.index)
        .ok_or_else(|| Error::Invalid(format!("link {name} not found")))
}

fn vxlan_info(m: &LinkMessage) -> Option<&Vec<InfoVxlan>> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => Some(v),
            _ => None,
        }),
        _ => None,
    })
}

fn is_kind(m: &LinkMessage, kind: InfoKind) -> bool {
    m.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| *i == LinkInfo::Kind(kind.clone())),
        _ => false,
    })
}

/// Whether an existing VxLAN device matches the configuration (then it is reused, keeping its
/// FDB entries and the traffic flowing across an agent restart).
fn vxlan_matches(m: &LinkMessage, cfg: &NetworkConfig) -> bool {
    let Some(info) = vxlan_info(m) else {
        return false;
    };
    let has = |x: InfoVxlan| info.contains(&x);
    has(InfoVxlan::Id(cfg.vni))
        && has(InfoVxlan::Local(cfg.underlay_ip))
        && has(InfoVxlan::Port(VXLAN_PORT))
        && has(InfoVxlan::Learning(false))
        && m.attributes
            .contains(&LinkAttribute::Address(cfg.vtep_mac().to_vec()))
}

/// Makes `ip/prefix` the only IPv4 address of link `index` (a reused device may carry the
/// address of an earlier lease).
async fn add_addr_replace(
    h: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix: u8,
    what: &str,
) -> Result<()> {
    let current: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl(format!("list addresses of {what}")))?;
    for m in current {
        let a = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(a)) | AddressAttribute::Address(IpAddr::V4(a)) => {
                Some(*a)
            }
            _ => None,
        });
        let stale = m.header.family == AddressFamily::Inet
            && m.header.index == index
            && (a != Some(ip) || m.header.prefix_len != prefix);
        if stale {
            h.address()
                .del(m)
                .execute()
                .await
                .map_err(nl(format!("delete stale address of {what}")))?;
        }
    }
    h.address()
        .add(index, IpAddr::V4(ip), prefix)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("address {ip}/{prefix} on {what}")))
}

fn write_sysctl(path: &str, value: &str) -> Result<()> {
    // /proc/sys/net is resolved against the network namespace of the opening thread.
    std::fs::write(path, value).map_err(io(format!("write {path}")))
}

/// Creates (or reuses) the bridge and the VxLAN device of a network; idempotent. Leftovers of a
/// crashed run are replaced when they do not match. Remote entries are not touched: call
/// [`reconcile_remotes`] afterwards (a replaced VxLAN device starts without any).
pub fn ensure_network(cfg: &NetworkConfig) -> Result<()> {
    cfg.validate()?;
    let mtu = cfg.overlay_mtu();
    let mac = cfg.vtep_mac();
    // 1. Is there a matching VxLAN device in the network namespace already?
    let reuse = in_netns(Some(&cfg.netns), |h| async move {
        Ok(match find_link(&h, VXLAN_NAME).await? {
            Some(m) if vxlan_matches(&m, cfg) => true,
            Some(m) => {
                h.link()
                    .del(m.header.index)
                    .execute()
                    .await
                    .map_err(nl("delete stale vxlan"))?;
                false
            }
            None => false,
        })
    })?;
    // 2. If not, create it in the underlay namespace (its UDP socket lives there) and move it.
    if !reuse {
        let ns = File::open(&cfg.netns).map_err(io(format!("open {}", cfg.netns.display())))?;
        let staging = cfg.staging_vxlan_name();
        let fd = ns.as_raw_fd();
        in_netns(cfg.underlay_netns.as_deref(), |h| async move {
            del_link_if_exists(&h, &staging).await?;
            let msg = LinkVxlan::new(&staging, cfg.vni)
                .local(cfg.underlay_ip)
                .port(VXLAN_PORT)
                .learning(false)
                .mtu(mtu)
                .address(mac.to_vec())
                .build();
            h.link()
                .add(msg)
                .execute()
                .await
                .map_err(nl(format!("create vxlan {staging}")))?;
            let idx = link_index(&h, &staging).await?;
            let msg = LinkUnspec::new_with_index(idx).setns_by_fd(fd).build();
            h.link()
                .set(msg)
                .execute()
                .await
                .map_err(nl("move vxlan into the network namespace"))
        })?;
        drop(ns);
    }
    // 3. Configure the inside of the network namespace.
    let staging = cfg.staging_vxlan_name();
    in_netns(Some(&cfg.netns), |h| async move {
        write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        // VIP traffic between containers of this host is routed back out of br0 (hairpin): no
        // ICMP redirects for it (they would also use up the ICMP rate limit for real errors).
        for conf in ["all", "default"] {
            write_sysctl(
                &format!("/proc/sys/net/ipv4/conf/{conf}/send_redirects"),
                "0",
            )?;
        }
        // Loopback up (the network namespace may later host the DNS server).
        let lo = link_index(&h, "lo").await?;
        h.link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .map_err(nl("lo up"))?;
        if !reuse {
            let idx = link_index(&h, &staging).await?;
            let msg = LinkUnspec::new_with_index(idx)
                .name(VXLAN_NAME.to_string())
                .build();
            h.link()
                .set(msg)
                .execute()
                .await
                .map_err(nl("rename vxlan"))?;
        }
        let vx = link_index(&h, VXLAN_NAME).await?;
        h.link()
            .set(LinkUnspec::new_with_index(vx).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(nl("vxlan mtu/up"))?;
        add_addr_replace(&h, vx, cfg.subnet.network(), 32, VXLAN_NAME).await?;

        let br = match find_link(&h, BRIDGE_NAME).await? {
            Some(m) if is_kind(&m, InfoKind::Bridge) => m.header.index,
            other => {
                if let Some(m) = other {
                    h.link()
                        .del(m.header.index)
                        .execute()
                        .await
                        .map_err(nl("delete stale br0"))?;
                }
                h.link()
                    .add(LinkBridge::new(BRIDGE_NAME).mtu(mtu).build())
                    .execute()
                    .await
                    .map_err(nl("create bridge"))?;
                link_index(&h, BRIDGE_NAME).await?
            }
        };
        // A bridge without an address of its own takes the lowest of its ports' and changes it
        // as containers come and go, which leaves the neighbours' entries for the gateway stale
        // (their packets are dropped until they ask again): give it a fixed one.
        h.link()
            .set(
                LinkUnspec::new_with_index(br)
                    .mtu(mtu)
                    .address(bridge_mac(cfg.subnet.gateway()).to_vec())
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("bridge mtu/address/up"))?;
        write_sysctl(
            &format!("/proc/sys/net/ipv4/conf/{BRIDGE_NAME}/send_redirects"),
            "0",
        )?;
        add_addr_replace(&h, br, cfg.subnet.gateway(), cfg.subnet.prefix, BRIDGE_NAME).await
    })
}

/// Removes everything the network has in its namespace (every link but `lo`, so container veths
/// go too, and their peers with them) and a staging VxLAN device left in the underlay namespace.
/// Idempotent; a missing network namespace counts as torn down. The namespace itself stays (see
/// [`delete_named_netns`]).
pub fn teardown_network(cfg: &NetworkConfig) -> Result<()> {
    let staging = cfg.staging_vxlan_name();
    in_netns(cfg.underlay_netns.as_deref(), |h| async move {
        del_link_if_exists(&h, &staging).await
    })?;
    if !cfg.netns.exists() {
        return Ok(());
    }
    in_netns(Some(&cfg.netns), |h| async move {
        let links: Vec<LinkMessage> = h
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("list links"))?;
        for m in links {
            let is_lo = m.attributes.contains(&LinkAttribute::IfName("lo".into()));
            if is_lo {
                continue;
            }
            match h.link().del(m.header.index).execute().await {
                Ok(()) => {}
                // A veth peer already gone with its other end.
                Err(e) if is_errno(&e, libc::ENODEV) => {}
                Err(e) => return Err(nl("delete link")(e)),
            }
        }
        Ok(())
    })
}

/// Connects a container to the network: a veth pair, `host_ifname` a port of the bridge, the
/// other end `container_ifname` in the container's namespace with its address, the overlay MTU
/// and a default route via the gateway. Replaces leftovers of the same names.
pub fn attach_container(cfg: &NetworkConfig, a: &Attachment) -> Result<()> {
    if a.host_ifname.len() > 13 || a.host_ifname.is_empty() {
        return Err(Error::Invalid(format!(
            "host interface name {:?} must be 1-13 chars",
            a.host_ifname
        )));
    }
    if !cfg.subnet.contains(a.address)
        || a.address == cfg.subnet.network()
        || a.address == cfg.subnet.gateway()
    {
        return Err(Error::Invalid(format!(
            "{} is not a container address of {}",
            a.address, cfg.subnet
        )));
    }
    let mtu = cfg.overlay_mtu();
    let peer_tmp_name = format!("{}_c", a.host_ifname);
    let peer_tmp: &str = &peer_tmp_name;
    let cns = File::open(&a.container_netns)
        .map_err(io(format!("open {}", a.container_netns.display())))?;
    let cfd = cns.as_raw_fd();
    // Leftovers in the container namespace.
    in_netns(Some(&a.container_netns), |h| async move {
        del_link_if_exists(&h, &a.container_ifname).await?;
        del_link_if_exists(&h, peer_tmp).await
    })?;
    in_netns(Some(&cfg.netns), |h| async move {
        del_link_if_exists(&h, &a.host_ifname).await?;
        del_link_if_exists(&h, peer_tmp).await?;
        let br = link_index(&h, BRIDGE_NAME).await?;
        h.link()
            .add(LinkVeth::new(&a.host_ifname, peer_tmp).mtu(mtu).build())
            .execute()
            .await
            .map_err(nl(format!("create veth {}", a.host_ifname)))?;
        let peer = link_index(&h, peer_tmp).await?;
        h.link()
            .set(
                LinkUnspec::new_with_index(peer)
                    .mtu(mtu)
                    .setns_by_fd(cfd)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("move veth peer into the container namespace"))?;
        let host = link_index(&h, &a.host_ifname).await?;
        h.link()
            .set(
                LinkUnspec::new_with_index(host)
                    .controller(br)
                    .mtu(mtu)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("veth host end on bridge"))
    })?;
    drop(cns);
    in_netns(Some(&a.container_netns), |h| async move {
        let lo = link_index(&h, "lo").await?;
        h.link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .map_err(nl("lo up"))?;
        let idx = link_index(&h, peer_tmp).await?;
        h.link()
            .set(
                LinkUnspec::new_with_index(idx)
                    .name(a.container_ifname.clone())
                    .mtu(mtu)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("container interface"))?;
        add_addr_replace(&h, idx, a.address, cfg.subnet.prefix, &a.container_ifname).await?;
        let default = [Subnet {
            addr: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
        }];
        let routes = if a.routes.is_empty() {
            &default[..]
        } else {
            &a.routes[..]
        };
        for dest in routes {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dest.network(), dest.prefix)
                .gateway(cfg.subnet.gateway())
                .output_interface(idx)
                .build();
            h.route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("route {dest} via the gateway")))?;
        }
        Ok(())
    })
}

/// Removes a container's veth pair (by its end in the network's namespace); idempotent.
pub fn detach_container(cfg: &NetworkConfig, host_ifname: &str) -> Result<()> {
    detach_veth(&cfg.netns, host_ifname)
}

/// Removes the veth `host_ifname` (and its peer) from the network namespace `netns`; idempotent.
pub fn detach_veth(netns: &Path, host_ifname: &str) -> Result<()> {
    in_netns(Some(netns), |h| async move {
        del_link_if_exists(&h, host_ifname).await
    })
}

/// An IPv4 neighbour destination; FDB (bridge family) entries carry it as raw bytes.
fn neigh_v4(a: &NeighbourAddress) -> Option<Ipv4Addr> {
    match a {
        NeighbourAddress::Inet(d) => Some(*d),
        NeighbourAddress::Other(v) => <[u8; 4]>::try_from(v.as_slice()).ok().map(Ipv4Addr::from),
        _ => None,
    }
}

fn mac6(v: &[u8]) -> Option<[u8; 6]> {
    v.try_into().ok()
}

async fn observe(h: &Handle, vx: u32) -> Result<ObservedRemotes> {
    let mut o = ObservedRemotes::default();
    let routes: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("list routes"))?;
    for r in routes {
        let mut oif = None;
        let mut dst = None;
        let mut gw = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                _ => {}
            }
        }
        if let (Some(i), Some(d), Some(g)) = (oif, dst, gw)
            && i == vx
        {
            o.routes.insert(
                Subnet {
                    addr: d,
                    prefix: r.header.destination_prefix_length,
                },
                g,
            );
        }
    }
    let neighs: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl("list neighbours"))?;
    for n in neighs.iter().filter(|n| n.header.ifindex == vx) {
        let lla = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(l) => mac6(l),
            _ => None,
        });
        let dst = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(d) => neigh_v4(d),
            _ => None,
        });
        match n.header.family {
            AddressFamily::Inet if n.header.state == NeighbourState::Permanent => {
                if let (Some(d), Some(m)) = (dst, lla) {
                    o.neighbours.insert(d, m);
                }
            }
            AddressFamily::Bridge => {
                if let (Some(d), Some(m)) = (dst, lla) {
                    o.fdb.insert(m, d);
                }
            }
            _ => {}
        }
    }
    Ok(o)
}

async fn fdb_dump(h: &Handle, vx: u32) -> Result<Vec<NeighbourMessage>> {
    let mut req = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge);
    req.message_mut().header.ifindex = vx;
    let all: Vec<NeighbourMessage> = req.execute().try_collect().await.map_err(nl("list fdb"))?;
    Ok(all.into_iter().filter(|n| n.header.ifindex == vx).collect())
}

async fn observe_all(h: &Handle) -> Result<(u32, ObservedRemotes)> {
    let vx = link_index(h, VXLAN_NAME).await?;
    let mut o = observe(h, vx).await?;
    for n in fdb_dump(h, vx).await? {
        let lla = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(l) => mac6(l),
            _ => None,
        });
        let dst = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(d) => neigh_v4(d),
            _ => None,
        });
        if let (Some(m), Some(d)) = (lla, dst) {
            o.fdb.insert(m, d);
        }
    }
    Ok((vx, o))
}

/// The remote entries present on a network's VxLAN device.
pub fn observe_remotes(cfg: &NetworkConfig) -> Result<ObservedRemotes> {
    in_netns(
        Some(&cfg.netns),
        |h| async move { Ok(observe_all(&h).await?.1) },
    )
}

/// Makes the remote entries of a network exactly `desired` (route + neighbour + FDB per remote
/// host; entries of hosts not listed are removed). Idempotent; returns the changes applied.
pub fn reconcile_remotes(cfg: &NetworkConfig, desired: &[RemoteHost]) -> Result<Vec<Change>> {
    if let Some(r) = desired.iter().find(|r| {
        r.subnet.contains(cfg.subnet.network()) || cfg.subnet.contains(r.subnet.network())
    }) {
        return Err(Error::Invalid(format!(
            "remote subnet {} overlaps the local {}",
            r.subnet, cfg.subnet
        )));
    }
    in_netns(Some(&cfg.netns), |h| async move {
        let (vx, observed) = observe_all(&h).await?;
        let plan = plan_remotes(desired, &observed);
        for c in &plan {
            apply(&h, vx, c).await?;
        }
        Ok(plan)
    })
}

fn ignore_missing(
    r: std::result::Result<(), rtnetlink::Error>,
) -> std::result::Result<(), rtnetlink::Error> {
    match r {
        Err(e) if is_errno(&e, libc::ENOENT) || is_errno(&e, libc::ESRCH) => Ok(()),
        other => other,
    }
}

async fn apply(h: &Handle, vx: u32, c: &Change) -> Result<()> {
    let what = format!("{c:?}");
    match *c {
        Change::SetFdb { mac, dst } => {
            h.neighbours()
                .add_bridge(vx, &mac)
                .flags(NeighbourFlags::Own)
                .destination(IpAddr::V4(dst))
                .replace()
                .execute()
                .await
        }
        Change::SetNeighbour { ip, mac } => {
            h.neighbours()
                .add(vx, IpAddr::V4(ip))
                .link_layer_address(&mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
        }
        Change::SetRoute { subnet, via } => {
            let r = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(subnet.network(), subnet.prefix)
                .gateway(via)
                .output_interface(vx)
                .onlink()
                .build();
            h.route().add(r).replace().execute().await
        }
        Change::DelRoute { subnet } => {
            let r = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(subnet.network(), subnet.prefix)
                .output_interface(vx)
                .build();
            ignore_missing(h.route().del(r).execute().await)
        }
        Change::DelNeighbour { ip } => {
            let mut m = NeighbourMessage::default();
            m.header.family = AddressFamily::Inet;
            m.header.ifindex = vx;
            m.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
            ignore_missing(h.neighbours().del(m).execute().await)
        }
        Change::DelFdb { mac } => {
            let mut m = NeighbourMessage::default();
            m.header.family = AddressFamily::Bridge;
            m.header.ifindex = vx;
            m.header.flags = NeighbourFlags::Own;
            m.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
            ignore_missing(h.neighbours().del(m).execute().await)
        }
    }
    .map_err(nl(what))
}

/// Creates a named network namespace at `/run/netns/NAME` (what `ip netns add` does, without
/// `ip`), or returns the existing one. Returns its path.
pub fn create_named_netns(name: &str) -> Result<PathBuf> {
    if name.is_empty() || name.contains('/') {
        return Err(Error::Invalid(format!("bad namespace name {name:?}")));
    }
    let dir = Path::new("/run/netns");
    let path = dir.join(name);
    if path.exists() && File::open(&path).is_ok_and(|f| is_nsfs(&f)) {
        return Ok(path);
    }
    std::fs::create_dir_all(dir).map_err(io("create /run/netns"))?;
    File::create(&path).map_err(io(format!("create {}", path.display())))?;
    let p = path.clone();
    std::thread::scope(|s| {
        s.spawn(move || -> Result<()> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| Error::Io {
                context: "unshare(CLONE_NEWNET)".into(),
                source: e.into(),
            })?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &p,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| Error::Io {
                context: format!("bind mount {}", p.display()),
                source: e.into(),
            })
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Invalid("netns thread panicked".into())))
    })
    .inspect_err(|_| {
        let _ = std::fs::remove_file(&path);
    })?;
    Ok(path)
}

fn is_nsfs(f: &File) -> bool {
    nix::sys::statfs::fstatfs(f).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Deletes a named network namespace created by [`create_named_netns`] (or `ip netns add`);
/// idempotent. Links still inside are destroyed with it once nothing else holds it.
pub fn delete_named_netns(name: &str) -> Result<()> {
    let path = Path::new("/run/netns").join(name);
    if !path.exists() {
        return Ok(());
    }
    match nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => {
            return Err(Error::Io {
                context: format!("umount {}", path.display()),
                source: e.into(),
            });
        }
    }
    std::fs::remove_file(&path).map_err(io(format!("remove {}", path.display())))
}

/// Binds a UDP socket and a TCP listener on `addr` inside `netns` (for a DNS server that answers
/// the containers of a network at their gateway address). Sockets stay in the namespace they were
/// created in, whichever thread later uses them.
pub fn bind_in_netns(
    netns: &Path,
    addr: std::net::SocketAddr,
) -> Result<(std::net::UdpSocket, std::net::TcpListener)> {
    std::thread::scope(|s| {
        s.spawn(move || {
            enter_netns(netns)?;
            let udp = std::net::UdpSocket::bind(addr).map_err(io(format!("bind udp {addr}")))?;
            let tcp = std::net::TcpListener::bind(addr).map_err(io(format!("bind tcp {addr}")))?;
            Ok((udp, tcp))
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Invalid("bind thread panicked".into())))
    })
}

/// The MTU of the link holding `ip` in the caller's network namespace (the underlay: the overlay
/// gets 50 bytes less).
pub fn underlay_mtu(ip: Ipv4Addr) -> Result<u32> {
    in_netns(None, |h| async move {
        let addrs: Vec<AddressMessage> = h
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("list addresses"))?;
        let index = addrs
            .iter()
            .find(|m| {
                m.attributes.iter().any(|a| {
                    matches!(a, AddressAttribute::Local(IpAddr::V4(a)) | AddressAttribute::Address(IpAddr::V4(a)) if *a == ip)
                })
            })
            .map(|m| m.header.index)
            .ok_or_else(|| Error::Invalid(format!("no link holds the underlay address {ip}")))?;
        let link = h
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await
            .map_err(nl("get the underlay link"))?
            .ok_or_else(|| Error::Invalid(format!("link {index} vanished")))?;
        link.attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .ok_or_else(|| Error::Invalid(format!("link {index} reports no MTU")))
    })
}

/// Whether link `ifname` in `netns` (`None`: the caller's) exists and holds `ip` (lets a
/// restarted agent keep what is already in place instead of re-creating it).
pub fn link_has_address(netns: Option<&Path>, ifname: &str, ip: Ipv4Addr) -> Result<bool> {
    in_netns(netns, |h| async move {
        let Some(link) = find_link(&h, ifname).await? else {
            return Ok(false);
        };
        let addrs: Vec<AddressMessage> = h
            .address()
            .get()
            .set_link_index_filter(link.header.index)
            .execute()
            .try_collect()
            .await
            .map_err(nl(format!("list addresses of {ifname}")))?;
        Ok(addrs.iter().any(|m| {
            m.header.index == link.header.index
                && m.attributes.iter().any(|a| {
                    matches!(a, AddressAttribute::Local(IpAddr::V4(a)) | AddressAttribute::Address(IpAddr::V4(a)) if *a == ip)
                })
        }))
    })
}

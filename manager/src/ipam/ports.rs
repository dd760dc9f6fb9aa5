//! Published ports of the routing mesh: ingress-mode ports published as 0 get the first free
//! port of [`FIRST_DYNAMIC_PORT`]..=[`LAST_DYNAMIC_PORT`] (kept across updates), and a port
//! published in ingress mode belongs to one service cluster-wide: no other service may publish
//! it, in either mode. Host-mode ports only clash with each other per node, which the scheduler
//! handles.

use crate::store::{PortConfig, Protocol, PublishMode, ServiceSpec, Store};
use std::collections::BTreeSet;

/// The first port handed out to an ingress port published as 0 (as Docker Swarm does).
pub const FIRST_DYNAMIC_PORT: u16 = 30000;
/// The last port handed out to an ingress port published as 0.
pub const LAST_DYNAMIC_PORT: u16 = 32767;

fn mode_name(mode: PublishMode) -> &'static str {
    match mode {
        PublishMode::Ingress => "ingress",
        PublishMode::Host => "host",
    }
}

/// The ports published (non-zero) by the services other than `service_id`, with their names.
fn published_by_others<'a>(
    store: &'a Store,
    service_id: &'a str,
) -> impl Iterator<Item = (&'a str, &'a PortConfig)> {
    store
        .services
        .values()
        .filter(move |s| s.meta.id != service_id)
        .flat_map(|s| {
            s.spec
                .endpoint
                .ports
                .iter()
                .filter(|p| p.published != 0)
                .map(move |p| (s.name.as_str(), p))
        })
}

/// Checks `spec`'s published ports against the other services' (`service_id` is the service's
/// own id, skipped): an ingress port must not be published by another service in any mode, and
/// a host port must not be published by another service in ingress mode. The error names the
/// field (`spec.endpoint.ports[i].published`).
pub fn check_conflicts(store: &Store, service_id: &str, spec: &ServiceSpec) -> Result<(), String> {
    for (i, port) in spec.endpoint.ports.iter().enumerate() {
        if port.published == 0 {
            continue;
        }
        let clash = published_by_others(store, service_id).find(|(_, other)| {
            other.published == port.published
                && other.protocol == port.protocol
                && (port.mode == PublishMode::Ingress || other.mode == PublishMode::Ingress)
        });
        if let Some((name, other)) = clash {
            return Err(format!(
                "spec.endpoint.ports[{i}].published: port {}/{} is already published by service {name} ({} mode)",
                port.published,
                port.protocol.as_str(),
                mode_name(other.mode)
            ));
        }
    }
    Ok(())
}

/// Resolves the ingress ports of `spec` published as 0 and checks the result with
/// [`check_conflicts`]. On an update (`current`: the spec the service has now), such a port
/// keeps the port the current spec publishes for the same target and protocol in ingress mode
/// (unless the new spec publishes that port otherwise); any other gets the lowest port of the
/// dynamic range that neither another service nor the spec publishes with that protocol.
pub fn assign_published_ports(
    store: &Store,
    service_id: &str,
    spec: &mut ServiceSpec,
    current: Option<&ServiceSpec>,
) -> Result<(), String> {
    let unresolved = |p: &PortConfig| p.mode == PublishMode::Ingress && p.published == 0;
    let in_spec = |ports: &[PortConfig], published: u16, protocol: Protocol| {
        ports
            .iter()
            .any(|p| p.published == published && p.protocol == protocol)
    };
    if let Some(current) = current {
        for i in 0..spec.endpoint.ports.len() {
            let port = spec.endpoint.ports[i];
            if !unresolved(&port) {
                continue;
            }
            let kept = current.endpoint.ports.iter().find(|old| {
                old.mode == PublishMode::Ingress
                    && old.published != 0
                    && old.target == port.target
                    && old.protocol == port.protocol
                    && !in_spec(&spec.endpoint.ports, old.published, old.protocol)
            });
            if let Some(old) = kept {
                spec.endpoint.ports[i].published = old.published;
            }
        }
    }
    for i in 0..spec.endpoint.ports.len() {
        let port = spec.endpoint.ports[i];
        if !unresolved(&port) {
            continue;
        }
        let taken: BTreeSet<u16> = published_by_others(store, service_id)
            .map(|(_, p)| p)
            .chain(spec.endpoint.ports.iter())
            .filter(|p| p.protocol == port.protocol)
            .map(|p| p.published)
            .collect();
        let free = (FIRST_DYNAMIC_PORT..=LAST_DYNAMIC_PORT).find(|p| !taken.contains(p)).ok_or_else(|| {
            format!(
                "spec.endpoint.ports[{i}].published: no free {} port left in {FIRST_DYNAMIC_PORT}-{LAST_DYNAMIC_PORT}: publish a port explicitly",
                port.protocol.as_str()
            )
        })?;
        spec.endpoint.ports[i].published = free;
    }
    check_conflicts(store, service_id, spec)
}

/// Whether any service publishes a port in ingress mode (then every ready node needs a lease of
/// the ingress network).
pub fn any_ingress_port(store: &Store) -> bool {
    store.services.values().any(|s| {
        s.spec
            .endpoint
            .ports
            .iter()
            .any(|p| p.mode == PublishMode::Ingress)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EndpointSpec, Meta, Service};

    fn port(target: u16, published: u16, protocol: Protocol, mode: PublishMode) -> PortConfig {
        PortConfig {
            target,
            published,
            protocol,
            mode,
        }
    }

    fn spec(ports: &[PortConfig]) -> ServiceSpec {
        ServiceSpec {
            endpoint: EndpointSpec {
                ports: ports.to_vec(),
                ..EndpointSpec::default()
            },
            ..ServiceSpec::default()
        }
    }

    fn with_services(services: &[(&str, &[PortConfig])]) -> Store {
        let mut store = Store::default();
        for (name, ports) in services {
            let service = Service {
                meta: Meta {
                    id: format!("s-{name}"),
                    ..Meta::default()
                },
                name: name.to_string(),
                labels: Default::default(),
                spec: spec(ports),
                previous_spec: None,
                job_iteration: 0,
                update_status: None,
            };
            store.services.insert(service.meta.id.clone(), service);
        }
        store
    }

    use Protocol::{Tcp, Udp};
    use PublishMode::{Host, Ingress};

    #[test]
    fn unpublished_ingress_ports_get_the_first_free_dynamic_port() {
        let store = with_services(&[
            (
                "web",
                &[port(80, 30000, Tcp, Ingress), port(53, 30001, Udp, Ingress)],
            ),
            ("edge", &[port(81, 30001, Tcp, Host)]),
        ]);
        let mut new = spec(&[
            port(80, 0, Tcp, Ingress),
            port(443, 30002, Tcp, Ingress),
            port(53, 0, Udp, Ingress),
            port(22, 0, Tcp, Host),
            port(8080, 0, Tcp, Ingress),
        ]);
        assign_published_ports(&store, "s-new", &mut new, None).unwrap();
        let published: Vec<u16> = new.endpoint.ports.iter().map(|p| p.published).collect();
        assert_eq!(
            published,
            [30003, 30002, 30000, 0, 30004],
            "per protocol, skipping the spec's own; host 0 stays"
        );
    }

    #[test]
    fn an_update_keeps_the_assigned_port() {
        let store = with_services(&[(
            "web",
            &[port(80, 30000, Tcp, Ingress), port(90, 30001, Tcp, Ingress)],
        )]);
        let current = store.services["s-web"].spec.clone();
        // The same entries sent again with 0 (and reordered): the ports stay.
        let mut again = spec(&[port(90, 0, Tcp, Ingress), port(80, 0, Tcp, Ingress)]);
        assign_published_ports(&store, "s-web", &mut again, Some(&current)).unwrap();
        assert_eq!(
            again
                .endpoint
                .ports
                .iter()
                .map(|p| p.published)
                .collect::<Vec<_>>(),
            [30001, 30000]
        );
        // Sent back as stored: unchanged; a new entry gets the next free port.
        let mut more = spec(&[
            port(80, 30000, Tcp, Ingress),
            port(90, 30001, Tcp, Ingress),
            port(91, 0, Tcp, Ingress),
        ]);
        assign_published_ports(&store, "s-web", &mut more, Some(&current)).unwrap();
        assert_eq!(more.endpoint.ports[2].published, 30002);
        // A changed entry (other target) gets a fresh port; the old one is reusable by the spec.
        let mut changed = spec(&[port(81, 0, Tcp, Ingress)]);
        assign_published_ports(&store, "s-web", &mut changed, Some(&current)).unwrap();
        assert_eq!(
            changed.endpoint.ports[0].published, 30000,
            "its own old ports are free again"
        );
    }

    #[test]
    fn ingress_ports_belong_to_one_service() {
        let store = with_services(&[
            ("web", &[port(80, 8080, Tcp, Ingress)]),
            ("edge", &[port(80, 9090, Tcp, Host)]),
        ]);
        let err = assign_published_ports(
            &store,
            "s-new",
            &mut spec(&[port(1, 8080, Tcp, Ingress)]),
            None,
        )
        .unwrap_err();
        assert!(
            err.starts_with("spec.endpoint.ports[0].published: port 8080/tcp")
                && err.contains("service web"),
            "{err}"
        );
        let err = check_conflicts(
            &store,
            "s-new",
            &spec(&[port(1, 1, Udp, Host), port(1, 9090, Tcp, Ingress)]),
        )
        .unwrap_err();
        assert!(
            err.starts_with("spec.endpoint.ports[1].published") && err.contains("edge (host mode)"),
            "{err}"
        );
        let err = check_conflicts(&store, "s-new", &spec(&[port(1, 8080, Tcp, Host)])).unwrap_err();
        assert!(err.contains("service web (ingress mode)"), "{err}");
        // Host vs host is the scheduler's business; other protocols and the service itself are fine.
        assert_eq!(
            check_conflicts(&store, "s-new", &spec(&[port(1, 9090, Tcp, Host)])),
            Ok(())
        );
        assert_eq!(
            check_conflicts(&store, "s-new", &spec(&[port(1, 8080, Udp, Ingress)])),
            Ok(())
        );
        assert_eq!(
            check_conflicts(&store, "s-web", &spec(&[port(2, 8080, Tcp, Ingress)])),
            Ok(())
        );
    }

    #[test]
    fn the_dynamic_range_can_run_out() {
        let all: Vec<PortConfig> = (FIRST_DYNAMIC_PORT..=LAST_DYNAMIC_PORT)
            .map(|p| port(80, p, Tcp, Ingress))
            .collect();
        let store = with_services(&[("big", &all)]);
        let err = assign_published_ports(
            &store,
            "s-new",
            &mut spec(&[port(80, 0, Tcp, Ingress)]),
            None,
        )
        .unwrap_err();
        assert!(
            err.contains("no free tcp port left in 30000-32767"),
            "{err}"
        );
        let mut udp = spec(&[port(80, 0, Udp, Ingress)]);
        assign_published_ports(&store, "s-new", &mut udp, None).unwrap();
        assert_eq!(udp.endpoint.ports[0].published, FIRST_DYNAMIC_PORT);
    }
}

//! The network calls over gRPC against a real one-manager cluster, with services attached and
//! the leader's lease loop running.

use crate::store::TaskState;
use crate::testing::TestManager;
use proto::v1 as pb;
use proto::v1::control_client::ControlClient;
use std::time::Duration;
use tonic::Code;

fn network(name: &str, subnet: &str) -> pb::CreateNetworkRequest {
    pb::CreateNetworkRequest { spec: Some(pb::NetworkSpec { name: name.into(), subnet: subnet.into(), ..Default::default() }) }
}

fn service(name: &str, networks: &[&str]) -> pb::CreateServiceRequest {
    pb::CreateServiceRequest {
        spec: Some(pb::ServiceSpec {
            name: name.into(),
            image: "nginx".into(),
            mode: Some(pb::ServiceMode { kind: "replicated".into(), replicas: Some(1), max_concurrent: 0 }),
            networks: networks
                .iter()
                .map(|n| pb::NetworkAttachment { target: n.to_string(), aliases: vec![format!("{name}-alias")] })
                .collect(),
            ..Default::default()
        }),
        no_resolve_image: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_round_trip_with_services_and_leases() {
    let manager = TestManager::start().await;
    let mut control = ControlClient::new(manager.admin_channel().await);

    let blue = control.create_network(network("blue", "")).await.unwrap().into_inner();
    let red = control.create_network(network("red", "10.77.0.0/16")).await.unwrap().into_inner();
    assert_eq!((blue.driver.as_str(), blue.scope.as_str()), ("overlay", "swarm"));
    assert_eq!(red.subnet, "10.77.0.0/16");
    assert_ne!(blue.vni, red.vni);
    assert!(blue.vni >= 4096);

    for (request, field) in [
        (network("bad", "10.78.0.0/24"), "at least a /23"),
        (network("bad", "10.77.2.0/23"), "spec.subnet"),
        (network("bad", "10.1.2.3/16"), "spec.subnet"),
        (network("bad", "10.90.0.0/28"), "spec.subnet"),
        (network("bad name", ""), "spec.name"),
    ] {
        let status = control.create_network(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(status.message().contains(field), "{}", status.message());
    }
    let status = control.create_network(network("blue", "")).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    let listed = control.list_networks(pb::ListNetworksRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.networks.len(), 3, "the ingress network, blue and red: refusals wrote nothing");

    // A service naming a missing network is refused with the field; names resolve to ids.
    let status = control.create_service(service("web", &["blue", "nope"])).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("spec.networks[1]"), "{}", status.message());
    let web = control.create_service(service("web", &["blue", &red.id[..8]])).await.unwrap().into_inner();
    let targets: Vec<String> = web.spec.unwrap().networks.into_iter().map(|n| n.target).collect();
    assert_eq!(targets, [blue.id.clone(), red.id.clone()]);

    let status = control.remove_network(pb::RemoveNetworkRequest { reference: "blue".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("web"), "{}", status.message());

    // The task is assigned to a node: that node gets a /24 of each network.
    let _worker = manager.add_worker("w1").await;
    manager
        .wait_for("a lease on each network", Duration::from_secs(15), |store| {
            store.tasks.values().any(|t| t.status.state == TaskState::Assigned)
                && store.subnet_leases.len() == 2
                && store.virtual_ips.len() == 2
        })
        .await;
    let got = control.get_service(pb::GetServiceRequest { reference: "web".into() }).await.unwrap().into_inner();
    let vips: Vec<(String, String)> = got.virtual_ips.into_iter().map(|v| (v.network_id, v.address)).collect();
    let blue_vip = format!("{}.255.1", blue.subnet.rsplitn(3, '.').last().unwrap());
    assert_eq!(vips, [(blue.id.clone(), blue_vip), (red.id.clone(), "10.77.255.1".to_string())], "in spec order");
    let got = control.get_network(pb::GetNetworkRequest { reference: "red".into() }).await.unwrap().into_inner();
    assert_eq!(got.leases.len(), 1);
    assert_eq!(got.leases[0].subnet, "10.77.0.0/24");
    assert_eq!(got.leases[0].node_hostname, "w1");
    assert_eq!(got.services, ["web"]);

    // Once the service is gone, its leases are released and the network can go.
    control.remove_service(pb::RemoveServiceRequest { reference: "web".into() }).await.unwrap();
    manager
        .wait_for("leases and virtual IPs released", Duration::from_secs(15), |store| {
            store.subnet_leases.is_empty() && store.virtual_ips.is_empty()
        })
        .await;
    control.remove_network(pb::RemoveNetworkRequest { reference: "blue".into() }).await.unwrap();
    let status = control.get_network(pb::GetNetworkRequest { reference: "blue".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

fn publishing(name: &str, ports: &[(u32, u32, &str)]) -> pb::CreateServiceRequest {
    let mut request = service(name, &[]);
    let spec = request.spec.as_mut().unwrap();
    spec.endpoint = Some(pb::EndpointSpec {
        mode: String::new(),
        ports: ports
            .iter()
            .map(|(target, published, mode)| pb::PortConfig {
                target: *target,
                published: *published,
                protocol: String::new(),
                mode: mode.to_string(),
            })
            .collect(),
    });
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_network_is_the_routing_mesh() {
    let manager = TestManager::start().await;
    let mut control = ControlClient::new(manager.admin_channel().await);

    // init created it, first from the pool; other networks come after it.
    let ingress = control.get_network(pb::GetNetworkRequest { reference: "ingress".into() }).await.unwrap().into_inner();
    assert!(ingress.ingress);
    assert_eq!(ingress.subnet, "10.0.0.0/16");
    assert!(ingress.vni >= 4096);
    let blue = control.create_network(network("blue", "")).await.unwrap().into_inner();
    assert!(!blue.ingress);
    assert_eq!(blue.subnet, "10.1.0.0/16");
    assert_ne!(blue.vni, ingress.vni);

    // An ingress port published as 0 gets the first free port of 30000-32767, kept on update.
    let web = control.create_service(publishing("web", &[(80, 0, "")])).await.unwrap().into_inner();
    let ports = |s: &pb::Service| -> Vec<u32> {
        s.spec.as_ref().unwrap().endpoint.as_ref().unwrap().ports.iter().map(|p| p.published).collect()
    };
    assert_eq!(ports(&web), [30000]);
    let api = control.create_service(publishing("api", &[(80, 0, "ingress"), (81, 8081, "host")])).await.unwrap();
    assert_eq!(ports(api.get_ref()), [30001, 8081]);
    let again = publishing("web", &[(80, 0, ""), (443, 0, "")]).spec;
    let request = pb::UpdateServiceRequest { reference: "web".into(), spec: again, no_resolve_image: true, ..Default::default() };
    let web = control.update_service(request).await.unwrap().into_inner();
    assert_eq!(ports(&web), [30000, 30002]);

    // A port another service publishes in ingress mode is refused in either mode, and so is a
    // host port for ingress.
    for (request, field) in [
        (publishing("x", &[(1, 30000, "host")]), "spec.endpoint.ports[0].published"),
        (publishing("x", &[(1, 1, "host"), (1, 30001, "")]), "spec.endpoint.ports[1].published"),
        (publishing("x", &[(1, 8081, "ingress")]), "spec.endpoint.ports[0].published"),
    ] {
        let status = control.create_service(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(status.message().contains(field), "{}", status.message());
    }
    control.create_service(publishing("other-host", &[(1, 8081, "host")])).await.unwrap();

    // The ingress network lists the publishing services, and cannot go while they publish.
    let got = control.get_network(pb::GetNetworkRequest { reference: "ingress".into() }).await.unwrap().into_inner();
    let mut services = got.services.clone();
    services.sort();
    assert_eq!(services, ["api", "other-host", "web"]);
    let status = control.remove_network(pb::RemoveNetworkRequest { reference: "ingress".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("routing mesh is in use by services api, other-host, web"), "{}", status.message());

    // Every ready node holds a lease of the ingress network while a service publishes an
    // ingress port; no virtual IP on it.
    let w1 = manager.add_worker("w1").await;
    let w2 = manager.add_worker("w2").await;
    let ingress_id = ingress.id.clone();
    manager
        .wait_for("an ingress lease on every ready node", Duration::from_secs(15), |store| {
            [&w1, &w2].iter().all(|w| store.subnet_leases.contains_key(&crate::ipam::lease_id(&ingress_id, w)))
        })
        .await;
    assert!(manager.consensus().state.read().virtual_ips.values().all(|v| v.network_id != ingress.id));

    for name in ["web", "api", "other-host"] {
        control.remove_service(pb::RemoveServiceRequest { reference: name.into() }).await.unwrap();
    }
    manager
        .wait_for("ingress leases released", Duration::from_secs(15), |store| store.subnet_leases.is_empty())
        .await;
    control.remove_network(pb::RemoveNetworkRequest { reference: "ingress".into() }).await.unwrap();
}

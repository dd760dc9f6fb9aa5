//! Agents against a real one-manager cluster: worker certificates from the Ca service,
//! sessions, status reports, and a node whose heartbeats stop.

use super::DispatcherTiming;
use crate::store::{NodeState, TaskState};
use crate::testing::TestManager;
use proto::v1 as pb;
use proto::v1::ca_client::CaClient;
use proto::v1::control_client::ControlClient;
use proto::v1::dispatcher_client::DispatcherClient;
use std::time::Duration;
use tonic::Streaming;
use tonic::transport::Channel;

struct Agent {
    node_id: String,
    client: DispatcherClient<Channel>,
    session_id: String,
    stream: Streaming<pb::SessionMessage>,
    heartbeats: tokio::task::JoinHandle<()>,
}

/// Joins with the worker token, opens a session and heartbeats every `period`.
async fn join_agent(manager: &TestManager, hostname: &str, period: Duration) -> Agent {
    let admin = manager.admin_channel().await;
    let token = ControlClient::new(admin.clone())
        .get_join_token(pb::GetJoinTokenRequest { role: "worker".into(), rotate: false })
        .await
        .unwrap()
        .into_inner()
        .token;
    let (csr_pem, key_pem) = identity::generate_csr().unwrap();
    let issued = CaClient::new(admin)
        .issue_certificate(pb::IssueCertificateRequest {
            token,
            csr_pem,
            hostname: hostname.into(),
            advertise_addr: "127.0.0.1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.role, "worker");
    let creds = identity::Credentials { ca_cert_pem: issued.ca_cert_pem, cert_pem: issued.cert_pem, key_pem };
    let mut client = DispatcherClient::new(identity::connect(&manager.addr, &creds).await.unwrap());
    let mut stream = client
        .session(pb::SessionRequest { hostname: hostname.into(), addr: "127.0.0.1".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.kind, "full");
    assert!(first.networks.is_some(), "the first message always carries the network views");
    assert_eq!(first.heartbeat_period_ms as u128, period.as_millis());
    let session_id = first.session_id.clone();
    let mut beat = client.clone();
    let beat_session = session_id.clone();
    let heartbeats = tokio::spawn(async move {
        loop {
            beat.heartbeat(pb::HeartbeatRequest { session_id: beat_session.clone() }).await.unwrap();
            tokio::time::sleep(period).await;
        }
    });
    Agent { node_id: format!("{:016x}", issued.node_id), client, session_id, stream, heartbeats }
}

/// Reads session messages until one assigns a task meant to run; returns it.
async fn next_assignment(agent: &mut Agent) -> pb::Assignment {
    let read = async {
        loop {
            let message = agent.stream.message().await.unwrap().unwrap();
            if let Some(a) = message.assignments.into_iter().find(|a| a.task.as_ref().unwrap().desired_state == "running") {
                return a;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read).await.expect("an assignment in time")
}

async fn report(agent: &mut Agent, task_id: &str, state: &str) -> Result<(), tonic::Status> {
    let update = pb::TaskStatus { task_id: task_id.into(), state: state.into(), container_id: "c1".into(), ..Default::default() };
    agent
        .client
        .update_task_status(pb::UpdateTaskStatusRequest { session_id: agent.session_id.clone(), updates: vec![update] })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_run_tasks_and_a_silent_node_loses_them() {
    let period = Duration::from_millis(100);
    let manager = TestManager::start_with(DispatcherTiming { heartbeat_period: period, grace: Duration::from_millis(500) }).await;
    let mut a = join_agent(&manager, "wa", period).await;
    let mut b = join_agent(&manager, "wb", period).await;
    let (a_id, b_id) = (a.node_id.clone(), b.node_id.clone());
    manager
        .wait_for("both workers ready", Duration::from_secs(15), |store| {
            [&a_id, &b_id].iter().all(|id| store.nodes.get(*id).is_some_and(|n| n.state == NodeState::Ready))
        })
        .await;

    let spec = pb::ServiceSpec {
        name: "web".into(),
        image: "nginx".into(),
        mode: Some(pb::ServiceMode { kind: "replicated".into(), replicas: Some(2), max_concurrent: 0 }),
        placement: Some(pb::Placement { constraints: vec!["node.role==worker".into()], ..Default::default() }),
        ..Default::default()
    };
    let mut control = ControlClient::new(manager.admin_channel().await);
    let web = control.create_service(pb::CreateServiceRequest { spec: Some(spec), no_resolve_image: true }).await.unwrap().into_inner();

    let on_a = next_assignment(&mut a).await;
    let on_b = next_assignment(&mut b).await;
    assert_eq!(on_a.spec.as_ref().unwrap().image, "nginx");
    let (task_a, task_b) = (on_a.task.unwrap().id, on_b.task.unwrap().id);
    let status = report(&mut b, &task_a, "running").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "only the node a task is assigned to reports it");
    report(&mut a, &task_a, "running").await.unwrap();
    report(&mut b, &task_b, "running").await.unwrap();
    report(&mut a, &task_a, "starting").await.unwrap();
    {
        let store = manager.consensus().state.read();
        assert_eq!(store.tasks[&task_a].status.state, TaskState::Running, "states only move forward");
        assert_eq!(store.tasks[&task_a].status.container_id, "c1");
    }
    let stale = a.client.heartbeat(pb::HeartbeatRequest { session_id: "stale".into() }).await.unwrap_err();
    assert_eq!(stale.code(), tonic::Code::NotFound);

    // A goes silent: it is DOWN, its task is shut down and replaced on B.
    a.heartbeats.abort();
    let web_id = web.id.clone();
    manager
        .wait_for("node a down", Duration::from_secs(15), |store| store.nodes[&a_id].state == NodeState::Down)
        .await;
    let replacement = next_assignment(&mut b).await.task.unwrap();
    assert_ne!(replacement.id, task_b);
    assert_eq!(replacement.node_id, b_id);
    manager
        .wait_for("both live tasks on b", Duration::from_secs(15), |store| {
            let live: Vec<_> = store.tasks.values().filter(|t| t.service_id == web_id && t.is_live()).collect();
            live.len() == 2 && live.iter().all(|t| t.node_id.as_deref() == Some(b_id.as_str()))
        })
        .await;
    assert_eq!(manager.consensus().state.read().nodes[&b_id].state, NodeState::Ready, "no false DOWN");
    b.heartbeats.abort();
}

/// Reads session messages until one carries network views that satisfy `wanted`; returns them.
async fn next_views(agent: &mut Agent, wanted: impl Fn(&[pb::NetworkView]) -> bool) -> Vec<pb::NetworkView> {
    let read = async {
        loop {
            let message = agent.stream.message().await.unwrap().unwrap();
            if let Some(views) = message.networks
                && wanted(&views.networks)
            {
                return views.networks;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read).await.expect("network views in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_carry_the_views_of_the_nodes_networks() {
    let period = Duration::from_millis(100);
    let timing = DispatcherTiming { heartbeat_period: period, grace: Duration::from_secs(5) };
    let manager = TestManager::start_with(timing).await;
    let mut agent = join_agent(&manager, "wn", period).await;
    let mut control = ControlClient::new(manager.admin_channel().await);
    let spec = pb::NetworkSpec { name: "front".into(), subnet: "10.90.0.0/16".into(), ..Default::default() };
    let front = control.create_network(pb::CreateNetworkRequest { spec: Some(spec) }).await.unwrap().into_inner();
    let spec = pb::ServiceSpec {
        name: "web".into(),
        image: "nginx".into(),
        placement: Some(pb::Placement { constraints: vec!["node.role==worker".into()], ..Default::default() }),
        networks: vec![pb::NetworkAttachment { target: "front".into(), aliases: vec!["www".into()] }],
        ..Default::default()
    };
    control.create_service(pb::CreateServiceRequest { spec: Some(spec), no_resolve_image: true }).await.unwrap();

    let with_vip = |views: &[pb::NetworkView]| views.first().is_some_and(|v| v.services.iter().any(|s| !s.vip.is_empty()));
    let views = next_views(&mut agent, with_vip).await;
    let view = &views[0];
    assert_eq!((view.id.as_str(), view.name.as_str(), view.vni), (front.id.as_str(), "front", front.vni));
    assert_eq!((view.subnet.as_str(), view.lease.as_str()), ("10.90.0.0/16", "10.90.0.0/24"));
    assert_eq!(view.services[0].name, "web");
    assert_eq!((view.services[0].endpoint_mode.as_str(), view.services[0].vip.as_str()), ("vip", "10.90.255.1"));
    assert_eq!(view.services[0].aliases, ["www"]);
    assert!(view.tasks.is_empty(), "nothing runs yet");

    let task = {
        let store = manager.consensus().state.read();
        store.tasks.values().find(|t| t.node_id.as_deref() == Some(agent.node_id.as_str())).unwrap().clone()
    };
    let update = pb::TaskStatus {
        task_id: task.meta.id.clone(),
        state: "running".into(),
        addresses: vec![pb::TaskAddress { network_id: front.id.clone(), address: "10.90.0.2".into() }],
        ..Default::default()
    };
    let request = pb::UpdateTaskStatusRequest { session_id: agent.session_id.clone(), updates: vec![update.clone()] };
    agent.client.update_task_status(request).await.unwrap();
    let views = next_views(&mut agent, |views| views.first().is_some_and(|v| !v.tasks.is_empty())).await;
    let record = &views[0].tasks[0];
    assert_eq!(record.address, "10.90.0.2");
    assert_eq!(record.names, [format!("web.1.{}", task.meta.id)]);

    let wrong = pb::TaskStatus {
        addresses: vec![pb::TaskAddress { network_id: "elsewhere".into(), address: "10.90.0.2".into() }],
        ..update
    };
    let request = pb::UpdateTaskStatusRequest { session_id: agent.session_id.clone(), updates: vec![wrong] };
    let status = agent.client.update_task_status(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("updates[0].addresses[0]"), "{}", status.message());
    agent.heartbeats.abort();
}

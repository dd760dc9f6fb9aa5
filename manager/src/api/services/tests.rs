//! The service calls over gRPC against a real one-manager cluster.

use crate::store::TaskState;
use crate::testing::TestManager;
use proto::v1 as pb;
use proto::v1::control_client::ControlClient;
use std::collections::HashMap;
use std::time::Duration;
use tonic::Code;

fn spec(name: &str, replicas: u64) -> pb::ServiceSpec {
    pb::ServiceSpec {
        name: name.into(),
        image: "nginx".into(),
        mode: Some(pb::ServiceMode { kind: "replicated".into(), replicas: Some(replicas), max_concurrent: 0 }),
        ..Default::default()
    }
}

fn filters(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_get_scale_remove_round_trip() {
    let manager = TestManager::start().await;
    let mut control = ControlClient::new(manager.admin_channel().await);

    // Invalid: refused with the field named, nothing written.
    let mut bad = spec("web", 2);
    bad.placement = Some(pb::Placement { constraints: vec!["node.colour==red".into()], ..Default::default() });
    let status = control.create_service(pb::CreateServiceRequest { spec: Some(bad), no_resolve_image: true }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("spec.placement.constraints[0]"), "{}", status.message());
    let listed = control.list_services(pb::ListServicesRequest::default()).await.unwrap().into_inner();
    assert!(listed.services.is_empty());

    let web = control.create_service(pb::CreateServiceRequest { spec: Some(spec("web", 2)), no_resolve_image: true }).await.unwrap().into_inner();
    assert_eq!(web.id.len(), 25);
    assert_eq!(web.desired, 2);
    assert_eq!(web.spec.as_ref().map(|s| s.name.as_str()), Some("web"));
    let status = control.create_service(pb::CreateServiceRequest { spec: Some(spec("web", 1)), no_resolve_image: true }).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{}", status.message());
    control.create_service(pb::CreateServiceRequest { spec: Some(spec("db", 1)), no_resolve_image: true }).await.unwrap();

    let worker = manager.add_worker("w1").await;
    let web_id = web.id.clone();
    manager
        .wait_for("web's 2 tasks assigned", Duration::from_secs(15), |store| {
            store.tasks.values().filter(|t| t.service_id == web_id && t.status.state == TaskState::Assigned).count() == 2
        })
        .await;

    // Get by id, name and id prefix.
    for reference in [web.id.clone(), "web".into(), web.id[..6].to_string()] {
        let got = control.get_service(pb::GetServiceRequest { reference }).await.unwrap().into_inner();
        assert_eq!(got.id, web.id);
    }
    let status = control.get_service(pb::GetServiceRequest { reference: "nope".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let listed = control
        .list_services(pb::ListServicesRequest { filters: filters(&[("name", "we")]) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.services.len(), 1);
    let tasks = control
        .list_tasks(pb::ListTasksRequest { filters: filters(&[("service", "web"), ("desired-state", "running")]) })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(tasks.len(), 2);
    assert!(tasks.iter().all(|t| t.service_name == "web" && t.state == "assigned" && t.node_id.len() == 16));
    let tasks = control
        .list_tasks(pb::ListTasksRequest { filters: filters(&[("node", "w1")]) })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(tasks.iter().all(|t| t.node_id == worker));

    // Scale to 5; a stale version is refused.
    let current = control.get_service(pb::GetServiceRequest { reference: "web".into() }).await.unwrap().into_inner();
    let scale = |version| pb::UpdateServiceRequest {
        reference: "web".into(),
        version,
        spec: Some(spec("web", 5)),
        force: false,
        no_resolve_image: false,
        rollback: false,
    };
    let status = control.update_service(scale(current.version - 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{}", status.message());
    let scaled = control.update_service(scale(current.version)).await.unwrap().into_inner();
    assert_eq!(scaled.desired, 5);
    assert!(scaled.previous_spec.is_some());
    manager
        .wait_for("5 live tasks", Duration::from_secs(15), |store| {
            store.tasks.values().filter(|t| t.service_id == web_id && t.is_live()).count() == 5
        })
        .await;
    let mut rename = scale(0);
    rename.spec = Some(spec("web2", 5));
    let status = control.update_service(rename).await.unwrap_err();
    assert!(status.message().contains("spec.name"), "{}", status.message());

    // Remove by id prefix: the tasks are marked for removal.
    let removed = control
        .remove_service(pb::RemoveServiceRequest { reference: web.id[..8].to_string() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.id, web.id);
    let status = control.get_service(pb::GetServiceRequest { reference: "web".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    manager
        .wait_for("web's tasks marked for removal", Duration::from_secs(15), |store| {
            store.tasks.values().filter(|t| t.service_id == web_id).all(|t| t.desired_state == TaskState::Remove)
        })
        .await;
    let listed = control.list_services(pb::ListServicesRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.services.iter().map(|s| s.spec.as_ref().map(|s| s.name.clone())).collect::<Vec<_>>(), vec![
        Some("db".to_string())
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_filters_are_refused() {
    let manager = TestManager::start().await;
    let mut control = ControlClient::new(manager.admin_channel().await);
    let status = control.list_tasks(pb::ListTasksRequest { filters: filters(&[("colour", "x")]) }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status =
        control.list_tasks(pb::ListTasksRequest { filters: filters(&[("desired-state", "asleep")]) }).await.unwrap_err();
    assert!(status.message().contains("desired-state"));
    let status =
        control.list_services(pb::ListServicesRequest { filters: filters(&[("colour", "x")]) }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_change_starts_an_update_and_rollback_restores_the_previous_spec() {
    let manager = TestManager::start().await;
    let mut control = ControlClient::new(manager.admin_channel().await);
    let created = pb::CreateServiceRequest { spec: Some(spec("web", 2)), no_resolve_image: true };
    let web = control.create_service(created).await.unwrap().into_inner();
    assert_eq!(web.update_status, None);
    let rollback = |reference: &str| pb::UpdateServiceRequest { reference: reference.into(), rollback: true, ..Default::default() };
    let status = control.update_service(rollback("web")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{}", status.message());

    // A scale replaces no task: no update.
    let update = |spec| pb::UpdateServiceRequest { reference: "web".into(), spec: Some(spec), no_resolve_image: true, ..Default::default() };
    let scaled = control.update_service(update(spec("web", 3))).await.unwrap().into_inner();
    assert_eq!(scaled.update_status, None);

    // A new image does; the answer says so.
    let mut new_image = spec("web", 3);
    new_image.image = "nginx:2".into();
    let updated = control.update_service(update(new_image)).await.unwrap().into_inner();
    let status = updated.update_status.clone().unwrap_or_default();
    assert_eq!(status.state, "updating");
    assert_eq!(status.total, 3);

    // A rollback swaps the spec back.
    let rolled = control.update_service(rollback("web")).await.unwrap().into_inner();
    assert_eq!(rolled.spec.as_ref().map(|s| s.image.as_str()), Some("nginx"));
    assert_eq!(rolled.previous_spec.as_ref().map(|s| s.image.as_str()), Some("nginx:2"));
    let status = rolled.update_status.unwrap_or_default();
    assert_eq!((status.state.as_str(), status.message.as_str()), ("rollback_started", "manually requested rollback"));

    // --force bumps force_update, which a client sending 0 cannot undo.
    let forced = pb::UpdateServiceRequest { force: true, ..update(spec("web", 3)) };
    let forced = control.update_service(forced).await.unwrap().into_inner();
    assert_eq!(forced.spec.as_ref().map(|s| s.force_update), Some(1));
    let again = control.update_service(update(spec("web", 3))).await.unwrap().into_inner();
    assert_eq!(again.spec.as_ref().map(|s| s.force_update), Some(1));
}

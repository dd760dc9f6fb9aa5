//! The runner on a real one-manager cluster: services become tasks, tasks land on nodes.

use crate::store::{Change, Meta, Object, Op, Service, ServiceMode, ServiceSpec, TaskState};
use crate::testing::TestManager;
use std::time::Duration;

fn service(name: &str, replicas: u64, constraints: &[&str]) -> Service {
    let mut spec =
        ServiceSpec { image: "nginx".into(), mode: ServiceMode::Replicated { replicas }, ..ServiceSpec::default() };
    spec.placement.constraints = constraints.iter().map(|c| c.to_string()).collect();
    Service {
        meta: Meta { id: crate::ids::new_id(), ..Meta::default() },
        name: name.into(),
        labels: Default::default(),
        spec,
        previous_spec: None,
        job_iteration: 0,
        update_status: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_creates_tasks_and_assigns_them_to_a_ready_worker() {
    let manager = TestManager::start().await;
    let web = service("web", 3, &["node.role==worker"]);
    let web_id = web.meta.id.clone();
    manager.consensus().write(Op::Batch(vec![Change::Create(Object::Service(web))])).await.unwrap();
    manager
        .wait_for("3 pending tasks", Duration::from_secs(15), |store| {
            let tasks: Vec<_> = store.tasks.values().filter(|t| t.service_id == web_id).collect();
            tasks.len() == 3 && tasks.iter().all(|t| t.status.state == TaskState::Pending && t.meta.id.len() == 25)
        })
        .await;
    // No worker yet: the tasks say why they wait.
    manager
        .wait_for("a pending reason", Duration::from_secs(15), |store| {
            store.tasks.values().all(|t| t.status.message.contains("constraint") || t.status.message.contains("node"))
        })
        .await;
    let worker = manager.add_worker("w1").await;
    manager
        .wait_for("3 tasks assigned to the worker", Duration::from_secs(15), |store| {
            let tasks: Vec<_> = store.tasks.values().filter(|t| t.service_id == web_id).collect();
            tasks.len() == 3
                && tasks.iter().all(|t| t.status.state == TaskState::Assigned && t.node_id.as_deref() == Some(&worker))
        })
        .await;
    // Quiet once converged: no write loop.
    let applied = manager.consensus().state.applied_index();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(manager.consensus().state.applied_index(), applied, "the loops keep writing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_down_shuts_tasks_down_and_removing_the_service_marks_them_for_removal() {
    let manager = TestManager::start().await;
    manager.add_worker("w1").await;
    let web = service("web", 4, &[]);
    let web_id = web.meta.id.clone();
    manager.consensus().write(Op::Batch(vec![Change::Create(Object::Service(web.clone()))])).await.unwrap();
    manager
        .wait_for("4 assigned tasks", Duration::from_secs(15), |store| {
            store.tasks.values().filter(|t| t.status.state == TaskState::Assigned).count() == 4
        })
        .await;
    let current = manager.consensus().state.read().services[&web_id].clone();
    let mut scaled = current.clone();
    scaled.spec.mode = ServiceMode::Replicated { replicas: 1 };
    let change = Change::Update { object: Object::Service(scaled), expected_version: Some(current.meta.version) };
    manager.consensus().write(Op::Batch(vec![change])).await.unwrap();
    manager
        .wait_for("1 live task", Duration::from_secs(15), |store| store.tasks.values().filter(|t| t.is_live()).count() == 1)
        .await;
    let change = Change::Delete { kind: crate::store::Kind::Service, id: web_id.clone(), expected_version: None };
    manager.consensus().write(Op::Batch(vec![change])).await.unwrap();
    manager
        .wait_for("every task marked for removal", Duration::from_secs(15), |store| {
            store.tasks.values().all(|t| t.desired_state == TaskState::Remove)
        })
        .await;
}

//! Health in the API forms of services and tasks.

use super::*;
use crate::store::{HealthCheck, RestartInfo, ServiceSpec, TaskStatus};

fn task(id: &str, spec: &ServiceSpec, state: TaskState, health: &str) -> Task {
    Task {
        meta: Meta {
            id: id.into(),
            ..Meta::default()
        },
        service_id: "s".into(),
        slot: 1,
        node_id: Some("n".into()),
        desired_state: TaskState::Running,
        status: TaskStatus {
            state,
            health: health.into(),
            ..TaskStatus::default()
        },
        spec: spec.clone(),
        job_iteration: 0,
        restart: RestartInfo::default(),
    }
}

fn store(check: Option<&[&str]>) -> Store {
    let spec = ServiceSpec {
        healthcheck: check.map(|test| HealthCheck {
            test: test.iter().map(|t| t.to_string()).collect(),
            interval_ms: 1,
            timeout_ms: 1,
            retries: 1,
            start_period_ms: 0,
        }),
        mode: crate::store::ServiceMode::Replicated { replicas: 3 },
        ..ServiceSpec::default()
    };
    let mut store = Store::default();
    let service = Service {
        meta: Meta {
            id: "s".into(),
            ..Meta::default()
        },
        name: "web".into(),
        labels: Default::default(),
        spec: spec.clone(),
        previous_spec: None,
        job_iteration: 0,
        update_status: None,
    };
    store.services.insert("s".into(), service);
    for t in [
        task("t1", &spec, TaskState::Running, "healthy"),
        task("t2", &spec, TaskState::Running, "starting"),
        task("t3", &spec, TaskState::Running, ""),
    ] {
        store.tasks.insert(t.meta.id.clone(), t);
    }
    store
}

#[test]
fn running_counts_healthy_tasks_of_services_with_a_check() {
    let running = |store: &Store| service_to_proto(store, &store.services["s"]).running;
    assert_eq!(running(&store(Some(&["CMD", "true"]))), 1);
    assert_eq!(running(&store(Some(&["NONE"]))), 3, "NONE is no check");
    assert_eq!(running(&store(None)), 3);
    let store = store(Some(&["CMD", "true"]));
    assert_eq!(task_to_proto(&store, &store.tasks["t2"]).health, "starting");
}

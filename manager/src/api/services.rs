//! The service and task calls of the `Control` service: create, update, remove, get and list
//! services (by id, unique id prefix or name), and list tasks with filters.

use super::image_pin::ImageResolver;
use super::service_spec::{spec_from_proto, spec_to_proto};
use crate::consensus::{Consensus, now_ms};
use crate::ids::new_id;
use crate::store::{
    Change, Kind, Meta, Object, Op, Service, ServiceMode, Store, Task, TaskState, UpdateState, UpdateStatus,
};
use proto::v1 as pb;
use std::collections::HashMap;
use tonic::Status;

/// Finds a service by exact id, exact name, or unique id prefix.
pub fn find_service<'a>(store: &'a Store, reference: &str) -> Result<&'a Service, Status> {
    if let Some(service) = store.services.get(reference) {
        return Ok(service);
    }
    if let Some(service) = store.services.values().find(|s| s.name == reference) {
        return Ok(service);
    }
    let matches: Vec<&Service> =
        store.services.values().filter(|s| !reference.is_empty() && s.meta.id.starts_with(reference)).collect();
    match matches.as_slice() {
        [service] => Ok(service),
        [] => Err(Status::not_found(format!("service {reference} not found"))),
        _ => Err(Status::invalid_argument(format!(
            "service reference {reference} is ambiguous ({} services match)",
            matches.len()
        ))),
    }
}

/// The API form of `service`, with its task counts.
pub fn service_to_proto(store: &Store, service: &Service) -> pb::Service {
    let tasks: Vec<&Task> = store.tasks.values().filter(|t| t.service_id == service.meta.id).collect();
    let live = || tasks.iter().filter(|t| t.is_live());
    // Tasks with a health check count once healthy (as in Swarm, whose tasks stay STARTING
    // until then); the update orchestrator does not wait for health.
    let healthy = |t: &&&Task| !t.spec.has_health_check() || t.status.health == "healthy";
    let running = live().filter(|t| t.status.state == TaskState::Running).filter(healthy).count() as u64;
    let completed = tasks
        .iter()
        .filter(|t| t.job_iteration == service.job_iteration && t.status.state == TaskState::Complete)
        .count() as u64;
    let desired = match service.spec.mode {
        ServiceMode::Replicated { replicas } => replicas,
        ServiceMode::ReplicatedJob { total_completions, .. } => total_completions,
        ServiceMode::Global | ServiceMode::GlobalJob => live().count() as u64,
    };
    pb::Service {
        id: service.meta.id.clone(),
        spec: Some(spec_to_proto(&service.name, &service.labels, &service.spec)),
        previous_spec: service.previous_spec.as_ref().map(|s| spec_to_proto(&service.name, &service.labels, s)),
        version: service.meta.version,
        created_at_ms: service.meta.created_at_ms,
        updated_at_ms: service.meta.updated_at_ms,
        running,
        desired,
        completed,
        job_iteration: service.job_iteration,
        warnings: Vec::new(),
        virtual_ips: super::convert::virtual_ips_to_proto(store, service),
        update_status: service.update_status.as_ref().map(|status| {
            let outdated = live().filter(|t| !t.spec.same_task_as(&service.spec)).count() as u64;
            pb::UpdateStatus {
                state: status.state.as_str().into(),
                started_at_ms: status.started_ms,
                completed_at_ms: status.completed_ms,
                message: status.message.clone(),
                remaining: outdated,
                total: desired,
            }
        }),
    }
}

/// The API form of `task`.
pub fn task_to_proto(store: &Store, task: &Task) -> pb::Task {
    pb::Task {
        id: task.meta.id.clone(),
        service_id: task.service_id.clone(),
        service_name: store.services.get(&task.service_id).map(|s| s.name.clone()).unwrap_or_default(),
        slot: task.slot,
        node_id: task.node_id.clone().unwrap_or_default(),
        desired_state: task.desired_state.as_str().into(),
        state: task.status.state.as_str().into(),
        message: task.status.message.clone(),
        err: task.status.err.clone(),
        timestamp_ms: task.status.timestamp_ms,
        exit_code: task.status.exit_code,
        container_id: task.status.container_id.clone(),
        version: task.meta.version,
        created_at_ms: task.meta.created_at_ms,
        updated_at_ms: task.meta.updated_at_ms,
        job_iteration: task.job_iteration,
        addresses: super::convert::addresses_to_proto(&task.status.addresses),
        health: task.status.health.clone(),
    }
}

/// Resolves the spec's network targets, secrets and configs to ids on a consistent read (the store checks again that
/// they exist when the write is applied).
async fn resolve_networks(consensus: &Consensus, spec: &mut crate::store::ServiceSpec) -> Result<(), Status> {
    if spec.networks.is_empty() && spec.secrets.is_empty() && spec.configs.is_empty() {
        return Ok(());
    }
    let mut resolved = spec.clone();
    consensus
        .read(|store| {
            super::networks::resolve_attachments(store, &mut resolved)?;
            super::secrets::resolve_files(store, &mut resolved)
        })
        .await??;
    *spec = resolved;
    Ok(())
}

/// Resolves the ingress ports published as 0 and checks the ports against the other services'
/// on a consistent read (see [`crate::ipam::ports`]; the store checks the conflicts again when
/// the write is applied).
async fn publish_ports(
    consensus: &Consensus,
    service_id: &str,
    spec: &mut crate::store::ServiceSpec,
    current: Option<&crate::store::ServiceSpec>,
) -> Result<(), Status> {
    if spec.endpoint.ports.is_empty() {
        return Ok(());
    }
    let mut resolved = spec.clone();
    consensus
        .read(|store| crate::ipam::ports::assign_published_ports(store, service_id, &mut resolved, current))
        .await?
        .map_err(|e| Status::invalid_argument(format!("invalid service spec: {e}")))?;
    *spec = resolved;
    Ok(())
}

/// Reads the service `id` after a write, consistently.
async fn read_back(consensus: &Consensus, id: &str) -> Result<pb::Service, Status> {
    consensus
        .read(|store| store.services.get(id).map(|s| service_to_proto(store, s)))
        .await?
        .ok_or_else(|| Status::not_found(format!("service {id} was removed meanwhile")))
}

/// Creates a service. Its image is pinned to a digest first unless the request says not to (see
/// [`super::image_pin`]); a failed resolution is a warning in the answer, not an error.
pub async fn create(
    consensus: &Consensus,
    images: &ImageResolver,
    request: pb::CreateServiceRequest,
) -> Result<pb::Service, Status> {
    let spec = request.spec.ok_or_else(|| Status::invalid_argument("invalid service spec: spec: required"))?;
    let mut valid = spec_from_proto(&spec)?;
    resolve_networks(consensus, &mut valid.spec).await?;
    if consensus.state.read().services.values().any(|s| s.name == valid.name) {
        // Checked again by the state machine; refusing here spares a registry round trip.
        return Err(Status::already_exists(format!("service name {:?} is already in use", valid.name)));
    }
    let id = new_id();
    publish_ports(consensus, &id, &mut valid.spec, None).await?;
    let warnings: Vec<String> =
        images.pin(&mut valid.spec.image, None, request.no_resolve_image).await?.into_iter().collect();
    let service = Service {
        meta: Meta { id, ..Meta::default() },
        name: valid.name,
        labels: valid.labels,
        spec: valid.spec,
        previous_spec: None,
        job_iteration: 0,
        update_status: None,
    };
    let id = service.meta.id.clone();
    consensus.write(Op::Batch(vec![Change::Create(Object::Service(service))])).await?;
    tracing::info!(service = %id, "service created");
    Ok(pb::Service { warnings, ..read_back(consensus, &id).await? })
}

/// Updates a service. A changed image is pinned as in [`create`]; an unchanged one is kept as the
/// service has it. A change to what the tasks run (or `force`) starts a rolling update, which
/// the updater carries out ([`crate::orchestrator::reconcile_all`]); `rollback` goes back to the
/// previous spec instead.
pub async fn update(
    consensus: &Consensus,
    images: &ImageResolver,
    request: pb::UpdateServiceRequest,
) -> Result<pb::Service, Status> {
    if request.rollback {
        return rollback(consensus, &request.reference, request.version).await;
    }
    let mut spec = request.spec.ok_or_else(|| Status::invalid_argument("invalid service spec: spec: required"))?;
    let current = consensus.read(|store| find_service(store, &request.reference).cloned()).await??;
    if spec.name.is_empty() {
        spec.name = current.name.clone();
    }
    let mut valid = spec_from_proto(&spec)?;
    resolve_networks(consensus, &mut valid.spec).await?;
    if valid.name != current.name {
        return Err(Status::invalid_argument(format!(
            "invalid service spec: spec.name: a service cannot be renamed (it is {:?})",
            current.name
        )));
    }
    if std::mem::discriminant(&valid.spec.mode) != std::mem::discriminant(&current.spec.mode) {
        return Err(Status::invalid_argument(format!(
            "invalid service spec: spec.mode.kind: the mode of service {} cannot change; remove it and create it again",
            current.name
        )));
    }
    check_version(&current, request.version)?;
    publish_ports(consensus, &current.meta.id, &mut valid.spec, Some(&current.spec)).await?;
    let warnings: Vec<String> = images
        .pin(&mut valid.spec.image, Some(&current.spec.image), request.no_resolve_image)
        .await?
        .into_iter()
        .collect();
    let mut updated = current.clone();
    valid.spec.force_update = valid.spec.force_update.max(current.spec.force_update);
    if request.force && updated.spec.is_job() {
        updated.job_iteration += 1;
    } else if request.force {
        valid.spec.force_update += 1;
    }
    if valid.spec != current.spec {
        updated.previous_spec = Some(Box::new(current.spec.clone()));
    }
    if !valid.spec.is_job() && !valid.spec.same_task_as(&current.spec) {
        updated.update_status = Some(UpdateStatus {
            started_ms: now_ms(),
            message: "update in progress".into(),
            ..UpdateStatus::default()
        });
    }
    updated.labels = valid.labels;
    updated.spec = valid.spec;
    let id = current.meta.id.clone();
    let change = Change::Update { object: Object::Service(updated), expected_version: Some(current.meta.version) };
    consensus.write(Op::Batch(vec![change])).await?;
    tracing::info!(service = %id, force = request.force, "service updated");
    Ok(pb::Service { warnings, ..read_back(consensus, &id).await? })
}

/// Refuses an update computed from an older read of the service (`version` 0: no check).
fn check_version(current: &Service, version: u64) -> Result<(), Status> {
    if version != 0 && version != current.meta.version {
        return Err(Status::aborted(format!(
            "service {} changed since it was read (version {} expected, {} found); read it again",
            current.name, version, current.meta.version
        )));
    }
    Ok(())
}

/// Docker's `service rollback`: the previous spec becomes the spec (and the current one the
/// previous), rolled out with the rollback config.
async fn rollback(consensus: &Consensus, reference: &str, version: u64) -> Result<pb::Service, Status> {
    let current = consensus.read(|store| find_service(store, reference).cloned()).await??;
    check_version(&current, version)?;
    let Some(previous) = current.previous_spec.clone() else {
        return Err(Status::failed_precondition(format!(
            "service {} has no previous spec to roll back to",
            current.name
        )));
    };
    let mut spec = *previous;
    publish_ports(consensus, &current.meta.id, &mut spec, Some(&current.spec)).await?;
    let mut updated = current.clone();
    updated.previous_spec = Some(Box::new(current.spec.clone()));
    if !spec.is_job() && !spec.same_task_as(&current.spec) {
        updated.update_status = Some(UpdateStatus {
            state: UpdateState::RollbackStarted,
            started_ms: now_ms(),
            message: "manually requested rollback".into(),
            ..UpdateStatus::default()
        });
    }
    updated.spec = spec;
    let id = current.meta.id.clone();
    let change = Change::Update { object: Object::Service(updated), expected_version: Some(current.meta.version) };
    consensus.write(Op::Batch(vec![change])).await?;
    tracing::info!(service = %id, "service rolled back");
    read_back(consensus, &id).await
}

pub async fn remove(consensus: &Consensus, request: pb::RemoveServiceRequest) -> Result<pb::RemoveServiceResponse, Status> {
    let service = consensus.read(|store| find_service(store, &request.reference).cloned()).await??;
    let id = service.meta.id.clone();
    let change = Change::Delete { kind: Kind::Service, id: id.clone(), expected_version: None };
    consensus.write(Op::Batch(vec![change])).await?;
    tracing::info!(service = %id, "service removed");
    Ok(pb::RemoveServiceResponse { id })
}

pub async fn get(consensus: &Consensus, request: pb::GetServiceRequest) -> Result<pb::Service, Status> {
    consensus.read(|store| find_service(store, &request.reference).map(|s| service_to_proto(store, s))).await?
}

pub async fn list(consensus: &Consensus, request: pb::ListServicesRequest) -> Result<pb::ListServicesResponse, Status> {
    let filters = request.filters;
    for key in filters.keys() {
        if !matches!(key.as_str(), "id" | "name" | "label" | "mode") {
            return Err(Status::invalid_argument(format!("unknown filter {key:?}: use id, name, label or mode")));
        }
    }
    let services = consensus
        .read(|store| {
            store
                .services
                .values()
                .filter(|s| service_matches(s, &filters))
                .map(|s| service_to_proto(store, s))
                .collect()
        })
        .await?;
    Ok(pb::ListServicesResponse { services })
}

fn service_matches(service: &Service, filters: &HashMap<String, String>) -> bool {
    filters.iter().all(|(key, value)| match key.as_str() {
        "id" => service.meta.id.starts_with(value.as_str()),
        "name" => service.name.starts_with(value.as_str()),
        "label" => match value.split_once('=') {
            Some((k, v)) => service.labels.get(k).is_some_and(|actual| actual == v),
            None => service.labels.contains_key(value),
        },
        "mode" => spec_to_proto("", &Default::default(), &service.spec).mode.is_some_and(|m| m.kind == *value),
        _ => false,
    })
}

pub async fn list_tasks(consensus: &Consensus, request: pb::ListTasksRequest) -> Result<pb::ListTasksResponse, Status> {
    let filters = request.filters;
    let desired = match filters.get("desired-state") {
        None => None,
        Some(text) => Some(TaskState::parse(text).ok_or_else(|| {
            Status::invalid_argument(format!("desired-state {text:?} is not a task state (e.g. running, shutdown)"))
        })?),
    };
    for key in filters.keys() {
        if !matches!(key.as_str(), "service" | "node" | "desired-state" | "id") {
            return Err(Status::invalid_argument(format!(
                "unknown filter {key:?}: use service, node, desired-state or id"
            )));
        }
    }
    let tasks = consensus
        .read(|store| -> Result<Vec<pb::Task>, Status> {
            let service_id = match filters.get("service") {
                None => None,
                // Tasks of a removed service stay listed until reaped: match their id too.
                Some(r) if store.tasks.values().any(|t| t.service_id == *r) => Some(r.clone()),
                Some(r) => Some(find_service(store, r)?.meta.id.clone()),
            };
            let node_id = match filters.get("node") {
                None => None,
                Some(r) => Some(store.find_node(r).map_err(Status::not_found)?.meta.id.clone()),
            };
            let id_prefix = filters.get("id");
            Ok(store
                .tasks
                .values()
                .filter(|t| service_id.as_ref().is_none_or(|id| t.service_id == *id))
                .filter(|t| node_id.as_ref().is_none_or(|id| t.node_id.as_ref() == Some(id)))
                .filter(|t| desired.is_none_or(|d| t.desired_state == d))
                .filter(|t| id_prefix.is_none_or(|p| t.meta.id.starts_with(p.as_str())))
                .map(|t| task_to_proto(store, t))
                .collect())
        })
        .await??;
    Ok(pb::ListTasksResponse { tasks })
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod health_tests;

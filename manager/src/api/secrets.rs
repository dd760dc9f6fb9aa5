//! The secret and config calls of the `Control` service, and the resolution of a service's
//! secret and config references. Both are named blobs of at most 500 KiB; a secret's data is
//! encrypted before it is proposed (see [`crate::secrets`]) and never returned, a config's is
//! stored and returned as given.

use crate::consensus::Consensus;
use crate::ids::new_id;
use crate::secrets::DataKey;
use crate::store::{Blob, Change, FileRef, Kind, Meta, Object, Op, ServiceSpec, Store};
use proto::v1 as pb;
use std::collections::{BTreeMap, HashMap};
use tonic::Status;

/// Swarm's limit on a secret's or config's data.
pub const MAX_DATA: usize = 500 * 1024;
/// The mode of a file when the reference gives none.
pub const DEFAULT_MODE: u32 = 0o444;

/// Whether `name` is `[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    first_ok && name.len() <= 64 && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn table(store: &Store, kind: Kind) -> &BTreeMap<String, Blob> {
    if kind == Kind::Secret { &store.secrets } else { &store.configs }
}

/// Validates a create request's spec and builds the object to store (a secret's data sealed
/// with `key`, bound to the new id).
pub fn blob_from_spec(kind: Kind, spec: &pb::SecretSpec, key: &DataKey) -> Result<Blob, Status> {
    let what = kind.as_str();
    let invalid = |field: &str, reason: String| Status::invalid_argument(format!("invalid {what} spec: {field}: {reason}"));
    if !valid_name(&spec.name) {
        return Err(invalid(
            "spec.name",
            format!("{:?} is invalid: 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit", spec.name),
        ));
    }
    if let Some(key) = spec.labels.keys().find(|k| k.is_empty() || k.contains('=') || k.chars().any(char::is_whitespace)) {
        return Err(invalid("spec.labels", format!("label key {key:?} is invalid: non-empty, without '=' or spaces")));
    }
    if spec.data.len() > MAX_DATA {
        return Err(invalid("spec.data", format!("{} bytes is too large: at most {MAX_DATA} bytes (500 KiB)", spec.data.len())));
    }
    if spec.data.is_empty() {
        return Err(invalid("spec.data", "empty: a secret or config needs data".into()));
    }
    let id = new_id();
    let data = if kind == Kind::Secret { key.encrypt(&id, &spec.data)? } else { spec.data.clone() };
    Ok(Blob {
        meta: Meta { id, ..Meta::default() },
        name: spec.name.clone(),
        labels: spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        data,
    })
}

/// Finds a secret or config by exact id, exact name, or unique id prefix.
pub fn find<'a>(store: &'a Store, kind: Kind, reference: &str) -> Result<&'a Blob, Status> {
    let table = table(store, kind);
    if let Some(blob) = table.get(reference) {
        return Ok(blob);
    }
    if let Some(blob) = table.values().find(|b| b.name == reference) {
        return Ok(blob);
    }
    let matches: Vec<&Blob> = table.values().filter(|b| !reference.is_empty() && b.meta.id.starts_with(reference)).collect();
    match matches.as_slice() {
        [blob] => Ok(blob),
        [] => Err(Status::not_found(format!("{} {reference} not found", kind.as_str()))),
        _ => Err(Status::invalid_argument(format!("{} reference {reference} is ambiguous ({} match)", kind.as_str(), matches.len()))),
    }
}

/// The services whose spec references the secret or config `id`, by name.
fn users(store: &Store, kind: Kind, id: &str) -> Vec<String> {
    let mut names: Vec<String> = store
        .services
        .values()
        .filter(|s| if kind == Kind::Secret { &s.spec.secrets } else { &s.spec.configs }.iter().any(|f| f.id == id))
        .map(|s| s.name.clone())
        .collect();
    names.sort();
    names
}

/// The API form; a secret's data is never included.
pub fn to_proto(store: &Store, kind: Kind, blob: &Blob) -> pb::Secret {
    pb::Secret {
        id: blob.meta.id.clone(),
        spec: Some(pb::SecretSpec {
            name: blob.name.clone(),
            labels: blob.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            data: if kind == Kind::Config { blob.data.clone() } else { Vec::new() },
        }),
        version: blob.meta.version,
        created_at_ms: blob.meta.created_at_ms,
        updated_at_ms: blob.meta.updated_at_ms,
        services: users(store, kind, &blob.meta.id),
    }
}

fn matches_filters(blob: &Blob, filters: &HashMap<String, String>) -> Result<bool, Status> {
    for (key, value) in filters {
        let matched = match key.as_str() {
            "id" => blob.meta.id.starts_with(value.as_str()),
            "name" => blob.name.starts_with(value.as_str()),
            "label" => match value.split_once('=') {
                Some((k, v)) => blob.labels.get(k).is_some_and(|actual| actual == v),
                None => blob.labels.contains_key(value),
            },
            other => return Err(Status::invalid_argument(format!("unknown filter {other:?}: use id, name or label"))),
        };
        if !matched {
            return Ok(false);
        }
    }
    Ok(true)
}

pub async fn create(consensus: &Consensus, kind: Kind, request: pb::CreateSecretRequest) -> Result<pb::Secret, Status> {
    let spec = request.spec.ok_or_else(|| Status::invalid_argument(format!("invalid {} spec: spec: required", kind.as_str())))?;
    let blob = blob_from_spec(kind, &spec, &consensus.data_key)?;
    let id = blob.meta.id.clone();
    let object = if kind == Kind::Secret { Object::Secret(blob) } else { Object::Config(blob) };
    consensus.write(Op::Batch(vec![Change::Create(object)])).await?;
    tracing::info!(id = %id, kind = kind.as_str(), "created");
    consensus
        .read(move |store| table(store, kind).get(&id).map(|b| to_proto(store, kind, b)))
        .await?
        .ok_or_else(|| Status::not_found(format!("{} was removed meanwhile", kind.as_str())))
}

pub async fn get(consensus: &Consensus, kind: Kind, request: pb::GetSecretRequest) -> Result<pb::Secret, Status> {
    consensus.read(move |store| find(store, kind, &request.reference).map(|b| to_proto(store, kind, b))).await?
}

pub async fn list(consensus: &Consensus, kind: Kind, request: pb::ListSecretsRequest) -> Result<pb::ListSecretsResponse, Status> {
    let secrets = consensus
        .read(move |store| -> Result<Vec<pb::Secret>, Status> {
            let mut out = Vec::new();
            for blob in table(store, kind).values() {
                if matches_filters(blob, &request.filters)? {
                    out.push(to_proto(store, kind, blob));
                }
            }
            out.sort_by(|a, b| a.spec.as_ref().map(|s| &s.name).cmp(&b.spec.as_ref().map(|s| &s.name)));
            Ok(out)
        })
        .await??;
    Ok(pb::ListSecretsResponse { secrets })
}

/// Removes a secret or config; the store refuses while a service uses it.
pub async fn remove(consensus: &Consensus, kind: Kind, request: pb::RemoveSecretRequest) -> Result<pb::RemoveSecretResponse, Status> {
    let id = consensus.read(move |store| find(store, kind, &request.reference).map(|b| b.meta.id.clone())).await??;
    consensus.write(Op::Batch(vec![Change::Delete { kind, id: id.clone(), expected_version: None }])).await?;
    tracing::info!(id = %id, kind = kind.as_str(), "removed");
    Ok(pb::RemoveSecretResponse { id })
}

/// Turns the sources of `spec.secrets` and `spec.configs` (names, ids or id prefixes) into ids
/// and fills the default targets (secret: its name; config: `/<name>`). Errors name the field;
/// two references with the same target are refused.
pub fn resolve_files(store: &Store, spec: &mut ServiceSpec) -> Result<(), Status> {
    for (kind, field, refs) in [(Kind::Secret, "secrets", &mut spec.secrets), (Kind::Config, "configs", &mut spec.configs)] {
        for (i, file) in refs.iter_mut().enumerate() {
            let blob = find(store, kind, &file.id)
                .map_err(|status| Status::invalid_argument(format!("invalid service spec: spec.{field}[{i}].source: {}", status.message())))?;
            file.id = blob.meta.id.clone();
            file.name = blob.name.clone();
            if file.target.is_empty() {
                file.target = if kind == Kind::Secret { blob.name.clone() } else { format!("/{}", blob.name) };
            }
        }
        for (i, file) in refs.iter().enumerate() {
            if let Some(j) = refs[..i].iter().position(|other| other.target == file.target) {
                return Err(Status::invalid_argument(format!(
                    "invalid service spec: spec.{field}[{i}].target: {:?} is already the target of spec.{field}[{j}]",
                    file.target
                )));
            }
        }
    }
    Ok(())
}

/// Validates the references of a spec (before resolution): `field` is "secrets" or "configs".
pub fn file_refs(field: &str, refs: &[pb::FileReference]) -> Result<Vec<FileRef>, Status> {
    let invalid = |i: usize, sub: &str, reason: String| Status::invalid_argument(format!("invalid service spec: spec.{field}[{i}].{sub}: {reason}"));
    let mut out = Vec::with_capacity(refs.len());
    for (i, r) in refs.iter().enumerate() {
        if r.source.trim().is_empty() {
            return Err(invalid(i, "source", format!("a {} name or id is required", if field == "secrets" { "secret" } else { "config" })));
        }
        if !r.target.is_empty() {
            if field == "secrets" {
                if r.target.contains('/') || r.target == "." || r.target == ".." || r.target.contains('\0') {
                    return Err(invalid(i, "target", format!("{:?} is invalid: a file name under /run/secrets, without '/'", r.target)));
                }
            } else if !r.target.starts_with('/') || r.target == "/" || r.target.split('/').any(|c| c == "..") || r.target.contains('\0') {
                return Err(invalid(i, "target", format!("{:?} is invalid: an absolute file path, without '..'", r.target)));
            }
        }
        let mode = r.mode.unwrap_or(DEFAULT_MODE);
        if mode > 0o7777 {
            return Err(invalid(i, "mode", format!("{mode:o} is invalid: at most 7777 (octal)")));
        }
        out.push(FileRef { id: r.source.trim().to_string(), name: String::new(), target: r.target.clone(), uid: r.uid, gid: r.gid, mode });
    }
    Ok(out)
}

/// The API form of stored references (the source is the id).
pub fn file_refs_to_proto(refs: &[FileRef]) -> Vec<pb::FileReference> {
    refs.iter()
        .map(|f| pb::FileReference { source: f.id.clone(), target: f.target.clone(), uid: f.uid, gid: f.gid, mode: Some(f.mode) })
        .collect()
}

#[cfg(test)]
mod tests;

//! Merging several compose files, later over earlier, as `docker stack deploy -c a -c b` does:
//! mappings merge key by key (recursively), scalars and most lists are replaced, and a few
//! service lists merge by identity: `environment` and `labels` (list or map) by variable or
//! label name, `ports` by their text (duplicates dropped), `volumes` by their target.

use serde_norway::{Mapping, Value};

/// Merges `over` into `base`.
pub fn merge_files(base: &mut Value, over: Value) {
    let (Value::Mapping(base_map), Value::Mapping(over_map)) = (&mut *base, &over) else {
        *base = over;
        return;
    };
    for (key, value) in over_map.clone() {
        let is_services = key.as_str() == Some("services");
        match base_map.get_mut(&key) {
            Some(Value::Mapping(services)) if is_services => {
                if let Value::Mapping(new) = value {
                    for (name, service) in new {
                        match services.get_mut(&name) {
                            Some(existing) => merge_service(existing, service),
                            None => {
                                services.insert(name, service);
                            }
                        }
                    }
                } else {
                    base_map.insert(key, value);
                }
            }
            Some(existing) => merge_plain(existing, value),
            None => {
                base_map.insert(key, value);
            }
        }
    }
}

/// Mappings merge recursively; anything else is replaced.
fn merge_plain(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(base), Value::Mapping(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) => merge_plain(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// `["A=1", "B"]` -> `{A: "1", B: null}`; a mapping is returned as it is.
fn list_to_map(value: Value) -> Value {
    match value {
        Value::Sequence(items) => {
            let mut map = Mapping::new();
            for item in items {
                match item {
                    Value::String(text) => match text.split_once('=') {
                        Some((k, v)) => {
                            map.insert(Value::from(k), Value::from(v));
                        }
                        None => {
                            map.insert(Value::from(text), Value::Null);
                        }
                    },
                    // Invalid: left for the model to report, keyed by itself.
                    other => {
                        map.insert(other.clone(), other);
                    }
                }
            }
            Value::Mapping(map)
        }
        other => other,
    }
}

/// The target of a service volume (short or long syntax), for merging by target.
fn volume_target(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => {
            let parts: Vec<&str> = text.split(':').collect();
            match parts.as_slice() {
                [target] => Some(target.to_string()),
                [_, target] | [_, target, _] => Some(target.to_string()),
                _ => None,
            }
        }
        Value::Mapping(map) => map
            .get("target")
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

fn merge_service(base: &mut Value, over: Value) {
    let (Value::Mapping(base_map), Value::Mapping(over_map)) = (&mut *base, &over) else {
        *base = over;
        return;
    };
    for (key, value) in over_map.clone() {
        let name = key.as_str().unwrap_or_default().to_string();
        let Some(existing) = base_map.get_mut(&key) else {
            base_map.insert(key, value);
            continue;
        };
        match name.as_str() {
            "environment" | "labels" => {
                let mut merged = list_to_map(existing.clone());
                merge_plain(&mut merged, list_to_map(value));
                *existing = merged;
            }
            "deploy" => {
                if let (Value::Mapping(base_deploy), Value::Mapping(over_deploy)) =
                    (&mut *existing, &value)
                {
                    for (k, v) in over_deploy.clone() {
                        let is_labels = k.as_str() == Some("labels");
                        match base_deploy.get_mut(&k) {
                            Some(old) if is_labels => {
                                let mut merged = list_to_map(old.clone());
                                merge_plain(&mut merged, list_to_map(v));
                                *old = merged;
                            }
                            Some(old) => merge_plain(old, v),
                            None => {
                                base_deploy.insert(k, v);
                            }
                        }
                    }
                } else {
                    *existing = value;
                }
            }
            "ports" => match (&mut *existing, value) {
                (Value::Sequence(old), Value::Sequence(new)) => {
                    for port in new {
                        if !old.contains(&port) {
                            old.push(port);
                        }
                    }
                }
                (existing, value) => *existing = value,
            },
            "volumes" => match (&mut *existing, value) {
                (Value::Sequence(old), Value::Sequence(new)) => {
                    for volume in new {
                        let target = volume_target(&volume);
                        match old
                            .iter_mut()
                            .find(|v| target.is_some() && volume_target(v) == target)
                        {
                            Some(slot) => *slot = volume,
                            None => old.push(volume),
                        }
                    }
                }
                (existing, value) => *existing = value,
            },
            _ => merge_plain(existing, value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_norway::from_str(text).unwrap()
    }

    #[test]
    fn later_files_override() {
        let mut base = yaml(
            "services:
  web:
    image: web:1
    command: [a, b]
    environment: [A=1, B=2]
    ports: ['80:80']
    volumes: ['data:/data', '/tmp:/tmp']
    deploy: {replicas: 2, labels: [x=1], resources: {limits: {memory: 64M}}}
  db:
    image: db
networks:
  back: {driver: overlay, labels: {a: '1'}}
",
        );
        let over = yaml(
            "services:
  web:
    image: web:2
    command: [c]
    environment: {B: '3', C: '4'}
    ports: ['80:80', '443:443']
    volumes: ['other:/data']
    deploy: {labels: {y: '2'}, resources: {limits: {cpus: '0.5'}}}
  cache:
    image: redis
networks:
  back: {labels: {b: '2'}}
",
        );
        merge_files(&mut base, over);
        let expected = yaml(
            "services:
  web:
    image: web:2
    command: [c]
    environment: {A: '1', B: '3', C: '4'}
    ports: ['80:80', '443:443']
    volumes: ['other:/data', '/tmp:/tmp']
    deploy: {replicas: 2, labels: {x: '1', y: '2'}, resources: {limits: {memory: 64M, cpus: '0.5'}}}
  db:
    image: db
  cache:
    image: redis
networks:
  back: {driver: overlay, labels: {a: '1', b: '2'}}
",
        );
        assert_eq!(base, expected);
    }
}

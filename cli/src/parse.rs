//! Parsers for command-line values (used as clap `value_parser`s): labels, filters,
//! availability. Errors are one line and name the bad input.

use std::collections::HashMap;

/// The node availabilities the API accepts.
pub const AVAILABILITIES: [&str; 3] = ["active", "pause", "drain"];

/// The filter keys `node ls` accepts.
pub const NODE_FILTER_KEYS: [&str; 5] = ["id", "name", "role", "availability", "label"];

/// `k=v` -> (k, v); `k` alone -> (k, ""). The key must be non-empty.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').unwrap_or((text, ""));
    let key = key.trim();
    if key.is_empty() {
        return Err(format!(
            "invalid label {text:?}: the key is empty (expected KEY or KEY=VALUE)"
        ));
    }
    if key.chars().any(char::is_whitespace) {
        return Err(format!(
            "invalid label {text:?}: the key contains whitespace"
        ));
    }
    Ok((key.to_string(), value.to_string()))
}

/// A label key to remove: non-empty, without `=`.
pub fn parse_label_key(text: &str) -> Result<String, String> {
    let key = text.trim();
    if key.is_empty() {
        return Err("invalid label key: it is empty".to_string());
    }
    if key.contains('=') {
        return Err(format!(
            "invalid label key {text:?}: pass the key only, without =VALUE"
        ));
    }
    Ok(key.to_string())
}

/// `key=value` for `--filter`; the value may itself contain `=` (`label=k=v`).
pub fn parse_filter(text: &str) -> Result<(String, String), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!("invalid filter {text:?}: expected KEY=VALUE"));
    };
    let key = key.trim().to_ascii_lowercase();
    if key.is_empty() {
        return Err(format!("invalid filter {text:?}: the key is empty"));
    }
    if value.is_empty() {
        return Err(format!("invalid filter {text:?}: the value is empty"));
    }
    Ok((key, value.to_string()))
}

/// Checks filter keys against `allowed` and builds the request map (one value per key).
pub fn filter_map(
    filters: &[(String, String)],
    allowed: &[&str],
) -> Result<HashMap<String, String>, String> {
    let mut map = HashMap::new();
    for (key, value) in filters {
        if !allowed.contains(&key.as_str()) {
            return Err(format!(
                "unknown filter {key:?}: expected one of {}",
                allowed.join(", ")
            ));
        }
        if map.insert(key.clone(), value.clone()).is_some() {
            return Err(format!("filter {key:?} given more than once"));
        }
    }
    Ok(map)
}

/// `active`, `pause` or `drain` (case-insensitive).
pub fn parse_availability(text: &str) -> Result<String, String> {
    let value = text.trim().to_ascii_lowercase();
    if AVAILABILITIES.contains(&value.as_str()) {
        Ok(value)
    } else {
        Err(format!(
            "invalid availability {text:?}: expected active, pause or drain"
        ))
    }
}

/// The filter keys `service ls` accepts (checked again by the manager).
pub const SERVICE_FILTER_KEYS: [&str; 4] = ["id", "name", "label", "mode"];

/// The filter keys `service ps` accepts.
pub const TASK_FILTER_KEYS: [&str; 3] = ["id", "node", "desired-state"];

/// The filter keys `node ps` accepts (the nodes are its arguments).
pub const NODE_TASK_FILTER_KEYS: [&str; 3] = ["id", "service", "desired-state"];

/// A docker-style duration: `1h30m`, `500ms`, `1.5s`, `0`. Units: ns, us (µs), ms, s, m, h.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = |why: &str| format!("invalid duration {text:?}: {why} (e.g. 500ms, 10s, 1m30s)");
    let s = text.trim();
    if s.is_empty() {
        return Err(bad("it is empty"));
    }
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut rest = s;
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad("expected a number"));
        }
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| bad("expected a number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(bad("missing unit")),
            _ => return Err(bad("unknown unit")),
        };
        rest = &rest[unit_len..];
        nanos += number * scale;
    }
    if !nanos.is_finite() || nanos > u64::MAX as f64 {
        return Err(bad("too large"));
    }
    Ok(std::time::Duration::from_nanos(nanos.round() as u64))
}

/// A duration in whole milliseconds, as the API stores them.
pub fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A docker-style memory size: `64M`, `1.5g`, `512k`, `100b`, `100` (bytes); binary units,
/// optional trailing `b`/`ib` (`64MB`, `64MiB`).
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("invalid size {text:?}: {why} (e.g. 64M, 1.5G, 512k)");
    let s = text.trim().to_ascii_lowercase();
    let num_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    if num_len == 0 {
        return Err(bad("expected a number"));
    }
    let number: f64 = s[..num_len].parse().map_err(|_| bad("expected a number"))?;
    let unit = s[num_len..].trim();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(unit);
    let scale: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0_f64.powi(4),
        "p" => 1024.0_f64.powi(5),
        _ => return Err(bad("unknown unit")),
    };
    let bytes = number * scale;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(bad("too large"));
    }
    Ok(bytes as u64)
}

/// CPUs as a decimal (`0.5`, `2`) -> billionths of a core.
pub fn parse_cpus(text: &str) -> Result<u64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("invalid CPU amount {text:?}: expected a number such as 0.5 or 2"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("invalid CPU amount {text:?}: must not be negative"));
    }
    Ok((value * 1e9).round() as u64)
}

/// `KEY=VALUE` for `--env`; `KEY` alone takes the value from this environment, like docker.
pub fn parse_env(text: &str) -> Result<String, String> {
    match text.split_once('=') {
        Some((key, _)) if key.trim().is_empty() => Err(format!(
            "invalid environment variable {text:?}: the name is empty"
        )),
        Some(_) => Ok(text.to_string()),
        None if text.trim().is_empty() => Err("invalid environment variable: it is empty".into()),
        None => match std::env::var(text) {
            Ok(value) => Ok(format!("{text}={value}")),
            Err(_) => Err(format!(
                "invalid environment variable {text:?}: expected KEY=VALUE \
                 (or a KEY set in this environment)"
            )),
        },
    }
}

/// An environment variable name to remove (`KEY`, or `KEY=...` whose key is used).
pub fn parse_env_key(text: &str) -> Result<String, String> {
    let key = text.split_once('=').map_or(text, |(k, _)| k).trim();
    if key.is_empty() {
        return Err(format!(
            "invalid environment variable name {text:?}: it is empty"
        ));
    }
    Ok(key.to_string())
}

/// `spread=EXPR` for `--placement-pref`.
pub fn parse_placement_pref(text: &str) -> Result<String, String> {
    match text.split_once('=') {
        Some(("spread", expr)) if !expr.trim().is_empty() => Ok(format!("spread={}", expr.trim())),
        _ => Err(format!(
            "invalid placement preference {text:?}: expected spread=node.labels.NAME"
        )),
    }
}

/// `NAME=N` for `service scale`.
pub fn parse_scale(text: &str) -> Result<(String, u64), String> {
    let Some((name, n)) = text.split_once('=') else {
        return Err(format!("invalid scale {text:?}: expected SERVICE=REPLICAS"));
    };
    if name.trim().is_empty() {
        return Err(format!("invalid scale {text:?}: the service is empty"));
    }
    let n = n.trim().parse::<u64>().map_err(|_| {
        format!("invalid scale {text:?}: the replicas must be a non-negative integer")
    })?;
    Ok((name.trim().to_string(), n))
}

fn parse_port_number(text: &str, what: &str, whole: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(p) if p <= 65535 => Ok(p),
        _ => Err(format!(
            "invalid port {whole:?}: the {what} port {text:?} is not a number in 0-65535"
        )),
    }
}

/// `--publish`: long syntax `published=8080,target=80,protocol=tcp,mode=ingress|host`, or short
/// syntax `8080:80`, `8080:80/udp`, `80` (target only).
pub fn parse_publish(text: &str) -> Result<proto::v1::PortConfig, String> {
    let mut port = proto::v1::PortConfig::default();
    if text.contains('=') {
        let mut has_target = false;
        for field in text.split(',') {
            let (key, value) = field.split_once('=').unwrap_or((field, ""));
            let value = value.trim();
            match key.trim().to_ascii_lowercase().as_str() {
                "target" => {
                    port.target = parse_port_number(value, "target", text)?;
                    has_target = true;
                }
                "published" => port.published = parse_port_number(value, "published", text)?,
                "protocol" => match value.to_ascii_lowercase().as_str() {
                    p @ ("tcp" | "udp" | "sctp") => port.protocol = p.to_string(),
                    _ => {
                        return Err(format!(
                            "invalid port {text:?}: protocol {value:?} is not tcp, udp or sctp"
                        ));
                    }
                },
                "mode" => match value.to_ascii_lowercase().as_str() {
                    m @ ("ingress" | "host") => port.mode = m.to_string(),
                    _ => {
                        return Err(format!(
                            "invalid port {text:?}: mode {value:?} is not ingress or host"
                        ));
                    }
                },
                other => {
                    return Err(format!(
                        "invalid port {text:?}: unknown field {other:?} \
                         (expected published, target, protocol, mode)"
                    ));
                }
            }
        }
        if !has_target {
            return Err(format!("invalid port {text:?}: target is required"));
        }
    } else {
        let (ports, protocol) = text.split_once('/').unwrap_or((text, ""));
        if !protocol.is_empty() {
            match protocol.to_ascii_lowercase().as_str() {
                p @ ("tcp" | "udp" | "sctp") => port.protocol = p.to_string(),
                _ => {
                    return Err(format!(
                        "invalid port {text:?}: protocol {protocol:?} is not tcp, udp or sctp"
                    ));
                }
            }
        }
        let parts: Vec<&str> = ports.split(':').collect();
        match parts.as_slice() {
            [target] => port.target = parse_port_number(target, "target", text)?,
            [published, target] => {
                port.published = parse_port_number(published, "published", text)?;
                port.target = parse_port_number(target, "target", text)?;
            }
            _ => {
                return Err(format!(
                    "invalid port {text:?}: expected PUBLISHED:TARGET[/PROTOCOL] \
                     or published=..,target=.."
                ));
            }
        }
    }
    if port.target == 0 {
        return Err(format!(
            "invalid port {text:?}: the target port must be 1-65535"
        ));
    }
    Ok(port)
}

fn parse_bool(value: &str, field: &str, whole: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(format!(
            "invalid mount {whole:?}: {field}={value:?} is not true or false"
        )),
    }
}

/// `--mount type=bind|volume|tmpfs,source=..,target=..,readonly[,tmpfs-size=64M]`
/// (`src`, `dst`/`destination`, `ro` also accepted).
pub fn parse_mount(text: &str) -> Result<proto::v1::Mount, String> {
    let mut mount = proto::v1::Mount::default();
    let mut tmpfs_size = None;
    for field in text.split(',') {
        let (key, value, has_value) = match field.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim(), true),
            None => (field.trim(), "", false),
        };
        match key.to_ascii_lowercase().as_str() {
            "type" => match value.to_ascii_lowercase().as_str() {
                t @ ("bind" | "volume" | "tmpfs") => mount.r#type = t.to_string(),
                _ => {
                    return Err(format!(
                        "invalid mount {text:?}: type {value:?} is not bind, volume or tmpfs"
                    ));
                }
            },
            "source" | "src" => mount.source = value.to_string(),
            "target" | "dst" | "destination" => mount.target = value.to_string(),
            "readonly" | "ro" => {
                mount.readonly = if has_value {
                    parse_bool(value, key, text)?
                } else {
                    true
                }
            }
            "tmpfs-size" => {
                tmpfs_size =
                    Some(parse_memory(value).map_err(|e| format!("invalid mount {text:?}: {e}"))?)
            }
            "" => return Err(format!("invalid mount {text:?}: empty field")),
            other => {
                return Err(format!(
                    "invalid mount {text:?}: unknown field {other:?} \
                     (expected type, source, target, readonly, tmpfs-size)"
                ));
            }
        }
    }
    if mount.target.is_empty() {
        return Err(format!("invalid mount {text:?}: target is required"));
    }
    if let Some(size) = tmpfs_size {
        if mount.r#type != "tmpfs" {
            return Err(format!(
                "invalid mount {text:?}: tmpfs-size needs type=tmpfs"
            ));
        }
        mount.tmpfs_size_bytes = size;
    }
    Ok(mount)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn labels() {
        assert_eq!(parse_label("zone=eu"), Ok(pair("zone", "eu")));
        assert_eq!(parse_label("ssd"), Ok(pair("ssd", "")));
        assert_eq!(parse_label("ssd="), Ok(pair("ssd", "")));
        assert_eq!(parse_label("a=b=c"), Ok(pair("a", "b=c")));
        assert!(parse_label("=eu").unwrap_err().contains("key is empty"));
        assert!(parse_label("").is_err());
        assert!(parse_label("a b=c").is_err());
    }

    #[test]
    fn label_keys() {
        assert_eq!(parse_label_key("zone"), Ok("zone".to_string()));
        assert!(parse_label_key("").is_err());
        assert!(parse_label_key("zone=eu").unwrap_err().contains("key only"));
    }

    #[test]
    fn filters() {
        assert_eq!(parse_filter("role=manager"), Ok(pair("role", "manager")));
        assert_eq!(parse_filter("label=zone=eu"), Ok(pair("label", "zone=eu")));
        assert_eq!(parse_filter("Role=worker"), Ok(pair("role", "worker")));
        assert!(parse_filter("role").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_filter("=x").is_err());
        assert!(parse_filter("role=").is_err());
    }

    #[test]
    fn filter_maps() {
        let ok = filter_map(
            &[pair("role", "worker"), pair("label", "ssd")],
            &NODE_FILTER_KEYS,
        );
        let map = ok.unwrap();
        assert_eq!(map.get("role").map(String::as_str), Some("worker"));
        assert_eq!(map.len(), 2);
        let err = filter_map(&[pair("colour", "red")], &NODE_FILTER_KEYS).unwrap_err();
        assert!(err.contains("unknown filter \"colour\""), "{err}");
        assert!(filter_map(&[pair("role", "a"), pair("role", "b")], &NODE_FILTER_KEYS).is_err());
    }

    #[test]
    fn availability() {
        assert_eq!(parse_availability("drain"), Ok("drain".to_string()));
        assert_eq!(parse_availability("Active"), Ok("active".to_string()));
        let err = parse_availability("paused").unwrap_err();
        assert_eq!(
            err,
            "invalid availability \"paused\": expected active, pause or drain"
        );
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("10us"), Ok(Duration::from_micros(10)));
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(parse_duration("5d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-5s").is_err());
        assert_eq!(duration_ms(Duration::from_secs(2)), 2000);
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("64M"), Ok(64 << 20));
        assert_eq!(parse_memory("64m"), Ok(64 << 20));
        assert_eq!(parse_memory("64MB"), Ok(64 << 20));
        assert_eq!(parse_memory("64MiB"), Ok(64 << 20));
        assert_eq!(parse_memory("1.5g"), Ok(3 << 29));
        assert_eq!(parse_memory("512k"), Ok(512 << 10));
        assert_eq!(parse_memory("100"), Ok(100));
        assert_eq!(parse_memory("100b"), Ok(100));
        assert!(parse_memory("64X").unwrap_err().contains("unknown unit"));
        assert!(parse_memory("M").is_err());
        assert!(parse_memory("").is_err());
    }

    #[test]
    fn cpus_envs_prefs_scales() {
        assert_eq!(parse_cpus("0.5"), Ok(500_000_000));
        assert_eq!(parse_cpus("2"), Ok(2_000_000_000));
        assert!(parse_cpus("-1").is_err());
        assert!(parse_cpus("half").is_err());
        assert_eq!(parse_env("A=b=c"), Ok("A=b=c".to_string()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("CLUSTER_CLI_SURELY_UNSET_VAR").is_err());
        assert_eq!(parse_env_key("A"), Ok("A".to_string()));
        assert_eq!(parse_env_key("A=1"), Ok("A".to_string()));
        assert_eq!(
            parse_placement_pref("spread=node.labels.zone"),
            Ok("spread=node.labels.zone".to_string())
        );
        assert!(parse_placement_pref("pack=x").is_err());
        assert!(parse_placement_pref("spread=").is_err());
        assert_eq!(parse_scale("web=5"), Ok(("web".to_string(), 5)));
        assert!(parse_scale("web").is_err());
        assert!(parse_scale("web=-1").is_err());
        assert!(parse_scale("=3").is_err());
    }

    #[test]
    fn publish_long_and_short() {
        let p = parse_publish("published=8080,target=80,protocol=udp,mode=host").unwrap();
        assert_eq!((p.published, p.target), (8080, 80));
        assert_eq!((p.protocol.as_str(), p.mode.as_str()), ("udp", "host"));
        let p = parse_publish("target=80").unwrap();
        assert_eq!((p.published, p.target, p.protocol.as_str()), (0, 80, ""));
        let p = parse_publish("8080:80").unwrap();
        assert_eq!((p.published, p.target), (8080, 80));
        let p = parse_publish("53:53/udp").unwrap();
        assert_eq!(
            (p.published, p.target, p.protocol.as_str()),
            (53, 53, "udp")
        );
        let p = parse_publish("80").unwrap();
        assert_eq!((p.published, p.target), (0, 80));
        assert!(
            parse_publish("published=8080")
                .unwrap_err()
                .contains("target is required")
        );
        assert!(
            parse_publish("target=80,mode=bridge")
                .unwrap_err()
                .contains("mode")
        );
        assert!(
            parse_publish("target=80,colour=red")
                .unwrap_err()
                .contains("colour")
        );
        assert!(parse_publish("1.2.3.4:8080:80").is_err());
        assert!(
            parse_publish("8080:70000")
                .unwrap_err()
                .contains("target port")
        );
        assert!(
            parse_publish("8080:80/icmp")
                .unwrap_err()
                .contains("protocol")
        );
        assert!(parse_publish("8080:0").is_err());
    }

    #[test]
    fn mounts() {
        let m = parse_mount("type=bind,source=/srv,target=/data,readonly").unwrap();
        assert_eq!(m.r#type, "bind");
        assert_eq!((m.source.as_str(), m.target.as_str()), ("/srv", "/data"));
        assert!(m.readonly);
        let m = parse_mount("src=vol,dst=/v,ro=false").unwrap();
        assert_eq!((m.r#type.as_str(), m.source.as_str()), ("", "vol"));
        assert!(!m.readonly);
        let m = parse_mount("type=tmpfs,target=/tmp,tmpfs-size=64M").unwrap();
        assert_eq!(m.tmpfs_size_bytes, 64 << 20);
        assert!(
            parse_mount("type=bind,source=/a")
                .unwrap_err()
                .contains("target is required")
        );
        assert!(
            parse_mount("type=nfs,target=/a")
                .unwrap_err()
                .contains("nfs")
        );
        assert!(
            parse_mount("target=/a,size=1")
                .unwrap_err()
                .contains("size")
        );
        assert!(
            parse_mount("target=/a,tmpfs-size=1M")
                .unwrap_err()
                .contains("type=tmpfs")
        );
        assert!(parse_mount("target=/a,readonly=maybe").is_err());
    }
}

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
}

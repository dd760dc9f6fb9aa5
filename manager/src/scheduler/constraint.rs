//! Placement constraints (`node.labels.zone==a`) and preferences (`spread=node.labels.zone`):
//! parsing with errors fit for the user, and matching against nodes. Values are compared
//! case-insensitively, as in Swarm.

use crate::store::Node;

/// What a constraint looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConstraintKey {
    Id,
    Hostname,
    Role,
    /// `node.labels.NAME`.
    Label(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    Eq,
    Ne,
}

/// A parsed constraint: `KEY==VALUE` or `KEY!=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    pub key: ConstraintKey,
    pub op: Operator,
    pub value: String,
}

impl Constraint {
    /// Whether `node` satisfies the constraint. A missing label equals nothing, so `!=` holds.
    pub fn matches(&self, node: &Node) -> bool {
        let actual = match &self.key {
            ConstraintKey::Id => Some(node.meta.id.as_str()),
            ConstraintKey::Hostname => Some(node.hostname.as_str()),
            ConstraintKey::Role => Some(node.role.as_str()),
            ConstraintKey::Label(name) => node.labels.get(name).map(String::as_str),
        };
        let equal = actual.is_some_and(|actual| actual.eq_ignore_ascii_case(&self.value));
        match self.op {
            Operator::Eq => equal,
            Operator::Ne => !equal,
        }
    }
}

const KEYS_HELP: &str = "node.id, node.hostname, node.role or node.labels.NAME";

/// Parses a constraint such as `node.labels.zone==a` or `node.role!=manager`.
pub fn parse_constraint(text: &str) -> Result<Constraint, String> {
    let (key, op, value) = split_operator(text)?;
    let lower = key.to_ascii_lowercase();
    let key = match lower.as_str() {
        "node.id" => ConstraintKey::Id,
        "node.hostname" => ConstraintKey::Hostname,
        "node.role" => {
            if !["manager", "worker"].iter().any(|r| r.eq_ignore_ascii_case(value)) {
                return Err(format!("invalid constraint {text:?}: node.role is manager or worker, not {value:?}"));
            }
            ConstraintKey::Role
        }
        "node.platform.os" | "node.platform.arch" => {
            return Err(format!(
                "invalid constraint {text:?}: {lower} is not supported yet (nodes do not report \
                 their platform); use {KEYS_HELP}"
            ));
        }
        _ if lower.starts_with("node.labels.") => {
            let name = &key["node.labels.".len()..];
            if name.is_empty() {
                return Err(format!("invalid constraint {text:?}: the label name is empty"));
            }
            ConstraintKey::Label(name.to_string())
        }
        _ => return Err(format!("invalid constraint {text:?}: unknown key {key:?}; use {KEYS_HELP}")),
    };
    Ok(Constraint { key, op, value: value.to_string() })
}

/// Parses every constraint of a placement; the first error is returned.
pub fn parse_constraints(texts: &[String]) -> Result<Vec<Constraint>, String> {
    texts.iter().map(|text| parse_constraint(text)).collect()
}

fn split_operator(text: &str) -> Result<(&str, Operator, &str), String> {
    let found = [("==", Operator::Eq), ("!=", Operator::Ne)]
        .into_iter()
        .filter_map(|(symbol, op)| text.find(symbol).map(|at| (at, op)))
        .min_by_key(|(at, _)| *at);
    let Some((at, op)) = found else {
        return Err(format!("invalid constraint {text:?}: expected KEY==VALUE or KEY!=VALUE"));
    };
    let key = text[..at].trim();
    let value = text[at + 2..].trim();
    if key.is_empty() {
        return Err(format!("invalid constraint {text:?}: the key is empty"));
    }
    if value.is_empty() {
        return Err(format!("invalid constraint {text:?}: the value is empty"));
    }
    if value.contains("==") || value.contains("!=") {
        return Err(format!("invalid constraint {text:?}: more than one operator"));
    }
    Ok((key, op, value))
}

/// A placement preference: spread tasks evenly over the values of a node label. Nodes without
/// the label form one more group of their own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preference {
    /// The label name (without `node.labels.`).
    pub label: String,
}

impl Preference {
    /// The value `node` has for this preference's label ("" if it has none).
    pub fn value_of<'a>(&self, node: &'a Node) -> &'a str {
        node.labels.get(&self.label).map(String::as_str).unwrap_or("")
    }
}

/// Parses a preference such as `spread=node.labels.zone`.
pub fn parse_preference(text: &str) -> Result<Preference, String> {
    let Some((strategy, key)) = text.split_once('=') else {
        return Err(format!("invalid placement preference {text:?}: expected spread=node.labels.NAME"));
    };
    if !strategy.trim().eq_ignore_ascii_case("spread") {
        return Err(format!(
            "invalid placement preference {text:?}: unknown strategy {:?}; only spread is supported",
            strategy.trim()
        ));
    }
    let key = key.trim();
    let prefix = "node.labels.";
    match (key.get(..prefix.len()), key.get(prefix.len()..)) {
        (Some(head), Some(label)) if head.eq_ignore_ascii_case(prefix) && !label.is_empty() => {
            Ok(Preference { label: label.to_string() })
        }
        _ => Err(format!("invalid placement preference {text:?}: spread takes node.labels.NAME, not {key:?}")),
    }
}

/// Parses every preference of a placement, outermost first; the first error is returned.
pub fn parse_preferences(texts: &[String]) -> Result<Vec<Preference>, String> {
    texts.iter().map(|text| parse_preference(text)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Availability, Meta, NodeResources, NodeRole, NodeState};

    fn node() -> Node {
        Node {
            meta: Meta { id: "0000000000000001".into(), ..Meta::default() },
            hostname: "web-1".into(),
            role: NodeRole::Worker,
            availability: Availability::Active,
            labels: [("zone".to_string(), "A".to_string())].into(),
            addr: String::new(),
            state: NodeState::Ready,
            resources: NodeResources::default(),
        }
    }

    fn check(text: &str) -> bool {
        parse_constraint(text).map(|c| c.matches(&node())).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn matches_each_key() {
        assert!(check("node.labels.zone==a"));
        assert!(!check("node.labels.zone!=a"));
        assert!(check("node.labels.rack!=r1"), "a missing label differs from everything");
        assert!(!check("node.labels.rack==r1"));
        assert!(check("node.role==worker"));
        assert!(check("node.role != manager"));
        assert!(check("node.hostname==web-1"));
        assert!(!check("node.hostname==web-2"));
        assert!(check("node.id==0000000000000001"));
        assert!(check("Node.Labels.zone==A"));
    }

    #[test]
    fn rejects_bad_constraints_with_reasons() {
        let cases = [
            ("node.labels.zone", "expected KEY==VALUE"),
            ("==a", "key is empty"),
            ("node.role==", "value is empty"),
            ("node.role==boss", "manager or worker"),
            ("node.platform.os==linux", "not supported yet"),
            ("node.labels.==x", "label name is empty"),
            ("engine.labels.x==y", "unknown key"),
            ("node.id==a==b", "more than one operator"),
        ];
        for (text, reason) in cases {
            let error = parse_constraint(text).expect_err(text);
            assert!(error.contains(reason), "{text}: {error}");
        }
    }

    #[test]
    fn parses_preferences() {
        assert_eq!(parse_preference("spread=node.labels.zone"), Ok(Preference { label: "zone".into() }));
        assert!(parse_preference("binpack=node.labels.zone").is_err());
        assert!(parse_preference("spread=node.role").is_err());
        assert!(parse_preference("spread=node.labels.").is_err());
        assert!(parse_preference("spread").is_err());
        assert_eq!(Preference { label: "zone".into() }.value_of(&node()), "A");
        assert_eq!(Preference { label: "rack".into() }.value_of(&node()), "");
    }
}

//! Reading typed values out of a `serde_norway::Value` while remembering where they are: every
//! problem is recorded with its path (and placed at file:line:column by the loader), and reading
//! goes on after an error so that one run reports all of them.

use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use serde_norway::Value;

use super::interpolate::{AtPath, Vars};
use super::key_text;
use super::locate::Path;
use crate::parse::{parse_cpus, parse_duration, parse_memory};

/// The problems found so far, and what reading needs from outside the file.
pub struct Check<'a> {
    pub errors: Vec<AtPath>,
    pub warnings: Vec<AtPath>,
    pub vars: &'a Vars,
    /// Relative paths (bind mounts, env files) are relative to this directory.
    pub base_dir: &'a FsPath,
}

/// A short description of a value, for messages.
pub fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

impl<'a> Check<'a> {
    pub fn new(vars: &'a Vars, base_dir: &'a FsPath) -> Check<'a> {
        Check {
            errors: Vec::new(),
            warnings: Vec::new(),
            vars,
            base_dir,
        }
    }

    pub fn error(&mut self, path: &Path, message: impl Into<String>) {
        self.errors.push(AtPath {
            path: path.clone(),
            message: message.into(),
            at_key: false,
        });
    }

    pub fn warn(&mut self, path: &Path, message: impl Into<String>) {
        self.warnings.push(AtPath {
            path: path.clone(),
            message: message.into(),
            at_key: false,
        });
    }

    /// An error for `value` at `path`: `invalid value V: EXPECTED`.
    pub fn invalid(&mut self, path: &Path, value: &Value, expected: &str) {
        self.error(
            path,
            format!("invalid value {}: expected {expected}", describe(value)),
        );
    }

    /// A key this level does not know.
    pub fn unknown(&mut self, path: &Path, known: &[&str]) {
        let key = match path.0.last() {
            Some(super::locate::Seg::Key(k)) => k.as_str(),
            _ => "",
        };
        let message = match known.iter().find(|k| edit_distance(k, key) <= 2) {
            Some(close) => format!("unknown key: did you mean {close:?}?"),
            None => format!("unknown key (expected one of: {})", known.join(", ")),
        };
        self.errors.push(AtPath {
            path: path.clone(),
            message,
            at_key: true,
        });
    }

    /// The entries of a mapping, with keys as text; `null` is an empty mapping.
    pub fn mapping<'v>(&mut self, value: &'v Value, path: &Path) -> Vec<(String, &'v Value)> {
        match value {
            Value::Mapping(map) => map.iter().map(|(k, v)| (key_text(k), v)).collect(),
            Value::Null => Vec::new(),
            other => {
                self.invalid(path, other, "a mapping");
                Vec::new()
            }
        }
    }

    /// A string; numbers and booleans are taken as their text (YAML `user: 1000`).
    pub fn string(&mut self, value: &Value, path: &Path) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.invalid(path, other, "a string");
                None
            }
        }
    }

    /// A non-negative integer, or a string holding one (what interpolation leaves).
    pub fn u64(&mut self, value: &Value, path: &Path) -> Option<u64> {
        let parsed = match value {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        if parsed.is_none() {
            self.invalid(path, value, "a non-negative integer");
        }
        parsed
    }

    pub fn bool(&mut self, value: &Value, path: &Path) -> Option<bool> {
        let parsed = match value {
            Value::Bool(b) => Some(*b),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" => Some(true),
                "false" | "no" => Some(false),
                _ => None,
            },
            _ => None,
        };
        if parsed.is_none() {
            self.invalid(path, value, "true or false");
        }
        parsed
    }

    /// One of `choices`.
    pub fn choice(&mut self, value: &Value, path: &Path, choices: &[&str]) -> Option<String> {
        let text = self.string(value, path)?;
        if choices.contains(&text.as_str()) {
            Some(text)
        } else {
            self.invalid(path, value, &format!("one of {}", choices.join(", ")));
            None
        }
    }

    /// A list of strings; with `single`, a lone string is a list of one.
    pub fn strings(&mut self, value: &Value, path: &Path, single: bool) -> Vec<String> {
        match value {
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| self.string(item, &path.index(i)))
                .collect(),
            Value::String(s) if single => vec![s.clone()],
            Value::Null => Vec::new(),
            other => {
                self.invalid(path, other, "a list of strings");
                Vec::new()
            }
        }
    }

    /// `command`/`entrypoint`: a list, or a string split like a shell would.
    pub fn command(&mut self, value: &Value, path: &Path) -> Option<Vec<String>> {
        match value {
            Value::String(s) => match shell_split(s) {
                Ok(words) => Some(words),
                Err(e) => {
                    self.error(path, e);
                    None
                }
            },
            Value::Sequence(_) => Some(self.strings(value, path, false)),
            Value::Null => Some(Vec::new()),
            other => {
                self.invalid(path, other, "a string or a list of strings");
                None
            }
        }
    }

    /// `environment`/`labels`: a list of `KEY=VALUE` (or `KEY`) or a mapping; `None` values
    /// are keys without a value.
    pub fn key_values(&mut self, value: &Value, path: &Path) -> Vec<(String, Option<String>)> {
        match value {
            Value::Sequence(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let Some(text) = self.string(item, &path.index(i)) else {
                        continue;
                    };
                    let (key, value) = match text.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (text.clone(), None),
                    };
                    if key.trim().is_empty() {
                        self.error(&path.index(i), format!("{text:?} has an empty name"));
                        continue;
                    }
                    out.push((key, value));
                }
                out
            }
            Value::Mapping(_) => {
                let mut out = Vec::new();
                for (key, item) in self.mapping(value, path) {
                    let value = match item {
                        Value::Null => None,
                        other => self.string(other, &path.key(&key)),
                    };
                    out.push((key, value));
                }
                out
            }
            Value::Null => Vec::new(),
            other => {
                self.invalid(path, other, "a list of KEY=VALUE or a mapping");
                Vec::new()
            }
        }
    }

    /// A docker duration (`10s`, `1m30s`).
    pub fn duration(&mut self, value: &Value, path: &Path) -> Option<Duration> {
        let text = self.string(value, path)?;
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(path, e);
                None
            }
        }
    }

    /// A size in bytes (`64M`, or a number of bytes).
    pub fn memory(&mut self, value: &Value, path: &Path) -> Option<u64> {
        let text = self.string(value, path)?;
        match parse_memory(&text) {
            Ok(n) => Some(n),
            Err(e) => {
                self.error(path, e);
                None
            }
        }
    }

    /// CPUs (`0.5`, `"2"`) in billionths of a core.
    pub fn cpus(&mut self, value: &Value, path: &Path) -> Option<u64> {
        let text = self.string(value, path)?;
        match parse_cpus(&text) {
            Ok(n) => Some(n),
            Err(e) => {
                self.error(path, e);
                None
            }
        }
    }

    /// A path relative to the directory of the first file, made absolute.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let expanded = match path.strip_prefix("~/") {
            Some(rest) => match std::env::var("HOME") {
                Ok(home) => PathBuf::from(home).join(rest),
                Err(_) => PathBuf::from(path),
            },
            None => PathBuf::from(path),
        };
        let joined = if expanded.is_absolute() {
            expanded
        } else {
            self.base_dir.join(expanded)
        };
        // Lexically drop `.` and `..` (the path need not exist here).
        let mut out = PathBuf::new();
        for part in joined.components() {
            match part {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir => {
                    out.pop();
                }
                other => out.push(other),
            }
        }
        out
    }
}

/// Levenshtein distance, for suggesting a key.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Splits a command line into words: whitespace separates, single quotes are literal, double
/// quotes and backslashes escape.
pub fn shell_split(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated single quote in {text:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("unterminated double quote in {text:?}")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated double quote in {text:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_commands() {
        assert_eq!(
            shell_split(r#"sh -c 'echo "a b"' "x\"y" z\ w"#).unwrap(),
            ["sh", "-c", "echo \"a b\"", "x\"y", "z w"]
        );
        assert_eq!(shell_split("  ").unwrap(), Vec::<String>::new());
        assert!(shell_split("echo 'x").is_err());
    }
}

//! `${VAR}` interpolation, as docker does it: `$VAR`, `${VAR}`, `${VAR:-default}` (unset or
//! empty), `${VAR-default}` (unset), `${VAR:?message}` / `${VAR?message}` (an error),
//! `${VAR:+other}` / `${VAR+other}`, and `$$` for a literal `$`. Defaults may themselves hold
//! `${...}`. Only string values are interpolated, never keys. The variables come from the
//! environment and a `.env` file; the environment wins.

use std::collections::HashMap;

use serde_norway::Value;

use super::locate::Path;

/// The variables interpolation sees.
#[derive(Clone, Debug, Default)]
pub struct Vars {
    pub vars: HashMap<String, String>,
}

impl Vars {
    /// The process environment over the entries of `dotenv` (the text of a `.env` file).
    pub fn from_env(dotenv: Option<&str>) -> Result<Vars, String> {
        let mut vars = match dotenv {
            Some(text) => parse_env_file(text)?,
            None => HashMap::new(),
        };
        vars.extend(std::env::vars());
        Ok(Vars { vars })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }
}

/// `KEY=VALUE` lines (`export ` prefix, `#` comments, blank lines; single quotes literal, double
/// quotes with `\n`, `\"`, `\\` escapes). A line without `=` sets the variable to "".
pub fn parse_env_file(text: &str) -> Result<HashMap<String, String>, String> {
    let mut vars = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        let key = key.trim();
        if key.is_empty() || key.chars().any(char::is_whitespace) {
            return Err(format!(
                "line {}: invalid variable name {key:?} (expected KEY=VALUE)",
                n + 1
            ));
        }
        let value = value.trim();
        let value = if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\''))
        {
            inner.to_string()
        } else if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            unescape(inner)
        } else {
            // An unquoted value ends at a comment.
            match value.find(" #") {
                Some(i) => value[..i].trim_end().to_string(),
                None => value.to_string(),
            }
        };
        vars.insert(key.to_string(), value);
    }
    Ok(vars)
}

fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Interpolates one string. Variables that are not set become "" and are added to `unset`.
pub fn interpolate_str(text: &str, vars: &Vars, unset: &mut Vec<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let mut chars = after.chars();
        match chars.next() {
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('{') => {
                let body_len = braced_len(&after[1..]).ok_or_else(|| {
                    format!("invalid interpolation in {text:?}: a \"${{\" is not closed")
                })?;
                let body = &after[1..1 + body_len];
                out.push_str(&braced(body, text, vars, unset)?);
                rest = &after[1 + body_len + 1..];
            }
            Some(c) if is_name_start(c) => {
                let len = after
                    .find(|c: char| !is_name_char(c))
                    .unwrap_or(after.len());
                let name = &after[..len];
                match vars.get(name) {
                    Some(value) => out.push_str(value),
                    None => unset.push(name.to_string()),
                }
                rest = &after[len..];
            }
            _ => {
                return Err(format!(
                    "invalid interpolation in {text:?}: \"$\" is not followed by a variable \
                     name or \"{{\" (write \"$$\" for a literal \"$\")"
                ));
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The length of the body of a `${...}` whose text starts right after the `{`, up to its
/// matching `}`.
fn braced_len(text: &str) -> Option<usize> {
    let mut depth = 0;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn braced(body: &str, whole: &str, vars: &Vars, unset: &mut Vec<String>) -> Result<String, String> {
    let name_len = body.find(|c: char| !is_name_char(c)).unwrap_or(body.len());
    let name = &body[..name_len];
    if name.is_empty() || !name.starts_with(is_name_start) {
        return Err(format!(
            "invalid interpolation in {whole:?}: \"${{{body}}}\" does not start with a \
             variable name"
        ));
    }
    let op = &body[name_len..];
    let value = vars.get(name);
    let (colon, op) = match op.strip_prefix(':') {
        Some(rest) => (true, rest),
        None => (false, op),
    };
    // With a colon, an empty value counts as unset.
    let set = value.is_some_and(|v| !colon || !v.is_empty());
    let Some(kind) = op.chars().next() else {
        if colon {
            return Err(format!(
                "invalid interpolation in {whole:?}: \"${{{body}}}\" has a \":\" without \
                 -, ?, or +"
            ));
        }
        return Ok(match value {
            Some(v) => v.to_string(),
            None => {
                unset.push(name.to_string());
                String::new()
            }
        });
    };
    let arg = &op[1..];
    match kind {
        '-' if set => Ok(value.unwrap_or_default().to_string()),
        '-' => interpolate_str(arg, vars, unset),
        '?' if set => Ok(value.unwrap_or_default().to_string()),
        '?' => {
            let message = interpolate_str(arg, vars, unset)?;
            let why = if value.is_some() { "empty" } else { "not set" };
            Err(if message.is_empty() {
                format!("required variable {name} is {why}")
            } else {
                format!("required variable {name} is {why}: {message}")
            })
        }
        '+' if set => interpolate_str(arg, vars, unset),
        '+' => Ok(String::new()),
        _ => Err(format!(
            "invalid interpolation in {whole:?}: \"${{{body}}}\" (expected ${{VAR}}, \
             ${{VAR:-default}}, ${{VAR-default}}, ${{VAR:?message}} or ${{VAR:+other}})"
        )),
    }
}

/// A problem found at a path.
#[derive(Debug, Clone)]
pub struct AtPath {
    pub path: Path,
    pub message: String,
    /// Placed at the key rather than at its value (unknown keys).
    pub at_key: bool,
}

/// Interpolates every string value of `value` in place. Returns the errors, and the unset
/// variables with the first path that uses each.
pub fn interpolate_value(
    value: &mut Value,
    path: &Path,
    vars: &Vars,
    errors: &mut Vec<AtPath>,
    unset: &mut Vec<(String, Path)>,
) {
    match value {
        Value::String(text) if text.contains('$') => {
            let mut missing = Vec::new();
            match interpolate_str(text, vars, &mut missing) {
                Ok(new) => *text = new,
                Err(message) => errors.push(AtPath {
                    path: path.clone(),
                    message,
                    at_key: false,
                }),
            }
            for name in missing {
                if !unset.iter().any(|(n, _)| *n == name) {
                    unset.push((name, path.clone()));
                }
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &path.index(i), vars, errors, unset);
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let key = super::key_text(key);
                interpolate_value(item, &path.key(&key), vars, errors, unset);
            }
        }
        Value::Tagged(tagged) => interpolate_value(&mut tagged.value, path, vars, errors, unset),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars {
            vars: HashMap::from([
                ("TAG".to_string(), "1.2".to_string()),
                ("EMPTY".to_string(), String::new()),
            ]),
        }
    }

    fn run(text: &str) -> Result<String, String> {
        interpolate_str(text, &vars(), &mut Vec::new())
    }

    #[test]
    fn substitutes_like_docker() {
        assert_eq!(run("img:${TAG}").unwrap(), "img:1.2");
        assert_eq!(run("img:$TAG-x").unwrap(), "img:1.2-x");
        assert_eq!(run("${NOPE:-def}").unwrap(), "def");
        assert_eq!(run("${EMPTY:-def}").unwrap(), "def");
        assert_eq!(run("${EMPTY-def}").unwrap(), "");
        assert_eq!(run("${NOPE-def}").unwrap(), "def");
        assert_eq!(run("${NOPE:-${TAG}}").unwrap(), "1.2");
        assert_eq!(run("${TAG:+yes}${NOPE:+no}").unwrap(), "yes");
        assert_eq!(run("cost $$5 $${TAG}").unwrap(), "cost $5 ${TAG}");
        assert_eq!(run("${TAG:?}").unwrap(), "1.2");
        let mut unset = Vec::new();
        assert_eq!(
            interpolate_str("a${NOPE}b$NOPE2", &vars(), &mut unset).unwrap(),
            "ab"
        );
        assert_eq!(unset, ["NOPE", "NOPE2"]);
    }

    #[test]
    fn required_and_malformed() {
        let err = run("${DB_PASSWORD:?set the password}").unwrap_err();
        assert_eq!(
            err,
            "required variable DB_PASSWORD is not set: set the password"
        );
        assert_eq!(
            run("${EMPTY:?}").unwrap_err(),
            "required variable EMPTY is empty"
        );
        assert_eq!(run("${EMPTY?x}").unwrap(), "");
        assert!(run("${TAG").unwrap_err().contains("not closed"));
        assert!(run("5$").unwrap_err().contains("$$"));
        assert!(run("${1A}").unwrap_err().contains("variable name"));
        assert!(run("${TAG:}").is_err());
        assert!(run("${TAG%x}").is_err());
    }

    #[test]
    fn env_files() {
        let vars =
            parse_env_file("# c\nA=1\nexport B = two \nC='x # y'\nD=\"l1\\nl2\"\nE=v # note\nF\n")
                .unwrap();
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "two");
        assert_eq!(vars["C"], "x # y");
        assert_eq!(vars["D"], "l1\nl2");
        assert_eq!(vars["E"], "v");
        assert_eq!(vars["F"], "");
        assert!(parse_env_file("A B=1").unwrap_err().contains("line 1"));
    }
}

//! Compose files for `cluster stack`: load, merge, interpolate and check them, and turn them
//! into service, network, secret and config specs.
//!
//! The pipeline, per file: parse to a `serde_norway::Value` (syntax errors carry their
//! position; anchors and aliases are resolved by the parser), apply merge keys
//! (`Value::apply_merge`), interpolate `${VAR}` in string values. Then the files are merged in
//! order ([`merge`]) and the result is read into a [`StackDef`] ([`check`], [`service`],
//! [`model`]).
//!
//! Why our own reader over `Value` rather than docker-compose-types' serde structs: every error
//! has to name file:line:column, and a checked value must map onto the cluster's `ServiceSpec`.
//! Deserialising typed structs from a `Value` loses positions (only the parser has them), and
//! the compose types accept many keys this cluster cannot apply yet, through untagged enums whose
//! errors ("did not match any variant") do not say what was wrong. Reading the `Value` by hand
//! keeps the path of every node; [`locate`] finds that path in the file's text; and each key is
//! sorted into applied, ignored-like-docker (warning), not-applied-yet (warning) or unknown
//! (error). All problems are collected in one pass, and nothing is created unless there are none.

pub mod check;
pub mod deploy;
pub mod files;
pub mod interpolate;
pub mod locate;
pub mod merge;
pub mod model;
pub mod plan;
pub mod service;
#[cfg(test)]
mod tests;

use std::path::{Path as FsPath, PathBuf};

use serde_norway::Value;

use check::Check;
use interpolate::{AtPath, Vars, interpolate_value};
use locate::{Index, Path};
pub use model::{STACK_LABEL, StackDef};

/// The text of a mapping key.
pub fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => check::describe(other),
    }
}

/// One compose file: its name (as given) and text.
pub struct Source {
    pub name: String,
    pub text: String,
}

/// The loaded files.
#[derive(Debug)]
pub struct Loaded {
    pub stack: StackDef,
    /// The merged, interpolated document (what `stack config` prints).
    pub merged: Value,
    /// `FILE:LINE:COLUMN: PATH: message` lines.
    pub warnings: Vec<String>,
}

/// Everything wrong with the files, one `FILE:LINE:COLUMN: PATH: message` line each.
#[derive(Debug)]
pub struct LoadError {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.errors.join("\n"))
    }
}

impl std::error::Error for LoadError {}

/// Reads `files` (the first one's directory holds `.env` and anchors relative paths), with the
/// process environment over `.env`.
pub fn load_files(files: &[PathBuf]) -> Result<Loaded, LoadError> {
    let fail = |message: String| LoadError {
        errors: vec![message],
        warnings: Vec::new(),
    };
    let mut sources = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| fail(format!("{}: cannot read: {e}", file.display())))?;
        sources.push(Source {
            name: file.display().to_string(),
            text,
        });
    }
    let base_dir = files
        .first()
        .and_then(|f| f.parent())
        .map(|d| {
            if d.as_os_str().is_empty() {
                FsPath::new(".")
            } else {
                d
            }
        })
        .unwrap_or(FsPath::new("."));
    let dotenv_path = base_dir.join(".env");
    let dotenv = std::fs::read_to_string(&dotenv_path).ok();
    let vars = Vars::from_env(dotenv.as_deref())
        .map_err(|e| fail(format!("{}: {e}", dotenv_path.display())))?;
    let base_dir = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
    load(&sources, &vars, &base_dir)
}

/// `at line 3 column 5` is said by the position prefix already.
fn strip_position(message: &str) -> &str {
    match message.find(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}

/// Places a problem at the file and position that define its path: the last file that has it
/// (later files override), else the one locating most of it.
fn place(problem: &AtPath, sources: &[Source], indexes: &[Index]) -> String {
    let segs = &problem.path.0;
    let exact = (0..sources.len()).rev().find_map(|i| {
        let loc = if problem.at_key {
            indexes[i].key(segs)
        } else {
            indexes[i].exact(segs)
        };
        loc.map(|loc| (i, loc))
    });
    let found = exact.or_else(|| {
        let mut best: Option<(usize, locate::Loc, usize)> = None;
        for i in (0..sources.len()).rev() {
            if let Some((loc, len)) = indexes[i].nearest(segs)
                && best.is_none_or(|(_, _, l)| len > l)
            {
                best = Some((i, loc, len));
            }
        }
        best.map(|(i, loc, _)| (i, loc))
    });
    let path = if segs.is_empty() {
        String::new()
    } else {
        format!("{}: ", problem.path)
    };
    match found {
        Some((i, loc)) => format!(
            "{}:{}:{}: {path}{}",
            sources[i].name, loc.line, loc.column, problem.message
        ),
        None => format!(
            "{}: {path}{}",
            sources.last().map_or("", |s| s.name.as_str()),
            problem.message
        ),
    }
}

/// Parses, merges and checks `sources` in order.
pub fn load(sources: &[Source], vars: &Vars, base_dir: &FsPath) -> Result<Loaded, LoadError> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut merged: Option<Value> = None;
    let mut indexes = Vec::new();
    for source in sources {
        let index = Index::new(&source.text);
        let mut doc: Value = match serde_norway::from_str(&source.text) {
            Ok(doc) => doc,
            Err(e) => {
                let message = e.to_string();
                errors.push(match e.location() {
                    Some(loc) => format!(
                        "{}:{}:{}: {}",
                        source.name,
                        loc.line(),
                        loc.column(),
                        strip_position(&message)
                    ),
                    None => format!("{}: {message}", source.name),
                });
                indexes.push(index);
                continue;
            }
        };
        if let Err(e) = doc.apply_merge() {
            errors.push(format!("{}: merge key (<<): {e}", source.name));
            indexes.push(index);
            continue;
        }
        if doc.is_null() {
            doc = Value::Mapping(Default::default());
        }
        if !doc.is_mapping() {
            errors.push(format!(
                "{}:1:1: the file is not a mapping of services, networks, volumes",
                source.name
            ));
            indexes.push(index);
            continue;
        }
        let mut problems = Vec::new();
        let mut unset = Vec::new();
        interpolate_value(&mut doc, &Path::default(), vars, &mut problems, &mut unset);
        let one = std::slice::from_ref(source);
        let own = std::slice::from_ref(&index);
        errors.extend(problems.iter().map(|p| place(p, one, own)));
        for (name, path) in unset {
            let problem = AtPath {
                path,
                message: format!("variable {name} is not set: using an empty string"),
                at_key: false,
            };
            warnings.push(place(&problem, one, own));
        }
        indexes.push(index);
        match &mut merged {
            None => merged = Some(doc),
            Some(base) => merge::merge_files(base, doc),
        }
    }
    if !errors.is_empty() {
        return Err(LoadError { errors, warnings });
    }
    let merged = merged.unwrap_or(Value::Mapping(Default::default()));
    let mut check = Check::new(vars, base_dir);
    let mut stack = check.stack(&merged);
    for (section, files) in [
        ("secrets", &mut stack.secrets),
        ("configs", &mut stack.configs),
    ] {
        for (key, def) in files.iter_mut() {
            let problem = AtPath {
                path: Path::default().key(section).key(key),
                message: String::new(),
                at_key: true,
            };
            def.at = place(&problem, sources, &indexes)
                .trim_end_matches(": ")
                .to_string();
        }
    }
    warnings.extend(check.warnings.iter().map(|w| place(w, sources, &indexes)));
    if !check.errors.is_empty() {
        errors.extend(check.errors.iter().map(|e| place(e, sources, &indexes)));
        return Err(LoadError { errors, warnings });
    }
    Ok(Loaded {
        stack,
        merged,
        warnings,
    })
}

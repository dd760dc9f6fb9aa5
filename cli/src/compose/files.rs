//! Secrets and configs: the top-level `secrets:`/`configs:` (created from a file, or external),
//! and a service's references to them. Both are read the same way; [`FileKind`] says which.

use std::collections::HashMap;

use proto::v1::FileReference;
use serde_norway::Value;

use super::check::Check;
use super::locate::Path;

/// The managers' limit on a secret's or config's data (500 KiB).
pub const MAX_DATA: usize = 500 * 1024;

/// A secret or a config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Secret,
    Config,
}

impl FileKind {
    /// `secret` or `config`.
    pub fn word(self) -> &'static str {
        match self {
            FileKind::Secret => "secret",
            FileKind::Config => "config",
        }
    }

    /// The top-level key (and the service key) that declares them.
    pub fn section(self) -> &'static str {
        match self {
            FileKind::Secret => "secrets",
            FileKind::Config => "configs",
        }
    }
}

/// A top-level secret or config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileDef {
    /// Not created by the stack: it must exist (under `name`, or the key).
    pub external: bool,
    /// An explicit name (`name:`), used as it is instead of `STACK_KEY`.
    pub name: Option<String>,
    pub labels: HashMap<String, String>,
    /// The content of `file:` (read when the stack file is loaded).
    pub data: Vec<u8>,
    /// `FILE:LINE:COLUMN: PATH` of the declaration, for errors found against the cluster
    /// (set by the loader).
    pub at: String,
}

const SECRET_KEYS: [&str; 4] = ["file", "external", "name", "labels"];
const REFERENCE_KEYS: [&str; 5] = ["source", "target", "uid", "gid", "mode"];

impl Check<'_> {
    /// A top-level secret or config at `path`: reads its file.
    pub fn file_def(&mut self, kind: FileKind, value: &Value, path: &Path) -> FileDef {
        let mut def = FileDef::default();
        let mut file = None;
        for (key, v) in self.mapping(value, path) {
            let p = path.key(&key);
            match key.as_str() {
                "file" => file = self.string(v, &p).map(|f| (f, p)),
                "external" => def.external = self.external(v, &p, &mut def.name),
                "name" => def.name = self.string(v, &p),
                "labels" => {
                    def.labels = self
                        .key_values(v, &p)
                        .into_iter()
                        .map(|(k, v)| (k, v.unwrap_or_default()))
                        .collect()
                }
                "driver" | "driver_opts" if kind == FileKind::Secret => {
                    self.warn(&p, "not applied yet: ignored")
                }
                "template_driver" => self.warn(&p, "not applied yet: ignored"),
                k if k.starts_with("x-") => {}
                _ => self.unknown(&p, &SECRET_KEYS),
            }
        }
        match (def.external, file) {
            (true, Some((_, p))) => self.error(&p, "an external one has no file"),
            (true, None) => {}
            (false, None) => self.error(path, "file is required (or external: true)"),
            (false, Some((file, p))) => {
                let full = self.resolve(&file);
                match std::fs::read(&full) {
                    Ok(data) if data.is_empty() => {
                        self.error(&p, format!("{} is empty", full.display()))
                    }
                    Ok(data) if data.len() > MAX_DATA => self.error(
                        &p,
                        format!(
                            "{} holds {} bytes: more than the limit, 500 KiB",
                            full.display(),
                            data.len()
                        ),
                    ),
                    Ok(data) => def.data = data,
                    Err(e) => self.error(&p, format!("cannot read {}: {e}", full.display())),
                }
            }
        }
        def
    }

    /// A service's `secrets:` or `configs:`: `- KEY` or `- {source, target, uid, gid, mode}`.
    /// Each reference's source is the key of a top-level entry (checked by the caller) and its
    /// target is set: the key for a secret (a file in /run/secrets), `/KEY` for a config.
    pub fn file_refs(&mut self, kind: FileKind, value: &Value, path: &Path) -> Vec<FileReference> {
        let Value::Sequence(items) = value else {
            self.invalid(path, value, &format!("a list of {}", kind.section()));
            return Vec::new();
        };
        // One reference per item, invalid ones too (the errors stop the deployment), so that
        // indexes stay those of the file for the checks made later.
        let mut refs: Vec<FileReference> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = path.index(i);
            let mut reference = match item {
                Value::Mapping(_) => self.long_file_ref(item, &p),
                other => FileReference {
                    source: self.string(other, &p).unwrap_or_default(),
                    ..Default::default()
                },
            };
            if reference.source.is_empty() {
                refs.push(reference);
                continue;
            }
            if reference.target.is_empty() {
                reference.target = match kind {
                    FileKind::Secret => reference.source.clone(),
                    FileKind::Config => format!("/{}", reference.source),
                };
            }
            if let Some(problem) = bad_target(kind, &reference.target) {
                self.error(
                    &p,
                    format!("invalid target {:?}: {problem}", reference.target),
                );
            } else if refs.iter().any(|r| r.target == reference.target) {
                self.error(
                    &p,
                    format!(
                        "{} is the target of another {}",
                        reference.target,
                        kind.word()
                    ),
                );
            }
            refs.push(reference);
        }
        refs
    }

    /// The long syntax; the source is empty (and an error recorded) when it is missing.
    fn long_file_ref(&mut self, value: &Value, path: &Path) -> FileReference {
        let mut reference = FileReference::default();
        for (key, v) in self.mapping(value, path) {
            let p = path.key(&key);
            match key.as_str() {
                "source" => reference.source = self.string(v, &p).unwrap_or_default(),
                "target" => reference.target = self.string(v, &p).unwrap_or_default(),
                "uid" => reference.uid = self.id_number(v, &p).unwrap_or(0),
                "gid" => reference.gid = self.id_number(v, &p).unwrap_or(0),
                "mode" => reference.mode = self.file_mode(v, &p),
                k if k.starts_with("x-") => {}
                _ => self.unknown(&p, &REFERENCE_KEYS),
            }
        }
        if reference.source.is_empty() && !self.errors.iter().any(|e| e.path == path.key("source"))
        {
            self.error(path, "source is required");
        }
        reference
    }

    /// A uid or gid: compose writes them as strings (`"1000"`), YAML may give a number.
    fn id_number(&mut self, value: &Value, path: &Path) -> Option<u32> {
        let n = self.u64(value, path)?;
        match u32::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                self.invalid(path, value, "a uid or gid (at most 4294967295)");
                None
            }
        }
    }

    /// A file mode: a YAML number (`0440` is octal in YAML 1.1, so it arrives as 288) is taken
    /// as it is; a string is read as octal (`"0440"`, `"440"`).
    fn file_mode(&mut self, value: &Value, path: &Path) -> Option<u32> {
        let mode = match value {
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Value::String(s) => u32::from_str_radix(s.trim(), 8).ok(),
            _ => None,
        };
        match mode {
            Some(mode) if mode <= 0o7777 => Some(mode),
            _ => {
                self.invalid(path, value, "a file mode such as 0440 (at most 07777)");
                None
            }
        }
    }
}

/// Why the managers would refuse `target`, if they would: a secret is a file name under
/// /run/secrets, a config an absolute path.
fn bad_target(kind: FileKind, target: &str) -> Option<&'static str> {
    match kind {
        FileKind::Secret if target.contains('/') || target == "." || target == ".." => {
            Some("a file name under /run/secrets, without '/'")
        }
        FileKind::Config
            if !target.starts_with('/')
                || target == "/"
                || target.split('/').any(|c| c == "..") =>
        {
            Some("an absolute file path, without '..'")
        }
        _ if target.contains('\0') => Some("it holds a NUL character"),
        _ => None,
    }
}

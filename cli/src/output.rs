//! Output helpers: docker-like tables, pretty JSON, times and ids.

use std::io::Write;
use std::time::SystemTime;

use serde::Serialize;
use tabled::builder::Builder;
use tabled::settings::{Alignment, Padding, Style};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How listings, inspections and `info` print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable table or summary.
    #[default]
    Table,
    /// The API objects as pretty-printed JSON.
    Json,
}

/// An error that has already been reported on stderr; `main` only sets the exit code.
#[derive(Debug)]
pub struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("errors were reported above")
    }
}

impl std::error::Error for Reported {}

/// Renders a docker-style table: upper-case headers, left-aligned columns separated by three
/// spaces, no borders, no trailing whitespace.
pub fn table(headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut builder = Builder::default();
    builder.push_record(headers.iter().map(|h| h.to_string()));
    for row in rows {
        builder.push_record(row);
    }
    let mut table = builder.build();
    table
        .with(Style::empty())
        .with(Padding::new(0, 3, 0, 0))
        .with(Alignment::left());
    let mut out = String::new();
    for line in table.to_string().lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Renders "Key:   value" lines with the values aligned; an entry with an empty key is printed
/// verbatim (used for nested sections).
pub fn key_values(entries: &[(&str, String)]) -> String {
    let width = entries
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0)
        + 4;
    let mut out = String::new();
    for (key, value) in entries {
        if key.is_empty() {
            out.push_str(value);
        } else if value.is_empty() {
            out.push_str(&format!("{key}:"));
        } else {
            let label = format!("{key}:");
            out.push_str(&format!("{label:<width$}{value}"));
        }
        out.push('\n');
    }
    out
}

/// Pretty-printed JSON with a trailing newline.
pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(text)
}

/// Formats unix milliseconds as RFC 3339 (UTC); 0 means unknown and prints "-".
pub fn format_time_ms(ms: i64) -> String {
    if ms == 0 {
        return "-".to_string();
    }
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms since the epoch"))
}

/// Formats a system time as RFC 3339 (UTC).
pub fn format_system_time(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

/// The textual id of a Raft node id (16 hex digits), as the API uses for nodes.
pub fn node_id(raft_id: u64) -> String {
    format!("{raft_id:016x}")
}

/// "ready" -> "Ready", as docker prints states in tables.
pub fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Writes to stdout; a closed pipe (`cluster node ls | head`) surfaces as an io error that
/// `main` treats as success.
/// How `inspect` commands print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InspectFormat {
    /// A JSON array of the objects (docker's default).
    #[default]
    Json,
    /// A human-readable summary (same as `--pretty`).
    Pretty,
}

/// Prints what `inspect` found: a JSON array (docker's default), or each object rendered for
/// people when `pretty`.
pub fn print_inspected<T: Serialize>(items: &[T], pretty: bool, render: impl Fn(&T) -> String) -> anyhow::Result<()> {
    let text = if pretty { items.iter().map(render).collect::<Vec<_>>().join("\n") } else { json(items)? };
    print(&text)?;
    Ok(())
}

pub fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn table_is_docker_like() {
        let text = table(
            &["ID", "NAME", "X"],
            vec![
                vec!["1".into(), "alpha".into(), "".into()],
                vec!["22".into(), "b".into(), "z".into()],
            ],
        );
        assert_eq!(text, "ID   NAME    X\n1    alpha\n22   b       z\n");
    }

    #[test]
    fn key_values_align() {
        let text = key_values(&[
            ("ID", "a".into()),
            ("Hostname", "h".into()),
            ("Labels", String::new()),
        ]);
        assert_eq!(text, "ID:         a\nHostname:   h\nLabels:\n");
    }

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(format_time_ms(0), "-");
        assert_eq!(format_time_ms(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(
            format_time_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(format_system_time(t), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn ids_and_capitals() {
        assert_eq!(node_id(0xab), "00000000000000ab");
        assert_eq!(capitalize("ready"), "Ready");
        assert_eq!(capitalize(""), "");
    }
}

//! `cluster service logs`: streams a service's (or a task's) logs like `docker service logs`.
//! Each line is prefixed with `<service>.<slot>.<task id>@<hostname>    | ` unless
//! `--no-task-ids` or `--raw`; stdout lines go to stdout and stderr lines to stderr.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use clap::Args;
use proto::v1::{LogMessage, ServiceLogsRequest, ServiceLogsResponse};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::connect::{RPC_TIMEOUT, Target, status_message};
use crate::parse::parse_duration;

/// `cluster service logs [-f] [--tail N] [-t] [--no-task-ids] SERVICE|TASK`
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new lines (Ctrl-C ends it).
    #[arg(short, long)]
    pub follow: bool,
    /// Lines to show from the end of each task's log: a number or "all".
    #[arg(long, short = 'n', default_value = "all", value_parser = parse_tail)]
    pub tail: Tail,
    /// Show the time each line was written (RFC 3339).
    #[arg(short, long)]
    pub timestamps: bool,
    /// Only lines written in this recent period (e.g. 10m, 1h30m).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Leave the task ids out of the prefix.
    #[arg(long)]
    pub no_task_ids: bool,
    /// Print full task ids.
    #[arg(long)]
    pub no_trunc: bool,
    /// Print the lines only, without any prefix.
    #[arg(long)]
    pub raw: bool,
    /// A service (id, id prefix or name) or a task (id or id prefix).
    pub reference: String,
}

/// How many lines per task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tail(pub Option<u64>);

fn parse_tail(text: &str) -> Result<Tail, String> {
    match text.trim() {
        "all" | "" => Ok(Tail(None)),
        n => n
            .parse()
            .map(|n| Tail(Some(n)))
            .map_err(|_| format!("invalid --tail {text:?}: a number of lines or \"all\"")),
    }
}

/// How lines are printed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Style {
    pub timestamps: bool,
    pub task_ids: bool,
    pub truncate: bool,
    pub raw: bool,
}

/// Task ids are shown truncated to this many characters (as docker does).
const SHORT_ID: usize = 12;

/// `web.1.abcdefghijkl@host1` (global tasks have no slot: the node id takes its place).
pub fn context(m: &LogMessage, style: Style) -> String {
    let short = |id: &str| -> String {
        if style.truncate {
            id.chars().take(SHORT_ID).collect()
        } else {
            id.to_string()
        }
    };
    let service = if m.service_name.is_empty() {
        short(&m.service_id)
    } else {
        m.service_name.clone()
    };
    let slot = if m.slot > 0 {
        m.slot.to_string()
    } else {
        m.node_id.clone()
    };
    let host = if m.node_hostname.is_empty() {
        short(&m.node_id)
    } else {
        m.node_hostname.clone()
    };
    if style.task_ids {
        format!("{service}.{slot}.{}@{host}", short(&m.task_id))
    } else {
        format!("{service}.{slot}@{host}")
    }
}

/// One printed line, with its newline.
pub fn format_line(m: &LogMessage, style: Style) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.line.len() + 64);
    if style.timestamps {
        out.extend_from_slice(timestamp(m.timestamp_unix_nanos).as_bytes());
        out.push(b' ');
    }
    if !style.raw {
        out.extend_from_slice(context(m, style).as_bytes());
        out.extend_from_slice(b"    | ");
    }
    out.extend_from_slice(&m.line);
    out.push(b'\n');
    out
}

fn timestamp(unix_nanos: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_nanos))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix_nanos.to_string())
}

/// Writes a batch: stdout lines to `out`, stderr lines to `err`; warnings to `err`.
pub fn write_batch(
    batch: &ServiceLogsResponse,
    style: Style,
    out: &mut impl Write,
    err: &mut impl Write,
) -> std::io::Result<()> {
    for m in &batch.messages {
        let line = format_line(m, style);
        if m.stream == "stderr" {
            err.write_all(&line)?;
        } else {
            out.write_all(&line)?;
        }
    }
    for w in &batch.warnings {
        writeln!(err, "warning: {w}")?;
    }
    out.flush()?;
    err.flush()
}

pub async fn run(args: LogsArgs, target: &Target) -> anyhow::Result<()> {
    let style = Style {
        timestamps: args.timestamps,
        task_ids: !args.no_task_ids,
        truncate: !args.no_trunc,
        raw: args.raw,
    };
    let since_unix_nanos = args.since.map(|d| {
        let t = SystemTime::now()
            .checked_sub(d)
            .unwrap_or(UNIX_EPOCH)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(t.as_nanos()).unwrap_or(i64::MAX)
    });
    let request = ServiceLogsRequest {
        reference: args.reference,
        follow: args.follow,
        tail: args.tail.0,
        since_unix_nanos,
    };
    let conn = target.connect().await?;
    let mut control = conn.control();
    let call = async {
        let mut stream =
            match tokio::time::timeout(RPC_TIMEOUT, control.service_logs(request)).await {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) => return Err(anyhow!(status_message(&status))),
                Err(_) => {
                    return Err(anyhow!(
                        "the manager did not answer within {}s",
                        RPC_TIMEOUT.as_secs()
                    ));
                }
            };
        let stdout = std::io::stdout();
        let stderr = std::io::stderr();
        while let Some(batch) = stream
            .message()
            .await
            .map_err(|status| anyhow!(status_message(&status)))?
        {
            write_batch(&batch, style, &mut stdout.lock(), &mut stderr.lock())?;
        }
        Ok(())
    };
    tokio::select! {
        result = call => result,
        // Ctrl-C: dropping the call closes the stream, which cancels the subscription.
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(stream: &str, slot: u64) -> LogMessage {
        LogMessage {
            task_id: "abcdefghijklmnopqrstuvwxy".into(),
            service_id: "svc0123456789abcdef".into(),
            node_id: "00000000000000ff".into(),
            slot,
            stream: stream.into(),
            timestamp_unix_nanos: 1_700_000_000_123_456_789,
            line: b"hello world".to_vec(),
            service_name: "web".into(),
            node_hostname: "host1".into(),
        }
    }

    fn style() -> Style {
        Style {
            timestamps: false,
            task_ids: true,
            truncate: true,
            raw: false,
        }
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn prefixes_like_docker() {
        let m = message("stdout", 3);
        assert_eq!(
            text(format_line(&m, style())),
            "web.3.abcdefghijkl@host1    | hello world\n"
        );
        let no_ids = Style {
            task_ids: false,
            ..style()
        };
        assert_eq!(
            text(format_line(&m, no_ids)),
            "web.3@host1    | hello world\n"
        );
        let full = Style {
            truncate: false,
            ..style()
        };
        assert!(text(format_line(&m, full)).starts_with("web.3.abcdefghijklmnopqrstuvwxy@host1"));
        let raw = Style {
            raw: true,
            ..style()
        };
        assert_eq!(text(format_line(&m, raw)), "hello world\n");
        // Global tasks: the node id in place of the slot.
        assert!(
            text(format_line(&message("stdout", 0), style())).starts_with("web.00000000000000ff.")
        );
    }

    #[test]
    fn timestamps_are_rfc3339_with_nanoseconds() {
        let ts = Style {
            timestamps: true,
            ..style()
        };
        assert_eq!(
            text(format_line(&message("stdout", 1), ts)),
            "2023-11-14T22:13:20.123456789Z web.1.abcdefghijkl@host1    | hello world\n"
        );
    }

    #[test]
    fn streams_and_warnings_go_to_their_outputs() {
        let batch = ServiceLogsResponse {
            messages: vec![message("stdout", 1), message("stderr", 2)],
            warnings: vec!["node h2 is not connected".into()],
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        write_batch(&batch, style(), &mut out, &mut err).unwrap();
        assert_eq!(text(out), "web.1.abcdefghijkl@host1    | hello world\n");
        assert_eq!(
            text(err),
            "web.2.abcdefghijkl@host1    | hello world\nwarning: node h2 is not connected\n"
        );
    }

    #[test]
    fn tail_takes_a_number_or_all() {
        assert_eq!(parse_tail("all"), Ok(Tail(None)));
        assert_eq!(parse_tail("20"), Ok(Tail(Some(20))));
        assert!(parse_tail("-1").is_err());
        assert!(parse_tail("ten").is_err());
    }
}

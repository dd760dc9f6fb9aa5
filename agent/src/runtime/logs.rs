//! Container logs: forwarding the container's stdout/stderr FIFOs into a JSON-lines file (Docker's
//! json-file format: `{"log":"line\n","stream":"stdout","time":"<RFC 3339>"}`), and reading it back
//! with a tail and an optional follow.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Lines longer than this are split into several entries (as Docker does).
pub const MAX_LINE: usize = 16 * 1024;
/// How often a follower looks for new lines.
pub const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One log line (without its trailing newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub time: SystemTime,
    pub stream: Stream,
    pub line: String,
}

#[derive(Serialize, Deserialize)]
struct Record {
    log: String,
    stream: Stream,
    time: String,
}

fn encode(stream: Stream, bytes: &[u8], time: SystemTime) -> Vec<u8> {
    let time = time::OffsetDateTime::from(time)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let rec = Record {
        log: String::from_utf8_lossy(bytes).into_owned(),
        stream,
        time,
    };
    let mut out = serde_json::to_vec(&rec).unwrap_or_default();
    out.push(b'\n');
    out
}

fn decode(line: &[u8]) -> Option<LogEntry> {
    let rec: Record = serde_json::from_slice(line).ok()?;
    let time = super::runc::parse_rfc3339(&rec.time)?;
    let line = rec.log.strip_suffix('\n').unwrap_or(&rec.log).to_string();
    Some(LogEntry {
        time,
        stream: rec.stream,
        line,
    })
}

/// Copies the container's two FIFOs into the log file until both reach end of file (that is,
/// until every process holding the container's ends has exited).
pub struct Forwarder {
    tasks: Vec<JoinHandle<()>>,
}

impl Forwarder {
    /// Opens the read ends of `stdout_fifo`/`stderr_fifo` (non-blocking) and starts copying.
    /// Open the write ends first: a FIFO without writers reads as end of file.
    pub fn start(stdout_fifo: &Path, stderr_fifo: &Path, log: &Path) -> std::io::Result<Self> {
        let out = pipe::OpenOptions::new().open_receiver(stdout_fifo)?;
        let err = pipe::OpenOptions::new().open_receiver(stderr_fifo)?;
        let file = OpenOptions::new().create(true).append(true).open(log)?;
        let file = Arc::new(Mutex::new(file));
        Ok(Forwarder {
            tasks: vec![
                tokio::spawn(copy_lines(out, Stream::Stdout, file.clone())),
                tokio::spawn(copy_lines(err, Stream::Stderr, file)),
            ],
        })
    }

    /// Waits until both streams are drained, at most `limit`; stops copying after that.
    pub async fn finish(mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        for t in std::mem::take(&mut self.tasks) {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Forwarder {
    /// Stops copying (the FIFOs keep buffering for a later forwarder).
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

async fn copy_lines(mut rx: pipe::Receiver, stream: Stream, file: Arc<Mutex<File>>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        if n == 0 {
            if !pending.is_empty() {
                write_entry(&file, stream, &pending);
            }
            return;
        }
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos + 1;
            for chunk in pending[start..end].chunks(MAX_LINE) {
                write_entry(&file, stream, chunk);
            }
            start = end;
        }
        pending.drain(..start);
        while pending.len() >= MAX_LINE {
            write_entry(&file, stream, &pending[..MAX_LINE]);
            pending.drain(..MAX_LINE);
        }
    }
}

fn write_entry(file: &Mutex<File>, stream: Stream, bytes: &[u8]) {
    let rec = encode(stream, bytes, SystemTime::now());
    if let Ok(mut f) = file.lock()
        && let Err(e) = f.write_all(&rec)
    {
        tracing::warn!(error = %e, "writing container log");
    }
}

/// Reads the last `tail` entries (`None` = all). Also returns the file offset the read ended at,
/// for [`follow`]. A missing file reads as empty.
pub fn read_tail(path: &Path, tail: Option<usize>) -> std::io::Result<(Vec<LogEntry>, u64)> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = match tail {
        None => 0,
        Some(n) => tail_start(&mut f, len, n)?,
    };
    f.seek(SeekFrom::Start(start))?;
    let mut data = Vec::new();
    f.take(len - start).read_to_end(&mut data)?;
    let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
    let entries = data[..complete]
        .split(|b| *b == b'\n')
        .filter_map(decode)
        .collect();
    Ok((entries, start + complete as u64))
}

/// Offset of the start of the `n`-th last complete line, scanning backwards in chunks.
fn tail_start(f: &mut File, len: u64, n: usize) -> std::io::Result<u64> {
    if n == 0 {
        return Ok(len);
    }
    let mut pos = len;
    let mut newlines = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    // The last byte is the newline ending the last line: it does not start a line.
    let mut skip_last = true;
    while pos > 0 {
        let size = buf.len().min(pos as usize);
        pos -= size as u64;
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut buf[..size])?;
        for i in (0..size).rev() {
            if buf[i] == b'\n' {
                if skip_last && pos + i as u64 == len - 1 {
                    skip_last = false;
                    continue;
                }
                newlines += 1;
                if newlines == n {
                    return Ok(pos + i as u64 + 1);
                }
            }
        }
    }
    Ok(0)
}

/// A stream of log entries, ended by the sender when the container has exited and its log is
/// drained (or at once when not following).
pub type LogStream = mpsc::Receiver<std::io::Result<LogEntry>>;

/// Sends `initial`, then every new entry appended after `offset`, polling every
/// [`FOLLOW_POLL`], until `done` reports `true` (and the file is drained) or the receiver goes away.
pub fn follow(
    path: PathBuf,
    initial: Vec<LogEntry>,
    mut offset: u64,
    mut done: watch::Receiver<bool>,
) -> LogStream {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        for e in initial {
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
        loop {
            let finished = *done.borrow_and_update();
            let read = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_from(&path, offset)).await
            };
            match read {
                Ok(Ok((entries, next))) => {
                    offset = next;
                    for e in entries {
                        if tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                    return;
                }
            }
            if finished {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = done.changed() => {}
                _ = tx.closed() => return,
            }
        }
    });
    rx
}

/// Complete entries from `offset` on, and the offset after the last complete line.
fn read_from(path: &Path, offset: u64) -> std::io::Result<(Vec<LogEntry>, u64)> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), offset)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len <= offset {
        return Ok((Vec::new(), offset));
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut data = Vec::new();
    f.take(len - offset).read_to_end(&mut data)?;
    let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
    let entries = data[..complete]
        .split(|b| *b == b'\n')
        .filter_map(decode)
        .collect();
    Ok((entries, offset + complete as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_log(path: &Path, lines: &[(Stream, &str)]) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for (s, l) in lines {
            f.write_all(&encode(*s, format!("{l}\n").as_bytes(), SystemTime::now()))
                .unwrap();
        }
    }

    #[test]
    fn tail_reads_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log.json");
        let lines: Vec<String> = (0..5000).map(|i| format!("line {i}")).collect();
        let input: Vec<(Stream, &str)> =
            lines.iter().map(|l| (Stream::Stdout, l.as_str())).collect();
        write_log(&p, &input);
        let (all, end) = read_tail(&p, None).unwrap();
        assert_eq!(all.len(), 5000);
        assert_eq!(end, std::fs::metadata(&p).unwrap().len());
        let (last, _) = read_tail(&p, Some(3)).unwrap();
        let texts: Vec<&str> = last.iter().map(|e| e.line.as_str()).collect();
        assert_eq!(texts, ["line 4997", "line 4998", "line 4999"]);
        assert_eq!(read_tail(&p, Some(0)).unwrap().0.len(), 0);
        assert_eq!(read_tail(&p, Some(10_000)).unwrap().0.len(), 5000);
        assert_eq!(
            read_tail(&dir.path().join("none"), Some(3))
                .unwrap()
                .0
                .len(),
            0
        );
    }

    #[tokio::test]
    async fn forwarder_tags_streams_and_splits_long_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (o, e, log) = (
            dir.path().join("o"),
            dir.path().join("e"),
            dir.path().join("log.json"),
        );
        for p in [&o, &e] {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        }
        let mut wo = OpenOptions::new().read(true).write(true).open(&o).unwrap();
        let mut we = OpenOptions::new().read(true).write(true).open(&e).unwrap();
        let fwd = Forwarder::start(&o, &e, &log).unwrap();
        {
            wo.write_all(b"hello\nwor").unwrap();
            we.write_all(b"oops\n").unwrap();
            wo.write_all(b"ld\n").unwrap();
            wo.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap();
            wo.write_all(b"\nno newline").unwrap();
        }
        drop((wo, we));
        fwd.finish(Duration::from_secs(5)).await;
        let (entries, _) = read_tail(&log, None).unwrap();
        let out: Vec<&str> = entries
            .iter()
            .filter(|e| e.stream == Stream::Stdout)
            .map(|e| e.line.as_str())
            .collect();
        assert_eq!(out[0..2], ["hello", "world"]);
        assert_eq!(out[2].len(), MAX_LINE);
        assert_eq!(out[3], "x".repeat(10));
        assert_eq!(out[4], "no newline");
        let err: Vec<&str> = entries
            .iter()
            .filter(|e| e.stream == Stream::Stderr)
            .map(|e| e.line.as_str())
            .collect();
        assert_eq!(err, ["oops"]);
    }

    #[tokio::test]
    async fn follow_sends_new_lines_until_done() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log.json");
        write_log(&p, &[(Stream::Stdout, "a")]);
        let (initial, off) = read_tail(&p, Some(10)).unwrap();
        let (done_tx, done_rx) = watch::channel(false);
        let mut rx = follow(p.clone(), initial, off, done_rx);
        assert_eq!(rx.recv().await.unwrap().unwrap().line, "a");
        write_log(&p, &[(Stream::Stderr, "b")]);
        let b = rx.recv().await.unwrap().unwrap();
        assert_eq!((b.line.as_str(), b.stream), ("b", Stream::Stderr));
        write_log(&p, &[(Stream::Stdout, "c")]);
        done_tx.send(true).unwrap();
        assert_eq!(rx.recv().await.unwrap().unwrap().line, "c");
        assert!(rx.recv().await.is_none());
    }
}

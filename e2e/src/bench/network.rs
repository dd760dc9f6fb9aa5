//! Network measurements in a lab: TCP throughput between two network namespaces (a host's, or a
//! task container's), and a minimal DNS client to see when a name starts to answer.

use anyhow::{Context, Result, anyhow, bail};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

/// Runs `f` on a thread that entered the network namespace at `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let ns = File::open(netns).with_context(|| format!("cannot open {}", netns.display()))?;
    Ok(std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        f()
    }))
}

fn joined<T>(handle: std::thread::JoinHandle<Result<T>>) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow!("measuring thread panicked"))?
}

/// Bytes per second of one TCP stream from `client_ns` to `server` (bound in `server_ns`) over
/// `duration`, counted by the receiver.
pub fn tcp_throughput(
    server_ns: &Path,
    client_ns: &Path,
    server: SocketAddr,
    duration: Duration,
) -> Result<f64> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = in_netns(server_ns, move || {
        let listener = TcpListener::bind(server).with_context(|| format!("bind {server}"))?;
        let _ = ready_tx.send(());
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(duration + Duration::from_secs(10)))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        let mut first: Option<Instant> = None;
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            first.get_or_insert_with(Instant::now);
            total += n as u64;
        }
        let elapsed = first.map_or(Duration::ZERO, |f| f.elapsed());
        Ok(total as f64 / elapsed.as_secs_f64().max(1e-9))
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow!("the receiver did not start"))?;
    let sender = in_netns(client_ns, move || {
        let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))
            .with_context(|| format!("connect {server}"))?;
        let buf = vec![0x5au8; 256 * 1024];
        let end = Instant::now() + duration;
        while Instant::now() < end {
            stream.write_all(&buf)?;
        }
        Ok(())
    })?;
    joined(sender)?;
    joined(receiver)
}

/// A DNS query for the A records of `name` (id `id`, recursion desired).
pub fn a_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The number of answers in a DNS response to query `id` (`None`: not a response to it).
pub fn answer_count(id: u16, response: &[u8]) -> Option<u16> {
    if response.len() < 12 || response[0..2] != id.to_be_bytes() || response[2] & 0x80 == 0 {
        return None;
    }
    Some(u16::from_be_bytes([response[6], response[7]]))
}

/// Asks `server` for `name` every `interval` from inside `netns` until it answers with at least
/// one A record; returns the wall-clock time of that answer (Unix ms). Bounded by `timeout`.
pub fn wait_until_answered(
    netns: &Path,
    server: Ipv4Addr,
    name: &str,
    interval: Duration,
    timeout: Duration,
) -> Result<i64> {
    let name = name.to_string();
    let handle = in_netns(netns, move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 1500];
        for id in 1u16.. {
            if Instant::now() > deadline {
                bail!("{name} did not answer within {timeout:?}");
            }
            socket.send_to(&a_query(id, &name), (server, 53))?;
            if let Ok((n, _)) = socket.recv_from(&mut buf)
                && answer_count(id, &buf[..n]).is_some_and(|c| c > 0)
            {
                return Ok(crate::bench::containers::now_ms());
            }
            std::thread::sleep(interval);
        }
        bail!("query ids exhausted")
    })?;
    joined(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_answer_count() {
        let q = a_query(7, "tasks.web");
        assert_eq!(&q[12..], b"\x05tasks\x03web\x00\x00\x01\x00\x01");
        let mut r = q.clone();
        r[2] |= 0x80;
        r[7] = 2;
        assert_eq!(answer_count(7, &r), Some(2));
        assert_eq!(answer_count(8, &r), None);
        assert_eq!(answer_count(7, &q), None, "a query is not a response");
    }
}

//! Forwarding of names outside the cluster to upstream resolvers: bounded in time and in
//! concurrency, and any reply that does not parse counts as no reply.

use super::server::DnsConfig;
use hickory_server::proto::op::{Message, MessageType};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tracing::debug;

pub(crate) struct Forwarder {
    upstreams: Vec<SocketAddr>,
    per_upstream: Duration,
    slots: Arc<Semaphore>,
}

impl Forwarder {
    pub(crate) fn new(config: &DnsConfig) -> Self {
        Forwarder {
            upstreams: config.upstreams.clone(),
            per_upstream: config.upstream_timeout,
            slots: Arc::new(Semaphore::new(config.max_forwards.max(1))),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        !self.upstreams.is_empty()
    }

    /// Sends the raw query to each upstream in turn until one answers; `None` if none did in
    /// time (or too many forwards are in flight).
    pub(crate) async fn forward(&self, query: &[u8], tcp: bool) -> Option<Message> {
        let _slot = self.slots.try_acquire().ok()?;
        let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
        for upstream in &self.upstreams {
            let attempt = async {
                let mut reply = if tcp {
                    ask_tcp(*upstream, query).await?
                } else {
                    ask_udp(*upstream, query, id).await?
                };
                // a truncated UDP reply: ask again over TCP
                if !tcp && reply.metadata.truncation {
                    reply = ask_tcp(*upstream, query).await?;
                }
                Ok::<_, std::io::Error>(reply)
            };
            match timeout(self.per_upstream, attempt).await {
                Ok(Ok(reply)) => return Some(reply),
                Ok(Err(e)) => debug!(%upstream, error = %e, "dns: upstream failed"),
                Err(_) => debug!(%upstream, "dns: upstream timed out"),
            }
        }
        None
    }
}

fn parse(buf: &[u8], id: u16) -> Option<Message> {
    let msg = Message::from_vec(buf).ok()?;
    (msg.metadata.id == id && msg.metadata.message_type == MessageType::Response).then_some(msg)
}

async fn ask_udp(upstream: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Message> {
    let local: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(upstream).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).await?;
        // anything else (a stray or forged datagram) is ignored until the timeout
        if let Some(msg) = parse(&buf[..n], id) {
            return Ok(msg);
        }
    }
}

async fn ask_tcp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Message> {
    let id = u16::from_be_bytes([query[0], query[1]]);
    let len = u16::try_from(query.len()).map_err(|_| std::io::Error::other("query too long"))?;
    let mut stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let mut out = Vec::with_capacity(query.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(query);
    stream.write_all(&out).await?;
    let n = stream.read_u16().await? as usize;
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).await?;
    parse(&buf, id).ok_or_else(|| std::io::Error::other("bad reply"))
}

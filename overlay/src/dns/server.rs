//! The DNS server: hickory's `Server` (UDP and TCP on one address) with a [`RequestHandler`] that
//! answers from a [`DnsTable`] for the asking container and forwards other names upstream.

use super::forward::Forwarder;
use super::table::{Asker, DnsTable, Lookup};
use hickory_server::Server;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA};
use hickory_server::proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tracing::debug;

/// Maps the source address of a query to the asking container's context.
pub trait AskerResolver: Send + Sync + Unpin + 'static {
    /// `None`: not a known container; the query is refused.
    fn asker(&self, src: IpAddr) -> Option<Asker>;
}

/// Every query gets the same context (one server per container network namespace).
#[derive(Clone, Debug)]
pub struct FixedAsker(pub Asker);

impl AskerResolver for FixedAsker {
    fn asker(&self, _src: IpAddr) -> Option<Asker> {
        Some(self.0.clone())
    }
}

/// Context by source address, kept by the agent for its local containers (every container,
/// routable or not, since a starting container resolves names too).
#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    inner: Arc<RwLock<HashMap<IpAddr, Asker>>>,
}

impl SourceMap {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn insert(&self, addr: IpAddr, asker: Asker) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, asker);
    }
    pub fn remove(&self, addr: IpAddr) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&addr);
    }
}

impl AskerResolver for SourceMap {
    fn asker(&self, src: IpAddr) -> Option<Asker> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&src)
            .cloned()
    }
}

impl<F: Fn(IpAddr) -> Option<Asker> + Send + Sync + Unpin + 'static> AskerResolver for F {
    fn asker(&self, src: IpAddr) -> Option<Asker> {
        self(src)
    }
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// TTL of the answers from the table. 0 (the default): resolvers do not cache them, so scale
    /// up/down is seen by the next query (Docker answers 600 s, which is how stale records live on).
    pub ttl: u32,
    /// Resolvers for names outside the cluster, tried in order. Empty: such names get REFUSED.
    pub upstreams: Vec<SocketAddr>,
    /// Time allowed for one upstream before the next is tried (or SERVFAIL is answered).
    pub upstream_timeout: Duration,
    /// Most forwarded queries in flight; over it, SERVFAIL at once.
    pub max_forwards: usize,
    /// Idle timeout of a TCP connection.
    pub tcp_timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            ttl: 0,
            upstreams: Vec::new(),
            upstream_timeout: Duration::from_millis(1500),
            max_forwards: 256,
            tcp_timeout: Duration::from_secs(5),
        }
    }
}

/// The request handler (usable with any hickory `Server`).
pub struct Handler<R: AskerResolver> {
    table: DnsTable,
    askers: R,
    ttl: u32,
    forwarder: Forwarder,
}

impl<R: AskerResolver> Handler<R> {
    pub fn new(table: DnsTable, askers: R, config: &DnsConfig) -> Self {
        Handler {
            table,
            askers,
            ttl: config.ttl,
            forwarder: Forwarder::new(config),
        }
    }
}

/// The EDNS of a response: echo a request's EDNS with our payload size.
fn response_edns(request: &Request) -> Option<Edns> {
    request.edns.as_ref().map(|req| {
        let mut e = Edns::new();
        e.set_max_payload(req.max_payload().clamp(512, 1232));
        e
    })
}

async fn send_code<H: ResponseHandler>(
    request: &Request,
    mut handle: H,
    code: ResponseCode,
    ra: bool,
) -> ResponseInfo {
    let edns = response_edns(request);
    let mut builder = MessageResponseBuilder::new(&request.queries, None);
    if let Some(e) = &edns {
        builder.edns(e);
    }
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = code;
    metadata.recursion_available = ra;
    let response = builder.build_no_records(metadata);
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            debug!(error = %e, "dns: sending a response failed");
            failed(request)
        }
    }
}

fn failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    hickory_server::proto::op::Header {
        metadata,
        counts: Default::default(),
    }
    .into()
}

#[async_trait::async_trait]
impl<R: AskerResolver> RequestHandler for Handler<R> {
    async fn handle_request<H: ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &Request,
        mut handle: H,
    ) -> ResponseInfo {
        let ra = self.forwarder.enabled();
        if request.metadata.op_code != OpCode::Query {
            return send_code(request, handle, ResponseCode::NotImp, ra).await;
        }
        let query = match request.queries.queries() {
            [q] => q,
            _ => return send_code(request, handle, ResponseCode::FormErr, ra).await,
        };
        let Some(asker) = self.askers.asker(request.src().ip()) else {
            return send_code(request, handle, ResponseCode::Refused, ra).await;
        };
        let name = query.name().to_string();
        let lookup = if query.query_class() == DNSClass::IN {
            self.table.lookup(&name, &asker)
        } else {
            Lookup::NotOurs
        };
        match lookup {
            Lookup::NotOurs => {
                if !ra {
                    return send_code(request, handle, ResponseCode::Refused, ra).await;
                }
                let protocol = request.protocol();
                match self
                    .forwarder
                    .forward(request.as_slice(), protocol == Protocol::Tcp)
                    .await
                {
                    Some(reply) => {
                        let edns = response_edns(request);
                        let mut builder = MessageResponseBuilder::new(&request.queries, None);
                        if let Some(e) = &edns {
                            builder.edns(e);
                        }
                        let mut metadata = reply.metadata;
                        metadata.id = request.metadata.id;
                        metadata.recursion_available = true;
                        let response = builder.build(
                            metadata,
                            reply.answers.iter(),
                            reply.authorities.iter(),
                            std::iter::empty(),
                            reply.additionals.iter(),
                        );
                        match handle.send_response(response).await {
                            Ok(info) => info,
                            Err(e) => {
                                debug!(error = %e, "dns: sending a forwarded response failed");
                                failed(request)
                            }
                        }
                    }
                    None => send_code(request, handle, ResponseCode::ServFail, ra).await,
                }
            }
            Lookup::NxDomain => send_code(request, handle, ResponseCode::NXDomain, ra).await,
            Lookup::Found(addrs) => {
                let qname = query.original().name().clone();
                let records: Vec<Record> = addrs
                    .into_iter()
                    .filter_map(|ip| match (query.query_type(), ip) {
                        (RecordType::A | RecordType::ANY, IpAddr::V4(v4)) => Some(RData::A(A(v4))),
                        (RecordType::AAAA | RecordType::ANY, IpAddr::V6(v6)) => {
                            Some(RData::AAAA(AAAA(v6)))
                        }
                        _ => None,
                    })
                    .map(|rdata| Record::from_rdata(qname.clone(), self.ttl, rdata))
                    .collect();
                let edns = response_edns(request);
                let mut builder = MessageResponseBuilder::new(&request.queries, None);
                if let Some(e) = &edns {
                    builder.edns(e);
                }
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.authoritative = true;
                metadata.recursion_available = ra;
                let response = builder.build(
                    metadata,
                    records.iter(),
                    std::iter::empty(),
                    std::iter::empty(),
                    std::iter::empty(),
                );
                match handle.send_response(response).await {
                    Ok(info) => info,
                    Err(e) => {
                        debug!(error = %e, "dns: sending a response failed");
                        failed(request)
                    }
                }
            }
        }
    }
}

/// A running DNS server (UDP and TCP on one address). Dropping it does not stop it: call
/// [`DnsServer::shutdown`].
pub struct DnsServer<R: AskerResolver> {
    server: Server<Handler<R>>,
    local_addr: SocketAddr,
}

impl<R: AskerResolver> DnsServer<R> {
    /// Binds UDP and TCP on `addr` (port 0: one ephemeral port for both). Needs a Tokio runtime.
    pub async fn bind(
        addr: SocketAddr,
        table: DnsTable,
        askers: R,
        config: DnsConfig,
    ) -> io::Result<Self> {
        let mut last_err = None;
        for _ in 0..16 {
            let udp = std::net::UdpSocket::bind(addr)?;
            let port = udp.local_addr()?.port();
            match std::net::TcpListener::bind(SocketAddr::new(addr.ip(), port)) {
                Ok(tcp) => return Self::from_std(udp, tcp, table, askers, config),
                Err(e) if addr.port() == 0 => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("no free port for UDP and TCP")))
    }

    /// Serves on sockets bound by the caller (e.g. inside a container's network namespace).
    /// Needs a Tokio runtime.
    pub fn from_std(
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
        table: DnsTable,
        askers: R,
        config: DnsConfig,
    ) -> io::Result<Self> {
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        let local_addr = udp.local_addr()?;
        let mut server = Server::new(Handler::new(table, askers, &config));
        server.register_socket(tokio::net::UdpSocket::from_std(udp)?);
        server.register_listener(
            tokio::net::TcpListener::from_std(tcp)?,
            config.tcp_timeout,
            65535,
        );
        Ok(DnsServer { server, local_addr })
    }

    /// The UDP address (TCP listens on the same port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving and waits for the sockets' tasks.
    pub async fn shutdown(mut self) {
        if let Err(e) = self.server.shutdown_gracefully().await {
            debug!(error = %e, "dns: shutdown");
        }
    }
}

//! The DNS server with real packets on loopback (127.0.0.1, ephemeral ports). Upstream resolvers
//! are tiny servers of this test, never the machine's.

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use overlay::dns::{
    Asker, DnsConfig, DnsServer, DnsTable, EndpointMode, FixedAsker, ServiceNetwork, ServiceRecord,
    SourceMap, TaskRecord,
};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn query(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m.to_vec().unwrap()
}

async fn ask_from(src: &str, server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let sock = UdpSocket::bind((ip(src), 0)).await.unwrap();
    sock.send_to(&query(4242, name, rtype), server)
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), sock.recv_from(&mut buf))
        .await
        .expect("no reply in 3 s")
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, 4242);
    m
}

async fn ask(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    ask_from("127.0.0.1", server, name, rtype).await
}

async fn ask_tcp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let mut s = TcpStream::connect(server).await.unwrap();
    let q = query(7, name, rtype);
    s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
    s.write_all(&q).await.unwrap();
    let n = s.read_u16().await.unwrap() as usize;
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn addrs(m: &Message) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = list.iter().map(|s| ip(s)).collect();
    v.sort();
    v
}

fn service(
    id: &str,
    name: &str,
    mode: EndpointMode,
    net: &str,
    vip: Option<&str>,
) -> ServiceRecord {
    ServiceRecord {
        id: id.into(),
        name: name.into(),
        stack: None,
        mode,
        networks: vec![ServiceNetwork {
            network: net.into(),
            vip: vip.map(ip),
            aliases: Vec::new(),
        }],
    }
}

fn task(id: &str, service_id: &str, names: &[&str], net: &str, addr: &str) -> TaskRecord {
    TaskRecord {
        id: id.into(),
        service_id: service_id.into(),
        names: names.iter().map(|s| s.to_string()).collect(),
        addrs: vec![(net.into(), ip(addr))],
    }
}

fn sample_table() -> DnsTable {
    let t = DnsTable::new();
    t.set_service(service(
        "s1",
        "web",
        EndpointMode::Vip,
        "front",
        Some("10.0.0.2"),
    ));
    t.set_service(service("s2", "db", EndpointMode::Dnsrr, "back", None));
    t.set_task(task("t1", "s1", &["web.1.t1"], "front", "10.0.1.3"));
    t.set_task(task("t2", "s1", &["web.2.t2"], "front", "10.0.1.4"));
    t.set_task(task("t3", "s2", &["db.1.t3"], "back", "10.1.1.3"));
    t.set_task(task("t4", "s2", &["db.2.t4"], "back", "10.1.1.4"));
    t
}

async fn start(table: DnsTable, asker: Asker, config: DnsConfig) -> DnsServer<FixedAsker> {
    DnsServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        table,
        FixedAsker(asker),
        config,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn answers_vip_dnsrr_tasks_and_follows_updates() {
    let table = sample_table();
    let server = start(
        table.clone(),
        Asker::new(["front", "back"], None),
        DnsConfig::default(),
    )
    .await;
    let addr = server.local_addr();

    let m = ask(addr, "web", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(addrs(&m), ips(&["10.0.0.2"]));
    assert_eq!(m.answers[0].ttl, 0);
    assert_eq!(
        addrs(&ask(addr, "WEB.", RecordType::A).await),
        ips(&["10.0.0.2"])
    );
    assert_eq!(
        addrs(&ask(addr, "tasks.web", RecordType::A).await),
        ips(&["10.0.1.3", "10.0.1.4"])
    );
    assert_eq!(
        addrs(&ask(addr, "db", RecordType::A).await),
        ips(&["10.1.1.3", "10.1.1.4"])
    );
    assert_eq!(
        addrs(&ask(addr, "db.1.t3", RecordType::A).await),
        ips(&["10.1.1.3"])
    );

    // AAAA for a known name: NOERROR, no records; unknown names: NXDOMAIN
    let m = ask(addr, "web", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    for unknown in ["nothing", "tasks.nothing", "web.9.nope"] {
        let m = ask(addr, unknown, RecordType::A).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NXDomain,
            "{unknown}"
        );
    }

    // scale down and up: seen by the very next query
    table.remove_task("t3");
    assert_eq!(
        addrs(&ask(addr, "db", RecordType::A).await),
        ips(&["10.1.1.4"])
    );
    table.set_task(task("t5", "s2", &[], "back", "10.1.1.5"));
    assert_eq!(
        addrs(&ask(addr, "db", RecordType::A).await),
        ips(&["10.1.1.4", "10.1.1.5"])
    );
    table.remove_service("s1");
    assert_eq!(
        ask(addr, "web", RecordType::A).await.metadata.response_code,
        ResponseCode::NXDomain
    );

    // over TCP as well
    let m = ask_tcp(addr, "db", RecordType::A).await;
    assert_eq!(addrs(&m), ips(&["10.1.1.4", "10.1.1.5"]));
    server.shutdown().await;
}

#[tokio::test]
async fn isolation_by_source_address() {
    let table = sample_table();
    let askers = SourceMap::new();
    askers.insert(ip("127.0.0.2"), Asker::new(["front"], None));
    askers.insert(ip("127.0.0.3"), Asker::new(["back"], None));
    let server = DnsServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        table,
        askers.clone(),
        DnsConfig::default(),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    assert_eq!(
        addrs(&ask_from("127.0.0.2", addr, "web", RecordType::A).await),
        ips(&["10.0.0.2"])
    );
    let m = ask_from("127.0.0.2", addr, "db", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        addrs(&ask_from("127.0.0.3", addr, "db", RecordType::A).await),
        ips(&["10.1.1.3", "10.1.1.4"])
    );
    let m = ask_from("127.0.0.3", addr, "tasks.web", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // an unknown source is refused
    let m = ask_from("127.0.0.4", addr, "web", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    askers.remove(ip("127.0.0.2"));
    let m = ask_from("127.0.0.2", addr, "web", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    server.shutdown().await;
}

/// A tiny upstream resolver: answers every A query with 192.0.2.1, over UDP and TCP.
async fn upstream() -> SocketAddr {
    fn answer(buf: &[u8]) -> Option<Vec<u8>> {
        let q = Message::from_vec(buf).ok()?;
        let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        r.metadata.recursion_available = true;
        let query = q.queries.first()?.clone();
        r.add_answer(Record::from_rdata(
            query.name().clone(),
            30,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
        ));
        r.add_query(query);
        r.to_vec().ok()
    }
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            if let Some(r) = answer(&buf[..n]) {
                let _ = udp.send_to(&r, from).await;
            }
        }
    });
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let Ok(n) = s.read_u16().await else { return };
                let mut buf = vec![0u8; n as usize];
                if s.read_exact(&mut buf).await.is_err() {
                    return;
                }
                if let Some(r) = answer(&buf) {
                    let _ = s.write_all(&(r.len() as u16).to_be_bytes()).await;
                    let _ = s.write_all(&r).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn forwards_other_names_upstream() {
    let up = upstream().await;
    // a dead upstream first: it is skipped after its timeout
    let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let config = DnsConfig {
        upstreams: vec![dead.local_addr().unwrap(), up],
        upstream_timeout: Duration::from_millis(200),
        ..DnsConfig::default()
    };
    let server = start(sample_table(), Asker::new(["front"], None), config).await;
    let addr = server.local_addr();
    let m = ask(addr, "example.com", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.recursion_available);
    assert_eq!(addrs(&m), ips(&["192.0.2.1"]));
    let m = ask_tcp(addr, "www.example.org.", RecordType::A).await;
    assert_eq!(addrs(&m), ips(&["192.0.2.1"]));
    // cluster names are not forwarded
    assert_eq!(
        addrs(&ask(addr, "web", RecordType::A).await),
        ips(&["10.0.0.2"])
    );
    assert_eq!(
        ask(addr, "db", RecordType::A).await.metadata.response_code,
        ResponseCode::NXDomain
    );
    server.shutdown().await;
    drop(dead);
}

#[tokio::test]
async fn no_upstream_refused_and_dead_upstream_servfail_quickly() {
    let server = start(
        sample_table(),
        Asker::new(["front"], None),
        DnsConfig::default(),
    )
    .await;
    let t0 = Instant::now();
    let m = ask(server.local_addr(), "example.com", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(t0.elapsed() < Duration::from_millis(500));
    server.shutdown().await;

    let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let config = DnsConfig {
        upstreams: vec![dead.local_addr().unwrap()],
        upstream_timeout: Duration::from_millis(150),
        ..DnsConfig::default()
    };
    let server = start(sample_table(), Asker::new(["front"], None), config).await;
    let t0 = Instant::now();
    let m = ask(server.local_addr(), "example.com", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(
        t0.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t0.elapsed()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_packets_are_survived() {
    let server = start(
        sample_table(),
        Asker::new(["front"], None),
        DnsConfig::default(),
    )
    .await;
    let addr = server.local_addr();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut bad: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x12],
        vec![0xff; 11],
        vec![0xab; 12],
        vec![0x00; 512],
        (0..=255u8).collect(),
    ];
    // a valid header claiming questions that are not there / cut in the middle
    let mut cut = query(1, "web", RecordType::A);
    cut.truncate(cut.len() - 3);
    bad.push(cut);
    // a response sent to the server
    let mut resp = query(2, "web", RecordType::A);
    resp[2] |= 0x80;
    bad.push(resp);
    // two questions
    let mut two = Message::new(3, MessageType::Query, OpCode::Query);
    two.add_query(Query::query(
        Name::from_ascii("web").unwrap(),
        RecordType::A,
    ));
    two.add_query(Query::query(Name::from_ascii("db").unwrap(), RecordType::A));
    bad.push(two.to_vec().unwrap());
    for p in &bad {
        sock.send_to(p, addr).await.unwrap();
    }
    // TCP garbage too
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0x00, 0x05, 1, 2, 3, 4, 5]).await.unwrap();
    drop(s);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        addrs(&ask(addr, "web", RecordType::A).await),
        ips(&["10.0.0.2"])
    );
    assert_eq!(
        addrs(&ask_tcp(addr, "web", RecordType::A).await),
        ips(&["10.0.0.2"])
    );
    server.shutdown().await;
}

#[tokio::test]
async fn large_answers_truncate_over_udp_and_come_whole_over_tcp() {
    let table = DnsTable::new();
    table.set_service(service("s", "big", EndpointMode::Dnsrr, "n", None));
    for i in 0..100u8 {
        table.set_task(task(
            &format!("t{i}"),
            "s",
            &[],
            "n",
            &format!("10.9.0.{}", i + 2),
        ));
    }
    let server = start(table, Asker::new(["n"], None), DnsConfig::default()).await;
    let m = ask(server.local_addr(), "tasks.big", RecordType::A).await;
    assert!(
        m.metadata.truncation,
        "100 A records do not fit in 512 bytes"
    );
    let m = ask_tcp(server.local_addr(), "tasks.big", RecordType::A).await;
    assert!(!m.metadata.truncation);
    assert_eq!(addrs(&m).len(), 100);
    server.shutdown().await;
}

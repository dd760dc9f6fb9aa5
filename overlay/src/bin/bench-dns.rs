//! `bench-dns`: queries/s and latency of the embedded service DNS server on loopback.
//!
//! The server (hickory `Server` + the cluster's handler) runs in this process on a Tokio runtime
//! of `--server-threads` workers; `--clients` client threads each keep `--window` UDP queries in
//! flight on their own socket (closed loop: a reply lets the next query go) and time every
//! query from send to reply. The table holds 100 vip services and 100 dnsrr services of 10
//! routable tasks each; the queries cycle over `<vip service>`, `<dnsrr service>` and
//! `tasks.<service>` (all answered from the table, no upstream).
//!
//! Then the time from a table update (a task added to or removed from a dnsrr service) to the
//! first answer that shows it, asked in a loop by one client (the managers' push to the agent is
//! not part of it).
//!
//! Real figures need a release build: `cargo build --release -p overlay --bins &&
//! target/release/bench-dns`. `--quick` (what CI runs) measures for 1.5 s only.

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use overlay::dns::{
    Asker, DnsConfig, DnsServer, DnsTable, EndpointMode, FixedAsker, ServiceNetwork, ServiceRecord,
    TaskRecord, task_name,
};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const TARGET_QPS: f64 = 50_000.0;
const TARGET_P99_MS: f64 = 1.0;

struct Args {
    duration: f64,
    clients: usize,
    window: usize,
    server_threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        duration: 10.0,
        clients: 4,
        window: 4,
        server_threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => a.duration = 1.5,
            "--duration" => {
                a.duration = val("--duration")?
                    .parse()
                    .map_err(|e| format!("--duration: {e}"))?
            }
            "--clients" => {
                a.clients = val("--clients")?
                    .parse()
                    .map_err(|e| format!("--clients: {e}"))?
            }
            "--window" => {
                a.window = val("--window")?
                    .parse()
                    .map_err(|e| format!("--window: {e}"))?
            }
            "--server-threads" => {
                a.server_threads = val("--server-threads")?
                    .parse()
                    .map_err(|e| format!("--server-threads: {e}"))?
            }
            "-h" | "--help" => {
                println!(
                    "bench-dns [--quick] [--duration S (10)] [--clients N (4)] [--window N (4)] [--server-threads N (1)]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.clients == 0 || a.window == 0 || a.server_threads == 0 || a.window > 1000 {
        return Err("clients, window (<= 1000) and server threads must be positive".into());
    }
    Ok(a)
}

fn table() -> DnsTable {
    let net: Arc<str> = "bench".into();
    let mut services = Vec::new();
    let mut tasks = Vec::new();
    for s in 0..200u32 {
        let vip = s < 100;
        let name = format!("svc{s}");
        services.push(ServiceRecord {
            id: format!("s{s}"),
            name: name.clone(),
            stack: None,
            mode: if vip {
                EndpointMode::Vip
            } else {
                EndpointMode::Dnsrr
            },
            networks: vec![ServiceNetwork {
                network: net.clone(),
                vip: vip.then(|| IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2 + s as u8))),
                aliases: Vec::new(),
            }],
        });
        for t in 0..10u32 {
            let id = format!("t{s}x{t}");
            tasks.push(TaskRecord {
                names: vec![task_name(&name, &(t + 1).to_string(), &id)],
                id,
                service_id: format!("s{s}"),
                addrs: vec![(
                    net.clone(),
                    IpAddr::V4(Ipv4Addr::new(10, 1, s as u8, 2 + t as u8)),
                )],
            });
        }
    }
    let t = DnsTable::new();
    t.replace(services, tasks);
    t
}

fn queries() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for s in 0..100 {
        for name in [
            format!("svc{s}"),
            format!("svc{}", 100 + s),
            format!("tasks.svc{s}"),
        ] {
            let mut m = Message::new(0, MessageType::Query, OpCode::Query);
            m.metadata.recursion_desired = true;
            m.add_query(Query::query(
                Name::from_ascii(&name).expect("valid name"),
                RecordType::A,
            ));
            out.push(m.to_vec().expect("encodable query"));
        }
    }
    out
}

#[derive(Default)]
struct ClientResult {
    latencies_ns: Vec<u64>,
    errors: u64,
    lost: u64,
}

fn client(
    server: SocketAddr,
    window: usize,
    queries: Arc<Vec<Vec<u8>>>,
    seed: usize,
    stop: Arc<AtomicBool>,
    measure: Arc<AtomicBool>,
) -> std::io::Result<ClientResult> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.connect(server)?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut res = ClientResult::default();
    let mut sent_at = vec![None::<Instant>; window];
    let mut next = seed;
    let mut buf = [0u8; 1500];
    let mut id_gen: u16 = 0;
    let mut send = |slot: usize,
                    sent_at: &mut Vec<Option<Instant>>,
                    next: &mut usize|
     -> std::io::Result<()> {
        let mut q = queries[*next % queries.len()].clone();
        *next += 1;
        id_gen = id_gen.wrapping_add(1);
        // the slot is in the low bits of the id so a reply finds its send time
        let id = ((id_gen as usize * window + slot) % (u16::MAX as usize / window * window)) as u16;
        q[..2].copy_from_slice(&id.to_be_bytes());
        sent_at[slot] = Some(Instant::now());
        sock.send(&q)?;
        Ok(())
    };
    for slot in 0..window {
        send(slot, &mut sent_at, &mut next)?;
    }
    while !stop.load(Ordering::Relaxed) {
        match sock.recv(&mut buf) {
            Ok(n) if n >= 12 => {
                let id = u16::from_be_bytes([buf[0], buf[1]]) as usize;
                let slot = id % window;
                if let Some(t0) = sent_at[slot].take() {
                    if measure.load(Ordering::Relaxed) {
                        res.latencies_ns.push(t0.elapsed().as_nanos() as u64);
                        if buf[3] & 0x0f != 0 || u16::from_be_bytes([buf[6], buf[7]]) == 0 {
                            res.errors += 1;
                        }
                    }
                    send(slot, &mut sent_at, &mut next)?;
                }
            }
            Ok(_) => res.errors += 1,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // lost replies: send again in every empty slot
                for slot in 0..window {
                    if sent_at[slot].is_some() {
                        res.lost += 1;
                    }
                    send(slot, &mut sent_at, &mut next)?;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(res)
}

/// Adds a task to (or removes it from) the dnsrr service `svc100`, then asks `tasks.svc100` until
/// the answer shows the change; returns p50 and p99 in ms and the number of trials.
fn update_visibility(
    server: SocketAddr,
    table: &DnsTable,
    trials: usize,
) -> std::io::Result<(f64, f64, usize)> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.connect(server)?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut m = Message::new(1, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii("tasks.svc100").expect("valid name"),
        RecordType::A,
    ));
    let q = m.to_vec().map_err(std::io::Error::other)?;
    let probe = Ipv4Addr::new(10, 200, 0, 9);
    let mut buf = [0u8; 1500];
    let mut samples = Vec::new();
    for i in 0..trials {
        let adding = i % 2 == 0;
        let t0 = Instant::now();
        if adding {
            table.set_task(TaskRecord {
                id: "probe".into(),
                service_id: "s100".into(),
                names: vec![],
                addrs: vec![("bench".into(), IpAddr::V4(probe))],
            });
        } else {
            table.remove_task("probe");
        }
        loop {
            sock.send(&q)?;
            let n = sock.recv(&mut buf)?;
            let has = buf[..n].windows(4).any(|w| w == probe.octets());
            if has == adding {
                break;
            }
            if t0.elapsed() > Duration::from_secs(5) {
                return Err(std::io::Error::other("change not visible after 5 s"));
            }
        }
        samples.push(t0.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    Ok((pct(&samples, 0.5), pct(&samples, 0.99), samples.len()))
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1e6
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-dns: {e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-dns: runtime: {e}");
            std::process::exit(1);
        }
    };
    let table = table();
    let server = match rt.block_on(DnsServer::bind(
        "127.0.0.1:0".parse().expect("literal address"),
        table.clone(),
        FixedAsker(Asker::new(["bench"], None)),
        DnsConfig::default(),
    )) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench-dns: bind: {e}");
            std::process::exit(1);
        }
    };
    let addr = server.local_addr();
    eprintln!(
        "bench-dns: server on {addr} ({} worker thread(s)), {} client(s) x {} in flight, {:.1} s after 0.5 s warm-up ...",
        args.server_threads, args.clients, args.window, args.duration
    );
    let queries = Arc::new(queries());
    let stop = Arc::new(AtomicBool::new(false));
    let measure = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..args.clients)
        .map(|c| {
            let (q, s, m) = (queries.clone(), stop.clone(), measure.clone());
            std::thread::spawn(move || client(addr, args.window, q, c * 7, s, m))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    measure.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(args.duration));
    measure.store(false, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let (mut errors, mut lost) = (0, 0);
    for h in handles {
        match h.join() {
            Ok(Ok(r)) => {
                all.extend(r.latencies_ns);
                errors += r.errors;
                lost += r.lost;
            }
            Ok(Err(e)) => {
                eprintln!("bench-dns: client failed: {e}");
                std::process::exit(1);
            }
            Err(_) => {
                eprintln!("bench-dns: client panicked");
                std::process::exit(1);
            }
        }
    }
    let visible = match update_visibility(addr, &table, if args.duration < 5.0 { 20 } else { 200 })
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("bench-dns: update visibility: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(server.shutdown());
    all.sort_unstable();
    let qps = all.len() as f64 / secs;
    let (p50, p99, max) = (pct(&all, 0.50), pct(&all, 0.99), pct(&all, 1.0));
    let met = if qps >= TARGET_QPS && p99 <= TARGET_P99_MS {
        "yes"
    } else {
        "no"
    };
    println!();
    println!("| figure | ours | anchor | target | met | run |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| DNS queries/s, p50/p99 (loopback UDP, {} clients x {} in flight, server {} thread(s)) | {:.0} q/s (p50 {:.3} ms, p99 {:.3} ms, max {:.2} ms) | CoreDNS about 17k qps per core | >= 50k qps, p99 <= 1 ms | {} | {:.1} s, {} answers, {} errors, {} lost |",
        args.clients,
        args.window,
        args.server_threads,
        qps,
        p50,
        p99,
        max,
        met,
        secs,
        all.len(),
        errors,
        lost
    );
    println!(
        "| DNS record after a task starts or stops (table update to first answer with it; the push from the managers not included) | p50 {:.3} ms, p99 {:.3} ms | Swarm: stale records are a known bug | <= 100 ms | {} | {} trials (start and stop) |",
        visible.0,
        visible.1,
        if visible.1 <= 100.0 { "yes" } else { "no" },
        visible.2
    );
    if all.is_empty() || errors > 0 {
        eprintln!("bench-dns: no answers or error answers");
        std::process::exit(1);
    }
}

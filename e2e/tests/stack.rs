//! A five-service stack from one compose file in a three-host lab (issue 5's must-show):
//!
//! - `web` (4 replicas, port 8080) and `admin` (port 8081): front ends on `frontend`, with a
//!   health check; `api` on `frontend` and `backend`; `worker` and `db` on `backend` only; `db`
//!   with a named volume, a secret and a config; `worker` with the secret.
//! - It converges; the secret and config are readable in `db`; `api` reaches `db` by its short
//!   name; a front end can neither resolve nor reach `db`.
//! - Redeploying with web's image v2 (start-first, parallelism 2) fails no request of a client
//!   loop against the published port.
//! - Redeploying with an image whose health check fails rolls back by itself; web ends on v2.
//! - `service update --force` and `service rollback` wait and show the update's progress.
//! - The secret's plaintext is on no disk of the lab (managers' data dirs, agents' dirs, logs).
//! - A malformed compose file is refused with its line and column, and creates nothing.
//!
//! Needs root, iproute2, runc, nftables, docker-registry and busybox-static (skips without them;
//! fails under CI=true). Build the binaries first: `cargo build --workspace --bins`.

use e2e::netlab::services::SLEEPER;
use e2e::netlab::{self, NetLab, disk};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const CONVERGE: Duration = Duration::from_secs(90);

/// An httpd on port 80 serving the image's /www; ends at once on SIGTERM.
const WEB: &str = "httpd -p 80 -h /www && trap 'exit 0' TERM && while true; do sleep 1; done";

/// The stack, with web's image `web_image`.
fn compose(registry: &str, web_image: &str) -> String {
    format!(
        r#"version: "3.8"
x-web: &web
  command: ["sh", "-c", "{WEB}"]
  networks: [frontend]
  healthcheck:
    test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/health"]
    interval: 300ms
    timeout: 3s
    retries: 2
services:
  web:
    <<: *web
    image: {registry}/web:{web_image}
    ports: ["8080:80"]
    deploy:
      replicas: 4
      update_config:
        parallelism: 2
        order: start-first
        failure_action: rollback
        monitor: 3s
      rollback_config:
        parallelism: 2
        order: start-first
  admin:
    <<: *web
    image: {registry}/web:v1
    ports: ["8081:80"]
  api:
    image: {registry}/busybox:latest
    command: ["sh", "-c", "{SLEEPER}"]
    networks: [frontend, backend]
  worker:
    image: {registry}/busybox:latest
    command: ["sh", "-c", "{SLEEPER}"]
    networks: [backend]
    secrets: [db_password]
  db:
    image: {registry}/busybox:latest
    command: ["sh", "-c", "echo db > /data/index.html && httpd -p 5432 -h /data && trap 'exit 0' TERM && while true; do sleep 1; done"]
    networks: [backend]
    volumes: ["dbdata:/data"]
    secrets:
      - source: db_password
        mode: 0400
    configs:
      - source: db_config
        target: /etc/db.conf
networks:
  frontend: {{}}
  backend: {{}}
volumes:
  dbdata: {{}}
secrets:
  db_password:
    file: ./db_password.txt
configs:
  db_config:
    file: ./db.conf
"#
    )
}

/// The file's line 4 has a value that is not a number.
const MALFORMED: &str = "services:\n  app:\n    image: busybox\n    deploy: {replicas: lots}\n";

/// What a client loop against a published port saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    failed: Vec<String>,
    /// The bodies answered, in order, each with how many times in a row.
    bodies: Vec<(String, u64)>,
}

/// One HTTP/1.0 GET of `/` at `addr`, bounded to 3 s; the body.
fn http_get(addr: SocketAddr) -> Result<String, String> {
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| format!("read: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| format!("no header end: {response:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("status: {}", head.lines().next().unwrap_or_default()));
    }
    Ok(body.trim().to_string())
}

/// A client in host 1's network namespace fetching `addr` in a loop until `stop` is set.
fn client_loop(lab: &NetLab, addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Tally> {
    let netns = format!("/run/netns/{}", lab.ns(1));
    std::thread::spawn(move || {
        let mut tally = Tally::default();
        let joined = std::fs::File::open(&netns)
            .map_err(|e| e.to_string())
            .and_then(|ns| nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string()));
        if let Err(e) = joined {
            tally.failed.push(format!("cannot enter {netns}: {e}"));
            return tally;
        }
        // Bounded by the test's own deadlines: it sets `stop` on every path.
        let started = Instant::now();
        let deadline = started + Duration::from_secs(600);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            match http_get(addr) {
                Ok(body) => {
                    tally.ok += 1;
                    match tally.bodies.last_mut() {
                        Some((last, count)) if *last == body => *count += 1,
                        _ => tally.bodies.push((body, 1)),
                    }
                }
                Err(e) => tally.failed.push(format!(
                    "{e} (sent {:?} since the epoch)",
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
                        - Duration::from_secs(3)
                )),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tally
    })
}

/// Polls `service inspect` until `check` accepts it.
fn wait_service(lab: &NetLab, service: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    let mut last = Value::Null;
    while started.elapsed() < CONVERGE {
        if let Ok(v) = lab.inspect_service(service) {
            if check(&v) {
                eprintln!("{what}: {:.1}s", started.elapsed().as_secs_f64());
                return v;
            }
            last = v;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!(
        "timed out waiting for {what}; service:\n{}\nlogs:\n{}",
        serde_json::to_string_pretty(&last).unwrap_or_default(),
        lab.logs_tail(40)
    )
}

fn update_state(service: &Value) -> &str {
    service["update_status"]["state"].as_str().unwrap_or_default()
}

fn converged(service: &Value) -> bool {
    let desired = service["desired"].as_u64().unwrap_or(0);
    desired > 0 && service["running"].as_u64() == Some(desired)
}

/// The running tasks of `service` with the host each runs on.
fn running_tasks(lab: &NetLab, service: &str) -> Vec<(String, usize)> {
    lab.tasks(service)
        .expect("service ps")
        .iter()
        .filter(|t| e2e::netlab::services::is_running(t))
        .map(|t| (t["id"].as_str().unwrap_or_default().to_string(), lab.host_of(t).expect("task host")))
        .collect()
}

fn deploy(lab: &NetLab, file: &Path, stack: &str) -> anyhow::Result<String> {
    let file = file.display().to_string();
    lab.cli(&["stack", "deploy", "-c", &file, stack])
}

/// Writes the stack's files into a fresh directory outside the lab (so that the plaintext
/// search below finds only what the cluster wrote).
fn stack_dir(secret: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cluster-stack-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("stack dir");
    std::fs::write(dir.join("db_password.txt"), secret).expect("secret file");
    std::fs::write(dir.join("db.conf"), "max_connections = 7\n").expect("config file");
    std::fs::write(dir.join("bad.yml"), MALFORMED).expect("bad file");
    dir
}

#[test]
fn a_five_service_stack_updates_without_failed_requests_and_rolls_back() {
    let test = "a_five_service_stack_updates_without_failed_requests_and_rolls_back";
    if !netlab::require(test) {
        return;
    }
    let lab = NetLab::up("stck", 3).expect("lab up");
    let registry = lab.registry_addr();
    for (tag, files) in [
        ("web:v1", &[("www/index.html", "v1\n"), ("www/health", "ok\n")][..]),
        ("web:v2", &[("www/index.html", "v2\n"), ("www/health", "ok\n")][..]),
        ("web:bad", &[("www/index.html", "bad\n")][..]),
    ] {
        lab.push_image(tag, files).expect("push image");
    }
    let secret = format!("s3cret-{}-{}", std::process::id(), Instant::now().elapsed().as_nanos());
    let dir = stack_dir(&secret);
    let file = dir.join("docker-stack.yml");

    // 1. Deploy and converge.
    std::fs::write(&file, compose(&registry, "v1")).expect("write compose");
    let out = deploy(&lab, &file, "shop").expect("stack deploy");
    eprintln!("{out}");
    for name in ["web", "admin", "api", "worker", "db"] {
        wait_service(&lab, &format!("shop_{name}"), &format!("shop_{name} running"), converged);
    }

    // 2. Secret and config in db; api reaches db by its short name; a front end cannot.
    let (db, db_host) = running_tasks(&lab, "shop_db")[0].clone();
    let read = lab.exec_in_task_ok(db_host, &db, &["cat", "/run/secrets/db_password", "/etc/db.conf"]).expect("read files");
    assert_eq!(read, format!("{secret}max_connections = 7\n"));
    let (api, api_host) = running_tasks(&lab, "shop_api")[0].clone();
    let fetched = lab
        .exec_in_task_ok(api_host, &api, &["busybox", "timeout", "3", "wget", "-q", "-O", "-", "http://db:5432/"])
        .expect("api fetches db by its short name");
    assert_eq!(fetched.trim(), "db");
    let (web, web_host) = running_tasks(&lab, "shop_web")[0].clone();
    let lookup = lab.exec_in_task(web_host, &web, &["nslookup", "db"]).expect("nslookup");
    assert!(!lookup.status.success(), "a front end resolves db: {}", String::from_utf8_lossy(&lookup.stdout));
    let db_address = lab.tasks("shop_db").expect("db tasks")[0]["addresses"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let url = format!("http://{db_address}:5432/");
    let direct = lab.exec_in_task(web_host, &web, &["busybox", "timeout", "3", "wget", "-q", "-O", "-", &url]).expect("wget");
    assert!(!direct.status.success(), "a front end reached db at {db_address}");

    // 3. A start-first update of web's image, two at a time, under a client loop.
    let published: SocketAddr = format!("{}:8080", lab.addr(2)).parse().expect("address");
    let stop = Arc::new(AtomicBool::new(false));
    let client = client_loop(&lab, published, stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&file, compose(&registry, "v2")).expect("write compose");
    let started = Instant::now();
    deploy(&lab, &file, "shop").expect("stack deploy v2");
    let updated = wait_service(&lab, "shop_web", "web updated to v2", |s| update_state(s) == "completed" && converged(s));
    eprintln!("update to v2: {:.1}s", started.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let tally = client.join().expect("client thread");
    eprintln!("client during the update: {} ok, {} failed, bodies {:?}", tally.ok, tally.failed.len(), tally.bodies);
    assert!(
        tally.failed.is_empty(),
        "failed requests during a start-first update: {:?}\nlogs:\n{}",
        tally.failed,
        lab.logs_tail(60)
    );
    assert!(tally.bodies.first().is_some_and(|(b, _)| b == "v1"), "{:?}", tally.bodies);
    assert!(tally.bodies.last().is_some_and(|(b, _)| b == "v2"), "{:?}", tally.bodies);
    assert!(updated["spec"]["image"].as_str().unwrap_or_default().contains("/web:v2"));

    // 4. An image whose health check fails: the update rolls back by itself.
    let stop = Arc::new(AtomicBool::new(false));
    let client = client_loop(&lab, published, stop.clone());
    std::fs::write(&file, compose(&registry, "bad")).expect("write compose");
    deploy(&lab, &file, "shop").expect("stack deploy bad");
    let rolled = wait_service(&lab, "shop_web", "web rolled back", |s| update_state(s) == "rollback_completed" && converged(s));
    stop.store(true, Ordering::Relaxed);
    let tally = client.join().expect("client thread");
    eprintln!("client during the failed update: {} ok, {} failed, bodies {:?}", tally.ok, tally.failed.len(), tally.bodies);
    assert!(rolled["spec"]["image"].as_str().unwrap_or_default().contains("/web:v2"), "{rolled}");
    assert!(rolled["previous_spec"]["image"].as_str().unwrap_or_default().contains("/web:bad"), "{rolled}");
    let live: Vec<Value> = lab.tasks("shop_web").expect("web tasks").into_iter().filter(|t| t["desired_state"] == "running").collect();
    assert_eq!(live.len(), 4, "{live:?}");
    assert!(tally.bodies.iter().all(|(b, _)| b == "v2"), "{:?}", tally.bodies);

    // 5. The CLI waits for a rolling update and for a rollback, showing their progress.
    for args in [&["service", "update", "--force", "shop_worker"][..], &["service", "rollback", "shop_worker"][..]] {
        let out = lab.cli_command(args).expect("cli").output().expect("run cluster");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("tasks replaced") && stderr.contains("converged"), "{args:?}: {stderr}");
    }
    let worker = wait_service(&lab, "shop_worker", "worker rolled back", |s| update_state(s) == "rollback_completed");
    assert_eq!(worker["spec"]["force_update"].as_u64().unwrap_or_default(), 0, "{worker}");

    // 6. The secret's plaintext is on no disk of the lab.
    let found = disk::files_containing(&netlab::lab_dir("stck"), secret.as_bytes());
    assert!(found.is_empty(), "the secret's plaintext is in {found:?}");

    // 7. A malformed file: refused with its position, nothing created.
    let bad = dir.join("bad.yml");
    let refused = deploy(&lab, &bad, "broken").expect_err("a malformed file is refused");
    assert!(refused.to_string().contains("bad.yml:4:"), "{refused}");
    let stacks = lab.cli(&["stack", "ls"]).expect("stack ls");
    assert!(!stacks.contains("broken"), "{stacks}");
    let services = lab.cli(&["service", "ls", "-q", "--filter", "name=broken_"]).expect("service ls");
    assert!(services.trim().is_empty(), "{services}");
    let _ = std::fs::remove_dir_all(&dir);
}

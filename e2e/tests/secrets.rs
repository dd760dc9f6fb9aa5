//! Secrets and configs in a one-host lab: a service's container reads its secrets under
//! /run/secrets (read-only, with the mode asked for) and its config at its target, the plaintext
//! of the secret is on no disk of the lab (managers' Raft files, agent's dirs, logs; the
//! per-task tmpfs excluded), and the tmpfs goes with the task.
//!
//! Needs root, iproute2, runc, nftables, docker-registry and busybox-static (skips without them;
//! fails under CI=true). Build the binaries first: `cargo build --workspace --bins`.

use e2e::netlab::services::{SLEEPER, is_running};
use e2e::netlab::{self, NetLab, disk};
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

const CONVERGE: Duration = Duration::from_secs(60);

/// `cluster ARGS` in h1 with `input` on stdin; panics unless it exits 0.
fn cli_with_stdin(lab: &NetLab, args: &[&str], input: &[u8]) -> String {
    let mut child = lab
        .cli_command(args)
        .expect("cli command")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cluster");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    let out = child.wait_with_output().expect("cluster output");
    assert!(
        out.status.success(),
        "cluster {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_service_reads_its_secrets_and_no_disk_holds_them() {
    let test = "a_service_reads_its_secrets_and_no_disk_holds_them";
    if !netlab::require(test) {
        return;
    }
    let lab = NetLab::up("scrt", 1).expect("lab up");
    let image = lab.busybox();
    let plaintext = b"lab-secret-5e8b1c37d2f4";

    // 1. A secret and a config from stdin (no file holds them), a service using both.
    cli_with_stdin(&lab, &["secret", "create", "pw", "-"], plaintext);
    cli_with_stdin(&lab, &["config", "create", "app.conf", "-"], b"port=8080\n");
    lab.create_service(&[
        "--name",
        "app",
        "--secret",
        "pw",
        "--secret",
        "source=pw,target=pw_owned,uid=1000,gid=1000,mode=0400",
        "--config-ref",
        "source=app.conf,target=/etc/app.conf",
        &image,
        "sh",
        "-c",
        SLEEPER,
    ])
    .unwrap_or_else(|e| panic!("create app: {e:#}"));
    let tasks = lab
        .wait_tasks("app", "app running", CONVERGE, |l| l.iter().any(is_running))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let task = tasks
        .iter()
        .find(|t| is_running(t))
        .expect("a running task");
    let task_id = task["id"].as_str().expect("task id").to_string();

    // 2. The container reads them; /run/secrets is read-only; modes and owners as asked.
    let read = lab
        .exec_in_task_ok(1, &task_id, &["cat", "/run/secrets/pw"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(read.as_bytes(), plaintext);
    let listing = lab
        .exec_in_task_ok(1, &task_id, &["ls", "-ln", "/run/secrets"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut files: Vec<(String, String, String, String)> = listing
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 9).then(|| {
                (
                    f[8].to_string(),
                    f[0].to_string(),
                    f[2].to_string(),
                    f[3].to_string(),
                )
            })
        })
        .collect();
    files.sort();
    let expected = [
        ("pw", "-r--r--r--", "0", "0"),
        ("pw_owned", "-r--------", "1000", "1000"),
    ];
    let expected: Vec<(String, String, String, String)> = expected
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect();
    assert_eq!(files, expected, "{listing}");
    let config = lab
        .exec_in_task_ok(1, &task_id, &["cat", "/etc/app.conf"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(config, "port=8080\n");
    let write = lab
        .exec_in_task(1, &task_id, &["sh", "-c", "echo x > /run/secrets/pw"])
        .expect("exec");
    assert!(!write.status.success(), "/run/secrets is writable");
    let secrets_dir = lab.agent_dir(1).join("secrets").join(&task_id);
    assert!(
        disk::tmpfs_mounts().contains(&secrets_dir),
        "no tmpfs at {}",
        secrets_dir.display()
    );

    // 3. No disk of the lab holds the plaintext (the tmpfs excluded).
    let found = disk::files_containing(&netlab::lab_dir("scrt"), plaintext);
    assert!(found.is_empty(), "the plaintext is on disk: {found:?}");

    // 4. The tmpfs goes with the task.
    lab.cli(&["service", "rm", "app"]).expect("service rm");
    let started = Instant::now();
    while secrets_dir.exists() && started.elapsed() < CONVERGE {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !secrets_dir.exists(),
        "{} is still there",
        secrets_dir.display()
    );
    assert!(!disk::tmpfs_mounts().contains(&secrets_dir));
    lab.cli(&["secret", "rm", "pw"]).expect("secret rm");
}

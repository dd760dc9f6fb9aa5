//! `cluster service logs` through a follower of a real 3-manager cluster, with a scripted agent:
//! the test holds a worker's session with the leader, reports its task RUNNING and answers log
//! subscriptions by publishing lines. Checks docker's output format, stdout/stderr split,
//! proxying by a follower, the warning for a disconnected node, and that ending a follow
//! (Ctrl-C on the CLI) cancels the subscription on the agent.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use e2e::bins::{CLI_BIN, binary_in};
use e2e::{Lab, Tuning, client};
use futures::SinkExt;
use proto::v1 as pb;
use proto::v1::dispatcher_client::DispatcherClient;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// What the scripted agent saw in its session.
#[derive(Debug)]
enum Seen {
    Subscribed(pb::LogSubscription),
    Cancelled(String),
}

/// Opens the worker's session, heartbeats, reports every assigned task RUNNING and publishes
/// two lines (one per stream) for every subscription (closing it unless it follows).
async fn scripted_agent(channel: Channel, seen: mpsc::UnboundedSender<Seen>) -> Result<()> {
    let mut dispatcher = DispatcherClient::new(channel.clone());
    let request = pb::SessionRequest {
        hostname: "fakehost".into(),
        addr: "127.0.0.9".into(),
        ..Default::default()
    };
    let mut session = dispatcher.session(request).await?.into_inner();
    let mut session_id = String::new();
    let mut heartbeats: Option<tokio::task::JoinHandle<()>> = None;
    let mut followers = Vec::new();
    while let Some(message) = session.message().await? {
        if session_id.is_empty() {
            session_id = message.session_id.clone();
            let (mut client, sid) = (dispatcher.clone(), session_id.clone());
            heartbeats = Some(tokio::spawn(async move {
                loop {
                    let beat = pb::HeartbeatRequest {
                        session_id: sid.clone(),
                    };
                    let _ = client.heartbeat(beat).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }));
        }
        let updates: Vec<pb::TaskStatus> = message
            .assignments
            .iter()
            .filter_map(|a| a.task.as_ref())
            .filter(|t| t.desired_state == "running" && t.state != "running")
            .map(|t| pb::TaskStatus {
                task_id: t.id.clone(),
                state: "running".into(),
                ..Default::default()
            })
            .collect();
        if !updates.is_empty() {
            let report = pb::UpdateTaskStatusRequest {
                session_id: session_id.clone(),
                updates,
            };
            dispatcher.update_task_status(report).await?;
        }
        for id in message.cancelled_log_subscriptions {
            let _ = seen.send(Seen::Cancelled(id));
        }
        for sub in message.log_subscriptions {
            let _ = seen.send(Seen::Subscribed(sub.clone()));
            let (mut tx, rx) = futures::channel::mpsc::channel(8);
            let mut client = dispatcher.clone();
            let call = tokio::spawn(async move { client.publish_logs(rx).await });
            let line = |task_id: &str, stream: &str, text: &str| pb::LogMessage {
                task_id: task_id.into(),
                stream: stream.into(),
                timestamp_unix_nanos: 1_700_000_000_000_000_000,
                line: text.as_bytes().to_vec(),
                ..Default::default()
            };
            let task_id = sub.task_ids.first().cloned().unwrap_or_default();
            let batch = pb::PublishLogsMessage {
                subscription_id: sub.id.clone(),
                messages: vec![
                    line(&task_id, "stdout", "hello from the task"),
                    line(&task_id, "stderr", "something on stderr"),
                ],
                close: !sub.follow,
            };
            tx.send(batch).await?;
            if sub.follow {
                // Keep the stream open, as a following agent does.
                followers.push((tx, call));
            } else {
                drop(tx);
                call.await??;
            }
        }
    }
    if let Some(h) = heartbeats {
        h.abort();
    }
    Ok(())
}

async fn wait_task_running(lab: &Lab, leader: usize) -> Result<pb::Task> {
    let mut control = lab.control(leader).await?;
    for _ in 0..150 {
        let request = pb::ListTasksRequest {
            filters: [("service".to_string(), "web".to_string())].into(),
        };
        let tasks = control.list_tasks(request).await?.into_inner().tasks;
        if let Some(t) = tasks.iter().find(|t| t.state == "running") {
            return Ok(t.clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the task never reached RUNNING")
}

async fn next_seen(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Result<Seen> {
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .map_err(|_| anyhow!("the agent heard nothing in 10 s"))?
        .ok_or_else(|| anyhow!("the scripted agent stopped"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_logs_through_a_follower() -> Result<()> {
    let mut lab = Lab::cluster("service-logs", 3, Tuning::fast()).await?;
    let leader = lab.wait_leader(Duration::from_secs(10)).await?;
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let follower_addr = lab.addr(follower).to_string();
    let mut control = lab.control(leader).await?;
    for i in 0..3 {
        let drain = pb::UpdateNodeRequest {
            reference: lab.hostname(i).to_string(),
            availability: "drain".into(),
            ..Default::default()
        };
        control.update_node(drain).await?;
    }
    let token = client::join_token(&mut control, "worker", false).await?;
    let (creds, _node_id) = client::join_worker(lab.addr(leader), &token, "fakehost").await?;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let agent = tokio::spawn(scripted_agent(
        client::channel(lab.addr(leader), &creds).await?,
        seen_tx,
    ));
    let spec = pb::ServiceSpec {
        name: "web".into(),
        image: "busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000"
            .into(),
        ..Default::default()
    };
    control
        .create_service(pb::CreateServiceRequest {
            spec: Some(spec),
            ..Default::default()
        })
        .await?;
    let task = wait_task_running(&lab, leader).await?;
    let short: String = task.id.chars().take(12).collect();

    // Non-follow through the follower: docker's prefix, streams split, the stream ends.
    let out = lab
        .cli(&["--host", &follower_addr, "service", "logs", "web"])
        .await?;
    assert!(out.success, "service logs: {out:?}");
    assert_eq!(
        out.stdout,
        format!("web.1.{short}@fakehost    | hello from the task\n")
    );
    assert_eq!(
        out.stderr,
        format!("web.1.{short}@fakehost    | something on stderr\n")
    );
    let Seen::Subscribed(sub) = next_seen(&mut seen).await? else {
        bail!("expected a subscription")
    };
    assert_eq!(sub.task_ids, std::slice::from_ref(&task.id));
    assert!(!sub.follow && sub.tail.is_none());

    // A task id, --tail, -t and --no-task-ids.
    let out = lab
        .cli(&[
            "--host",
            &follower_addr,
            "service",
            "logs",
            "--tail",
            "5",
            "-t",
            "--no-task-ids",
            &task.id,
        ])
        .await?;
    assert!(out.success, "service logs TASK: {out:?}");
    assert_eq!(
        out.stdout,
        "2023-11-14T22:13:20Z web.1@fakehost    | hello from the task\n"
    );
    let Seen::Subscribed(sub) = next_seen(&mut seen).await? else {
        bail!("expected a subscription")
    };
    assert_eq!(sub.tail, Some(5));

    let out = lab
        .cli(&["--host", &follower_addr, "service", "logs", "nothing"])
        .await?;
    assert!(!out.success);
    assert!(out.stderr.contains("no service or task nothing"), "{out:?}");

    // Follow through the follower: a task that starts later joins the stream; Ctrl-C ends the
    // CLI and the agent hears the cancellation.
    let bin = binary_in(lab.bin_dir(), CLI_BIN)?;
    let mut child = tokio::process::Command::new(&bin)
        .arg("--config")
        .arg(lab.admin_path())
        .args(["--host", &follower_addr, "service", "logs", "-f", "web"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("spawn service logs -f")?;
    let Seen::Subscribed(sub) = next_seen(&mut seen).await? else {
        bail!("expected a subscription")
    };
    assert!(sub.follow);
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next_line = async || -> Result<String> {
        tokio::time::timeout(Duration::from_secs(10), stdout.next_line())
            .await
            .context("no line from logs -f in 10 s")??
            .ok_or_else(|| anyhow!("logs -f ended"))
    };
    assert_eq!(
        next_line().await?,
        format!("web.1.{short}@fakehost    | hello from the task")
    );
    let out = lab.cli(&["service", "scale", "-d", "web=2"]).await?;
    assert!(out.success, "scale: {out:?}");
    let Seen::Subscribed(more) = next_seen(&mut seen).await? else {
        bail!("expected the new task's part")
    };
    assert_eq!(more.id, sub.id, "the same subscription, one more part");
    assert!(more.follow && more.task_ids.len() == 1 && more.task_ids[0] != task.id);
    let line = next_line().await?;
    assert!(
        line.starts_with("web.2.") && line.ends_with("@fakehost    | hello from the task"),
        "{line:?}"
    );
    let pid = nix::unistd::Pid::from_raw(child.id().expect("pid") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .context("logs -f did not end on Ctrl-C")??;
    assert!(status.success(), "logs -f exit: {status:?}");
    match next_seen(&mut seen).await? {
        Seen::Cancelled(id) => assert_eq!(id, sub.id),
        other => bail!("expected the cancellation of {}, got {other:?}", sub.id),
    }

    // The agent goes away: its node's logs are reported missing, without hanging.
    agent.abort();
    let _ = agent.await;
    let out = lab.cli(&["service", "logs", "web"]).await?;
    assert!(out.success, "{out:?}");
    assert!(
        out.stderr
            .contains("warning: node fakehost is not connected"),
        "{out:?}"
    );
    lab.passed();
    Ok(())
}

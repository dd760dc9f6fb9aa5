//! The session with the managers: one `Session` stream at a time with the leader (following
//! `leader-addr` hints), heartbeats at the period the server gives, batched status updates, and
//! reconnection with bounded backoff across the known manager addresses. Log subscriptions that
//! arrive in the session go to a [`Publisher`] that lives as long as the session.

use std::sync::Arc;
use std::time::Duration;

use identity::Credentials;
use proto::v1::dispatcher_client::DispatcherClient;
use proto::v1::{HeartbeatRequest, SessionMessage, SessionRequest, UpdateTaskStatusRequest};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use super::executor::{Input, StatusQueue};
use super::log_publisher::{DispatcherSink, LogSource, Publisher};
use crate::network::Overlay;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

/// Who the agent is and where the managers are.
pub struct SessionConfig {
    pub hostname: String,
    pub advertise_addr: String,
    pub manager_addrs: Vec<String>,
    /// Keeps the secrets and configs the managers send.
    pub files: Option<Arc<super::files::TaskFiles>>,
}

/// Called with the manager addresses whenever the managers announce new ones.
pub type AddrsHook = Arc<dyn Fn(&[String]) + Send + Sync>;

/// Keeps a session open forever (until the task is dropped).
pub async fn run(
    cfg: SessionConfig,
    creds: Credentials,
    inputs: mpsc::Sender<Input>,
    statuses: StatusQueue,
    on_addrs: AddrsHook,
    logs: Arc<dyn LogSource>,
    overlay: Option<Arc<Overlay>>,
) {
    let local = Local {
        inputs,
        statuses,
        logs,
        overlay,
    };
    let mut addrs = cfg.manager_addrs.clone();
    let mut next = 0usize;
    let mut backoff = BACKOFF_MIN;
    loop {
        if addrs.is_empty() {
            tracing::error!("no manager address known");
            tokio::time::sleep(BACKOFF_MAX).await;
            continue;
        }
        let addr = addrs[next % addrs.len()].clone();
        match session_once(&cfg, &addr, &creds, &local, &mut addrs, &on_addrs).await {
            Outcome::Leader(leader) => {
                tracing::info!(%addr, %leader, "following the leader");
                if !addrs.contains(&leader) {
                    addrs.push(leader.clone());
                }
                next = addrs.iter().position(|a| *a == leader).unwrap_or(0);
                tokio::time::sleep(BACKOFF_MIN).await;
                continue;
            }
            Outcome::Ended(opened) => {
                if opened {
                    backoff = BACKOFF_MIN;
                }
                next = next_after(&addrs, &addr, next);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Where to try after an attempt with `addr` ended: the address after it in `addrs`. The list
/// may have been replaced (and reordered) by the managers' announcement during the session, so a
/// position kept from before could point at the manager that just went away.
fn next_after(addrs: &[String], addr: &str, previous: usize) -> usize {
    addrs.iter().position(|a| a == addr).unwrap_or(previous) + 1
}

/// The addresses to keep when the managers announce `announced` during a session with `addr`:
/// theirs, plus `addr` if they do not list it (the address this agent reaches a manager at, such
/// as its join address, stays usable).
fn merge_addrs(announced: &[String], addr: &str) -> Vec<String> {
    let mut addrs = announced.to_vec();
    if !addrs.iter().any(|a| a == addr) {
        addrs.push(addr.to_string());
    }
    addrs
}

/// What a session serves on this side: the executor's inputs, the statuses to report and the
/// logs to publish.
struct Local {
    inputs: mpsc::Sender<Input>,
    statuses: StatusQueue,
    logs: Arc<dyn LogSource>,
    /// Takes the network views.
    overlay: Option<Arc<Overlay>>,
}

enum Outcome {
    /// Not the leader: the leader's address.
    Leader(String),
    /// The attempt failed or the session ended; whether a session was open.
    Ended(bool),
}

async fn session_once(
    cfg: &SessionConfig,
    addr: &str,
    creds: &Credentials,
    local: &Local,
    addrs: &mut Vec<String>,
    on_addrs: &AddrsHook,
) -> Outcome {
    let channel = match tokio::time::timeout(CONNECT_TIMEOUT, identity::connect(addr, creds)).await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::warn!(%addr, error = %e, "cannot connect to manager");
            return Outcome::Ended(false);
        }
        Err(_) => {
            tracing::warn!(%addr, "connecting to manager timed out");
            return Outcome::Ended(false);
        }
    };
    let mut client = DispatcherClient::new(channel.clone());
    let request = SessionRequest {
        hostname: cfg.hostname.clone(),
        addr: cfg.advertise_addr.clone(),
        ..Default::default()
    };
    let mut stream = match client.session(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            if status.code() == tonic::Code::FailedPrecondition
                && let Some(leader) = status
                    .metadata()
                    .get("leader-addr")
                    .and_then(|v| v.to_str().ok())
                && !leader.is_empty()
                && leader != addr
            {
                return Outcome::Leader(leader.to_string());
            }
            tracing::warn!(%addr, error = %status.message(), "session refused");
            return Outcome::Ended(false);
        }
    };
    let mut workers: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let (period_tx, period_rx) = watch::channel(DEFAULT_HEARTBEAT);
    let mut opened = false;
    let mut publisher = Publisher::new(
        local.logs.clone(),
        Arc::new(DispatcherSink(channel.clone())),
    );
    loop {
        let mut msg: SessionMessage = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                tracing::info!(%addr, "session ended by the manager");
                break;
            }
            Err(status) => {
                tracing::warn!(%addr, error = %status.message(), "session broken");
                break;
            }
        };
        if !opened {
            opened = true;
            tracing::info!(%addr, session = %msg.session_id, "session open");
            let sid = msg.session_id.clone();
            workers.push(tokio::spawn(heartbeats(
                channel.clone(),
                sid.clone(),
                period_rx.clone(),
                log_beat,
            )));
            workers.push(tokio::spawn(report(
                channel.clone(),
                sid,
                local.statuses.clone(),
            )));
        }
        if msg.heartbeat_period_ms > 0 {
            let period = Duration::from_millis(u64::from(msg.heartbeat_period_ms));
            period_tx.send_if_modified(|p| std::mem::replace(p, period) != period);
        }
        if !msg.manager_addrs.is_empty() {
            let merged = merge_addrs(&msg.manager_addrs, addr);
            if merged != *addrs {
                *addrs = merged;
                on_addrs(addrs);
            }
        }
        publisher.apply(
            std::mem::take(&mut msg.log_subscriptions),
            &msg.cancelled_log_subscriptions,
        );
        if let Some(files) = &cfg.files {
            files.apply(&mut msg);
        }
        if let (Some(overlay), Some(views)) = (&local.overlay, msg.networks.take()) {
            overlay.set_views(views.networks);
        }
        if msg.kind != "full" && msg.assignments.is_empty() && msg.removed.is_empty() {
            continue;
        }
        let input = if msg.kind == "full" {
            Input::Full(msg.assignments)
        } else {
            Input::Delta {
                assignments: msg.assignments,
                removed: msg.removed,
            }
        };
        if local.inputs.send(input).await.is_err() {
            break;
        }
    }
    for w in workers {
        w.abort();
    }
    Outcome::Ended(opened)
}

/// How one heartbeat went.
pub enum Beat {
    Answered,
    Refused(tonic::Status),
    /// No answer within the period.
    Unanswered(Duration),
}

/// What the agent makes of a heartbeat: a warning when it failed.
fn log_beat(beat: Beat) {
    match beat {
        Beat::Answered => {}
        Beat::Refused(status) => tracing::warn!(error = %status.message(), "heartbeat failed"),
        Beat::Unanswered(timeout) => tracing::warn!(?timeout, "heartbeat unanswered"),
    }
}

/// Sends a heartbeat every period, on a fixed schedule (a slow reply does not push the next
/// one back), each call bounded by one period so a stuck call cannot silence the node; tells
/// `on_beat` how each went. Public for the scale benchmark's simulated agents, which keep the
/// same schedule.
pub async fn heartbeats(
    channel: Channel,
    session_id: String,
    mut period: watch::Receiver<Duration>,
    mut on_beat: impl FnMut(Beat),
) {
    let mut client = DispatcherClient::new(channel);
    let mut current = *period.borrow_and_update();
    let mut next = tokio::time::Instant::now() + current;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            changed = period.changed() => {
                if changed.is_err() {
                    return;
                }
                // Every session message repeats the period: only a new value moves the schedule
                // (re-arming on each message would starve heartbeats during a burst of deltas).
                let new = *period.borrow_and_update();
                if new != current {
                    current = new;
                    next = tokio::time::Instant::now() + current;
                }
                continue;
            }
        }
        let woke_late = tokio::time::Instant::now().saturating_duration_since(next);
        next += current;
        let req = HeartbeatRequest {
            session_id: session_id.clone(),
        };
        let sent = tokio::time::Instant::now();
        match tokio::time::timeout(current, client.heartbeat(req)).await {
            Ok(Ok(r)) => {
                on_beat(Beat::Answered);
                let ms = r.into_inner().period_ms;
                if ms > 0 && Duration::from_millis(u64::from(ms)) != current {
                    current = Duration::from_millis(u64::from(ms));
                    next = tokio::time::Instant::now() + current;
                }
            }
            Ok(Err(status)) => on_beat(Beat::Refused(status)),
            Err(_) => on_beat(Beat::Unanswered(current)),
        }
        let took = sent.elapsed();
        if woke_late > current / 2 || took > current / 2 {
            tracing::warn!(woke_late = ?woke_late, round_trip = ?took, "heartbeat delayed");
        }
        // Behind by more than a period (the agent stalled): restart the schedule from now.
        let now = tokio::time::Instant::now();
        if next + current < now {
            next = now;
        }
    }
}

async fn report(channel: Channel, session_id: String, statuses: StatusQueue) {
    let mut client = DispatcherClient::new(channel);
    let mut backoff = BACKOFF_MIN;
    loop {
        let batch = statuses.take();
        if batch.is_empty() {
            tokio::select! {
                _ = statuses.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        }
        let req = UpdateTaskStatusRequest {
            session_id: session_id.clone(),
            updates: batch.clone(),
        };
        match client.update_task_status(req).await {
            Ok(_) => backoff = BACKOFF_MIN,
            Err(status) => {
                tracing::warn!(error = %status.message(), n = batch.len(), "status update failed; retrying");
                statuses.put_back(batch);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<String> {
        list.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn after_a_session_ends_the_next_attempt_is_another_manager() {
        // Joined through m1 (index 0); during the session the managers announced their list in
        // another order. When m1 dies, the next attempt must not be m1 again.
        let announced = addrs(&["m2", "m1", "m3"]);
        let next = next_after(&announced, "m1", 0);
        assert_eq!(announced[next % announced.len()], "m3");
        // The last one wraps around to the first.
        let next = next_after(&announced, "m3", 0);
        assert_eq!(announced[next % announced.len()], "m2");
        // An address no longer listed: move on from where we were.
        assert_eq!(next_after(&announced, "gone", 1), 2);
    }

    #[test]
    fn announced_addresses_keep_the_one_in_use() {
        assert_eq!(
            merge_addrs(&addrs(&["m1", "m2"]), "m2"),
            addrs(&["m1", "m2"])
        );
        // Reached through an address the managers do not announce (a join address by name).
        let merged = merge_addrs(&addrs(&["m1", "m2"]), "managers.local:4242");
        assert_eq!(merged, addrs(&["m1", "m2", "managers.local:4242"]));
        // Announcing the same list again changes nothing (no rewrite of the saved config).
        assert_eq!(
            merge_addrs(&addrs(&["m1", "m2"]), "managers.local:4242"),
            merged
        );
    }
}

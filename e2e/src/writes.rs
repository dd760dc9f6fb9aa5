//! Write helpers shared by the tests and the benchmark.

use crate::client::{Control, describe, write_label};
use anyhow::{Result, bail};
use std::time::{Duration, Instant};

/// Several clients (one per surviving manager, say) each retry one write with `per_call`
/// timeouts until one is accepted; returns the time from `since` to the first acceptance and the
/// index of the client that got it. Gives up at `since + timeout`.
pub async fn first_accepted_write(
    clients: Vec<Control>,
    node: &str,
    key: &str,
    value: &str,
    per_call: Duration,
    since: Instant,
    timeout: Duration,
) -> Result<(Duration, usize)> {
    let deadline = since + timeout;
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<(usize, Result<Duration, String>)>(clients.len().max(1));
    let mut tasks = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let (tx, node, key, value) = (
            tx.clone(),
            node.to_string(),
            key.to_string(),
            value.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut last = String::from("no attempt");
            while Instant::now() < deadline {
                let call = per_call.min(deadline.saturating_duration_since(Instant::now()));
                let started = Instant::now();
                match write_label(&mut client, &node, &key, &value, call).await {
                    Ok(_) => {
                        let _ = tx.send((i, Ok(since.elapsed()))).await;
                        return;
                    }
                    Err(status) => {
                        last = describe(&status);
                        // Connection refused and friends come back at once: do not spin.
                        let spent = started.elapsed();
                        if spent < Duration::from_millis(5) {
                            tokio::time::sleep(Duration::from_millis(5) - spent).await;
                        }
                    }
                }
            }
            let _ = tx.send((i, Err(last))).await;
        }));
    }
    drop(tx);
    let mut errors = Vec::new();
    let mut outcome = None;
    while let Some((i, result)) = rx.recv().await {
        match result {
            Ok(elapsed) => {
                outcome = Some((elapsed, i));
                break;
            }
            Err(e) => errors.push(format!("client {i}: {e}")),
        }
    }
    for task in tasks {
        task.abort();
    }
    match outcome {
        Some(found) => Ok(found),
        None => bail!(
            "no write was accepted within {timeout:?}: {}",
            errors.join("; ")
        ),
    }
}

//! Bounded waiting: every loop in the tests ends by a deadline.

use anyhow::{Result, bail};
use std::future::Future;
use std::time::{Duration, Instant};

/// A point in time a loop must not run past.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    pub fn after(timeout: Duration) -> Self {
        Deadline {
            at: Instant::now() + timeout,
        }
    }
    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }
}

/// Calls `attempt` every `interval` until it returns `Ok`, for at most `timeout`. On timeout the
/// error says what was awaited and what the last attempt said.
pub async fn eventually<T, F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let started = Instant::now();
    let deadline = Deadline::after(timeout);
    let mut tries = 0u32;
    let mut last_error = String::from("none");
    loop {
        tries += 1;
        let attempt_started = Instant::now();
        match tokio::time::timeout(
            deadline.remaining().max(Duration::from_millis(1)),
            attempt(),
        )
        .await
        {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => {
                last_error = format!("{error:#} (after {:?})", attempt_started.elapsed())
            }
            Err(_) => {
                bail!(
                    "timed out after {:?} ({tries} attempts) waiting for {what}: the last attempt was still running \
                     after {:?}; the error before it: {last_error}",
                    started.elapsed(),
                    attempt_started.elapsed()
                );
            }
        }
        if deadline.passed() {
            bail!(
                "timed out after {:?} ({tries} attempts) waiting for {what}; last error: {last_error}",
                started.elapsed()
            );
        }
        tokio::time::sleep(interval.min(deadline.remaining())).await;
    }
}

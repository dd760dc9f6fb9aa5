//! No quorum: writes and reads fail fast with "no quorum", then recover.

use super::{TARGET, others};
use anyhow::{Result, anyhow};
use e2e::client::{CALL_TIMEOUT, describe, node_labels, write_label};
use e2e::lab::CONVERGE_TIMEOUT;
use e2e::{Lab, Tuning, eventually, expect_code};
use std::time::{Duration, Instant};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_quorum_writes_fail_fast_and_recover() -> Result<()> {
    let tuning = Tuning::fast();
    let quorum_timeout = tuning.quorum_timeout();
    let bound = quorum_timeout + Duration::from_secs(2);
    let mut lab = Lab::cluster("no-quorum", 3, tuning).await?;
    let leader = lab.wait_leader(CONVERGE_TIMEOUT).await?;
    let followers = others(3, leader);
    let mut on_leader = lab.control(leader).await?;
    write_label(&mut on_leader, TARGET, "before", "1", CALL_TIMEOUT)
        .await
        .map_err(|s| anyhow!(describe(&s)))?;

    // The leader loses both followers: its writes and reads fail with "no quorum", in bounded time.
    for &f in &followers {
        lab.kill_9(f)?;
    }
    let started = Instant::now();
    let result = write_label(
        &mut on_leader,
        TARGET,
        "lonely-leader",
        "1",
        bound + Duration::from_secs(10),
    )
    .await;
    let took = started.elapsed();
    let status = expect_code(
        result,
        Code::Unavailable,
        "a write on a leader without quorum",
    )?;
    println!(
        "write on the isolated leader failed after {took:?}: {}",
        describe(&status)
    );
    assert!(
        status.message().starts_with("no quorum"),
        "{}",
        describe(&status)
    );
    assert!(
        took <= bound,
        "the write took {took:?} to fail (quorum timeout {quorum_timeout:?})"
    );
    let started = Instant::now();
    let result = node_labels(&mut on_leader, TARGET, bound + Duration::from_secs(10)).await;
    let took = started.elapsed();
    let status = expect_code(
        result,
        Code::Unavailable,
        "a read on a leader without quorum",
    )?;
    assert!(
        status.message().starts_with("no quorum"),
        "{}",
        describe(&status)
    );
    assert!(took <= bound, "the read took {took:?} to fail");

    // One follower back: writes succeed again.
    lab.restart(followers[0])?;
    let started = Instant::now();
    eventually(
        "a write once quorum is back",
        CONVERGE_TIMEOUT,
        Duration::from_millis(100),
        || {
            let lab = &lab;
            async move {
                let mut c = lab.control(leader).await?;
                write_label(&mut c, TARGET, "quorum-back", "1", Duration::from_secs(3))
                    .await
                    .map_err(|s| anyhow!(describe(&s)))
            }
        },
    )
    .await?;
    println!(
        "writes accepted {:?} after restarting {}",
        started.elapsed(),
        lab.hostname(followers[0])
    );

    // A follower that loses the leader (and so the quorum): writes through it fail the same way.
    let alive = followers[0];
    let mut on_follower = lab.control(alive).await?;
    write_label(&mut on_follower, TARGET, "via-follower", "1", CALL_TIMEOUT)
        .await
        .map_err(|s| anyhow!(describe(&s)))?;
    lab.kill_9(leader)?;
    let started = Instant::now();
    let result = write_label(
        &mut on_follower,
        TARGET,
        "lonely-follower",
        "1",
        bound + Duration::from_secs(10),
    )
    .await;
    let took = started.elapsed();
    let status = expect_code(
        result,
        Code::Unavailable,
        "a write on a follower without quorum",
    )?;
    println!(
        "write on the isolated follower failed after {took:?}: {}",
        describe(&status)
    );
    assert!(
        status.message().starts_with("no quorum"),
        "{}",
        describe(&status)
    );
    assert!(
        took <= bound,
        "the write took {took:?} to fail (quorum timeout {quorum_timeout:?})"
    );

    // The third manager back: the pair elects a leader and accepts writes.
    lab.restart(followers[1])?;
    eventually(
        "a write once quorum is back again",
        CONVERGE_TIMEOUT,
        Duration::from_millis(100),
        || {
            let lab = &lab;
            async move {
                let mut c = lab.control(alive).await?;
                write_label(&mut c, TARGET, "quorum-back-2", "1", Duration::from_secs(3))
                    .await
                    .map_err(|s| anyhow!(describe(&s)))
            }
        },
    )
    .await?;
    let labels = node_labels(&mut lab.control(followers[1]).await?, TARGET, CALL_TIMEOUT)
        .await
        .map_err(|s| anyhow!(describe(&s)))?;
    for key in ["before", "quorum-back", "via-follower", "quorum-back-2"] {
        assert!(labels.contains_key(key), "{key} missing: {labels:?}");
    }
    lab.passed();
    Ok(())
}

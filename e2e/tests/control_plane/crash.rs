//! Kill -9 every manager during a stream of writes: no acknowledged write is lost.

use super::TARGET;
use anyhow::{Context, Result, anyhow, ensure};
use e2e::client::{describe, node_labels, write_label};
use e2e::lab::CONVERGE_TIMEOUT;
use e2e::{Lab, Tuning, eventually};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_write_survives_killing_all_managers() -> Result<()> {
    let mut lab = Lab::cluster("crash-all", 3, Tuning::fast()).await?;
    const WRITERS: usize = 8;

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        // Writers talk to every manager: leader and followers (forwarded writes).
        let mut control = lab.control(w % 3).await?;
        let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (key, value) = (format!("w-{w}-{n}"), format!("{n}"));
                n += 1;
                match write_label(&mut control, TARGET, &key, &value, Duration::from_secs(3)).await
                {
                    Ok(node) => {
                        assert_eq!(
                            node.labels.get(&key),
                            Some(&value),
                            "the acknowledged node lacks {key}"
                        );
                        acked.lock().unwrap().push((key, value));
                    }
                    Err(status) => {
                        failed.lock().unwrap().push(describe(&status));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    // Let the writes flow, then kill all three as close together as we can.
    let flowing = eventually(
        "writes to flow",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let acked = acked.clone();
            async move {
                let n = acked.lock().unwrap().len();
                ensure!(n >= 100, "{n} writes acknowledged so far");
                Ok(n)
            }
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_kill = acked.lock().unwrap().len();
    for i in 0..3 {
        lab.kill_9(i)?;
    }
    let at_kill = acked.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .context("a writer did not stop")??;
    }
    let acked = acked.lock().unwrap().clone();
    let failed = failed.lock().unwrap().clone();
    println!(
        "acknowledged {} writes ({flowing} when flowing, {before_kill} just before the kill, {at_kill} right after), {} failed; first failure: {:?}",
        acked.len(),
        failed.len(),
        failed.first()
    );
    ensure!(
        acked.len() >= 50,
        "too few writes were acknowledged to prove anything"
    );

    // Restart all three: every acknowledged write is there, on every manager.
    for i in 0..3 {
        lab.restart(i)?;
    }
    let leader = lab.wait_leader(CONVERGE_TIMEOUT).await?;
    println!("after restarting all: leader {}", lab.hostname(leader));
    for i in 0..3 {
        let lab = &lab;
        let labels = eventually(
            &format!("a read on {}", lab.hostname(i)),
            CONVERGE_TIMEOUT,
            Duration::from_millis(100),
            || async move {
                node_labels(&mut lab.control(i).await?, TARGET, Duration::from_secs(5))
                    .await
                    .map_err(|s| anyhow!("{}", describe(&s)))
            },
        )
        .await?;
        let missing: Vec<&String> = acked
            .iter()
            .filter(|(k, v)| labels.get(k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged writes are missing on {}: {:?}",
            missing.len(),
            acked.len(),
            lab.hostname(i),
            &missing[..missing.len().min(20)]
        );
    }
    lab.passed();
    Ok(())
}

use e2e::client::write_label;
use e2e::writes::first_accepted_write;
use e2e::{Lab, Tuning};
use std::time::{Duration, Instant};
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_failover_timeline() {
    let mut lab = Lab::cluster("probe", 3, Tuning::default()).await.unwrap();
    let leader = lab.wait_leader(Duration::from_secs(30)).await.unwrap();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let mut clients = Vec::new();
    for &s in &survivors {
        let mut c = lab.control(s).await.unwrap();
        write_label(&mut c, "m1", "warm", "1", Duration::from_secs(5)).await.unwrap();
        clients.push(c);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let wall = std::time::SystemTime::now();
    let t0 = Instant::now();
    lab.kill_9(leader).unwrap();
    let (el, by) = first_accepted_write(clients, "m1", "fo", "1", Duration::from_millis(200), t0, Duration::from_secs(10)).await.unwrap();
    println!("KILL at {:?} (unix), leader {}, accepted by {} after {el:?}", wall.duration_since(std::time::UNIX_EPOCH).unwrap(), lab.hostname(leader), lab.hostname(survivors[by]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for &s in &survivors {
        println!("==== {} ====\n{}", lab.hostname(s), lab.managers[s].stderr_tail(60));
    }
    lab.passed();
}

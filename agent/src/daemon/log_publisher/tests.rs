use super::*;
use crate::runtime::ContainerSpec;
use crate::runtime::fake::FakeRuntime;
use std::sync::Mutex;

/// A sink that records every batch, or refuses at once.
#[derive(Default)]
struct Recorder {
    batches: Arc<Mutex<Vec<PublishLogsMessage>>>,
    refuse: bool,
}

impl LogSink for Recorder {
    fn publish(
        &self,
        mut batches: mpsc::Receiver<PublishLogsMessage>,
    ) -> Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send + 'static>> {
        let seen = self.batches.clone();
        let refuse = self.refuse;
        Box::pin(async move {
            if refuse {
                return Err(tonic::Status::not_found("gone"));
            }
            while let Some(b) = batches.recv().await {
                seen.lock().unwrap().push(b);
            }
            Ok(())
        })
    }
}

async fn runtime_with_logs(tasks: &[(&str, usize)]) -> FakeRuntime {
    let rt = FakeRuntime::new();
    for (id, n) in tasks {
        let spec = ContainerSpec {
            id: (*id).into(),
            args: vec!["x".into()],
            ..Default::default()
        };
        rt.run(&spec).await.unwrap();
        for i in 0..*n {
            let stream = if i % 2 == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            rt.push_log(id, stream, &format!("{id} line {i}"));
        }
    }
    rt
}

fn subscription(id: &str, tasks: &[&str], tail: Option<u64>) -> LogSubscription {
    LogSubscription {
        id: id.into(),
        task_ids: tasks.iter().map(|t| t.to_string()).collect(),
        follow: false,
        tail,
        since_unix_nanos: None,
    }
}

async fn until_idle(publisher: &Publisher) {
    for _ in 0..500 {
        if publisher.active() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the publisher did not finish");
}

#[tokio::test]
async fn publishes_the_tail_of_each_task_then_closes() {
    let rt = runtime_with_logs(&[("t1", 5), ("t2", 1)]).await;
    let sink = Recorder::default();
    let batches = sink.batches.clone();
    let mut publisher = Publisher::new(Arc::new(rt), Arc::new(sink));
    // "t3" has no container on this node: skipped.
    publisher.apply(vec![subscription("s1", &["t1", "t2", "t3"], Some(2))], &[]);
    until_idle(&publisher).await;
    let batches = batches.lock().unwrap();
    let last = batches.last().unwrap();
    assert!(last.close && last.messages.is_empty(), "ends with a close");
    assert!(batches.iter().all(|b| b.subscription_id == "s1"));
    let lines: Vec<(String, String, String)> = batches
        .iter()
        .flat_map(|b| &b.messages)
        .map(|m| {
            (
                m.task_id.clone(),
                m.stream.clone(),
                String::from_utf8(m.line.clone()).unwrap(),
            )
        })
        .collect();
    let of = |task: &str| -> Vec<(String, String)> {
        lines
            .iter()
            .filter(|l| l.0 == task)
            .map(|l| (l.1.clone(), l.2.clone()))
            .collect()
    };
    assert_eq!(
        of("t1"),
        [
            ("stderr".to_string(), "t1 line 3".to_string()),
            ("stdout".to_string(), "t1 line 4".to_string())
        ]
    );
    assert_eq!(of("t2"), [("stdout".to_string(), "t2 line 0".to_string())]);
    assert!(lines.iter().all(|l| l.0 != "t3"));
    assert!(
        batches
            .iter()
            .flat_map(|b| &b.messages)
            .all(|m| m.timestamp_unix_nanos > 0)
    );
}

#[tokio::test]
async fn big_logs_go_in_bounded_batches() {
    let rt = runtime_with_logs(&[("t1", 2000)]).await;
    let sink = Recorder::default();
    let batches = sink.batches.clone();
    let mut publisher = Publisher::new(Arc::new(rt), Arc::new(sink));
    publisher.apply(vec![subscription("s1", &["t1"], None)], &[]);
    until_idle(&publisher).await;
    let batches = batches.lock().unwrap();
    let total: usize = batches.iter().map(|b| b.messages.len()).sum();
    assert_eq!(total, 2000);
    assert!(batches.len() >= 4, "{} batches", batches.len());
    assert!(batches.iter().all(|b| b.messages.len() <= BATCH_LINES));
}

#[tokio::test]
async fn since_drops_older_lines() {
    let rt = runtime_with_logs(&[("t1", 3)]).await;
    let sink = Recorder::default();
    let batches = sink.batches.clone();
    let mut publisher = Publisher::new(Arc::new(rt), Arc::new(sink));
    let mut sub = subscription("s1", &["t1"], None);
    sub.since_unix_nanos = Some(i64::MAX);
    publisher.apply(vec![sub], &[]);
    until_idle(&publisher).await;
    let batches = batches.lock().unwrap();
    assert_eq!(batches.iter().map(|b| b.messages.len()).sum::<usize>(), 0);
    assert!(batches.last().unwrap().close);
}

#[tokio::test]
async fn a_refusing_manager_stops_the_subscription() {
    let rt = runtime_with_logs(&[("t1", 3)]).await;
    let sink = Recorder {
        refuse: true,
        ..Default::default()
    };
    let mut publisher = Publisher::new(Arc::new(rt), Arc::new(sink));
    let mut sub = subscription("s1", &["t1"], None);
    sub.follow = true;
    publisher.apply(vec![sub], &[]);
    until_idle(&publisher).await;
}

/// A source whose logs never end (a container that runs and prints nothing).
struct Silent;

impl LogSource for Silent {
    fn open(
        &self,
        _task_id: &str,
        _tail: Option<usize>,
        _follow: bool,
    ) -> Pin<Box<dyn Future<Output = Result<LogStream, RuntimeError>> + Send + '_>> {
        Box::pin(async {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move { tx.closed().await });
            Ok(rx)
        })
    }
}

#[tokio::test]
async fn cancelling_or_dropping_stops_followers() {
    let mut publisher = Publisher::new(Arc::new(Silent), Arc::new(Recorder::default()));
    let mut a = subscription("a", &["t1"], None);
    a.follow = true;
    let mut b = a.clone();
    b.id = "b".into();
    publisher.apply(vec![a.clone(), b], &[]);
    // The same id again (new tasks of a followed service): one more part.
    publisher.apply(vec![a], &[]);
    assert_eq!(publisher.active(), 3);
    // Cancelling stops every part of the subscription.
    publisher.apply(vec![], &["a".to_string()]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(publisher.active(), 1);
    let handles: Vec<_> = publisher
        .running
        .values()
        .flatten()
        .map(|t| t.abort_handle())
        .collect();
    drop(publisher);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(handles.iter().all(|h| h.is_finished()));
}

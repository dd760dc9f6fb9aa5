use super::*;
use std::time::Duration;

fn task(id: &str, node: &str) -> TaskContext {
    TaskContext {
        task_id: id.into(),
        service_id: "svc".into(),
        service_name: "web".into(),
        slot: 1,
        node_id: node.into(),
        node_hostname: format!("host-{node}"),
    }
}

fn line(task_id: &str, text: &str) -> pb::LogMessage {
    pb::LogMessage { task_id: task_id.into(), stream: "stdout".into(), line: text.as_bytes().to_vec(), ..Default::default() }
}

fn publish(sub: &str, lines: Vec<pb::LogMessage>, close: bool) -> pb::PublishLogsMessage {
    pb::PublishLogsMessage { subscription_id: sub.into(), messages: lines, close }
}

async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), sub.next()).await.expect("a delivery")
}

#[tokio::test]
async fn routes_subscriptions_to_the_nodes_holding_the_tasks() {
    let broker = Arc::new(LogBroker::default());
    let a = broker.attach("a");
    let b = broker.attach("b");
    let c = broker.attach("c");
    let sub = broker.subscribe(vec![task("t1", "a"), task("t2", "a"), task("t3", "b")], LogOptions {
        follow: false,
        tail: Some(5),
        ..Default::default()
    });
    let sub = sub.unwrap();
    a.changed().await;
    let to_a = a.take();
    assert_eq!(to_a.subscribe.len(), 1);
    assert_eq!(to_a.subscribe[0].id, sub.id());
    assert_eq!(to_a.subscribe[0].task_ids, ["t1", "t2"]);
    assert_eq!(to_a.subscribe[0].tail, Some(5));
    assert_eq!(b.take().subscribe[0].task_ids, ["t3"]);
    assert!(c.take().is_empty(), "a node without tasks of the subscription hears nothing");
    assert!(a.take().is_empty(), "taking empties the queue");
}

#[tokio::test]
async fn lines_reach_the_reader_with_context_and_the_stream_ends_when_every_node_closed() {
    let broker = Arc::new(LogBroker::default());
    let _a = broker.attach("a");
    let _b = broker.attach("b");
    let mut sub = broker.subscribe(vec![task("t1", "a"), task("t2", "b")], LogOptions::default()).unwrap();
    let id = sub.id().to_string();
    broker.publish("a", publish(&id, vec![line("t1", "hello")], true)).await.unwrap();
    let Delivery::Lines(lines) = next(&mut sub).await else { panic!("lines expected") };
    assert_eq!(lines[0].line, b"hello");
    assert_eq!(lines[0].node_id, "a");
    assert_eq!(lines[0].node_hostname, "host-a");
    assert_eq!((lines[0].service_name.as_str(), lines[0].slot), ("web", 1));
    assert_eq!(sub.open_nodes(), ["host-b"]);
    // A closed part takes no more lines.
    let err = broker.publish("a", publish(&id, vec![line("t1", "late")], false)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    broker.publish("b", publish(&id, vec![line("t2", "bye")], false)).await.unwrap();
    broker.publish("b", publish(&id, vec![], true)).await.unwrap();
    assert!(matches!(next(&mut sub).await, Delivery::Lines(l) if l[0].line == b"bye"));
    assert_eq!(next(&mut sub).await, Delivery::End);
}

#[tokio::test]
async fn nodes_cannot_publish_lines_of_tasks_they_were_not_asked_for() {
    let broker = Arc::new(LogBroker::default());
    let _a = broker.attach("a");
    let _b = broker.attach("b");
    let mut sub = broker.subscribe(vec![task("t1", "a"), task("t2", "b")], LogOptions::default()).unwrap();
    let id = sub.id().to_string();
    // b is part of the subscription, but t1 is a's task; c is not part of it at all.
    broker.publish("b", publish(&id, vec![line("t1", "forged"), line("t2", "mine")], false)).await.unwrap();
    assert_eq!(broker.publish("c", publish(&id, vec![line("t1", "x")], false)).await.unwrap_err().code(), tonic::Code::NotFound);
    let Delivery::Lines(lines) = next(&mut sub).await else { panic!("lines expected") };
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].line, b"mine");
    let unknown = broker.publish("a", publish("nope", vec![], true)).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn a_node_without_session_is_skipped_with_a_warning() {
    let broker = Arc::new(LogBroker::default());
    let _a = broker.attach("a");
    let mut sub = broker.subscribe(vec![task("t1", "a"), task("t2", "down"), task("t3", "down")], LogOptions::default()).unwrap();
    let Delivery::Warnings(w) = next(&mut sub).await else { panic!("warning expected") };
    assert_eq!(w, ["node host-down is not connected: the logs of its 2 tasks are missing"]);
    broker.publish("a", publish(sub.id(), vec![], true)).await.unwrap();
    assert_eq!(next(&mut sub).await, Delivery::End);

    let mut nobody = broker.subscribe(vec![task("t9", "down")], LogOptions::default()).unwrap();
    assert!(matches!(next(&mut nobody).await, Delivery::Warnings(_)));
    assert_eq!(next(&mut nobody).await, Delivery::End, "nothing to wait for: ends at once");
}

#[tokio::test]
async fn a_session_ending_fails_its_parts_instead_of_hanging() {
    let broker = Arc::new(LogBroker::default());
    let a = broker.attach("a");
    let _b = broker.attach("b");
    let mut sub = broker.subscribe(vec![task("t1", "a"), task("t2", "b")], LogOptions::default()).unwrap();
    broker.publish("b", publish(sub.id(), vec![], true)).await.unwrap();
    drop(a);
    let Delivery::Warnings(w) = next(&mut sub).await else { panic!("warning expected") };
    assert!(w[0].contains("node host-a disconnected"), "{w:?}");
    assert_eq!(next(&mut sub).await, Delivery::End);
}

#[tokio::test]
async fn a_newer_session_replaces_the_old_one_without_being_detached_by_it() {
    let broker = Arc::new(LogBroker::default());
    let old = broker.attach("a");
    let new = broker.attach("a");
    drop(old);
    let _sub = broker.subscribe(vec![task("t1", "a")], LogOptions::default()).unwrap();
    assert_eq!(new.take().subscribe.len(), 1, "the newer session still receives subscriptions");
}

#[tokio::test]
async fn dropping_the_reader_cancels_on_the_agents() {
    let broker = Arc::new(LogBroker::default());
    let a = broker.attach("a");
    let b = broker.attach("b");
    let sub = broker.subscribe(vec![task("t1", "a"), task("t2", "b")], LogOptions { follow: true, ..Default::default() }).unwrap();
    let id = sub.id().to_string();
    assert_eq!(a.take().subscribe.len(), 1, "a's agent was told");
    drop(sub);
    assert_eq!(broker.subscription_count(), 0);
    assert_eq!(a.take(), SessionUpdate { subscribe: vec![], cancel: vec![id.clone()] });
    // b's agent never heard of it: the queued subscription is withdrawn instead.
    assert!(b.take().is_empty());
    let err = broker.publish("a", publish(&id, vec![line("t1", "x")], false)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "the agent learns it is gone");
}

#[tokio::test]
async fn a_slow_reader_holds_publishers_back_and_leaving_releases_them() {
    let broker = Arc::new(LogBroker::default());
    let _a = broker.attach("a");
    let sub = broker.subscribe(vec![task("t1", "a")], LogOptions { follow: true, ..Default::default() }).unwrap();
    let id = sub.id().to_string();
    for _ in 0..READER_BUFFER {
        broker.publish("a", publish(&id, vec![line("t1", "x")], false)).await.unwrap();
    }
    let blocked = broker.publish("a", publish(&id, vec![line("t1", "x")], false));
    tokio::pin!(blocked);
    assert!(tokio::time::timeout(Duration::from_millis(50), &mut blocked).await.is_err(), "the buffer is bounded");
    drop(sub);
    let result = tokio::time::timeout(Duration::from_secs(5), blocked).await.expect("released");
    assert_eq!(result.unwrap_err().code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn the_number_of_subscriptions_is_bounded() {
    let broker = Arc::new(LogBroker::default());
    let mut kept = Vec::new();
    for _ in 0..MAX_SUBSCRIPTIONS {
        kept.push(broker.subscribe(vec![], LogOptions::default()).unwrap());
    }
    let err = broker.subscribe(vec![], LogOptions::default()).err().expect("refused");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    kept.pop();
    assert!(broker.subscribe(vec![], LogOptions::default()).is_ok());
}

#[tokio::test]
async fn an_open_ended_subscription_takes_new_tasks_and_outlives_its_parts() {
    let broker = Arc::new(LogBroker::default());
    let a = broker.attach("a");
    let b = broker.attach("b");
    let options = LogOptions { follow: true, tail: Some(0), open_ended: true, ..Default::default() };
    let mut sub = broker.subscribe(vec![task("t1", "a")], options).unwrap();
    let id = sub.id().to_string();
    assert_eq!(a.take().subscribe[0].tail, Some(0));
    // t1 ends: the subscription stays open, waiting for new tasks.
    broker.publish("a", publish(&id, vec![line("t1", "bye")], true)).await.unwrap();
    assert!(matches!(next(&mut sub).await, Delivery::Lines(_)));
    assert!(tokio::time::timeout(Duration::from_millis(50), sub.next()).await.is_err(), "still open");
    // A replacement starts on a and a new replica on b; t1 is known and not asked for again.
    sub.add_tasks(vec![task("t1", "a"), task("t2", "a"), task("t3", "b")]);
    let to_a = a.take().subscribe;
    assert_eq!(to_a.len(), 1);
    assert_eq!((to_a[0].id.as_str(), to_a[0].task_ids.as_slice(), to_a[0].tail), (id.as_str(), &["t2".to_string()][..], None));
    assert_eq!(b.take().subscribe[0].task_ids, ["t3"]);
    broker.publish("a", publish(&id, vec![line("t2", "new")], false)).await.unwrap();
    let Delivery::Lines(lines) = next(&mut sub).await else { panic!("lines expected") };
    assert_eq!(lines[0].line, b"new");
    drop(sub);
    assert_eq!(a.take().cancel, std::slice::from_ref(&id));
    assert_eq!(b.take().cancel, [id]);
}

#[tokio::test]
async fn a_node_with_two_parts_stays_open_until_both_closed() {
    let broker = Arc::new(LogBroker::default());
    let _a = broker.attach("a");
    let options = LogOptions { follow: true, open_ended: true, ..Default::default() };
    let mut sub = broker.subscribe(vec![task("t1", "a")], options).unwrap();
    let id = sub.id().to_string();
    sub.add_tasks(vec![task("t2", "a")]);
    broker.publish("a", publish(&id, vec![], true)).await.unwrap();
    // The second part may still publish.
    broker.publish("a", publish(&id, vec![line("t2", "still here")], false)).await.unwrap();
    assert!(matches!(next(&mut sub).await, Delivery::Lines(l) if l[0].line == b"still here"));
    broker.publish("a", publish(&id, vec![], true)).await.unwrap();
    assert_eq!(broker.publish("a", publish(&id, vec![], false)).await.unwrap_err().code(), tonic::Code::NotFound);
}

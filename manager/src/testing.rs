//! Test helpers: a real single-manager cluster in this process (temp data dir, free port,
//! default Raft tuning), with admin credentials for gRPC clients.

use crate::api::dispatcher::DispatcherTiming;
use crate::consensus::Consensus;
use crate::daemon::{self, Placement, RunningManager, StartOptions};
use crate::raft::RaftTuning;
use crate::store::{Availability, Change, Meta, Node, NodeResources, NodeRole, NodeState, Object, Op, Store};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

pub struct TestManager {
    pub running: RunningManager,
    pub addr: String,
    pub dir: tempfile::TempDir,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl TestManager {
    /// Initialises a new one-manager cluster.
    pub async fn start() -> TestManager {
        Self::start_with(DispatcherTiming::default()).await
    }

    /// Initialises a new one-manager cluster with these heartbeat timings.
    pub async fn start_with(dispatcher: DispatcherTiming) -> TestManager {
        identity::install_crypto_provider();
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let options = StartOptions {
            data_dir: dir.path().join("manager"),
            tuning: RaftTuning::default(),
            quorum_timeout: Duration::from_secs(5),
            dispatcher,
            insecure_registries: Vec::new(),
        };
        let placement = Placement { listen_addr: addr.clone(), advertise_addr: None, hostname: Some("m1".into()) };
        let running = daemon::init(&options, &placement).await.unwrap();
        TestManager { running, addr, dir }
    }

    pub fn consensus(&self) -> &Consensus {
        &self.running.consensus
    }

    /// An mTLS channel with the admin certificate `init` wrote.
    pub async fn admin_channel(&self) -> Channel {
        let admin = identity::AdminConfig::load(&self.dir.path().join("manager/admin.json")).unwrap();
        identity::connect(&self.addr, &admin.credentials).await.unwrap()
    }

    /// Creates a READY, active worker node record directly in the store; returns its id.
    pub async fn add_worker(&self, hostname: &str) -> String {
        let id = format!("{:016x}", rand::random::<u64>() | 1);
        let node = Node {
            meta: Meta { id: id.clone(), ..Meta::default() },
            hostname: hostname.into(),
            role: NodeRole::Worker,
            availability: Availability::Active,
            labels: BTreeMap::new(),
            addr: "127.0.0.1".into(),
            state: NodeState::Ready,
            resources: NodeResources::default(),
        };
        self.consensus().write(Op::Batch(vec![Change::Create(Object::Node(node))])).await.unwrap();
        id
    }

    /// Waits (at most `limit`) until `check` holds on the local store; panics with `what` otherwise.
    pub async fn wait_for(&self, what: &str, limit: Duration, check: impl Fn(&Store) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if check(&self.consensus().state.read()) {
                return;
            }
            if Instant::now() >= deadline {
                let store = self.consensus().state.read();
                let tasks: Vec<_> = store
                    .tasks
                    .values()
                    .map(|t| (&t.meta.id, t.status.state, t.desired_state, &t.node_id, &t.status.message))
                    .collect();
                let nodes: Vec<_> = store.nodes.values().map(|n| (&n.meta.id, n.role, n.state)).collect();
                panic!("timed out waiting for {what}; tasks: {tasks:#?}; nodes: {nodes:#?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

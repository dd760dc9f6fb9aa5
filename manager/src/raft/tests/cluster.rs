//! A 3-node cluster in one process, on the real storage. The network is a TEST DOUBLE: an
//! in-memory router that calls the other nodes' `Raft` directly, though through the server-side
//! transport functions and postcard (so the encoding is exercised; TLS and tonic are not).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::de::DeserializeOwned;

use super::super::{Raft, RaftTuning, StateHandle, TypeConfig, Watched, open_storage, transport};
use super::{bootstrap_command, create_secret};
use crate::store::Response;

#[derive(Default)]
struct Nodes {
    rafts: BTreeMap<u64, Raft>,
    /// Nodes cut off from everyone.
    isolated: BTreeSet<u64>,
}

/// The test double for the network (see the module doc).
#[derive(Clone)]
struct Router {
    from: u64,
    nodes: Arc<Mutex<Nodes>>,
}

struct Conn {
    from: u64,
    target: u64,
    nodes: Arc<Mutex<Nodes>>,
}

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

impl Conn {
    fn raft(&self) -> Result<Raft, String> {
        let nodes = self.nodes.lock().unwrap();
        if nodes.isolated.contains(&self.from) || nodes.isolated.contains(&self.target) {
            return Err(format!("{} -> {}: isolated", self.from, self.target));
        }
        nodes.rafts.get(&self.target).cloned().ok_or_else(|| format!("node {} is down", self.target))
    }

    #[allow(clippy::result_large_err)]
    fn decode<Resp: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        reply: Result<Vec<u8>, tonic::Status>,
    ) -> RpcResult<Resp, E> {
        let bytes = reply.map_err(|s| RPCError::Network(NetworkError::from(AnyError::error(s))))?;
        let result: Result<Resp, RaftError<u64, E>> =
            transport::decode(&bytes).map_err(|s| RPCError::Network(NetworkError::from(AnyError::error(s))))?;
        result.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }
}

fn unreachable<E: std::error::Error>(message: String) -> RPCError<u64, BasicNode, E> {
    RPCError::Unreachable(Unreachable::from(AnyError::error(message)))
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Conn;
    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Conn {
        Conn { from: self.from, target, nodes: self.nodes.clone() }
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        let raft = self.raft().map_err(unreachable)?;
        let request = transport::encode(&rpc).map_err(|s| unreachable(s.to_string()))?;
        let reply = transport::append_entries(&raft, &request).await;
        self.decode(reply)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        let raft = self.raft().map_err(unreachable)?;
        let request = transport::encode(&rpc).map_err(|s| unreachable(s.to_string()))?;
        let reply = transport::install_snapshot(&raft, &request).await;
        self.decode(reply)
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, _option: RPCOption) -> RpcResult<VoteResponse<u64>> {
        let raft = self.raft().map_err(unreachable)?;
        let request = transport::encode(&rpc).map_err(|s| unreachable(s.to_string()))?;
        let reply = transport::vote(&raft, &request).await;
        self.decode(reply)
    }
}

fn tuning() -> RaftTuning {
    RaftTuning { snapshot_logs: 20, max_logs_kept_after_snapshot: 5, ..RaftTuning::default() }
}

async fn start_node(id: u64, dir: &Path, nodes: &Arc<Mutex<Nodes>>) -> (Raft, StateHandle) {
    // A just-shut-down node may still be closing its log: retry the open briefly.
    let mut attempt = 0;
    let (log, sm, handle) = loop {
        match open_storage(dir).await {
            Ok(storage) => break storage,
            Err(e) if attempt < 50 => {
                attempt += 1;
                tracing::debug!("reopen {id}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot reopen node {id}: {e}"),
        }
    };
    let router = Router { from: id, nodes: nodes.clone() };
    let raft = Raft::new(id, tuning().config().unwrap(), router, log, sm).await.unwrap();
    nodes.lock().unwrap().rafts.insert(id, raft.clone());
    (raft, handle)
}

async fn wait_applied(handle: &StateHandle, index: u64, what: &str) {
    tokio::time::timeout(Duration::from_secs(5), handle.wait_applied(index))
        .await
        .unwrap_or_else(|_| panic!("{what}: index {index} not applied in time (at {})", handle.applied_index()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_snapshot_and_catch_up() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = Arc::new(Mutex::new(Nodes::default()));
    let mut handles = BTreeMap::new();
    let mut rafts = BTreeMap::new();
    for id in 1..=3u64 {
        let (raft, handle) = start_node(id, dirs[id as usize - 1].path(), &nodes).await;
        rafts.insert(id, raft);
        handles.insert(id, handle);
    }
    let members: BTreeMap<u64, BasicNode> =
        (1..=3u64).map(|id| (id, BasicNode { addr: format!("node-{id}") })).collect();
    rafts[&1].initialize(members).await.unwrap();
    let metrics = rafts[&1]
        .wait(Some(Duration::from_secs(5)))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .unwrap();
    let leader_id = metrics.current_leader.unwrap();
    let leader = rafts[&leader_id].clone();
    for bad in [&b""[..], &[0xff; 9][..]] {
        let status = transport::append_entries(&leader, bad).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(transport::vote(&leader, bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);
        let status = transport::install_snapshot(&leader, bad).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }

    // Writes replicate and apply everywhere.
    let written = leader.client_write(bootstrap_command("c1").into()).await.unwrap();
    assert_eq!(written.data, Response::Ok);
    for (id, handle) in &handles {
        wait_applied(handle, written.log_id.index, &format!("node {id}")).await;
        assert!(handle.read().settings.is_some());
    }

    // Cut a follower off; enough writes for snapshots and a purge past its log.
    let lagging = *rafts.keys().find(|id| **id != leader_id).unwrap();
    let mut lagging_watch = handles[&lagging].subscribe();
    nodes.lock().unwrap().isolated.insert(lagging);
    let lagging_last = handles[&lagging].applied_index();
    let mut last = 0;
    for i in 0..60 {
        last = leader.client_write(create_secret(&format!("s{i}")).into()).await.unwrap().log_id.index;
    }
    let metrics = leader
        .wait(Some(Duration::from_secs(5)))
        .metrics(|m| m.purged.is_some_and(|p| p.index > lagging_last), "log purged past the lagging node")
        .await
        .unwrap();
    assert!(metrics.snapshot.is_some_and(|s| s.index >= 40), "snapshot: {:?}", metrics.snapshot);
    assert_eq!(handles[&lagging].applied_index(), lagging_last);

    // Reconnected, it can only catch up through the snapshot.
    nodes.lock().unwrap().isolated.clear();
    wait_applied(&handles[&lagging], last, "lagging node").await;
    assert_eq!(*handles[&lagging].read(), *handles[&leader_id].read());
    assert_eq!(handles[&lagging].read().secrets.len(), 60);
    let mut saw_reset = false;
    while let Ok(item) = lagging_watch.try_recv() {
        saw_reset |= matches!(item, Watched::Reset { .. });
    }
    assert!(saw_reset, "the lagging node installed a snapshot");
    let lagging_metrics = rafts[&lagging].metrics().borrow().clone();
    assert!(lagging_metrics.snapshot.is_some(), "lagging node has a snapshot");

    // Restart every node: the state comes back (snapshot + committed entries re-applied) and
    // the cluster elects a leader and takes writes again.
    let expected = handles[&leader_id].read().clone();
    for raft in rafts.values() {
        raft.shutdown().await.unwrap();
    }
    nodes.lock().unwrap().rafts.clear();
    drop(rafts);
    drop(leader);
    let mut rafts = BTreeMap::new();
    for id in 1..=3u64 {
        let (raft, handle) = start_node(id, dirs[id as usize - 1].path(), &nodes).await;
        wait_applied(&handle, last, &format!("restarted node {id}")).await;
        assert_eq!(*handle.read(), expected, "node {id} after restart");
        rafts.insert(id, raft);
    }
    // Elections may still be settling: follow not-the-leader answers for a while.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let written = loop {
        let leader = rafts[&1].current_leader().await.unwrap_or(1);
        match rafts[&leader].client_write(create_secret("after-restart").into()).await {
            Ok(written) => break written,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("write after restart: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no write accepted after the restart: {e}"),
        }
    };
    assert!(written.log_id.index > last);
    for raft in rafts.values() {
        raft.shutdown().await.unwrap();
    }
}

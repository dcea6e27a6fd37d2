//! Replication, anti-entropy and failure detection between nodes (DESIGN.md
//! "Write path" steps 3–4, "Applying writes", "Read path" step 2, "Gossip,
//! anti-entropy, failure detection").
//!
//! - **Push**: one [`stream`] per peer of the shard: a persistent connection
//!   carrying binary batches of durable records from the node's own
//!   per-origin log (the send queue), several batches in flight, each
//!   acknowledged with the peer's applied clock. Over a transport that cannot
//!   stream (Mycelium, the simulator) the `replicator` pushes batches as
//!   requests instead, one in flight per peer.
//! - **Anti-entropy**: every [`ANTI_ENTROPY_INTERVAL`] each replica sends its
//!   `applied` clock to every peer of its shard and gets back what it lacks
//!   from the peer's logs — records of *every* origin, so writes reach every
//!   replica even if their origin died after reaching only one. A replica too
//!   far behind for the logs (they were compacted) fetches a snapshot.
//! - **Pull**: a held-back request runs the same exchange at once.
//! - **Compaction** (`compaction`): log entries every replica applied are
//!   dropped; tombstones go once every replica applied them and every write
//!   concurrent with them.
//! - **Failure detector** ([`detector`]): heartbeats to every node of the
//!   view every [`HEARTBEAT_INTERVAL`]; any answer counts as a sign of life.
//!   Heartbeats and their answers carry the view's id: a peer running
//!   another view at the same epoch is a conflict ([`conflict`]).
//! - Receiving is transport-agnostic (`Gossip::handle_*`); a [`Transport`]
//!   only moves messages: [`HttpTransport`] (the `/internal/...` endpoints
//!   feed the handlers) or [`MyceliumTransport`] (its own receive loop
//!   feeds them, see [`mycelium`]).
//!
//! Invariants: a record leaves its origin only once durable; a replica
//! acknowledges only what it has applied (and, with `DURABILITY=fsync`,
//! flushed); per-origin seq order is enforced by the store.

pub mod auth;
mod compaction;
pub mod conflict;
pub mod detector;
pub mod dispatch;
mod http;
mod messages;
pub mod mycelium;
pub mod refusals;
mod replicator;
pub mod stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use auth::Auth;
pub use conflict::ViewConflicts;
pub use detector::FailureDetector;
pub use http::{FROM_HEADER, HttpTransport};
pub use messages::{
    Heartbeat, HeartbeatAck, Message, PullRequest, PullResponse, ReplicateAck, ReplicateBatch, SnapshotPage, SnapshotRequest,
};
pub use mycelium::{MyceliumConfig, MyceliumTransport};

use crate::causal::Clock;
use crate::metrics::Metrics;
use crate::shard::{ShardMap, View, ViewStamp};
use crate::store::{Store, StoreError};

/// Most records in one replication batch or pull answer.
pub const MAX_BATCH_RECORDS: usize = 1024;
/// Most bytes of values and keys in one batch, pull answer or snapshot page
/// (at least one record always goes, whatever its size).
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Records per snapshot page.
pub const SNAPSHOT_PAGE: usize = 1024;
/// Idle replicators re-probe peers this often.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// First retry delay after a failed push; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest retry delay: a returning peer is caught up within this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Time limit of one replication request.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(3);
/// Anti-entropy period (DESIGN.md: 200 ms).
pub const ANTI_ENTROPY_INTERVAL: Duration = Duration::from_millis(200);
/// Time limit of one anti-entropy exchange or snapshot page.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);
/// Heartbeat period (DESIGN.md: 200 ms, suspect after 1 s).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);
/// Time limit of one heartbeat.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(500);
/// How often compaction runs.
pub const COMPACTION_INTERVAL: Duration = Duration::from_secs(2);
/// Most entries kept per origin in the log when a replica stays behind (it
/// then needs a snapshot): bounds the disk a long outage can cost.
pub const MAX_LOG_ENTRIES: u64 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable { peer: String, reason: String },
    #[error("peer {peer} answered {status}")]
    Rejected { peer: String, status: u16 },
    #[error("the answer of {peer} failed authentication: {reason}")]
    Unauthentic { peer: String, reason: String },
    #[error("{0}")]
    Refused(String),
    #[error("wrong epoch: ours {ours}, theirs {theirs}")]
    WrongEpoch { ours: u64, theirs: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Where a transport that receives by itself (not through the node's HTTP
/// endpoints) hands what arrives.
pub trait Inbound: Send + Sync + 'static {
    /// Handles one message from an authenticated `sender` (the node's one
    /// dispatcher, `Node::dispatch`).
    fn dispatch<'a>(&'a self, sender: &'a str, kind: Message, body: &'a [u8]) -> BoxFuture<'a, Result<Box<RawValue>, dispatch::Refusal>>;
    /// The nodes whose messages are accepted: the view's, and during a view
    /// change those of the proposed view too.
    fn members(&self) -> Vec<String>;
}

/// Moves internal messages to a peer and returns its answer: one `call`
/// per message, whatever the kind. The typed calls (`replicate`, `pull`,
/// ...) are on `dyn Transport` and serialise once each way.
pub trait Transport: Send + Sync + 'static {
    /// Sends `body` (the message's JSON) to `peer` and returns the JSON of
    /// its answer, within `timeout`.
    fn call<'a>(
        &'a self,
        peer: &'a str,
        kind: Message,
        body: Box<RawValue>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>, GossipError>>;
    /// Opens a replication stream to `peer` ([`stream`]); `None` when this
    /// transport cannot stream (the replicator then pushes requests).
    fn open_stream<'a>(&'a self, peer: &'a str) -> BoxFuture<'a, Result<Option<stream::StreamConn>, GossipError>> {
        let _ = peer;
        Box::pin(std::future::ready(Ok(None)))
    }
    /// Starts the transport's own receiving, if it has any, as a task that
    /// ends when `shutdown` turns true. The HTTP transport has none: the
    /// `/internal/...` endpoints receive for it.
    fn start_receiving(self: Arc<Self>, inbound: Arc<dyn Inbound>, shutdown: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
        let _ = (inbound, shutdown);
        None
    }
}

impl dyn Transport {
    async fn typed<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        peer: &str,
        kind: Message,
        msg: &T,
        timeout: Duration,
    ) -> Result<R, GossipError> {
        let unreachable = |reason: String| GossipError::Unreachable { peer: peer.to_owned(), reason };
        let body = serde_json::value::to_raw_value(msg).map_err(|e| unreachable(e.to_string()))?;
        let answer = self.call(peer, kind, body, timeout).await?;
        serde_json::from_slice(&answer).map_err(|e| unreachable(format!("bad {} answer: {e}", kind.name())))
    }

    pub async fn replicate(&self, peer: &str, batch: &ReplicateBatch) -> Result<ReplicateAck, GossipError> {
        self.typed(peer, Message::Replicate, batch, PUSH_TIMEOUT).await
    }

    pub async fn pull(&self, peer: &str, req: &PullRequest, timeout: Duration) -> Result<PullResponse, GossipError> {
        self.typed(peer, Message::Pull, req, timeout).await
    }

    pub async fn snapshot(&self, peer: &str, req: &SnapshotRequest) -> Result<SnapshotPage, GossipError> {
        self.typed(peer, Message::Snapshot, req, EXCHANGE_TIMEOUT * 5).await
    }

    pub async fn heartbeat(&self, peer: &str, msg: &Heartbeat) -> Result<HeartbeatAck, GossipError> {
        self.typed(peer, Message::Heartbeat, msg, HEARTBEAT_TIMEOUT).await
    }

    /// One step of the view-change protocol (see `crate::viewchange`).
    pub async fn view(
        &self,
        peer: &str,
        step: crate::viewchange::Step,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, GossipError> {
        self.typed(peer, Message::View(step), body, timeout).await
    }
}

/// The test fault switches around a transport: a peer cut off by
/// `blocked` is unreachable, and `paused_replication` holds pushes back.
pub struct FaultyTransport {
    inner: Arc<dyn Transport>,
    faults: Arc<crate::faults::Faults>,
}

impl FaultyTransport {
    /// `inner` itself when the switches are off (nothing to check).
    pub fn wrap(inner: Arc<dyn Transport>, faults: Arc<crate::faults::Faults>) -> Arc<dyn Transport> {
        if faults.enabled() { Arc::new(Self { inner, faults }) } else { inner }
    }
}

impl Transport for FaultyTransport {
    fn call<'a>(
        &'a self,
        peer: &'a str,
        kind: Message,
        body: Box<RawValue>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>, GossipError>> {
        if self.faults.is_blocked(peer) {
            return Box::pin(std::future::ready(Err(GossipError::Unreachable {
                peer: peer.to_owned(),
                reason: "blocked by fault switch".into(),
            })));
        }
        if kind == Message::Replicate && self.faults.replication_paused(peer) {
            return Box::pin(std::future::ready(Err(GossipError::Unreachable {
                peer: peer.to_owned(),
                reason: "replication paused by fault switch".into(),
            })));
        }
        self.inner.call(peer, kind, body, timeout)
    }

    fn open_stream<'a>(&'a self, peer: &'a str) -> BoxFuture<'a, Result<Option<stream::StreamConn>, GossipError>> {
        Box::pin(async move {
            if self.faults.is_blocked(peer) || self.faults.replication_paused(peer) {
                return Err(GossipError::Unreachable { peer: peer.to_owned(), reason: "cut off by fault switch".into() });
            }
            let conn = self.inner.open_stream(peer).await?;
            let (faults, peer) = (self.faults.clone(), peer.to_owned());
            Ok(conn.map(|mut c| {
                c.cut = Some(Arc::new(move || faults.is_blocked(&peer) || faults.replication_paused(&peer)));
                c
            }))
        })
    }

    fn start_receiving(self: Arc<Self>, inbound: Arc<dyn Inbound>, shutdown: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
        self.inner.clone().start_receiving(inbound, shutdown)
    }
}

/// The highest epoch any peer has reported, so a node that missed a view
/// change's commit can find out and catch up.
#[derive(Debug, Default)]
pub struct EpochHint {
    seen: Mutex<(u64, String)>,
}

impl EpochHint {
    pub fn saw(&self, epoch: u64, peer: &str) {
        let mut seen = self.seen.lock();
        if epoch > seen.0 {
            *seen = (epoch, peer.to_owned());
        }
    }

    pub fn highest(&self) -> (u64, String) {
        self.seen.lock().clone()
    }
}

/// Cuts `records` to [`MAX_BATCH_BYTES`] (keeping at least one).
pub fn fit_batch(records: &mut Vec<crate::store::Record>) {
    let mut bytes = 0;
    let keep = records
        .iter()
        .position(|r| {
            bytes += r.key.len() + r.value.as_ref().map_or(0, |v| v.get().len()) + 128;
            bytes > MAX_BATCH_BYTES
        })
        .map_or(records.len(), |i| i.max(1));
    records.truncate(keep);
}

/// The gossip protocols of one node.
pub struct Gossip {
    store: Arc<Store>,
    transport: Arc<dyn Transport>,
    metrics: Arc<Metrics>,
    /// Replicas of this node's shard (itself included), in view order.
    shard: Vec<String>,
    /// The view of this epoch (its nodes are the heartbeat targets).
    view: View,
    /// `view.id()`, told to every peer in heartbeats.
    view_id: String,
    pub detector: Arc<FailureDetector>,
    /// Peers met running another view at this epoch.
    pub conflicts: Arc<ViewConflicts>,
    /// Nodes outside the view that get heartbeats too (see
    /// [`Gossip::also_heartbeat`]).
    extra_heartbeats: Vec<String>,
    /// Highest epoch a peer reported, and who (a missed view change).
    pub epoch_hint: Arc<EpochHint>,
    /// Latest applied clock reported by each peer of the shard.
    peer_clocks: DashMap<String, Clock>,
    snapshot_running: AtomicBool,
    /// This node's wall clock (visibility ages).
    wall: Arc<dyn crate::time::WallClock>,
}

/// How far one replica is behind this node (see [`Gossip::replica_lags`]).
#[derive(Debug, Clone)]
pub struct ReplicaLag {
    pub peer: String,
    pub behind_writes: Option<u64>,
    pub behind_ms: Option<u64>,
}

/// What every epoch's gossip shares with the node.
#[derive(Clone)]
pub struct GossipDeps {
    pub store: Arc<Store>,
    pub transport: Arc<dyn Transport>,
    pub metrics: Arc<Metrics>,
    pub detector: Arc<FailureDetector>,
    pub epoch_hint: Arc<EpochHint>,
    pub conflicts: Arc<ViewConflicts>,
    pub wall: Arc<dyn crate::time::WallClock>,
}

impl Gossip {
    pub fn new(deps: GossipDeps, map: &ShardMap) -> Self {
        let GossipDeps { store, transport, metrics, detector, epoch_hint, conflicts, wall } = deps;
        Self {
            store,
            transport,
            metrics,
            shard: map.my_replicas().to_vec(),
            view_id: map.view_id().to_owned(),
            view: map.view.clone(),
            extra_heartbeats: Vec::new(),
            detector,
            conflicts,
            epoch_hint,
            peer_clocks: DashMap::new(),
            snapshot_running: AtomicBool::new(false),
            wall,
        }
    }

    /// Heartbeats `nodes` too, though they are not in the view: a node
    /// whose stored view differs from the one it was configured with sends
    /// its view to the configured nodes, which may not count it as a member
    /// of theirs and so would never let it hear of them otherwise.
    pub fn also_heartbeat(mut self, nodes: Vec<String>) -> Self {
        self.extra_heartbeats = nodes;
        self
    }

    pub fn shard(&self) -> &[String] {
        &self.shard
    }

    fn me(&self) -> &str {
        self.store.me()
    }

    fn peers(&self) -> impl Iterator<Item = &String> {
        self.shard.iter().filter(|p| *p != self.me())
    }

    fn check_epoch(&self, theirs: u64) -> Result<(), GossipError> {
        let ours = self.store.epoch();
        if theirs == ours { Ok(()) } else { Err(GossipError::WrongEpoch { ours, theirs }) }
    }

    fn learned(&self, peer: &str, applied: &Clock) {
        self.detector.heard_from(peer);
        self.peer_clocks.insert(peer.to_owned(), applied.clone());
    }

    /// How far each other replica of the shard is behind this node: writes
    /// applied here that it has not acknowledged, and the age of the oldest
    /// of them (from its HLC; the log may no longer hold it: then unknown).
    pub fn replica_lags(&self) -> Vec<ReplicaLag> {
        let mine = self.store.applied();
        let now_ms = self.wall.now_ms();
        self.peers()
            .map(|peer| {
                let Some(theirs) = self.peer_clocks.get(peer).map(|c| c.value().clone()) else {
                    return ReplicaLag { peer: peer.clone(), behind_writes: None, behind_ms: None };
                };
                let mut writes = 0;
                let mut oldest_ms: Option<u64> = Some(0);
                for origin in &self.shard {
                    let (have, acked) = (mine.get(origin), theirs.get(origin));
                    if have <= acked {
                        continue;
                    }
                    writes += have - acked;
                    let age = match self.store.log_after(origin, acked, 1) {
                        Ok(first) => first.first().map(|r| now_ms.saturating_sub(crate::causal::hlc::physical_ms(r.hlc))),
                        Err(_) => None,
                    };
                    oldest_ms = match (oldest_ms, age) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    };
                }
                ReplicaLag { peer: peer.clone(), behind_writes: Some(writes), behind_ms: oldest_ms }
            })
            .collect()
    }

    /// Applies a pushed batch and answers with the applied clock.
    pub async fn handle_replicate(&self, batch: ReplicateBatch) -> Result<ReplicateAck, GossipError> {
        self.check_epoch(batch.epoch)?;
        let (generation, refused) = self.apply_pushed(&batch.from, batch.records)?;
        self.store.wait_durable(generation).await?;
        if let Some(skew) = refused {
            // What came before the refused records is applied (and durable);
            // the sender learns how far from its next probe.
            return Err(StoreError::from(skew).into());
        }
        Ok(ReplicateAck { applied: self.store.applied() })
    }

    /// Applies a streamed batch from `from` (the stream checked its epoch
    /// and sender); returns the write generation its ack waits for. Records
    /// the clock guard refuses end the stream (the sender reopens it and
    /// learns how far this replica got).
    pub fn apply_streamed(&self, from: &str, records: Vec<crate::store::Record>) -> Result<u64, GossipError> {
        let (generation, refused) = self.apply_pushed(from, records)?;
        match refused {
            Some(skew) => Err(StoreError::from(skew).into()),
            None => Ok(generation),
        }
    }

    /// Applies records pushed by `from`: the generation to wait for, and
    /// what the clock guard refused.
    fn apply_pushed(&self, from: &str, records: Vec<crate::store::Record>) -> Result<(u64, Option<crate::store::ClockSkew>), GossipError> {
        self.detector.heard_from(from);
        // Visibility: the record's HLC carries its origin's wall clock (ms)
        // when it was written; exact on one host, skewed by clock offset across hosts.
        let applied = self.store.applied();
        let now_ms = self.wall.now_ms();
        let ages: Vec<f64> = records
            .iter()
            .filter(|r| r.dot.seq > applied.get(&r.dot.origin))
            .map(|r| now_ms.saturating_sub(r.hlc >> 16) as f64 / 1000.0)
            .collect();
        let outcome = self.store.apply_remote(records, &self.shard)?;
        for age in ages {
            self.metrics.visibility_seconds.observe(age);
        }
        self.metrics.replicated_records.inc_by(outcome.applied_now as u64);
        self.metrics.pending_dropped.inc_by(outcome.dropped as u64);
        Ok((outcome.generation, outcome.refused))
    }

    /// Answers a pull / anti-entropy exchange from the log.
    pub fn handle_pull(&self, req: &PullRequest) -> Result<PullResponse, GossipError> {
        self.check_epoch(req.epoch)?;
        self.detector.heard_from(&req.from);
        let applied = self.store.applied();
        let mut records = Vec::new();
        let mut snapshot_needed = false;
        for (origin, after) in &req.want {
            let room = MAX_BATCH_RECORDS.saturating_sub(records.len());
            if room == 0 || *after >= applied.get(origin) {
                continue;
            }
            match self.store.log_after_checked(origin, *after, room)? {
                Some(mut recs) => {
                    fit_batch(&mut recs);
                    let cut = recs.len() < room;
                    records.extend(recs);
                    if cut {
                        break;
                    }
                }
                None => snapshot_needed = true,
            }
        }
        Ok(PullResponse { records, applied, snapshot_needed })
    }

    pub fn handle_snapshot(&self, req: &SnapshotRequest) -> Result<SnapshotPage, GossipError> {
        self.check_epoch(req.epoch)?;
        self.detector.heard_from(&req.from);
        let limit = req.limit.clamp(1, SNAPSHOT_PAGE);
        // The clock is read before the page, so every record it covers is
        // already reflected in the page (or a later winner is).
        let applied = self.store.applied();
        let mut records = self.store.snapshot_page(req.after_key.as_deref(), limit)?;
        let read = records.len();
        fit_batch(&mut records);
        let done = read < limit && records.len() == read;
        Ok(SnapshotPage { records, applied, done })
    }

    pub fn handle_heartbeat(&self, msg: &Heartbeat) -> HeartbeatAck {
        // Only members of this epoch's view are tracked: anyone else is
        // answered, never remembered (no table grows from what they claim).
        let member = self.view.nodes.contains(&msg.from);
        if member {
            self.detector.heard_from(&msg.from);
            self.epoch_hint.saw(msg.epoch, &msg.from);
        }
        let differs = member && self.compare_view(&msg.from, msg.view.as_ref(), msg.view_detail.as_ref());
        HeartbeatAck { epoch: self.store.epoch(), view: Some(self.stamp()), view_detail: differs.then(|| self.view.clone()) }
    }

    fn stamp(&self) -> ViewStamp {
        ViewStamp { epoch: self.view.epoch, id: self.view_id.clone() }
    }

    /// The heartbeat for `peer`: with this node's whole view when the peer
    /// is known to run another one, so its log can name our members.
    fn heartbeat_for(&self, peer: &str) -> Heartbeat {
        Heartbeat {
            from: self.me().to_owned(),
            epoch: self.store.epoch(),
            view: Some(self.stamp()),
            view_detail: self.conflicts.with(peer, &self.view_id).then(|| self.view.clone()),
        }
    }

    /// Compares the view `peer` reported with this epoch's; true when it is
    /// another view at the same epoch (recorded as a conflict). Peers that
    /// report no view (older versions) are never a conflict.
    fn compare_view(&self, peer: &str, theirs: Option<&ViewStamp>, detail: Option<&View>) -> bool {
        let Some(theirs) = theirs else { return false };
        if theirs.epoch != self.view.epoch || theirs.id == self.view_id {
            self.conflicts.clear(peer);
            return false;
        }
        if self.conflicts.record(peer, &self.view, &self.view_id, theirs, detail) {
            self.metrics.view_conflicts.inc();
        }
        true
    }

    /// One anti-entropy exchange with `peer`: sends this node's applied
    /// clock, applies what comes back. Returns true if more may be waiting.
    async fn exchange(&self, peer: &str, want: &[(String, u64)], timeout: Duration) -> bool {
        let req = PullRequest { from: self.me().to_owned(), epoch: self.store.epoch(), want: want.to_vec() };
        match self.transport.pull(peer, &req, timeout).await {
            Ok(resp) => {
                self.learned(peer, &resp.applied);
                let full = resp.records.len() >= MAX_BATCH_RECORDS;
                match self.store.apply_remote(resp.records, &self.shard) {
                    Ok(out) => {
                        self.metrics.replicated_records.inc_by(out.applied_now as u64);
                        self.metrics.pending_dropped.inc_by(out.dropped as u64);
                    }
                    Err(e) => tracing::warn!(%peer, error = %e, "applying pulled records failed"),
                }
                if resp.snapshot_needed {
                    self.fetch_snapshot(peer).await;
                }
                full
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "anti-entropy exchange failed");
                false
            }
        }
    }

    /// What this node wants from its shard: every origin after its applied seq.
    fn want(&self) -> Vec<(String, u64)> {
        let applied = self.store.applied();
        self.shard.iter().map(|o| (o.clone(), applied.get(o))).collect()
    }

    /// Asks every peer at once for the records this node lacks and applies
    /// them (used by held-back requests and at start-up).
    pub async fn pull_from_peers(&self, timeout: Duration) {
        let want = self.want();
        let want = &want;
        futures_util::future::join_all(self.peers().map(|peer| self.exchange(peer, want, timeout))).await;
    }

    /// Brings this replica to the union of its shard (view change step 2):
    /// exchanges with every peer until it has everything each peer has.
    /// Fails if any peer cannot be reached.
    pub async fn sync_with_shard(&self, deadline: tokio::time::Instant) -> Result<(), GossipError> {
        for peer in self.peers() {
            loop {
                let want = self.want();
                let req = PullRequest { from: self.me().to_owned(), epoch: self.store.epoch(), want };
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Err(GossipError::Unreachable { peer: peer.clone(), reason: "view-change sync timed out".into() });
                }
                let resp = self.transport.pull(peer, &req, left.min(EXCHANGE_TIMEOUT)).await?;
                self.learned(peer, &resp.applied);
                let got = resp.records.len();
                if let Some(skew) = self.store.apply_remote(resp.records, &self.shard)?.refused {
                    // This replica cannot reach the union: fail now, not at the deadline.
                    return Err(StoreError::from(skew).into());
                }
                if resp.snapshot_needed {
                    self.fetch_snapshot_pages(peer).await?;
                }
                let mine = self.store.applied();
                if got == 0 && self.shard.iter().all(|o| mine.get(o) >= resp.applied.get(o)) {
                    break;
                }
                if got == 0 {
                    // The peer has records we cannot apply yet (deps): give
                    // the other exchanges a moment.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Ok(())
    }

    /// Copies a peer's whole shard state, after a missed view change.
    pub async fn rebuild_from(&self, peer: &str) -> Result<usize, GossipError> {
        self.fetch_snapshot_pages(peer).await
    }

    /// Copies a peer's whole shard state, then raises `applied` to the clock
    /// the snapshot covers.
    async fn fetch_snapshot(&self, peer: &str) {
        if self.snapshot_running.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::warn!(%peer, "log entries this node needs were compacted: fetching a snapshot");
        let result = self.fetch_snapshot_pages(peer).await;
        self.snapshot_running.store(false, Ordering::SeqCst);
        match result {
            Ok(n) => {
                self.metrics.snapshots_installed.inc();
                tracing::info!(%peer, records = n, "snapshot installed");
            }
            Err(e) => tracing::warn!(%peer, error = %e, "snapshot failed; will retry"),
        }
    }

    async fn fetch_snapshot_pages(&self, peer: &str) -> Result<usize, GossipError> {
        let mut after_key = None;
        let mut clock = None;
        let mut total = 0;
        loop {
            let req = SnapshotRequest { from: self.me().to_owned(), epoch: self.store.epoch(), after_key, limit: SNAPSHOT_PAGE };
            let page = self.transport.snapshot(peer, &req).await?;
            clock.get_or_insert(page.applied);
            after_key = page.records.last().map(|r| r.key.clone());
            total += page.records.len();
            self.store.apply_snapshot(page.records)?;
            if page.done {
                break;
            }
        }
        if let Some(clock) = clock {
            self.store.install_clock(&clock)?;
            self.store.apply_remote(Vec::new(), &self.shard)?;
        }
        Ok(total)
    }

    /// Starts replicators, anti-entropy, heartbeats and compaction; they end
    /// when `shutdown` turns true.
    pub fn spawn_tasks(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let mut tasks: Vec<JoinHandle<()>> =
            self.peers().map(|peer| tokio::spawn(stream::sender::run(self.clone(), peer.clone(), shutdown.clone()))).collect();
        tasks.push(tokio::spawn(anti_entropy_loop(self.clone(), shutdown.clone())));
        tasks.push(tokio::spawn(heartbeat_loop(self.clone(), shutdown.clone())));
        tasks.push(tokio::spawn(compaction_loop(self.clone(), shutdown)));
        tasks
    }
}

/// Sleeps `d`; true when shutdown was requested meanwhile.
pub(crate) async fn sleep_or_shutdown(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    let stopped = tokio::select! {
        biased;
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.wait_for(|s| *s) => true,
    };
    stopped || *shutdown.borrow()
}

async fn anti_entropy_loop(gossip: Arc<Gossip>, mut shutdown: watch::Receiver<bool>) {
    if gossip.shard.len() < 2 {
        return;
    }
    loop {
        let want = gossip.want();
        let want = &want;
        let more = futures_util::future::join_all(gossip.peers().map(|p| gossip.exchange(p, want, EXCHANGE_TIMEOUT))).await;
        let pause = if more.iter().any(|m| *m) { Duration::ZERO } else { ANTI_ENTROPY_INTERVAL };
        if sleep_or_shutdown(&mut shutdown, pause).await {
            return;
        }
    }
}

async fn heartbeat_loop(gossip: Arc<Gossip>, mut shutdown: watch::Receiver<bool>) {
    let me = gossip.me().to_owned();
    let mut targets: Vec<String> = gossip.view.nodes.iter().filter(|n| **n != me).cloned().collect();
    targets.extend(gossip.extra_heartbeats.iter().filter(|n| **n != me && !gossip.view.nodes.contains(n)).cloned());
    if targets.is_empty() {
        return;
    }
    loop {
        futures_util::future::join_all(targets.iter().map(|peer| {
            let gossip = &gossip;
            async move {
                let msg = gossip.heartbeat_for(peer);
                if let Ok(Ok(ack)) = tokio::time::timeout(HEARTBEAT_TIMEOUT, gossip.transport.heartbeat(peer, &msg)).await {
                    gossip.detector.heard_from(peer);
                    gossip.epoch_hint.saw(ack.epoch, peer);
                    gossip.compare_view(peer, ack.view.as_ref(), ack.view_detail.as_ref());
                }
            }
        }))
        .await;
        if sleep_or_shutdown(&mut shutdown, HEARTBEAT_INTERVAL).await {
            return;
        }
    }
}

async fn compaction_loop(gossip: Arc<Gossip>, mut shutdown: watch::Receiver<bool>) {
    let mut compactor = compaction::Compactor::default();
    loop {
        if sleep_or_shutdown(&mut shutdown, COMPACTION_INTERVAL).await {
            return;
        }
        let mut clocks: HashMap<String, Clock> = gossip.peer_clocks.iter().map(|e| (e.key().clone(), e.value().clone())).collect();
        let applied = gossip.store.applied();
        clocks.insert(gossip.me().to_owned(), applied.clone());
        let mut stable = Clock::new();
        let mut purgeable = Clock::new();
        if let Some(round) = compactor.round(&gossip.shard, &clocks) {
            stable = round.stable;
            purgeable = round.purgeable;
        }
        // A replica that stays behind must not make the log grow forever.
        for (origin, seq) in applied.iter() {
            if seq.saturating_sub(stable.get(origin)) > MAX_LOG_ENTRIES {
                tracing::warn!(%origin, limit = MAX_LOG_ENTRIES, "log limit reached: compacting; a replica that is behind will need a snapshot");
                gossip.metrics.log_limit_hits.inc();
                stable.set(origin, seq - MAX_LOG_ENTRIES);
            }
        }
        match gossip.store.compact_log(&stable) {
            Ok(n) => {
                gossip.metrics.log_entries_compacted.inc_by(n as u64);
            }
            Err(e) => tracing::error!(error = %e, "log compaction failed"),
        }
        match gossip.store.purge_tombstones(&purgeable) {
            Ok(n) => {
                gossip.metrics.tombstones_purged.inc_by(n as u64);
            }
            Err(e) => tracing::error!(error = %e, "tombstone purge failed"),
        }
    }
}

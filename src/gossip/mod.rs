//! Replication between the replicas of a shard (DESIGN.md "Write path" step
//! 3, "Applying writes", "Read path" step 2).
//!
//! - **Push**: every node runs one [`replicator`] task per peer of its shard.
//!   The node's own per-origin log *is* the send queue: the task ships the
//!   durable records after the seq the peer last acknowledged, in batches, one
//!   request in flight per peer, and retries with backoff until acknowledged.
//!   Acknowledgements carry the peer's `applied` clock, so a peer that restarts
//!   or loses data is caught up from the log without any client traffic, and
//!   an idle replicator re-probes every [`PROBE_INTERVAL`].
//! - **Pull**: a replica holding a read back asks every peer for the records
//!   it is missing (peers answer from their logs, which include records of
//!   other origins they applied, so a write reaches a replica even if its
//!   origin is unreachable).
//! - Receiving is transport-agnostic ([`Gossip::handle_replicate`],
//!   [`Gossip::handle_pull`]); a [`Transport`] only moves messages.
//!
//! Invariants: a record leaves its origin only once durable; a replica
//! acknowledges only what it has applied (and, with `DURABILITY=fsync`,
//! flushed); per-origin seq order is enforced by the store.
//!
//! Not here yet: failure detector, anti-entropy of other origins' records on
//! a timer, log compaction and snapshots, the Mycelium transport.

mod http;
mod messages;
mod replicator;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use http::{FROM_HEADER, HttpTransport};
pub use messages::{PullRequest, PullResponse, ReplicateAck, ReplicateBatch};

use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Most records in one replication batch or pull answer.
pub const MAX_BATCH_RECORDS: usize = 1024;
/// Idle replicators re-probe peers this often, so a peer that restarted with
/// less data is caught up within this bound even without new writes.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// First retry delay after a failed push; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest retry delay: a returning peer is caught up within this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Time limit of one replication request.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable { peer: String, reason: String },
    #[error("peer {peer} answered {status}")]
    Rejected { peer: String, status: u16 },
    #[error("wrong epoch: ours {ours}, theirs {theirs}")]
    WrongEpoch { ours: u64, theirs: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Moves gossip messages to a peer and returns its answer.
pub trait Transport: Send + Sync + 'static {
    fn replicate<'a>(&'a self, peer: &'a str, batch: &'a ReplicateBatch) -> BoxFuture<'a, Result<ReplicateAck, GossipError>>;
    fn pull<'a>(&'a self, peer: &'a str, req: &'a PullRequest, timeout: Duration) -> BoxFuture<'a, Result<PullResponse, GossipError>>;
}

/// The replication protocol of one node.
pub struct Gossip {
    store: Arc<Store>,
    transport: Arc<dyn Transport>,
    metrics: Arc<Metrics>,
    /// Replicas of this node's shard (itself included), in view order.
    shard: Vec<String>,
}

impl Gossip {
    pub fn new(store: Arc<Store>, transport: Arc<dyn Transport>, metrics: Arc<Metrics>, shard: Vec<String>) -> Self {
        Self { store, transport, metrics, shard }
    }

    pub fn shard(&self) -> &[String] {
        &self.shard
    }

    fn peers(&self) -> impl Iterator<Item = &String> {
        self.shard.iter().filter(|p| *p != self.store.me())
    }

    /// Applies a pushed batch and answers with the applied clock.
    pub async fn handle_replicate(&self, batch: ReplicateBatch) -> Result<ReplicateAck, GossipError> {
        if batch.epoch != self.store.epoch() {
            return Err(GossipError::WrongEpoch { ours: self.store.epoch(), theirs: batch.epoch });
        }
        let outcome = self.store.apply_remote(batch.records, &self.shard)?;
        self.metrics.replicated_records.inc_by(outcome.applied_now as u64);
        self.store.wait_durable(outcome.generation).await?;
        Ok(ReplicateAck { applied: self.store.applied() })
    }

    /// Answers a pull from the log.
    pub fn handle_pull(&self, req: &PullRequest) -> Result<PullResponse, GossipError> {
        let mut records = Vec::new();
        if req.epoch == self.store.epoch() {
            for (origin, after) in &req.want {
                let room = MAX_BATCH_RECORDS.saturating_sub(records.len());
                if room == 0 {
                    break;
                }
                records.extend(self.store.log_after(origin, *after, room)?);
            }
        }
        Ok(PullResponse { records, applied: self.store.applied() })
    }

    /// Asks every peer at once for the records of `want` (origin, applied
    /// seq) and applies what comes back. Returns when all answered or failed.
    pub async fn pull_from_peers(&self, want: Vec<(String, u64)>, timeout: Duration) {
        let req = PullRequest { from: self.store.me().to_owned(), epoch: self.store.epoch(), want };
        let pulls = self.peers().map(|peer| {
            let req = &req;
            async move {
                match self.transport.pull(peer, req, timeout).await {
                    Ok(resp) => {
                        if let Err(e) = self.store.apply_remote(resp.records, &self.shard) {
                            tracing::warn!(%peer, error = %e, "applying pulled records failed");
                        }
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "pull failed"),
                }
            }
        });
        futures_util::future::join_all(pulls).await;
    }

    /// Starts one replicator per peer; they end when `shutdown` turns true.
    pub fn spawn_replicators(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        self.peers()
            .map(|peer| tokio::spawn(replicator::run(self.clone(), peer.clone(), shutdown.clone())))
            .collect()
    }
}


//! A node: the protocol state every request handler and background task
//! shares — store, view and epoch, placement, failure detector, the causal
//! gate, replication and anti-entropy — with no socket of its own.
//!
//! [`Node::new`] assembles it from [`NodeParts`] (storage, a [`Transport`]
//! to peers, a [`kv::Forwarder`] for key requests, a wall clock); the process
//! (`server::start`) supplies HTTP or Mycelium for them, the simulator
//! (`sim`) supplies in-memory ones. Key requests enter at
//! [`Node::serve_key`] ([`kv`]), peer messages at `Gossip::dispatch` and the
//! view-change steps ([`crate::viewchange`]).
//!
//! The view, its shard map and the gossip tasks form one [`Epoch`], swapped
//! as a whole when a view change commits (`view_change`).
//!
//! Invariant: nothing under `node` knows HTTP: answers are typed
//! (`kv::KvAnswer`), and only `api` turns them into statuses and bodies.

pub mod dispatch;
pub mod feed;
pub mod kv;
pub mod snapshot;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::faults::Faults;
use crate::gossip::conflict::Conflict;
use crate::gossip::refusals::PeerRefusals;
use crate::gossip::{Auth, EpochHint, FailureDetector, Gossip, GossipDeps, Inbound, Transport, ViewConflicts};
use crate::metrics::Metrics;
use crate::shard::{ShardMap, View};
use crate::store::{Store, StoreError, run_checkpointer, run_flusher};
use crate::time::WallClock;
use kv::Forwarder;

/// How long start-up waits for peers to hand over missed records before the
/// node reports ready anyway (a peer may be down).
const STARTUP_CATCH_UP: Duration = Duration::from_secs(2);
/// Bytes of internal request bodies held at once, over all connections
/// (a few of the largest batches).
pub const INTERNAL_BODY_BUDGET: usize = 48 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot open the data directory {dir}: {source}")]
    Store { dir: String, source: StoreError },
    #[error("the stored view in {dir} is unreadable: {source}")]
    StoredView { dir: String, source: serde_json::Error },
}

/// One epoch's view, shard map and gossip.
pub struct Epoch {
    pub map: ShardMap,
    pub gossip: Arc<Gossip>,
}

/// State shared by every request handler and background task.
pub struct Node {
    pub config: Config,
    pub store: Arc<Store>,
    pub faults: Arc<Faults>,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Auth>,
    /// Peers refusing this node's internal traffic (shown by /health).
    pub refusals: Arc<PeerRefusals>,
    /// Bytes of internal request bodies that may be held at once (one
    /// permit per byte): bounds what callers can make this node buffer.
    pub internal_bodies: Arc<tokio::sync::Semaphore>,
    pub detector: Arc<FailureDetector>,
    pub epoch_hint: Arc<EpochHint>,
    /// Peers met running another view at this node's epoch.
    pub conflicts: Arc<ViewConflicts>,
    pub transport: Arc<dyn Transport>,
    /// Passes key requests to other nodes.
    pub forwarder: Arc<dyn Forwarder>,
    /// This node's wall clock (HLC, deadlines, view-change ids).
    pub wall: Arc<dyn WallClock>,

    current: RwLock<Arc<Epoch>>,
    epoch_tx: watch::Sender<u64>,
    epoch_tasks: Mutex<(watch::Sender<bool>, Vec<JoinHandle<()>>)>,
    pub change: crate::viewchange::participant::ChangeState,
    round_robin: AtomicUsize,
    ready: AtomicBool,
    /// The views this node installed (shown by the status).
    pub view_history: status::ViewHistory,
    started: tokio::time::Instant,
    /// Watchers served now (`feed::MAX_WATCHERS` at most).
    watchers: Arc<AtomicUsize>,
    /// Snapshot reads coordinated here at once, and feed requests answered
    /// here at once (long polls): bounded, whoever sends them.
    pub snapshot_slots: Arc<tokio::sync::Semaphore>,
    pub feed_slots: Arc<tokio::sync::Semaphore>,
    /// Replication streams received, the current one per sender.
    pub streams: crate::gossip::stream::receiver::Registry,
}

impl Node {
    pub fn me(&self) -> &str {
        &self.config.address
    }

    /// The current epoch's view, map and gossip.
    pub fn current(&self) -> Arc<Epoch> {
        self.current.read().clone()
    }

    pub fn epoch(&self) -> u64 {
        self.current().map.epoch()
    }

    /// Waits (bounded) until this node has reached `epoch`.
    pub async fn wait_for_epoch(&self, epoch: u64, bound: Duration) -> bool {
        let mut rx = self.epoch_tx.subscribe();
        matches!(tokio::time::timeout(bound, rx.wait_for(|e| *e >= epoch)).await, Ok(Ok(_)))
    }

    pub fn next_round_robin(&self) -> usize {
        self.round_robin.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Peers running another view at this node's epoch, under its current
    /// view; while there is any, key requests are refused.
    pub fn view_conflicts(&self) -> Vec<Conflict> {
        if self.conflicts.is_empty() {
            return Vec::new();
        }
        self.conflicts.active(self.current().map.view_id())
    }

    fn make_epoch(&self, view: View) -> Arc<Epoch> {
        let map = ShardMap::new(view, &self.config.address);
        // Before anything is served in this epoch (commit_epoch already set
        // it for a committed change; this covers the start-up epoch).
        self.store.set_keeps_log(!map.peers().is_empty());
        // Configured with another view at the same epoch (the data folder
        // kept the view of an earlier start): the configured nodes hear of
        // ours, so two views at one epoch are found whoever accepts whom.
        let configured = &self.config.view;
        let extra =
            if configured.epoch == map.view.epoch && configured.id() != map.view_id() { configured.nodes.clone() } else { Vec::new() };
        let deps = GossipDeps {
            store: self.store.clone(),
            transport: self.transport.clone(),
            metrics: self.metrics.clone(),
            detector: self.detector.clone(),
            epoch_hint: self.epoch_hint.clone(),
            conflicts: self.conflicts.clone(),
            wall: self.wall.clone(),
        };
        let gossip = Gossip::new(deps, &map).also_heartbeat(extra);
        let gossip = Arc::new(gossip);
        Arc::new(Epoch { map, gossip })
    }

    /// Makes `view` current: swaps the map and restarts the gossip tasks.
    pub(crate) fn install_epoch(&self, view: View) {
        self.view_history.record(status::ViewChangeRecord {
            epoch: view.epoch,
            view: view.nodes.clone(),
            repl_factor: view.repl_factor,
            at_ms: self.wall.now_ms(),
        });
        let epoch = self.make_epoch(view);
        let (stop, handles) = {
            let (tx, _) = watch::channel(false);
            let tasks = epoch.gossip.spawn_tasks(tx.subscribe());
            let mut guard = self.epoch_tasks.lock();
            let old = std::mem::replace(&mut *guard, (tx, tasks));
            *self.current.write() = epoch.clone();
            old
        };
        let _ = stop.send(true);
        drop(handles);
        self.epoch_tx.send_replace(epoch.map.epoch());
        if epoch.map.my_shard().is_none() {
            tracing::warn!(address = %self.config.address, "this node is not in the view: serving as a proxy until a view change adds it");
        }
    }

    /// A node over `parts`, in the view the store holds (or the configured
    /// one on first start). Binds nothing and starts no task: see
    /// [`Node::spawn_tasks`].
    pub fn new(parts: NodeParts) -> Result<Arc<Node>, NodeError> {
        let NodeParts { config, store, transport, forwarder, wall, faults, auth, metrics, refusals } = parts;
        let view = load_view(&store, &config)?;
        // Staged records of a change that never committed here are void.
        if let Err(e) = store.discard_other_stages(None) {
            tracing::warn!(error = %e, "dropping stale staged records failed");
        }
        store.set_max_clock_skew(config.max_clock_skew, metrics.clock_skew_rejected.clone());
        let detector = Arc::new(FailureDetector::new(&config.address));
        let conflicts = Arc::new(ViewConflicts::new(&config.address));
        let (epoch_stop, _) = watch::channel(false);
        let placeholder = {
            let map = ShardMap::new(view.clone(), &config.address);
            let deps = GossipDeps {
                store: store.clone(),
                transport: transport.clone(),
                metrics: metrics.clone(),
                detector: detector.clone(),
                epoch_hint: Arc::new(EpochHint::default()),
                conflicts: conflicts.clone(),
                wall: wall.clone(),
            };
            let gossip = Arc::new(Gossip::new(deps, &map));
            Arc::new(Epoch { map, gossip })
        };
        let node = Arc::new(Node {
            config,
            store,
            faults,
            metrics,
            auth,
            refusals,
            internal_bodies: Arc::new(tokio::sync::Semaphore::new(INTERNAL_BODY_BUDGET)),
            detector,
            epoch_hint: Arc::new(EpochHint::default()),
            conflicts,
            transport,
            forwarder,
            wall,
            current: RwLock::new(placeholder),
            epoch_tx: watch::Sender::new(view.epoch),
            epoch_tasks: Mutex::new((epoch_stop, Vec::new())),
            change: crate::viewchange::participant::ChangeState::default(),
            round_robin: AtomicUsize::new(0),
            ready: AtomicBool::new(false),
            view_history: status::ViewHistory::default(),
            started: tokio::time::Instant::now(),
            watchers: Arc::new(AtomicUsize::new(0)),
            snapshot_slots: Arc::new(tokio::sync::Semaphore::new(snapshot::MAX_SNAPSHOT_READS)),
            feed_slots: Arc::new(tokio::sync::Semaphore::new(feed::MAX_FEED_REQUESTS)),
            streams: Default::default(),
        });
        node.install_epoch(view);
        Ok(node)
    }

    /// Starts the node's background work (group commit, checkpoints, the
    /// transport's receiving, start-up catch-up, the missed-change watch);
    /// each task ends when `shutdown` turns true. The current epoch's gossip
    /// tasks run already (see [`Node::stop_epoch_tasks`]).
    pub fn spawn_tasks(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let mut tasks = vec![
            tokio::spawn(run_flusher(self.store.clone(), shutdown.clone())),
            tokio::spawn(run_checkpointer(self.store.clone(), shutdown.clone())),
        ];
        // A transport that receives by itself (Mycelium) runs for the node's
        // lifetime and hands messages to whichever epoch is current.
        tasks.extend(self.transport.clone().start_receiving(self.clone(), shutdown.clone()));
        tasks.push(tokio::spawn(catch_up_then_ready(self.clone())));
        tasks.push(tokio::spawn(crate::viewchange::participant::watch_for_missed_changes(self.clone(), shutdown)));
        tasks
    }

    /// Stops the current epoch's gossip tasks and returns them to await.
    pub fn stop_epoch_tasks(&self) -> Vec<JoinHandle<()>> {
        let (stop, handles) = {
            let mut guard = self.epoch_tasks.lock();
            let (tx, _) = watch::channel(true);
            std::mem::replace(&mut *guard, (tx, Vec::new()))
        };
        let _ = stop.send(true);
        handles
    }
}

/// Everything a [`Node`] is made of that comes from outside: its settings,
/// its storage, how it reaches peers, and its wall clock.
pub struct NodeParts {
    pub config: Config,
    pub store: Arc<Store>,
    pub transport: Arc<dyn Transport>,
    pub forwarder: Arc<dyn Forwarder>,
    pub wall: Arc<dyn WallClock>,

    pub faults: Arc<Faults>,
    pub auth: Arc<Auth>,
    pub metrics: Arc<Metrics>,
    pub refusals: Arc<PeerRefusals>,
}

/// The view the store holds (a committed view change, or an earlier start),
/// else the configured one, which is stored now.
fn load_view(store: &Store, config: &Config) -> Result<View, NodeError> {
    let dir = config.data_dir.display().to_string();
    match store.stored_view().map_err(|source| NodeError::Store { dir: dir.clone(), source })? {
        Some(bytes) => {
            let view: View = serde_json::from_slice(&bytes).map_err(|source| NodeError::StoredView { dir: dir.clone(), source })?;
            if view.epoch == config.view.epoch && view != config.view {
                // Not a view change: the folder was first used with
                // other settings, or by another cluster.
                tracing::warn!(
                    stored = ?view.nodes, stored_repl_factor = view.repl_factor, epoch = view.epoch, dir = %dir,
                    "the data folder holds the view of an earlier start, not VIEW/REPL_FACTOR; this node keeps it. \
                     If the folder belongs to another cluster, stop this node and start it with an empty data folder"
                );
            } else if view.nodes != config.view.nodes || view.repl_factor != config.view.repl_factor {
                tracing::warn!(stored = ?view.nodes, epoch = view.epoch, "using the view of the last committed view change, not VIEW/REPL_FACTOR");
            }
            Ok(view)
        }
        None => {
            let bytes = serde_json::to_vec(&config.view).map_err(|source| NodeError::StoredView { dir: dir.clone(), source })?;
            store.store_view(&bytes).map_err(|source| NodeError::Store { dir, source })?;
            Ok(config.view.clone())
        }
    }
}

impl Node {
    /// Whether `sender` may speak for a node: a member of the current view
    /// or, while a change is prepared here, of its old or new view. Nothing
    /// a proposal names counts once it is aborted.
    pub fn is_member(&self, sender: &str) -> bool {
        self.current().map.view.nodes.iter().any(|n| n == sender) || self.change.proposed_nodes().iter().any(|n| n == sender)
    }
}

impl Inbound for Node {
    fn dispatch<'a>(
        &'a self,
        sender: &'a str,
        kind: crate::gossip::Message,
        body: &'a [u8],
    ) -> crate::gossip::BoxFuture<'a, Result<Box<serde_json::value::RawValue>, crate::gossip::dispatch::Refusal>> {
        Box::pin(Node::dispatch(self, sender, kind, body))
    }

    fn members(&self) -> Vec<String> {
        let mut nodes = self.current().map.view.nodes.clone();
        for n in self.change.proposed_nodes() {
            if !nodes.contains(&n) {
                nodes.push(n);
            }
        }
        nodes
    }
}

/// Pulls what peers have that this node missed while it was down, then
/// reports ready.
async fn catch_up_then_ready(node: Arc<Node>) {
    node.current().gossip.pull_from_peers(STARTUP_CATCH_UP).await;
    node.ready.store(true, Ordering::Relaxed);
}

/// Why a node will not take a replication stream from a sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRefusal {
    /// The fault switches cut the sender off.
    Blocked,
    /// The sender is not a replica of this node's shard.
    NotInShard,
}

impl Node {
    /// Admits a replication stream from `sender`, whatever carries it (the
    /// HTTP upgrade, the simulator's pipes): the sender must be a replica of
    /// this node's shard and not cut off. Returns the stream's id; it
    /// replaces any older stream from the same sender.
    pub fn admit_stream(&self, sender: &str) -> Result<u64, StreamRefusal> {
        if self.faults.is_blocked(sender) {
            return Err(StreamRefusal::Blocked);
        }
        if !self.current().gossip.shard().iter().any(|p| p == sender) {
            return Err(StreamRefusal::NotInShard);
        }
        Ok(self.streams.open(sender))
    }
}

impl crate::gossip::stream::receiver::StreamHost for Node {
    fn gossip(&self) -> Arc<Gossip> {
        self.current().gossip.clone()
    }

    fn refuses(&self, sender: &str, id: u64) -> bool {
        self.faults.is_blocked(sender) || !self.streams.is_current(sender, id)
    }
}

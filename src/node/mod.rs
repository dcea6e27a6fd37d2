//! A running node: the state every handler shares, and its start/stop.
//!
//! `Node::start` opens the store, loads the view (the persisted one if a view
//! change ever committed, else VIEW/REPL_FACTOR), binds the listener, starts
//! the flusher and the gossip tasks of the current epoch, and returns a
//! [`NodeHandle`]; `NodeHandle::shutdown` (or SIGTERM/SIGINT via
//! [`NodeHandle::run_until_signal`]) stops accepting, lets in-flight requests
//! finish (for at most `server::DRAIN_DEADLINE`), stops gossip, and flushes
//! storage.
//!
//! The view, its shard map and the gossip tasks form one [`Epoch`], swapped
//! as a whole when a view change commits (`view_change`).

pub mod view_change;

use std::net::SocketAddr;
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
use crate::gossip::{Auth, EpochHint, FailureDetector, Gossip, HttpTransport, Inbound, MyceliumTransport, Transport, ViewConflicts};
use crate::metrics::Metrics;
use crate::shard::{ShardMap, View};
use crate::store::{Store, StoreError, run_checkpointer, run_flusher};

/// How long start-up waits for peers to hand over missed records before the
/// node reports ready anyway (a peer may be down).
const STARTUP_CATCH_UP: Duration = Duration::from_secs(2);
/// Bytes of internal request bodies held at once, over all connections
/// (a few of the largest batches).
pub const INTERNAL_BODY_BUDGET: usize = 48 * 1024 * 1024;
/// Keep-alive connections per peer kept by the internal HTTP client.
const POOL_IDLE_PER_HOST: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot open the data directory {dir}: {source}")]
    Store { dir: String, source: StoreError },
    #[error("the stored view in {dir} is unreadable: {source}")]
    StoredView { dir: String, source: serde_json::Error },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
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
    /// Client for forwarded requests (keep-alive, pooled).
    pub client: reqwest::Client,
    current: RwLock<Arc<Epoch>>,
    epoch_tx: watch::Sender<u64>,
    epoch_tasks: Mutex<(watch::Sender<bool>, Vec<JoinHandle<()>>)>,
    pub change: view_change::ChangeState,
    round_robin: AtomicUsize,
    ready: AtomicBool,
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
        let gossip = Gossip::new(
            self.store.clone(),
            self.transport.clone(),
            self.metrics.clone(),
            self.detector.clone(),
            self.epoch_hint.clone(),
            self.conflicts.clone(),
            &map,
        )
        .also_heartbeat(extra);
        let gossip = Arc::new(gossip);
        Arc::new(Epoch { map, gossip })
    }

    /// Makes `view` current: swaps the map and restarts the gossip tasks.
    fn install_epoch(&self, view: View) {
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

    /// Opens the store and binds; serving starts at once.
    pub async fn start(config: Config) -> Result<NodeHandle, NodeError> {
        let dir = config.data_dir.display().to_string();
        let store = Store::open(&config.data_dir, &config.address, config.durability)
            .map_err(|source| NodeError::Store { dir: dir.clone(), source })?;
        let store = Arc::new(store);
        let view = match store.stored_view().map_err(|source| NodeError::Store { dir: dir.clone(), source })? {
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
                view
            }
            None => {
                let bytes = serde_json::to_vec(&config.view).expect("a view serialises");
                store.store_view(&bytes).map_err(|source| NodeError::Store { dir: dir.clone(), source })?;
                config.view.clone()
            }
        };
        // Staged records of a change that never committed here are void.
        if let Err(e) = store.discard_other_stages(None) {
            tracing::warn!(error = %e, "dropping stale staged records failed");
        }
        crate::tls::install_provider();
        let tls = config.tls.as_ref().map(crate::tls::load).transpose()?;
        let mut client = reqwest::Client::builder()
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
            // Give up idle connections before peers close them (IDLE_TIMEOUT_MS,
            // the same on every node): reusing one the peer is closing fails
            // the request.
            .pool_idle_timeout(config.server.idle_timeout / 2)
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .dns_resolver(Arc::new(crate::gossip::auth::ViewDns::default()));
        client = match &tls {
            Some(tls) => client.tls_backend_preconfigured(tls.client.clone()),
            None => client.tls_backend_preconfigured(crate::tls::plain_client_config()?),
        };
        let client = client.build()?;
        let faults = Arc::new(Faults::new(config.faults));
        let auth = Arc::new(Auth::new(config.cluster_key.as_deref(), &config.address));
        let metrics = Arc::new(Metrics::default());
        store.set_max_clock_skew(config.max_clock_skew, metrics.clock_skew_rejected.clone());
        let refusals = Arc::new(PeerRefusals::default());
        warn_if_unauthenticated(&config);
        let http =
            HttpTransport::new(client.clone(), config.address.clone(), faults.clone(), auth.clone(), refusals.clone(), metrics.clone());
        let transport: Arc<dyn Transport> = match &config.mycelium {
            Some(m) => {
                Arc::new(MyceliumTransport::new(m.clone(), config.address.clone(), http, faults.clone(), auth.clone(), metrics.clone())?)
            }
            None => Arc::new(http),
        };
        let bind = config.bind_addr();
        let listener = tokio::net::TcpListener::bind(bind).await.map_err(|source| NodeError::Bind { addr: bind, source })?;
        let local_addr = listener.local_addr().map_err(|source| NodeError::Bind { addr: bind, source })?;
        let detector = Arc::new(FailureDetector::new(&config.address));
        let conflicts = Arc::new(ViewConflicts::new(&config.address));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (epoch_stop, _) = watch::channel(false);
        let placeholder = {
            let map = ShardMap::new(view.clone(), &config.address);
            let gossip = Arc::new(Gossip::new(
                store.clone(),
                transport.clone(),
                metrics.clone(),
                detector.clone(),
                Arc::new(EpochHint::default()),
                conflicts.clone(),
                &map,
            ));
            Arc::new(Epoch { map, gossip })
        };
        let node = Arc::new(Node {
            config,
            store: store.clone(),
            faults,
            metrics,
            auth,
            refusals,
            internal_bodies: Arc::new(tokio::sync::Semaphore::new(INTERNAL_BODY_BUDGET)),
            detector,
            epoch_hint: Arc::new(EpochHint::default()),
            conflicts,
            transport,
            client,
            current: RwLock::new(placeholder),
            epoch_tx: watch::Sender::new(view.epoch),
            epoch_tasks: Mutex::new((epoch_stop, Vec::new())),
            change: view_change::ChangeState::default(),
            round_robin: AtomicUsize::new(0),
            ready: AtomicBool::new(false),
        });
        node.install_epoch(view);

        let mut tasks = vec![
            tokio::spawn(run_flusher(store.clone(), shutdown_rx.clone())),
            tokio::spawn(run_checkpointer(store.clone(), shutdown_rx.clone())),
        ];
        // A transport that receives by itself (Mycelium) runs for the node's
        // lifetime and hands messages to whichever epoch is current.
        tasks.extend(node.transport.clone().start_receiving(node.clone(), shutdown_rx.clone()));
        tasks.push(tokio::spawn(catch_up_then_ready(node.clone())));
        tasks.push(tokio::spawn(view_change::watch_for_missed_changes(node.clone(), shutdown_rx.clone())));

        let app = crate::api::router(node.clone());
        let server = tokio::spawn(crate::server::serve(
            listener,
            app,
            node.config.server.clone(),
            tls.map(|t| t.acceptor),
            node.metrics.clone(),
            shutdown_rx.clone(),
        ));
        let cur = node.current();
        tracing::info!(
            address = %node.config.address, bind = %local_addr, shard = ?cur.map.my_shard(), epoch = cur.map.epoch(),
            view = ?cur.map.view.nodes, repl_factor = cur.map.view.repl_factor, "node started"
        );
        Ok(NodeHandle { node, local_addr, shutdown: shutdown_tx, server, tasks })
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

/// Says at start what an unauthenticated node lets anyone do.
fn warn_if_unauthenticated(config: &Config) {
    if config.cluster_key.is_none() {
        tracing::warn!(
            "CLUSTER_KEY is not set: internal traffic is not authenticated. Anyone who can reach port {} can speak for a member \
             of the view (replicate, read the shard). Set CLUSTER_KEY (or CLUSTER_KEY_FILE) outside local development",
            config.port
        );
    }
    if config.admin_token().is_none() {
        tracing::warn!(
            "neither ADMIN_TOKEN nor CLUSTER_KEY is set: view-change and join are unauthenticated; anyone who can reach port {} \
             can reconfigure this cluster",
            config.port
        );
    }
}

impl Inbound for Node {
    fn gossip(&self) -> Arc<Gossip> {
        self.current().gossip.clone()
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

/// Owns a running node; dropping it without `shutdown` aborts the tasks.
pub struct NodeHandle {
    pub node: Arc<Node>,
    pub local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl NodeHandle {
    /// Stops accepting, drains in-flight requests (bounded), stops gossip, flushes.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.server.await {
            tracing::error!(error = %e, "server task failed");
        }
        let (stop, handles) = {
            let mut guard = self.node.epoch_tasks.lock();
            let (tx, _) = watch::channel(true);
            std::mem::replace(&mut *guard, (tx, Vec::new()))
        };
        let _ = stop.send(true);
        for t in handles.into_iter().chain(self.tasks) {
            let _ = t.await;
        }
        if let Err(e) = self.node.store.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
        tracing::info!("node stopped");
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully.
    /// `signals` must be installed before the node starts serving: a
    /// signal that arrives before its handler exists kills the process
    /// without a flush.
    pub async fn run_until_signal(self, signals: ShutdownSignals) {
        signals.wait().await;
        tracing::info!("signal received: shutting down");
        self.shutdown().await;
    }
}

/// SIGTERM and SIGINT handlers, installed when this is made.
pub struct ShutdownSignals {
    #[cfg(unix)]
    handlers: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl ShutdownSignals {
    /// Installs the handlers now (inside a runtime).
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let handlers = signal(SignalKind::terminate()).and_then(|term| Ok((term, signal(SignalKind::interrupt())?)));
            if let Err(e) = &handlers {
                tracing::warn!(error = %e, "cannot install signal handlers: only Ctrl-C stops this node");
            }
            Self { handlers: handlers.ok() }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn wait(self) {
        #[cfg(unix)]
        if let Some((mut term, mut int)) = self.handlers {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

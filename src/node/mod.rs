//! A running node: the state every handler shares, and its start/stop.
//!
//! `Node::start` opens the store, binds the listener, starts the flusher and
//! the replicators, and returns a [`NodeHandle`]; `NodeHandle::shutdown` (or a
//! SIGTERM/SIGINT via [`NodeHandle::run_until_signal`]) stops accepting, lets
//! in-flight requests finish, stops gossip, and flushes storage.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::faults::Faults;
use crate::gossip::{Auth, Gossip, HttpTransport};
use crate::metrics::Metrics;
use crate::shard::ShardMap;
use crate::store::{Store, StoreError, run_flusher};

/// How long start-up waits for peers to hand over missed records before the
/// node reports ready anyway (a peer may be down).
const STARTUP_CATCH_UP: Duration = Duration::from_secs(2);
/// Keep-alive connections per peer kept by the internal HTTP client.
const POOL_IDLE_PER_HOST: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot open the data directory {dir}: {source}")]
    Store { dir: String, source: StoreError },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// State shared by every request handler and background task.
pub struct Node {
    pub config: Config,
    pub map: ShardMap,
    pub store: Arc<Store>,
    pub gossip: Arc<Gossip>,
    pub faults: Arc<Faults>,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Auth>,
    /// Client for forwarded requests (keep-alive, pooled).
    pub client: reqwest::Client,
    round_robin: AtomicUsize,
    ready: AtomicBool,
}

impl Node {
    pub fn me(&self) -> &str {
        &self.config.address
    }

    pub fn next_round_robin(&self) -> usize {
        self.round_robin.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Opens the store and binds; serving starts at once.
    pub async fn start(config: Config) -> Result<NodeHandle, NodeError> {
        let map = ShardMap::new(config.view.clone(), &config.address);
        if map.my_shard().is_none() {
            tracing::warn!(address = %config.address, "this node is not in VIEW: serving as a proxy until a view change adds it");
        }
        let store = Store::open(&config.data_dir, &config.address, map.epoch(), config.durability)
            .map_err(|source| NodeError::Store { dir: config.data_dir.display().to_string(), source })?;
        let store = Arc::new(store);
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .build()?;
        let faults = Arc::new(Faults::new(config.faults));
        let metrics = Arc::new(Metrics::default());
        let auth = Arc::new(Auth::new(config.cluster_key.as_deref(), &config.view.nodes));
        if !auth.has_key() && config.view.nodes.len() > 1 {
            tracing::warn!("CLUSTER_KEY is not set: internal traffic is accepted from any process at a view address");
        }
        let transport = Arc::new(HttpTransport::new(client.clone(), config.address.clone(), faults.clone(), auth.clone()));
        let gossip = Arc::new(Gossip::new(store.clone(), transport, metrics.clone(), map.my_replicas().to_vec(), map.view.nodes.clone()));
        let bind = config.bind_addr();
        let listener = tokio::net::TcpListener::bind(bind).await.map_err(|source| NodeError::Bind { addr: bind, source })?;
        let local_addr = listener.local_addr().map_err(|source| NodeError::Bind { addr: bind, source })?;
        let node = Arc::new(Node {
            config,
            map,
            store: store.clone(),
            gossip: gossip.clone(),
            faults,
            metrics,
            auth,
            client,
            round_robin: AtomicUsize::new(0),
            ready: AtomicBool::new(false),
        });

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(run_flusher(store.clone(), shutdown_rx.clone()))];
        tasks.extend(gossip.spawn_tasks(shutdown_rx.clone()));
        tasks.push(tokio::spawn(catch_up_then_ready(node.clone())));

        let app = crate::api::router(node.clone());
        let mut server_shutdown = shutdown_rx.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move {
                    let _ = server_shutdown.wait_for(|s| *s).await;
                })
                .await
        });
        tracing::info!(
            address = %node.config.address, bind = %local_addr, shard = ?node.map.my_shard(),
            view = ?node.map.view.nodes, repl_factor = node.map.view.repl_factor, "node started"
        );
        Ok(NodeHandle { node, local_addr, shutdown: shutdown_tx, server, tasks })
    }
}

/// Pulls what peers have that this node missed while it was down, then
/// reports ready.
async fn catch_up_then_ready(node: Arc<Node>) {
    node.gossip.pull_from_peers(STARTUP_CATCH_UP).await;
    node.ready.store(true, Ordering::Relaxed);
}

/// Owns a running node; dropping it without `shutdown` aborts the tasks.
pub struct NodeHandle {
    pub node: Arc<Node>,
    pub local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl NodeHandle {
    /// Stops accepting, drains in-flight requests, stops gossip, flushes.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        match self.server.await {
            Ok(Err(e)) => tracing::error!(error = %e, "server error"),
            Err(e) => tracing::error!(error = %e, "server task failed"),
            Ok(Ok(())) => {}
        }
        for t in self.tasks {
            let _ = t.await;
        }
        if let Err(e) = self.node.store.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
        tracing::info!("node stopped");
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        tracing::info!("signal received: shutting down");
        self.shutdown().await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

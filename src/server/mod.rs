//! The process around a node: opens its storage, builds its HTTP client and
//! transports, binds its listener, serves the router, runs its tasks, and
//! shuts it all down (SIGTERM/SIGINT or [`NodeHandle::shutdown`]).
//!
//! The node itself ([`Node`]) owns no socket; everything that touches the
//! network or the process is made here and handed to it. The accept loop
//! and each connection's limits are in `accept`.
//!
//! Invariant: the signal handlers are installed before the listener binds
//! (see [`ShutdownSignals`]); shutdown stops accepting, drains requests in
//! flight (bounded), stops gossip, then flushes storage.

mod accept;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use accept::{DRAIN_DEADLINE, serve};

use crate::config::Config;
use crate::faults::Faults;
use crate::gossip::refusals::PeerRefusals;
use crate::gossip::{Auth, HttpTransport, MyceliumTransport, Transport};
use crate::metrics::Metrics;
use crate::node::{Node, NodeError, NodeParts};
use crate::store::{Store, StoreError};

/// Keep-alive connections per peer kept by the internal HTTP client.
const POOL_IDLE_PER_HOST: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the data directory {dir}: {source}")]
    Store { dir: String, source: StoreError },
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the chosen port does not fit the view: {0}")]
    Port(String),
    #[error("cannot write PORT_FILE {file}: {source}")]
    PortFile { file: String, source: std::io::Error },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Opens the store, binds, and serves at once; returns the running node.
pub async fn start(config: Config) -> Result<NodeHandle, StartError> {
    // Bound first: with PORT=0 the node's address (its name in the view and
    // in every record it writes) is known only now.
    let bind = config.bind_addr();
    let listener = listen(&config).await.map_err(|source| StartError::Bind { addr: bind, source })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Bind { addr: bind, source })?;
    let config = config.with_port(local_addr.port()).map_err(StartError::Port)?;
    if let Some(file) = &config.port_file {
        write_port_file(file, &local_addr).map_err(|source| StartError::PortFile { file: file.display().to_string(), source })?;
    }
    let dir = config.data_dir.display().to_string();
    let store = Store::open(&config.data_dir, &config.address, config.durability).map_err(|source| StartError::Store { dir, source })?;
    let store = Arc::new(store);
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
    let refusals = Arc::new(PeerRefusals::default());
    warn_if_unauthenticated(&config);
    let http = HttpTransport::new(client.clone(), config.address.clone(), auth.clone(), refusals.clone(), metrics.clone());
    let transport: Arc<dyn Transport> = match &config.mycelium {
        Some(m) => {
            Arc::new(MyceliumTransport::new(m.clone(), config.address.clone(), http, faults.clone(), auth.clone(), metrics.clone())?)
        }
        None => Arc::new(http),
    };
    // The test fault switches (CAUSALKV_FAULTS=1) sit around whichever transport.
    let transport = crate::gossip::FaultyTransport::wrap(transport, faults.clone());
    // Idle forwarding connections are given up before peers close them, as the client's.
    let forwarder = crate::api::forward::HttpForwarder::new(tls.as_ref().map(|t| t.client.clone()), config.server.idle_timeout / 2);
    let admin_client = client.clone();
    let parts = NodeParts { config, store, transport, forwarder, wall: crate::time::system(), faults, auth, metrics, refusals };
    let node = Node::new(parts)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let tasks = node.spawn_tasks(shutdown_rx.clone());
    let app = crate::api::router(node.clone(), admin_client);
    let server = tokio::spawn(serve(listener, app, node.config.server.clone(), tls.map(|t| t.acceptor), node.metrics.clone(), shutdown_rx));
    let cur = node.current();
    tracing::info!(
        address = %node.config.address, bind = %local_addr, shard = ?cur.map.my_shard(), epoch = cur.map.epoch(),
        view = ?cur.map.view.nodes, repl_factor = cur.map.view.repl_factor, "node started"
    );
    Ok(NodeHandle { node, local_addr, shutdown: shutdown_tx, server, tasks })
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

/// The listener: the inherited socket of LISTEN_FD, else a new one bound to
/// BIND_ADDR/PORT (PORT=0: a port the system chooses).
async fn listen(config: &Config) -> std::io::Result<tokio::net::TcpListener> {
    #[cfg(unix)]
    if let Some(fd) = config.listen_fd {
        use std::os::fd::FromRawFd;
        // SAFETY: LISTEN_FD names a socket this process inherited and owns
        // from here on; nothing else in the process uses that descriptor.
        let std_listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        std_listener.set_nonblocking(true)?;
        return tokio::net::TcpListener::from_std(std_listener);
    }
    tokio::net::TcpListener::bind(config.bind_addr()).await
}

/// Writes `addr` to `file` whole (a reader never sees half of it).
fn write_port_file(file: &std::path::Path, addr: &SocketAddr) -> std::io::Result<()> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(tmp, file)
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
        for t in self.node.stop_epoch_tasks().into_iter().chain(self.tasks) {
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

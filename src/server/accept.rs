//! The HTTP server: the listener, its accept loop and each connection's life,
//! driven by hyper directly (not `axum::serve`) so that no client can hold
//! more than its share of the node.
//!
//! Invariants: at most `max_connections` connections are served at once; one
//! more is answered 503 JSON and closed at once, never queued, so a flood of
//! connections cannot exhaust file descriptors and `/health` answers again as
//! soon as they close. A request's headers must arrive within
//! `header_read_timeout` of its first byte (slowloris); a connection waiting
//! for a request is closed after `idle_timeout`. Shutdown stops accepting,
//! lets requests in flight finish for at most [`DRAIN_DEADLINE`], then drops
//! whatever is left, so no client can delay the process's exit. Handlers
//! under `/internal/` see the peer's address as `ConnectInfo<SocketAddr>`
//! (nothing else reads it, so key requests do not pay for it); oversized
//! request heads get the API's JSON error (`api::limits`). With TLS on,
//! every connection is TLS (`crate::tls`); a handshake counts as part of the
//! first request's head for the header-read timeout.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use crate::api::limits::{HYPER_MAX_HEAD_BYTES, refuse_oversized};
use crate::config::ServerLimits;
use crate::metrics::Metrics;

/// How long shutdown waits for requests in flight before dropping them.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// MAX_CONNECTIONS when not configured (lowered to fit the open-file limit).
const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// File descriptors kept for everything but client connections: sled, the
/// write-ahead log, pooled connections to peers.
const FD_HEADROOM: u64 = 512;
/// The default cap never goes below this, however low the open-file limit.
const MIN_DEFAULT_CONNECTIONS: usize = 16;
/// The soft open-file limit is raised towards the hard one, up to this.
const FD_LIMIT_TARGET: u64 = 65_536;
/// Pause after an accept error that is not about one connection (out of
/// file descriptors): retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// At most one log line per this period for refused connections and accept
/// errors (a flood must not flood the log too).
const LOG_PERIOD: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` turns true, then drains
/// connections (at most [`DRAIN_DEADLINE`]) and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    tls: Option<TlsAcceptor>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let max = connection_cap(limits.max_connections);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen = %addr, tls = tls.is_some(), max_connections = max, "listening");
    }
    let slots = Arc::new(Semaphore::new(max));
    let mut builder = http1::Builder::new();
    // hyper's header timer runs from the moment a connection waits for a
    // request, so it is the idle timeout; the header-read timeout proper runs
    // from a request's first byte (`watch_connection`). hyper's header count
    // is left at its default (`api::limits::HYPER_MAX_HEADERS`): setting it
    // costs two arrays per request.
    builder.timer(TokioTimer::new()).header_read_timeout(limits.idle_timeout).max_buf_size(HYPER_MAX_HEAD_BYTES);
    let builder = Arc::new(builder);
    let refused_answer: Arc<[u8]> = crate::api::connection_refused_answer().into();
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut refusals = Throttle::default();
    let mut accept_errors = Throttle::default();
    loop {
        tokio::select! {
            () = until_true(&mut shutdown) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let conn = Connection {
                            peer,
                            router: router.clone(),
                            builder: builder.clone(),
                            header_read_timeout: limits.header_read_timeout,
                            tls: tls.clone(),
                            metrics: metrics.clone(),
                            drain: drain_rx.clone(),
                            _slot: Slot::new(permit, metrics.clone()),
                        };
                        connections.spawn(conn.start(stream));
                    }
                    Err(_) => {
                        metrics.connections_refused.inc();
                        // Non-blocking: the socket's send buffer is empty, and
                        // a client that cannot take 200 bytes gets nothing.
                        let _ = stream.try_write(&refused_answer);
                        if let Some(more) = refusals.ready() {
                            tracing::warn!(max_connections = max, refused_since_last_log = more, "MAX_CONNECTIONS connections are open: refusing new ones");
                        }
                    }
                },
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    if let Some(more) = accept_errors.ready() {
                        tracing::error!(error = %e, errors_since_last_log = more, "accept failed");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let deadline = tokio::time::sleep(DRAIN_DEADLINE);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = connections.join_next() => if next.is_none() { break },
            _ = &mut deadline => {
                tracing::warn!(open = connections.len(), "shutdown deadline passed: dropping the connections still open");
                connections.shutdown().await;
                break;
            }
        }
    }
}

/// Errors of one connection that the peer caused (it reset or gave up
/// before accept returned): the listener is fine.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset)
}

/// One accepted connection and what serving it needs.
struct Connection {
    peer: SocketAddr,
    router: Router,
    builder: Arc<http1::Builder>,
    header_read_timeout: Duration,
    tls: Option<TlsAcceptor>,
    metrics: Arc<Metrics>,
    drain: watch::Receiver<bool>,
    _slot: Slot,
}

impl Connection {
    /// The TLS handshake if TLS is on (bounded by the header-read timeout,
    /// which runs from its first byte), then HTTP.
    async fn start(self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::default());
        let watched = Watched { inner: stream, activity: activity.clone() };
        let Some(acceptor) = self.tls.clone() else {
            return self.run(watched, activity).await;
        };
        match tokio::time::timeout(self.header_read_timeout, acceptor.accept(watched)).await {
            Ok(Ok(stream)) => {
                activity.request_done();
                self.run(stream, activity).await;
            }
            Ok(Err(e)) => tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed"),
            Err(_) => {
                self.metrics.header_timeouts.inc();
                tracing::debug!(peer = %self.peer, "TLS handshake too slow");
            }
        }
    }

    async fn run<I>(mut self, io: I, activity: Arc<Activity>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        let peer = self.peer;
        let router = self.router.clone();
        let in_service = activity.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            in_service.request_started();
            let mut router = router.clone();
            let activity = in_service.clone();
            async move {
                let resp = match refuse_oversized(&req) {
                    Some(resp) => resp,
                    None => {
                        // Only internal handlers read it (to log rejected
                        // peers); an extension costs every key request an
                        // allocation.
                        if req.uri().path().starts_with("/internal/") {
                            req.extensions_mut().insert(ConnectInfo(peer));
                        }
                        match router.call(req).await {
                            Ok(resp) => resp,
                            Err(never) => match never {},
                        }
                    }
                };
                activity.request_done();
                Ok::<_, Infallible>(resp)
            }
        });
        // With upgrades: replication streams (`gossip::stream`) take the connection over.
        let conn = self.builder.serve_connection(io, service).with_upgrades();
        tokio::pin!(conn);
        let mut draining = false;
        loop {
            let head_deadline = activity.head_deadline(self.header_read_timeout);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection closed with an error");
                    }
                    return;
                }
                _ = activity.head_started.notified() => {}
                _ = sleep_until(head_deadline) => {
                    if activity.head_deadline(self.header_read_timeout).is_some_and(|d| d <= Instant::now()) {
                        self.metrics.header_timeouts.inc();
                        tracing::debug!(%peer, "closing a connection whose request headers came too slowly");
                        return;
                    }
                }
                () = until_true(&mut self.drain), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Until the flag turns true (or its sender is gone).
async fn until_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A connection's place under MAX_CONNECTIONS, counted in the
/// `open_connections` gauge until dropped (also when the task is aborted).
struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, metrics: Arc<Metrics>) -> Slot {
        metrics.open_connections.inc();
        Slot { _permit: permit, metrics }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.open_connections.dec();
    }
}

/// Where a connection is in its request cycle.
#[derive(Clone, Copy)]
enum Phase {
    /// No byte of the next request yet (bounded by hyper's idle timer).
    Waiting,
    /// The next request's first byte came at this instant; its headers have
    /// not all arrived.
    Head(Instant),
    /// A request is being handled.
    Busy,
}

/// The phase, shared by the socket wrapper, the service and the watchdog.
struct Activity {
    phase: Mutex<Phase>,
    head_started: Notify,
}

impl Default for Activity {
    fn default() -> Self {
        Activity { phase: Mutex::new(Phase::Waiting), head_started: Notify::new() }
    }
}

impl Activity {
    fn bytes_read(&self) {
        let mut phase = self.phase.lock();
        if matches!(*phase, Phase::Waiting) {
            *phase = Phase::Head(Instant::now());
            drop(phase);
            self.head_started.notify_one();
        }
    }

    fn request_started(&self) {
        *self.phase.lock() = Phase::Busy;
    }

    /// The answer is ready; bytes read from now on start the next request
    /// (or are the unread rest of this one's body, drained by hyper).
    fn request_done(&self) {
        *self.phase.lock() = Phase::Waiting;
    }

    fn head_deadline(&self, timeout: Duration) -> Option<Instant> {
        match *self.phase.lock() {
            Phase::Head(since) => Some(since + timeout),
            Phase::Waiting | Phase::Busy => None,
        }
    }
}

/// The socket, telling [`Activity`] when bytes arrive.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Lets one log line through per [`LOG_PERIOD`], counting the others.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(events suppressed since the last line)` when a line may be logged.
    fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_PERIOD) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// MAX_CONNECTIONS in force: the configured value, else the default lowered
/// to leave [`FD_HEADROOM`] descriptors under the open-file limit.
fn connection_cap(configured: Option<usize>) -> usize {
    let fd_limit = raise_fd_limit();
    match (configured, fd_limit) {
        (Some(n), Some(limit)) => {
            if n as u64 + FD_HEADROOM > limit {
                tracing::warn!(
                    max_connections = n,
                    open_file_limit = limit,
                    "MAX_CONNECTIONS leaves fewer than {FD_HEADROOM} file descriptors for storage and peers"
                );
            }
            n
        }
        (Some(n), None) => n,
        (None, Some(limit)) => {
            let fit = usize::try_from(limit.saturating_sub(FD_HEADROOM)).unwrap_or(usize::MAX);
            DEFAULT_MAX_CONNECTIONS.min(fit.max(MIN_DEFAULT_CONNECTIONS))
        }
        (None, None) => DEFAULT_MAX_CONNECTIONS,
    }
}

/// Raises the soft open-file limit towards the hard one (as Go's runtime
/// does: the soft default of 1024 is a relic of select(2)) and returns the
/// limit in force.
#[cfg(unix)]
fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    let target = lim.rlim_max.min(FD_LIMIT_TARGET);
    if lim.rlim_cur < target {
        let raised = libc::rlimit { rlim_cur: target, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = target;
        }
    }
    Some(lim.rlim_cur)
}

#[cfg(not(unix))]
fn raise_fd_limit() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_cap_is_kept_and_the_default_fits_the_fd_limit() {
        assert_eq!(connection_cap(Some(20)), 20);
        let cap = connection_cap(None);
        assert!((MIN_DEFAULT_CONNECTIONS..=DEFAULT_MAX_CONNECTIONS).contains(&cap), "{cap}");
        if let Some(limit) = raise_fd_limit() {
            assert!(cap as u64 + FD_HEADROOM <= limit.max(MIN_DEFAULT_CONNECTIONS as u64 + FD_HEADROOM), "{cap} under {limit}");
        }
    }

    #[test]
    fn throttle_lets_one_line_through_per_period() {
        let mut t = Throttle::default();
        assert_eq!(t.ready(), Some(0));
        assert_eq!(t.ready(), None);
        assert_eq!(t.ready(), None);
        t.last = Some(Instant::now() - LOG_PERIOD);
        assert_eq!(t.ready(), Some(2));
    }
}

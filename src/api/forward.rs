//! Passing a key request to another node over HTTP ([`HttpForwarder`], the
//! process's [`Forwarder`]) and its answer back, unchanged: the target's
//! status and body are relayed as bytes, with the misroute mark and
//! `Retry-After` read from its headers.
//!
//! The forwarder is a pass-through on hyper's HTTP/1 client, with its own
//! pool of keep-alive connections per target (plain TCP, or TLS with the
//! node's client certificate):
//!
//! ```text
//!   client ──PUT /kv-store/keys/k {body}──▶ entry node ──same bytes + hop headers──▶ replica
//!   client ◀──────────── status, body ───── entry node ◀──────── status, body ────── replica
//! ```
//!
//! The client's body is sent as received ([`KvRequest::raw_body`]) when the
//! request carries one; a request built in the process (legacy routes, the
//! simulator) is serialised instead.
//!
//! Hop bound (DESIGN.md "Security"), kept by `node::kv`: entry node -> a
//! replica of the key's shard (hop 1) -> at most one other replica of that
//! shard (hop 2).
//!
//! Invariant: [`Unreachable::NotSent`] only when the request surely never
//! reached the target: the connection (DNS, TCP, TLS, HTTP handshake) could
//! not be made, or hyper handed the request back unwritten. Every other
//! failure is [`Unreachable::NoAnswer`], so a write is never executed twice.
//! A pooled connection that hands the request back (it was closing) is
//! replaced by a fresh one, once.
//!
//! Not done: HTTP/2, and a cap on connections in use per target (only idle
//! ones are bounded; the node's request cap bounds the rest).
//!
//! [`KvRequest::raw_body`]: crate::node::kv::KvRequest::raw_body

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, Method, Request, Response, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use rustls::pki_types::ServerName;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsConnector;

use super::error::{MAYBE_APPLIED_HEADER, MISROUTED_HEADER, SERVED_BY_HEADER};
use super::request::{DEADLINE_HEADER, EPOCH_HEADER, FROM_HEADER, HOP_HEADER, KEY_PATH_PREFIX, WAIT_HEADER};
use crate::causal::CausalContext;
use crate::gossip::BoxFuture;
use crate::gossip::auth::ViewDns;
use crate::node::kv::{Forward, Forwarder, KvAnswer, KvOp, Relayed, Unreachable};

/// Characters left as they are in a forwarded key's path segment.
const KEY_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Idle keep-alive connections kept per target: enough for a loaded entry
/// node's concurrent forwards to one replica (the same bound as the
/// internal reqwest client's pool); beyond it the oldest is closed.
pub const IDLE_PER_TARGET: usize = 64;

/// Time limit of making a connection (DNS, TCP, TLS and HTTP handshakes):
/// a peer on the same network answers in well under a millisecond, so this
/// only waits out a host that drops packets; a failure here is `NotSent`
/// and the next replica is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

type Conn = http1::SendRequest<Full<Bytes>>;

/// A pooled connection and when it was last handed back.
struct Idle {
    conn: Conn,
    since: Instant,
}

#[derive(Serialize)]
struct ForwardBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a RawValue>,
    #[serde(rename = "causal-context")]
    context: &'a CausalContext,
}

/// Forwards over pooled hyper HTTP/1 connections, one pool per target.
pub struct HttpForwarder {
    /// Idle connections by target, most recently used last.
    idle: Mutex<HashMap<String, VecDeque<Idle>>>,
    /// With TLS on: the node's client configuration (its certificate, the
    /// cluster's CA).
    tls: Option<TlsConnector>,
    dns: ViewDns,
    /// A connection idle longer than this is closed instead of reused: the
    /// target closes its idle connections after `IDLE_TIMEOUT_MS`, and
    /// reusing one it is closing costs a round trip.
    max_idle: Duration,
}

impl HttpForwarder {
    /// `tls`: the node's TLS client configuration when TLS is on (the
    /// target is then reached over `https`, see [`crate::tls::scheme`]).
    /// `max_idle`: how long a connection may sit idle in the pool (less
    /// than the targets' `IDLE_TIMEOUT_MS`).
    pub fn new(tls: Option<rustls::ClientConfig>, max_idle: Duration) -> Arc<Self> {
        let tls = tls.map(|mut config| {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            TlsConnector::from(Arc::new(config))
        });
        Arc::new(Self { idle: Mutex::default(), tls, dns: ViewDns::default(), max_idle })
    }

    async fn send(&self, me: &str, target: &str, fwd: Forward<'_>) -> Result<KvAnswer, Unreachable> {
        let deadline = Instant::now() + fwd.timeout;
        let request = build_request(me, target, &fwd).map_err(|e| {
            tracing::warn!(%target, error = %e, "cannot build a forwarded request");
            Unreachable::NotSent
        })?;
        let (response, conn) = self.dispatch(target, request, deadline).await?;
        let (parts, body) = response.into_parts();
        let body = match timeout_at(deadline, body.collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) => {
                tracing::debug!(%target, error = %e, "forwarded answer cut off");
                return Err(Unreachable::NoAnswer);
            }
            Err(_) => {
                tracing::debug!(%target, "forwarded answer timed out");
                return Err(Unreachable::NoAnswer);
            }
        };
        // The whole answer is read: the connection can take the next request.
        self.put_idle(target, conn);
        let header_text = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let retry_after = header_text(header::RETRY_AFTER.as_str());
        let misrouted_epoch = header_text(MISROUTED_HEADER).and_then(|v| v.parse().ok());
        let served_by = header_text(SERVED_BY_HEADER).or_else(|| Some(target.to_owned()));
        let maybe_applied = parts.headers.contains_key(MAYBE_APPLIED_HEADER);
        let status = parts.status.as_u16();
        Ok(KvAnswer::Relayed(Relayed { status, served_by, misrouted_epoch, maybe_applied, retry_after, body: Vec::from(body) }))
    }

    /// Sends `request` on a pooled connection, else a new one, and returns
    /// the answer's head with the connection it came on.
    async fn dispatch(
        &self,
        target: &str,
        mut request: Request<Full<Bytes>>,
        deadline: Instant,
    ) -> Result<(Response<Incoming>, Conn), Unreachable> {
        let mut pooled_failed = false;
        loop {
            let (mut conn, pooled) = match self.take_ready(target, deadline, pooled_failed).await {
                Some(conn) => (conn, true),
                None => (self.connect(target, deadline).await?, false),
            };
            match timeout_at(deadline, conn.try_send_request(request)).await {
                Ok(Ok(response)) => return Ok((response, conn)),
                Ok(Err(mut e)) => match e.take_message() {
                    // Handed back unwritten: the connection closed first.
                    Some(back) if pooled => {
                        tracing::debug!(%target, error = %e.error(), "pooled connection closed: once more on a new one");
                        request = back;
                        pooled_failed = true;
                    }
                    Some(_) => {
                        tracing::debug!(%target, error = %e.error(), "new connection closed before the request was written");
                        return Err(Unreachable::NotSent);
                    }
                    None => {
                        tracing::debug!(%target, error = %e.error(), "forward failed");
                        return Err(Unreachable::NoAnswer);
                    }
                },
                Err(_) => {
                    tracing::debug!(%target, "forward timed out");
                    return Err(Unreachable::NoAnswer);
                }
            }
        }
    }

    /// A pooled connection to `target` ready for a request, if one is kept
    /// (none after `pooled_failed`: the retry goes on a new connection).
    /// Closed and stale ones are dropped on the way.
    async fn take_ready(&self, target: &str, deadline: Instant, pooled_failed: bool) -> Option<Conn> {
        if pooled_failed {
            return None;
        }
        loop {
            let mut conn = {
                let mut idle = self.idle.lock();
                let list = idle.get_mut(target)?;
                loop {
                    let Idle { conn, since } = list.pop_back()?;
                    if !conn.is_closed() && since.elapsed() < self.max_idle {
                        break conn;
                    }
                }
            };
            // Nothing is handed to the connection until it is ready, so a
            // failure here sends nothing: try the next one.
            if let Ok(Ok(())) = timeout_at(deadline.min(Instant::now() + CONNECT_TIMEOUT), conn.ready()).await {
                return Some(conn);
            }
        }
    }

    /// Hands a connection whose last answer was read whole back to the pool.
    fn put_idle(&self, target: &str, conn: Conn) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        let list = match idle.get_mut(target) {
            Some(list) => list,
            None => idle.entry(target.to_owned()).or_default(),
        };
        while list.front().is_some_and(|i| i.since.elapsed() >= self.max_idle) || list.len() >= IDLE_PER_TARGET {
            list.pop_front();
        }
        list.push_back(Idle { conn, since: Instant::now() });
    }

    /// A new connection to `target` (`host:port`); every failure is `NotSent`.
    async fn connect(&self, target: &str, deadline: Instant) -> Result<Conn, Unreachable> {
        let limit = deadline.min(Instant::now() + CONNECT_TIMEOUT);
        match timeout_at(limit, self.connect_now(target)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => {
                tracing::debug!(%target, error = %e, "cannot connect");
                Err(Unreachable::NotSent)
            }
            Err(_) => {
                tracing::debug!(%target, "connect timed out");
                Err(Unreachable::NotSent)
            }
        }
    }

    async fn connect_now(&self, target: &str) -> Result<Conn, String> {
        let (host, port) = target.rsplit_once(':').ok_or("no port")?;
        let port: u16 = port.parse().map_err(|_| "bad port")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let mut last = String::from("no address");
        for ip in self.dns.lookup(host).await? {
            let stream = match TcpStream::connect(SocketAddr::new(ip, port)).await {
                Ok(s) => s,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            return match &self.tls {
                None => handshake(stream).await,
                Some(tls) => {
                    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
                    handshake(tls.connect(name, stream).await.map_err(|e| format!("TLS: {e}"))?).await
                }
            };
        }
        Err(last)
    }
}

/// The HTTP/1 handshake on a new stream; the connection is driven by its
/// own task, which ends when the connection closes.
async fn handshake<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(stream: S) -> Result<Conn, String> {
    let (conn, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "forwarding connection closed");
        }
    });
    Ok(conn)
}

/// The request as the target reads it: the client's body as sent (or the
/// request serialised), with the hop headers.
fn build_request(me: &str, target: &str, fwd: &Forward<'_>) -> Result<Request<Full<Bytes>>, String> {
    let req = fwd.request;
    let body = match &req.raw_body {
        Some(raw) => raw.clone(),
        None => serde_json::to_vec(&ForwardBody { value: req.value.as_deref(), context: &req.context }).map_err(|e| e.to_string())?.into(),
    };
    let method = match req.op {
        KvOp::Put => Method::PUT,
        KvOp::Get => Method::GET,
        KvOp::Delete => Method::DELETE,
    };
    let path = format!("{KEY_PATH_PREFIX}{}", utf8_percent_encode(&req.key, KEY_SEGMENT));
    let number = |n: u64| HeaderValue::from(n);
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, target)
        .header(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(HOP_HEADER, number(u64::from(fwd.hop)))
        .header(FROM_HEADER, me)
        .header(EPOCH_HEADER, number(fwd.epoch))
        .header(DEADLINE_HEADER, number(fwd.deadline_ms));
    if let Some(wait) = fwd.wait {
        builder = builder.header(WAIT_HEADER, number(wait.as_millis() as u64));
    }
    builder.body(Full::new(body)).map_err(|e| e.to_string())
}

impl Forwarder for HttpForwarder {
    fn forward<'a>(&'a self, me: &'a str, target: &'a str, fwd: Forward<'a>) -> BoxFuture<'a, Result<KvAnswer, Unreachable>> {
        Box::pin(self.send(me, target, fwd))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::node::kv::KvRequest;

    /// What the test target does with each request it reads.
    #[derive(Clone, Copy)]
    enum Behaviour {
        Answer,
        /// Answers, then closes the connection (no `connection: close`).
        AnswerOnce,
        /// Reads the request, then closes without a word.
        Vanish,
    }

    /// Every request a test target read: its head and its body.
    type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

    /// A target on a minimal HTTP/1.1 server: counts connections, keeps
    /// every request (head and body) it reads.
    struct Target {
        addr: String,
        connections: Arc<AtomicUsize>,
        requests: Seen,
    }

    async fn target(behaviour: Behaviour) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests: Seen = Arc::default();
        let (count, seen) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(end) = read_head(&mut stream, &mut buf).await else { return };
                        let head = String::from_utf8(buf[..end].to_vec()).unwrap();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
                            .unwrap_or(0);
                        while buf.len() < end + len {
                            let mut chunk = [0u8; 4096];
                            let n = stream.read(&mut chunk).await.unwrap();
                            assert!(n > 0, "body cut off");
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        seen.lock().push((head, buf[end..end + len].to_vec()));
                        buf.drain(..end + len);
                        match behaviour {
                            Behaviour::Vanish => return,
                            Behaviour::Answer | Behaviour::AnswerOnce => {
                                let answer = "HTTP/1.1 201 Created\r\ncontent-length: 2\r\nx-causalkv-served-by: t:1\r\n\r\n{}";
                                stream.write_all(answer.as_bytes()).await.unwrap();
                                if matches!(behaviour, Behaviour::AnswerOnce) {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Target { addr, connections, requests }
    }

    /// Reads up to the end of a request head; `None` at end of stream.
    async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
        loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(at + 4);
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn put(raw: Option<&'static [u8]>) -> KvRequest {
        let value = Some(RawValue::from_string("\"v\"".into()).unwrap());
        let mut req = KvRequest::client(KvOp::Put, "a key", value, CausalContext::default(), Duration::from_secs(1));
        req.raw_body = raw.map(Bytes::from_static);
        req
    }

    fn forward(req: &KvRequest) -> Forward<'_> {
        Forward { request: req, hop: 1, wait: None, timeout: Duration::from_secs(2), epoch: 3, deadline_ms: 77 }
    }

    #[tokio::test]
    async fn the_client_body_goes_as_sent_and_connections_are_reused() {
        let t = target(Behaviour::Answer).await;
        let fwd = HttpForwarder::new(None, Duration::from_secs(30));
        let raw: &'static [u8] = br#"{ "value" : "v", "causal-context": {}, "extra": 1 }"#;
        for _ in 0..3 {
            let req = put(Some(raw));
            let Ok(KvAnswer::Relayed(answer)) = fwd.forward("me:1", &t.addr, forward(&req)).await else { panic!("no answer") };
            assert_eq!((answer.status, answer.served_by.as_deref(), answer.body.as_slice()), (201, Some("t:1"), &b"{}"[..]));
        }
        let req = put(None);
        assert!(fwd.forward("me:1", &t.addr, forward(&req)).await.is_ok());
        assert_eq!(t.connections.load(Ordering::SeqCst), 1, "one keep-alive connection");
        let requests = t.requests.lock();
        assert_eq!(requests.len(), 4);
        let (head, body) = &requests[0];
        assert!(head.starts_with("PUT /kv-store/keys/a%20key HTTP/1.1\r\n"), "{head}");
        for header in ["x-causalkv-hop: 1", "x-causalkv-from: me:1", "x-causalkv-epoch: 3", "x-causalkv-deadline-ms: 77"] {
            assert!(head.to_ascii_lowercase().contains(header), "{header} in {head}");
        }
        assert_eq!(body.as_slice(), raw, "relayed byte for byte");
        let serialised: serde_json::Value = serde_json::from_slice(&requests[3].1).unwrap();
        assert_eq!(serialised, serde_json::json!({"value": "v", "causal-context": CausalContext::default().to_json()}));
    }

    #[tokio::test]
    async fn only_a_request_that_never_left_is_not_sent() {
        // Nobody listens: the connect fails.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let fwd = HttpForwarder::new(None, Duration::from_secs(30));
        let req = put(None);
        assert_eq!(fwd.forward("me:1", &addr, forward(&req)).await.err(), Some(Unreachable::NotSent));
        // The target read the write and vanished: it may have executed it.
        let t = target(Behaviour::Vanish).await;
        assert_eq!(fwd.forward("me:1", &t.addr, forward(&req)).await.err(), Some(Unreachable::NoAnswer));
        assert_eq!(t.requests.lock().len(), 1, "sent once, never again");
    }

    #[tokio::test]
    async fn a_pooled_connection_the_target_closed_is_replaced() {
        let t = target(Behaviour::Answer).await;
        let fwd = HttpForwarder::new(None, Duration::from_secs(30));
        let req = put(None);
        assert!(fwd.forward("me:1", &t.addr, forward(&req)).await.is_ok());
        // Idle longer than allowed: closed, not reused.
        let fwd_short = HttpForwarder::new(None, Duration::ZERO);
        assert!(fwd_short.forward("me:1", &t.addr, forward(&req)).await.is_ok());
        assert!(fwd_short.forward("me:1", &t.addr, forward(&req)).await.is_ok());
        assert_eq!(t.connections.load(Ordering::SeqCst), 3);
        // Closed by the target after each answer: every request still goes exactly once.
        let t = target(Behaviour::AnswerOnce).await;
        for _ in 0..5 {
            assert!(fwd.forward("me:1", &t.addr, forward(&req)).await.is_ok());
        }
        assert_eq!(t.requests.lock().len(), 5);
    }
}

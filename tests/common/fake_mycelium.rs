//! A faithful in-process fake of the Mycelium daemon's message API, as
//! described in `../shared/MYCELIUM.md` (v0.7.x): several fake daemons in one
//! test process, routed through one [`Network`].
//!
//! Faithful means: the same paths, query parameters and status codes
//! (201/200/204/400/404/408/409/413/415/422), standard base64 for `topic` and
//! `payload`, the topic query value percent-decoded like a form (an
//! unencoded `+` breaks it, as it does on the real daemon), pop vs peek, one
//! 16-hex id per message shared by the 201 answer, the received message and
//! its replies, `srcIp`/`srcPk` of the sending daemon, and **asynchronous
//! delivery**: a message arrives tens of milliseconds after the send
//! ([`Faults::min_delay`]..[`Faults::max_delay`], so messages reorder), never
//! to the sender's own address (it stays pending), retried while the
//! destination is down or unknown and aborted after 5 minutes. Every API call
//! takes the daemon's lock, and **a GET with `timeout` > 0 holds it while it
//! waits**, stalling every other call on that daemon (sends included).
//! A blocking `POST ?reply_timeout=N` does not hold the lock (MYCELIUM.md does
//! not say it does).
//!
//! **Chunking**, as measured on the real daemon: a message longer than
//! [`CHUNK_BYTES`] travels in chunks of that size and the receiving daemon
//! discards a last chunk shorter than [`MIN_LAST_CHUNK`], losing the whole
//! message (payload length `> 1300` with `1 <= len % 1300 < 250`). The fake
//! does the same at delivery, logs the real daemon's line on stderr and
//! counts it ([`Counts::chunk_dropped`]); the sender's status never turns
//! `received` (the real one even says sent and acknowledged). This is its
//! own copy of the rule, not the crate's, so a wrong rule in the crate
//! shows as lost messages here.
//!
//! Switches ([`Network::set_faults`]): drop, duplicate, extra delay, extra
//! reordering; [`FakeDaemon::restart`] takes a daemon's API down for a while
//! and loses its inbox (the real inbox is in memory). Counters per daemon
//! ([`FakeDaemon::counts`]).
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};

/// Largest request body the API takes (413 beyond).
pub const MAX_BODY: usize = 2 * 1024 * 1024;
/// Longest topic, in bytes (400 with an empty body beyond).
pub const MAX_TOPIC: usize = 255;
/// How long the sending side keeps trying to deliver a message.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(300);
/// Retry period of an undeliverable message (Mycelium's retransmit tick).
const RETRY_TICK: Duration = Duration::from_millis(100);
/// Chunk size of a long message.
pub const CHUNK_BYTES: usize = 1300;
/// The receiver drops a message whose last chunk is shorter than this.
pub const MIN_LAST_CHUNK: usize = 250;

/// Whether the real daemon's chunking loses a payload of `len` bytes.
pub fn chunking_drops(len: usize) -> bool {
    len > CHUNK_BYTES && (1..MIN_LAST_CHUNK).contains(&(len % CHUNK_BYTES))
}

/// Network fault switches (all off by default, delay 10–60 ms).
#[derive(Clone, Debug)]
pub struct Faults {
    /// Probability that a sent message is lost for good.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Delivery delay range (uniform): messages overtake each other.
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Added to every delivery.
    pub extra_delay: Duration,
    /// Probability that a message is held back by up to `reorder_by` more.
    pub reorder: f64,
    pub reorder_by: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            drop: 0.0,
            duplicate: 0.0,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(60),
            extra_delay: Duration::ZERO,
            reorder: 0.0,
            reorder_by: Duration::ZERO,
        }
    }
}

/// What a daemon did, for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Sends (and replies) accepted with 201/204.
    pub sent: u64,
    /// Messages that reached this daemon's inbox (or a waiting sender).
    pub delivered: u64,
    /// Messages popped (`peek=false`, 200).
    pub popped: u64,
    /// GETs of messages (any answer).
    pub polls: u64,
    /// Sends lost by the drop switch.
    pub dropped: u64,
    /// Sends delivered twice by the duplicate switch.
    pub duplicated: u64,
    /// Messages lost from the inbox by restarts.
    pub lost_in_restarts: u64,
    /// Messages to this daemon lost to the chunking rule (its last chunk
    /// was too small).
    pub chunk_dropped: u64,
    /// Messages to this daemon longer than one chunk that arrived.
    pub chunked: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    delivered: AtomicU64,
    popped: AtomicU64,
    polls: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    lost_in_restarts: AtomicU64,
    chunk_dropped: AtomicU64,
    chunked: AtomicU64,
}

#[derive(Clone, Debug)]
struct Message {
    id: String,
    src_ip: Ipv6Addr,
    src_pk: String,
    dst_ip: Ipv6Addr,
    dst_pk: String,
    topic: Option<Vec<u8>>,
    payload: Vec<u8>,
}

impl Message {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "srcIp": self.src_ip.to_string(),
            "srcPk": self.src_pk,
            "dstIp": self.dst_ip.to_string(),
            "dstPk": self.dst_pk,
            "payload": B64.encode(&self.payload),
        });
        if let Some(t) = &self.topic {
            v["topic"] = json!(B64.encode(t));
        }
        v
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum MsgState {
    Pending,
    Received,
    Read,
    Aborted,
}

struct Status {
    sender: Ipv6Addr,
    dst: Ipv6Addr,
    state: MsgState,
    created: u64,
    len: usize,
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

struct Net {
    daemons: Mutex<Vec<Arc<Daemon>>>,
    faults: Mutex<Faults>,
    rng: Mutex<Rng>,
    statuses: Mutex<HashMap<String, Status>>,
}

impl Net {
    fn rand(&self) -> f64 {
        self.rng.lock().unwrap().unit()
    }

    fn hex(&self, bytes: usize) -> String {
        let mut rng = self.rng.lock().unwrap();
        (0..bytes).map(|_| format!("{:02x}", rng.next() as u8)).collect()
    }

    fn find(&self, dst: &Dst) -> Option<Arc<Daemon>> {
        let daemons = self.daemons.lock().unwrap();
        daemons
            .iter()
            .find(|d| match dst {
                Dst::Ip(ip) => d.ip == *ip,
                Dst::Pk(pk) => d.pk == *pk,
            })
            .cloned()
    }

    fn set_state(&self, id: &str, state: MsgState) {
        if let Some(s) = self.statuses.lock().unwrap().get_mut(id)
            && s.state != MsgState::Read
        {
            s.state = state;
        }
    }

    /// Routes a message from `from` to `dst`, asynchronously, through the
    /// fault switches.
    fn route(self: &Arc<Self>, from: &Arc<Daemon>, dst: Dst, msg: Message, is_reply: bool) {
        let faults = self.faults.lock().unwrap().clone();
        if self.rand() < faults.drop {
            from.counters.dropped.fetch_add(1, Ordering::Relaxed);
            let (net, id) = (self.clone(), msg.id.clone());
            tokio::spawn(async move {
                tokio::time::sleep(GIVE_UP_AFTER).await;
                net.set_state(&id, MsgState::Aborted);
            });
            return;
        }
        let copies = if self.rand() < faults.duplicate {
            from.counters.duplicated.fetch_add(1, Ordering::Relaxed);
            2
        } else {
            1
        };
        for _ in 0..copies {
            let spread = faults.max_delay.saturating_sub(faults.min_delay).as_secs_f64();
            let mut delay = faults.min_delay + Duration::from_secs_f64(spread * self.rand()) + faults.extra_delay;
            if self.rand() < faults.reorder {
                delay += Duration::from_secs_f64(faults.reorder_by.as_secs_f64() * self.rand());
            }
            let (net, from, dst, msg) = (self.clone(), from.clone(), dst.clone(), msg.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let deadline = tokio::time::Instant::now() + GIVE_UP_AFTER - delay;
                loop {
                    // Never to the sender's own address; retried while the
                    // destination is unknown or down.
                    if let Some(d) = net.find(&dst)
                        && !Arc::ptr_eq(&d, &from)
                        && d.up.load(Ordering::SeqCst)
                    {
                        let id = msg.id.clone();
                        if d.deliver(msg, is_reply) {
                            net.set_state(&id, MsgState::Received);
                        }
                        return;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        net.set_state(&msg.id, MsgState::Aborted);
                        return;
                    }
                    tokio::time::sleep(RETRY_TICK).await;
                }
            });
        }
    }
}

#[derive(Clone, Debug)]
enum Dst {
    Ip(Ipv6Addr),
    Pk(String),
}

struct Daemon {
    ip: Ipv6Addr,
    pk: String,
    started: u64,
    port: Mutex<u16>,
    inbox: Mutex<VecDeque<Message>>,
    arrived: Notify,
    /// The daemon's API lock: every call holds it; a waiting GET holds it
    /// for the whole wait.
    lock: tokio::sync::Mutex<()>,
    up: AtomicBool,
    /// Senders blocked in `POST ?reply_timeout`, by message id.
    reply_waiters: Mutex<HashMap<String, oneshot::Sender<Message>>>,
    peers: Mutex<Vec<String>>,
    counters: Counters,
    server: Mutex<Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>>,
    /// Strong: a daemon may outlive the test's handles while its runtime
    /// winds down (the cycle lives as long as the test process).
    net: Arc<Net>,
}

impl Daemon {
    /// Puts a message in the inbox (or hands a reply to its waiting
    /// sender). False when the daemon is down or its chunking drops the
    /// message (the message is lost).
    fn deliver(&self, mut msg: Message, is_reply: bool) -> bool {
        if !self.up.load(Ordering::SeqCst) {
            return false;
        }
        let len = msg.payload.len();
        if chunking_drops(len) {
            let chunks = len.div_ceil(CHUNK_BYTES);
            self.counters.chunk_dropped.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "fake mycelium {}: Dropping CHUNK {chunks}/{chunks} which is too small ({} bytes / {MIN_LAST_CHUNK} bytes) of message {} ({len} bytes from {})",
                self.ip,
                len % CHUNK_BYTES,
                msg.id,
                msg.src_ip
            );
            return false;
        }
        if len > CHUNK_BYTES {
            self.counters.chunked.fetch_add(1, Ordering::Relaxed);
        }
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        if is_reply {
            if let Some(waiter) = self.reply_waiters.lock().unwrap().remove(&msg.id) {
                let _ = waiter.send(msg);
                return true;
            }
            // A reply to a sender that is not waiting: inbox, no topic.
            msg.topic = None;
        }
        self.inbox.lock().unwrap().push_back(msg);
        self.arrived.notify_waiters();
        true
    }

    fn net(&self) -> Arc<Net> {
        self.net.clone()
    }
}

/// Several fake daemons that reach each other.
#[derive(Clone)]
pub struct Network {
    net: Arc<Net>,
}

impl Default for Network {
    fn default() -> Self {
        Self::new()
    }
}

impl Network {
    pub fn new() -> Self {
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1;
        Network {
            net: Arc::new(Net {
                daemons: Mutex::new(Vec::new()),
                faults: Mutex::new(Faults::default()),
                rng: Mutex::new(Rng(seed)),
                statuses: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.net.faults.lock().unwrap() = faults;
    }

    pub fn faults(&self) -> Faults {
        self.net.faults.lock().unwrap().clone()
    }

    /// Starts a daemon with overlay address `4a0::<n>` (n = 1, 2, …) and a
    /// random 64-hex public key, its API on 127.0.0.1 at an OS-chosen port.
    pub async fn spawn_daemon(&self) -> FakeDaemon {
        let n = self.net.daemons.lock().unwrap().len() as u16 + 1;
        let ip = Ipv6Addr::new(0x4a0, 0, 0, 0, 0, 0, 0, n);
        let d = Arc::new(Daemon {
            ip,
            pk: self.net.hex(32),
            started: now_secs(),
            port: Mutex::new(0),
            inbox: Mutex::new(VecDeque::new()),
            arrived: Notify::new(),
            lock: tokio::sync::Mutex::new(()),
            up: AtomicBool::new(true),
            reply_waiters: Mutex::new(HashMap::new()),
            peers: Mutex::new(Vec::new()),
            counters: Counters::default(),
            server: Mutex::new(None),
            net: self.net.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a fake daemon");
        *d.port.lock().unwrap() = listener.local_addr().unwrap().port();
        serve(&d, listener);
        self.net.daemons.lock().unwrap().push(d.clone());
        FakeDaemon { d }
    }
}

fn serve(d: &Arc<Daemon>, listener: tokio::net::TcpListener) {
    let app = Router::new()
        .route("/api/v1/messages", get(pop).post(send))
        .route("/api/v1/messages/reply/{id}", post(reply))
        .route("/api/v1/messages/status/{id}", get(status))
        .route("/api/v1/admin", get(admin))
        .route("/api/v1/admin/peers", get(list_peers).post(add_peer))
        .route("/api/v1/pubkey/{ip}", get(pubkey))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(d.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await;
    });
    *d.server.lock().unwrap() = Some((stop_tx, task));
}

/// A handle on one fake daemon.
#[derive(Clone)]
pub struct FakeDaemon {
    d: Arc<Daemon>,
}

impl FakeDaemon {
    /// Base URL of its API (`MYCELIUM_API`).
    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", *self.d.port.lock().unwrap())
    }

    pub fn ip(&self) -> Ipv6Addr {
        self.d.ip
    }

    pub fn pk(&self) -> String {
        self.d.pk.clone()
    }

    pub fn counts(&self) -> Counts {
        let c = &self.d.counters;
        Counts {
            sent: c.sent.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            popped: c.popped.load(Ordering::Relaxed),
            polls: c.polls.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            duplicated: c.duplicated.load(Ordering::Relaxed),
            lost_in_restarts: c.lost_in_restarts.load(Ordering::Relaxed),
            chunk_dropped: c.chunk_dropped.load(Ordering::Relaxed),
            chunked: c.chunked.load(Ordering::Relaxed),
        }
    }

    /// Whether an API call holds the daemon's lock now (a waiting GET does).
    pub fn is_locked(&self) -> bool {
        self.d.lock.try_lock().is_err()
    }

    pub fn inbox_len(&self) -> usize {
        self.d.inbox.lock().unwrap().len()
    }

    /// Stops the daemon's API (connections refused), loses its inbox, and
    /// brings it back on the same port after `downtime`. Messages sent to it
    /// meanwhile are retried by their senders and arrive afterwards.
    pub async fn restart(&self, downtime: Duration) {
        self.d.up.store(false, Ordering::SeqCst);
        if let Some((stop, task)) = self.d.server.lock().unwrap().take() {
            let _ = stop.send(());
            let abort = task.abort_handle();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                abort.abort();
            });
        }
        {
            let mut inbox = self.d.inbox.lock().unwrap();
            self.d.counters.lost_in_restarts.fetch_add(inbox.len() as u64, Ordering::Relaxed);
            inbox.clear();
        }
        self.d.reply_waiters.lock().unwrap().clear();
        tokio::time::sleep(downtime).await;
        let port = *self.d.port.lock().unwrap();
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.d.up.store(true, Ordering::SeqCst);
        serve(&self.d, listener);
    }
}

// --- the API ---------------------------------------------------------------

fn text(status: StatusCode, msg: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], msg.to_owned()).into_response()
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// A checked send body.
struct SendBody {
    dst: Dst,
    topic: Option<Vec<u8>>,
    payload: Vec<u8>,
}

/// A refused request: status and text body (empty: no body).
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        if self.1.is_empty() { self.0.into_response() } else { text(self.0, &self.1) }
    }
}

/// Checks a send (or reply) body the way the daemon does.
fn parse_send(headers: &HeaderMap, body: &[u8]) -> Result<SendBody, Refusal> {
    let text = |status: StatusCode, msg: &str| Refusal(status, msg.to_owned());
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return Err(text(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Expected request with `Content-Type: application/json`"));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| text(StatusCode::BAD_REQUEST, &format!("Failed to parse the request body as JSON: {e}")))?;
    let unprocessable = |why: &str| text(StatusCode::UNPROCESSABLE_ENTITY, &format!("Failed to deserialize the JSON body: {why}"));
    let obj = v.as_object().ok_or_else(|| unprocessable("expected an object"))?;
    let dst = obj.get("dst").and_then(Value::as_object).ok_or_else(|| unprocessable("missing field `dst`"))?;
    let dst = match (dst.get("ip"), dst.get("pk")) {
        (Some(_), Some(_)) => return Err(text(StatusCode::BAD_REQUEST, "dst: exactly one of ip and pk")),
        (Some(ip), None) => {
            let ip = ip.as_str().and_then(|s| s.parse::<Ipv6Addr>().ok()).ok_or_else(|| unprocessable("dst.ip: invalid IP address"))?;
            Dst::Ip(ip)
        }
        (None, Some(pk)) => {
            let pk = pk
                .as_str()
                .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| unprocessable("dst.pk: expected 64 hex characters"))?;
            Dst::Pk(pk.to_ascii_lowercase())
        }
        (None, None) => return Err(unprocessable("dst: unknown variant, expected `ip` or `pk`")),
    };
    let payload = obj.get("payload").ok_or_else(|| unprocessable("missing field `payload`"))?;
    let payload = payload.as_str().and_then(|p| B64.decode(p).ok()).ok_or_else(|| unprocessable("payload: invalid base64"))?;
    let topic = match obj.get("topic") {
        None | Some(Value::Null) => None,
        Some(t) => Some(t.as_str().and_then(|t| B64.decode(t).ok()).ok_or_else(|| unprocessable("topic: invalid base64"))?),
    };
    if topic.as_ref().is_some_and(|t| t.len() > MAX_TOPIC) {
        return Err(Refusal(StatusCode::BAD_REQUEST, String::new()));
    }
    // An empty topic is no topic.
    let topic = topic.filter(|t| !t.is_empty());
    Ok(SendBody { dst, topic, payload })
}

fn new_message(net: &Net, d: &Daemon, id: String, body: &SendBody) -> Message {
    let (dst_ip, dst_pk) = match net.find(&body.dst) {
        Some(t) => (t.ip, t.pk.clone()),
        None => match &body.dst {
            Dst::Ip(ip) => (*ip, String::new()),
            Dst::Pk(pk) => (Ipv6Addr::UNSPECIFIED, pk.clone()),
        },
    };
    Message { id, src_ip: d.ip, src_pk: d.pk.clone(), dst_ip, dst_pk, topic: body.topic.clone(), payload: body.payload.clone() }
}

fn register(net: &Net, d: &Daemon, msg: &Message) {
    net.statuses.lock().unwrap().insert(
        msg.id.clone(),
        Status { sender: d.ip, dst: msg.dst_ip, state: MsgState::Pending, created: now_secs(), len: msg.payload.len() },
    );
}

async fn send(State(d): State<Arc<Daemon>>, Query(q): Query<HashMap<String, String>>, headers: HeaderMap, body: Bytes) -> Response {
    let net = d.net();
    let reply_timeout = match q.get("reply_timeout") {
        None => None,
        Some(t) => match t.parse::<u64>() {
            Ok(t) => Some(t),
            Err(_) => return text(StatusCode::BAD_REQUEST, "Failed to deserialize query string"),
        },
    };
    let waiter = {
        let _lock = d.lock.lock().await;
        let body = match parse_send(&headers, &body) {
            Ok(b) => b,
            Err(refusal) => return refusal.into_response(),
        };
        let id = net.hex(8);
        let msg = new_message(&net, &d, id.clone(), &body);
        register(&net, &d, &msg);
        d.counters.sent.fetch_add(1, Ordering::Relaxed);
        let waiter = reply_timeout.map(|t| {
            let (tx, rx) = oneshot::channel();
            d.reply_waiters.lock().unwrap().insert(id.clone(), tx);
            (t, rx)
        });
        net.route(&d, body.dst, msg, false);
        match waiter {
            None => return (StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response(),
            Some(w) => (id, w),
        }
    };
    let (id, (secs, rx)) = waiter;
    match tokio::time::timeout(Duration::from_secs(secs), rx).await {
        Ok(Ok(reply)) => (StatusCode::OK, axum::Json(reply.to_json())).into_response(),
        _ => {
            d.reply_waiters.lock().unwrap().remove(&id);
            (StatusCode::REQUEST_TIMEOUT, axum::Json(json!({"id": id}))).into_response()
        }
    }
}

async fn reply(State(d): State<Arc<Daemon>>, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let net = d.net();
    let _lock = d.lock.lock().await;
    let body = match parse_send(&headers, &body) {
        Ok(b) => b,
        Err(refusal) => return refusal.into_response(),
    };
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return text(StatusCode::BAD_REQUEST, "Invalid message id");
    }
    let msg = new_message(&net, &d, id, &body);
    d.counters.sent.fetch_add(1, Ordering::Relaxed);
    net.route(&d, body.dst, msg, true);
    no_content()
}

async fn pop(State(d): State<Arc<Daemon>>, Query(q): Query<HashMap<String, String>>) -> Response {
    d.counters.polls.fetch_add(1, Ordering::Relaxed);
    let bad_query = || text(StatusCode::BAD_REQUEST, "Failed to deserialize query string");
    let peek = match q.get("peek").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return bad_query(),
    };
    let timeout = match q.get("timeout") {
        None => 0,
        Some(t) => match t.parse::<u64>() {
            Ok(t) => t,
            Err(_) => return bad_query(),
        },
    };
    // Some(empty) matches only topic-less messages; None matches any.
    let topic: Option<Vec<u8>> = match q.get("topic") {
        None => None,
        Some(t) => match B64.decode(t) {
            Ok(t) => Some(t),
            Err(_) => return bad_query(),
        },
    };
    let matches = |m: &Message| match &topic {
        None => true,
        Some(t) if t.is_empty() => m.topic.is_none(),
        Some(t) => m.topic.as_ref() == Some(t),
    };
    // Held for the whole call, waits included.
    let _lock = d.lock.lock().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    loop {
        let arrived = d.arrived.notified();
        {
            let mut inbox = d.inbox.lock().unwrap();
            if let Some(pos) = inbox.iter().position(&matches) {
                let msg = if peek { inbox[pos].clone() } else { inbox.remove(pos).expect("present") };
                drop(inbox);
                if !peek {
                    d.counters.popped.fetch_add(1, Ordering::Relaxed);
                    d.net().set_state(&msg.id, MsgState::Read);
                }
                return (StatusCode::OK, axum::Json(msg.to_json())).into_response();
            }
        }
        if tokio::time::timeout_at(deadline, arrived).await.is_err() {
            return no_content();
        }
    }
}

async fn status(State(d): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    let net = d.net();
    let _lock = d.lock.lock().await;
    let statuses = net.statuses.lock().unwrap();
    match statuses.get(&id).filter(|s| s.sender == d.ip) {
        Some(s) => {
            let state = match s.state {
                MsgState::Pending => "pending",
                MsgState::Received => "received",
                MsgState::Read => "read",
                MsgState::Aborted => "aborted",
            };
            axum::Json(json!({
                "dst": s.dst.to_string(),
                "state": state,
                "created": s.created,
                "deadline": s.created + GIVE_UP_AFTER.as_secs(),
                "msgLen": s.len,
            }))
            .into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn admin(State(d): State<Arc<Daemon>>) -> Response {
    let _lock = d.lock.lock().await;
    let seg = d.ip.segments();
    let subnet = Ipv6Addr::new(seg[0], seg[1], seg[2], seg[3], 0, 0, 0, 0);
    axum::Json(json!({
        "nodeSubnet": format!("{subnet}/64"),
        "nodeIp": d.ip.to_string(),
        "nodePubkey": d.pk,
        "nodeStartTime": d.started,
    }))
    .into_response()
}

async fn list_peers(State(d): State<Arc<Daemon>>) -> Response {
    let _lock = d.lock.lock().await;
    let peers: Vec<Value> = d
        .peers
        .lock()
        .unwrap()
        .iter()
        .map(|e| {
            let (proto, addr) = e.split_once("://").unwrap_or(("tcp", e));
            json!({"endpoint": {"proto": proto, "socketAddr": addr}, "type": "static", "connectionState": "alive", "txBytes": 0, "rxBytes": 0})
        })
        .collect();
    axum::Json(peers).into_response()
}

async fn add_peer(State(d): State<Arc<Daemon>>, body: Bytes) -> Response {
    let _lock = d.lock.lock().await;
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return text(StatusCode::BAD_REQUEST, "Failed to parse the request body as JSON");
    };
    let valid =
        |e: &&str| e.split_once("://").is_some_and(|(proto, addr)| matches!(proto, "tcp" | "quic") && addr.parse::<SocketAddr>().is_ok());
    let Some(endpoint) = v.get("endpoint").and_then(Value::as_str).filter(valid) else {
        return text(StatusCode::UNPROCESSABLE_ENTITY, "Failed to deserialize the JSON body: endpoint");
    };
    let mut peers = d.peers.lock().unwrap();
    if peers.iter().any(|p| p == endpoint) {
        return text(StatusCode::CONFLICT, "A peer identified by that endpoint already exists");
    }
    peers.push(endpoint.to_owned());
    no_content()
}

async fn pubkey(State(d): State<Arc<Daemon>>, Path(ip): Path<String>) -> Response {
    let _lock = d.lock.lock().await;
    let Ok(ip) = ip.parse::<Ipv6Addr>() else {
        return text(StatusCode::BAD_REQUEST, "Invalid IP address");
    };
    match d.net().find(&Dst::Ip(ip)) {
        Some(t) => axum::Json(json!({"publicKey": t.pk})).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

//! The Mycelium transport (DESIGN.md "Transports"): gossip requests and
//! replies travel as messages through the local Mycelium daemon's message
//! API (MYCELIUM.md) instead of `/internal/...` HTTP requests.
//!
//! - **Request/reply over one-way messages.** Every gossip call (replicate,
//!   pull, snapshot, heartbeat) becomes a request message with a fresh
//!   correlation id; the peer answers with a reply message carrying the same
//!   id, sent to the request's authenticated sender (`srcIp`). The caller
//!   waits for that reply with the HTTP transport's time limits; a
//!   replication push or snapshot page unanswered in that time goes once
//!   more under a new id (`causalkv_mycelium_lost_total{peer}` counts
//!   unanswered attempts), and a reply to either ends the call. Replies that
//!   come late or twice find no waiter and are dropped (counted).
//! - **Batching.** Each destination has an outbox drained by one sender task:
//!   every request and reply queued while the previous send was in flight
//!   goes in the next Mycelium message ([`wire::Frame`]), so the message rate
//!   stays bounded under load; replication batches and pull answers carry up
//!   to 1 024 records each. Frames over ~1 MB go as fragments.
//! - **Chunk-safe lengths.** The daemon sends a long message in 1 300-byte
//!   chunks and its receiver silently drops a message whose last chunk is
//!   under 250 bytes; every payload is padded to a length it delivers
//!   ([`wire::pad`]) before it is handed over.
//! - **Receiving.** One node-lifetime task pops the cluster's topic
//!   (`peek=false&timeout=0`, never a waiting GET: it would hold the daemon's
//!   lock and stall every send) every [`MIN_POLL`] while replies are awaited
//!   or messages flow, backing off to [`MAX_POLL`] while idle, and to
//!   [`MAX_ERROR_BACKOFF`] while the daemon is unreachable. Requests go to
//!   the current epoch's `Gossip::handle_*` — the code the HTTP endpoints
//!   call — so the loop follows view changes.
//! - **Who is heard.** A message is accepted only when its `srcIp`/`srcPk`
//!   (authenticated by Mycelium) is the identity of a node of the view, or of
//!   a view being changed to, and its frame names that same node; with
//!   `CLUSTER_KEY` the frame's HMAC must verify too. Everything else is
//!   dropped and counted (`causalkv_mycelium_rejected_total{reason}`).
//! - **Loss, duplicates, order, daemon restarts.** Mycelium reorders, gives
//!   up after 5 minutes and keeps its inbox in memory only. Nothing here
//!   depends on order or delivery: a lost push or snapshot request or reply
//!   is resent once, then the call fails and the replicator / anti-entropy
//!   retry (pulls and heartbeats are resent by their loops); a duplicate
//!   request is applied again
//!   harmlessly (apply is idempotent by seq); the store's seqs give order.
//! - **Still over HTTP:** view-change steps (`view`) and client
//!   forwarding use HTTP to the VIEW addresses (over the overlay when VIEW
//!   holds overlay addresses and the daemon runs its TUN interface).

mod daemon;
pub mod settings;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use settings::{DEFAULT_API, DEFAULT_TOPIC, Identity, MyceliumConfig};

use super::auth::AuthError;
use super::{Auth, BoxFuture, GossipError, HttpTransport, Inbound, Message, Transport};
use crate::faults::Faults;
use crate::metrics::{KindLabel, Metrics, PeerLabel, ReasonLabel};
use crate::viewchange::{Proposal, Step};
use daemon::{Daemon, Received};
use wire::{Frame, Msg, Reassembly, VERSION};

/// Poll interval while replies are awaited or messages arrive.
pub const MIN_POLL: Duration = Duration::from_millis(10);
/// Longest poll interval while idle (a request waits at most this long in
/// the daemon's inbox before it is seen).
pub const MAX_POLL: Duration = Duration::from_millis(50);
/// Longest pause between polls while the daemon cannot be reached.
pub const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// Requests handled at once; the poll loop waits when all are busy.
const MAX_HANDLERS: usize = 256;
/// A reply not handed to the daemon within this is dropped (the requester
/// has given up by then).
const REPLY_TTL: Duration = Duration::from_secs(10);
/// Most queued messages taken into one sending round.
const MAX_ROUND: usize = 1024;
/// "Method" and "path" that `CLUSTER_KEY` HMACs of frames are computed over.
const SIGNED_PATH: &str = "/mycelium/frame";
/// At most one warning per this period about rejected messages.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A message waiting in an outbox.
struct Outgoing {
    /// A serialised [`Msg`].
    text: String,
    /// Dropped unsent after this.
    deadline: Instant,
    /// Told whether the daemon took the message (requests only).
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// The reply a caller waits for.
struct Reply {
    status: u16,
    body: Option<Box<RawValue>>,
    error: Option<String>,
}

struct Waiter {
    peer: String,
    /// Shared by every attempt of one call.
    tx: mpsc::Sender<Reply>,
}

/// What the outbox senders share.
struct Shared {
    daemon: Daemon,
    me: String,
    auth: Arc<Auth>,
    metrics: Arc<Metrics>,
    ids: Ids,
}

/// Message-correlation ids: a random (v4) uuid per process and a counter,
/// so ids never repeat across restarts and cost no randomness per message.
struct Ids {
    nonce: uuid::Uuid,
    next: AtomicU64,
}

impl Ids {
    fn new() -> Self {
        Self { nonce: uuid::Uuid::new_v4(), next: AtomicU64::new(1) }
    }

    fn next(&self) -> String {
        format!("{}-{:x}", self.nonce.simple(), self.next.fetch_add(1, Ordering::Relaxed))
    }
}

pub struct MyceliumTransport {
    cfg: MyceliumConfig,
    shared: Arc<Shared>,
    /// View-change steps.
    http: HttpTransport,
    faults: Arc<Faults>,
    /// Requests waiting for their reply, by correlation id.
    pending: DashMap<String, Waiter>,
    outboxes: DashMap<Identity, mpsc::UnboundedSender<Outgoing>>,
    reassembly: Mutex<Reassembly>,
    handlers: Arc<Semaphore>,
    /// A request went out: poll at the short interval.
    wake: Notify,
    topic: Vec<u8>,
    last_warning: Mutex<Option<std::time::Instant>>,
}

/// Removes a caller's waiters (one per attempt) however the call ends.
struct PendingGuard<'a> {
    pending: &'a DashMap<String, Waiter>,
    ids: Vec<String>,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            self.pending.remove(id);
        }
    }
}

/// How many times a request of `kind` is sent, each with the whole time
/// limit. Replication pushes and snapshot pages go twice: a lost one would
/// otherwise cost a failed call, the replicator's backoff and a probe, or a
/// whole snapshot restarted. Pulls and heartbeats go once: their loops send
/// the next one within 200 ms anyway, and a pull's caller bounds its time.
/// Never a resend before the whole time limit: a busy node answers late,
/// not never, and resending big batches to it early (tried: at half the
/// limit) multiplies its work until nothing is answered in time.
fn attempts(kind: &str) -> u32 {
    match kind {
        "replicate" | "snapshot" => 2,
        _ => 1,
    }
}

fn kind_label(kind: &str) -> &'static str {
    match kind {
        "replicate" => "replicate",
        "pull" => "pull",
        "snapshot" => "snapshot",
        "heartbeat" => "heartbeat",
        _ => "unknown",
    }
}

impl MyceliumTransport {
    pub fn new(
        cfg: MyceliumConfig,
        me: String,
        http: HttpTransport,
        faults: Arc<Faults>,
        auth: Arc<Auth>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, reqwest::Error> {
        let daemon = Daemon::new(&cfg)?;
        let topic = daemon.topic_bytes();
        Ok(Self {
            cfg,
            shared: Arc::new(Shared { daemon, me, auth, metrics, ids: Ids::new() }),
            http,
            faults,
            pending: DashMap::new(),
            outboxes: DashMap::new(),
            reassembly: Mutex::new(Reassembly::default()),
            handlers: Arc::new(Semaphore::new(MAX_HANDLERS)),
            wake: Notify::new(),
            topic,
            last_warning: Mutex::new(None),
        })
    }

    fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    fn reject(&self, reason: &'static str, detail: impl FnOnce() -> String) {
        self.metrics().mycelium_rejected.get_or_create(&ReasonLabel { reason }).inc();
        let mut last = self.last_warning.lock();
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(std::time::Instant::now());
            tracing::warn!(reason, detail = %detail(), "Mycelium message dropped (further ones only counted for a while)");
        } else {
            tracing::debug!(reason, detail = %detail(), "Mycelium message dropped");
        }
    }

    /// Queues a message for `dst`; one sender task per destination.
    fn enqueue(&self, dst: Identity, peer: &str, mut out: Outgoing) {
        for _ in 0..2 {
            let sent = {
                let tx = self.outboxes.entry(dst.clone()).or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(send_loop(self.shared.clone(), dst.clone(), peer.to_owned(), rx));
                    tx
                });
                tx.send(out)
                // The map's entry is released here, before any remove below.
            };
            match sent {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => {
                    // The sender task is gone (it panicked): start another.
                    self.outboxes.remove(&dst);
                    out = back;
                }
            }
        }
    }

    /// Sends a request to `peer` and waits for its reply: up to [`attempts`]
    /// attempts of `timeout` each.
    ///
    /// An attempt handed to the daemon whose reply has not come in `timeout`
    /// is counted in `causalkv_mycelium_lost_total{peer}` and, if attempts
    /// are left, the request goes again under a new id, so a lost message
    /// costs one time limit. A late reply to an earlier attempt is still taken. Resending
    /// is safe for every kind: a replicate batch applies by per-origin seq
    /// (a record at or below the applied seq, or already pending, is
    /// skipped), and pull, snapshot and heartbeat only read or record
    /// liveness.
    async fn send_request(&self, peer: &str, kind: &'static str, body: Box<RawValue>, timeout: Duration) -> Result<Vec<u8>, GossipError> {
        let unreachable = |reason: String| GossipError::Unreachable { peer: peer.to_owned(), reason };
        let dst = self.cfg.identity_of(peer).ok_or_else(|| unreachable("no Mycelium identity (MYCELIUM_PEERS)".into()))?;
        let attempts = attempts(kind);
        let (tx, mut rx) = mpsc::channel(attempts as usize);
        let mut guard = PendingGuard { pending: &self.pending, ids: Vec::new() };
        let mut reply = None;
        for attempt in 1..=attempts {
            let id = self.shared.ids.next();
            let msg = Msg { id: id.clone(), kind: Some(kind.into()), status: None, body: Some(body.clone()), error: None };
            let text = serde_json::to_string(&msg).map_err(|e| unreachable(e.to_string()))?;
            self.pending.insert(id.clone(), Waiter { peer: peer.to_owned(), tx: tx.clone() });
            guard.ids.push(id);
            let attempt_deadline = Instant::now() + timeout;
            let (done_tx, mut done_rx) = oneshot::channel();
            self.enqueue(dst.clone(), peer, Outgoing { text, deadline: attempt_deadline, done: Some(done_tx) });
            self.metrics().mycelium_requests_sent.get_or_create(&KindLabel { kind }).inc();
            self.wake.notify_one();
            let mut handed = false;
            let timer = tokio::time::sleep_until(attempt_deadline);
            tokio::pin!(timer);
            loop {
                tokio::select! {
                    biased;
                    r = rx.recv() => {
                        reply = Some(r.ok_or_else(|| unreachable("the transport stopped".into()))?);
                        break;
                    }
                    sent = &mut done_rx, if !handed => match sent {
                        Ok(Ok(())) => handed = true,
                        Ok(Err(e)) => return Err(unreachable(e)),
                        Err(_) => return Err(unreachable("the message was not sent".into())),
                    },
                    _ = &mut timer => break,
                }
            }
            if reply.is_some() {
                break;
            }
            if handed {
                self.metrics().mycelium_lost.get_or_create(&PeerLabel { peer: peer.to_owned() }).inc();
                tracing::debug!(%peer, kind, attempt, attempts, "no reply over Mycelium in the attempt's time");
            }
        }
        let Some(reply) = reply else {
            self.metrics().mycelium_timeouts.get_or_create(&KindLabel { kind }).inc();
            return Err(unreachable(format!("no {kind} reply over Mycelium within {timeout:?} ({attempts} attempt(s))")));
        };
        if reply.status == 403 {
            self.http.refused(peer, format!("answered 403 over Mycelium: {}", reply.error.as_deref().unwrap_or("")));
        }
        if reply.status != 200 {
            tracing::debug!(%peer, status = reply.status, error = ?reply.error, "peer refused a Mycelium request");
            return Err(GossipError::Rejected { peer: peer.to_owned(), status: reply.status });
        }
        let body = reply.body.ok_or_else(|| unreachable("reply without a body".into()))?;
        Ok(Box::<str>::from(body).into_string().into_bytes())
    }

    /// Logs whether the local daemon is the identity the cluster knows this
    /// node by (a mismatch means peers' messages go elsewhere).
    async fn check_daemon(&self) {
        match self.shared.daemon.admin().await {
            Ok(admin) => {
                let ip = admin.node_ip.parse().ok();
                match self.cfg.identity_of(&self.shared.me) {
                    Some(id) if !id.matches(ip.as_ref(), Some(&admin.node_pubkey)) => tracing::error!(
                        expected = %id, daemon_ip = %admin.node_ip, daemon_pubkey = %admin.node_pubkey, api = %self.cfg.api,
                        "the Mycelium daemon at MYCELIUM_API is not this node's identity (VIEW address / MYCELIUM_PEERS): peers' messages will not arrive here"
                    ),
                    _ => tracing::info!(ip = %admin.node_ip, pubkey = %admin.node_pubkey, topic = %self.cfg.topic, "gossip over Mycelium"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "the Mycelium daemon is not reachable yet; gossip resumes when it is"),
        }
    }

    async fn receive_loop(self: Arc<Self>, inbound: Arc<dyn Inbound>, mut shutdown: watch::Receiver<bool>) {
        self.check_daemon().await;
        let mut idle = MIN_POLL;
        let mut error_backoff = Duration::from_millis(100);
        let mut failing = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.shared.daemon.pop().await {
                Ok(Some(msg)) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("the Mycelium daemon answers again");
                    }
                    idle = MIN_POLL;
                    self.received(msg, &inbound).await;
                }
                Ok(None) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("the Mycelium daemon answers again");
                    }
                    error_backoff = Duration::from_millis(100);
                    let pause = if self.pending.is_empty() {
                        let p = idle;
                        idle = (idle * 2).min(MAX_POLL);
                        p
                    } else {
                        idle = MIN_POLL;
                        MIN_POLL
                    };
                    tokio::select! {
                        biased;
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.wake.notified() => { idle = MIN_POLL; }
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                }
                Err(e) => {
                    self.metrics().mycelium_daemon_errors.inc();
                    if !failing {
                        tracing::warn!(error = %e, "polling the Mycelium daemon failed; retrying");
                        failing = true;
                    }
                    tokio::select! {
                        biased;
                        _ = tokio::time::sleep(error_backoff) => {}
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                    error_backoff = (error_backoff * 2).min(MAX_ERROR_BACKOFF);
                }
            }
        }
    }

    /// Which node of the view (or of a view being changed to) sent `msg`.
    fn sender_of(&self, msg: &Received, inbound: &dyn Inbound) -> Option<String> {
        inbound
            .members()
            .into_iter()
            .find(|n| self.cfg.identity_of(n).is_some_and(|id| id.matches(msg.src_ip.as_ref(), msg.src_pk.as_deref())))
    }

    async fn received(self: &Arc<Self>, msg: Received, inbound: &Arc<dyn Inbound>) {
        self.metrics().mycelium_messages_received.inc();
        let src = || format!("message {} from srcIp {:?} srcPk {:?}", msg.id, msg.src_ip, msg.src_pk);
        if msg.topic.as_deref() != Some(self.topic.as_slice()) {
            self.reject("topic", src);
            return;
        }
        let Some(sender) = self.sender_of(&msg, inbound.as_ref()) else {
            self.reject("unknown_sender", || format!("{} is not a node of the view", src()));
            return;
        };
        let reply_to = match (msg.src_ip, &msg.src_pk) {
            (Some(ip), _) => Identity::Ip(ip),
            (None, Some(pk)) => Identity::Pk(pk.to_ascii_lowercase()),
            (None, None) => unreachable!("a matched sender has an ip or a pk"),
        };
        if self.faults.is_blocked(&sender) {
            return;
        }
        let Ok(mut frame) = serde_json::from_slice::<Frame>(&msg.payload) else {
            self.reject("malformed", || format!("unparsable frame from {sender}"));
            return;
        };
        if let Some(frag) = frame.frag.take() {
            if frame.from != sender {
                self.reject("impersonation", || format!("fragment from {sender} claims to be from {}", frame.from));
                return;
            }
            let whole = self.reassembly.lock().add(&sender, frag);
            frame = match whole {
                Ok(None) => return,
                Ok(Some(bytes)) => match serde_json::from_slice::<Frame>(&bytes) {
                    Ok(f) if f.frag.is_none() => f,
                    _ => {
                        self.reject("malformed", || format!("unparsable reassembled frame from {sender}"));
                        return;
                    }
                },
                Err(e) => {
                    self.reject("malformed", || format!("bad fragment from {sender}: {e:?}"));
                    return;
                }
            };
        }
        if frame.v != VERSION {
            self.reject("malformed", || format!("frame version {} from {sender}", frame.v));
            return;
        }
        if frame.from != sender {
            self.reject("impersonation", || format!("a frame from {sender}'s daemon claims to be from {}", frame.from));
            return;
        }
        let Some(msgs) = frame.msgs else {
            self.reject("malformed", || format!("frame without messages from {sender}"));
            return;
        };
        if self.shared.auth.has_key() {
            match self.shared.auth.verify_message(SIGNED_PATH, &sender, frame.ts.as_deref(), frame.sig.as_deref(), msgs.get().as_bytes()) {
                Ok(()) => {}
                // A duplicate delivery of a frame already handled.
                Err(AuthError::Replay) => {
                    self.metrics().mycelium_duplicates.inc();
                    return;
                }
                // Delivered too late (Mycelium retries for minutes).
                Err(AuthError::Stale) => {
                    self.reject("stale", || format!("frame from {sender} older than the signature window"));
                    return;
                }
                Err(e) => {
                    self.metrics().auth_rejected.inc();
                    self.reject("auth", || format!("frame from {sender}: {e}"));
                    return;
                }
            }
        }
        let Ok(msgs) = serde_json::from_str::<Vec<Msg>>(msgs.get()) else {
            self.reject("malformed", || format!("unparsable messages from {sender}"));
            return;
        };
        for m in msgs {
            if m.kind.is_some() {
                let Ok(permit) = self.handlers.clone().acquire_owned().await else { return };
                let (this, inbound, sender, reply_to) = (self.clone(), inbound.clone(), sender.clone(), reply_to.clone());
                tokio::spawn(async move {
                    this.serve(inbound.as_ref(), &sender, reply_to, m).await;
                    drop(permit);
                });
            } else {
                self.complete(&sender, m);
            }
        }
    }

    /// Hands a reply to the call waiting for it.
    fn complete(&self, sender: &str, m: Msg) {
        if let Some((_, w)) = self.pending.remove_if(&m.id, |_, w| w.peer == sender) {
            let reply = Reply { status: m.status.unwrap_or(500), body: m.body, error: m.error };
            // Full only when an earlier attempt's reply is already there.
            let _ = w.tx.try_send(reply);
            return;
        }
        if self.pending.contains_key(&m.id) {
            self.reject("impersonation", || format!("{sender} answered a request sent to another node"));
        } else {
            // Late (the caller gave up) or a duplicate.
            self.metrics().mycelium_stray_replies.inc();
        }
    }

    /// Runs one request against the current epoch's gossip and queues the reply.
    async fn serve(&self, inbound: &dyn Inbound, sender: &str, reply_to: Identity, m: Msg) {
        let kind = kind_label(m.kind.as_deref().unwrap_or(""));
        self.metrics().mycelium_requests_received.get_or_create(&KindLabel { kind }).inc();
        let result = match (&m.body, Message::from_name(kind)) {
            (Some(body), Some(message @ (Message::Replicate | Message::Pull | Message::Snapshot | Message::Heartbeat))) => {
                inbound.dispatch(sender, message, body.get().as_bytes()).await
            }
            (None, _) => Err((400, "request without a body".to_owned())),
            _ => Err((400, format!("unknown message kind {kind:?}"))),
        };
        let reply = match result {
            Ok(body) => Msg { id: m.id, kind: None, status: Some(200), body: Some(body), error: None },
            Err((status, error)) => Msg { id: m.id, kind: None, status: Some(status), body: None, error: Some(error) },
        };
        match serde_json::to_string(&reply) {
            Ok(text) => self.enqueue(reply_to, sender, Outgoing { text, deadline: Instant::now() + REPLY_TTL, done: None }),
            Err(e) => tracing::error!(error = %e, "serialising a Mycelium reply failed"),
        }
    }
}

/// Drains one destination's outbox: everything queued goes out in as few
/// messages as fit, one send in flight at a time.
async fn send_loop(shared: Arc<Shared>, dst: Identity, peer: String, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    while let Some(first) = rx.recv().await {
        let mut round = vec![first];
        while round.len() < MAX_ROUND {
            match rx.try_recv() {
                Ok(out) => round.push(out),
                Err(_) => break,
            }
        }
        let now = Instant::now();
        let mut frame: Vec<Outgoing> = Vec::new();
        let mut size = 0;
        for out in round {
            if out.deadline <= now {
                if let Some(done) = out.done {
                    let _ = done.send(Err("timed out before it could be sent".into()));
                }
                continue;
            }
            if !frame.is_empty() && size + out.text.len() + 512 > wire::MAX_FRAME_BYTES {
                send_frame(&shared, &dst, &peer, std::mem::take(&mut frame)).await;
                size = 0;
            }
            size += out.text.len() + 1;
            frame.push(out);
        }
        if !frame.is_empty() {
            send_frame(&shared, &dst, &peer, frame).await;
        }
    }
}

async fn send_frame(shared: &Shared, dst: &Identity, peer: &str, outs: Vec<Outgoing>) {
    let texts: Vec<&str> = outs.iter().map(|o| o.text.as_str()).collect();
    let msgs = wire::msgs_array(&texts);
    // Signed for the node it goes to, so it cannot be replayed at another.
    let (ts, sig) = shared.auth.sign_message(SIGNED_PATH, peer, msgs.get().as_bytes()).unzip();
    let frame = Frame { v: VERSION, from: shared.me.clone(), ts, sig, msgs: Some(msgs), frag: None };
    let result = match serde_json::to_vec(&frame) {
        Ok(bytes) if bytes.len() <= wire::MAX_FRAME_BYTES => post(shared, dst, bytes).await,
        Ok(bytes) => {
            let mut result = Ok(());
            for part in wire::fragment(&shared.me, &shared.ids.next(), &bytes) {
                result = post(shared, dst, part).await;
                if result.is_err() {
                    break;
                }
            }
            result
        }
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = &result {
        tracing::debug!(%dst, error = %e, "handing a message to the Mycelium daemon failed");
    }
    for out in outs {
        if let Some(done) = out.done {
            let _ = done.send(result.clone());
        }
    }
}

/// Hands one payload (a frame or a fragment) to the daemon, padded to a
/// length its chunking delivers ([`wire::pad`]).
async fn post(shared: &Shared, dst: &Identity, payload: Vec<u8>) -> Result<(), String> {
    let mut payload = payload;
    if wire::pad(&mut payload) {
        shared.metrics.mycelium_padded.inc();
    }
    match shared.daemon.send(dst, &payload).await {
        Ok(_) => {
            shared.metrics.mycelium_messages_sent.inc();
            Ok(())
        }
        Err(e) => {
            shared.metrics.mycelium_daemon_errors.inc();
            Err(e)
        }
    }
}

impl Transport for MyceliumTransport {
    /// Gossip goes over Mycelium; view-change steps, snapshot reads and
    /// feeds (the client path) go over HTTP. A change to
    /// a view with a node that has no Mycelium identity is refused at
    /// prepare: its gossip could never be delivered.
    fn call<'a>(
        &'a self,
        peer: &'a str,
        kind: Message,
        body: Box<RawValue>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>, GossipError>> {
        Box::pin(async move {
            match kind {
                Message::ReadFirst | Message::ReadSecond | Message::Feed => self.http.call(peer, kind, body, timeout).await,
                Message::View(step) => {
                    if step == Step::Prepare
                        && let Ok(p) = serde_json::from_str::<Proposal>(body.get())
                        && let Some(node) = p.new.nodes.iter().find(|n| self.cfg.identity_of(n).is_none())
                    {
                        tracing::warn!(%node, "view change refused: the node has no Mycelium identity (add it to MYCELIUM_PEERS on every node)");
                        return Err(GossipError::Unreachable {
                            peer: node.clone(),
                            reason: "no Mycelium identity (MYCELIUM_PEERS)".into(),
                        });
                    }
                    self.http.call(peer, kind, body, timeout).await
                }
                gossip => self.send_request(peer, gossip.name(), body, timeout).await,
            }
        })
    }

    fn start_receiving(self: Arc<Self>, inbound: Arc<dyn Inbound>, shutdown: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
        Some(tokio::spawn(self.receive_loop(inbound, shutdown)))
    }
}

//! The simulated network: every node's [`Transport`] and [`Forwarder`] in
//! one process, with seeded faults.
//!
//! A message is serialised to the JSON the real transports send, then meets
//! its fate, drawn from the run's one random generator: cut (the receiver is
//! down, or a partition separates the two: the caller sees an error after
//! its timeout, as with a silent peer), lost on the way there (never
//! handled), lost on the way back (handled, but the caller times out:
//! effects without an answer), delayed (which reorders messages), or
//! delivered twice. A delivered message is handled by the receiver's
//! [`Node::dispatch`] — the same dispatcher HTTP and Mycelium feed — in a
//! task of the receiver's current incarnation, so a crash aborts it midway.
//!
//! Replication streams (`gossip::stream`) run over in-memory pipes when the
//! run streams ([`SimNet::new`]'s `streams`): opening one is a message with
//! a fate like any other; once open, its bytes arrive in order, each write
//! after a delay drawn like a message's, and the stream breaks when a
//! partition separates the two ends, when either end crashes, or (while
//! message loss is on) at a random time drawn at opening, as a reset
//! connection would. The sender then reopens it and resumes after what the
//! receiver acknowledged.
//!
//! Invariants: a node's incarnation that has crashed sends nothing (its
//! zombie tasks see every call fail) and receives nothing; every random
//! choice comes from the seeded generator, in an order fixed by the
//! deterministic runtime, so a seed replays exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::task::AbortHandle;

use crate::gossip::stream::StreamConn;
use crate::gossip::stream::receiver::{self, StreamHost};
use crate::gossip::{BoxFuture, EXCHANGE_TIMEOUT, GossipError, Message, Transport};
use crate::node::kv::{Forward, Forwarder, KvAnswer, KvRequest, Unreachable};
use crate::node::{Node, StreamRefusal};

/// How likely each network fault is, per message.
#[derive(Clone, Debug, Default)]
pub struct NetFaults {
    /// A request never arrives.
    pub drop_request: f64,
    /// A request is handled but its answer never arrives.
    pub drop_reply: f64,
    /// A request arrives twice.
    pub duplicate: f64,
    /// Longest one-way delay (each message draws its own: reordering).
    pub max_delay: Duration,
}

/// One life of a node, between a start and a crash.
pub struct Incarnation {
    pub node: Arc<Node>,
    pub number: u64,
    alive: AtomicBool,
    /// Handlers running on this node for other nodes' messages and clients.
    handlers: Mutex<Vec<AbortHandle>>,
}

impl Incarnation {
    pub fn new(node: Arc<Node>, number: u64) -> Arc<Self> {
        Arc::new(Self { node, number, alive: AtomicBool::new(true), handlers: Mutex::new(Vec::new()) })
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Ends this life: nothing more is sent or received, and every handler
    /// running here stops at its next await.
    pub fn kill(&self) {
        self.alive.store(false, Ordering::Release);
        for h in self.handlers.lock().drain(..) {
            h.abort();
        }
    }

    /// Runs `fut` as work of this incarnation (aborted if it crashes).
    pub async fn run<T: Send + 'static>(&self, fut: impl std::future::Future<Output = T> + Send + 'static) -> Option<T> {
        if !self.is_alive() {
            return None;
        }
        let task = tokio::spawn(fut);
        {
            let mut handlers = self.handlers.lock();
            handlers.retain(|h| !h.is_finished());
            handlers.push(task.abort_handle());
        }
        task.await.ok()
    }
}

/// The network and who is on it.
pub struct SimNet {
    rng: Mutex<SmallRng>,
    faults: Mutex<NetFaults>,
    /// Unordered pairs of nodes that cannot reach each other.
    cuts: Mutex<BTreeSet<(String, String)>>,
    /// The current incarnation of every node (`None`: down).
    nodes: Mutex<BTreeMap<String, Option<Arc<Incarnation>>>>,
    /// Whether replication runs over streams (else the request/response
    /// replicator pushes batches).
    streams: bool,
}

/// Bytes a simulated stream's pipe holds before the writer waits.
const STREAM_PIPE_BYTES: usize = 256 * 1024;
/// Writes a simulated stream carries at once, one way (each up to 16 KiB).
const STREAM_CHUNKS_IN_FLIGHT: usize = 64;
/// Longest life of a simulated stream before a random reset (with message
/// loss on); each stream draws its own.
const MAX_STREAM_LIFE: Duration = Duration::from_secs(6);

/// What happens to one message.
enum Fate {
    Cut,
    LostThere,
    LostBack,
    Delivered { there: Duration, back: Duration, twice: bool },
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b { (a.to_owned(), b.to_owned()) } else { (b.to_owned(), a.to_owned()) }
}

impl SimNet {
    /// `streams`: replication runs over simulated streams instead of the
    /// request/response replicator.
    pub fn new(seed: u64, faults: NetFaults, streams: bool) -> Arc<Self> {
        Arc::new(Self {
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            faults: Mutex::new(faults),
            cuts: Mutex::new(BTreeSet::new()),
            nodes: Mutex::new(BTreeMap::new()),
            streams,
        })
    }

    pub fn set_faults(&self, faults: NetFaults) {
        *self.faults.lock() = faults;
    }

    /// Draws from the run's generator.
    #[track_caller]
    pub fn with_rng<T>(&self, f: impl FnOnce(&mut SmallRng) -> T) -> T {
        tracing::trace!(at = %std::panic::Location::caller(), now = ?tokio::time::Instant::now(), "rng draw");
        f(&mut self.rng.lock())
    }

    pub fn set_incarnation(&self, address: &str, inc: Option<Arc<Incarnation>>) {
        self.nodes.lock().insert(address.to_owned(), inc);
    }

    pub fn incarnation(&self, address: &str) -> Option<Arc<Incarnation>> {
        self.nodes.lock().get(address).cloned().flatten().filter(|i| i.is_alive())
    }

    pub fn cut(&self, a: &str, b: &str) {
        self.cuts.lock().insert(pair(a, b));
    }

    pub fn heal_all(&self) {
        self.cuts.lock().clear();
    }

    fn is_cut(&self, a: &str, b: &str) -> bool {
        self.cuts.lock().contains(&pair(a, b))
    }

    fn fate(&self, from: &str, to: &str) -> Fate {
        if self.is_cut(from, to) || self.incarnation(to).is_none() {
            return Fate::Cut;
        }
        let f = self.faults.lock().clone();
        tracing::trace!(%from, %to, now = ?tokio::time::Instant::now(), "fate draw");
        let mut rng = self.rng.lock();
        if rng.random_bool(f.drop_request.clamp(0.0, 1.0)) {
            return Fate::LostThere;
        }
        if rng.random_bool(f.drop_reply.clamp(0.0, 1.0)) {
            return Fate::LostBack;
        }
        let max = f.max_delay.as_micros() as u64;
        let mut delay = || Duration::from_micros(if max == 0 { 0 } else { rng.random_range(0..=max) });
        let (there, back) = (delay(), delay());
        Fate::Delivered { there, back, twice: rng.random_bool(f.duplicate.clamp(0.0, 1.0)) }
    }

    /// Sends one internal message from `from` (incarnation `sender`) to `to`
    /// and waits at most `timeout` for its answer.
    async fn call(
        &self,
        sender: &Incarnation,
        from: &str,
        to: &str,
        kind: Message,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Box<RawValue>, GossipError> {
        let unreachable = |reason: &str| GossipError::Unreachable { peer: to.to_owned(), reason: reason.to_owned() };
        if !sender.is_alive() {
            return Err(unreachable("the sender crashed"));
        }
        let (there, back, twice) = match self.fate(from, to) {
            Fate::Cut => {
                tokio::time::sleep(timeout).await;
                return Err(unreachable("cut off"));
            }
            Fate::LostThere => {
                tokio::time::sleep(timeout).await;
                return Err(unreachable("request lost"));
            }
            Fate::LostBack => {
                if let Some(target) = self.incarnation(to) {
                    let (node, from, body) = (target.node.clone(), from.to_owned(), body);
                    let target2 = target.clone();
                    tokio::spawn(async move { target2.run(async move { node.dispatch(&from, kind, &body).await }).await });
                }
                tokio::time::sleep(timeout).await;
                return Err(unreachable("answer lost"));
            }
            Fate::Delivered { there, back, twice } => (there, back, twice),
        };
        let work = async {
            tokio::time::sleep(there).await;
            let target = self.incarnation(to).ok_or_else(|| unreachable("down"))?;
            if twice {
                let (node, from, body, target) = (target.node.clone(), from.to_owned(), body.clone(), target.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    target.run(async move { node.dispatch(&from, kind, &body).await }).await
                });
            }
            let node = target.node.clone();
            let from_owned = from.to_owned();
            let answer = target.run(async move { node.dispatch(&from_owned, kind, &body).await }).await;
            tokio::time::sleep(back).await;
            if !sender.is_alive() {
                return Err(unreachable("the sender crashed"));
            }
            match answer {
                None => Err(unreachable("crashed while handling")),
                Some(Ok(raw)) => Ok(raw),
                Some(Err((status, _why))) => Err(GossipError::Rejected { peer: to.to_owned(), status }),
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(unreachable("timed out")),
        }
    }

    /// Passes a key request from `from` to `to` over the network. A down
    /// node refuses the connection (`NotSent`, at once); anything else that
    /// goes wrong leaves the caller not knowing (`NoAnswer`, at its timeout).
    async fn forward(&self, sender: &Incarnation, from: &str, to: &str, fwd: Forward<'_>) -> Result<KvAnswer, Unreachable> {
        if !sender.is_alive() {
            return Err(Unreachable::NotSent);
        }
        if self.incarnation(to).is_none() && !self.is_cut(from, to) {
            return Err(Unreachable::NotSent);
        }
        let (there, back) = match self.fate(from, to) {
            Fate::Cut | Fate::LostThere => {
                tokio::time::sleep(fwd.timeout).await;
                return Err(Unreachable::NoAnswer);
            }
            Fate::LostBack => {
                if let Some(target) = self.incarnation(to) {
                    let req = forwarded(&target.node, from, &fwd);
                    let node = target.node.clone();
                    let target2 = target.clone();
                    tokio::spawn(async move { target2.run(async move { node.serve_key(&req).await }).await });
                }
                tokio::time::sleep(fwd.timeout).await;
                return Err(Unreachable::NoAnswer);
            }
            // A duplicated key request is a client retry, not a network
            // fault: TCP delivers a request once.
            Fate::Delivered { there, back, .. } => (there, back),
        };
        let work = async {
            tokio::time::sleep(there).await;
            let target = self.incarnation(to).ok_or(Unreachable::NoAnswer)?;
            let req = forwarded(&target.node, from, &fwd);
            let node = target.node.clone();
            let answer = target.run(async move { node.serve_key(&req).await }).await.ok_or(Unreachable::NoAnswer)?;
            tokio::time::sleep(back).await;
            if sender.is_alive() { Ok(answer) } else { Err(Unreachable::NoAnswer) }
        };
        tokio::time::timeout(fwd.timeout, work).await.unwrap_or(Err(Unreachable::NoAnswer))
    }
}

impl SimNet {
    /// The two ends of a simulated stream: bytes written at one end reach
    /// the other in order, each write after a delay drawn like a message's
    /// (so stream batches and acks interleave with other messages as they
    /// would on a network).
    fn stream_pipe(self: &Arc<Self>) -> (DuplexStream, DuplexStream) {
        let (ours, our_net) = tokio::io::duplex(STREAM_PIPE_BYTES);
        let (their_net, theirs) = tokio::io::duplex(STREAM_PIPE_BYTES);
        let (our_rd, our_wr) = tokio::io::split(our_net);
        let (their_rd, their_wr) = tokio::io::split(their_net);
        self.delay_line(our_rd, their_wr);
        self.delay_line(their_rd, our_wr);
        (ours, theirs)
    }

    /// Carries one direction of a stream: a reader takes what is written and
    /// stamps it with when it arrives (never before what was written
    /// earlier), a writer hands it on at that time. Ends when either side
    /// closes; what was in flight is still delivered first.
    fn delay_line(self: &Arc<Self>, mut from: impl AsyncRead + Unpin + Send + 'static, mut to: impl AsyncWrite + Unpin + Send + 'static) {
        // Bounded: a receiver that stops reading stops the sender, as TCP would.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(STREAM_CHUNKS_IN_FLIGHT);
        let net = self.clone();
        tokio::spawn(async move {
            let mut arrives = tokio::time::Instant::now();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let max = net.faults.lock().max_delay.as_micros() as u64;
                let delay = if max == 0 { Duration::ZERO } else { Duration::from_micros(net.with_rng(|r| r.random_range(0..=max))) };
                arrives = arrives.max(tokio::time::Instant::now() + delay);
                if tx.send((arrives, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Some((at, bytes)) = rx.recv().await {
                tokio::time::sleep_until(at).await;
                if to.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            let _ = to.shutdown().await;
        });
    }

    /// Opens a replication stream from `from` to `to`, as the HTTP
    /// transport's upgrade does: the receiver admits it as it admits an
    /// upgrade (`Node::admit_stream`) and serves it as work of its current
    /// incarnation.
    async fn open_stream(self: &Arc<Self>, sender: &Arc<Incarnation>, from: &str, to: &str) -> Result<Option<StreamConn>, GossipError> {
        let unreachable = |reason: &str| GossipError::Unreachable { peer: to.to_owned(), reason: reason.to_owned() };
        if !sender.is_alive() {
            return Err(unreachable("the sender crashed"));
        }
        let there = match self.fate(from, to) {
            Fate::Cut | Fate::LostThere | Fate::LostBack => {
                tokio::time::sleep(EXCHANGE_TIMEOUT).await;
                return Err(unreachable("stream request lost"));
            }
            Fate::Delivered { there, .. } => there,
        };
        tokio::time::sleep(there).await;
        let target = self.incarnation(to).ok_or_else(|| unreachable("down"))?;
        let id = target.node.admit_stream(from).map_err(|refusal| {
            let status = match refusal {
                StreamRefusal::Blocked => 503,
                StreamRefusal::NotInShard => 403,
            };
            GossipError::Rejected { peer: to.to_owned(), status }
        })?;
        // Drawn for every stream; it breaks only while message loss is on.
        let life = self.with_rng(|r| r.random_range(Duration::from_millis(200)..MAX_STREAM_LIFE));
        let breaks_at = tokio::time::Instant::now() + life;
        let (ours, theirs) = self.stream_pipe();
        let host: Arc<dyn StreamHost> = target.node.clone();
        let (serving, sender_name) = (target.clone(), from.to_owned());
        tokio::spawn(async move { serving.run(receiver::receive(host, sender_name, id, theirs, None)).await });
        let (net, from, to) = (self.clone(), from.to_owned(), to.to_owned());
        let (sender, target) = (Arc::downgrade(sender), Arc::downgrade(&target));
        let cut = move || {
            let alive = |inc: &std::sync::Weak<Incarnation>| inc.upgrade().is_some_and(|i| i.is_alive());
            let reset = tokio::time::Instant::now() >= breaks_at && net.faults.lock().drop_request > 0.0;
            net.is_cut(&from, &to) || !alive(&sender) || !alive(&target) || reset
        };
        Ok(Some(StreamConn { io: Box::new(ours), key: None, cut: Some(Arc::new(cut)) }))
    }
}

/// The request as the target parses it from a forward (see `api::key_requests`).
fn forwarded(target: &Node, from: &str, fwd: &Forward<'_>) -> KvRequest {
    let wait = match (fwd.hop, fwd.wait) {
        (2, Some(w)) => w.min(target.config.causal_wait),
        _ => target.config.causal_wait,
    };
    KvRequest {
        hop: fwd.hop,
        wait,
        sender: Some(from.to_owned()),
        sender_epoch: Some(fwd.epoch),
        deadline_ms: Some(fwd.deadline_ms),
        raw_body: None,
        ..fwd.request.clone()
    }
}

/// One node's way onto the network (one per incarnation).
pub struct SimTransport {
    pub me: String,
    pub net: Arc<SimNet>,
    /// Set once the incarnation exists (the node is built with this transport).
    pub incarnation: Mutex<Option<Arc<Incarnation>>>,
}

impl SimTransport {
    pub fn new(me: &str, net: Arc<SimNet>) -> Arc<Self> {
        Arc::new(Self { me: me.to_owned(), net, incarnation: Mutex::new(None) })
    }

    fn sender(&self) -> Option<Arc<Incarnation>> {
        self.incarnation.lock().clone()
    }
}

impl Transport for SimTransport {
    fn call<'a>(
        &'a self,
        peer: &'a str,
        kind: Message,
        body: Box<RawValue>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>, GossipError>> {
        Box::pin(async move {
            let sender = self.sender().ok_or_else(|| GossipError::Unreachable { peer: peer.to_owned(), reason: "not started".into() })?;
            let body = Box::<str>::from(body).into_string().into_bytes();
            let raw = self.net.call(&sender, &self.me, peer, kind, body, timeout).await?;
            Ok(Box::<str>::from(raw).into_string().into_bytes())
        })
    }

    fn open_stream<'a>(&'a self, peer: &'a str) -> BoxFuture<'a, Result<Option<StreamConn>, GossipError>> {
        Box::pin(async move {
            if !self.net.streams {
                return Ok(None);
            }
            let sender = self.sender().ok_or_else(|| GossipError::Unreachable { peer: peer.to_owned(), reason: "not started".into() })?;
            self.net.open_stream(&sender, &self.me, peer).await
        })
    }
}

impl Forwarder for SimTransport {
    fn forward<'a>(&'a self, _me: &'a str, target: &'a str, fwd: Forward<'a>) -> BoxFuture<'a, Result<KvAnswer, Unreachable>> {
        Box::pin(async move {
            let sender = self.sender().ok_or(Unreachable::NotSent)?;
            self.net.forward(&sender, &self.me, target, fwd).await
        })
    }
}

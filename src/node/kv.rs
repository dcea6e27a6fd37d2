//! The key protocol of a node, without HTTP: routing a key request to its
//! shard, the master choice and its failover, the hold-back gate and its
//! fallback, misroutes across a view change, and the local read or write
//! (DESIGN.md "Write path", "Read path").
//!
//! A typed [`KvRequest`] goes in, a typed [`KvAnswer`] comes out: a reply, a
//! [`KvError`] (`Misrouted { epoch }` and the rest), or the answer another
//! node gave to a request this node passed on. Passing a request on goes
//! through a [`Forwarder`]; the process uses an HTTP one (`api::forward`),
//! the simulator calls the target node's [`Node::serve_key`] directly.
//!
//! Invariants kept here:
//! - A request is forwarded at most twice: entry node → a replica of the
//!   key's shard (hop 1) → one other replica of that shard after an
//!   unsatisfied hold-back (hop 2). A non-replica never forwards a request
//!   with hop ≥ 1: it answers `Misrouted` and the entry node routes again.
//! - A read is answered only once this replica has applied every write of
//!   the key's shard the request's context names (or it is passed to
//!   another replica, or refused with `Unavailable`); a write is taken only
//!   after the same check, so its deps are applied here first.
//! - A write is executed at most once per client request: it is passed to
//!   another replica only when the one tried first surely did not get it
//!   (`Unreachable::NotSent`); after a timeout the client gets 503 and
//!   decides (a retry is a new request). A forwarded write that reaches its
//!   deadline unexecuted is dropped as well.
//! - A request is passed on as it came: its value and context are never
//!   changed here, so the client's body ([`KvRequest::raw_body`]) still
//!   says what the forwarded request says.
//! - A write that reaches a replica which passes it to its master is
//!   answered once that replica holds it too (bounded by `CAUSAL_WAIT_MS`),
//!   so reading again at the same node finds it without the context.

use std::borrow::Cow;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::Instant;

use super::{Epoch, Node};
use crate::causal::CausalContext;
use crate::gossip::BoxFuture;
use crate::shard::ShardId;
use crate::store::Record;

/// Time limit of a hold-back fallback request to another replica: that
/// replica only checks what it already has, so this is network time.
const FALLBACK_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the fallback replica may itself wait for missing writes.
const FALLBACK_WAIT: Duration = Duration::from_millis(100);
/// How long a write waits while a view change is prepared before it gives
/// up with 503 (the change aborts long before, or commits).
const WRITE_QUEUE_BOUND: Duration = Duration::from_secs(20);
/// Time limit of a forward that cannot be held back: far above a healthy
/// answer (including a group-commit flush), short enough that a frozen node
/// costs clients little before the next replica is tried.
const FORWARD_FAST: Duration = Duration::from_secs(1);
/// Slack on top of the hold-back bound for a forwarded request (the target
/// may wait `CAUSAL_WAIT_MS`, then try its fallback).
const FORWARD_SLACK: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KvOp {
    Put,
    Get,
    Delete,
}

impl KvOp {
    pub fn name(self) -> &'static str {
        match self {
            KvOp::Put => "put",
            KvOp::Get => "get",
            KvOp::Delete => "delete",
        }
    }

    pub fn is_write(self) -> bool {
        matches!(self, KvOp::Put | KvOp::Delete)
    }
}

/// A parsed, validated key request.
#[derive(Clone, Debug)]
pub struct KvRequest {
    pub op: KvOp,
    pub key: String,
    /// The value of a PUT (checked by the adapter: size, depth).
    pub value: Option<Box<RawValue>>,
    pub context: CausalContext,
    /// 0 for a client request; 1 or 2 when forwarded.
    pub hop: u8,
    /// How long a hold-back may wait (`CAUSAL_WAIT_MS`, or less on hop 2).
    pub wait: Duration,
    /// The node that forwarded this request, if it said.
    pub sender: Option<String>,
    /// Epoch of the node that forwarded this request.
    pub sender_epoch: Option<u64>,
    /// When the forwarding node gives up on this request (unix ms).
    pub deadline_ms: Option<u64>,
    /// The body as the client sent it, when it says exactly what `value`
    /// and `context` say (a context sent in the query is not in it): a
    /// forwarder sends these bytes instead of serialising the request.
    /// `None` for requests made in the process. Whoever changes `value` or
    /// `context` of a request must clear it.
    pub raw_body: Option<bytes::Bytes>,
}

impl KvRequest {
    /// A client request (hop 0) with this node's hold-back bound.
    pub fn client(op: KvOp, key: impl Into<String>, value: Option<Box<RawValue>>, context: CausalContext, wait: Duration) -> Self {
        Self { op, key: key.into(), value, context, hop: 0, wait, sender: None, sender_epoch: None, deadline_ms: None, raw_body: None }
    }
}

/// What a successful request did.
#[derive(Debug, Clone)]
pub enum KvOutcome {
    /// PUT of a key that had no live value.
    Created,
    /// PUT of a key that had one.
    Updated,
    Deleted,
    Found(Box<RawValue>),
}

#[derive(Debug, Clone)]
pub struct KvReply {
    pub outcome: KvOutcome,
    pub context: CausalContext,
    /// The node that served it.
    pub served_by: Option<String>,
}

#[derive(Debug, Clone)]
pub enum KvErrorKind {
    /// The key has no live value (GET, DELETE).
    NotFound,
    /// The request could not be served within its bounds; retry later.
    Unavailable,
    /// A write passed to another node got no answer: it may have been
    /// applied there (it is not tried elsewhere). The client decides.
    MaybeApplied,
    /// This node is at a newer view than the one the request was routed by.
    Misrouted { epoch: u64 },
    /// Two views at one epoch are known here (the text says which).
    ViewConflict(String),
    /// Storage failed.
    Internal(String),
}

/// A failed request, with the context to answer with.
#[derive(Debug, Clone)]
pub struct KvError {
    pub kind: KvErrorKind,
    pub context: CausalContext,
    pub served_by: Option<String>,
}

/// The answer another node gave to a request passed on over a transport
/// that relays bytes (HTTP): passed back as it is.
#[derive(Debug)]
pub struct Relayed {
    pub status: u16,
    /// The node that served it (the target, or the replica the target passed it to).
    pub served_by: Option<String>,
    /// The target's misroute mark, if any.
    pub misrouted_epoch: Option<u64>,
    /// The target said a write it passed on may have been applied.
    pub maybe_applied: bool,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

/// Every answer to a key request.
#[derive(Debug)]
pub enum KvAnswer {
    Reply(KvReply),
    Error(KvError),
    Relayed(Relayed),
}

impl KvAnswer {
    fn is_unavailable(&self) -> bool {
        match self {
            KvAnswer::Reply(_) => false,
            KvAnswer::Error(e) => matches!(
                e.kind,
                KvErrorKind::Unavailable | KvErrorKind::MaybeApplied | KvErrorKind::Misrouted { .. } | KvErrorKind::ViewConflict(_)
            ),
            KvAnswer::Relayed(r) => r.status == 503,
        }
    }

    /// The context a successful write answered with.
    fn written_context(&self) -> Option<CausalContext> {
        match self {
            KvAnswer::Reply(r) => Some(r.context.clone()),
            KvAnswer::Relayed(r) if r.status == 200 || r.status == 201 => {
                // Only the context is read: the other fields are skipped, not built.
                #[derive(serde::Deserialize)]
                struct WithContext<'a> {
                    #[serde(rename = "causal-context", borrow)]
                    context: &'a RawValue,
                }
                let body: WithContext = serde_json::from_slice(&r.body).ok()?;
                CausalContext::parse_json(body.context.get()).ok()
            }
            _ => None,
        }
    }

    fn misrouted_epoch(&self) -> Option<u64> {
        match self {
            KvAnswer::Error(KvError { kind: KvErrorKind::Misrouted { epoch }, .. }) => Some(*epoch),
            KvAnswer::Relayed(r) => r.misrouted_epoch,
            _ => None,
        }
    }
}

/// One request to pass on to another node.
#[derive(Debug)]
pub struct Forward<'a> {
    pub request: &'a KvRequest,
    pub hop: u8,
    /// For hop 2: how long the target may hold the request back.
    pub wait: Option<Duration>,
    pub timeout: Duration,
    /// This node's epoch.
    pub epoch: u64,
    /// When this node stops waiting (unix ms, by its wall clock).
    pub deadline_ms: u64,
}

/// The target gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// The request never left (connection refused, cut off by a fault
    /// switch): another replica may take it.
    NotSent,
    /// The request may have arrived and been executed, but no answer came
    /// (timeout, connection lost): a write must not be tried elsewhere,
    /// because a second execution gets its own dot and a later timestamp
    /// and can overwrite writes that causally follow the first one.
    NoAnswer,
}

/// Passes a key request to another node.
pub trait Forwarder: Send + Sync + 'static {
    fn forward<'a>(&'a self, me: &'a str, target: &'a str, fwd: Forward<'a>) -> BoxFuture<'a, Result<KvAnswer, Unreachable>>;
}

impl Node {
    /// Serves one key request: here when this node is a replica of the
    /// key's shard, passed on otherwise.
    pub async fn serve_key(&self, req: &KvRequest) -> KvAnswer {
        if let Some(conflict) = self.view_conflicts().into_iter().next() {
            // Two views at one epoch: whatever either view routes here
            // may be acknowledged and never found by the other.
            return KvAnswer::Error(KvError {
                kind: KvErrorKind::ViewConflict(conflict.to_string()),
                context: req.context.clone(),
                served_by: None,
            });
        }
        if req.hop > 0 && req.sender.as_deref().is_some_and(|s| self.faults.is_blocked(s)) {
            return self.unavailable(req);
        }
        self.route(req).await
    }

    /// Routes by the current view; a request that reached a node which
    /// moved on to a newer view comes back misrouted: this node catches up
    /// with that view and routes it once more.
    async fn route(&self, req: &KvRequest) -> KvAnswer {
        if let Some(epoch) = req.sender_epoch.filter(|e| *e > self.epoch()) {
            // Forwarded by a node that already committed a newer view: route by it.
            self.wait_for_epoch(epoch, req.wait).await;
        }
        if req.context.epoch > self.epoch() && !self.wait_for_epoch(req.context.epoch, req.wait).await {
            // A view this node has not reached: it cannot tell what is missing.
            return self.unavailable(req);
        }
        if req.hop == 0 && req.op.is_write() && !self.change.wait_unpaused(WRITE_QUEUE_BOUND).await {
            // Writes queue while a view change is prepared here; they are routed
            // by whichever view is in force once it is decided.
            return self.unavailable(req);
        }
        let answer = self.route_in(&self.current(), req).await;
        if req.hop == 0
            && let Some(epoch) = answer.misrouted_epoch()
        {
            self.wait_for_epoch(epoch, req.wait).await;
            return self.route_in(&self.current(), req).await;
        }
        answer
    }

    async fn route_in(&self, cur: &Epoch, req: &KvRequest) -> KvAnswer {
        let map = &cur.map;
        let shard = map.shard_of(&req.key);
        let replicas = map.replicas(shard);
        if !map.is_replica(shard) {
            if req.hop > 0 {
                // The sender routed by another view: never forward twice.
                return self.misrouted(req, map.epoch());
            }
            let order: Vec<&String> = match req.op {
                KvOp::Put | KvOp::Delete => self.detector.alive_first(replicas),
                KvOp::Get => self.detector.alive_first(self.read_order(replicas)),
            };
            return match self.forward_first_reachable(req, &order, 1, None, self.forward_timeout(req, replicas)).await {
                Ok(answer) => answer,
                Err(Unreachable::NoAnswer) if req.op.is_write() => self.maybe_applied(req),
                Err(_) => self.unavailable(req),
            };
        }
        match req.op {
            KvOp::Put | KvOp::Delete => {
                // The master: the first replica the failure detector trusts.
                let master = self.detector.alive_first(replicas)[0];
                if req.hop == 0 && master != self.me() {
                    let timeout = self.forward_timeout(req, replicas);
                    match self.forward_first_reachable(req, &[master], 1, None, timeout).await {
                        Ok(answer) => {
                            // This node is a replica too: answer once it holds
                            // the write, so the client's next read here sees
                            // it even without the context.
                            if let Some(ctx) = answer.written_context() {
                                self.await_applied(cur, &ctx, shard).await;
                            }
                            return answer;
                        }
                        // It may have taken the write: taking it here too
                        // would execute it twice.
                        Err(Unreachable::NoAnswer) => return self.maybe_applied(req),
                        Err(Unreachable::NotSent) => {}
                    }
                    tracing::warn!(%master, key = %req.key, "master unreachable: accepting the write here");
                }
                self.write_local(req).await
            }
            KvOp::Get => self.read_local(cur, req, shard).await,
        }
    }

    /// Time limit of a forward: a healthy node answers a request it need not
    /// hold back within [`FORWARD_FAST`]; one whose context names writes of the
    /// shard may wait up to `CAUSAL_WAIT_MS` first.
    fn forward_timeout(&self, req: &KvRequest, replicas: &[String]) -> Duration {
        let may_wait = replicas.iter().any(|r| req.context.clock.get(r) > 0);
        if may_wait { self.config.causal_wait + FORWARD_SLACK } else { FORWARD_FAST }
    }

    /// Workers in round-robin order, then the master as fallback.
    pub(super) fn read_order<'a>(&self, replicas: &'a [String]) -> Vec<&'a String> {
        let workers = &replicas[1..];
        let mut order: Vec<&String> = Vec::with_capacity(replicas.len());
        if !workers.is_empty() {
            let start = self.next_round_robin() % workers.len();
            order.extend(workers[start..].iter().chain(&workers[..start]));
        }
        order.push(&replicas[0]);
        order
    }

    /// Tries `targets` in order until one answers. A write stops at the
    /// first target that may have executed it ([`Unreachable::NoAnswer`]);
    /// a read, which is safe to repeat, goes on to the next.
    async fn forward_first_reachable(
        &self,
        req: &KvRequest,
        targets: &[&String],
        hop: u8,
        wait: Option<Duration>,
        timeout: Duration,
    ) -> Result<KvAnswer, Unreachable> {
        let mut failure = Unreachable::NotSent;
        for target in targets {
            if *target == self.me() || self.faults.is_blocked(target) {
                continue;
            }
            let fwd = Forward {
                request: req,
                hop,
                wait,
                timeout,
                epoch: self.epoch(),
                deadline_ms: self.wall.now_ms() + timeout.as_millis() as u64,
            };
            self.metrics.forwarded.inc();
            if req.op.is_write() {
                self.metrics.forwarded_writes.inc();
            }
            match self.forwarder.forward(self.me(), target, fwd).await {
                Ok(answer) => return Ok(answer),
                Err(Unreachable::NoAnswer) if req.op.is_write() => {
                    self.metrics.ambiguous_forwards.inc();
                    return Err(Unreachable::NoAnswer);
                }
                Err(e) => failure = e,
            }
        }
        Err(failure)
    }

    /// Waits (bounded) until this replica has applied everything `ctx` needs
    /// from the origins of `shard`, pulling the missing records from peers.
    pub(super) async fn hold_back(&self, cur: &Epoch, ctx: &CausalContext, shard: ShardId, wait: Duration) -> bool {
        if ctx.epoch > cur.map.epoch() {
            return false;
        }
        let origins = cur.map.replicas(shard);
        let store = &self.store;
        let satisfied = || store.satisfies(&ctx.clock, origins.iter().map(String::as_str));
        if satisfied() || self.faults.has_bug(crate::faults::Bug::SkipHoldBack) {
            return true;
        }
        self.metrics.holdback_waits.inc();
        let started = Instant::now();
        let gossip = cur.gossip.clone();
        tokio::spawn(async move { gossip.pull_from_peers(wait).await });
        let ok = store.gate.wait_until(started + wait, satisfied).await;
        self.metrics.holdback_seconds.observe(started.elapsed().as_secs_f64());
        if !ok {
            self.metrics.holdback_unsatisfied.inc();
        }
        ok
    }

    /// Waits (at most `CAUSAL_WAIT_MS`) until this replica has applied what
    /// `ctx` names of `shard`, pulling from its peers; never fails: the
    /// write it waits for is acknowledged already.
    async fn await_applied(&self, cur: &Epoch, ctx: &CausalContext, shard: ShardId) {
        let origins = cur.map.replicas(shard);
        let store = &self.store;
        let applied = || ctx.epoch != cur.map.epoch() || store.satisfies(&ctx.clock, origins.iter().map(String::as_str));
        if applied() {
            return;
        }
        let wait = self.config.causal_wait;
        let gossip = cur.gossip.clone();
        tokio::spawn(async move { gossip.pull_from_peers(wait).await });
        if !store.gate.wait_until(Instant::now() + wait, applied).await {
            tracing::debug!(key_shard = shard, "a write passed to the master was not applied here in time");
        }
    }

    /// After an unsatisfied hold-back: ask another replica of the shard that
    /// may have the writes (master first), once.
    async fn fallback(&self, cur: &Epoch, req: &KvRequest, shard: ShardId) -> KvAnswer {
        if req.hop >= 2 {
            return self.unavailable(req);
        }
        let order = self.detector.alive_first(cur.map.replicas(shard));
        match self.forward_first_reachable(req, &order, 2, Some(FALLBACK_WAIT), FALLBACK_TIMEOUT).await {
            Ok(answer) if !answer.is_unavailable() => answer,
            _ => self.unavailable(req),
        }
    }

    async fn read_local(&self, cur: &Epoch, req: &KvRequest, shard: ShardId) -> KvAnswer {
        let ctx = req.context.at_epoch(cur.map.epoch());
        if !self.hold_back(cur, &ctx, shard, req.wait).await {
            return self.fallback(cur, req, shard).await;
        }
        let record = match self.store.get(&req.key) {
            Ok(r) => r,
            Err(e) => return self.internal(req, e),
        };
        let context = reply_context(cur.map.epoch(), ctx, record.as_ref());
        let served_by = self.served_by(req);
        match record {
            Some(Record { value: Some(value), .. }) => KvAnswer::Reply(KvReply { outcome: KvOutcome::Found(value), context, served_by }),
            _ => KvAnswer::Error(KvError { kind: KvErrorKind::NotFound, context, served_by }),
        }
    }

    /// Takes the write here. While a view change is prepared the write waits
    /// (bounded); afterwards it is checked again against the view then current.
    async fn write_local(&self, req: &KvRequest) -> KvAnswer {
        let Some(_admitted) = self.change.admit_write(WRITE_QUEUE_BOUND).await else {
            return self.unavailable(req);
        };
        let cur = self.current();
        let shard = cur.map.shard_of(&req.key);
        if !cur.map.is_replica(shard) {
            return self.misrouted(req, cur.map.epoch());
        }
        let ctx = req.context.at_epoch(cur.map.epoch());
        if !self.hold_back(&cur, &ctx, shard, req.wait).await {
            return self.unavailable(req);
        }
        if req.deadline_ms.is_some_and(|d| self.wall.now_ms() > d) {
            // The sender has given up and may have had another replica take it.
            self.metrics.expired_writes.inc();
            return self.unavailable(req);
        }
        let outcome = match self.store.write_local(&req.key, req.value.clone(), ctx.clock.clone()) {
            Ok(o) => o,
            Err(e) => return self.internal(req, e),
        };
        if let Err(e) = self.store.wait_durable(outcome.generation).await {
            return self.internal(req, e);
        }
        let served_by = self.served_by(req);
        let revealed = outcome.record.as_deref().or(outcome.previous.as_ref());
        let context = reply_context(cur.map.epoch(), ctx, revealed);
        let was_live = outcome.previous.as_ref().is_some_and(Record::is_live);
        let outcome = match (req.op, outcome.record.is_some()) {
            (KvOp::Put, _) if was_live => KvOutcome::Updated,
            (KvOp::Put, _) => KvOutcome::Created,
            (_, true) => KvOutcome::Deleted,
            (_, false) => return KvAnswer::Error(KvError { kind: KvErrorKind::NotFound, context, served_by }),
        };
        KvAnswer::Reply(KvReply { outcome, context, served_by })
    }

    /// Names this node as the one that served a request.
    fn served_by(&self, _req: &KvRequest) -> Option<String> {
        Some(self.me().to_owned())
    }

    /// `Unavailable`, from this node.
    fn unavailable(&self, req: &KvRequest) -> KvAnswer {
        KvAnswer::Error(KvError { kind: KvErrorKind::Unavailable, context: req.context.clone(), served_by: self.served_by(req) })
    }

    /// `MaybeApplied`: a write that got no answer from the node it was passed to.
    fn maybe_applied(&self, req: &KvRequest) -> KvAnswer {
        KvAnswer::Error(KvError { kind: KvErrorKind::MaybeApplied, context: req.context.clone(), served_by: self.served_by(req) })
    }

    /// `Misrouted`: the entry node routes again once it has caught up with
    /// the view this node is at.
    fn misrouted(&self, req: &KvRequest, epoch: u64) -> KvAnswer {
        KvAnswer::Error(KvError { kind: KvErrorKind::Misrouted { epoch }, context: req.context.clone(), served_by: self.served_by(req) })
    }

    fn internal(&self, req: &KvRequest, e: impl std::fmt::Display) -> KvAnswer {
        tracing::error!(error = %e, key = %req.key, op = req.op.name(), "request failed");
        KvAnswer::Error(KvError { kind: KvErrorKind::Internal(e.to_string()), context: req.context.clone(), served_by: None })
    }
}

/// The request's context plus the dot and deps of the record the reply
/// reveals (same epoch only: older dots are satisfied everywhere).
fn reply_context(epoch: u64, ctx: Cow<'_, CausalContext>, record: Option<&Record>) -> CausalContext {
    let mut out = ctx.into_owned();
    out.epoch = epoch;
    if let Some(rec) = record.filter(|r| r.dot.epoch == out.epoch) {
        out.clock.observe(&rec.dot.origin, rec.dot.seq);
        out.clock.merge(&rec.deps);
    }
    out
}

//! `PUT/GET/DELETE /kv-store/keys/<key>`: routing to the key's shard, the
//! hold-back gate, and the local read/write (DESIGN.md "Write path",
//! "Read path").

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::error::MISROUTED_NAME;
use super::error::{ApiError, ErrorReply};
use super::forward::{Forward, forward};
use super::reply::Reply;
use super::request::{HopHeaders, check_value, hop_headers, parse_body, parse_key, query_context, read_body, sender, unix_ms};
use crate::causal::CausalContext;
use crate::node::{Epoch, Node};
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
enum Op {
    Put,
    Get,
    Delete,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Delete => "delete",
        }
    }
}

/// A parsed, validated key request.
struct KeyRequest {
    method: Method,
    op: Op,
    key: String,
    value: Option<Box<RawValue>>,
    context: CausalContext,
    hop: u8,
    wait: Duration,
    /// Epoch of the node that forwarded this request.
    sender_epoch: Option<u64>,
    /// When the forwarding node gives up on this request (unix ms).
    deadline: Option<u64>,
}

type Reject = Box<ErrorReply>;

pub async fn handle(State(node): State<Arc<Node>>, req: Request) -> Response {
    let started = Instant::now();
    // Taken apart here rather than by extractors, which would clone the
    // headers and decode the query of every request.
    let (parts, body) = req.into_parts();
    let op = match parts.method {
        Method::PUT => Op::Put,
        Method::GET => Op::Get,
        Method::DELETE => Op::Delete,
        _ => return ErrorReply::new(&parts.method, ApiError::MethodNotAllowed, empty()).into_response(),
    };
    let query = query_context(&parts.uri);
    let body = read_body(body, node.config.max_value_bytes + super::BODY_OVERHEAD).await;
    let (method, headers) = (&parts.method, &parts.headers);
    let response = match parse(&node, method, op, headers, parts.uri.path(), query.as_deref(), body) {
        Ok(req) => {
            let conflict = node.view_conflicts().into_iter().next();
            if let Some(conflict) = conflict {
                // Two views at one epoch: whatever either view routes here
                // may be acknowledged and never found by the other.
                ErrorReply::new(method, ApiError::ViewConflict(conflict.to_string()), req.context.clone()).into_response()
            } else if req.hop > 0 && sender(headers).is_some_and(|s| node.faults.is_blocked(s)) {
                ErrorReply::new(method, ApiError::Unavailable, req.context.clone()).into_response()
            } else {
                match route(&node, &req).await {
                    Ok(resp) => resp,
                    Err(rej) => rej.into_response(),
                }
            }
        }
        Err(rej) => rej.into_response(),
    };
    node.metrics.count_request(op.name(), response.status().as_u16());
    node.metrics.request_seconds.observe(started.elapsed().as_secs_f64());
    response
}

fn empty() -> Value {
    Value::Object(Default::default())
}

fn parse(
    node: &Node,
    method: &Method,
    op: Op,
    headers: &HeaderMap,
    path: &str,
    query: Option<&str>,
    body: Result<Vec<u8>, ApiError>,
) -> Result<KeyRequest, Reject> {
    let reject = |e, ctx| Box::new(ErrorReply::new(method, e, ctx));
    let key = parse_key(path, node.config.max_key_length).map_err(|e| reject(e, empty()))?;
    let bytes = body.map_err(|e| reject(e, empty()))?;
    let mut parsed = parse_body(&bytes, query).map_err(|e| reject(e, empty()))?;
    let value = match op {
        Op::Put => Some(check_value(parsed.value.take(), node.config.max_value_bytes).map_err(|e| reject(e, parsed.raw_context()))?),
        _ => None,
    };
    let HopHeaders { hop, wait, sender_epoch, deadline } = hop_headers(headers);
    let wait = match (hop, wait) {
        (2, Some(w)) => w.min(node.config.causal_wait),
        _ => node.config.causal_wait,
    };
    Ok(KeyRequest { method: method.clone(), op, key, value, context: parsed.context, hop, wait, sender_epoch, deadline })
}

/// Sends the request where it belongs: served here when this node is a
/// replica of the key's shard, forwarded otherwise. A request that reached a
/// node which moved on to a newer view comes back marked misrouted: the entry
/// node catches up with that view and routes it once more.
async fn route(node: &Node, req: &KeyRequest) -> Result<Response, Reject> {
    if let Some(epoch) = req.sender_epoch.filter(|e| *e > node.epoch()) {
        // Forwarded by a node that already committed a newer view: route by it.
        node.wait_for_epoch(epoch, req.wait).await;
    }
    if req.context.epoch > node.epoch() && !node.wait_for_epoch(req.context.epoch, req.wait).await {
        // A view this node has not reached: it cannot tell what is missing.
        return Err(unavailable(node, req));
    }
    if req.hop == 0 && matches!(req.op, Op::Put | Op::Delete) && !node.change.wait_unpaused(WRITE_QUEUE_BOUND).await {
        // Writes queue while a view change is prepared here; they are routed
        // by whichever view is in force once it is decided.
        return Err(unavailable(node, req));
    }
    let resp = route_in(node, &node.current(), req).await.unwrap_or_else(|rej| rej.into_response());
    if req.hop == 0
        && let Some(epoch) = misrouted_epoch(&resp)
    {
        node.wait_for_epoch(epoch, req.wait).await;
        return route_in(node, &node.current(), req).await;
    }
    Ok(resp)
}

fn misrouted_epoch(resp: &Response) -> Option<u64> {
    resp.headers().get(&MISROUTED_NAME).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

async fn route_in(node: &Node, cur: &Epoch, req: &KeyRequest) -> Result<Response, Reject> {
    let map = &cur.map;
    let shard = map.shard_of(&req.key);
    let replicas = map.replicas(shard);
    if !map.is_replica(shard) {
        if req.hop > 0 {
            // The sender routed by another view: never forward twice.
            return Err(misrouted(node, req, map.epoch()));
        }
        let order: Vec<&String> = match req.op {
            Op::Put | Op::Delete => node.detector.alive_first(replicas),
            Op::Get => node.detector.alive_first(read_order(node, replicas)),
        };
        return forward_first_reachable(node, req, &order, 1, None, forward_timeout(node, req, replicas))
            .await
            .ok_or_else(|| unavailable(node, req));
    }
    match req.op {
        Op::Put | Op::Delete => {
            // The master: the first replica the failure detector trusts.
            let master = node.detector.alive_first(replicas)[0];
            if req.hop == 0 && master != node.me() {
                let timeout = forward_timeout(node, req, replicas);
                if let Some(resp) = forward_first_reachable(node, req, &[master], 1, None, timeout).await {
                    return Ok(resp);
                }
                tracing::warn!(%master, key = %req.key, "master unreachable: accepting the write here");
            }
            write_local(node, req).await
        }
        Op::Get => read_local(node, cur, req, shard).await,
    }
}

/// Time limit of a forward: a healthy node answers a request it need not
/// hold back within [`FORWARD_FAST`]; one whose context names writes of the
/// shard may wait up to `CAUSAL_WAIT_MS` first.
fn forward_timeout(node: &Node, req: &KeyRequest, replicas: &[String]) -> Duration {
    let may_wait = replicas.iter().any(|r| req.context.clock.get(r) > 0);
    if may_wait { node.config.causal_wait + FORWARD_SLACK } else { FORWARD_FAST }
}

/// Workers in round-robin order, then the master as fallback.
fn read_order<'a>(node: &Node, replicas: &'a [String]) -> Vec<&'a String> {
    let workers = &replicas[1..];
    let mut order: Vec<&String> = Vec::with_capacity(replicas.len());
    if !workers.is_empty() {
        let start = node.next_round_robin() % workers.len();
        order.extend(workers[start..].iter().chain(&workers[..start]));
    }
    order.push(&replicas[0]);
    order
}

async fn forward_first_reachable(
    node: &Node,
    req: &KeyRequest,
    targets: &[&String],
    hop: u8,
    wait: Option<Duration>,
    timeout: Duration,
) -> Option<Response> {
    let fwd =
        Forward { method: &req.method, key: &req.key, value: req.value.as_deref(), context: req.context.to_json(), hop, wait, timeout };
    for target in targets {
        if *target == node.me() {
            continue;
        }
        if let Ok(resp) = forward(node, target, &fwd).await {
            return Some(resp);
        }
    }
    None
}

/// Waits (bounded) until this replica has applied everything `ctx` needs
/// from the origins of `shard`, pulling the missing records from peers.
async fn hold_back(node: &Node, cur: &Epoch, ctx: &CausalContext, shard: ShardId, wait: Duration) -> bool {
    if ctx.epoch > cur.map.epoch() {
        return false;
    }
    let origins = cur.map.replicas(shard);
    let store = &node.store;
    let satisfied = || store.satisfies(&ctx.clock, origins.iter().map(String::as_str));
    if satisfied() {
        return true;
    }
    node.metrics.holdback_waits.inc();
    let started = Instant::now();
    let gossip = cur.gossip.clone();
    tokio::spawn(async move { gossip.pull_from_peers(wait).await });
    let ok = store.gate.wait_until(started + wait, satisfied).await;
    node.metrics.holdback_seconds.observe(started.elapsed().as_secs_f64());
    if !ok {
        node.metrics.holdback_unsatisfied.inc();
    }
    ok
}

/// After an unsatisfied hold-back: ask another replica of the shard that may
/// have the writes (master first), once.
async fn fallback(node: &Node, cur: &Epoch, req: &KeyRequest, shard: ShardId) -> Result<Response, Reject> {
    if req.hop >= 2 {
        return Err(unavailable(node, req));
    }
    let order = node.detector.alive_first(cur.map.replicas(shard));
    match forward_first_reachable(node, req, &order, 2, Some(FALLBACK_WAIT), FALLBACK_TIMEOUT).await {
        Some(resp) if resp.status() != StatusCode::SERVICE_UNAVAILABLE => Ok(resp),
        _ => Err(unavailable(node, req)),
    }
}

async fn read_local(node: &Node, cur: &Epoch, req: &KeyRequest, shard: ShardId) -> Result<Response, Reject> {
    let ctx = req.context.at_epoch(cur.map.epoch());
    if !hold_back(node, cur, &ctx, shard, req.wait).await {
        return fallback(node, cur, req, shard).await;
    }
    let record = node.store.get(&req.key).map_err(|e| internal(req, e))?;
    let reply_ctx = reply_context(cur.map.epoch(), ctx, record.as_ref());
    let address = (req.hop > 0).then(|| node.me().to_owned());
    match record {
        Some(Record { value: Some(value), .. }) => {
            Ok(Reply { value: Some(value), does_exist: Some(true), address, ..Reply::message("Retrieved successfully", reply_ctx) }
                .into_response_with(StatusCode::OK))
        }
        _ => Err(Box::new(ErrorReply { address, ..ErrorReply::new(&req.method, ApiError::KeyNotFound, reply_ctx) })),
    }
}

/// Takes the write here. While a view change is prepared the write waits
/// (bounded); afterwards it is checked again against the view then current.
async fn write_local(node: &Node, req: &KeyRequest) -> Result<Response, Reject> {
    let Some(_admitted) = node.change.admit_write(WRITE_QUEUE_BOUND).await else {
        return Err(unavailable(node, req));
    };
    let cur = node.current();
    let shard = cur.map.shard_of(&req.key);
    if !cur.map.is_replica(shard) {
        return Err(misrouted(node, req, cur.map.epoch()));
    }
    let ctx = req.context.at_epoch(cur.map.epoch());
    if !hold_back(node, &cur, &ctx, shard, req.wait).await {
        return Err(unavailable(node, req));
    }
    if req.deadline.is_some_and(|d| unix_ms() > d) {
        // The sender has given up and may have had another replica take it.
        node.metrics.expired_writes.inc();
        return Err(unavailable(node, req));
    }
    let outcome = node.store.write_local(&req.key, req.value.clone(), ctx.clock.clone()).map_err(|e| internal(req, e))?;
    node.store.wait_durable(outcome.generation).await.map_err(|e| internal(req, e))?;
    let address = (req.hop > 0).then(|| node.me().to_owned());
    let revealed = outcome.record.as_ref().or(outcome.previous.as_ref());
    let reply_ctx = reply_context(cur.map.epoch(), ctx, revealed);
    let was_live = outcome.previous.as_ref().is_some_and(Record::is_live);
    let reply = match (req.op, outcome.record.is_some()) {
        (Op::Put, _) if was_live => (StatusCode::OK, "Updated successfully", Some(true), None),
        (Op::Put, _) => (StatusCode::CREATED, "Added successfully", Some(false), None),
        (_, true) => (StatusCode::OK, "Deleted successfully", None, Some(true)),
        (_, false) => {
            return Err(Box::new(ErrorReply { address, ..ErrorReply::new(&req.method, ApiError::KeyNotFound, reply_ctx) }));
        }
    };
    let (status, message, replaced, does_exist) = reply;
    Ok(Reply { replaced, does_exist, address, ..Reply::message(message, reply_ctx) }.into_response_with(status))
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

/// 503 `Unable to satisfy request`; names this node when it was the target
/// of a forward.
fn unavailable(node: &Node, req: &KeyRequest) -> Reject {
    let address = (req.hop > 0).then(|| node.me().to_owned());
    Box::new(ErrorReply { address, ..ErrorReply::new(&req.method, ApiError::Unavailable, req.context.clone()) })
}

/// 503 marked so the entry node routes again once it has caught up with
/// the view this node is at.
fn misrouted(node: &Node, req: &KeyRequest, epoch: u64) -> Reject {
    let address = (req.hop > 0).then(|| node.me().to_owned());
    Box::new(ErrorReply {
        address,
        misrouted_epoch: Some(epoch),
        ..ErrorReply::new(&req.method, ApiError::Unavailable, req.context.clone())
    })
}

fn internal(req: &KeyRequest, e: impl std::error::Error + Send + Sync + 'static) -> Reject {
    Box::new(ErrorReply::new(&req.method, ApiError::internal(e), req.context.clone()))
}

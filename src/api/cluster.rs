//! Cluster endpoints: key-count, shards, shard info, health, readiness,
//! metrics. Key-count and shard answers echo the client's context so a
//! client that always keeps the last context it received never loses it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Body as RequestBody;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::AdminClient;
use super::error::{ApiError, ErrorReply};
use super::reply::Reply;
use super::request::{FROM_HEADER, HOP_HEADER, hop, parse_body, read_body};
use crate::node::Node;

/// Time limit for asking another shard's replica for its key count.
const REMOTE_COUNT_TIMEOUT: Duration = Duration::from_secs(1);

type Body = RequestBody;
type Q = Result<Query<HashMap<String, String>>, QueryRejection>;

/// Largest body a cluster endpoint reads (it only carries a context).
const CLUSTER_BODY_LIMIT: usize = 256 * 1024;

async fn echo_context(method: &Method, query: Q, body: Body) -> Result<Value, Box<ErrorReply>> {
    let empty = || Value::Object(Default::default());
    let bytes = read_body(body, CLUSTER_BODY_LIMIT).await.map_err(|e| Box::new(ErrorReply::new(method, e, empty())))?;
    let query = query.ok().and_then(|Query(mut q)| q.remove("causal-context"));
    let parsed = parse_body(&bytes, query.as_deref()).map_err(|e| Box::new(ErrorReply::new(method, e, empty())))?;
    Ok(parsed.context.to_json())
}

pub async fn key_count(State(node): State<Arc<Node>>, method: Method, query: Q, body: Body) -> Response {
    let ctx = match echo_context(&method, query, body).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let count = if node.current().map.my_shard().is_some() { node.store.live_count() } else { 0 };
    Reply {
        key_count: Some(count),
        shard_id: Some(node.current().map.my_shard().map(Value::from).unwrap_or(Value::Null)),
        view_conflict: view_conflict(&node),
        ..Reply::message("Key count retrieved successfully", ctx)
    }
    .into_response_with(StatusCode::OK)
}

pub async fn shards(State(node): State<Arc<Node>>, method: Method, query: Q, body: Body) -> Response {
    let ctx = match echo_context(&method, query, body).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    Reply {
        shards: Some(Value::from(node.current().map.shard_ids())),
        view_conflict: view_conflict(&node),
        ..Reply::message("Shard membership retrieved successfully", ctx)
    }
    .into_response_with(StatusCode::OK)
}

/// Why key requests are refused, for the answers still given meanwhile.
fn view_conflict(node: &Node) -> Option<String> {
    node.view_conflicts().first().map(ToString::to_string)
}

pub async fn shard_info(
    State(node): State<Arc<Node>>,
    Extension(AdminClient(client)): Extension<AdminClient>,
    method: Method,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Q,
    body: Body,
) -> Response {
    let ctx = match echo_context(&method, query, body).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let cur = node.current();
    let id = path.ok().and_then(|Path(id)| id.parse::<u32>().ok());
    let replicas = id.map(|id| cur.map.replicas(id)).unwrap_or_default();
    let Some(id) = id.filter(|_| !replicas.is_empty()) else {
        return ErrorReply::new(&method, ApiError::ShardNotFound, ctx).into_response();
    };
    let count = if cur.map.is_replica(id) {
        Some(node.store.live_count())
    } else if hop(&headers) > 0 {
        None
    } else {
        remote_count(&node, &client, replicas).await
    };
    let Some(count) = count else {
        return ErrorReply::new(&method, ApiError::Unavailable, ctx).into_response();
    };
    Reply {
        shard_id: Some(Value::from(id)),
        key_count: Some(count),
        replicas: Some(replicas.to_vec()),
        ..Reply::message("Shard information retrieved successfully", ctx)
    }
    .into_response_with(StatusCode::OK)
}

/// Asks the replicas of another shard, in order, for their key count.
pub(super) async fn remote_count(node: &Node, client: &reqwest::Client, replicas: &[String]) -> Option<u64> {
    for replica in replicas {
        if node.faults.is_blocked(replica) {
            continue;
        }
        let resp = client
            .get(format!("{}://{replica}/kv-store/key-count", crate::tls::scheme()))
            .header(HOP_HEADER, "1")
            .header(FROM_HEADER, node.me())
            .timeout(REMOTE_COUNT_TIMEOUT)
            .send()
            .await;
        let Ok(resp) = resp else { continue };
        if let Ok(v) = resp.json::<Value>().await
            && let Some(n) = v.get("key-count").and_then(Value::as_u64)
        {
            return Some(n);
        }
    }
    None
}

/// Liveness: always 200 while the node serves (orchestrators restart on
/// failure, and a restart cannot fix a peer). `status` is `degraded` with
/// `failing-peers` naming each peer refusing this node's internal traffic,
/// or `view-conflict` (with the conflicts) while key requests are refused
/// because a peer runs another view at this node's epoch.
pub async fn health(State(node): State<Arc<Node>>) -> Response {
    let failing: serde_json::Map<String, Value> = node.refusals.failing().into_iter().map(|(p, why)| (p, Value::from(why))).collect();
    let conflicts: Vec<Value> = node.view_conflicts().iter().map(|c| c.to_json()).collect();
    let status = if !conflicts.is_empty() {
        "view-conflict"
    } else if !failing.is_empty() {
        "degraded"
    } else {
        "ok"
    };
    let mut body = serde_json::json!({"status": status, "failing-peers": failing, "causal-context": {}});
    if !conflicts.is_empty() {
        body["view-conflicts"] = Value::Array(conflicts);
    }
    (StatusCode::OK, axum::Json(body)).into_response()
}

pub async fn ready(State(node): State<Arc<Node>>) -> Response {
    let ready = node.is_ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(serde_json::json!({"ready": ready, "causal-context": {}}))).into_response()
}

pub async fn metrics(State(node): State<Arc<Node>>) -> Response {
    node.metrics.live_keys.set(node.store.live_count() as i64);
    node.metrics.pending_records.set(node.store.pending_len() as i64);
    node.metrics.view_conflict_peers.set(node.view_conflicts().len() as i64);
    let wal = &node.store.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed) as i64;
    node.metrics.wal_syncs.set(load(&wal.syncs));
    node.metrics.wal_synced_entries.set(load(&wal.synced_entries));
    node.metrics.wal_checkpoints.set(load(&wal.checkpoints));
    node.metrics.wal_replayed_entries.set(load(&wal.replayed_entries));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], node.metrics.render()).into_response()
}

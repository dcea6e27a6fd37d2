//! `/internal/...`: gossip messages over the HTTP transport, and the test
//! fault switches (only with `CAUSALKV_FAULTS=1`).

use std::sync::Arc;

use std::net::SocketAddr;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::request::sender;
use crate::faults::FaultSet;
use crate::gossip::auth::{Incoming, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::gossip::viewchange::{Proposal, Receive};
use crate::gossip::{GossipError, Heartbeat, PullRequest, ReplicateBatch, SnapshotRequest};
use crate::metrics::PathLabel;
use crate::node::Node;
use crate::node::view_change::ChangeFail;
use crate::store::StoreError;

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, Json(json!({"error": why}))).into_response()
}

/// Refuses traffic from peers cut off by the fault switch.
fn blocked(node: &Node, headers: &HeaderMap) -> bool {
    sender(headers).is_some_and(|s| node.faults.is_blocked(s))
}

fn gossip_error(e: GossipError) -> Response {
    match e {
        GossipError::WrongEpoch { .. } => refuse(StatusCode::CONFLICT, &e.to_string()),
        // Logged (rate-limited) and counted by the store's clock guard.
        GossipError::Store(StoreError::ClockSkew(_)) => refuse(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
        other => {
            tracing::error!(error = %other, "internal request failed");
            refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

pub async fn replicate(State(node): State<Arc<Node>>, headers: HeaderMap, body: Result<Json<ReplicateBatch>, JsonRejection>) -> Response {
    if blocked(&node, &headers) {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "blocked");
    }
    let Ok(Json(batch)) = body else {
        return refuse(StatusCode::BAD_REQUEST, "bad replication batch");
    };
    if !node.current().gossip.shard().contains(&batch.from) {
        return refuse(StatusCode::FORBIDDEN, "sender is not a replica of this shard");
    }
    match node.current().gossip.handle_replicate(batch).await {
        Ok(ack) => Json(ack).into_response(),
        Err(e) => gossip_error(e),
    }
}

pub async fn pull(State(node): State<Arc<Node>>, headers: HeaderMap, body: Result<Json<PullRequest>, JsonRejection>) -> Response {
    if blocked(&node, &headers) {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "blocked");
    }
    let Ok(Json(req)) = body else {
        return refuse(StatusCode::BAD_REQUEST, "bad pull request");
    };
    match node.current().gossip.handle_pull(&req) {
        Ok(resp) => Json(resp).into_response(),
        Err(e) => gossip_error(e),
    }
}

pub async fn get_faults(State(node): State<Arc<Node>>) -> Response {
    if !node.faults.enabled() {
        return refuse(StatusCode::NOT_FOUND, "fault switches are disabled (CAUSALKV_FAULTS=1 enables them)");
    }
    Json(node.faults.current()).into_response()
}

pub async fn put_faults(State(node): State<Arc<Node>>, body: Result<Json<FaultSet>, JsonRejection>) -> Response {
    if !node.faults.enabled() {
        return refuse(StatusCode::NOT_FOUND, "fault switches are disabled (CAUSALKV_FAULTS=1 enables them)");
    }
    let Ok(Json(set)) = body else {
        return refuse(StatusCode::BAD_REQUEST, "bad fault set");
    };
    tracing::warn!(?set, "fault switches changed");
    node.faults.replace(set);
    Json(node.faults.current()).into_response()
}

pub async fn snapshot(State(node): State<Arc<Node>>, headers: HeaderMap, body: Result<Json<SnapshotRequest>, JsonRejection>) -> Response {
    if blocked(&node, &headers) {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "blocked");
    }
    let Ok(Json(req)) = body else {
        return refuse(StatusCode::BAD_REQUEST, "bad snapshot request");
    };
    match node.current().gossip.handle_snapshot(&req) {
        Ok(page) => Json(page).into_response(),
        Err(e) => gossip_error(e),
    }
}

pub async fn heartbeat(State(node): State<Arc<Node>>, headers: HeaderMap, body: Result<Json<Heartbeat>, JsonRejection>) -> Response {
    if blocked(&node, &headers) {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "blocked");
    }
    let Ok(Json(msg)) = body else {
        return refuse(StatusCode::BAD_REQUEST, "bad heartbeat");
    };
    Json(node.current().gossip.handle_heartbeat(&msg)).into_response()
}

/// Refuses internal requests that fail authentication (see `gossip::auth`)
/// before their bodies are parsed, so they change nothing.
pub async fn authenticate(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    node.metrics.internal_http_requests.get_or_create(&PathLabel { path: parts.uri.path().to_owned() }).inc();
    let limit = crate::gossip::MAX_BATCH_BYTES + node.config.max_value_bytes + super::BODY_OVERHEAD;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "internal body too large");
    };
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let peer_ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let incoming = Incoming {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        sender: header(crate::gossip::FROM_HEADER).unwrap_or(""),
        timestamp: header(TIMESTAMP_HEADER),
        signature: header(SIGNATURE_HEADER),
        body: &bytes,
        peer_ip,
    };
    let verdict = node.auth.verify(&incoming).await;
    if let Err(e) = verdict {
        node.metrics.auth_rejected.inc();
        tracing::warn!(path = %parts.uri.path(), ?peer_ip, error = %e, "internal request rejected");
        return refuse(StatusCode::UNAUTHORIZED, &e.to_string());
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// Test fault switches for view-change steps.
async fn view_fault(node: &Node, step: &str) -> Option<Response> {
    let (refused, delay) = node.faults.view_step(step);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    refused.then(|| refuse(StatusCode::SERVICE_UNAVAILABLE, "refused by fault switch"))
}

fn change_result<T: serde::Serialize>(result: Result<T, ChangeFail>) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "view-change step refused");
            let status = match e {
                ChangeFail::Store(StoreError::ClockSkew(_)) => StatusCode::UNPROCESSABLE_ENTITY,
                ChangeFail::Gossip(_) | ChangeFail::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::CONFLICT,
            };
            refuse(status, &e.to_string())
        }
    }
}

pub async fn view_prepare(State(node): State<Arc<Node>>, body: Result<Json<Proposal>, JsonRejection>) -> Response {
    if let Some(resp) = view_fault(&node, "prepare").await {
        return resp;
    }
    let Ok(Json(p)) = body else { return refuse(StatusCode::BAD_REQUEST, "bad proposal") };
    change_result(node.view_prepare(p).await.map(|_| json!({})))
}

pub async fn view_sync(State(node): State<Arc<Node>>, body: Result<Json<Proposal>, JsonRejection>) -> Response {
    if let Some(resp) = view_fault(&node, "sync").await {
        return resp;
    }
    let Ok(Json(p)) = body else { return refuse(StatusCode::BAD_REQUEST, "bad proposal") };
    change_result(node.view_sync(&p.change).await.map(|_| json!({})))
}

pub async fn view_transfer(State(node): State<Arc<Node>>, body: Result<Json<Proposal>, JsonRejection>) -> Response {
    if let Some(resp) = view_fault(&node, "transfer").await {
        return resp;
    }
    let Ok(Json(p)) = body else { return refuse(StatusCode::BAD_REQUEST, "bad proposal") };
    change_result(node.view_transfer(&p.change).await.map(|sent| json!({"sent": sent})))
}

pub async fn view_receive(State(node): State<Arc<Node>>, body: Result<Json<Receive>, JsonRejection>) -> Response {
    if let Some(resp) = view_fault(&node, "receive").await {
        return resp;
    }
    let Ok(Json(r)) = body else { return refuse(StatusCode::BAD_REQUEST, "bad records") };
    change_result(node.view_receive(r).map(|_| json!({})))
}

pub async fn view_commit(State(node): State<Arc<Node>>, body: Result<Json<Proposal>, JsonRejection>) -> Response {
    if let Some(resp) = view_fault(&node, "commit").await {
        return resp;
    }
    let Ok(Json(p)) = body else { return refuse(StatusCode::BAD_REQUEST, "bad proposal") };
    change_result(node.view_commit(p).await)
}

pub async fn view_abort(State(node): State<Arc<Node>>, body: Result<Json<Proposal>, JsonRejection>) -> Response {
    let Ok(Json(p)) = body else { return refuse(StatusCode::BAD_REQUEST, "bad proposal") };
    node.view_abort(&p.change);
    Json(json!({})).into_response()
}

pub async fn view_current(State(node): State<Arc<Node>>) -> Response {
    Json(node.current().map.view.clone()).into_response()
}

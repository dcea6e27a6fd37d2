//! `/internal/...`: gossip messages over the HTTP transport, and the test
//! fault switches (only with `CAUSALKV_FAULTS=1`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Extension, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::faults::FaultSet;
use crate::gossip::Message;
use crate::gossip::auth::{AuthError, BODY_DIGEST_HEADER, Incoming, SIGNATURE_HEADER, TIMESTAMP_HEADER, TO_HEADER, Verified};
use crate::metrics::PathLabel;
use crate::node::Node;

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, Json(json!({"error": why}))).into_response()
}

/// One internal message over HTTP (`Message::path`), handled by the node's
/// one dispatcher for every transport (`Node::dispatch`), which also refuses
/// peers cut off by the fault switches.
pub async fn message(node: Arc<Node>, peer: Peer, kind: Message, body: Bytes) -> Response {
    match node.dispatch(&peer.0, kind, &body).await {
        Ok(answer) => super::reply::json_response(StatusCode::OK, String::from(Box::<str>::from(answer)).into_bytes()),
        Err((status, why)) => {
            if status == 403 {
                tracing::warn!(sender = %peer.0, kind = kind.name(), reason = %why, "internal request refused");
            }
            refuse(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &why)
        }
    }
}

/// `POST /internal/stream` (authenticated like every internal request):
/// upgrades the connection to a replication stream from a replica of this
/// node's shard (`gossip::stream`). A newer stream from the same sender
/// replaces an older one, so a node holds at most one per shard peer.
pub async fn stream(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Extension(verified): Extension<Verified>,
    req: Request,
) -> Response {
    use crate::gossip::stream::{UPGRADE_TOKEN, receiver};
    use crate::node::StreamRefusal;
    let upgrade = req.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok());
    if upgrade != Some(UPGRADE_TOKEN) {
        return refuse(StatusCode::BAD_REQUEST, &format!("a stream needs `Upgrade: {UPGRADE_TOKEN}`"));
    }
    let id = match node.admit_stream(&peer.0) {
        Ok(id) => id,
        Err(StreamRefusal::Blocked) => return refuse(StatusCode::SERVICE_UNAVAILABLE, "blocked"),
        Err(StreamRefusal::NotInShard) => {
            return refuse(StatusCode::FORBIDDEN, &format!("{} is not a replica of this node's shard", peer.0));
        }
    };
    let on_upgrade = hyper::upgrade::on(req);
    let key = node.auth.stream_key(&verified.request_mac);
    let host: Arc<dyn receiver::StreamHost> = node.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => receiver::receive(host, peer.0, id, hyper_util::rt::TokioIo::new(upgraded), key).await,
            Err(e) => tracing::debug!(sender = %peer.0, error = %e, "replication stream upgrade failed"),
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut().insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_TOKEN));
    resp
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

/// The node an authenticated internal request comes from (set by
/// [`authenticate`] for the handlers).
#[derive(Clone, Debug)]
pub struct Peer(pub String);

/// Paths any caller may use without being a member (without a key): a
/// heartbeat is answered but remembers nothing about a non-member, and a
/// prepare is checked against the view it proposes (see `view_prepare`).
const OPEN_TO_NON_MEMBERS: [&str; 2] = ["/internal/heartbeat", "/internal/view/prepare"];

/// Authenticates an internal request from its headers alone, before one
/// byte of its body is read (see `gossip::auth`): with a key the signature
/// over the headers and the body digest; without one, that the claimed
/// sender is a member of the view. Only then is the body read, within the
/// node's internal body budget, and checked against its digest. The answer
/// is signed for the caller. Refused requests change nothing.
pub async fn authenticate(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    node.metrics.internal_http_requests.get_or_create(&PathLabel { path: path.clone() }).inc();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let sender = header(crate::gossip::FROM_HEADER).unwrap_or("").to_owned();
    let incoming = Incoming {
        method: parts.method.as_str(),
        path: &path,
        sender: &sender,
        receiver: header(TO_HEADER).unwrap_or(""),
        timestamp: header(TIMESTAMP_HEADER),
        signature: header(SIGNATURE_HEADER),
        body_digest: header(BODY_DIGEST_HEADER),
    };
    let verdict = node.auth.verify_headers(&incoming).and_then(|v| {
        if node.auth.has_key() || OPEN_TO_NON_MEMBERS.contains(&path.as_str()) || node.is_member(&sender) {
            Ok(v)
        } else {
            Err(AuthError::NotAMember(sender.chars().take(100).collect()))
        }
    });
    let verified = match verdict {
        Ok(v) => v,
        Err(e) => return rejected(&node, &path, peer_ip(&parts), &e),
    };
    let limit = crate::gossip::MAX_BATCH_BYTES + node.config.max_value_bytes + super::BODY_OVERHEAD;
    let length = match parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok()) {
        Some(n) if n <= limit => n,
        Some(_) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, "internal body too large"),
        None => return refuse(StatusCode::LENGTH_REQUIRED, "internal requests need a Content-Length"),
    };
    // Bodies wait for room in the node-wide budget, so no number of callers
    // can make the node hold more than the budget at once.
    let permits = u32::try_from(length.max(1)).unwrap_or(u32::MAX);
    let budget = node.internal_bodies.clone();
    let permit = match budget.clone().try_acquire_many_owned(permits) {
        Ok(p) => p,
        Err(_) => {
            node.metrics.internal_body_waits.inc();
            match tokio::time::timeout(BUDGET_WAIT, budget.acquire_many_owned(permits)).await {
                Ok(Ok(p)) => p,
                _ => return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many internal bodies in flight"),
            }
        }
    };
    let bytes = match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, length)).await {
        Ok(Ok(b)) if b.len() == length => b,
        Ok(_) => return refuse(StatusCode::BAD_REQUEST, "internal body does not match its Content-Length"),
        Err(_) => return refuse(StatusCode::REQUEST_TIMEOUT, "internal body not received in time"),
    };
    if let Err(e) = node.auth.verify_body(&verified, &bytes) {
        return rejected(&node, &path, peer_ip(&parts), &e);
    }
    parts.extensions.insert(Peer(sender));
    parts.extensions.insert(verified.clone());
    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    drop(permit);
    if !node.auth.has_key() {
        return response;
    }
    // The answer is signed for the caller (bound to its request's MAC).
    let (mut parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "answer could not be read");
    };
    if let Some(sig) = node.auth.sign_response(&verified, parts.status.as_u16(), &body)
        && let Ok(value) = HeaderValue::from_str(&sig)
    {
        parts.headers.insert(SIGNATURE_HEADER, value);
    }
    Response::from_parts(parts, Body::from(body))
}

/// How long an internal request waits for room in the body budget.
const BUDGET_WAIT: Duration = Duration::from_secs(5);
/// How long an authenticated internal body may take to arrive.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

fn peer_ip(parts: &axum::http::request::Parts) -> Option<std::net::IpAddr> {
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

fn rejected(node: &Node, path: &str, peer_ip: Option<std::net::IpAddr>, e: &AuthError) -> Response {
    node.metrics.auth_rejected.inc();
    tracing::warn!(%path, ?peer_ip, error = %e, "internal request rejected");
    let status = match e {
        AuthError::NotAMember(_) | AuthError::WrongReceiver(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    refuse(status, &e.to_string())
}

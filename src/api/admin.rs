//! `PUT /kv-store/view-change` and `POST /join`: validate, then run the
//! view-change protocol with this node as coordinator (or, when this node is
//! not in the current view, let a node of the view coordinate).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AdminClient;
use super::error::{ApiError, ErrorReply};
use super::reply::{Reply, json_response};
use super::request::{FROM_HEADER, HOP_HEADER, hop, read_body};
use crate::gossip::auth::token_matches;
use crate::node::Node;
use crate::shard::{View, ViewError, normalise_address};
use crate::viewchange::plan::requested_view;
use crate::viewchange::{COMMIT_TIMEOUT, SYNC_TIMEOUT, TRANSFER_TIMEOUT};

/// Largest view-change body read.
const BODY_LIMIT: usize = 1024 * 1024;

fn view_error(e: ViewError) -> ApiError {
    ApiError::InvalidView(match e {
        ViewError::Empty => "View is empty".into(),
        ViewError::ReplFactorZero => "repl-factor must be an integer of at least 1".into(),
        ViewError::ReplFactorTooLarge { .. } => "repl-factor is larger than the view".into(),
        ViewError::Duplicate(a) => format!("Duplicate address in view: {a}"),
        ViewError::BadAddress(a) => format!("Invalid address in view: {a}"),
    })
}

/// Whether the request carries the admin bearer token (always, when none
/// is configured: local development, logged as unauthenticated at start).
fn admin_allowed(node: &Node, headers: &HeaderMap) -> bool {
    let Some(expected) = node.config.admin_token() else { return true };
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    given.is_some_and(|token| token_matches(token.trim(), expected))
}

fn unauthorized(node: &Node, operation: &'static str, method: &Method, headers: &HeaderMap) -> Response {
    node.metrics.admin_rejected.inc();
    tracing::warn!(operation, from = ?super::request::sender(headers), "admin request without a valid bearer token refused");
    ErrorReply::of_operation(operation, method, ApiError::Unauthorized, Value::Object(Default::default())).into_response()
}

pub async fn view_change(
    State(node): State<Arc<Node>>,
    Extension(AdminClient(client)): Extension<AdminClient>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Checked before the body is read: an unauthorised caller costs nothing.
    if !admin_allowed(&node, &headers) {
        return unauthorized(&node, "VIEW-CHANGE", &method, &headers);
    }
    let empty = Value::Object(Default::default());
    let parsed: Result<Value, ApiError> = match read_body(body, BODY_LIMIT).await {
        Ok(bytes) if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') => {
            serde_json::from_slice(&bytes).map_err(|_| ApiError::BadBody)
        }
        Ok(_) => Err(ApiError::BadBody),
        Err(e) => Err(e),
    };
    let body = match parsed {
        Ok(v) => v,
        Err(e) => return ErrorReply::new(&method, e, empty).into_response(),
    };
    let ctx = body.get("causal-context").cloned().unwrap_or(empty);
    let current_rf = node.current().map.view.repl_factor;
    let view = match requested_view(body.get("view"), body.get("repl-factor"), current_rf, 0) {
        Ok(v) => v,
        Err(e) => return ErrorReply::new(&method, view_error(e), ctx).into_response(),
    };
    run(&node, &client, &method, &headers, view, ctx, &body).await
}

pub async fn join(
    State(node): State<Arc<Node>>,
    Extension(AdminClient(client)): Extension<AdminClient>,
    method: Method,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    if !admin_allowed(&node, &headers) {
        return unauthorized(&node, "JOIN", &method, &headers);
    }
    let empty = Value::Object(Default::default());
    let Some(addr) = query.ok().and_then(|Query(q)| q.get("nodeaddr").cloned()) else {
        return ErrorReply::new(&method, ApiError::InvalidView("nodeaddr is missing".into()), empty).into_response();
    };
    let addr = match normalise_address(&addr) {
        Ok(a) => a,
        Err(e) => return ErrorReply::new(&method, view_error(e), empty).into_response(),
    };
    let current = node.current().map.view.clone();
    let mut nodes = current.nodes.clone();
    if !nodes.contains(&addr) {
        nodes.push(addr.clone());
    }
    let view = match View::new(nodes.clone(), current.repl_factor, 0) {
        Ok(v) => v,
        Err(e) => return ErrorReply::new(&method, view_error(e), empty).into_response(),
    };
    let body = json!({"view": nodes, "repl-factor": current.repl_factor});
    run(&node, &client, &method, &headers, view, empty, &body).await
}

/// Where a proxy node sends a view change it cannot coordinate.
const VIEW_CHANGE_PATH: &str = "/kv-store/view-change";

async fn run(
    node: &Node,
    client: &reqwest::Client,
    method: &Method,
    headers: &HeaderMap,
    view: View,
    ctx: Value,
    body: &Value,
) -> Response {
    let cur = node.current();
    // Only a node of the current view coordinates (it can reach and is
    // trusted by every other node of that view).
    if cur.map.my_shard().is_none() {
        if hop(headers) > 0 {
            return ErrorReply::new(method, ApiError::Unavailable, ctx).into_response();
        }
        for target in &cur.map.view.nodes {
            let mut req = client.put(format!("{}://{target}{VIEW_CHANGE_PATH}", crate::tls::scheme()));
            // The member coordinating checks the caller's token itself.
            if let Some(auth) = headers.get(header::AUTHORIZATION) {
                req = req.header(header::AUTHORIZATION, auth.clone());
            }
            let resp = req
                .header(HOP_HEADER, "1")
                .header(FROM_HEADER, node.me())
                .header(header::CONTENT_TYPE, "application/json")
                .timeout(SYNC_TIMEOUT + TRANSFER_TIMEOUT + COMMIT_TIMEOUT)
                .json(body)
                .send()
                .await;
            if let Ok(resp) = resp {
                let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
                if let Ok(bytes) = resp.bytes().await {
                    return json_response(status, bytes.to_vec());
                }
            }
        }
        return ErrorReply::new(method, ApiError::Unavailable, ctx).into_response();
    }
    // The same view again changes nothing, unless a peer runs another view
    // at this epoch: then the change (to a new epoch) is how they agree.
    if view.nodes == cur.map.view.nodes && view.repl_factor == cur.map.view.repl_factor && node.view_conflicts().is_empty() {
        return shards_reply(node, client, &cur.map, &[], ctx).await;
    }
    match node.change_view(view).await {
        Ok((map, commits)) => shards_reply(node, client, &map, &commits, ctx).await,
        Err(e) => {
            tracing::warn!(error = %e, "view change failed");
            ErrorReply::new(method, ApiError::Unavailable, ctx).into_response()
        }
    }
}

/// The view-change answer: every shard with its replicas and key count.
async fn shards_reply(
    node: &Node,
    client: &reqwest::Client,
    map: &crate::shard::ShardMap,
    commits: &[(String, crate::viewchange::Committed)],
    ctx: Value,
) -> Response {
    let mut shards = Vec::new();
    for id in map.shard_ids() {
        let replicas = map.replicas(id);
        let mut count = replicas.iter().find_map(|r| commits.iter().find(|(n, _)| n == r).map(|(_, c)| c.key_count));
        if count.is_none() {
            count =
                if map.is_replica(id) { Some(node.store.live_count()) } else { super::cluster::remote_count(node, client, replicas).await };
        }
        shards.push(json!({"shard-id": id, "key-count": count, "replicas": replicas}));
    }
    Reply { shards: Some(Value::Array(shards)), ..Reply::message("View change successful", ctx) }.into_response_with(StatusCode::OK)
}

//! `PUT/GET/DELETE /kv-store/keys/<key>` over HTTP: parses the request into
//! a [`KvRequest`], lets the node's key protocol (`node::kv`) serve it, and
//! writes the answer as API.md says. No protocol decision is made here.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::time::Instant;

use super::error::{ApiError, ErrorReply, MISROUTED_HEADER};
use super::reply::{Reply, json_response};
use super::request::{HopHeaders, check_value, hop_headers, parse_body, parse_key, query_context, read_body, sender};
use crate::node::Node;
use crate::node::kv::{KvAnswer, KvErrorKind, KvOp, KvOutcome, KvRequest};

pub async fn handle(State(node): State<Arc<Node>>, req: Request) -> Response {
    let started = Instant::now();
    // Taken apart here rather than by extractors, which would clone the
    // headers and decode the query of every request.
    let (parts, body) = req.into_parts();
    let op = match parts.method {
        Method::PUT => KvOp::Put,
        Method::GET => KvOp::Get,
        Method::DELETE => KvOp::Delete,
        _ => return ErrorReply::new(&parts.method, ApiError::MethodNotAllowed, empty()).into_response(),
    };
    let query = query_context(&parts.uri);
    let body = read_body(body, node.config.max_value_bytes + super::BODY_OVERHEAD).await;
    let (method, headers) = (&parts.method, &parts.headers);
    let response = match parse(&node, method, op, headers, parts.uri.path(), query.as_deref(), body) {
        Ok(req) => answer_response(method, node.serve_key(&req).await),
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
    op: KvOp,
    headers: &HeaderMap,
    path: &str,
    query: Option<&str>,
    body: Result<Vec<u8>, ApiError>,
) -> Result<KvRequest, Box<ErrorReply>> {
    let reject = |e, ctx| Box::new(ErrorReply::new(method, e, ctx));
    let key = parse_key(path, node.config.max_key_length).map_err(|e| reject(e, empty()))?;
    let bytes = body.map_err(|e| reject(e, empty()))?;
    let mut parsed = parse_body(&bytes, query).map_err(|e| reject(e, empty()))?;
    let value = match op {
        KvOp::Put => Some(check_value(parsed.value.take(), node.config.max_value_bytes).map_err(|e| reject(e, parsed.raw_context()))?),
        _ => None,
    };
    let HopHeaders { hop, wait, sender_epoch, deadline } = hop_headers(headers);
    let wait = match (hop, wait) {
        (2, Some(w)) => w.min(node.config.causal_wait),
        _ => node.config.causal_wait,
    };
    let sender = if hop > 0 { sender(headers).map(str::to_owned) } else { None };
    Ok(KvRequest { op, key, value, context: parsed.context, hop, wait, sender, sender_epoch, deadline_ms: deadline })
}

/// The HTTP answer to a key request (the one place a key answer gets its
/// status and body).
pub fn answer_response(method: &Method, answer: KvAnswer) -> Response {
    match answer {
        KvAnswer::Reply(reply) => {
            let address = reply.served_by;
            let (status, reply) = match reply.outcome {
                KvOutcome::Created => {
                    (StatusCode::CREATED, Reply { replaced: Some(false), ..Reply::message("Added successfully", reply.context) })
                }
                KvOutcome::Updated => {
                    (StatusCode::OK, Reply { replaced: Some(true), ..Reply::message("Updated successfully", reply.context) })
                }
                KvOutcome::Deleted => {
                    (StatusCode::OK, Reply { does_exist: Some(true), ..Reply::message("Deleted successfully", reply.context) })
                }
                KvOutcome::Found(value) => (
                    StatusCode::OK,
                    Reply { value: Some(value), does_exist: Some(true), ..Reply::message("Retrieved successfully", reply.context) },
                ),
            };
            Reply { address, ..reply }.into_response_with(status)
        }
        KvAnswer::Error(e) => {
            let (error, misrouted_epoch) = match e.kind {
                KvErrorKind::NotFound => (ApiError::KeyNotFound, None),
                KvErrorKind::Unavailable => (ApiError::Unavailable, None),
                KvErrorKind::Misrouted { epoch } => (ApiError::Unavailable, Some(epoch)),
                KvErrorKind::ViewConflict(text) => (ApiError::ViewConflict(text), None),
                KvErrorKind::Internal(text) => (ApiError::internal(std::io::Error::other(text)), None),
            };
            ErrorReply { address: e.served_by, misrouted_epoch, ..ErrorReply::new(method, error, e.context) }.into_response()
        }
        KvAnswer::Relayed(r) => {
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut out = json_response(status, r.body);
            if let Some(v) = r.retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                out.headers_mut().insert(header::RETRY_AFTER, v);
            }
            if let Some(v) = r.misrouted_epoch.and_then(|e| HeaderValue::from_str(&e.to_string()).ok()) {
                out.headers_mut().insert(MISROUTED_HEADER, v);
            }
            out
        }
    }
}

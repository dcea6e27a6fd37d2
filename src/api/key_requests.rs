//! `PUT/GET/DELETE /kv-store/keys/<key>` over HTTP: parses the request into
//! a [`KvRequest`], lets the node's key protocol (`node::kv`) serve it, and
//! writes the answer as API.md says. No protocol decision is made here.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use tokio::time::Instant;

use super::error::{ApiError, ErrorReply, MAYBE_APPLIED_HEADER, MISROUTED_HEADER, SERVED_BY_HEADER};
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
        Ok(req) => {
            let answer = node.serve_key(&req).await;
            let other_shard = || req.hop == 0 && !node.current().map.is_replica_of_key(&req.key);
            answer_response(method, answer, Addressing { me: node.me(), other_shard: &other_shard })
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
    op: KvOp,
    headers: &HeaderMap,
    path: &str,
    query: Option<&str>,
    body: Result<Bytes, ApiError>,
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
    // Passed on as sent when the body says all: the value and the context.
    let raw_body = if parsed.context_from_query { None } else { Some(bytes.clone()) };
    let context = parsed.context;
    Ok(KvRequest { op, key, value, context, hop, wait, sender, sender_epoch, deadline_ms: deadline, raw_body })
}

/// Which node an answer names, and where.
pub struct Addressing<'a> {
    /// The node answering the client.
    pub me: &'a str,
    /// Whether the client asked a node outside the key's shard (API.md:
    /// `address` names the node of another shard that served it; a replica
    /// that passes a write to its own shard's master answers without it).
    /// Asked only for answers another node served.
    pub other_shard: &'a dyn Fn() -> bool,
}

impl Addressing<'_> {
    /// `served_by` as the body's `address`, when the rule above says so.
    fn address(&self, served_by: Option<&str>) -> Option<String> {
        served_by.filter(|s| *s != self.me && (self.other_shard)()).map(str::to_owned)
    }

    /// The served-by header of an answer this node served: made once per
    /// process (one process is one node), then cloned (a reference count).
    fn my_header(&self) -> Option<HeaderValue> {
        static ME: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();
        match ME.get() {
            Some(v) if v.as_bytes() == self.me.as_bytes() => Some(v.clone()),
            _ => {
                let v = HeaderValue::from_str(self.me).ok()?;
                let _ = ME.set(v.clone());
                Some(v)
            }
        }
    }

    fn header(&self, served_by: &str) -> Option<HeaderValue> {
        if served_by == self.me { self.my_header() } else { HeaderValue::from_str(served_by).ok() }
    }
}

/// The HTTP answer to a key request (the one place a key answer gets its
/// status and body). Every answer names the node that served it in
/// [`SERVED_BY_HEADER`].
pub fn answer_response(method: &Method, answer: KvAnswer, addressing: Addressing<'_>) -> Response {
    // Every branch below inserts the header exactly once (an answer without a
    // `served_by` was served here): one header-map insert per answer.
    let served_by_header = |response: &mut Response, served_by: Option<&str>| {
        let value = match served_by {
            Some(s) => addressing.header(s),
            None => addressing.my_header(),
        };
        if let Some(v) = value {
            response.headers_mut().insert(SERVED_BY_HEADER, v);
        }
    };
    match answer {
        KvAnswer::Reply(reply) => {
            let served_by = reply.served_by;
            let address = addressing.address(served_by.as_deref());
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
            let mut response = Reply { address, ..reply }.into_response_with(status);
            served_by_header(&mut response, served_by.as_deref());
            response
        }
        KvAnswer::Error(e) => {
            let maybe_applied = matches!(e.kind, KvErrorKind::MaybeApplied);
            let (error, misrouted_epoch) = match e.kind {
                KvErrorKind::NotFound => (ApiError::KeyNotFound, None),
                KvErrorKind::Unavailable | KvErrorKind::MaybeApplied => (ApiError::Unavailable, None),
                KvErrorKind::Misrouted { epoch } => (ApiError::Unavailable, Some(epoch)),
                KvErrorKind::ViewConflict(text) => (ApiError::ViewConflict(text), None),
                KvErrorKind::Internal(text) => (ApiError::internal(std::io::Error::other(text)), None),
            };
            let address = addressing.address(e.served_by.as_deref());
            let mut response = ErrorReply { address, misrouted_epoch, ..ErrorReply::new(method, error, e.context) }.into_response();
            served_by_header(&mut response, e.served_by.as_deref());
            if maybe_applied {
                response.headers_mut().insert(MAYBE_APPLIED_HEADER, HeaderValue::from_static("true"));
            }
            response
        }
        KvAnswer::Relayed(r) => {
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let body = match addressing.address(r.served_by.as_deref()) {
                Some(address) => with_address(r.body, &address),
                None => r.body,
            };
            let mut out = json_response(status, body);
            served_by_header(&mut out, r.served_by.as_deref());
            if let Some(v) = r.retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                out.headers_mut().insert(header::RETRY_AFTER, v);
            }
            if r.maybe_applied {
                out.headers_mut().insert(MAYBE_APPLIED_HEADER, HeaderValue::from_static("true"));
            }
            if let Some(v) = r.misrouted_epoch.and_then(|e| HeaderValue::from_str(&e.to_string()).ok()) {
                out.headers_mut().insert(MISROUTED_HEADER, v);
            }
            out
        }
    }
}

/// A relayed answer body with `"address": <served_by>` put in before its
/// `causal-context`, the field every answer ends with (written by
/// `reply::Reply`; a context holds node addresses and numbers only, so the
/// last `,"causal-context":` in the body is the field itself). The body is
/// not parsed again; one that does not have the field is left as it is.
fn with_address(body: Vec<u8>, address: &str) -> Vec<u8> {
    const FIELD: &[u8] = br#","causal-context":"#;
    let Some(at) = body.windows(FIELD.len()).rposition(|w| w == FIELD) else {
        return body;
    };
    let Ok(quoted) = serde_json::to_vec(address) else { return body };
    let mut out = Vec::with_capacity(body.len() + quoted.len() + 12);
    out.extend_from_slice(&body[..at]);
    out.extend_from_slice(br#","address":"#);
    out.extend_from_slice(&quoted);
    out.extend_from_slice(&body[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_goes_in_before_the_context() {
        let body = br#"{"message":"Added successfully","replaced":false,"causal-context":{"clock":{"a:1":1},"epoch":0}}"#.to_vec();
        let out = with_address(body, "10.0.0.2:13800");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"message":"Added successfully","replaced":false,"address":"10.0.0.2:13800","causal-context":{"clock":{"a:1":1},"epoch":0}}"#
        );
        // A value that holds the field name does not fool it: the last one is the field.
        let body = br#"{"message":"Retrieved successfully","value":{",\"causal-context\":":1},"causal-context":{}}"#.to_vec();
        let out: serde_json::Value = serde_json::from_slice(&with_address(body, "n:1")).unwrap();
        assert_eq!(out["address"], "n:1");
        assert_eq!(out["causal-context"], serde_json::json!({}));
        // No context field: left alone.
        assert_eq!(with_address(b"{}".to_vec(), "n:1"), b"{}".to_vec());
    }
}

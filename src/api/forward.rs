//! Relaying a key request to another node and its answer back, unchanged.
//!
//! Hop bound (DESIGN.md "Security"): entry node -> a replica of the key's
//! shard (hop 1) -> at most one other replica of that shard (hop 2). A node
//! never forwards a request that already has hop 2, and a non-replica never
//! forwards a request that has hop >= 1.

use std::time::Duration;

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::error::MISROUTED_HEADER;
use super::reply::json_response;
use super::request::{DEADLINE_HEADER, EPOCH_HEADER, FROM_HEADER, HOP_HEADER, WAIT_HEADER, unix_ms};
use crate::node::Node;

/// Characters left as they are in a forwarded key's path segment.
const KEY_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// The target could not be reached (or did not answer in time); the caller
/// may try another replica.
#[derive(Debug)]
pub struct Unreachable;

#[derive(Serialize)]
struct ForwardBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a RawValue>,
    #[serde(rename = "causal-context")]
    context: Value,
}

/// One key request to forward.
pub struct Forward<'a> {
    pub method: &'a Method,
    pub key: &'a str,
    pub value: Option<&'a RawValue>,
    pub context: Value,
    pub hop: u8,
    /// For hop 2: how long the target may hold the request back.
    pub wait: Option<Duration>,
    pub timeout: Duration,
}

pub async fn forward(node: &Node, target: &str, fwd: &Forward<'_>) -> Result<Response, Unreachable> {
    if node.faults.is_blocked(target) {
        return Err(Unreachable);
    }
    let url = format!("{}://{target}/kv-store/keys/{}", crate::tls::scheme(), utf8_percent_encode(fwd.key, KEY_SEGMENT));
    let body = serde_json::to_vec(&ForwardBody { value: fwd.value, context: fwd.context.clone() }).map_err(|_| Unreachable)?;
    let mut req = node
        .client
        .request(fwd.method.clone(), url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(HOP_HEADER, fwd.hop.to_string())
        .header(FROM_HEADER, node.me())
        .header(EPOCH_HEADER, node.epoch().to_string())
        .header(DEADLINE_HEADER, (unix_ms() + fwd.timeout.as_millis() as u64).to_string())
        .timeout(fwd.timeout)
        .body(body);
    if let Some(wait) = fwd.wait {
        req = req.header(WAIT_HEADER, wait.as_millis().to_string());
    }
    node.metrics.forwarded.inc();
    let resp = req.send().await.map_err(|e| {
        tracing::debug!(%target, error = %e, "forward failed");
        Unreachable
    })?;
    let status = StatusCode::from_u16(resp.status().as_u16()).map_err(|_| Unreachable)?;
    let relayed: Vec<(header::HeaderName, HeaderValue)> = [header::RETRY_AFTER, header::HeaderName::from_static(MISROUTED_HEADER)]
        .into_iter()
        .filter_map(|name| resp.headers().get(name.as_str()).and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()).map(|v| (name, v)))
        .collect();
    let bytes = resp.bytes().await.map_err(|_| Unreachable)?;
    let mut out = json_response(status, bytes.to_vec());
    for (name, value) in relayed {
        out.headers_mut().insert(name, value);
    }
    Ok(out)
}

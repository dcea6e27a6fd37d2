//! Parsing of public requests: key, body, causal context, hop headers. Every
//! failure becomes an [`ApiError`]; nothing here can panic on input.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body as RequestBody;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderName, Uri};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::error::ApiError;
use crate::causal::CausalContext;

/// Marks a forwarded request and how many hops it has made (1: entry node
/// to a replica; 2: hold-back fallback to another replica of the shard).
pub const HOP_HEADER: &str = "x-causalkv-hop";
/// On a forwarded request: the epoch of the node that forwarded it.
pub const EPOCH_HEADER: &str = "x-causalkv-epoch";
/// On a forwarded request: when (unix ms) the forwarding node stops waiting.
/// A write that reaches this point unexecuted is dropped, because the sender
/// may already have had it taken by another replica (a node frozen with the
/// request in its socket buffer must not replay it later with a newer HLC).
pub const DEADLINE_HEADER: &str = "x-causalkv-deadline-ms";
/// On a hop-2 request: how long the target may hold it back.
pub const WAIT_HEADER: &str = "x-causalkv-wait-ms";
pub use crate::gossip::FROM_HEADER;

// The same names as `HeaderName`s, for lookups: a lookup by `&str` parses
// and validates the name on every request.
static HOP_NAME: HeaderName = HeaderName::from_static(HOP_HEADER);
static EPOCH_NAME: HeaderName = HeaderName::from_static(EPOCH_HEADER);
static DEADLINE_NAME: HeaderName = HeaderName::from_static(DEADLINE_HEADER);
static WAIT_NAME: HeaderName = HeaderName::from_static(WAIT_HEADER);
static FROM_NAME: HeaderName = HeaderName::from_static(FROM_HEADER);

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(default)]
    value: Option<Box<RawValue>>,
    /// Kept as text: parsed by [`CausalContext::parse_json`] without a
    /// `Value` in between (`null` is `None`, as for an absent field).
    #[serde(rename = "causal-context", default, borrow)]
    context: Option<&'a RawValue>,
}

/// The parts of a request body the API uses.
pub struct ParsedBody<'a> {
    pub value: Option<Box<RawValue>>,
    pub context: CausalContext,
    /// The context text as sent (body or query), if any.
    raw_context: Option<&'a str>,
}

impl ParsedBody<'_> {
    /// The context as sent, echoed on errors that happen before it is used
    /// (only errors need it, so it is parsed into a `Value` only then).
    pub fn raw_context(&self) -> Value {
        // The text parsed once already (as part of the body, or on its own).
        self.raw_context.and_then(|text| serde_json::from_str(text).ok()).unwrap_or_else(|| Value::Object(Default::default()))
    }
}

/// Most bytes of an oversized body read (and discarded) before answering 413:
/// a client that sends its whole body before reading the answer then gets
/// the 413 instead of a reset connection; beyond this the connection closes.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Reads a request body of at most `limit` bytes.
pub async fn read_body(body: RequestBody, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::BadBody)?;
        total = total.saturating_add(chunk.len());
        if total > DRAIN_LIMIT {
            return Err(ApiError::ValueTooLarge);
        }
        if total <= limit {
            buf.extend_from_slice(&chunk);
        }
    }
    if total > limit { Err(ApiError::ValueTooLarge) } else { Ok(buf) }
}

/// Parses an optional JSON body and the `causal-context` query parameter
/// (`query`, see [`query_context`]; used when the body has no context).
/// Every error answers with the empty context.
pub fn parse_body<'a>(bytes: &'a [u8], query: Option<&'a str>) -> Result<ParsedBody<'a>, ApiError> {
    let parsed: Body<'a> = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Body { value: None, context: None },
        // serde would also accept an array as a struct (fields by position).
        Some(b'{') => serde_json::from_slice(bytes).map_err(|_| ApiError::BadBody)?,
        Some(_) => return Err(ApiError::BadBody),
    };
    let raw_context = match parsed.context {
        Some(raw) => Some(raw.get()),
        None => query.filter(|text| !text.trim().is_empty()),
    };
    let context = match raw_context {
        Some(text) => CausalContext::parse_json(text).map_err(|_| ApiError::InvalidContext)?,
        None => CausalContext::default(),
    };
    Ok(ParsedBody { value: parsed.value, context, raw_context })
}

/// The `causal-context` query parameter of a request, if it has one. Only a
/// URI with a query is decoded (as axum's `Query` extractor does it, so a
/// repeated parameter keeps the last value).
pub fn query_context(uri: &Uri) -> Option<String> {
    uri.query()?;
    let Query(mut params) = Query::<HashMap<String, String>>::try_from_uri(uri).ok()?;
    params.remove("causal-context")
}

/// Validates the key from the path.
pub fn parse_key(path: Result<Path<String>, PathRejection>, max_len: usize) -> Result<String, ApiError> {
    let Path(key) = path.map_err(|_| ApiError::InvalidKey)?;
    if key.is_empty() {
        return Err(ApiError::KeyMissing);
    }
    if key.chars().count() > max_len {
        return Err(ApiError::KeyTooLong);
    }
    if key.contains('/') {
        return Err(ApiError::InvalidKey);
    }
    Ok(key)
}

/// Checks a PUT value: present, not null, not "", within the size limit.
pub fn check_value(value: Option<Box<RawValue>>, max_bytes: usize) -> Result<Box<RawValue>, ApiError> {
    let value = value.ok_or(ApiError::ValueMissing)?;
    let text = value.get().trim();
    if text == "null" || text == "\"\"" {
        return Err(ApiError::ValueMissing);
    }
    if value.get().len() > max_bytes {
        return Err(ApiError::ValueTooLarge);
    }
    Ok(value)
}

/// The hop count of a request (0 for a client request).
pub fn hop(headers: &HeaderMap) -> u8 {
    headers.get(&HOP_NAME).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u8>().ok()).unwrap_or(0).min(2)
}

/// The hold-back bound a hop-2 request asks for.
pub fn wait_override(headers: &HeaderMap) -> Option<Duration> {
    headers.get(&WAIT_NAME).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).map(Duration::from_millis)
}

/// The epoch of the node that forwarded a request, if it said.
pub fn sender_epoch(headers: &HeaderMap) -> Option<u64> {
    headers.get(&EPOCH_NAME).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// The deadline a forwarding node set, if any (unix ms).
pub fn deadline(headers: &HeaderMap) -> Option<u64> {
    headers.get(&DEADLINE_NAME).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The sending node of an internal or forwarded request.
pub fn sender(headers: &HeaderMap) -> Option<&str> {
    headers.get(&FROM_NAME).and_then(|v| v.to_str().ok())
}

//! `POST /kv-store/read`: a snapshot read of several keys over HTTP (the
//! protocol is `node::snapshot`). Parses and bounds the request, and writes
//! the answer: every key once, in the order asked, with its value or
//! `"doesExist": false`, and the context of the cut.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::error::{ApiError, ErrorReply};
use super::reply::json_response;
use super::request::read_body;
use crate::causal::CausalContext;
use crate::node::Node;
use crate::node::snapshot::{MAX_SNAPSHOT_KEYS, SnapshotError};

/// Largest request body: the keys (percent-escaped at worst) and a context.
const READ_BODY_LIMIT: usize = 1024 * 1024;

#[derive(Deserialize)]
struct ReadRequest {
    keys: Vec<String>,
    #[serde(rename = "causal-context", default)]
    context: Option<Value>,
}

#[derive(Serialize)]
struct KeyValue<'a> {
    key: &'a str,
    #[serde(rename = "doesExist")]
    does_exist: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct ReadAnswer<'a> {
    message: &'static str,
    values: Vec<KeyValue<'a>>,
    #[serde(rename = "causal-context")]
    context: &'a CausalContext,
}

pub async fn read(State(node): State<Arc<Node>>, method: Method, body: Body) -> Response {
    let empty = || Value::Object(Default::default());
    let bytes = match read_body(body, READ_BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => return ErrorReply::new(&method, e, empty()).into_response(),
    };
    let req: ReadRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(_) => return ErrorReply::new(&method, ApiError::BadBody, empty()).into_response(),
    };
    let raw_context = req.context.clone().unwrap_or_else(empty);
    let context = match &req.context {
        None => CausalContext::default(),
        Some(v) => match CausalContext::from_json(v) {
            Ok(c) => c,
            Err(_) => return ErrorReply::new(&method, ApiError::InvalidContext, empty()).into_response(),
        },
    };
    if req.keys.is_empty() || req.keys.len() > MAX_SNAPSHOT_KEYS {
        return ErrorReply::new(&method, ApiError::KeyCount(MAX_SNAPSHOT_KEYS), raw_context).into_response();
    }
    for key in &req.keys {
        // The same rules as a key in a path, without the escapes.
        let error = if key.is_empty() {
            Some(ApiError::KeyMissing)
        } else if key.chars().count() > node.config.max_key_length {
            Some(ApiError::KeyTooLong)
        } else if key.contains('/') || key.contains('\0') {
            Some(ApiError::InvalidKey)
        } else {
            None
        };
        if let Some(e) = error {
            return ErrorReply::new(&method, e, raw_context).into_response();
        }
    }
    let started = tokio::time::Instant::now();
    let answer = node.snapshot_read(&req.keys, &context).await;
    node.metrics.count_request("read", answer.as_ref().map_or(503, |_| 200));
    node.metrics.request_seconds.observe(started.elapsed().as_secs_f64());
    match answer {
        Ok(read) => {
            let values =
                read.values.iter().map(|(key, value)| KeyValue { key, does_exist: value.is_some(), value: value.as_deref() }).collect();
            let body = ReadAnswer { message: "Read successfully", values, context: &read.context };
            match serde_json::to_vec(&body) {
                Ok(bytes) => json_response(StatusCode::OK, bytes),
                Err(e) => ErrorReply::new(&method, ApiError::internal(e), raw_context).into_response(),
            }
        }
        Err(SnapshotError::Unavailable) => ErrorReply::new(&method, ApiError::Unavailable, raw_context).into_response(),
        Err(SnapshotError::ViewConflict(text)) => ErrorReply::new(&method, ApiError::ViewConflict(text), raw_context).into_response(),
    }
}

//! The JSON body every public endpoint answers with.

use std::borrow::Cow;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::{Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::causal::CausalContext;

/// Every field of every public answer; absent fields are not serialised.
#[derive(Serialize, Default)]
pub struct Reply {
    pub message: Cow<'static, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Box<RawValue>>,
    #[serde(rename = "doesExist", skip_serializing_if = "Option::is_none")]
    pub does_exist: Option<bool>,
    #[serde(rename = "key-count", skip_serializing_if = "Option::is_none")]
    pub key_count: Option<u64>,
    #[serde(rename = "shard-id", skip_serializing_if = "Option::is_none")]
    pub shard_id: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(rename = "causal-context")]
    pub causal_context: ReplyContext,
}

/// The `causal-context` of an answer: JSON as the client sent it (echoed),
/// or a context this node computed, serialised as it stands instead of
/// through a `Value` (the same bytes as `CausalContext::to_json`).
#[derive(Debug)]
pub enum ReplyContext {
    Json(Value),
    Causal(CausalContext),
}

impl Default for ReplyContext {
    fn default() -> Self {
        ReplyContext::Json(Value::Null)
    }
}

impl From<Value> for ReplyContext {
    fn from(v: Value) -> Self {
        ReplyContext::Json(v)
    }
}

impl From<CausalContext> for ReplyContext {
    fn from(c: CausalContext) -> Self {
        ReplyContext::Causal(c)
    }
}

impl Serialize for ReplyContext {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ReplyContext::Json(v) => v.serialize(serializer),
            ReplyContext::Causal(c) => c.serialize(serializer),
        }
    }
}

impl Reply {
    pub fn message(message: &'static str, context: impl Into<ReplyContext>) -> Self {
        Reply { message: Cow::Borrowed(message), causal_context: context.into(), ..Reply::default() }
    }

    pub fn into_response_with(self, status: StatusCode) -> Response {
        // Room for the fixed fields, the value and a few clock entries, so
        // that the body is written without growing the buffer.
        let value_len = self.value.as_ref().map_or(0, |v| v.get().len());
        let clock_len = match &self.causal_context {
            ReplyContext::Causal(c) => c.clock.iter().map(|(o, _)| o.len() + 24).sum(),
            ReplyContext::Json(_) => 64,
        };
        let mut body = Vec::with_capacity(192 + value_len + clock_len);
        // Serialising owned plain data cannot fail.
        if serde_json::to_writer(&mut body, &self).is_err() {
            body = b"{}".to_vec();
        }
        json_response(status, body)
    }
}

pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_computed_context_serialises_like_its_json_form() {
        let ctx = CausalContext::from_json(&json!({"epoch": 1, "clock": {"n:2": 4, "n:1": 9}})).unwrap();
        let value = RawValue::from_string("\"v\"".into()).unwrap();
        let direct = Reply { value: Some(value.clone()), does_exist: Some(true), ..Reply::message("Retrieved successfully", ctx.clone()) };
        let via_json = Reply { value: Some(value), does_exist: Some(true), ..Reply::message("Retrieved successfully", ctx.to_json()) };
        assert_eq!(serde_json::to_string(&direct).unwrap(), serde_json::to_string(&via_json).unwrap());
        assert_eq!(
            serde_json::to_string(&direct).unwrap(),
            r#"{"message":"Retrieved successfully","value":"v","doesExist":true,"causal-context":{"clock":{"n:1":9,"n:2":4},"epoch":1}}"#
        );
    }
}

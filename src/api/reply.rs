//! The JSON body every public endpoint answers with.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// Every field of every public answer; absent fields are not serialised.
#[derive(Serialize, Default)]
pub struct Reply {
    pub message: String,
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
    pub causal_context: Value,
}

impl Reply {
    pub fn message(message: &str, context: Value) -> Self {
        Reply { message: message.to_owned(), causal_context: context, ..Reply::default() }
    }

    pub fn into_response_with(self, status: StatusCode) -> Response {
        // Serialising owned plain data cannot fail.
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        json_response(status, body)
    }
}

pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

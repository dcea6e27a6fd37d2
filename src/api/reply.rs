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
/// The derived `Serialize` defines the JSON; answers are written by
/// [`Reply::write_json`], which produces the same bytes (tests compare them).
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
    /// Set on answers a node still gives while it knows of another view at
    /// its epoch (key-count, shards): says why key requests are refused.
    #[serde(rename = "view-conflict", skip_serializing_if = "Option::is_none")]
    pub view_conflict: Option<String>,
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
        if self.write_json(&mut body).is_err() {
            body = b"{}".to_vec();
        }
        json_response(status, body)
    }

    /// Writes the bytes `serde_json::to_writer(out, self)` writes, without
    /// serde's work per field (and per clock entry): names are literals,
    /// and only text that needs escaping goes through serde_json. Every
    /// answer is written here, so this is worth the few lines.
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        out.extend_from_slice(br#"{"message":"#);
        write_str(out, &self.message)?;
        if let Some(error) = &self.error {
            out.extend_from_slice(br#","error":"#);
            write_str(out, error)?;
        }
        if let Some(replaced) = self.replaced {
            out.extend_from_slice(br#","replaced":"#);
            serde_json::to_writer(&mut *out, &replaced)?;
        }
        if let Some(value) = &self.value {
            // Raw JSON, written as it is (as serde_json does for a RawValue).
            out.extend_from_slice(br#","value":"#);
            out.extend_from_slice(value.get().as_bytes());
        }
        if let Some(does_exist) = self.does_exist {
            out.extend_from_slice(br#","doesExist":"#);
            serde_json::to_writer(&mut *out, &does_exist)?;
        }
        if let Some(count) = self.key_count {
            out.extend_from_slice(br#","key-count":"#);
            serde_json::to_writer(&mut *out, &count)?;
        }
        if let Some(shard_id) = &self.shard_id {
            out.extend_from_slice(br#","shard-id":"#);
            serde_json::to_writer(&mut *out, shard_id)?;
        }
        if let Some(shards) = &self.shards {
            out.extend_from_slice(br#","shards":"#);
            serde_json::to_writer(&mut *out, shards)?;
        }
        if let Some(replicas) = &self.replicas {
            out.extend_from_slice(br#","replicas":"#);
            serde_json::to_writer(&mut *out, replicas)?;
        }
        if let Some(address) = &self.address {
            out.extend_from_slice(br#","address":"#);
            write_str(out, address)?;
        }
        if let Some(conflict) = &self.view_conflict {
            out.extend_from_slice(br#","view-conflict":"#);
            write_str(out, conflict)?;
        }
        out.extend_from_slice(br#","causal-context":"#);
        match &self.causal_context {
            ReplyContext::Json(v) => serde_json::to_writer(&mut *out, v)?,
            ReplyContext::Causal(c) => write_context(out, c)?,
        }
        out.push(b'}');
        Ok(())
    }
}

/// A JSON string as serde_json writes it. serde_json escapes exactly the
/// control characters, `"` and `\`; text without them is copied as it is.
fn write_str(out: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(out, s)
    }
}

/// The bytes of `CausalContext`'s `Serialize` (`{}`, or
/// `{"clock":{..},"epoch":n}` with origins in order).
fn write_context(out: &mut Vec<u8>, ctx: &CausalContext) -> serde_json::Result<()> {
    if ctx.clock.is_empty() {
        out.extend_from_slice(b"{}");
        return Ok(());
    }
    out.extend_from_slice(br#"{"clock":{"#);
    for (i, (origin, seq)) in ctx.clock.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, origin)?;
        out.push(b':');
        serde_json::to_writer(&mut *out, &seq)?;
    }
    out.extend_from_slice(br#"},"epoch":"#);
    serde_json::to_writer(&mut *out, &ctx.epoch)?;
    out.push(b'}');
    Ok(())
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

    fn written(reply: &Reply) -> String {
        let mut out = Vec::new();
        reply.write_json(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn write_json_writes_what_serde_writes() {
        let texts = ["", "plain", "quote \" back \\ slash", "ctl \u{0} \n \t \u{1f} del \u{7f}", "ünïcødé ✓ 𝄞", "/slash"];
        let contexts = || {
            let mut out: Vec<ReplyContext> = vec![
                Value::Null.into(),
                json!({}).into(),
                json!({"clock": {"z": 1, "a\"": 2}, "epoch": 3}).into(),
                json!([1, "x"]).into(),
                CausalContext::default().into(),
                CausalContext { epoch: 9, clock: Default::default() }.into(),
            ];
            for t in texts {
                let ctx = CausalContext::from_json(&json!({"epoch": 2, "clock": {t.to_string() + "o": 7, "n:1": u64::MAX}})).unwrap();
                out.push(ctx.into());
            }
            out
        };
        let mut replies = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            for ctx in contexts() {
                replies.push(Reply { message: Cow::Owned(t.to_string()), causal_context: ctx, ..Reply::default() });
            }
            let flag = i % 2 == 0;
            replies.push(Reply {
                message: "Retrieved successfully".into(),
                error: Some(t.to_string()),
                replaced: Some(flag),
                value: Some(RawValue::from_string(format!("{{\"v\": [1, 2.50, {}]}}", json!(t))).unwrap()),
                does_exist: Some(!flag),
                key_count: Some(i as u64 * 1000),
                shard_id: Some(if flag { json!(i) } else { Value::Null }),
                shards: Some(json!([{"shard-id": 1, "key-count": 2, "replicas": [t]}])),
                replicas: Some(vec![t.to_string(), "10.0.0.1:13800".into()]),
                address: Some(format!("{t}:13800")),
                view_conflict: Some(format!("Two views at one epoch: {t}")),
                causal_context: CausalContext::from_json(&json!({"epoch": 1, "clock": {"b": 1, "a": 2}})).unwrap().into(),
            });
        }
        for reply in &replies {
            assert_eq!(written(reply), serde_json::to_string(reply).unwrap());
        }
    }

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

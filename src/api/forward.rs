//! Passing a key request to another node over HTTP ([`HttpForwarder`], the
//! process's [`Forwarder`]) and its answer back, unchanged: the target's
//! status and body are relayed as bytes, with the misroute mark and
//! `Retry-After` read from its headers.
//!
//! Hop bound (DESIGN.md "Security"), kept by `node::kv`: entry node -> a
//! replica of the key's shard (hop 1) -> at most one other replica of that
//! shard (hop 2).

use std::sync::Arc;

use axum::http::{Method, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde_json::value::RawValue;

use super::error::{MAYBE_APPLIED_HEADER, MISROUTED_HEADER, SERVED_BY_HEADER};
use super::request::{DEADLINE_HEADER, EPOCH_HEADER, FROM_HEADER, HOP_HEADER, WAIT_HEADER};
use crate::causal::CausalContext;
use crate::gossip::BoxFuture;
use crate::node::kv::{Forward, Forwarder, KvAnswer, KvOp, Relayed, Unreachable};

/// Characters left as they are in a forwarded key's path segment.
const KEY_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

#[derive(Serialize)]
struct ForwardBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a RawValue>,
    #[serde(rename = "causal-context")]
    context: &'a CausalContext,
}

/// Forwards over the node's pooled HTTP client.
pub struct HttpForwarder {
    client: reqwest::Client,
}

impl HttpForwarder {
    pub fn new(client: reqwest::Client) -> Arc<Self> {
        Arc::new(Self { client })
    }

    async fn send(&self, me: &str, target: &str, fwd: Forward<'_>) -> Result<KvAnswer, Unreachable> {
        let req = fwd.request;
        let url = format!("{}://{target}/kv-store/keys/{}", crate::tls::scheme(), utf8_percent_encode(&req.key, KEY_SEGMENT));
        let body =
            serde_json::to_vec(&ForwardBody { value: req.value.as_deref(), context: &req.context }).map_err(|_| Unreachable::NotSent)?;
        let method = match req.op {
            KvOp::Put => Method::PUT,
            KvOp::Get => Method::GET,
            KvOp::Delete => Method::DELETE,
        };
        let mut http = self
            .client
            .request(method, url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(HOP_HEADER, fwd.hop.to_string())
            .header(FROM_HEADER, me)
            .header(EPOCH_HEADER, fwd.epoch.to_string())
            .header(DEADLINE_HEADER, fwd.deadline_ms.to_string())
            .timeout(fwd.timeout)
            .body(body);
        if let Some(wait) = fwd.wait {
            http = http.header(WAIT_HEADER, wait.as_millis().to_string());
        }
        let resp = http.send().await.map_err(|e| {
            tracing::debug!(%target, error = %e, "forward failed");
            // Only a failed connect proves the target never saw the request.
            if e.is_connect() { Unreachable::NotSent } else { Unreachable::NoAnswer }
        })?;
        let status = resp.status().as_u16();
        let header_text = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let retry_after = header_text(header::RETRY_AFTER.as_str());
        let misrouted_epoch = header_text(MISROUTED_HEADER).and_then(|v| v.parse().ok());
        let served_by = header_text(SERVED_BY_HEADER).or_else(|| Some(target.to_owned()));
        let maybe_applied = header_text(MAYBE_APPLIED_HEADER).is_some();
        let body = resp.bytes().await.map_err(|_| Unreachable::NoAnswer)?;
        Ok(KvAnswer::Relayed(Relayed { status, served_by, misrouted_epoch, maybe_applied, retry_after, body: body.to_vec() }))
    }
}

impl Forwarder for HttpForwarder {
    fn forward<'a>(&'a self, me: &'a str, target: &'a str, fwd: Forward<'a>) -> BoxFuture<'a, Result<KvAnswer, Unreachable>> {
        Box::pin(self.send(me, target, fwd))
    }
}

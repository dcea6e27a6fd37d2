//! The HTTP transport: JSON bodies to `/internal/...` on the peer's client
//! port, over a pooled keep-alive client. Every request is signed for its
//! receiver and every answer's signature is checked before it is parsed
//! (`auth`); a peer that refuses us, or answers unsigned, is recorded in
//! [`PeerRefusals`] so it is loud, never silent.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

use super::Auth;
use super::auth::SIGNATURE_HEADER;
use super::refusals::PeerRefusals;
use super::stream::{STREAM_PATH, StreamConn, UPGRADE_TOKEN};
use super::{BoxFuture, GossipError, Message, Transport};
use crate::metrics::Metrics;

/// Header naming the sending node on internal requests.
pub const FROM_HEADER: &str = "x-causalkv-from";

pub struct HttpTransport {
    client: reqwest::Client,
    me: String,
    auth: Arc<Auth>,
    refusals: Arc<PeerRefusals>,
    metrics: Arc<Metrics>,
}

impl HttpTransport {
    pub fn new(client: reqwest::Client, me: String, auth: Arc<Auth>, refusals: Arc<PeerRefusals>, metrics: Arc<Metrics>) -> Self {
        Self { client, me, auth, refusals, metrics }
    }

    /// Records that `peer` refused this node's traffic (also used by the
    /// Mycelium transport, which sends view-change steps through this one).
    pub fn refused(&self, peer: &str, why: String) {
        self.refusals.refused(&self.metrics, peer, why);
    }

    async fn post(&self, peer: &str, kind: Message, body: Box<RawValue>, timeout: Duration) -> Result<Vec<u8>, GossipError> {
        let unreachable = |reason: String| GossipError::Unreachable { peer: peer.to_owned(), reason };
        let path = kind.path();
        let body = Box::<str>::from(body).into_string().into_bytes();
        let signed = self.auth.sign("POST", path, peer, &body);
        let mut req = self
            .client
            .post(format!("{}://{peer}{path}", crate::tls::scheme()))
            .header(FROM_HEADER, &self.me)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(timeout);
        for (name, value) in signed.headers {
            req = req.header(name, value);
        }
        let resp = req.body(body).send().await.map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        if matches!(status.as_u16(), 401 | 403 | 411 | 421) {
            // The peer is up but will not take our traffic: say so loudly.
            let why = resp.text().await.unwrap_or_default();
            let why = format!("answered {status}: {}", why.chars().take(200).collect::<String>());
            self.refusals.refused(&self.metrics, peer, why);
            return Err(GossipError::Rejected { peer: peer.to_owned(), status: status.as_u16() });
        }
        let signature = resp.headers().get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = resp.bytes().await.map_err(|e| unreachable(e.to_string()))?;
        if let Err(e) = self.auth.verify_response(&signed.request_mac, peer, status.as_u16(), signature.as_deref(), &bytes) {
            self.refusals.refused(&self.metrics, peer, format!("its answer failed authentication: {e}"));
            return Err(GossipError::Unauthentic { peer: peer.to_owned(), reason: e.to_string() });
        }
        self.refusals.accepted(peer);
        if !status.is_success() {
            return Err(GossipError::Rejected { peer: peer.to_owned(), status: status.as_u16() });
        }
        Ok(Vec::from(bytes))
    }
}

impl HttpTransport {
    /// Opens a replication stream: a signed request the peer upgrades.
    async fn stream(&self, peer: &str) -> Result<Option<StreamConn>, GossipError> {
        let unreachable = |reason: String| GossipError::Unreachable { peer: peer.to_owned(), reason };
        let signed = self.auth.sign("POST", STREAM_PATH, peer, b"");
        let mut req = self
            .client
            .post(format!("{}://{peer}{STREAM_PATH}", crate::tls::scheme()))
            .header(FROM_HEADER, &self.me)
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, UPGRADE_TOKEN)
            .header(reqwest::header::CONTENT_LENGTH, "0");
        for (name, value) in signed.headers {
            req = req.header(name, value);
        }
        // Not reqwest's own timeout: it would also bound the upgraded stream.
        let resp = match tokio::time::timeout(super::EXCHANGE_TIMEOUT, req.body(Vec::new()).send()).await {
            Ok(r) => r.map_err(|e| unreachable(e.to_string()))?,
            Err(_) => return Err(unreachable("stream request timed out".into())),
        };
        let status = resp.status();
        if status != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            if matches!(status.as_u16(), 401 | 403) {
                let why = resp.text().await.unwrap_or_default();
                self.refusals.refused(&self.metrics, peer, format!("answered {status}: {}", why.chars().take(200).collect::<String>()));
            }
            return Err(GossipError::Rejected { peer: peer.to_owned(), status: status.as_u16() });
        }
        let signature = resp.headers().get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        if let Err(e) = self.auth.verify_response(&signed.request_mac, peer, status.as_u16(), signature.as_deref(), b"") {
            self.refusals.refused(&self.metrics, peer, format!("its stream answer failed authentication: {e}"));
            return Err(GossipError::Unauthentic { peer: peer.to_owned(), reason: e.to_string() });
        }
        self.refusals.accepted(peer);
        let io = resp.upgrade().await.map_err(|e| unreachable(e.to_string()))?;
        Ok(Some(StreamConn { io: Box::new(io), key: self.auth.stream_key(&signed.request_mac), cut: None }))
    }
}

impl Transport for HttpTransport {
    fn open_stream<'a>(&'a self, peer: &'a str) -> BoxFuture<'a, Result<Option<StreamConn>, GossipError>> {
        Box::pin(self.stream(peer))
    }

    fn call<'a>(
        &'a self,
        peer: &'a str,
        kind: Message,
        body: Box<RawValue>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>, GossipError>> {
        Box::pin(self.post(peer, kind, body, timeout))
    }
}

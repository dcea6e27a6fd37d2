//! The HTTP transport: JSON bodies to `/internal/...` on the peer's client
//! port, over a pooled keep-alive client. Every request is signed for its
//! receiver and every answer's signature is checked before it is parsed
//! (`auth`); a peer that refuses us, or answers unsigned, is recorded in
//! [`PeerRefusals`] so it is loud, never silent.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Auth;
use super::auth::SIGNATURE_HEADER;
use super::refusals::PeerRefusals;
use super::{
    BoxFuture, EXCHANGE_TIMEOUT, GossipError, HEARTBEAT_TIMEOUT, Heartbeat, HeartbeatAck, PUSH_TIMEOUT, PullRequest, PullResponse,
    ReplicateAck, ReplicateBatch, SnapshotPage, SnapshotRequest, Transport,
};
use crate::faults::Faults;
use crate::metrics::Metrics;
use crate::viewchange::Step;

/// Header naming the sending node on internal requests.
pub const FROM_HEADER: &str = "x-causalkv-from";

pub struct HttpTransport {
    client: reqwest::Client,
    me: String,
    faults: Arc<Faults>,
    auth: Arc<Auth>,
    refusals: Arc<PeerRefusals>,
    metrics: Arc<Metrics>,
}

impl HttpTransport {
    pub fn new(
        client: reqwest::Client,
        me: String,
        faults: Arc<Faults>,
        auth: Arc<Auth>,
        refusals: Arc<PeerRefusals>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { client, me, faults, auth, refusals, metrics }
    }

    /// Records that `peer` refused this node's traffic (also used by the
    /// Mycelium transport, which sends view-change steps through this one).
    pub fn refused(&self, peer: &str, why: String) {
        self.refusals.refused(&self.metrics, peer, why);
    }

    async fn post<T: Serialize, R: DeserializeOwned>(&self, peer: &str, path: &str, body: &T, timeout: Duration) -> Result<R, GossipError> {
        let unreachable = |reason: String| GossipError::Unreachable { peer: peer.to_owned(), reason };
        if self.faults.is_blocked(peer) {
            return Err(unreachable("blocked by fault switch".into()));
        }
        let body = serde_json::to_vec(body).map_err(|e| unreachable(e.to_string()))?;
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
        serde_json::from_slice(&bytes).map_err(|e| unreachable(e.to_string()))
    }
}

impl Transport for HttpTransport {
    fn replicate<'a>(&'a self, peer: &'a str, batch: &'a ReplicateBatch) -> BoxFuture<'a, Result<ReplicateAck, GossipError>> {
        Box::pin(async move {
            if self.faults.replication_paused(peer) {
                return Err(GossipError::Unreachable { peer: peer.to_owned(), reason: "replication paused by fault switch".into() });
            }
            self.post(peer, "/internal/replicate", batch, PUSH_TIMEOUT).await
        })
    }

    fn pull<'a>(&'a self, peer: &'a str, req: &'a PullRequest, timeout: Duration) -> BoxFuture<'a, Result<PullResponse, GossipError>> {
        Box::pin(self.post(peer, "/internal/pull", req, timeout))
    }

    fn snapshot<'a>(&'a self, peer: &'a str, req: &'a SnapshotRequest) -> BoxFuture<'a, Result<SnapshotPage, GossipError>> {
        Box::pin(self.post(peer, "/internal/snapshot", req, EXCHANGE_TIMEOUT * 5))
    }

    fn heartbeat<'a>(&'a self, peer: &'a str, msg: &'a Heartbeat) -> BoxFuture<'a, Result<HeartbeatAck, GossipError>> {
        Box::pin(self.post(peer, "/internal/heartbeat", msg, HEARTBEAT_TIMEOUT))
    }

    fn view<'a>(
        &'a self,
        peer: &'a str,
        step: Step,
        body: &'a serde_json::Value,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<serde_json::Value, GossipError>> {
        Box::pin(self.post(peer, step.path(), body, timeout))
    }
}

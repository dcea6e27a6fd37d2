//! The HTTP transport: JSON bodies to `/internal/...` on the peer's client
//! port, over a pooled keep-alive client.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Auth;
use super::viewchange::Step;
use super::{
    BoxFuture, EXCHANGE_TIMEOUT, GossipError, HEARTBEAT_TIMEOUT, Heartbeat, HeartbeatAck, PUSH_TIMEOUT, PullRequest, PullResponse,
    ReplicateAck, ReplicateBatch, SnapshotPage, SnapshotRequest, Transport,
};
use crate::faults::Faults;

/// Header naming the sending node on internal requests.
pub const FROM_HEADER: &str = "x-causalkv-from";

pub struct HttpTransport {
    client: reqwest::Client,
    me: String,
    faults: Arc<Faults>,
    auth: Arc<Auth>,
}

impl HttpTransport {
    pub fn new(client: reqwest::Client, me: String, faults: Arc<Faults>, auth: Arc<Auth>) -> Self {
        Self { client, me, faults, auth }
    }

    async fn post<T: Serialize, R: DeserializeOwned>(&self, peer: &str, path: &str, body: &T, timeout: Duration) -> Result<R, GossipError> {
        let unreachable = |reason: String| GossipError::Unreachable { peer: peer.to_owned(), reason };
        if self.faults.is_blocked(peer) {
            return Err(unreachable("blocked by fault switch".into()));
        }
        let body = serde_json::to_vec(body).map_err(|e| unreachable(e.to_string()))?;
        let mut req = self
            .client
            .post(format!("{}://{peer}{path}", crate::tls::scheme()))
            .header(FROM_HEADER, &self.me)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(timeout);
        for (name, value) in self.auth.sign("POST", path, &self.me, &body) {
            req = req.header(name, value);
        }
        let resp = req.body(body).send().await.map_err(|e| unreachable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(GossipError::Rejected { peer: peer.to_owned(), status: resp.status().as_u16() });
        }
        resp.json().await.map_err(|e| unreachable(e.to_string()))
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

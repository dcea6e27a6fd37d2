//! `GET /kv-store/status` (this node, see `node::status`) and
//! `GET /kv-store/cluster-status` (every node of the view, gathered here,
//! for the CLI's `status` and the dashboard).
//!
//! The cluster status makes one request to every node of the view, so an
//! unauthenticated caller must not be able to multiply traffic with it: a
//! gathered answer is reused for [`CLUSTER_STATUS_TTL`], and callers that
//! arrive while one is being gathered wait for it instead of starting
//! another. A node that does not answer within [`NODE_STATUS_TIMEOUT`] is
//! reported as unreachable.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use tokio::time::Instant;

use super::AdminClient;
use super::reply::json_response;
use super::request::{FROM_HEADER, HOP_HEADER};
use crate::node::Node;
use crate::node::status::{ClusterStatus, NodeStatus};

/// How long a gathered cluster status is served again.
pub const CLUSTER_STATUS_TTL: Duration = Duration::from_millis(500);
/// How long one node's status may take.
pub const NODE_STATUS_TIMEOUT: Duration = Duration::from_millis(800);

/// A gathered answer, when it was gathered, and at which epoch of the node.
type Gathered = (Instant, u64, Arc<Vec<u8>>);

/// The last gathered cluster status, shared by the callers of the endpoint.
#[derive(Clone, Default)]
pub struct StatusCache(Arc<tokio::sync::Mutex<Option<Gathered>>>);

#[derive(Serialize)]
struct Answer<'a, T> {
    message: &'static str,
    #[serde(flatten)]
    body: &'a T,
    #[serde(rename = "causal-context")]
    causal_context: serde_json::Map<String, serde_json::Value>,
}

fn answer<T: Serialize>(message: &'static str, body: &T) -> Vec<u8> {
    let answer = Answer { message, body, causal_context: Default::default() };
    serde_json::to_vec(&answer).unwrap_or_else(|_| b"{}".to_vec())
}

pub async fn node_status(State(node): State<Arc<Node>>) -> Response {
    json_response(StatusCode::OK, answer("Status retrieved successfully", &node.status()))
}

pub async fn cluster_status(
    State(node): State<Arc<Node>>,
    Extension(AdminClient(client)): Extension<AdminClient>,
    Extension(cache): Extension<StatusCache>,
) -> Response {
    let mut slot = cache.0.lock().await;
    // Not across a view change: the answer would show the old view.
    if let Some((at, epoch, body)) = slot.as_ref()
        && at.elapsed() < CLUSTER_STATUS_TTL
        && *epoch == node.epoch()
    {
        return json_response(StatusCode::OK, body.to_vec());
    }
    let gathered = gather(&node, &client).await;
    let body = Arc::new(answer("Cluster status retrieved successfully", &gathered));
    *slot = Some((Instant::now(), gathered.epoch, body.clone()));
    drop(slot);
    json_response(StatusCode::OK, body.to_vec())
}

async fn gather(node: &Node, client: &reqwest::Client) -> ClusterStatus {
    let mine = node.status();
    let others = mine.view.iter().filter(|n| **n != mine.node).cloned().collect::<Vec<_>>();
    let answers = futures_util::future::join_all(others.into_iter().map(|peer| async move {
        let answer = fetch(node, client, &peer).await;
        (peer, answer)
    }))
    .await;
    ClusterStatus::gather(mine, answers)
}

async fn fetch(node: &Node, client: &reqwest::Client, peer: &str) -> Result<NodeStatus, String> {
    if node.faults.is_blocked(peer) {
        return Err("cut off (fault switch)".into());
    }
    let resp = client
        .get(format!("{}://{peer}/kv-store/status", crate::tls::scheme()))
        .header(HOP_HEADER, "1")
        .header(FROM_HEADER, node.me())
        .timeout(NODE_STATUS_TIMEOUT)
        .send()
        .await
        .map_err(|e| if e.is_timeout() { "no answer in time".to_owned() } else { "unreachable".to_owned() })?;
    if !resp.status().is_success() {
        return Err(format!("answered {}", resp.status()));
    }
    resp.json::<NodeStatus>().await.map_err(|e| format!("unreadable status: {e}"))
}

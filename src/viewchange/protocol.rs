//! The view-change protocol between nodes (DESIGN.md "View change"): the
//! message shapes and the coordinator. The node side of each step is in
//! `viewchange::participant`.
//!
//! All-or-nothing, in four steps driven by the node that received the
//! request (the coordinator), each sent to every node of the old view, the
//! new view and the coordinator itself:
//! 1. **prepare**: each node checks it is at the old epoch, pauses writes
//!    (queued, not refused) and waits for writes in flight to finish;
//! 2. **sync**: every replica of every old shard pulls from its shard peers
//!    until it holds the union of the shard (writes are paused, so the union
//!    is final);
//! 3. **transfer**: the first replica of each old shard streams every live
//!    record whose new owners include nodes that were not replicas of the
//!    old shard to those nodes, which stage them (not visible yet);
//! 4. **commit**: each node merges what it staged, drops keys it no longer
//!    owns, starts the new epoch, persists the view and resumes writes.
//!
//! Any failure before commit makes the coordinator send **abort**: staged
//! records are dropped, writes resume, the old view stays, nothing is lost.
//! A node that misses the commit learns the new epoch from heartbeats and
//! catches up from a peer (`viewchange::participant`). A node left paused by a
//! coordinator that died aborts by itself after [`PAUSE_LIMIT`].

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::gossip::{GossipError, Transport};
use crate::shard::View;
use crate::store::Record;

/// Time limit of prepare and abort at one node.
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time limit of bringing one shard to its union.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Time limit of one node's transfers.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);
/// Time limit of one commit.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Commit attempts per node before leaving it to catch up by itself.
pub const COMMIT_ATTEMPTS: u32 = 3;
/// A node paused longer than this without a commit aborts on its own.
pub const PAUSE_LIMIT: Duration = Duration::from_secs(150);
/// Records per staging batch.
pub const TRANSFER_BATCH: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Prepare,
    Sync,
    Transfer,
    Receive,
    Commit,
    Abort,
    Current,
}

/// A proposed change: `old` at its epoch to `new` (epoch `old.epoch + 1`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Proposal {
    pub change: String,
    pub old: View,
    pub new: View,
}

/// Staged records for a change.
#[derive(Debug, Serialize, Deserialize)]
pub struct Receive {
    pub change: String,
    pub records: Vec<Record>,
}

/// A node's answer to commit: its shard and live keys in the new view.
#[derive(Debug, Serialize, Deserialize)]
pub struct Committed {
    pub shard: Option<u32>,
    pub key_count: u64,
}

/// Why a view change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{step:?} failed at {node}: {source}")]
    Step { step: Step, node: String, source: GossipError },
}

/// Attempts per step before the change aborts: steps before commit are
/// idempotent (same change id), so a transient failure is retried.
const STEP_ATTEMPTS: u32 = 3;
/// Pause between attempts of a step.
const STEP_RETRY_PAUSE: Duration = Duration::from_millis(200);

async fn call(transport: &dyn Transport, node: &str, step: Step, body: &Value, timeout: Duration) -> Result<Value, ChangeError> {
    let mut attempt = 1;
    loop {
        match transport.view(node, step, body, timeout).await {
            Ok(v) => return Ok(v),
            Err(source) if attempt >= STEP_ATTEMPTS || matches!(step, Step::Commit | Step::Abort) => {
                return Err(ChangeError::Step { step, node: node.to_owned(), source });
            }
            Err(e) => {
                tracing::debug!(%node, ?step, attempt, error = %e, "view-change step failed; retrying");
                attempt += 1;
                tokio::time::sleep(STEP_RETRY_PAUSE).await;
            }
        }
    }
}

async fn everyone(
    transport: &dyn Transport,
    nodes: &[String],
    step: Step,
    body: &Value,
    timeout: Duration,
) -> Result<Vec<Value>, ChangeError> {
    let calls = nodes.iter().map(|n| call(transport, n, step, body, timeout));
    futures_util::future::join_all(calls).await.into_iter().collect()
}

/// Every node that takes part: old view, new view and the coordinator.
pub fn participants(p: &Proposal, coordinator: &str) -> Vec<String> {
    let mut nodes: Vec<String> = p.old.nodes.clone();
    for n in p.new.nodes.iter().chain(std::iter::once(&coordinator.to_owned())) {
        if !nodes.contains(n) {
            nodes.push(n.clone());
        }
    }
    nodes
}

/// Runs the protocol; on success returns every participant's commit answer.
pub async fn coordinate(transport: &dyn Transport, p: &Proposal, coordinator: &str) -> Result<Vec<(String, Committed)>, ChangeError> {
    let nodes = participants(p, coordinator);
    let body = serde_json::to_value(p).expect("a proposal serialises");
    let before_commit = async {
        everyone(transport, &nodes, Step::Prepare, &body, PREPARE_TIMEOUT).await?;
        everyone(transport, &p.old.nodes, Step::Sync, &body, SYNC_TIMEOUT).await?;
        everyone(transport, &p.old.nodes, Step::Transfer, &body, TRANSFER_TIMEOUT).await?;
        Ok::<(), ChangeError>(())
    };
    if let Err(e) = before_commit.await {
        tracing::warn!(change = %p.change, error = %e, "view change aborted");
        let _ = futures_util::future::join_all(nodes.iter().map(|n| call(transport, n, Step::Abort, &body, PREPARE_TIMEOUT))).await;
        return Err(e);
    }
    // Past this point the change is decided: commit everywhere, retrying.
    let commits = nodes.iter().map(|n| {
        let body = &body;
        async move {
            let mut last = None;
            for attempt in 0..COMMIT_ATTEMPTS {
                match call(transport, n, Step::Commit, body, COMMIT_TIMEOUT).await {
                    Ok(v) => return serde_json::from_value::<Committed>(v).ok().map(|c| (n.clone(), c)),
                    Err(e) => {
                        tracing::warn!(node = %n, attempt, error = %e, "commit not acknowledged; retrying");
                        last = Some(e);
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    }
                }
            }
            tracing::error!(node = %n, error = ?last, "commit never acknowledged: the node will catch up from its peers");
            None
        }
    });
    Ok(futures_util::future::join_all(commits).await.into_iter().flatten().collect())
}

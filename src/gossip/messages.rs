//! Gossip message shapes (JSON on every transport).

use serde::{Deserialize, Serialize};

use crate::causal::Clock;
use crate::shard::{View, ViewStamp};
use crate::store::Record;
use crate::viewchange::Step;

/// Records pushed by `from`, in seq order.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReplicateBatch {
    pub from: String,
    pub epoch: u64,
    pub records: Vec<Record>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReplicateAck {
    /// The receiver's applied clock after the batch.
    pub applied: Clock,
}

/// "Send me the records of these origins after these seqs." Also the
/// anti-entropy exchange: the answer carries the responder's applied clock.
#[derive(Debug, Serialize, Deserialize)]
pub struct PullRequest {
    pub from: String,
    pub epoch: u64,
    pub want: Vec<(String, u64)>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PullResponse {
    pub records: Vec<Record>,
    pub applied: Clock,
    /// Some wanted entries were compacted away: fetch a snapshot instead.
    #[serde(default)]
    pub snapshot_needed: bool,
}

/// One page of a shard snapshot, in key order after `after_key`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub from: String,
    pub epoch: u64,
    pub after_key: Option<String>,
    pub limit: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotPage {
    pub records: Vec<Record>,
    /// The responder's applied clock, read before the page.
    pub applied: Clock,
    pub done: bool,
}

/// A sign of life, and what the sender's view is (`view`: absent from nodes
/// older than view ids, which are then never taken for a conflict).
#[derive(Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    pub from: String,
    pub epoch: u64,
    #[serde(default)]
    pub view: Option<ViewStamp>,
    /// The sender's whole view, sent only to a peer known to run another
    /// view at the same epoch, so that peer's log can name both member lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_detail: Option<View>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HeartbeatAck {
    pub epoch: u64,
    #[serde(default)]
    pub view: Option<ViewStamp>,
    /// The responder's whole view, sent only when the heartbeat's view
    /// differs from it at the same epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_detail: Option<View>,
}

/// Every internal message kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    Replicate,
    Pull,
    Snapshot,
    Heartbeat,
    View(Step),
    /// Snapshot reads (`node::snapshot`): values with their deps, then the
    /// versions at a cut.
    ReadFirst,
    ReadSecond,
    /// Change feeds (`node::feed`): the writes after a clock.
    Feed,
}

impl Message {
    /// Every kind, for parsing.
    pub const ALL: [Message; 14] = [
        Message::Replicate,
        Message::Pull,
        Message::Snapshot,
        Message::Heartbeat,
        Message::View(Step::Prepare),
        Message::View(Step::Sync),
        Message::View(Step::Transfer),
        Message::View(Step::Receive),
        Message::View(Step::Commit),
        Message::View(Step::Abort),
        Message::View(Step::Current),
        Message::ReadFirst,
        Message::ReadSecond,
        Message::Feed,
    ];

    /// The kind a wire name names.
    pub fn from_name(name: &str) -> Option<Message> {
        Message::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The HTTP path of this kind.
    pub fn path(self) -> &'static str {
        match self {
            Message::Replicate => "/internal/replicate",
            Message::Pull => "/internal/pull",
            Message::Snapshot => "/internal/snapshot",
            Message::Heartbeat => "/internal/heartbeat",
            Message::View(Step::Prepare) => "/internal/view/prepare",
            Message::View(Step::Sync) => "/internal/view/sync",
            Message::View(Step::Transfer) => "/internal/view/transfer",
            Message::View(Step::Receive) => "/internal/view/receive",
            Message::View(Step::Commit) => "/internal/view/commit",
            Message::View(Step::Abort) => "/internal/view/abort",
            Message::View(Step::Current) => "/internal/view/current",
            Message::ReadFirst => "/internal/read/first",
            Message::ReadSecond => "/internal/read/second",
            Message::Feed => "/internal/feed",
        }
    }

    /// The name on the wire: the path without `/internal/` (Mycelium frames
    /// carry it).
    pub fn name(self) -> &'static str {
        &self.path()["/internal/".len()..]
    }

    /// Messages of the client path (view-change steps, snapshot reads,
    /// feeds), as opposed to gossip: over Mycelium they still go over HTTP.
    pub fn is_client_path(self) -> bool {
        matches!(self, Message::View(_) | Message::ReadFirst | Message::ReadSecond | Message::Feed)
    }
}

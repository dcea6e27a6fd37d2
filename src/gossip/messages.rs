//! Gossip message shapes (JSON on every transport).

use serde::{Deserialize, Serialize};

use crate::causal::Clock;
use crate::store::Record;

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

/// "Send me the records of these origins after these seqs."
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
}

//! The one receiving side of gossip for every transport: a message kind and
//! its JSON body from an authenticated sender go in, the JSON answer or a
//! refusal (status, reason) comes out. The HTTP endpoints and the Mycelium
//! receive loop both call [`Gossip::dispatch`], so they check the same
//! things in the same order:
//! - the sender the body names is the sender the transport authenticated
//!   (a signed request cannot speak for another node);
//! - replication comes only from replicas of this shard (nobody else may
//!   write its log). Pull and snapshot are answered to any member (the
//!   transport checked membership): a view-change sync between nodes that
//!   disagree on the view (two views at one epoch, being repaired) pulls
//!   from a node whose own view does not put the puller in its shard;
//! - the epoch matches (in each handler).

use serde_json::value::RawValue;

use super::{Gossip, GossipError, Heartbeat, Message, PullRequest, ReplicateBatch, SnapshotRequest};

/// An HTTP-like status and a reason.
pub type Refusal = (u16, String);

fn parse<'a, T: serde::Deserialize<'a>>(kind: &str, body: &'a [u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| (400, format!("bad {kind} body: {e}")))
}

fn same_sender(sender: &str, from: &str) -> Result<(), Refusal> {
    if sender == from { Ok(()) } else { Err((403, format!("a request from {sender} names {from:?} as its sender"))) }
}

/// The answer as JSON text that Mycelium embeds as it is and HTTP sends as
/// bytes (serialised once, never parsed again).
fn to_json<T: serde::Serialize>(v: &T) -> Result<Box<RawValue>, Refusal> {
    serde_json::value::to_raw_value(v).map_err(|e| (500, e.to_string()))
}

/// The status a gossip error is answered with.
pub fn refusal(e: GossipError) -> Refusal {
    match e {
        GossipError::WrongEpoch { .. } => (409, e.to_string()),
        GossipError::Refused(why) => (403, why),
        // Logged (rate-limited) and counted by the store's clock guard.
        GossipError::Store(crate::store::StoreError::ClockSkew(_)) => (422, e.to_string()),
        other => {
            tracing::error!(error = %other, "internal request failed");
            (500, "internal error".to_owned())
        }
    }
}

impl Gossip {
    fn check_replica(&self, from: &str) -> Result<(), Refusal> {
        if self.shard().iter().any(|r| r == from) { Ok(()) } else { Err((403, format!("{from} is not a replica of this node's shard"))) }
    }

    /// Handles one gossip message from `sender` (already authenticated by
    /// its transport).
    pub async fn dispatch(&self, sender: &str, kind: Message, body: &[u8]) -> Result<Box<RawValue>, Refusal> {
        let name = kind.name();
        match kind {
            Message::Replicate => {
                let batch: ReplicateBatch = parse(name, body)?;
                same_sender(sender, &batch.from)?;
                self.check_replica(&batch.from)?;
                to_json(&self.handle_replicate(batch).await.map_err(refusal)?)
            }
            Message::Pull => {
                let req: PullRequest = parse(name, body)?;
                same_sender(sender, &req.from)?;
                to_json(&self.handle_pull(&req).map_err(refusal)?)
            }
            Message::Snapshot => {
                let req: SnapshotRequest = parse(name, body)?;
                same_sender(sender, &req.from)?;
                to_json(&self.handle_snapshot(&req).map_err(refusal)?)
            }
            Message::Heartbeat => {
                let msg: Heartbeat = parse(name, body)?;
                same_sender(sender, &msg.from)?;
                to_json(&self.handle_heartbeat(&msg))
            }
            // View-change steps are the node's (`Node::dispatch`), not gossip's.
            Message::View(_) | Message::ReadFirst | Message::ReadSecond | Message::Feed => {
                Err((400, format!("{name} is not a gossip message")))
            }
        }
    }
}

//! The one receiving side of every internal message, for every transport:
//! a [`Message`] kind and its JSON body from an authenticated sender go in,
//! the JSON answer or a refusal (status, reason) comes out. The HTTP
//! endpoints (`api::internal`), the Mycelium receive loop and the
//! simulator's network all call [`Node::dispatch`].
//!
//! Checks, in order, the same for every transport: gossip messages go to
//! the current epoch's `Gossip::dispatch` (sender named in the body = the
//! authenticated sender, replication only from shard replicas, epoch);
//! view-change steps pass the test fault switches, parse, and a prepare
//! from a non-member of this node's view is accepted (without a key) only
//! when the proposal's old view names the sender.

use serde_json::value::RawValue;

use super::Node;
use crate::gossip::Message;
use crate::gossip::dispatch::Refusal;
use crate::store::StoreError;
use crate::viewchange::participant::ChangeFail;
use crate::viewchange::{Proposal, Receive, Step};

fn to_json<T: serde::Serialize>(v: &T) -> Result<Box<RawValue>, Refusal> {
    serde_json::value::to_raw_value(v).map_err(|e| (500, e.to_string()))
}

fn parse<'a, T: serde::Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|_| (400, format!("bad {what}")))
}

fn change_result<T: serde::Serialize>(result: Result<T, ChangeFail>) -> Result<Box<RawValue>, Refusal> {
    match result {
        Ok(v) => to_json(&v),
        Err(e) => {
            tracing::warn!(error = %e, "view-change step refused");
            let status = match e {
                ChangeFail::Store(StoreError::ClockSkew(_)) => 422,
                ChangeFail::Gossip(_) | ChangeFail::Store(_) => 503,
                _ => 409,
            };
            Err((status, e.to_string()))
        }
    }
}

impl Node {
    /// While a change is prepared here, a heartbeat from a node only the
    /// proposed view contains counts as news of its epoch (the epoch's
    /// gossip listens to members of the current view only). Such a node
    /// runs the new view when the change committed there but its commit
    /// never reached this node (the coordinator died mid-commit): this node
    /// then commits too, instead of waiting out the pause and aborting.
    fn note_epoch_of_proposed_member(&self, sender: &str, body: &[u8]) {
        if !self.change.is_paused() || self.current().map.view.nodes.iter().any(|n| n == sender) {
            return;
        }
        if self.change.proposed_nodes().iter().any(|n| n == sender)
            && let Ok(hb) = serde_json::from_slice::<crate::gossip::Heartbeat>(body)
        {
            self.epoch_hint.saw(hb.epoch, sender);
        }
    }

    /// Handles one internal message from `sender`, already authenticated
    /// by its transport (and, without a key, checked to be a member except
    /// for heartbeats and prepares).
    pub async fn dispatch(&self, sender: &str, kind: Message, body: &[u8]) -> Result<Box<RawValue>, Refusal> {
        if self.faults.is_blocked(sender) {
            return Err((503, "blocked".into()));
        }
        let step = match kind {
            Message::View(step) => step,
            Message::ReadFirst => return to_json(&self.read_first(parse(body, "read")?).await?),
            Message::ReadSecond => return to_json(&self.read_second(parse(body, "read")?).await?),
            Message::Feed => return to_json(&self.feed(parse(body, "feed request")?).await?),
            gossip => {
                if gossip == Message::Heartbeat {
                    self.note_epoch_of_proposed_member(sender, body);
                }
                return self.current().gossip.dispatch(sender, gossip, body).await;
            }
        };
        if step != Step::Abort && step != Step::Current {
            let name = kind.name().trim_start_matches("view/");
            let (refused, delay) = self.faults.view_step(name);
            if delay > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            }
            if refused {
                return Err((503, "refused by fault switch".into()));
            }
        }
        let empty = serde_json::json!({});
        match step {
            Step::Prepare => {
                let p: Proposal = parse(body, "proposal")?;
                // Without a key, only a member of this node's view or of the
                // view the proposal starts from (a coordinator adding this
                // node) may prepare.
                if !self.auth.has_key() && !self.is_member(sender) && !p.old.nodes.iter().any(|n| n == sender) {
                    return Err((403, format!("{sender} is not a member of the view")));
                }
                change_result(self.view_prepare(p).await.map(|_| &empty))
            }
            Step::Sync => {
                let p: Proposal = parse(body, "proposal")?;
                change_result(self.view_sync(&p.change).await.map(|_| &empty))
            }
            Step::Transfer => {
                let p: Proposal = parse(body, "proposal")?;
                change_result(self.view_transfer(&p.change).await.map(|sent| serde_json::json!({"sent": sent})))
            }
            Step::Receive => {
                let r: Receive = parse(body, "records")?;
                change_result(self.view_receive(r).map(|_| &empty))
            }
            Step::Commit => {
                let p: Proposal = parse(body, "proposal")?;
                change_result(self.view_commit(p).await)
            }
            Step::Abort => {
                let p: Proposal = parse(body, "proposal")?;
                self.view_abort(&p.change);
                to_json(&empty)
            }
            Step::Current => to_json(&self.current().map.view),
        }
    }
}

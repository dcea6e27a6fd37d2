//! Two views at one epoch: the peers this node met whose view differs from
//! its own at the same epoch (in a heartbeat they sent, or in the answer to
//! one of ours), kept per peer.
//!
//! Such a pair means two clusters share one epoch number, typically because
//! a data folder holds another cluster's view (a node first run alone, then
//! started as part of a cluster on the same folder). Routing by either view
//! acknowledges writes the other side never finds, so while a conflict is
//! known the node refuses key requests (`api::key_requests`) and says why: `/health`,
//! an error log (at most every [`LOG_EVERY`] per peer) and a metric.
//!
//! Invariants: only a different view at the *same* epoch is a conflict (a
//! peer at a higher epoch is a missed view change, caught up by
//! `viewchange::participant`); a conflict concerns the view of ours it was seen
//! under, so it stops counting once ours changes (a view change committed);
//! it clears when the peer reports an agreeing view or another epoch, or when
//! the peer has been silent for [`FORGET_AFTER`].

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::shard::{View, ViewStamp};

/// A conflicting peer silent for this long no longer counts (it was stopped
/// or restarted with a fresh data folder).
pub const FORGET_AFTER: Duration = Duration::from_secs(10);
/// The error log of one conflict repeats at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(30);

/// One peer running another view at this node's epoch.
#[derive(Clone, Debug)]
pub struct Conflict {
    /// This node.
    pub me: String,
    pub peer: String,
    /// This node's view when the conflict was seen.
    pub ours: View,
    pub ours_id: String,
    pub theirs_id: String,
    /// The peer's whole view, once it sent it (it does after it learns of
    /// the conflict too).
    pub theirs: Option<View>,
}

impl Conflict {
    /// Which side most likely holds the stray view, when the views say so.
    fn suspect(&self) -> Option<String> {
        if !self.ours.nodes.contains(&self.peer) {
            return Some(format!("this node's view does not name {}: this node most likely holds another cluster's view", self.peer));
        }
        match &self.theirs {
            Some(theirs) if !theirs.nodes.contains(&self.me) => {
                Some(format!("{}'s view does not name this node: {} most likely holds another cluster's view", self.peer, self.peer))
            }
            _ => None,
        }
    }

    /// For `/health`.
    pub fn to_json(&self) -> Value {
        let view = |id: &str, v: Option<&View>| match v {
            Some(v) => json!({"id": id, "view": v.nodes, "repl-factor": v.repl_factor}),
            None => json!({"id": id}),
        };
        json!({
            "peer": self.peer,
            "epoch": self.ours.epoch,
            "ours": view(&self.ours_id, Some(&self.ours)),
            "theirs": view(&self.theirs_id, self.theirs.as_ref()),
            "message": self.to_string(),
        })
    }
}

/// The answer key requests get (and the log's first line).
impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ours = &self.ours;
        write!(
            f,
            "Two views at one epoch: this node ({}) runs view {} at epoch {} ({} nodes, repl-factor {}) but {} runs view {} at the same epoch",
            self.me,
            self.ours_id,
            ours.epoch,
            ours.nodes.len(),
            ours.repl_factor,
            self.peer,
            self.theirs_id
        )?;
        if let Some(theirs) = &self.theirs {
            write!(f, " ({} nodes, repl-factor {})", theirs.nodes.len(), theirs.repl_factor)?;
        }
        write!(
            f,
            "; key requests are refused until the views agree. A data folder holds another cluster's view: stop the node \
             with the wrong view and start it with a fresh data folder, or run a view change"
        )
    }
}

struct Entry {
    conflict: Conflict,
    last_seen: Instant,
    /// When it was last logged, and whether that log named their members.
    logged: Option<(Instant, bool)>,
}

/// The conflicts one node knows of (shared by every epoch's gossip).
pub struct ViewConflicts {
    me: String,
    entries: Mutex<HashMap<String, Entry>>,
    /// False while there is no entry: key requests skip the lock.
    any: AtomicBool,
}

impl ViewConflicts {
    pub fn new(me: &str) -> Self {
        Self { me: me.to_owned(), entries: Mutex::new(HashMap::new()), any: AtomicBool::new(false) }
    }

    /// Notes that `peer` runs the view `theirs` at the epoch of `ours` (the
    /// caller checked that the epochs match and the ids differ). `detail`
    /// counts only if it is the view `theirs` names. Returns true when this
    /// starts a conflict with that peer (for the metric).
    pub fn record(&self, peer: &str, ours: &View, ours_id: &str, theirs: &ViewStamp, detail: Option<&View>) -> bool {
        let detail = detail.filter(|d| d.id() == theirs.id).cloned();
        let now = Instant::now();
        let (started, log) = {
            let mut entries = self.entries.lock();
            let fresh = |detail| Conflict {
                me: self.me.clone(),
                peer: peer.to_owned(),
                ours: ours.clone(),
                ours_id: ours_id.to_owned(),
                theirs_id: theirs.id.clone(),
                theirs: detail,
            };
            let started = match entries.get_mut(peer) {
                Some(e) if e.conflict.ours_id == ours_id && e.conflict.theirs_id == theirs.id && e.last_seen.elapsed() < FORGET_AFTER => {
                    e.last_seen = now;
                    if detail.is_some() {
                        e.conflict.theirs = detail;
                    }
                    false
                }
                _ => {
                    entries.insert(peer.to_owned(), Entry { conflict: fresh(detail), last_seen: now, logged: None });
                    true
                }
            };
            self.any.store(true, Ordering::Release);
            let entry = entries.get_mut(peer).expect("just inserted or updated");
            let named = entry.conflict.theirs.is_some();
            let due = match entry.logged {
                None => true,
                Some((at, had_members)) => at.elapsed() >= LOG_EVERY || (named && !had_members),
            };
            if due {
                entry.logged = Some((now, named));
            }
            (started, due.then(|| entry.conflict.clone()))
        };
        if let Some(c) = log {
            log_conflict(&c);
        }
        started
    }

    /// True while no conflict at all is recorded (one atomic load: every key
    /// request asks).
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Acquire)
    }

    /// `peer` reported an agreeing view, or another epoch.
    pub fn clear(&self, peer: &str) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut entries = self.entries.lock();
        if entries.remove(peer).is_some() {
            tracing::warn!(%peer, "view conflict over: the peer now reports a view that does not conflict with ours");
        }
        self.any.store(!entries.is_empty(), Ordering::Release);
    }

    /// Whether this node, at the view `ours_id`, is in conflict with `peer`.
    pub fn with(&self, peer: &str, ours_id: &str) -> bool {
        self.any.load(Ordering::Acquire)
            && self.entries.lock().get(peer).is_some_and(|e| e.conflict.ours_id == ours_id && e.last_seen.elapsed() < FORGET_AFTER)
    }

    /// The conflicts that count for this node's view `ours_id`, by peer.
    /// Forgets the stale ones.
    pub fn active(&self, ours_id: &str) -> Vec<Conflict> {
        if !self.any.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut entries = self.entries.lock();
        entries.retain(|_, e| e.last_seen.elapsed() < FORGET_AFTER);
        self.any.store(!entries.is_empty(), Ordering::Release);
        let mut found: Vec<Conflict> = entries.values().filter(|e| e.conflict.ours_id == ours_id).map(|e| e.conflict.clone()).collect();
        found.sort_by(|a, b| a.peer.cmp(&b.peer));
        found
    }
}

fn log_conflict(c: &Conflict) {
    let theirs_nodes = c.theirs.as_ref().map(|t| format!("{:?}", t.nodes)).unwrap_or_else(|| "(not yet known)".into());
    let theirs_rf = c.theirs.as_ref().map(|t| t.repl_factor.to_string()).unwrap_or_else(|| "?".into());
    tracing::error!(
        peer = %c.peer,
        epoch = c.ours.epoch,
        ours = ?c.ours.nodes,
        ours_repl_factor = c.ours.repl_factor,
        theirs = %theirs_nodes,
        theirs_repl_factor = %theirs_rf,
        hint = %c.suspect().unwrap_or_default(),
        "{c}: stop that node and start it with an empty data folder (`causalkv cluster --fresh` for a local cluster), \
         or run a view change (PUT /kv-store/view-change) to the view both should have"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(nodes: &str, rf: usize) -> View {
        View::parse(nodes, rf, 0).unwrap()
    }

    #[test]
    fn a_conflict_counts_for_the_view_it_was_seen_under_until_cleared() {
        let ours = view("127.0.0.1:1", 1);
        let theirs = view("127.0.0.1:1,127.0.0.1:2", 1);
        let c = ViewConflicts::new("127.0.0.1:1");
        assert!(c.active(&ours.id()).is_empty());
        assert!(c.record("127.0.0.1:2", &ours, &ours.id(), &theirs.stamp(), None), "a new conflict");
        assert!(!c.record("127.0.0.1:2", &ours, &ours.id(), &theirs.stamp(), Some(&theirs)), "the same one again");
        let found = c.active(&ours.id());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].theirs.as_ref(), Some(&theirs), "the detail was kept");
        let text = found[0].to_string();
        assert!(text.contains("Two views at one epoch") && text.contains("127.0.0.1:2") && text.contains("fresh data folder"), "{text}");
        assert!(found[0].suspect().is_some_and(|s| s.contains("this node most likely")), "our view lacks the peer");
        assert!(c.with("127.0.0.1:2", &ours.id()));
        // After a view change of ours the old conflict no longer counts.
        let changed = View { epoch: 1, ..theirs.clone() };
        assert!(c.active(&changed.id()).is_empty());
        assert!(!c.with("127.0.0.1:2", &changed.id()));
        c.clear("127.0.0.1:2");
        assert!(c.active(&ours.id()).is_empty());
    }

    #[test]
    fn a_detail_that_is_not_the_stamped_view_is_ignored() {
        let ours = view("127.0.0.1:1", 1);
        let theirs = view("127.0.0.1:1,127.0.0.1:2", 1);
        let c = ViewConflicts::new("127.0.0.1:1");
        c.record("127.0.0.1:2", &ours, &ours.id(), &theirs.stamp(), Some(&ours));
        assert!(c.active(&ours.id())[0].theirs.is_none());
    }

    #[test]
    fn a_silent_peer_is_forgotten() {
        let ours = view("127.0.0.1:1", 1);
        let theirs = view("127.0.0.1:1,127.0.0.1:2", 1);
        let c = ViewConflicts::new("127.0.0.1:1");
        c.record("127.0.0.1:2", &ours, &ours.id(), &theirs.stamp(), None);
        if let Some(e) = c.entries.lock().get_mut("127.0.0.1:2") {
            e.last_seen = Instant::now() - FORGET_AFTER;
        }
        assert!(c.active(&ours.id()).is_empty());
        assert!(!c.any.load(Ordering::Acquire));
        assert!(c.record("127.0.0.1:2", &ours, &ours.id(), &theirs.stamp(), None), "seen again: a new conflict");
    }
}

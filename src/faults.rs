//! Fault switches for tests, active only when the node runs with
//! `CAUSALKV_FAULTS=1` (otherwise every check is a no-op and the
//! `/internal/faults` endpoint answers 404).
//!
//! - `blocked`: peers this node cannot talk to at all (a simulated partition):
//!   outbound internal and forwarded requests fail at once as unreachable,
//!   inbound ones from them are refused.
//! - `paused_replication`: peers this node does not push its writes to (a
//!   lagging replica); pulls and forwarding still work.
//! - `refuse_view_steps`, `view_step_delay_ms`: make view-change steps fail
//!   or take long at this node (to test aborts).
//! - [`Bug`]s: deliberate protocol defects the simulator switches on to show
//!   its checker catches them. Only code can set them (no endpoint does),
//!   and only on a node whose fault switches are enabled.

use std::collections::BTreeSet;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSet {
    pub blocked: BTreeSet<String>,
    pub paused_replication: BTreeSet<String>,
    /// View-change steps (`prepare`, `sync`, `transfer`, `receive`,
    /// `commit`) this node refuses.
    pub refuse_view_steps: BTreeSet<String>,
    /// Delay before this node handles any view-change step.
    pub view_step_delay_ms: u64,
}

/// A deliberate defect (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Reads and writes skip the hold-back gate: a replica answers before it
    /// has the writes the client's context depends on.
    SkipHoldBack,
    /// Snapshot reads stop after their first round (the cut may not be closed).
    SnapshotOneRound,
    /// Change feeds send a write without waiting for its dependencies in other shards.
    FeedIgnoresDeps,
}

#[derive(Debug, Default)]
pub struct Faults {
    enabled: bool,
    set: RwLock<FaultSet>,
    bugs: RwLock<Vec<Bug>>,
}

impl Faults {
    pub fn new(enabled: bool) -> Self {
        Self { enabled, set: RwLock::new(FaultSet::default()), bugs: RwLock::new(Vec::new()) }
    }

    /// Switches a deliberate defect on (fault switches must be enabled).
    pub fn inject_bug(&self, bug: Bug) {
        if self.enabled {
            self.bugs.write().push(bug);
        }
    }

    pub fn has_bug(&self, bug: Bug) -> bool {
        self.enabled && self.bugs.read().contains(&bug)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn replace(&self, set: FaultSet) {
        if self.enabled {
            *self.set.write() = set;
        }
    }

    pub fn current(&self) -> FaultSet {
        self.set.read().clone()
    }

    pub fn is_blocked(&self, peer: &str) -> bool {
        self.enabled && self.set.read().blocked.contains(peer)
    }

    /// `(refuse, delay)` for a view-change step.
    pub fn view_step(&self, step: &str) -> (bool, u64) {
        if !self.enabled {
            return (false, 0);
        }
        let set = self.set.read();
        (set.refuse_view_steps.contains(step), set.view_step_delay_ms)
    }

    pub fn replication_paused(&self, peer: &str) -> bool {
        self.enabled && {
            let set = self.set.read();
            set.paused_replication.contains(peer) || set.blocked.contains(peer)
        }
    }
}

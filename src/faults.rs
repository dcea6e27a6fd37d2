//! Fault switches for tests, active only when the node runs with
//! `CAUSALKV_FAULTS=1` (otherwise every check is a no-op and the
//! `/internal/faults` endpoint answers 404).
//!
//! - `blocked`: peers this node cannot talk to at all (a simulated partition):
//!   outbound internal and forwarded requests fail at once as unreachable,
//!   inbound ones from them are refused.
//! - `paused_replication`: peers this node does not push its writes to (a
//!   lagging replica); pulls and forwarding still work.

use std::collections::BTreeSet;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSet {
    pub blocked: BTreeSet<String>,
    pub paused_replication: BTreeSet<String>,
}

#[derive(Debug, Default)]
pub struct Faults {
    enabled: bool,
    set: RwLock<FaultSet>,
}

impl Faults {
    pub fn new(enabled: bool) -> Self {
        Self { enabled, set: RwLock::new(FaultSet::default()) }
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

    pub fn replication_paused(&self, peer: &str) -> bool {
        self.enabled && {
            let set = self.set.read();
            set.paused_replication.contains(peer) || set.blocked.contains(peer)
        }
    }
}

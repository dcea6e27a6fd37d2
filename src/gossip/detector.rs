//! Failure detector: a peer is alive while it answered a heartbeat (or any
//! internal request) within [`SUSPECT_AFTER`]; it is trusted again as soon as
//! it answers again. Pure bookkeeping; the heartbeat loop lives in `mod.rs`.

use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

/// A peer silent for this long is suspected (DESIGN.md: suspect after 1 s).
pub const SUSPECT_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct FailureDetector {
    me: String,
    started: Instant,
    last_heard: DashMap<String, Instant>,
}

impl FailureDetector {
    pub fn new(me: &str) -> Self {
        Self { me: me.to_owned(), started: Instant::now(), last_heard: DashMap::new() }
    }

    pub fn heard_from(&self, peer: &str) {
        self.last_heard.insert(peer.to_owned(), Instant::now());
    }

    /// True unless `peer` has been silent for [`SUSPECT_AFTER`]. During the
    /// first [`SUSPECT_AFTER`] after start-up every peer counts as alive.
    pub fn is_alive(&self, peer: &str) -> bool {
        if peer == self.me || self.started.elapsed() < SUSPECT_AFTER {
            return true;
        }
        self.last_heard.get(peer).is_some_and(|t| t.elapsed() < SUSPECT_AFTER)
    }

    /// `nodes` reordered: alive ones first (order kept), suspected ones last.
    pub fn alive_first<'a>(&self, nodes: impl IntoIterator<Item = &'a String>) -> Vec<&'a String> {
        let (mut alive, suspected): (Vec<&String>, Vec<&String>) = nodes.into_iter().partition(|n| self.is_alive(n));
        alive.extend(suspected);
        alive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_peer_is_suspected_and_trusted_again_when_heard() {
        let fd = FailureDetector { me: "me".into(), started: Instant::now() - SUSPECT_AFTER * 2, last_heard: DashMap::new() };
        assert!(fd.is_alive("me"));
        assert!(!fd.is_alive("p"), "never heard");
        fd.heard_from("p");
        assert!(fd.is_alive("p"));
        fd.last_heard.insert("p".into(), Instant::now() - SUSPECT_AFTER);
        assert!(!fd.is_alive("p"));
        fd.heard_from("p");
        assert!(fd.is_alive("p"));
        let nodes = vec!["q".to_string(), "p".to_string()];
        assert_eq!(fd.alive_first(&nodes), vec!["p", "q"]);
    }

    #[test]
    fn everyone_is_alive_right_after_start() {
        let fd = FailureDetector::new("me");
        assert!(fd.is_alive("anyone"));
    }
}

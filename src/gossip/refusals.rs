//! Peers that refuse this node's internal traffic (wrong key, not a member,
//! wrong receiver, an answer that fails its signature). Such a peer is alive
//! but useless: replication to it silently stops. It must be loud, so every
//! refusal is counted per peer (`causalkv_peer_refusals_total`), logged at
//! error level (once per peer every `LOG_EVERY`) and shown by `/health`
//! while it lasts (until the peer accepts a request again or
//! `SHOWN_FOR` passes without a refusal).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::metrics::{Metrics, PeerLabel};

/// A refused peer is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// A peer stays listed this long after its last refusal.
const SHOWN_FOR: Duration = Duration::from_secs(30);
/// Peers remembered at most (only view members are ever recorded).
const MAX_PEERS: usize = 4096;

struct Refusal {
    why: String,
    last: Instant,
    logged: Option<Instant>,
}

#[derive(Default)]
pub struct PeerRefusals {
    peers: Mutex<HashMap<String, Refusal>>,
}

impl PeerRefusals {
    /// `peer` refused a request (or answered with a bad signature).
    pub fn refused(&self, metrics: &Metrics, peer: &str, why: String) {
        metrics.peer_refusals.get_or_create(&PeerLabel { peer: peer.to_owned() }).inc();
        let mut peers = self.peers.lock();
        if peers.len() >= MAX_PEERS && !peers.contains_key(peer) {
            return;
        }
        let now = Instant::now();
        let entry = peers.entry(peer.to_owned()).or_insert(Refusal { why: String::new(), last: now, logged: None });
        entry.last = now;
        if entry.logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) || entry.why != why {
            tracing::error!(
                %peer, reason = %why,
                "a peer refuses this node's internal requests: nothing is replicated to it. Check that every node has the same \
                 CLUSTER_KEY, that VIEW names this node as the peer knows it, and the peer's own log"
            );
            entry.logged = Some(now);
        }
        entry.why = why;
    }

    /// `peer` accepted a request: it is not failing any more.
    pub fn accepted(&self, peer: &str) {
        let mut peers = self.peers.lock();
        if !peers.is_empty() {
            peers.remove(peer);
        }
    }

    /// Peers refusing now, with the last reason, sorted by name.
    pub fn failing(&self) -> Vec<(String, String)> {
        let mut peers = self.peers.lock();
        peers.retain(|_, r| r.last.elapsed() < SHOWN_FOR);
        let mut out: Vec<_> = peers.iter().map(|(p, r)| (p.clone(), r.why.clone())).collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusing_peer_is_listed_until_it_accepts_again() {
        let metrics = Metrics::default();
        let r = PeerRefusals::default();
        assert!(r.failing().is_empty());
        r.refused(&metrics, "b:1", "answered 401".into());
        r.refused(&metrics, "b:1", "answered 401".into());
        assert_eq!(r.failing(), vec![("b:1".to_string(), "answered 401".to_string())]);
        assert!(metrics.render().contains("causalkv_peer_refusals_total{peer=\"b:1\"} 2"), "{}", metrics.render());
        r.accepted("b:1");
        assert!(r.failing().is_empty());
    }
}

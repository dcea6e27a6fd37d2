//! Which log entries and tombstones can go, from the applied clocks of every
//! replica of the shard (pure; the loop in `mod.rs` feeds it).
//!
//! - Log entries up to `stable[o] = min over replicas of applied[o]` are
//!   applied everywhere: nobody needs them for catch-up any more.
//! - A tombstone is purged only when every replica has applied it **and**
//!   every write that could be concurrent with it. Two rounds do this: at
//!   round k-1 every replica p had applied the tombstone, and had made at most
//!   `own[p]` writes of its own, so every write concurrent with the tombstone
//!   has a seq `<= own[p]`. At round k, once `stable >= own_{k-1}`, every
//!   replica has decided LWW between them, and tombstones `<= stable_{k-1}`
//!   can be purged; a later write to the key causally follows the tombstone
//!   (a larger HLC), so the key does not come back wrongly.

use std::collections::HashMap;

use crate::causal::Clock;

#[derive(Debug, Default)]
pub struct Compactor {
    previous: Option<(Clock, Clock)>,
}

/// What one round allows.
#[derive(Debug, PartialEq, Eq)]
pub struct Round {
    pub stable: Clock,
    pub purgeable: Clock,
}

impl Compactor {
    /// `clocks`: the latest applied clock of every replica (this node's
    /// included). Returns `None` while some replica's clock is unknown.
    pub fn round(&mut self, replicas: &[String], clocks: &HashMap<String, Clock>) -> Option<Round> {
        let mut stable = Clock::new();
        let mut own = Clock::new();
        for origin in replicas {
            let mut min = u64::MAX;
            for p in replicas {
                min = min.min(clocks.get(p)?.get(origin));
            }
            stable.set(origin, min);
            own.set(origin, clocks.get(origin)?.get(origin));
        }
        let purgeable = match &self.previous {
            Some((prev_stable, prev_own)) if stable.dominates(prev_own) => prev_stable.clone(),
            _ => Clock::new(),
        };
        self.previous = Some((stable.clone(), own));
        Some(Round { stable, purgeable })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(e: &[(&str, u64)]) -> Clock {
        e.iter().map(|(o, s)| (o.to_string(), *s)).collect()
    }

    #[test]
    fn stable_is_the_per_origin_minimum_and_purging_waits_a_round() {
        let replicas = vec!["a".to_string(), "b".to_string()];
        let mut c = Compactor::default();
        let mut clocks = HashMap::new();
        clocks.insert("a".to_string(), clock(&[("a", 10), ("b", 3)]));
        assert_eq!(c.round(&replicas, &clocks), None, "b's clock unknown");
        clocks.insert("b".to_string(), clock(&[("a", 7), ("b", 5)]));
        let r1 = c.round(&replicas, &clocks).unwrap();
        assert_eq!(r1.stable, clock(&[("a", 7), ("b", 3)]));
        assert!(r1.purgeable.is_empty(), "the first round never purges");
        // Nothing new applied: stable (7,3) does not cover own (10,5).
        assert!(c.round(&replicas, &clocks).unwrap().purgeable.is_empty());
        clocks.insert("a".to_string(), clock(&[("a", 10), ("b", 5)]));
        clocks.insert("b".to_string(), clock(&[("a", 10), ("b", 5)]));
        let r3 = c.round(&replicas, &clocks).unwrap();
        assert_eq!(r3.purgeable, clock(&[("a", 7), ("b", 3)]), "stable of the previous round, now that its own writes are everywhere");
        let r4 = c.round(&replicas, &clocks).unwrap();
        assert_eq!(r4.purgeable, clock(&[("a", 10), ("b", 5)]));
    }
}

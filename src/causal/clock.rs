//! Vector clocks keyed by origin address.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `origin -> highest seq`. Missing origins count as 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Clock(BTreeMap<String, u64>);

impl Clock {
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry for `origin`, 0 when absent.
    pub fn get(&self, origin: &str) -> u64 {
        self.0.get(origin).copied().unwrap_or(0)
    }

    /// Raises the entry for `origin` to `seq` if it is lower.
    pub fn observe(&mut self, origin: &str, seq: u64) {
        if seq == 0 {
            return;
        }
        match self.0.get_mut(origin) {
            Some(current) => *current = (*current).max(seq),
            None => {
                self.0.insert(origin.to_owned(), seq);
            }
        }
    }

    /// Sets the entry for `origin` exactly (used for `applied` clocks).
    pub fn set(&mut self, origin: &str, seq: u64) {
        self.0.insert(origin.to_owned(), seq);
    }

    /// Per-origin maximum of `self` and `other`.
    pub fn merge(&mut self, other: &Clock) {
        for (origin, seq) in &other.0 {
            self.observe(origin, *seq);
        }
    }

    /// True when every entry of `other` is `<=` the matching entry of `self`.
    pub fn dominates(&self, other: &Clock) -> bool {
        other.0.iter().all(|(o, s)| self.get(o) >= *s)
    }

    /// True when `self` covers `needed` for the given origins only.
    pub fn covers_for<'a>(&self, needed: &Clock, origins: impl IntoIterator<Item = &'a str>) -> bool {
        origins.into_iter().all(|o| self.get(o) >= needed.get(o))
    }

    /// Origins (among `origins`) for which `self` is behind `needed`, with the
    /// seq `self` has applied.
    pub fn missing_for<'a>(&self, needed: &Clock, origins: impl IntoIterator<Item = &'a str>) -> Vec<(String, u64)> {
        origins.into_iter().filter(|o| self.get(o) < needed.get(o)).map(|o| (o.to_owned(), self.get(o))).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(o, s)| (o.as_str(), *s))
    }

    /// The clock of `map` without its zero entries (as `observe` of each).
    pub(crate) fn from_map(mut map: BTreeMap<String, u64>) -> Self {
        map.retain(|_, s| *s > 0);
        Clock(map)
    }
}

impl FromIterator<(String, u64)> for Clock {
    fn from_iter<I: IntoIterator<Item = (String, u64)>>(iter: I) -> Self {
        let mut clock = Clock::new();
        for (o, s) in iter {
            clock.observe(&o, s);
        }
        clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(entries: &[(&str, u64)]) -> Clock {
        entries.iter().map(|(o, s)| (o.to_string(), *s)).collect()
    }

    #[test]
    fn merge_takes_per_origin_maximum() {
        let mut a = clock(&[("a", 3), ("b", 1)]);
        a.merge(&clock(&[("b", 4), ("c", 2)]));
        assert_eq!(a, clock(&[("a", 3), ("b", 4), ("c", 2)]));
    }

    #[test]
    fn merge_never_lowers_an_entry() {
        let mut a = clock(&[("a", 5)]);
        a.merge(&clock(&[("a", 2)]));
        assert_eq!(a.get("a"), 5);
    }

    #[test]
    fn zero_entries_are_not_stored() {
        let a = clock(&[("a", 0)]);
        assert!(a.is_empty());
    }

    #[test]
    fn dominates_compares_every_entry() {
        let big = clock(&[("a", 3), ("b", 2)]);
        assert!(big.dominates(&clock(&[("a", 3)])));
        assert!(big.dominates(&Clock::new()));
        assert!(!big.dominates(&clock(&[("a", 4)])));
        assert!(!big.dominates(&clock(&[("c", 1)])));
        // concurrent clocks dominate neither way
        let x = clock(&[("a", 1), ("b", 2)]);
        let y = clock(&[("a", 2), ("b", 1)]);
        assert!(!x.dominates(&y) && !y.dominates(&x));
    }

    #[test]
    fn covers_for_ignores_other_origins() {
        let applied = clock(&[("a", 3)]);
        let needed = clock(&[("a", 3), ("z", 9)]);
        assert!(applied.covers_for(&needed, ["a", "b"]));
        assert!(!applied.covers_for(&needed, ["a", "z"]));
        assert_eq!(applied.missing_for(&needed, ["a", "z"]), vec![("z".to_string(), 0)]);
    }
}

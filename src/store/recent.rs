//! The writes this replica applied most recently, in the order it applied
//! them (local writes and remote records alike, LWW winners or not): the
//! history that snapshot reads (`node::snapshot`) and change feeds
//! (`node::feed`) read.
//!
//! Invariants kept here:
//! - Entries are pushed under the store's state lock, right where the write
//!   is applied, so their order is the apply order — a causal order of the
//!   shard's writes (a record is applied only after its deps on the shard).
//! - The ring is bounded ([`MAX_ENTRIES`], [`MAX_BYTES`]); what it drops is
//!   remembered per origin (`dropped`), so a reader asking for writes after a
//!   clock learns when some of them are no longer here ([`HistoryGone`])
//!   instead of silently missing them. A snapshot install breaks the order:
//!   the ring is emptied and everything applied counts as dropped. An epoch
//!   change does not: a feed can still read the end of the old epoch.
//! - Nothing here touches the disk: the ring is lost on restart (and then
//!   starts with everything applied counted as dropped).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use super::Record;
use crate::causal::Clock;

/// Writes kept, at most.
pub const MAX_ENTRIES: usize = 100_000;
/// Bytes of keys and values kept, at most.
pub const MAX_BYTES: usize = 64 * 1024 * 1024;

/// Some writes after the asked clock are no longer in the history.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the writes asked for are no longer in this replica's history")]
pub struct HistoryGone;

#[derive(Default)]
struct Ring {
    entries: VecDeque<Arc<Record>>,
    /// Position (count of pushes since start) of `entries[0]`.
    first: u64,
    bytes: usize,
    /// Per epoch and origin: the highest seq no longer in the ring.
    dropped: BTreeMap<u64, Clock>,
    /// Epochs before this one were never in the ring (it started in this one).
    first_epoch: u64,
}

#[derive(Default)]
pub struct RecentWrites {
    ring: Mutex<Ring>,
}

/// What [`RecentWrites::after`] found.
#[derive(Debug, Default)]
pub struct Found {
    /// Matching records not covered by the asked clock, in apply order.
    pub records: Vec<Arc<Record>>,
    /// The position after the last entry looked at: ask again from there.
    pub next: u64,
    /// Every entry up to `next` was looked at (false when `limit` stopped it).
    pub complete: bool,
}

fn size_of(r: &Record) -> usize {
    r.key.len() + r.value.as_ref().map_or(0, |v| v.get().len()) + 64
}

impl RecentWrites {
    /// Remembers an applied record (call under the store's state lock).
    pub fn push(&self, record: Arc<Record>) {
        let mut ring = self.ring.lock();
        ring.bytes += size_of(&record);
        ring.entries.push_back(record);
        while ring.entries.len() > MAX_ENTRIES || ring.bytes > MAX_BYTES {
            let Some(old) = ring.entries.pop_front() else { break };
            ring.first += 1;
            ring.bytes -= size_of(&old);
            ring.dropped.entry(old.dot.epoch).or_default().observe(&old.dot.origin, old.dot.seq);
        }
    }

    /// At start-up: the history begins in `epoch`, after `applied`, at
    /// position `first` — the wall clock in ns, so that positions keep
    /// growing across restarts and a position from before one (a feed's
    /// hint) is below every position of the new history, never inside it.
    pub fn start(&self, epoch: u64, applied: &Clock, first: u64) {
        self.reset(epoch, applied);
        let mut ring = self.ring.lock();
        ring.first_epoch = epoch;
        ring.first = first;
    }

    /// Forgets everything: writes of `epoch` up to `applied` count as dropped.
    pub fn reset(&self, epoch: u64, applied: &Clock) {
        let mut ring = self.ring.lock();
        ring.first += ring.entries.len() as u64;
        // Entries of other epochs (kept for feeds) go too: say so.
        for old in std::mem::take(&mut ring.entries) {
            ring.dropped.entry(old.dot.epoch).or_default().observe(&old.dot.origin, old.dot.seq);
        }
        ring.bytes = 0;
        ring.dropped.entry(epoch).or_default().merge(applied);
    }

    /// The position the next pushed entry gets.
    pub fn position(&self) -> u64 {
        let ring = self.ring.lock();
        ring.first + ring.entries.len() as u64
    }

    /// Records of `epoch` with a dot not covered by `after` for which
    /// `wanted` holds, in apply order, from position `from` on (a position an
    /// earlier call returned, or 0), at most `limit`. Fails when the ring
    /// dropped a write `after` does not cover (it would be missing).
    pub fn after(
        &self,
        after: &Clock,
        epoch: u64,
        from: u64,
        limit: usize,
        wanted: impl Fn(&Record) -> bool,
    ) -> Result<Found, HistoryGone> {
        let ring = self.ring.lock();
        if epoch < ring.first_epoch {
            return Err(HistoryGone);
        }
        if ring.dropped.get(&epoch).is_some_and(|d| d.iter().any(|(origin, seq)| seq > after.get(origin))) {
            return Err(HistoryGone);
        }
        // A position past the end is not one of this history's (a clock
        // that went back across a restart): look at everything.
        let end = ring.first + ring.entries.len() as u64;
        let start = if from > end { 0 } else { from.saturating_sub(ring.first) as usize };
        let mut found = Found { records: Vec::new(), next: ring.first + start as u64, complete: true };
        for entry in ring.entries.iter().skip(start) {
            if found.records.len() >= limit {
                found.complete = false;
                break;
            }
            found.next += 1;
            if entry.dot.epoch == epoch && entry.dot.seq > after.get(&entry.dot.origin) && wanted(entry) {
                found.records.push(entry.clone());
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Dot;

    fn rec(origin: &str, seq: u64, key: &str) -> Record {
        Record {
            key: key.into(),
            value: Some(serde_json::value::RawValue::from_string(format!("{seq}")).unwrap()),
            dot: Dot { epoch: 0, origin: origin.into(), seq },
            deps: Clock::new(),
            hlc: seq,
        }
    }

    fn clock(entries: &[(&str, u64)]) -> Clock {
        entries.iter().map(|(o, s)| (o.to_string(), *s)).collect()
    }

    #[test]
    fn finds_what_a_clock_does_not_cover_in_apply_order() {
        let r = RecentWrites::default();
        r.push(Arc::new(rec("a", 1, "x")));
        r.push(Arc::new(rec("b", 1, "y")));
        r.push(Arc::new(rec("a", 2, "x")));
        let found = r.after(&clock(&[("a", 1)]), 0, 0, 10, |_| true).unwrap();
        let dots: Vec<(String, u64)> = found.records.iter().map(|r| (r.dot.origin.clone(), r.dot.seq)).collect();
        assert_eq!(dots, vec![("b".into(), 1), ("a".into(), 2)]);
        assert_eq!(found.next, 3);
        let only_y = r.after(&Clock::new(), 0, 0, 10, |r| r.key == "y").unwrap();
        assert_eq!(only_y.records.len(), 1);
        // From a position: only what came after it.
        r.push(Arc::new(rec("b", 2, "y")));
        let more = r.after(&clock(&[("a", 1)]), 0, found.next, 10, |_| true).unwrap();
        assert_eq!(more.records.len(), 1);
        assert_eq!(more.records[0].dot.seq, 2);
        // A limit stops early, and says so.
        let limited = r.after(&Clock::new(), 0, 0, 2, |_| true).unwrap();
        assert_eq!((limited.records.len(), limited.complete, limited.next), (2, false, 2));
        // Another epoch's records are not returned.
        assert!(r.after(&Clock::new(), 1, 0, 10, |_| true).unwrap().records.is_empty());
    }

    #[test]
    fn a_dropped_write_the_clock_does_not_cover_is_reported() {
        let r = RecentWrites::default();
        for seq in 1..=(MAX_ENTRIES as u64 + 5) {
            r.push(Arc::new(rec("a", seq, "k")));
        }
        assert_eq!(r.after(&clock(&[("a", 2)]), 0, 0, 10, |_| true).unwrap_err(), HistoryGone);
        let found = r.after(&clock(&[("a", MAX_ENTRIES as u64)]), 0, 0, 100, |_| true).unwrap();
        assert_eq!(found.records.len(), 5);
        r.reset(0, &clock(&[("a", MAX_ENTRIES as u64 + 5), ("b", 3)]));
        assert!(r.after(&Clock::new(), 1, 0, 10, |_| true).is_ok(), "another epoch lost nothing");
        assert!(r.after(&clock(&[("a", MAX_ENTRIES as u64 + 5)]), 0, 0, 10, |_| true).is_err(), "b's writes are gone");
        assert!(r.after(&clock(&[("a", MAX_ENTRIES as u64 + 5), ("b", 3)]), 0, 0, 10, |_| true).unwrap().records.is_empty());
    }
}

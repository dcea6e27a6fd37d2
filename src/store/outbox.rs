//! This node's own most recent writes, in seq order and in the encoding its
//! log stores them: what the replication stream sends (`gossip::stream`),
//! served from memory so that shipping a write costs no read of the engine
//! (a sled range scan clones a whole tree node per call; reading the log
//! was the largest cost of replication at the master).
//!
//! Invariants kept here:
//! - Entries are pushed under the store's state lock right after the write
//!   was applied and logged, so they are exactly the log's entries of this
//!   origin, in seq order, without gaps; a push that does not follow the
//!   last seq (after an epoch change reset the counter) starts over.
//! - Bounded ([`MAX_ENTRIES`], [`MAX_BYTES`]): the oldest go first; a read
//!   the outbox cannot answer completely from its first asked seq on is
//!   refused (`None`) and the caller reads the log instead.
//! - Nothing here is durable or authoritative: emptied on restart and at
//!   every epoch change.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

/// Entries kept, at most.
pub const MAX_ENTRIES: usize = 65_536;
/// Bytes of entries kept, at most.
pub const MAX_BYTES: usize = 32 * 1024 * 1024;

/// One write as its log entry stores it.
pub type RawRecord = Arc<[u8]>;

#[derive(Default)]
struct Inner {
    /// Seq of `entries[0]`.
    first: u64,
    entries: VecDeque<RawRecord>,
    bytes: usize,
}

#[derive(Default)]
pub struct Outbox {
    inner: Mutex<Inner>,
}

impl Outbox {
    /// Remembers the write `seq` (call under the store's state lock).
    pub fn push(&self, seq: u64, record: RawRecord) {
        let mut o = self.inner.lock();
        if o.entries.is_empty() || seq != o.first + o.entries.len() as u64 {
            o.entries.clear();
            o.bytes = 0;
            o.first = seq;
        }
        o.bytes += record.len();
        o.entries.push_back(record);
        while o.entries.len() > MAX_ENTRIES || o.bytes > MAX_BYTES {
            let Some(old) = o.entries.pop_front() else { break };
            o.bytes -= old.len();
            o.first += 1;
        }
    }

    /// Forgets everything (epoch change).
    pub fn clear(&self) {
        let mut o = self.inner.lock();
        o.entries.clear();
        o.bytes = 0;
    }

    /// The writes after `after` up to `up_to`, at most `limit` and about
    /// `max_bytes` (at least one); `None` when the outbox no longer (or
    /// not yet) holds the write right after `after`.
    pub fn read(&self, after: u64, up_to: u64, limit: usize, max_bytes: usize) -> Option<Vec<(u64, RawRecord)>> {
        let o = self.inner.lock();
        let next = after.checked_add(1)?;
        let end = o.first + o.entries.len() as u64;
        if next < o.first || next > end || o.entries.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut seq = next;
        while seq <= up_to && seq < end && out.len() < limit {
            let record = &o.entries[(seq - o.first) as usize];
            bytes += record.len();
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push((seq, record.clone()));
            seq += 1;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> RawRecord {
        Arc::from(seq.to_le_bytes().as_slice())
    }

    fn seqs(v: Option<Vec<(u64, RawRecord)>>) -> Option<Vec<u64>> {
        v.map(|v| v.into_iter().map(|(s, _)| s).collect())
    }

    #[test]
    fn reads_what_it_holds_and_refuses_what_it_does_not() {
        let o = Outbox::default();
        assert_eq!(seqs(o.read(0, 10, 100, usize::MAX)), None, "empty");
        for seq in 5..=9 {
            o.push(seq, rec(seq));
        }
        assert_eq!(seqs(o.read(4, 100, 100, usize::MAX)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(seqs(o.read(6, 8, 100, usize::MAX)), Some(vec![7, 8]), "up to");
        assert_eq!(seqs(o.read(4, 100, 2, usize::MAX)), Some(vec![5, 6]), "limit");
        assert_eq!(seqs(o.read(4, 100, 100, 8)), Some(vec![5]), "at least one whatever the bytes");
        assert_eq!(seqs(o.read(9, 100, 100, usize::MAX)), Some(vec![]), "caught up");
        assert_eq!(seqs(o.read(3, 100, 100, usize::MAX)), None, "seq 4 is not here: read the log");
        assert_eq!(seqs(o.read(10, 100, 100, usize::MAX)), None, "past the end");
    }

    #[test]
    fn a_gap_starts_over_and_the_oldest_go_first() {
        let o = Outbox::default();
        o.push(1, rec(1));
        o.push(2, rec(2));
        // The counter restarted (epoch change): the old entries go.
        o.push(1, rec(1));
        assert_eq!(seqs(o.read(0, 10, 100, usize::MAX)), Some(vec![1]));
        for seq in 2..=(MAX_ENTRIES as u64 + 10) {
            o.push(seq, rec(seq));
        }
        assert_eq!(seqs(o.read(0, 10, 100, usize::MAX)), None, "the oldest were dropped");
        assert_eq!(seqs(o.read(10, 12, 100, usize::MAX)), Some(vec![11, 12]));
        o.clear();
        assert_eq!(seqs(o.read(10, 12, 100, usize::MAX)), None);
    }
}

//! The clock guard: remote records whose HLC is more than `MAX_CLOCK_SKEW_MS`
//! ahead of this node's wall clock are refused, never applied (issue 11,
//! hole 5: one forged `hlc = u64::MAX` used to win every later
//! last-writer-wins comparison and split replicas for good).
//!
//! Invariants kept here:
//! - A record is refused when `physical_ms(hlc) > now_ms + limit`, with
//!   `now_ms` read from the store's injected `WallClock` (`time.rs`; the
//!   simulator's virtual clock, never `SystemTime` here), checked
//!   when it arrives (a legitimate record from a peer whose clock runs ahead
//!   is accepted once real time has caught up with it: its sender retries).
//! - Every refusal is counted (the `clock_skew_rejected` metric) and logged
//!   at warn, at most once per [`WARN_EVERY`] with the count of the refusals
//!   not logged since, so a retrying sender is loud but cannot flood the log
//!   (measured in tokio time, so paused time in the simulator drives it).
//!
//! What the store does with a message holding such a record (`state.rs`):
//! log records (replication, pull answers) are cut per origin at the first
//! refused seq, because a later seq of that origin could not be applied
//! without leaving a gap; records of other origins still apply. Snapshot
//! pages and view-change transfers are refused whole: they install a state
//! (an applied clock, a new epoch) that would claim the refused record.

use std::time::Duration;

use tokio::time::Instant;

use prometheus_client::metrics::counter::Counter;

use super::Record;
use crate::causal::hlc::physical_ms;

/// Default `MAX_CLOCK_SKEW_MS`: far above NTP-synchronised clock offsets,
/// far below what could push the HLC near its end.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Longest silence of the warning while records keep being refused.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why a message (or part of it) was refused: its first record too far ahead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "record {origin}/{seq} (key {key:?}) has an HLC {ahead_ms} ms ahead of this node's clock, more than MAX_CLOCK_SKEW_MS ({limit_ms} ms); {refused} record(s) refused"
)]
pub struct ClockSkew {
    pub origin: String,
    pub seq: u64,
    pub key: String,
    pub ahead_ms: u64,
    pub limit_ms: u64,
    /// Records of the message refused along with it (itself included).
    pub refused: usize,
}

/// What [`ClockGuard::screen`] found in a message.
#[derive(Debug)]
pub(super) struct Screened {
    pub first: ClockSkew,
    /// Per origin, the lowest seq of a refused record.
    pub lowest_refused_seq: Vec<(String, u64)>,
}

pub(super) struct ClockGuard {
    limit_ms: u64,
    refused: Counter,
    last_warn: Option<Instant>,
    /// Refusals since the last warning.
    unlogged: u64,
}

impl Default for ClockGuard {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CLOCK_SKEW, Counter::default())
    }
}

impl ClockGuard {
    pub(super) fn new(limit: Duration, refused: Counter) -> Self {
        Self { limit_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX), refused, last_warn: None, unlogged: 0 }
    }

    /// How far (ms) `hlc` is ahead of `now_ms`, when that is beyond the limit.
    fn too_far_ahead(&self, hlc: u64, now_ms: u64) -> Option<u64> {
        let ahead = physical_ms(hlc).saturating_sub(now_ms);
        (ahead > self.limit_ms).then_some(ahead)
    }

    /// The records of `records` beyond the limit, if any (nothing is
    /// counted yet: see [`ClockGuard::refuse`]): the first one, and per
    /// origin the lowest refused seq. One comparison per record against
    /// `now_ms`, the store's wall clock read once for all.
    pub(super) fn screen(&self, records: &[Record], now_ms: u64) -> Option<Screened> {
        let mut found: Option<Screened> = None;
        for r in records {
            let Some(ahead_ms) = self.too_far_ahead(r.hlc, now_ms) else { continue };
            let screened = found.get_or_insert_with(|| Screened {
                first: ClockSkew {
                    origin: r.dot.origin.clone(),
                    seq: r.dot.seq,
                    key: r.key.clone(),
                    ahead_ms,
                    limit_ms: self.limit_ms,
                    refused: 1,
                },
                lowest_refused_seq: Vec::new(),
            });
            match screened.lowest_refused_seq.iter_mut().find(|(o, _)| *o == r.dot.origin) {
                Some((_, seq)) => *seq = (*seq).min(r.dot.seq),
                None => screened.lowest_refused_seq.push((r.dot.origin.clone(), r.dot.seq)),
            }
        }
        found
    }

    /// Counts and (rate-limited) logs a refusal.
    pub(super) fn refuse(&mut self, skew: &ClockSkew) {
        self.refused.inc_by(skew.refused as u64);
        self.unlogged += skew.refused as u64;
        if self.last_warn.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        tracing::warn!(
            origin = %skew.origin, seq = skew.seq, key = %skew.key, ahead_ms = skew.ahead_ms, limit_ms = skew.limit_ms,
            refused_since_last_warning = self.unlogged,
            "refused remote records from the future (forged, or the origin's clock runs ahead: check its NTP)"
        );
        self.last_warn = Some(Instant::now());
        self.unlogged = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal::Clock;
    use crate::store::Dot;
    use crate::time::{SystemClock, WallClock};

    fn rec(origin: &str, seq: u64, hlc: u64) -> Record {
        Record { key: format!("k{seq}"), value: None, dot: Dot { epoch: 0, origin: origin.into(), seq }, deps: Clock::new(), hlc }
    }

    fn hlc_at(ms: u64) -> u64 {
        ms << 16
    }

    #[test]
    fn only_records_beyond_the_limit_are_flagged() {
        let counter = Counter::default();
        let mut guard = ClockGuard::new(Duration::from_secs(60), counter.clone());
        let now = SystemClock.now_ms();
        let fine = [rec("a", 1, 0), rec("a", 2, hlc_at(now)), rec("a", 3, hlc_at(now + 50_000)), rec("b", 1, hlc_at(now - 1_000_000))];
        assert!(guard.screen(&fine, now).is_none());

        let mixed = [rec("a", 1, hlc_at(now)), rec("a", 3, u64::MAX), rec("a", 2, hlc_at(now + 120_000)), rec("b", 7, hlc_at(now))];
        let Screened { first: skew, lowest_refused_seq } = guard.screen(&mixed, now).unwrap();
        assert_eq!((skew.origin.as_str(), skew.seq, skew.limit_ms), ("a", 3, 60_000));
        assert!(skew.ahead_ms > 1 << 40, "{skew}");
        assert_eq!(lowest_refused_seq, vec![("a".to_string(), 2)]);

        guard.refuse(&ClockSkew { refused: 2, ..skew.clone() });
        guard.refuse(&skew);
        assert_eq!(counter.get(), 3, "every refused record is counted, logged or not");
    }
}

//! Hybrid logical clock: `(physical ms << 16) | logical`, packed in a u64 so
//! it compares as one integer.
//!
//! Invariant: every timestamp [`Hlc::tick`] hands out is strictly larger
//! than every timestamp this clock produced or observed. The arithmetic
//! never wraps: a clock that has observed `u64::MAX` refuses to tick
//! instead of starting again from the wall clock, because a wrapped value
//! would lose every last-writer-wins comparison and split replicas for good.
//! Remote timestamps far in the future are kept out by the store's clock
//! guard, so in practice the clock never gets near its end.
//!
//! The physical part comes from the caller (`tick(now_ms)`): the store
//! passes its injected [`WallClock`](crate::time::WallClock), so the
//! simulator's virtual clocks drive it; nothing here reads the host's clock.

/// A node's HLC. Not thread-safe by itself; the store keeps it under its lock.
#[derive(Debug, Default, Clone, Copy)]
pub struct Hlc {
    last: u64,
}

const LOGICAL_BITS: u32 = 16;

/// The clock has observed the largest timestamp there is: no later one exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the hybrid logical clock is at its largest value and cannot advance (a record from the far future was accepted)")]
pub struct HlcExhausted;

/// The wall-clock part (ms since the Unix epoch) of an HLC timestamp.
pub fn physical_ms(hlc: u64) -> u64 {
    hlc >> LOGICAL_BITS
}

fn physical(now_ms: u64) -> u64 {
    // Saturates instead of shifting bits out (only a clock set ~8 900 years
    // ahead would get there).
    now_ms.saturating_mul(1 << LOGICAL_BITS)
}

impl Hlc {
    /// A timestamp for a new local event at wall-clock time `now_ms` (ms
    /// since the Unix epoch): larger than every timestamp this clock has
    /// produced or observed; an error once no such value exists. A wall
    /// clock that steps back only slows the physical part, never the order.
    pub fn tick(&mut self, now_ms: u64) -> Result<u64, HlcExhausted> {
        let next = self.last.checked_add(1).ok_or(HlcExhausted)?;
        self.last = physical(now_ms).max(next);
        Ok(self.last)
    }

    /// Records a timestamp seen on a remote record.
    pub fn observe(&mut self, remote: u64) {
        self.last = self.last.max(remote);
    }

    pub fn last(&self) -> u64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{SystemClock, WallClock};

    fn now_ms() -> u64 {
        SystemClock.now_ms()
    }

    #[test]
    fn ticks_are_strictly_increasing() {
        let mut hlc = Hlc::default();
        let mut prev = 0;
        for i in 0..10_000 {
            // The wall clock jumps back and forth: the order never does.
            let t = hlc.tick(now_ms() + (i % 7) * 1000 - 3000).unwrap();
            assert!(t > prev);
            prev = t;
        }
    }

    #[test]
    fn the_physical_part_follows_the_given_clock() {
        let mut hlc = Hlc::default();
        assert_eq!(physical_ms(hlc.tick(5_000).unwrap()), 5_000);
        assert_eq!(hlc.tick(7_000).unwrap(), 7_000 << LOGICAL_BITS);
        assert_eq!(hlc.tick(6_000).unwrap(), (7_000 << LOGICAL_BITS) + 1, "a clock stepped back only adds logical ticks");
    }

    #[test]
    fn tick_after_observing_a_future_timestamp_exceeds_it() {
        let mut hlc = Hlc::default();
        let future = physical(now_ms()) + (60_000 << LOGICAL_BITS);
        hlc.observe(future);
        assert!(hlc.tick(now_ms()).unwrap() > future);
    }

    #[test]
    fn the_clock_never_wraps() {
        let mut hlc = Hlc::default();
        hlc.observe(u64::MAX - 1);
        assert_eq!(hlc.tick(now_ms()), Ok(u64::MAX), "the last value is still handed out");
        assert_eq!(hlc.tick(now_ms()), Err(HlcExhausted), "then it refuses instead of wrapping to the wall clock");
        hlc.observe(5);
        assert_eq!(hlc.last(), u64::MAX, "observing never lowers it");
        assert_eq!(hlc.tick(now_ms()), Err(HlcExhausted));

        let mut fresh = Hlc::default();
        fresh.observe(u64::MAX);
        assert_eq!(fresh.tick(now_ms()), Err(HlcExhausted));
    }

    #[test]
    fn physical_part_is_the_wall_clock_in_ms() {
        let mut hlc = Hlc::default();
        let before = now_ms();
        let t = hlc.tick(now_ms()).unwrap();
        assert!((before..=now_ms()).contains(&physical_ms(t)));
        assert_eq!(physical_ms(u64::MAX), u64::MAX >> LOGICAL_BITS);
    }
}

//! Hybrid logical clock: `(physical ms << 16) | logical`, packed in a u64 so
//! it compares as one integer.

use std::time::{SystemTime, UNIX_EPOCH};

/// A node's HLC. Not thread-safe by itself; the store keeps it under its lock.
#[derive(Debug, Default, Clone, Copy)]
pub struct Hlc {
    last: u64,
}

const LOGICAL_BITS: u32 = 16;

fn physical_now() -> u64 {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    ms << LOGICAL_BITS
}

impl Hlc {
    /// A timestamp for a new local event: larger than every timestamp this
    /// clock has produced or observed.
    pub fn tick(&mut self) -> u64 {
        self.last = physical_now().max(self.last + 1);
        self.last
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

    #[test]
    fn ticks_are_strictly_increasing() {
        let mut hlc = Hlc::default();
        let mut prev = 0;
        for _ in 0..10_000 {
            let t = hlc.tick();
            assert!(t > prev);
            prev = t;
        }
    }

    #[test]
    fn tick_after_observing_a_future_timestamp_exceeds_it() {
        let mut hlc = Hlc::default();
        let future = physical_now() + (60_000 << LOGICAL_BITS);
        hlc.observe(future);
        assert!(hlc.tick() > future);
    }
}

//! Time as the node sees it, injected so the simulator can control it.
//!
//! Two clocks, two sources:
//! - **Wall clock** ([`WallClock`]): milliseconds since the Unix epoch, used
//!   where a time must mean the same across hosts — the HLC's physical part,
//!   the clock guard's skew bound, forwarding deadlines, request MAC
//!   timestamps, visibility ages. Production uses [`SystemClock`]; the
//!   simulator gives every node its own virtual clock with its own skew.
//! - **Monotonic time**: always `tokio::time::Instant` / `tokio::time::sleep`
//!   (never `std::time::Instant` in protocol code), so a runtime with paused
//!   time — the simulator's — drives every timeout, retry, failure-detector
//!   window and hold-back deadline deterministically.
//!
//! Invariant: nothing in the protocol reads `SystemTime::now()` directly; it
//! asks the [`WallClock`] it was given.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait WallClock: Send + Sync + std::fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The host's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// The host's clock, shared.
pub fn system() -> Arc<dyn WallClock> {
    Arc::new(SystemClock)
}

/// A wall clock that follows the runtime's monotonic clock from a fixed
/// start, shifted by a skew: under paused tokio time it is fully
/// deterministic. Used by the simulator (one per node, each with its skew).
#[derive(Debug)]
pub struct VirtualClock {
    base_ms: u64,
    origin: tokio::time::Instant,
    skew_ms: std::sync::atomic::AtomicI64,
}

impl VirtualClock {
    /// A clock reading `base_ms + skew_ms` now, and advancing with tokio time.
    pub fn new(base_ms: u64, skew_ms: i64) -> Self {
        Self { base_ms, origin: tokio::time::Instant::now(), skew_ms: std::sync::atomic::AtomicI64::new(skew_ms) }
    }

    /// Moves this clock by `delta_ms` (a clock step, as NTP may make).
    pub fn step(&self, delta_ms: i64) {
        self.skew_ms.fetch_add(delta_ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl WallClock for VirtualClock {
    fn now_ms(&self) -> u64 {
        let elapsed = self.origin.elapsed().as_millis() as u64;
        let skew = self.skew_ms.load(std::sync::atomic::Ordering::Relaxed);
        (self.base_ms + elapsed).saturating_add_signed(skew)
    }
}

//! The sender's side of one replication stream, without I/O: which of this
//! node's records to send next, how many batches may be unacknowledged, and
//! what an acknowledgement means.
//!
//! Invariants kept here:
//! - At most `max_batches` batches are in flight; no records are sent
//!   before the peer's first acknowledgement says where it stands (the
//!   stream starts with an empty probe batch).
//! - What the peer acknowledged only grows the knowledge of what it has:
//!   its applied seq of this origin is taken as it reports it (lower after
//!   it lost data, higher after it got records from anti-entropy), and
//!   sending resumes right after it.
//! - A batch acknowledged with less than it carried applied (the peer could
//!   not apply it yet: dependencies on other origins, a full pending queue)
//!   rewinds the stream to what the peer has: everything after it is sent
//!   again after a pause, and duplicates are harmless (a replica skips seqs
//!   it applied). Acks of batches sent before a rewind still count for
//!   what they report.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    batch: u64,
    /// Highest seq the batch carried (None: a probe, which carries none).
    up_to: Option<u64>,
    sent_at: Instant,
}

/// What an acknowledgement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The peer has everything up to the acknowledged batch.
    Progress,
    /// The peer applied less than the batch carried: the stream rewound.
    Stalled,
    /// An ack for a batch not in flight (sent before a rewind, or a
    /// duplicate): only its applied seq was taken.
    Stale,
}

#[derive(Debug)]
pub struct Window {
    max_batches: usize,
    /// The peer's applied seq of this origin, from its latest ack.
    acked: Option<u64>,
    /// Highest seq sent on this stream (sending resumes after it).
    sent: u64,
    in_flight: VecDeque<InFlight>,
    next_batch: u64,
}

impl Window {
    pub fn new(max_batches: usize) -> Self {
        Self { max_batches: max_batches.max(1), acked: None, sent: 0, in_flight: VecDeque::new(), next_batch: 0 }
    }

    /// The peer's applied seq of this origin, once it said.
    pub fn acked(&self) -> Option<u64> {
        self.acked
    }

    /// Records after this seq go next.
    pub fn next_after(&self) -> u64 {
        self.sent
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_full(&self) -> bool {
        self.in_flight.len() >= self.max_batches
    }

    /// Whether records may be sent now: the peer said where it stands and
    /// the window has room.
    pub fn can_send(&self) -> bool {
        self.acked.is_some() && !self.is_full()
    }

    /// When the oldest unacknowledged batch was sent.
    pub fn oldest_sent_at(&self) -> Option<Instant> {
        self.in_flight.front().map(|f| f.sent_at)
    }

    /// Records a batch carrying records up to seq `up_to` (None: a probe)
    /// as sent; returns its number.
    pub fn sent(&mut self, up_to: Option<u64>, now: Instant) -> u64 {
        let batch = self.next_batch;
        self.next_batch += 1;
        if let Some(up_to) = up_to {
            self.sent = self.sent.max(up_to);
        }
        self.in_flight.push_back(InFlight { batch, up_to, sent_at: now });
        batch
    }

    /// The peer acknowledged `batch`, having applied this origin's records
    /// up to `peer_has`.
    pub fn on_ack(&mut self, batch: u64, peer_has: u64) -> AckOutcome {
        let first_ack = self.acked.is_none();
        if first_ack || peer_has < self.acked.unwrap_or(0) {
            // Where the peer stands (first word, or it lost data): resume
            // right after it.
            self.sent = peer_has;
        }
        self.acked = Some(peer_has);
        self.sent = self.sent.max(peer_has);
        let mut carried = None;
        while let Some(front) = self.in_flight.front() {
            if front.batch > batch {
                break;
            }
            if front.batch == batch {
                carried = Some(front.up_to);
            }
            self.in_flight.pop_front();
        }
        match carried {
            None => AckOutcome::Stale,
            Some(Some(up_to)) if !first_ack && peer_has < up_to => {
                self.rewind();
                AckOutcome::Stalled
            }
            Some(_) => AckOutcome::Progress,
        }
    }

    /// Forgets what is in flight and resumes after what the peer has.
    pub fn rewind(&mut self) {
        self.in_flight.clear();
        self.sent = self.acked.unwrap_or(0);
    }

    /// Whether the oldest unacknowledged batch waited longer than `limit`.
    pub fn overdue(&self, now: Instant, limit: Duration) -> bool {
        self.oldest_sent_at().is_some_and(|t| now.saturating_duration_since(t) > limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(max: usize, peer_has: u64) -> Window {
        let mut w = Window::new(max);
        let now = Instant::now();
        assert!(!w.can_send(), "nothing but a probe before the peer says where it stands");
        let probe = w.sent(None, now);
        assert_eq!(w.on_ack(probe, peer_has), AckOutcome::Progress);
        assert_eq!(w.next_after(), peer_has);
        w
    }

    #[test]
    fn a_full_window_sends_nothing_until_an_ack() {
        let mut w = opened(3, 10);
        let now = Instant::now();
        let b1 = w.sent(Some(20), now);
        let _b2 = w.sent(Some(30), now);
        let b3 = w.sent(Some(40), now);
        assert!(!w.can_send(), "three batches in flight fill a window of three");
        assert!(w.is_full());
        assert_eq!(w.next_after(), 40);
        assert!(w.overdue(now + Duration::from_secs(4), Duration::from_secs(3)));
        assert_eq!(w.on_ack(b1, 20), AckOutcome::Progress);
        assert!(w.can_send(), "an ack makes room");
        assert_eq!(w.in_flight(), 2);
        // One cumulative ack covers the rest.
        assert_eq!(w.on_ack(b3, 40), AckOutcome::Progress);
        assert_eq!(w.in_flight(), 0);
        assert_eq!(w.acked(), Some(40));
    }

    #[test]
    fn a_batch_the_peer_could_not_apply_rewinds_and_later_acks_are_stale() {
        let mut w = opened(4, 0);
        let now = Instant::now();
        let b1 = w.sent(Some(10), now);
        let b2 = w.sent(Some(20), now);
        // The peer applied only 5 of the first batch (deps missing).
        assert_eq!(w.on_ack(b1, 5), AckOutcome::Stalled);
        assert_eq!(w.next_after(), 5, "sending resumes after what the peer has");
        assert_eq!(w.in_flight(), 0);
        // The ack of the batch sent before the rewind still tells what it has.
        assert_eq!(w.on_ack(b2, 20), AckOutcome::Stale);
        assert_eq!(w.acked(), Some(20));
        assert_eq!(w.next_after(), 20, "nothing the peer has is sent again");
    }

    #[test]
    fn duplicate_and_reordered_acks_change_nothing_they_should_not() {
        let mut w = opened(4, 0);
        let now = Instant::now();
        let b1 = w.sent(Some(10), now);
        let b2 = w.sent(Some(20), now);
        assert_eq!(w.on_ack(b2, 20), AckOutcome::Progress);
        // An older ack arriving late (reordered: not on one TCP stream, but
        // the window does not rely on it). A lower report is the peer's
        // latest word, taken as data loss: sending resumes after it, and
        // what it has again is skipped by the peer.
        assert_eq!(w.on_ack(b1, 10), AckOutcome::Stale);
        assert_eq!(w.acked(), Some(10));
        assert_eq!(w.next_after(), 10);
        // A duplicate ack: nothing in flight changes, its report is taken.
        assert_eq!(w.on_ack(b2, 20), AckOutcome::Stale);
        assert_eq!(w.acked(), Some(20));
        assert_eq!(w.next_after(), 20);
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn a_peer_that_got_records_elsewhere_is_not_sent_them_again() {
        let mut w = opened(4, 0);
        let now = Instant::now();
        let b1 = w.sent(Some(10), now);
        // Anti-entropy brought it to 50 meanwhile.
        assert_eq!(w.on_ack(b1, 50), AckOutcome::Progress);
        assert_eq!(w.next_after(), 50);
    }

    #[test]
    fn a_peer_that_lost_its_data_is_sent_everything_again() {
        let mut w = opened(4, 100);
        let now = Instant::now();
        let probe = w.sent(None, now);
        assert_eq!(w.on_ack(probe, 0), AckOutcome::Progress);
        assert_eq!(w.next_after(), 0);
    }
}

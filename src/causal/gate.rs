//! The hold-back gate: lets a request wait, without polling, until a
//! condition on the applied state holds or a deadline passes.
//!
//! Every apply calls [`Gate::notify`]; waiters re-check their condition on
//! each notification. The condition is checked once before waiting, so a
//! notification between the check and the wait is never lost (`watch` keeps
//! the version).

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Debug)]
pub struct Gate {
    version: watch::Sender<u64>,
}

impl Default for Gate {
    fn default() -> Self {
        Self { version: watch::Sender::new(0) }
    }
}

impl Gate {
    /// Wakes every waiter so it re-checks its condition.
    pub fn notify(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Waits until `ready()` is true (returns true) or `deadline` passes
    /// (returns `ready()` at that moment).
    pub async fn wait_until(&self, deadline: Instant, mut ready: impl FnMut() -> bool) -> bool {
        let mut rx = self.version.subscribe();
        loop {
            rx.borrow_and_update();
            if ready() {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                // Sender dropped (shutdown) or deadline: one last look.
                _ => return ready(),
            }
        }
    }

    /// Waits up to `wait` for `ready()`.
    pub async fn wait_for(&self, wait: Duration, ready: impl FnMut() -> bool) -> bool {
        self.wait_until(Instant::now() + wait, ready).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn wakes_as_soon_as_the_condition_holds() {
        let gate = Arc::new(Gate::default());
        let flag = Arc::new(AtomicBool::new(false));
        let (g, f) = (gate.clone(), flag.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            f.store(true, Ordering::SeqCst);
            g.notify();
        });
        let start = std::time::Instant::now();
        assert!(gate.wait_for(Duration::from_secs(10), || flag.load(Ordering::SeqCst)).await);
        assert!(start.elapsed() < Duration::from_secs(5), "woken by the notification, not the deadline");
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() {
        let gate = Gate::default();
        let start = std::time::Instant::now();
        assert!(!gate.wait_for(Duration::from_millis(50), || false).await);
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(50) && waited < Duration::from_secs(2));
    }
}

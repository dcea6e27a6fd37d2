//! Group commit: writers register the generation of their batch; one flusher
//! task flushes sled once for everything written so far and publishes the
//! generation (and own seq) that is now durable.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::Store;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurabilityMode {
    /// Acknowledge a write only after a flush covers it (default).
    Fsync,
    /// Acknowledge at once; the flusher still flushes continuously, and
    /// records are replicated only once flushed.
    Async,
}

impl std::str::FromStr for DurabilityMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "fsync" => Ok(Self::Fsync),
            "async" => Ok(Self::Async),
            other => Err(format!("DURABILITY must be fsync or async, not {other:?}")),
        }
    }
}

/// Pause after a failed flush before retrying, so a broken disk does not spin.
const FLUSH_RETRY: Duration = Duration::from_millis(100);

pub struct Durability {
    mode: DurabilityMode,
    durable_gen: watch::Sender<u64>,
    durable_seq: watch::Sender<u64>,
    kick: Notify,
}

impl Durability {
    pub fn new(mode: DurabilityMode, durable_seq: u64) -> Self {
        Self { mode, durable_gen: watch::Sender::new(0), durable_seq: watch::Sender::new(durable_seq), kick: Notify::new() }
    }

    pub fn mode(&self) -> DurabilityMode {
        self.mode
    }

    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// The highest own seq that is durable; replication ships up to here.
    pub fn durable_seq(&self) -> watch::Receiver<u64> {
        self.durable_seq.subscribe()
    }

    pub(super) async fn wait_for(&self, generation: u64, bound: Duration) -> bool {
        let mut rx = self.durable_gen.subscribe();
        matches!(tokio::time::timeout(bound, rx.wait_for(|d| *d >= generation)).await, Ok(Ok(_)))
    }
}

/// Runs the flusher until `shutdown` fires, then flushes one last time.
pub async fn run_flusher(store: Arc<Store>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = store.durability.kick.notified() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        loop {
            let (generation, seq) = store.written();
            if generation <= *store.durability.durable_gen.borrow() {
                break;
            }
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.flush_blocking()).await {
                Ok(Ok(())) => {
                    store.durability.durable_gen.send_replace(generation);
                    store.durability.durable_seq.send_if_modified(|d| {
                        let changed = seq > *d;
                        *d = (*d).max(seq);
                        changed
                    });
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "flush failed; retrying");
                    tokio::time::sleep(FLUSH_RETRY).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "flush task failed; retrying");
                    tokio::time::sleep(FLUSH_RETRY).await;
                }
            }
        }
    }
    if let Err(e) = store.flush() {
        tracing::error!(error = %e, "final flush failed");
    }
}

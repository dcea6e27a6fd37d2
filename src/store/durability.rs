//! Group commit: writers register the generation of their batch; one flusher
//! task writes and syncs the write-ahead log once for everything appended so
//! far and publishes the generation (and own seq) that is now durable. A
//! checkpointer flushes the storage engine in the background so the log
//! stays short.
//!
//! A file-backed store syncs and checkpoints on tokio's blocking threads
//! (`spawn_blocking`: an `fdatasync` must not stall the runtime). A store on
//! a memory disk does both inline on the task: they are cheap there, and the
//! simulator runs one current-thread runtime with paused time that must stay
//! deterministic, which a blocking thread would break.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::{EngineError, Store, StoreError};

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

/// Pause after a failed sync before retrying, so a broken disk does not spin.
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

    /// Called in sync order. The own seq is published as is: it restarts at
    /// 0 when a new epoch begins.
    pub(super) fn publish(&self, generation: u64, own_seq: u64) {
        self.durable_gen.send_if_modified(|d| {
            let changed = generation > *d;
            *d = (*d).max(generation);
            changed
        });
        self.durable_seq.send_if_modified(|d| {
            let changed = own_seq != *d;
            *d = own_seq;
            changed
        });
    }

    pub(super) async fn wait_for(&self, generation: u64, bound: Duration) -> bool {
        let mut rx = self.durable_gen.subscribe();
        matches!(tokio::time::timeout(bound, rx.wait_for(|d| *d >= generation)).await, Ok(Ok(_)))
    }
}

/// Runs the group commit until `shutdown` fires: whenever entries wait, one
/// write + `fdatasync` of the log covers all of them.
pub async fn run_flusher(store: Arc<Store>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            biased;
            _ = store.durability.kick.notified() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        while store.wal_has_unwritten() {
            if let Err(e) = store.off_runtime(|s| s.sync_wal()).await {
                tracing::error!(error = %e, "write-ahead log sync failed; retrying");
                tokio::time::sleep(FLUSH_RETRY).await;
            }
        }
    }
}

impl Store {
    /// Runs disk work (`fdatasync`, a checkpoint, an epoch commit) where it
    /// cannot stall the async runtime: on a blocking thread for a
    /// file-backed store, inline for an in-memory one (cheap there, and a
    /// simulated run stays deterministic without threads).
    pub async fn off_runtime<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.is_in_memory() {
            return work(self);
        }
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| StoreError::Engine(EngineError::Failed(format!("blocking task: {e}"))))?
    }
}

/// How often the checkpointer looks at the log.
const CHECKPOINT_POLL: Duration = Duration::from_secs(1);
/// A log segment this long is checkpointed at once: it bounds the replay
/// work after a crash (tens of ms per MiB).
const CHECKPOINT_BYTES: u64 = 32 * 1024 * 1024;
/// A log segment with anything in it is checkpointed at least this often.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);

/// Checkpoints sled in the background (off the write path) until `shutdown`.
pub async fn run_checkpointer(store: Arc<Store>, mut shutdown: watch::Receiver<bool>) {
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = tokio::time::sleep(CHECKPOINT_POLL) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let len = store.wal_segment_len();
        if len < CHECKPOINT_BYTES && (len == 0 || last.elapsed() < CHECKPOINT_EVERY) {
            continue;
        }
        match store.off_runtime(|s| s.checkpoint()).await {
            Ok(()) => last = tokio::time::Instant::now(),
            Err(e) => tracing::error!(error = %e, "checkpoint failed; retrying later"),
        }
    }
}

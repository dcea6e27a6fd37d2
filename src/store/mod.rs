//! sled-backed storage: records, per-origin logs, the applied clock and the
//! own write counter (DESIGN.md "Storage", "Applying writes").
//!
//! Invariants kept here:
//! - Everything one write changes (record, log entry, counter, applied entry)
//!   goes into sled in **one atomic batch**, under one lock, so the order of
//!   seqs equals the order in which batches are applied.
//! - Writes from one origin are applied in seq order, never with gaps; records
//!   that arrive early wait in a bounded pending queue.
//! - Concurrent writes to a key resolve last-writer-wins by `(hlc, origin)`;
//!   the log and the applied clock record every write, winner or not.
//! - With `DURABILITY=fsync` a write is acknowledged only after a flush that
//!   covers it (group commit: one flush serves every write waiting). Records
//!   leave the node (replication) only once durable, so a seq is never handed
//!   out twice: a crash can only lose seqs nobody else has seen.
//!
//! Layout decision (docs/decisions.md): one sled tree with key prefixes
//! (`r` records, `l` log, `m` meta) instead of three trees, because a sled
//! `Batch` is atomic only within one tree and multi-tree transactions cost
//! several times more per write.
//!
//! - Log entries are dropped only up to a clock the caller proves every
//!   replica applied; a tombstone is removed only when the caller says it is
//!   stable, and only while it is still the key's current record. A log read
//!   below the compaction floor says so (the asker needs a snapshot).
//!
//! Not here yet: records carried across view changes (epochs).

mod durability;
mod keys;
mod record;
mod state;

pub use durability::{Durability, DurabilityMode, run_flusher};
pub use record::{Dot, Record};
pub use state::{ApplyOutcome, Store, StoreError, WriteOutcome};

/// Most records held in the pending queue (records that arrived before their
/// predecessors). Beyond this, new early arrivals are dropped: the sender
/// learns the applied clock from the acknowledgement and sends them again.
pub const MAX_PENDING_RECORDS: usize = 100_000;

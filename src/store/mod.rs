//! Storage: records, per-origin logs, the applied clock and the own write
//! counter (DESIGN.md "Storage", "Applying writes"), on a storage engine
//! (`engine.rs`: the [`Engine`] trait over byte keys; [`SledEngine`] for a
//! node, [`MemoryEngine`] on a [`MemoryDisk`] for the simulator and tests)
//! with a write-ahead log in files or on the same memory disk (`wal.rs`).
//! [`Store::open`] / [`Store::open_with_clock`] open a data folder,
//! [`Store::open_in_memory`] a memory disk; the HLC and the clock guard read
//! the `WallClock` given there.
//!
//! Invariants kept here:
//! - Everything one write changes (record, log entry, applied entries) is
//!   **one write-ahead log entry**, applied and appended under one lock, so
//!   the order of seqs equals the order of log entries, and a crash keeps a
//!   write whole or not at all.
//! - Writes from one origin are applied in seq order, never with gaps; records
//!   that arrive early wait in a bounded pending queue.
//! - Concurrent writes to a key resolve last-writer-wins by `(hlc, origin)`;
//!   the log and the applied clock record every write, winner or not.
//! - No remote record whose HLC is more than `MAX_CLOCK_SKEW_MS` ahead of
//!   this node's clock is applied, staged or merged (`clock_guard.rs`), so
//!   the HLC stays near real time and never reaches its end.
//! - Every change is in the write-ahead log (`wal.rs`) before it counts as
//!   durable; with `DURABILITY=fsync` a write is acknowledged only after the
//!   log sync that covers it (group commit: one `fdatasync` serves every
//!   write waiting), and the engine is flushed only at checkpoints. Records
//!   leave the node (replication) only once durable, so a seq is never handed
//!   out twice: a crash can only lose seqs nobody else has seen.
//!
//! - Both engines keep one crash model: what the engine flushed (at a
//!   checkpoint) and what the log synced survives, the rest may be lost;
//!   reopening replays the synced log over the engine, and rebuilds the
//!   counter and applied clock from what survived. The memory disk loses
//!   exactly what was not flushed or synced ([`MemoryDisk::crash`]), the
//!   worst case sled allows. A store on a memory disk never uses a blocking
//!   thread (`durability.rs`).
//!
//! Layout decisions (docs/decisions.md): one keyspace with key prefixes
//! (`r` records, `l` log, `t` tombstones, `m` meta) in the main engine, view
//! staging in a second one (sled trees `causalkv` and `staging`); the engine
//! is flushed only at checkpoints, because sled's own batches and flushes
//! cost a disk round trip per write.
//!
//! - Log entries are dropped only up to a clock the caller proves every
//!   replica applied; a tombstone is removed only when the caller says it is
//!   stable, and only while it is still the key's current record. A log read
//!   below the compaction floor says so (the asker needs a snapshot).

mod clock_guard;
mod durability;
mod engine;
mod epoch;
mod keys;
pub mod outbox;
pub mod recent;
mod record;
mod state;
mod wal;

pub use clock_guard::{ClockSkew, DEFAULT_MAX_CLOCK_SKEW};
pub use durability::{Durability, DurabilityMode, run_checkpointer, run_flusher};
pub use engine::{BatchOp, Engine, EngineError, KeyRange, MemoryDisk, MemoryEngine, Pair, Scan, ScanItem, SledEngine, prefix_range};
pub use record::{Dot, Record};
pub use state::{ApplyOutcome, Store, StoreError, WalStats, WriteOutcome};

/// Most records held in the pending queue (records that arrived before their
/// predecessors). Beyond this, new early arrivals are dropped: the sender
/// learns the applied clock from the acknowledgement and sends them again.
pub const MAX_PENDING_RECORDS: usize = 100_000;

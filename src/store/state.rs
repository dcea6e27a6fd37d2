//! The store: a storage engine (`engine.rs`: sled, or a memory disk in the
//! simulator) plus the in-memory state guarded by one lock.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::value::RawValue;

use super::clock_guard::{ClockGuard, ClockSkew, Screened};
use super::engine::{self, Engine, EngineError, MemoryDisk, MemoryEngine, SledEngine};
use super::keys;
use super::outbox::RawRecord;
use super::wal::{self, ReplayError, Wal, WalBatch, WalDir, WalError};
use super::{Dot, Durability, DurabilityMode, MAX_PENDING_RECORDS, Record};
use crate::causal::gate::Gate;
use crate::causal::{Clock, Hlc, HlcExhausted};
use crate::time::{self, WallClock};

/// How long a writer waits for the flush that covers its write before the
/// request fails: far above a healthy fsync (~0.1 ms), short enough that a
/// dead disk does not hang clients.
const DURABLE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("corrupt stored record: {0}")]
    Corrupt(#[from] super::record::DecodeError),
    #[error("the write was not made durable within {0:?}")]
    DurabilityTimeout(Duration),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error(transparent)]
    Clock(#[from] HlcExhausted),
    /// Remote records refused by the clock guard (`clock_guard.rs`).
    #[error(transparent)]
    ClockSkew(#[from] ClockSkew),
}

/// What a local write did.
#[derive(Debug)]
pub struct WriteOutcome {
    /// The record written; `None` for a delete of a key that was not live.
    pub record: Option<Arc<Record>>,
    /// The key's record before the write (live or tombstone), if any.
    pub previous: Option<Record>,
    /// Write generation to wait on for durability.
    pub generation: u64,
}

/// What applying a batch of remote records did.
#[derive(Debug, Default)]
pub struct ApplyOutcome {
    pub applied_now: usize,
    pub dropped: usize,
    pub generation: u64,
    /// Set when the clock guard cut records from the batch (the rest applied).
    pub refused: Option<ClockSkew>,
}

pub(super) struct State {
    pub(super) counter: u64,
    pub(super) applied: Clock,
    pub(super) hlc: Hlc,
    pub(super) live: u64,
    pub(super) pending: BTreeMap<String, BTreeMap<u64, Record>>,
    pub(super) pending_len: usize,
    /// Per origin: log entries up to here were compacted away.
    pub(super) log_floor: Clock,
    pub(super) written_gen: u64,
    /// Under the lock: its rate limiter is state too.
    pub(super) clock_guard: ClockGuard,
}

pub struct Store {
    /// The main keyspace (`keys.rs`).
    pub(super) engine: Box<dyn Engine>,
    /// Records received for a view change in progress, by change id (a
    /// second engine instance: see `engine.rs`).
    pub(super) staging: Box<dyn Engine>,
    /// The wall clock the HLC and the clock guard read.
    pub(super) clock: Arc<dyn WallClock>,
    /// On a memory disk: sync and checkpoint run inline, never on a
    /// blocking thread (`durability.rs`).
    pub(super) in_memory: bool,
    pub(super) me: String,
    /// Current epoch; changes only in `commit_epoch`, under the state lock.
    pub(super) epoch: AtomicU64,
    pub(super) state: Mutex<State>,
    pub durability: Durability,
    /// Notified on every apply: the hold-back gate's wake-up.
    pub gate: Gate,
    /// Every change of `engine`, for durability (the engine is flushed only at checkpoints).
    pub(super) wal: Wal,
    /// Serialises checkpoints (the checkpointer's and shutdown's).
    pub(super) checkpointing: Mutex<()>,
    /// Serialises log syncs with the publication of what they made durable.
    pub(super) syncing: Mutex<()>,
    pub stats: WalStats,
    /// Whether local writes get a replication log entry: false while this
    /// node's shard has no other replica. Changes only with the epoch.
    pub(super) keeps_log: AtomicBool,
    /// The writes applied most recently, in apply order (`recent.rs`).
    pub recent: super::recent::RecentWrites,
    /// This node's own recent writes as logged, for the replication stream.
    pub(super) outbox: super::outbox::Outbox,
}

/// Write-ahead log counters since start (exported in `/metrics`).
#[derive(Default, Debug)]
pub struct WalStats {
    pub syncs: AtomicU64,
    pub synced_entries: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Entries replayed when the store was opened (after a crash: > 0).
    pub replayed_entries: AtomicU64,
}

impl State {
    /// Keeps the live-key count right when a key goes from `was_live` to `is_live`.
    fn count_live(&mut self, was_live: bool, is_live: bool) {
        match (was_live, is_live) {
            (false, true) => self.live += 1,
            (true, false) => self.live -= 1,
            _ => {}
        }
    }
}

impl Store {
    /// Applies `batch` while the state lock is held, so generations follow
    /// the order of batches; then wakes held-back requests and the flusher.
    /// Returns the generation to wait on for durability.
    fn finish_batch(&self, mut st: parking_lot::MutexGuard<'_, State>, batch: WalBatch) -> Result<u64, StoreError> {
        let generation = self.apply_logged(&mut st, batch)?;
        drop(st);
        self.gate.notify();
        Ok(generation)
    }

    /// Applies `batch` to the engine (not flushed) and appends it to the write-ahead
    /// log, under the state lock the caller holds; returns its generation.
    pub(super) fn apply_logged(&self, st: &mut State, batch: WalBatch) -> Result<u64, StoreError> {
        wal::apply_ops(self.engine.as_ref(), &batch.ops(), false)?;
        st.written_gen += 1;
        self.wal.append(batch.encoded(), st.written_gen, st.counter);
        self.durability.kick();
        Ok(st.written_gen)
    }

    /// Opens (or creates) the store in `dir` for the node `me`, on the
    /// host's clock.
    pub fn open(dir: &Path, me: &str, mode: DurabilityMode) -> Result<Store, StoreError> {
        Self::open_with_clock(dir, me, mode, time::system())
    }

    /// Opens (or creates) the store in `dir` (sled and the write-ahead log
    /// folder `dir/wal`) for the node `me`, reading `clock`.
    pub fn open_with_clock(dir: &Path, me: &str, mode: DurabilityMode, clock: Arc<dyn WallClock>) -> Result<Store, StoreError> {
        let main = SledEngine::open(dir, engine::MAIN)?;
        let staging = main.open_tree(engine::STAGING)?;
        Self::open_on(Box::new(main), Box::new(staging), WalDir::Files(dir.join("wal")), me, mode, clock, false)
    }

    /// Opens (or creates) the store on a memory disk, as a node process
    /// starting on it: after [`MemoryDisk::crash`] this replays what was
    /// synced. Fails with [`EngineError::Locked`] while another store
    /// holds the disk.
    pub fn open_in_memory(disk: &MemoryDisk, me: &str, mode: DurabilityMode, clock: Arc<dyn WallClock>) -> Result<Store, StoreError> {
        let lock = Arc::new(disk.lock()?);
        let main = MemoryEngine::new(lock.clone(), engine::MAIN);
        let staging = MemoryEngine::new(lock.clone(), engine::STAGING);
        Self::open_on(Box::new(main), Box::new(staging), WalDir::Memory(lock), me, mode, clock, true)
    }

    fn open_on(
        tree: Box<dyn Engine>,
        staging: Box<dyn Engine>,
        wal_dir: WalDir,
        me: &str,
        mode: DurabilityMode,
        clock: Arc<dyn WallClock>,
        in_memory: bool,
    ) -> Result<Store, StoreError> {
        let checkpoint = read_u64(tree.as_ref(), &keys::meta(keys::WAL_CHECKPOINT))?;
        let (last_segment, next_lsn, replayed) = wal::replay(&wal_dir, checkpoint, |ops| wal::apply_ops(tree.as_ref(), ops, true))?;
        if replayed > 0 {
            tracing::info!(entries = replayed, "replayed the write-ahead log");
        }
        let epoch = read_u64(tree.as_ref(), &keys::meta(keys::EPOCH))?;
        let mut counter = read_u64(tree.as_ref(), &keys::meta(keys::COUNTER))?;
        let mut applied = Clock::new();
        for item in tree.scan_prefix(&keys::meta(keys::APPLIED_PREFIX)) {
            let (k, v) = item?;
            let origin = String::from_utf8_lossy(&k[1 + keys::APPLIED_PREFIX.len()..]).into_owned();
            applied.set(&origin, u64_from(&v));
        }
        // Local writes record their seq only in their log entry; compaction
        // leaves the floor behind (see `write_local`).
        counter = counter.max(applied.get(me)).max(last_log_seq(tree.as_ref(), me)?);
        let mut log_floor = Clock::new();
        for item in tree.scan_prefix(&keys::meta(keys::LOG_FLOOR_PREFIX)) {
            let (k, v) = item?;
            let origin = String::from_utf8_lossy(&k[1 + keys::LOG_FLOOR_PREFIX.len()..]).into_owned();
            log_floor.set(&origin, u64_from(&v));
        }
        counter = counter.max(log_floor.get(me));
        applied.observe(me, counter);
        let mut live = 0;
        for item in tree.scan_prefix(&[keys::RECORD]) {
            let (_, v) = item?;
            if Record::encoded_is_live(&v) {
                live += 1;
            }
        }
        let state = State {
            counter,
            applied,
            hlc: Hlc::default(),
            live,
            pending: BTreeMap::new(),
            pending_len: 0,
            log_floor,
            written_gen: 0,
            clock_guard: ClockGuard::default(),
        };
        let wal = Wal::create(wal_dir, last_segment, next_lsn, 0, counter)?;
        let store = Store {
            engine: tree,
            staging,
            clock,
            in_memory,
            me: me.to_owned(),
            epoch: AtomicU64::new(epoch),
            state: Mutex::new(state),
            durability: Durability::new(mode, counter),
            gate: Gate::default(),
            wal,
            checkpointing: Mutex::new(()),
            syncing: Mutex::new(()),
            stats: WalStats::default(),
            keeps_log: AtomicBool::new(true),
            recent: Default::default(),
            outbox: Default::default(),
        };
        // What was applied before this start is not in the history.
        store.recent.start(store.epoch(), &store.applied(), store.clock.now_ms().saturating_mul(1_000_000));
        store.stats.replayed_entries.store(replayed as u64, Ordering::Relaxed);
        // What was replayed goes into the engine now, so the old segments can go.
        store.checkpoint()?;
        Ok(store)
    }

    /// Whether this node's shard has other replicas (see `keeps_log`); set
    /// before serving, and by `commit_epoch` for a new epoch.
    pub fn set_keeps_log(&self, keeps_log: bool) {
        let _st = self.state.lock();
        self.keeps_log.store(keeps_log, Ordering::Release);
    }

    /// Sets `MAX_CLOCK_SKEW_MS` and the counter of refused records (before
    /// serving; until then the default limit and a private counter apply).
    pub fn set_max_clock_skew(&self, limit: Duration, refused: prometheus_client::metrics::counter::Counter) {
        self.state.lock().clock_guard = ClockGuard::new(limit, refused);
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// The wall clock this store's HLC and clock guard read.
    pub fn wall_clock(&self) -> &Arc<dyn WallClock> {
        &self.clock
    }

    /// Whether the store lives on a [`MemoryDisk`].
    pub fn is_in_memory(&self) -> bool {
        self.in_memory
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The view persisted by the last committed view change (JSON), if any.
    pub fn stored_view(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.engine.get(&keys::meta(keys::VIEW))?)
    }

    /// Persists the view of the current epoch (first start).
    pub fn store_view(&self, view_json: &[u8]) -> Result<(), StoreError> {
        let mut batch = WalBatch::default();
        batch.insert(keys::meta(keys::VIEW), view_json);
        let st = self.state.lock();
        self.finish_batch(st, batch)?;
        self.flush()
    }

    pub fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        // Decoded in place: no copy of the stored bytes on the write path.
        let mut record = None;
        self.engine.get_with(&keys::record(key), &mut |bytes| record = Some(Record::decode(bytes)))?;
        Ok(record.transpose()?)
    }

    /// Takes the next seq and writes a put (`value: Some`) or a delete
    /// (`value: None`; nothing is written when the key is not live).
    pub fn write_local(&self, key: &str, value: Option<Box<RawValue>>, deps: Clock) -> Result<WriteOutcome, StoreError> {
        let mut st = self.state.lock();
        let previous = self.get(key)?;
        let was_live = previous.as_ref().is_some_and(Record::is_live);
        if value.is_none() && !was_live {
            return Ok(WriteOutcome { record: None, previous, generation: st.written_gen });
        }
        if let Some(prev) = &previous {
            st.hlc.observe(prev.hlc);
        }
        let seq = st.counter + 1;
        let record = Record {
            key: key.to_owned(),
            value,
            dot: Dot { epoch: self.epoch(), origin: self.me.clone(), seq },
            deps,
            hlc: st.hlc.tick(self.clock.now_ms())?,
        };
        let encoded = record.encode();
        let mut batch = WalBatch::default();
        batch.insert(keys::record(key), &encoded);
        let keeps_log = self.keeps_log.load(Ordering::Acquire);
        if keeps_log {
            batch.insert(keys::log(&self.me, seq), &encoded);
        }
        // The counter goes to sled only at checkpoints (and replays), and the
        // log entry only where peers will read it: a shard with one replica
        // ships its log to nobody, and compaction would remove it right away.
        batch.insert_log_only(keys::meta(keys::COUNTER), seq.to_be_bytes());
        if !record.is_live() {
            batch.insert(keys::tombstone(&self.me, seq), key.as_bytes());
        }
        st.counter = seq;
        st.applied.set(&self.me, seq);
        st.count_live(was_live, record.is_live());
        let record = Arc::new(record);
        self.recent.push(record.clone());
        let generation = self.apply_logged(&mut st, batch)?;
        if keeps_log {
            self.outbox.push(seq, encoded.into());
        }
        drop(st);
        self.gate.notify();
        Ok(WriteOutcome { record: Some(record), previous, generation })
    }

    /// Applies records received from other replicas: per origin in seq order,
    /// each once its deps on `shard_origins` are applied; early arrivals wait
    /// in the pending queue. Records the clock guard refuses are cut per
    /// origin from the first refused seq on (`out.refused` says so).
    pub fn apply_remote(&self, mut records: Vec<Record>, shard_origins: &[String]) -> Result<ApplyOutcome, StoreError> {
        let mut out = ApplyOutcome::default();
        let mut st = self.state.lock();
        if let Some(Screened { first: mut skew, lowest_refused_seq: bad }) = st.clock_guard.screen(&records, self.clock.now_ms()) {
            let before = records.len();
            records.retain(|r| bad.iter().all(|(o, seq)| *o != r.dot.origin || r.dot.seq < *seq));
            skew.refused = before - records.len();
            st.clock_guard.refuse(&skew);
            out.refused = Some(skew);
        }
        for record in records {
            let o = &record.dot.origin;
            // Own records come back only after this node lost its data; they
            // are re-applied so their seqs are never handed out again.
            if record.dot.epoch != self.epoch() || record.dot.seq <= st.applied.get(o) {
                continue;
            }
            if st.pending_len >= MAX_PENDING_RECORDS {
                out.dropped += 1;
                continue;
            }
            let queue = st.pending.entry(o.clone()).or_default();
            if queue.insert(record.dot.seq, record).is_none() {
                st.pending_len += 1;
            }
        }
        if out.dropped > 0 {
            tracing::warn!(
                dropped = out.dropped,
                limit = MAX_PENDING_RECORDS,
                "pending queue full, records dropped (the sender will resend)"
            );
        }
        let mut batch = WalBatch::default();
        let mut batch_applied: HashMap<String, u64> = HashMap::new();
        // Winners written in this batch, so LWW compares against them too.
        let mut overlay: HashMap<String, Arc<Record>> = HashMap::new();
        loop {
            let mut progressed = false;
            let origins: Vec<String> = st.pending.keys().cloned().collect();
            for origin in origins {
                loop {
                    let next_seq = st.applied.get(&origin) + 1;
                    let ready = match st.pending.get(&origin).and_then(|q| q.first_key_value()) {
                        Some((seq, rec)) if *seq == next_seq => {
                            shard_origins.iter().filter(|p| **p != origin).all(|p| st.applied.get(p) >= rec.deps.get(p))
                        }
                        _ => false,
                    };
                    if !ready {
                        break;
                    }
                    let Some(record) = st.pending.get_mut(&origin).and_then(|q| q.pop_first()).map(|(_, r)| r) else {
                        break;
                    };
                    st.pending_len -= 1;
                    // Shared with the history (`recent`), not copied.
                    let record = Arc::new(record);
                    let current = match overlay.get(&record.key) {
                        Some(r) => Some(r.clone()),
                        None => self.get(&record.key)?.map(Arc::new),
                    };
                    st.hlc.observe(record.hlc);
                    let encoded = record.encode();
                    batch.insert(keys::log(&origin, record.dot.seq), &encoded);
                    batch_applied.insert(origin.clone(), record.dot.seq);
                    st.applied.set(&origin, record.dot.seq);
                    if origin == self.me && record.dot.seq > st.counter {
                        st.counter = record.dot.seq;
                        batch.insert(keys::meta(keys::COUNTER), st.counter.to_be_bytes());
                    }
                    self.recent.push(record.clone());
                    let wins = current.as_ref().is_none_or(|c| record.wins_over(c));
                    if wins {
                        st.count_live(current.as_ref().is_some_and(|c| c.is_live()), record.is_live());
                        batch.insert(keys::record(&record.key), encoded);
                        if !record.is_live() {
                            batch.insert(keys::tombstone(&origin, record.dot.seq), record.key.as_bytes());
                        }
                        overlay.insert(record.key.clone(), record);
                    }
                    out.applied_now += 1;
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        // Once per origin per batch: the log entries carry the rest.
        for (origin, seq) in batch_applied {
            batch.insert(keys::applied(&origin), seq.to_be_bytes());
        }
        st.pending.retain(|_, q| !q.is_empty());
        out.generation = if out.applied_now > 0 { self.finish_batch(st, batch)? } else { st.written_gen };
        Ok(out)
    }

    /// Like [`Store::log_after`], but `None` when entries after `after` were
    /// compacted away (the asker needs a snapshot).
    pub fn log_after_checked(&self, origin: &str, after: u64, limit: usize) -> Result<Option<Vec<Record>>, StoreError> {
        if after < self.state.lock().log_floor.get(origin) {
            return Ok(None);
        }
        self.log_after(origin, after, limit).map(Some)
    }

    /// The log entries of `origin` after `after` up to `up_to`, as stored
    /// (the encoding the replication stream sends, never decoded here), at
    /// most `limit` entries and about `max_bytes` (at least one entry);
    /// `None` when entries after `after` were compacted away. This node's
    /// own recent writes come from memory (`outbox`), the rest from the log.
    pub fn log_raw_after(
        &self,
        origin: &str,
        after: u64,
        up_to: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<(u64, RawRecord)>>, StoreError> {
        if up_to <= after {
            return Ok(Some(Vec::new()));
        }
        // Below the log floor the peer needs a snapshot, whatever the outbox
        // still holds: records compacted away may have been followed by
        // tombstones since purged, which the outbox cannot send any more.
        if after < self.state.lock().log_floor.get(origin) {
            return Ok(None);
        }
        if origin == self.me
            && let Some(found) = self.outbox.read(after, up_to, limit, max_bytes)
        {
            return Ok(Some(found));
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for item in self.engine.scan(included(keys::log(origin, after.saturating_add(1)), keys::log(origin, up_to))).take(limit) {
            let (k, v) = item?;
            let seq = k
                .len()
                .checked_sub(8)
                .and_then(|at| k[at..].try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or(StoreError::Corrupt(super::record::DecodeError::Malformed))?;
            bytes += v.len();
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push((seq, RawRecord::from(v)));
        }
        Ok(Some(out))
    }

    /// Records of `origin` with seq in `after+1 ..`, at most `limit`, from the log.
    pub fn log_after(&self, origin: &str, after: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
        let start = keys::log(origin, after.saturating_add(1));
        let end = keys::log(origin, u64::MAX);
        let mut out = Vec::new();
        for item in self.engine.scan(included(start, end)).take(limit) {
            let (_, v) = item?;
            out.push(Record::decode(&v)?);
        }
        Ok(out)
    }

    /// Drops log entries every replica has applied (`stable[o]` per origin).
    /// Returns the number of entries removed.
    pub fn compact_log(&self, stable: &Clock) -> Result<usize, StoreError> {
        let mut removed = 0;
        for (origin, upto) in stable.iter() {
            let floor = self.state.lock().log_floor.get(origin);
            if upto <= floor {
                continue;
            }
            let mut batch = WalBatch::default();
            for item in self.engine.scan(included(keys::log(origin, floor + 1), keys::log(origin, upto))) {
                let (k, _) = item?;
                batch.remove(k);
                removed += 1;
            }
            batch.insert(keys::log_floor(origin), upto.to_be_bytes());
            let mut st = self.state.lock();
            st.log_floor.set(origin, upto);
            self.finish_batch(st, batch)?;
        }
        Ok(removed)
    }

    /// Removes tombstones whose dot is at or below `purgeable[origin]` and
    /// that are still the key's current record. The caller guarantees that
    /// every replica has applied them and every write concurrent with them.
    pub fn purge_tombstones(&self, purgeable: &Clock) -> Result<usize, StoreError> {
        let mut purged = 0;
        for (origin, upto) in purgeable.iter() {
            let start = keys::tombstone(origin, 0);
            let end = keys::tombstone(origin, upto);
            let st = self.state.lock();
            let mut batch = WalBatch::default();
            let mut batch_is_empty = true;
            for item in self.engine.scan(included(start, end)) {
                let (idx, key) = item?;
                batch_is_empty = false;
                batch.remove(idx.clone());
                let key = String::from_utf8_lossy(&key).into_owned();
                let seq = u64_from(&idx[idx.len() - 8..]);
                if let Some(current) = self.get(&key)?
                    && !current.is_live()
                    && current.dot.origin == origin
                    && current.dot.seq == seq
                {
                    batch.remove(keys::record(&key));
                    purged += 1;
                }
            }
            if !batch_is_empty {
                self.finish_batch(st, batch)?;
            }
        }
        Ok(purged)
    }

    /// One page of the shard's records (tombstones included), in key order,
    /// after `after_key`.
    pub fn snapshot_page(&self, after_key: Option<&str>, limit: usize) -> Result<Vec<Record>, StoreError> {
        let start = match after_key {
            Some(k) => {
                let mut b = keys::record(k);
                b.push(0);
                b
            }
            None => vec![keys::RECORD],
        };
        let mut out = Vec::new();
        for item in self.engine.scan((Bound::Included(start), Bound::Excluded(vec![keys::RECORD + 1]))).take(limit) {
            let (_, v) = item?;
            out.push(Record::decode(&v)?);
        }
        Ok(out)
    }

    /// Merges snapshot records by LWW (the applied clock is installed
    /// separately, once the whole snapshot is in).
    /// A page holding a record the clock guard refuses is refused whole.
    pub fn apply_snapshot(&self, records: Vec<Record>) -> Result<u64, StoreError> {
        let mut st = self.state.lock();
        refuse_whole(&mut st, &records, self.clock.now_ms())?;
        let mut batch = WalBatch::default();
        let mut overlay: HashMap<String, Record> = HashMap::new();
        for record in records {
            if record.dot.epoch > self.epoch() {
                continue;
            }
            let current = match overlay.get(&record.key) {
                Some(r) => Some(r.clone()),
                None => self.get(&record.key)?,
            };
            if current.as_ref().is_some_and(|c| !record.wins_over(c)) {
                continue;
            }
            st.hlc.observe(record.hlc);
            st.count_live(current.as_ref().is_some_and(Record::is_live), record.is_live());
            batch.insert(keys::record(&record.key), record.encode());
            if !record.is_live() {
                batch.insert(keys::tombstone(&record.dot.origin, record.dot.seq), record.key.as_bytes());
            }
            overlay.insert(record.key.clone(), record);
        }
        self.finish_batch(st, batch)
    }

    /// After a snapshot: raises `applied` to the snapshot's clock. The log
    /// lacks the skipped entries, so the log floor rises with it.
    pub fn install_clock(&self, clock: &Clock) -> Result<u64, StoreError> {
        let mut st = self.state.lock();
        let mut batch = WalBatch::default();
        for (origin, seq) in clock.iter() {
            if seq <= st.applied.get(origin) {
                continue;
            }
            st.applied.set(origin, seq);
            batch.insert(keys::applied(origin), seq.to_be_bytes());
            st.log_floor.set(origin, seq);
            batch.insert(keys::log_floor(origin), seq.to_be_bytes());
            if origin == self.me && seq > st.counter {
                st.counter = seq;
                batch.insert(keys::meta(keys::COUNTER), seq.to_be_bytes());
            }
            if let Some(q) = st.pending.get_mut(origin) {
                let before = q.len();
                q.retain(|s, _| *s > seq);
                let dropped = before - q.len();
                st.pending_len -= dropped;
            }
        }
        // The history skips what the snapshot brought.
        self.recent.reset(self.epoch(), &st.applied);
        self.finish_batch(st, batch)
    }

    /// Every live record, in key order, after `after_key` (view-change
    /// transfers read the whole shard this way, page by page).
    pub fn live_page(&self, after_key: Option<&str>, limit: usize) -> Result<(Vec<Record>, Option<String>), StoreError> {
        let mut after = after_key.map(String::from);
        let mut out = Vec::new();
        loop {
            let page = self.snapshot_page(after.as_deref(), limit)?;
            let done = page.len() < limit;
            after = page.last().map(|r| r.key.clone());
            out.extend(page.into_iter().filter(Record::is_live));
            if done || out.len() >= limit {
                return Ok((out, if done { None } else { after }));
            }
        }
    }

    pub fn log_floor(&self) -> Clock {
        self.state.lock().log_floor.clone()
    }

    pub fn applied(&self) -> Clock {
        self.state.lock().applied.clone()
    }

    /// The applied clock and the history position read together: every
    /// write not covered by the clock is at this position or after it.
    pub fn applied_and_position(&self) -> (Clock, u64) {
        let st = self.state.lock();
        (st.applied.clone(), self.recent.position())
    }

    /// True when `applied` covers `needed` for `origins`.
    pub fn satisfies<'a>(&self, needed: &Clock, origins: impl IntoIterator<Item = &'a str>) -> bool {
        self.state.lock().applied.covers_for(needed, origins)
    }

    pub fn live_count(&self) -> u64 {
        self.state.lock().live
    }

    pub fn pending_len(&self) -> usize {
        self.state.lock().pending_len
    }

    /// Own seq counter (the highest seq this node has handed out).
    pub fn counter(&self) -> u64 {
        self.state.lock().counter
    }

    /// Writes and syncs the write-ahead log up to the last append and
    /// publishes what became durable (blocking; the group-commit step).
    /// Returns false when nothing was waiting.
    pub(super) fn sync_wal(&self) -> Result<bool, StoreError> {
        // Held across sync and publish, so publications follow sync order.
        let _syncing = self.syncing.lock();
        match self.wal.sync()? {
            Some(synced) => {
                self.durability.publish(synced.generation, synced.counter);
                self.stats.syncs.fetch_add(1, Ordering::Relaxed);
                self.stats.synced_entries.fetch_add(synced.entries, Ordering::Relaxed);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub(super) fn wal_has_unwritten(&self) -> bool {
        self.wal.has_unwritten()
    }

    pub(super) fn wal_segment_len(&self) -> u64 {
        self.wal.segment_len()
    }

    /// Makes the engine hold everything the log holds, so older log segments can
    /// go: rotate the log, record the new segment in the engine, flush it, delete
    /// the older segments (see `wal.rs` for why this order is safe).
    pub(super) fn checkpoint(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.checkpointing.lock();
        let segment = {
            // Under the state lock: no entry is half applied, and the counter
            // written here covers every entry in the older segments (their
            // counter ops are log-only).
            let st = self.state.lock();
            let segment = self.wal.rotate()?;
            self.engine.set(&keys::meta(keys::COUNTER), &st.counter.to_be_bytes())?;
            self.engine.set(&keys::meta(keys::WAL_CHECKPOINT), &segment.to_be_bytes())?;
            segment
        };
        self.engine.flush()?;
        self.wal.drop_before(segment)?;
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Waits until the write of generation `generation` is durable (`fsync` mode);
    /// returns at once in `async` mode.
    pub async fn wait_durable(&self, generation: u64) -> Result<(), StoreError> {
        if self.durability.mode() == DurabilityMode::Async {
            return Ok(());
        }
        self.durability.wait_for(generation, DURABLE_WAIT).await.then_some(()).ok_or(StoreError::DurabilityTimeout(DURABLE_WAIT))
    }

    /// Makes everything written so far durable and checkpoints it
    /// (shutdown, view changes).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.sync_wal()?;
        self.checkpoint()
    }
}

/// Refuses a message (snapshot page, view-change transfer) as a whole when
/// the clock guard refuses any of its records.
pub(super) fn refuse_whole(st: &mut State, records: &[Record], now_ms: u64) -> Result<(), ClockSkew> {
    match st.clock_guard.screen(records, now_ms) {
        Some(Screened { first: mut skew, .. }) => {
            skew.refused = records.len();
            st.clock_guard.refuse(&skew);
            Err(skew)
        }
        None => Ok(()),
    }
}

/// The range `start..=end`.
fn included(start: Vec<u8>, end: Vec<u8>) -> engine::KeyRange {
    (Bound::Included(start), Bound::Included(end))
}

/// The highest seq of `origin` in the log (0 when it has none).
fn last_log_seq(tree: &dyn Engine, origin: &str) -> Result<u64, StoreError> {
    Ok(match tree.last_in(included(keys::log(origin, 0), keys::log(origin, u64::MAX)))? {
        Some((k, _)) => u64_from(&k),
        None => 0,
    })
}

fn read_u64(tree: &dyn Engine, key: &[u8]) -> Result<u64, StoreError> {
    Ok(tree.get(key)?.map(|v| u64_from(&v)).unwrap_or(0))
}

fn u64_from(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[8 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    u64::from_be_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::SystemClock;

    fn raw(v: &str) -> Option<Box<RawValue>> {
        Some(RawValue::from_string(v.to_owned()).unwrap())
    }

    /// The engines every store test runs on.
    #[derive(Clone, Copy, Debug)]
    enum Kind {
        Sled,
        Memory,
    }

    /// Where one test's store lives; it outlives the stores opened on it.
    enum TestDisk {
        Sled(tempfile::TempDir),
        Memory(MemoryDisk),
    }

    impl Kind {
        fn disk(self) -> TestDisk {
            match self {
                Kind::Sled => TestDisk::Sled(tempfile::tempdir().unwrap()),
                Kind::Memory => TestDisk::Memory(MemoryDisk::new()),
            }
        }
    }

    impl TestDisk {
        fn try_open_with(&self, me: &str, mode: DurabilityMode, clock: Arc<dyn WallClock>) -> Result<Store, StoreError> {
            match self {
                TestDisk::Sled(dir) => Store::open_with_clock(dir.path(), me, mode, clock),
                TestDisk::Memory(disk) => Store::open_in_memory(disk, me, mode, clock),
            }
        }

        fn open_with(&self, me: &str, mode: DurabilityMode, clock: Arc<dyn WallClock>) -> Store {
            self.try_open_with(me, mode, clock).unwrap()
        }

        fn open(&self, me: &str) -> Store {
            self.open_with(me, DurabilityMode::Async, time::system())
        }
    }

    /// Runs `body` once per engine. A store is never reopened while a
    /// handle on it is alive: each test drops it first (a sled folder is
    /// free again once the drop returns, see `engine.rs`).
    fn for_each_engine(body: impl Fn(Kind)) {
        for kind in [Kind::Sled, Kind::Memory] {
            eprintln!("engine: {kind:?}");
            body(kind);
        }
    }

    #[test]
    fn local_writes_take_consecutive_seqs_and_survive_reopen() {
        for_each_engine(|kind| {
            let disk = kind.disk();
            let s = disk.open("a:1");
            let w1 = s.write_local("x", raw("1"), Clock::new()).unwrap();
            let w2 = s.write_local("y", raw("2"), Clock::new()).unwrap();
            assert_eq!(w1.record.unwrap().dot.seq, 1);
            assert_eq!(w2.record.unwrap().dot.seq, 2);
            let del = s.write_local("x", None, Clock::new()).unwrap();
            assert!(del.previous.unwrap().is_live());
            let del_again = s.write_local("x", None, Clock::new()).unwrap();
            assert!(del_again.record.is_none(), "deleting a dead key writes nothing");
            assert_eq!(s.live_count(), 1);
            s.flush().unwrap();
            drop(s);
            let s = disk.open("a:1");
            assert_eq!(s.counter(), 3);
            assert_eq!(s.live_count(), 1);
            assert_eq!(s.applied().get("a:1"), 3);
            assert_eq!(s.write_local("z", raw("3"), Clock::new()).unwrap().record.unwrap().dot.seq, 4);
            assert_eq!(s.log_after("a:1", 1, 10).unwrap().iter().map(|r| r.dot.seq).collect::<Vec<_>>(), vec![2, 3, 4]);
        });
    }

    #[test]
    fn a_store_is_opened_once_at_a_time_and_free_once_dropped() {
        for_each_engine(|kind| {
            let disk = kind.disk();
            for round in 0..10 {
                let s = disk.open("a:1");
                s.write_local(&format!("k{round}"), raw("1"), Clock::new()).unwrap();
                let second = disk.try_open_with("a:1", DurabilityMode::Async, time::system());
                assert!(matches!(second, Err(StoreError::Engine(EngineError::Locked(_)))), "{:?}", second.err());
                s.flush().unwrap();
                drop(s);
            }
            assert_eq!(disk.open("a:1").live_count(), 10);
        });
    }

    #[test]
    fn a_store_without_peers_keeps_no_log_and_still_its_counter() {
        for_each_engine(|kind| {
            let disk = kind.disk();
            let s = disk.open("a:1");
            s.set_keeps_log(false);
            for i in 0..3 {
                s.write_local(&format!("k{i}"), raw("1"), Clock::new()).unwrap();
            }
            assert!(s.log_after("a:1", 0, 10).unwrap().is_empty());
            // Synced but not checkpointed: the counter lives only in the log.
            s.sync_wal().unwrap();
            drop(s);
            let s = disk.open("a:1");
            assert_eq!(s.stats.replayed_entries.load(Ordering::Relaxed), 3);
            assert_eq!(s.counter(), 3, "the counter comes back from the write-ahead log");
            s.set_keeps_log(false);
            assert_eq!(s.write_local("k9", raw("2"), Clock::new()).unwrap().record.unwrap().dot.seq, 4);
            s.flush().unwrap();
            drop(s);
            let s = disk.open("a:1");
            assert_eq!(s.stats.replayed_entries.load(Ordering::Relaxed), 0);
            assert_eq!(s.counter(), 4, "the checkpoint wrote the counter to the engine");
            assert_eq!(s.live_count(), 4);
        });
    }

    #[test]
    fn remote_records_apply_in_seq_order_with_a_pending_queue() {
        for_each_engine(|kind| {
            let (src_disk, dst_disk) = (kind.disk(), kind.disk());
            let src = src_disk.open("a:1");
            let dst = dst_disk.open("b:1");
            for i in 0..5 {
                src.write_local("k", raw(&i.to_string()), Clock::new()).unwrap();
            }
            let mut recs = src.log_after("a:1", 0, 10).unwrap();
            let shard = vec!["a:1".to_string(), "b:1".to_string()];
            let late = recs.split_off(2); // seqs 3..5 first, then 1..2
            let out = dst.apply_remote(late, &shard).unwrap();
            assert_eq!(out.applied_now, 0);
            assert_eq!(dst.pending_len(), 3);
            assert!(dst.get("k").unwrap().is_none());
            let out = dst.apply_remote(recs, &shard).unwrap();
            assert_eq!(out.applied_now, 5);
            assert_eq!(dst.pending_len(), 0);
            assert_eq!(dst.applied().get("a:1"), 5);
            assert_eq!(dst.get("k").unwrap().unwrap().value.unwrap().get(), "4");
            assert_eq!(dst.live_count(), 1);
            // duplicates are ignored
            let again = dst.apply_remote(src.log_after("a:1", 0, 10).unwrap(), &shard).unwrap();
            assert_eq!(again.applied_now, 0);
        });
    }

    #[test]
    fn concurrent_writes_converge_by_lww() {
        for_each_engine(|kind| {
            let (da, db) = (kind.disk(), kind.disk());
            let a = da.open("a:1");
            let b = db.open("b:1");
            let shard = vec!["a:1".to_string(), "b:1".to_string()];
            a.write_local("k", raw(r#""from a""#), Clock::new()).unwrap();
            b.write_local("k", raw(r#""from b""#), Clock::new()).unwrap();
            a.apply_remote(b.log_after("b:1", 0, 10).unwrap(), &shard).unwrap();
            b.apply_remote(a.log_after("a:1", 0, 10).unwrap(), &shard).unwrap();
            let va = a.get("k").unwrap().unwrap().value.unwrap().get().to_owned();
            let vb = b.get("k").unwrap().unwrap().value.unwrap().get().to_owned();
            assert_eq!(va, vb);
        });
    }

    fn remote(origin: &str, seq: u64, key: &str, value: &str, hlc: u64) -> Record {
        Record { key: key.into(), value: raw(value), dot: Dot { epoch: 0, origin: origin.into(), seq }, deps: Clock::new(), hlc }
    }

    fn now_ms() -> u64 {
        SystemClock.now_ms()
    }

    fn now_hlc() -> u64 {
        now_ms() << 16
    }

    #[test]
    fn records_from_the_far_future_are_never_applied() {
        for_each_engine(|kind| {
            let disk = kind.disk();
            let s = disk.open("b:1");
            let refused = prometheus_client::metrics::counter::Counter::default();
            s.set_max_clock_skew(Duration::from_secs(60), refused.clone());
            let shard = vec!["a:1".to_string(), "b:1".to_string(), "c:1".to_string()];
            s.write_local("k", raw(r#""real""#), Clock::new()).unwrap();

            // The attack of issue 11 hole 5: one record with the largest HLC.
            let out = s.apply_remote(vec![remote("a:1", 1, "k", r#""forged""#, u64::MAX)], &shard).unwrap();
            let skew = out.refused.expect("refused");
            assert_eq!((skew.origin.as_str(), skew.seq, skew.refused), ("a:1", 1, 1));
            assert_eq!(out.applied_now, 0);
            assert_eq!(s.get("k").unwrap().unwrap().value.unwrap().get(), r#""real""#);
            assert_eq!(s.applied().get("a:1"), 0, "no gap-making seq was recorded");
            assert_eq!(s.pending_len(), 0);
            // The node's own clock was not dragged to the end: writes still win.
            let w = s.write_local("k", raw(r#""later""#), Clock::new()).unwrap().record.unwrap();
            assert!(crate::causal::hlc::physical_ms(w.hlc) <= now_ms() + 1);

            // A batch is cut per origin at the first refused seq; other origins apply.
            let ahead = now_hlc() + (120_000 << 16);
            let batch = vec![
                remote("a:1", 1, "x", "1", now_hlc()),
                remote("a:1", 2, "x", "2", ahead),
                remote("a:1", 3, "x", "3", now_hlc()),
                remote("c:1", 1, "y", "1", now_hlc() + (30_000 << 16)),
            ];
            let out = s.apply_remote(batch, &shard).unwrap();
            assert_eq!(out.refused.map(|r| (r.seq, r.refused)), Some((2, 2)));
            assert_eq!(out.applied_now, 2);
            assert_eq!((s.applied().get("a:1"), s.applied().get("c:1")), (1, 1));
            assert_eq!(s.get("x").unwrap().unwrap().value.unwrap().get(), "1");
            assert_eq!(s.pending_len(), 0, "seq 3 does not wait behind a refused seq 2");
            assert_eq!(refused.get(), 3);

            // Snapshot pages and view-change transfers are refused whole.
            let page = vec![remote("a:1", 9, "z", "1", now_hlc()), remote("a:1", 10, "k", r#""forged""#, u64::MAX)];
            assert!(matches!(s.apply_snapshot(page.clone()), Err(StoreError::ClockSkew(ClockSkew { refused: 2, .. }))));
            assert!(s.get("z").unwrap().is_none());
            assert!(matches!(s.stage("change-1", &page), Err(StoreError::ClockSkew(_))));
            assert_eq!(s.staging.scan_prefix(&super::super::epoch::staging_prefix("change-1")).count(), 0);
            assert_eq!(refused.get(), 7);
            assert_eq!(s.get("k").unwrap().unwrap().value.unwrap().get(), r#""later""#);
        });
    }

    #[test]
    fn records_wait_for_their_deps_in_the_shard() {
        for_each_engine(|kind| {
            let (da, db, dc) = (kind.disk(), kind.disk(), kind.disk());
            let a = da.open("a:1");
            let b = db.open("b:1");
            let c = dc.open("c:1");
            let shard = vec!["a:1".to_string(), "b:1".to_string(), "c:1".to_string()];
            a.write_local("x", raw("1"), Clock::new()).unwrap();
            b.apply_remote(a.log_after("a:1", 0, 10).unwrap(), &shard).unwrap();
            let deps: Clock = [("a:1".to_string(), 1)].into_iter().collect();
            b.write_local("y", raw("2"), deps).unwrap();
            // c gets b's write before a's: it must wait.
            assert_eq!(c.apply_remote(b.log_after("b:1", 0, 10).unwrap(), &shard).unwrap().applied_now, 0);
            assert!(c.get("y").unwrap().is_none());
            assert_eq!(c.apply_remote(a.log_after("a:1", 0, 10).unwrap(), &shard).unwrap().applied_now, 2);
            assert!(c.get("y").unwrap().is_some());
        });
    }

    #[test]
    fn staged_records_survive_a_reopen_and_commit_into_the_new_epoch() {
        for_each_engine(|kind| {
            let disk = kind.disk();
            let s = disk.open("a:1");
            s.write_local("mine", raw("1"), Clock::new()).unwrap();
            s.write_local("theirs", raw("1"), Clock::new()).unwrap();
            s.stage("change-1", &[remote("b:1", 1, "moved", "7", now_hlc())]).unwrap();
            s.stage("stale", &[remote("b:1", 1, "old", "7", now_hlc())]).unwrap();
            s.flush().unwrap();
            drop(s);
            let s = disk.open("a:1");
            s.discard_other_stages(Some("change-1")).unwrap();
            assert_eq!(s.staging.scan_prefix(&[]).count(), 1);
            let live = s.commit_epoch("change-1", 1, b"{}", |k| k != "theirs", true).unwrap();
            assert_eq!(live, 2);
            assert_eq!((s.epoch(), s.counter()), (1, 0));
            assert_eq!(s.get("moved").unwrap().unwrap().value.unwrap().get(), "7");
            assert!(s.get("theirs").unwrap().is_none());
            assert_eq!(s.staging.scan_prefix(&[]).count(), 0);
            assert_eq!(s.stored_view().unwrap().as_deref(), Some(&b"{}"[..]));
            drop(s);
            let s = disk.open("a:1");
            assert_eq!((s.epoch(), s.live_count()), (1, 2));
        });
    }

    /// A wall clock a test sets by hand.
    #[derive(Debug)]
    struct FixedClock(AtomicU64);

    impl WallClock for FixedClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn the_hlc_and_the_clock_guard_read_the_injected_clock() {
        for_each_engine(|kind| {
            let disk = kind.disk();
            let clock = Arc::new(FixedClock(AtomicU64::new(1_000_000)));
            let s = disk.open_with("a:1", DurabilityMode::Async, clock.clone());
            let w = s.write_local("k", raw("1"), Clock::new()).unwrap().record.unwrap();
            assert_eq!(w.hlc, 1_000_000 << 16);
            let shard = vec!["a:1".to_string(), "b:1".to_string()];
            // 100 s ahead of this node's clock: refused; once its clock has
            // caught up, the same record applies.
            let ahead = remote("b:1", 1, "x", "1", 1_100_000 << 16);
            assert!(s.apply_remote(vec![ahead.clone()], &shard).unwrap().refused.is_some());
            clock.0.store(1_050_000, Ordering::Relaxed);
            assert_eq!(s.apply_remote(vec![ahead], &shard).unwrap().applied_now, 1);
            let w = s.write_local("k", raw("2"), Clock::new()).unwrap().record.unwrap();
            assert_eq!(w.hlc, (1_100_000 << 16) + 1, "after the observed record");
        });
    }

    #[test]
    fn a_memory_crash_keeps_durable_writes_and_loses_the_rest() {
        let disk = MemoryDisk::new();
        let open = || Store::open_in_memory(&disk, "a:1", DurabilityMode::Fsync, time::system()).unwrap();
        let s = open();
        let shard = vec!["a:1".to_string(), "b:1".to_string()];
        s.apply_remote(vec![remote("b:1", 1, "theirs", "1", now_hlc())], &shard).unwrap();
        for i in 1..=3 {
            s.write_local(&format!("k{i}"), raw("1"), Clock::new()).unwrap();
        }
        s.sync_wal().unwrap();
        assert_eq!(*s.durability.durable_seq().borrow(), 3, "seqs 1..3 are durable and may be replicated");
        // Checkpointed, then more durable writes only in the log.
        s.checkpoint().unwrap();
        s.write_local("k4", raw("1"), Clock::new()).unwrap();
        s.write_local("k1", None, Clock::new()).unwrap();
        s.sync_wal().unwrap();
        assert_eq!(*s.durability.durable_seq().borrow(), 5);
        // Applied, never synced: not durable, never replicated.
        s.write_local("lost", raw("1"), Clock::new()).unwrap();
        s.write_local("k2", raw("2"), Clock::new()).unwrap();
        s.apply_remote(vec![remote("b:1", 2, "theirs-lost", "1", now_hlc())], &shard).unwrap();
        assert_eq!((s.counter(), *s.durability.durable_seq().borrow()), (7, 5));

        disk.crash();
        assert!(matches!(s.get("k2"), Err(StoreError::Engine(EngineError::Crashed))), "the dead store may not touch the disk");
        assert!(s.write_local("after", raw("1"), Clock::new()).is_err());
        drop(s);

        let s = open();
        assert_eq!(s.stats.replayed_entries.load(Ordering::Relaxed), 2, "the synced entries after the checkpoint");
        assert!(s.get("lost").unwrap().is_none());
        assert!(s.get("theirs-lost").unwrap().is_none());
        assert_eq!(s.get("k2").unwrap().unwrap().value.unwrap().get(), "1");
        assert!(s.get("k4").unwrap().is_some());
        assert!(!s.get("k1").unwrap().unwrap().is_live());
        assert_eq!(s.live_count(), 4, "k2, k3, k4, theirs");
        // The counter and the applied clock match what survived: seqs 6 and 7
        // were never durable, so handing them out again is safe.
        assert_eq!(s.counter(), 5);
        assert_eq!(*s.durability.durable_seq().borrow(), 5);
        assert_eq!((s.applied().get("a:1"), s.applied().get("b:1")), (5, 1));
        assert_eq!(s.log_after("a:1", 0, 10).unwrap().iter().map(|r| r.dot.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert_eq!(s.write_local("new", raw("1"), Clock::new()).unwrap().record.unwrap().dot.seq, 6);
        // A crash right after a clean reopen loses nothing durable either.
        s.sync_wal().unwrap();
        disk.crash();
        drop(s);
        let s = open();
        assert_eq!((s.counter(), s.live_count()), (6, 5));
    }

    #[test]
    fn a_memory_store_never_syncs_on_a_blocking_thread() {
        // The runtime's only blocking thread is taken: a sync sent there
        // would never run, and the writes would not become durable.
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().max_blocking_threads(1).build().unwrap();
        let (release, parked) = std::sync::mpsc::channel::<()>();
        let blocker = rt.spawn_blocking(move || parked.recv());
        let disk = MemoryDisk::new();
        rt.block_on(async {
            let s = Arc::new(Store::open_in_memory(&disk, "a:1", DurabilityMode::Fsync, time::system()).unwrap());
            let (stop, shutdown) = tokio::sync::watch::channel(false);
            let flusher = tokio::spawn(super::super::run_flusher(s.clone(), shutdown));
            for i in 0..5 {
                let w = s.write_local(&format!("k{i}"), raw("1"), Clock::new()).unwrap();
                tokio::time::timeout(Duration::from_secs(2), s.wait_durable(w.generation)).await.unwrap().unwrap();
            }
            assert_eq!(*s.durability.durable_seq().borrow(), 5);
            stop.send(true).unwrap();
            flusher.await.unwrap();
        });
        release.send(()).unwrap();
        rt.block_on(blocker).unwrap().unwrap();
        disk.crash();
        let s = Store::open_in_memory(&disk, "a:1", DurabilityMode::Fsync, time::system()).unwrap();
        assert_eq!((s.counter(), s.live_count()), (5, 5));
    }
}

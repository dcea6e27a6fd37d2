//! The storage engine under the store: an ordered map of byte keys to byte
//! values ([`Engine`], in the shape of toyDB's `storage::Engine`), with two
//! implementations:
//!
//! - [`SledEngine`]: sled, with the settings the store always used (no
//!   background flushing, `HighThroughput`, 256 MiB cache). sled's own error
//!   type stays in here ([`EngineError`] carries its text).
//! - [`MemoryEngine`]: a `BTreeMap` on a [`MemoryDisk`], for the simulator
//!   and unit tests. The disk outlives the stores opened on it and models a
//!   crash: [`MemoryDisk::crash`] keeps what was flushed and drops what was
//!   set since, drops write-ahead log bytes written but not synced, and
//!   releases the disk so a new store can open it.
//!
//! Invariants both engines keep:
//! - Reads see every set and delete made before them (read your writes),
//!   scans are in ascending key order.
//! - After [`Engine::flush`] returns, everything set before it survives a
//!   crash. Nothing is promised about what was set after the last flush
//!   (sled may keep some of it, the memory disk keeps none: the worst case);
//!   the store's write-ahead log (`wal.rs`) is what makes writes durable.
//! - One store at a time: a second open of the same folder or memory disk
//!   fails with [`EngineError::Locked`] while a handle is alive. Dropping
//!   the store releases the lock before the drop returns (for sled, the
//!   drop waits for sled's I/O threads to let go of the lock file, so a
//!   reopen right after a drop does not fail with `WouldBlock`).
//!
//! View-change staging is a **second engine instance** (sled's `staging`
//! tree of the same database, a second map on the memory disk), not a key
//! prefix in the main one: the on-disk layout of existing data folders stays
//! as it was, scans of the main keyspace (commit, snapshots, compaction)
//! never meet staged keys, and flushing staged records (they are durable
//! when the transfer is acknowledged) does not flush the main map in the
//! memory model, which keeps its crash model the strict one.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

/// Errors of a storage engine (sled's are carried as text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("storage engine: {0}")]
    Failed(String),
    /// Another store holds the folder (or memory disk) open.
    #[error("the store is in use by another handle or process: {0}")]
    Locked(String),
    /// The memory disk crashed after this handle opened it: the handle
    /// belongs to a dead process and may not touch the disk again.
    #[error("the memory disk crashed after this store opened it")]
    Crashed,
}

impl From<sled::Error> for EngineError {
    fn from(e: sled::Error) -> Self {
        let text = e.to_string();
        if text.contains("could not acquire lock") { Self::Locked(text) } else { Self::Failed(text) }
    }
}

/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);
/// One op of [`Engine::write_batch`]: a key and its new value (`None` deletes it).
pub type BatchOp = (Vec<u8>, Option<Vec<u8>>);
/// One key/value pair of a scan, or the error that ended it.
pub type ScanItem = Result<Pair, EngineError>;
/// An ascending scan.
pub type Scan<'a> = Box<dyn Iterator<Item = ScanItem> + 'a>;
/// A key range (`(Bound, Bound)` as `BTreeMap::range` takes it).
pub type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// An ordered byte-key/byte-value map that can be made durable.
pub trait Engine: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;

    /// Calls `visit` with `key`'s value, without copying it where the engine
    /// can (sled); returns whether the key exists. The store's hot path
    /// (reading a key's record before writing it) uses this.
    fn get_with(&self, key: &[u8], visit: &mut dyn FnMut(&[u8])) -> Result<bool, EngineError> {
        Ok(self.get(key)?.map(|v| visit(&v)).is_some())
    }

    fn set(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError>;

    fn delete(&self, key: &[u8]) -> Result<(), EngineError>;

    /// Applies `ops` (`None` deletes) as one change where the engine can:
    /// sled applies them atomically; the memory engine applies them under
    /// one lock, so no crash falls in between.
    fn write_batch(&self, ops: &[BatchOp]) -> Result<(), EngineError>;

    /// The pairs in `range`, ascending.
    fn scan(&self, range: KeyRange) -> Scan<'_>;

    /// The pairs whose key starts with `prefix`, ascending.
    fn scan_prefix(&self, prefix: &[u8]) -> Scan<'_> {
        self.scan(prefix_range(prefix))
    }

    /// The last pair in `range`, if any.
    fn last_in(&self, range: KeyRange) -> Result<Option<Pair>, EngineError>;

    /// Makes everything set so far survive a crash (blocking).
    fn flush(&self) -> Result<(), EngineError>;
}

/// The range of keys starting with `prefix`.
pub fn prefix_range(prefix: &[u8]) -> KeyRange {
    let start = Bound::Included(prefix.to_vec());
    // The successor of the prefix: drop trailing 0xff bytes, increment the last.
    let mut end = prefix.to_vec();
    while end.last() == Some(&0xff) {
        end.pop();
    }
    match end.last_mut() {
        Some(last) => {
            *last += 1;
            (start, Bound::Excluded(end))
        }
        None => (start, Bound::Unbounded),
    }
}

// ---------------------------------------------------------------- sled

/// The sled database shared by the main and staging engines. Dropped last,
/// it waits until sled's I/O threads released the folder's lock.
struct SledDb {
    db: Option<sled::Db>,
    lock_file: PathBuf,
}

impl Drop for SledDb {
    fn drop(&mut self) {
        drop(self.db.take());
        wait_unlocked(&self.lock_file);
    }
}

/// Longest wait in a drop for sled's background I/O to release the lock.
const UNLOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits (bounded) until nobody holds the `flock` sled takes on `path`:
/// sled's I/O thread pool can hold the database (and its lock) for a moment
/// after the last handle is dropped.
#[cfg(unix)]
fn wait_unlocked(path: &Path) {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(path) else { return };
    let deadline = std::time::Instant::now() + UNLOCK_WAIT;
    loop {
        // SAFETY: flock on a file descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            // SAFETY: as above; closing the file would release it too.
            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
            return;
        }
        if std::time::Instant::now() >= deadline {
            tracing::warn!(path = %path.display(), "sled still holds its lock after the store was dropped");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[cfg(not(unix))]
fn wait_unlocked(_path: &Path) {}

/// One sled tree.
pub struct SledEngine {
    // Dropped before `db`: a tree keeps sled's page cache (and lock) alive.
    tree: sled::Tree,
    db: Arc<SledDb>,
}

impl SledEngine {
    /// Opens (or creates) the sled database in `dir` and its tree `name`.
    pub fn open(dir: &Path, name: &str) -> Result<SledEngine, EngineError> {
        let db = sled::Config::new()
            .path(dir)
            // The store decides when to flush (checkpoints).
            .flush_every_ms(None)
            // Less write amplification per flush than the default LowSpace
            // mode: +18% durable writes/s in a group-commit micro-benchmark.
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(256 * 1024 * 1024)
            .open()?;
        let tree = db.open_tree(name)?;
        Ok(SledEngine { tree, db: Arc::new(SledDb { db: Some(db), lock_file: dir.join("db") }) })
    }

    /// Another tree of the same database (flushing either flushes both).
    pub fn open_tree(&self, name: &str) -> Result<SledEngine, EngineError> {
        let db = self.db.db.as_ref().ok_or_else(|| EngineError::Failed("the database is closed".into()))?;
        Ok(SledEngine { tree: db.open_tree(name)?, db: self.db.clone() })
    }
}

fn pair((k, v): (sled::IVec, sled::IVec)) -> Pair {
    (k.to_vec(), v.to_vec())
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    fn get_with(&self, key: &[u8], visit: &mut dyn FnMut(&[u8])) -> Result<bool, EngineError> {
        Ok(self.tree.get(key)?.map(|v| visit(&v)).is_some())
    }

    fn set(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        self.tree.insert(key, value)?;
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<(), EngineError> {
        self.tree.remove(key)?;
        Ok(())
    }

    fn write_batch(&self, ops: &[BatchOp]) -> Result<(), EngineError> {
        let mut batch = sled::Batch::default();
        for (k, v) in ops {
            match v {
                Some(v) => batch.insert(k.as_slice(), v.as_slice()),
                None => batch.remove(k.as_slice()),
            }
        }
        Ok(self.tree.apply_batch(batch)?)
    }

    fn scan(&self, range: KeyRange) -> Scan<'_> {
        Box::new(self.tree.range(range).map(|item| item.map(pair).map_err(EngineError::from)))
    }

    fn last_in(&self, range: KeyRange) -> Result<Option<Pair>, EngineError> {
        Ok(self.tree.range(range).next_back().transpose()?.map(pair))
    }

    fn flush(&self) -> Result<(), EngineError> {
        self.tree.flush()?;
        Ok(())
    }
}

// ---------------------------------------------------------------- memory

/// A simulated disk: the store's maps and write-ahead log segments, shared
/// by every store opened on it (one at a time) and surviving them.
#[derive(Clone, Default)]
pub struct MemoryDisk(Arc<Mutex<Disk>>);

impl std::fmt::Debug for MemoryDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0.lock();
        f.debug_struct("MemoryDisk").field("incarnation", &d.incarnation).field("held", &d.held).finish_non_exhaustive()
    }
}

#[derive(Default)]
pub(super) struct Disk {
    /// Raised by every crash: handles of older incarnations are dead.
    incarnation: u64,
    /// Whether a store holds the disk (sled's folder lock).
    held: bool,
    maps: BTreeMap<&'static str, Map>,
    pub(super) wal: BTreeMap<u64, Segment>,
}

#[derive(Default)]
struct Map {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Since the last flush, each changed key's value before its first
    /// change (`None`: it did not exist). A crash puts these back.
    undo: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Map {
    fn set(&mut self, key: &[u8], value: Option<&[u8]>) {
        let old = match value {
            Some(v) => self.data.insert(key.to_vec(), v.to_vec()),
            None => self.data.remove(key),
        };
        if !self.undo.contains_key(key) {
            self.undo.insert(key.to_vec(), old);
        }
    }

    fn crash(&mut self) {
        for (k, old) in std::mem::take(&mut self.undo) {
            match old {
                Some(v) => self.data.insert(k, v),
                None => self.data.remove(&k),
            };
        }
    }
}

/// A write-ahead log segment on the memory disk.
#[derive(Default)]
pub struct Segment {
    pub(super) synced: Vec<u8>,
    /// Written, not synced yet: lost at a crash.
    pub(super) unsynced: Vec<u8>,
}

/// The main map's name on a memory disk.
pub(super) const MAIN: &str = "causalkv";
/// The staging map's name on a memory disk.
pub(super) const STAGING: &str = "staging";

impl MemoryDisk {
    pub fn new() -> Self {
        Self::default()
    }

    /// The process using the disk dies: what was flushed (maps) or synced
    /// (write-ahead log) stays, the rest is lost, and the disk is free for
    /// the next store. Handles opened before keep failing with
    /// [`EngineError::Crashed`].
    pub fn crash(&self) {
        let mut d = self.0.lock();
        d.incarnation += 1;
        d.held = false;
        for map in d.maps.values_mut() {
            map.crash();
        }
        for segment in d.wal.values_mut() {
            segment.unsynced.clear();
        }
    }

    /// Whether a live store holds the disk.
    pub fn is_held(&self) -> bool {
        self.0.lock().held
    }

    /// Takes the disk for one store: fails while another one holds it.
    pub(super) fn lock(&self) -> Result<DiskLock, EngineError> {
        let mut d = self.0.lock();
        if d.held {
            return Err(EngineError::Locked("memory disk".into()));
        }
        d.held = true;
        Ok(DiskLock { disk: self.clone(), incarnation: d.incarnation })
    }

    /// Runs `f` on the disk if `lock`'s incarnation is still alive.
    pub(super) fn with<R>(&self, incarnation: u64, f: impl FnOnce(&mut Disk) -> R) -> Result<R, EngineError> {
        let mut d = self.0.lock();
        if d.incarnation != incarnation {
            return Err(EngineError::Crashed);
        }
        Ok(f(&mut d))
    }
}

/// A store's hold on a memory disk (crate-internal); released on drop (unless the disk
/// crashed since, which released it already).
pub struct DiskLock {
    pub(super) disk: MemoryDisk,
    pub(super) incarnation: u64,
}

impl Drop for DiskLock {
    fn drop(&mut self) {
        let mut d = self.disk.0.lock();
        if d.incarnation == self.incarnation {
            d.held = false;
        }
    }
}

/// One map of a [`MemoryDisk`].
pub struct MemoryEngine {
    lock: Arc<DiskLock>,
    map: &'static str,
}

/// Pairs a memory scan copies per lock.
const SCAN_CHUNK: usize = 256;

impl MemoryEngine {
    pub(super) fn new(lock: Arc<DiskLock>, map: &'static str) -> Self {
        Self { lock, map }
    }

    fn with_map<R>(&self, f: impl FnOnce(&mut Map) -> R) -> Result<R, EngineError> {
        self.lock.disk.with(self.lock.incarnation, |d| f(d.maps.entry(self.map).or_default()))
    }
}

impl Engine for MemoryEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.with_map(|m| m.data.get(key).cloned())
    }

    fn set(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        self.with_map(|m| m.set(key, Some(value)))
    }

    fn delete(&self, key: &[u8]) -> Result<(), EngineError> {
        self.with_map(|m| m.set(key, None))
    }

    fn write_batch(&self, ops: &[BatchOp]) -> Result<(), EngineError> {
        self.with_map(|m| {
            for (k, v) in ops {
                m.set(k, v.as_deref());
            }
        })
    }

    fn scan(&self, range: KeyRange) -> Scan<'_> {
        Box::new(MemoryScan { engine: self, next: range.0, end: range.1, buf: VecDeque::new(), done: false })
    }

    fn last_in(&self, range: KeyRange) -> Result<Option<Pair>, EngineError> {
        if range_is_empty(&range) {
            return Ok(None);
        }
        self.with_map(|m| m.data.range(range).next_back().map(|(k, v)| (k.clone(), v.clone())))
    }

    fn flush(&self) -> Result<(), EngineError> {
        self.with_map(|m| m.undo.clear())
    }
}

/// `BTreeMap::range` panics on a range whose start is after its end.
fn range_is_empty(range: &KeyRange) -> bool {
    match range {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s) | Bound::Excluded(s), Bound::Excluded(e)) | (Bound::Excluded(s), Bound::Included(e)) => s >= e,
        _ => false,
    }
}

/// A scan of a memory map that copies a chunk per lock, so the caller may
/// write to the engine between items.
struct MemoryScan<'a> {
    engine: &'a MemoryEngine,
    next: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    buf: VecDeque<Pair>,
    done: bool,
}

impl Iterator for MemoryScan<'_> {
    type Item = ScanItem;

    fn next(&mut self) -> Option<ScanItem> {
        if self.buf.is_empty() && !self.done {
            let range = (self.next.clone(), self.end.clone());
            if range_is_empty(&range) {
                self.done = true;
                return None;
            }
            let chunk = self
                .engine
                .with_map(|m| m.data.range(range).take(SCAN_CHUNK).map(|(k, v)| (k.clone(), v.clone())).collect::<VecDeque<_>>());
            match chunk {
                Ok(chunk) => {
                    self.done = chunk.len() < SCAN_CHUNK;
                    if let Some((k, _)) = chunk.back() {
                        self.next = Bound::Excluded(k.clone());
                    }
                    self.buf = chunk;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        self.buf.pop_front().map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_memory(disk: &MemoryDisk) -> MemoryEngine {
        MemoryEngine::new(Arc::new(disk.lock().unwrap()), MAIN)
    }

    fn keys(scan: Scan<'_>) -> Vec<Vec<u8>> {
        scan.map(|i| i.unwrap().0).collect()
    }

    fn exercise(e: &dyn Engine) {
        e.set(b"a1", b"x").unwrap();
        e.set(b"a2", b"y").unwrap();
        e.set(b"b", b"z").unwrap();
        e.set(&[b'a', 0xff], b"w").unwrap();
        assert_eq!(e.get(b"a1").unwrap().as_deref(), Some(&b"x"[..]));
        e.delete(b"a1").unwrap();
        assert_eq!(e.get(b"a1").unwrap(), None);
        assert_eq!(keys(e.scan_prefix(b"a")), vec![b"a2".to_vec(), vec![b'a', 0xff]]);
        assert_eq!(keys(e.scan_prefix(b"")).len(), 3);
        let range = (Bound::Included(b"a".to_vec()), Bound::Excluded(b"b".to_vec()));
        assert_eq!(e.last_in(range).unwrap().map(|p| p.0), Some(vec![b'a', 0xff]));
        let backwards = (Bound::Included(b"b".to_vec()), Bound::Excluded(b"a".to_vec()));
        assert_eq!(e.last_in(backwards).unwrap(), None);
        e.write_batch(&[(b"c".to_vec(), Some(b"1".to_vec())), (b"b".to_vec(), None)]).unwrap();
        assert_eq!(keys(e.scan((Bound::Excluded(b"a2".to_vec()), Bound::Unbounded))), vec![vec![b'a', 0xff], b"c".to_vec()]);
        // Writing while scanning is allowed.
        for i in 0..600u32 {
            e.set(&[b"n".as_slice(), &i.to_be_bytes()].concat(), b"v").unwrap();
        }
        let mut seen = 0;
        for item in e.scan_prefix(b"n") {
            let (k, _) = item.unwrap();
            e.delete(&k).unwrap();
            seen += 1;
        }
        assert_eq!(seen, 600);
        assert_eq!(e.scan_prefix(b"n").count(), 0);
        e.flush().unwrap();
    }

    #[test]
    fn both_engines_behave_alike() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&SledEngine::open(dir.path(), MAIN).unwrap());
        exercise(&open_memory(&MemoryDisk::new()));
    }

    #[test]
    fn a_memory_crash_keeps_only_what_was_flushed() {
        let disk = MemoryDisk::new();
        let e = open_memory(&disk);
        e.set(b"kept", b"1").unwrap();
        e.set(b"changed", b"old").unwrap();
        e.set(b"removed", b"1").unwrap();
        e.flush().unwrap();
        e.set(b"changed", b"new").unwrap();
        e.set(b"changed", b"newer").unwrap();
        e.delete(b"removed").unwrap();
        e.set(b"lost", b"1").unwrap();
        assert!(open_memory_fails(&disk), "one store at a time");
        disk.crash();
        assert_eq!(e.get(b"kept"), Err(EngineError::Crashed), "the dead handle may not touch the disk");
        let e = open_memory(&disk);
        let all: Vec<_> = e.scan_prefix(b"").map(|i| i.unwrap()).collect();
        assert_eq!(
            all,
            vec![(b"changed".to_vec(), b"old".to_vec()), (b"kept".to_vec(), b"1".to_vec()), (b"removed".to_vec(), b"1".to_vec())]
        );
        drop(e);
        assert!(!disk.is_held(), "dropping the handle releases the disk");
    }

    fn open_memory_fails(disk: &MemoryDisk) -> bool {
        matches!(disk.lock(), Err(EngineError::Locked(_)))
    }

    #[test]
    fn a_sled_folder_is_free_as_soon_as_its_engine_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..20u32 {
            let main = SledEngine::open(dir.path(), MAIN).unwrap();
            let staging = main.open_tree(STAGING).unwrap();
            assert!(matches!(SledEngine::open(dir.path(), MAIN), Err(EngineError::Locked(_))));
            main.set(&i.to_be_bytes(), &[0; 4096]).unwrap();
            staging.set(b"s", b"1").unwrap();
            main.flush().unwrap();
            drop(main);
            drop(staging);
        }
        assert_eq!(SledEngine::open(dir.path(), MAIN).unwrap().scan_prefix(b"").count(), 20);
    }
}

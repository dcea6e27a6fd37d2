//! The write-ahead log: what makes a write durable. Every change to the main
//! engine (`engine.rs`: sled, or a memory disk) is a [`WalBatch`]: applied to
//! the engine op by op (not flushed) and appended, as one framed entry, to
//! the log buffer; the group-commit flusher writes the buffer to the current
//! segment with one `fdatasync` for every batch waiting. The engine itself is
//! flushed only at checkpoints, off the write path (docs/decisions.md "Own
//! write-ahead log").
//!
//! Invariants kept here:
//! - Entries reach the file in the order they were appended (their `lsn`
//!   order), because taking the buffer and writing it happen under one lock.
//! - A checkpoint first rotates to a new segment, then records that segment
//!   in the engine, then flushes it: every entry in older segments was
//!   applied to the engine before the marker, so after the flush those
//!   segments can go.
//! - Recovery replays every entry from the checkpoint segment on, in order.
//!   Replaying an entry the engine already holds is harmless: each entry sets keys
//!   to fixed values, so re-applying a suffix of the history in order ends in
//!   the same state.
//! - A segment is read up to its first entry that is torn or fails its CRC
//!   (a crash mid-write, or a write that failed and was retried in the next
//!   segment); entries seen twice are skipped by `lsn`, a gap is an error.
//!
//! - Segments live in a folder ([`WalDir::Files`], the node) or on a
//!   [`MemoryDisk`](super::MemoryDisk) ([`WalDir::Memory`], the simulator),
//!   with one crash model: bytes written and synced survive, bytes appended
//!   or written but not synced are lost. The file path is the hot path of
//!   durable writes: choosing between the two is one `match` per sync, with
//!   no allocation or lock added.
//!
//! Frame: `len: u32 | crc32(payload): u32 | payload`, payload =
//! `lsn: u64 | ops`, op = `b'I' | klen: u32 | key | vlen: u32 | value` or
//! `b'R' | klen: u32 | key`; integers little-endian.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use parking_lot::Mutex;

use super::engine::{DiskLock, Engine, EngineError, Segment};

const INSERT: u8 = b'I';
const REMOVE: u8 = b'R';
/// An insert that is only in the log until the next checkpoint writes it to
/// sled (replay applies it like any insert).
const LOG_ONLY_INSERT: u8 = b'C';
const FRAME_HEADER: usize = 8;
/// Longest entry recovery accepts; a longer length field is garbage.
const MAX_FRAME: usize = 1 << 30;

/// One change of the main tree that must survive a crash as a whole: the
/// encoded ops of its log entry. sled batches are not used: each one makes
/// sled write out its I/O buffer (one `pwrite` + `sync_file_range` per
/// batch, the cost that dominated writes before this log existed); the log
/// replays a whole entry after a crash, so atomicity comes from here.
#[derive(Default)]
pub struct WalBatch {
    ops: Vec<u8>,
}

/// One decoded op: a key, its new value (`None` removes the key), and
/// whether it is applied to sled only at replay (log-only).
pub type Op<'a> = (&'a [u8], Option<&'a [u8]>, bool);

impl WalBatch {
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops.push(INSERT);
        put_bytes(&mut self.ops, key.as_ref());
        put_bytes(&mut self.ops, value.as_ref());
    }

    /// An insert sled gets only from the next checkpoint or a replay: for
    /// values the store keeps in memory and checkpoints itself (the own seq
    /// counter), so that the write path saves a sled insert.
    pub fn insert_log_only(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops.push(LOG_ONLY_INSERT);
        put_bytes(&mut self.ops, key.as_ref());
        put_bytes(&mut self.ops, value.as_ref());
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.ops.push(REMOVE);
        put_bytes(&mut self.ops, key.as_ref());
    }

    pub fn ops(&self) -> Vec<Op<'_>> {
        // Built by insert/remove above, so always decodable.
        decode_ops(&self.ops).unwrap_or_default()
    }

    pub fn encoded(&self) -> &[u8] {
        &self.ops
    }
}

/// Applies `ops` to `engine` in order; log-only ops only when `replaying`.
pub fn apply_ops(engine: &dyn Engine, ops: &[Op<'_>], replaying: bool) -> Result<(), EngineError> {
    for (key, value, log_only) in ops {
        if *log_only && !replaying {
            continue;
        }
        match value {
            Some(v) => engine.set(key, v)?,
            None => engine.delete(key)?,
        };
    }
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Keys and values are bounded far below 4 GiB by the API's body limit.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Entries appended but not yet written, with what they cover.
struct Buffer {
    bytes: Vec<u8>,
    entries: u64,
    next_lsn: u64,
    /// Store generation and own seq counter after the last appended entry.
    generation: u64,
    counter: u64,
}

struct Writer {
    file: SegmentFile,
    segment: u64,
    len: u64,
    /// Set after a failed write: the file's tail is unknown, so the retry
    /// goes to a fresh segment.
    broken: bool,
}

/// What one sync made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Synced {
    pub generation: u64,
    pub counter: u64,
    /// Log entries this sync wrote (the group-commit batch size).
    pub entries: u64,
}

pub struct Wal {
    dir: WalDir,
    buffer: Mutex<Buffer>,
    writer: Mutex<Writer>,
    /// A chunk taken from the buffer whose write failed, retried first.
    retry: Mutex<Option<(Vec<u8>, Synced)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log I/O in {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("write-ahead log {path} misses entries {expected}..{found}: acknowledged writes may be lost")]
    Gap { path: PathBuf, expected: u64, found: u64 },
    #[error("write-ahead log {path}: undecodable entry {lsn}")]
    BadEntry { path: PathBuf, lsn: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_owned(), source }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.wal"))
}

/// Where the log's segments live.
pub enum WalDir {
    /// Segment files in a folder (a node).
    Files(PathBuf),
    /// Segments on a memory disk (the simulator, tests).
    Memory(Arc<DiskLock>),
}

/// The segment the log writes to.
enum SegmentFile {
    Disk(File),
    /// A segment of the memory disk, by number.
    Memory(u64),
}

/// The name a memory segment has in errors.
fn memory_path(segment: u64) -> PathBuf {
    PathBuf::from(format!("memory:{segment:020}.wal"))
}

impl WalDir {
    /// Runs `f` on the memory disk's segments; a disk that crashed since
    /// this store opened it is an I/O error.
    fn memory<R>(lock: &DiskLock, segment: u64, f: impl FnOnce(&mut BTreeMap<u64, Segment>) -> R) -> Result<R, WalError> {
        lock.disk
            .with(lock.incarnation, |d| f(&mut d.wal))
            .map_err(|e| WalError::Io { path: memory_path(segment), source: io::Error::other(e) })
    }

    fn prepare(&self) -> Result<(), WalError> {
        match self {
            WalDir::Files(dir) => fs::create_dir_all(dir).map_err(io_err(dir)),
            WalDir::Memory(_) => Ok(()),
        }
    }

    /// Segment numbers present, ascending.
    fn segments(&self) -> Result<Vec<u64>, WalError> {
        match self {
            WalDir::Files(dir) => segments(dir),
            WalDir::Memory(lock) => Self::memory(lock, 0, |wal| wal.keys().copied().collect()),
        }
    }

    fn path(&self, segment: u64) -> PathBuf {
        match self {
            WalDir::Files(dir) => segment_path(dir, segment),
            WalDir::Memory(_) => memory_path(segment),
        }
    }

    /// Creates (or empties) segment `segment`, durably.
    fn create_segment(&self, segment: u64) -> Result<SegmentFile, WalError> {
        match self {
            WalDir::Files(dir) => create_segment(dir, segment).map(SegmentFile::Disk),
            WalDir::Memory(lock) => {
                Self::memory(lock, segment, |wal| wal.insert(segment, Segment::default()))?;
                Ok(SegmentFile::Memory(segment))
            }
        }
    }

    /// Everything written to a segment (synced or not, as a file read sees it).
    fn read(&self, segment: u64) -> Result<Vec<u8>, WalError> {
        match self {
            WalDir::Files(dir) => {
                let path = segment_path(dir, segment);
                fs::read(&path).map_err(io_err(&path))
            }
            WalDir::Memory(lock) => Self::memory(lock, segment, |wal| {
                wal.get(&segment).map(|s| [s.synced.as_slice(), &s.unsynced].concat()).unwrap_or_default()
            }),
        }
    }

    fn remove(&self, segment: u64) -> Result<(), WalError> {
        match self {
            WalDir::Files(dir) => {
                let path = segment_path(dir, segment);
                fs::remove_file(&path).map_err(io_err(&path))
            }
            WalDir::Memory(lock) => Self::memory(lock, segment, |wal| {
                wal.remove(&segment);
            }),
        }
    }
}

/// Segment numbers present in `dir`, ascending.
fn segments(dir: &Path) -> Result<Vec<u64>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        if let Some(n) = name.to_str().and_then(|n| n.strip_suffix(".wal")).and_then(|n| n.parse().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

fn create_segment(dir: &Path, segment: u64) -> Result<File, WalError> {
    let path = segment_path(dir, segment);
    let file = OpenOptions::new().create(true).truncate(true).write(true).open(&path).map_err(io_err(&path))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Replays every entry in segments numbered `from` and above, in order,
/// through `apply`. Returns the highest segment seen and the next lsn.
pub fn replay(
    dir: &WalDir,
    from: u64,
    mut apply: impl FnMut(&[Op<'_>]) -> Result<(), EngineError>,
) -> Result<(u64, u64, usize), ReplayError> {
    dir.prepare()?;
    let mut last_segment = from;
    let mut expected: Option<u64> = None;
    let mut applied = 0;
    for segment in dir.segments()?.into_iter().filter(|s| *s >= from) {
        last_segment = segment;
        let path = dir.path(segment);
        let data = dir.read(segment)?;
        let mut at = 0;
        while let Some((payload, next)) = frame_at(&data, at) {
            at = next;
            let Some(lsn) = payload.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default())) else {
                break;
            };
            match expected {
                Some(e) if lsn < e => continue,
                Some(e) if lsn > e => return Err(WalError::Gap { path, expected: e, found: lsn }.into()),
                _ => {}
            }
            let ops = decode_ops(&payload[8..]).ok_or_else(|| WalError::BadEntry { path: path.clone(), lsn })?;
            apply(&ops)?;
            applied += 1;
            expected = Some(lsn + 1);
        }
        if at < data.len() {
            tracing::warn!(segment = %path.display(), valid_bytes = at, total_bytes = data.len(), "write-ahead log segment ends in a torn entry");
        }
    }
    Ok((last_segment, expected.unwrap_or(0), applied))
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("replaying the write-ahead log into the storage engine: {0}")]
    Engine(#[from] EngineError),
}

/// The payload of the frame at `at` and where the next frame starts, or
/// `None` when the frame is torn or corrupt.
fn frame_at(data: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let header = data.get(at..at + FRAME_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if !(8..=MAX_FRAME).contains(&len) {
        return None;
    }
    let payload = data.get(at + FRAME_HEADER..at + FRAME_HEADER + len)?;
    (crc32fast::hash(payload) == crc).then_some((payload, at + FRAME_HEADER + len))
}

fn decode_ops(mut ops: &[u8]) -> Option<Vec<Op<'_>>> {
    fn take<'a>(ops: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(ops.get(..4)?.try_into().ok()?) as usize;
        let bytes = ops.get(4..4 + len)?;
        *ops = &ops[4 + len..];
        Some(bytes)
    }
    let mut out = Vec::new();
    while let Some((&tag, rest)) = ops.split_first() {
        ops = rest;
        match tag {
            INSERT | LOG_ONLY_INSERT => {
                let key = take(&mut ops)?;
                out.push((key, Some(take(&mut ops)?), tag == LOG_ONLY_INSERT));
            }
            REMOVE => out.push((take(&mut ops)?, None, false)),
            _ => return None,
        }
    }
    Some(out)
}

impl Wal {
    /// Starts a fresh segment after `last_segment` in `dir`; entries get lsns
    /// from `next_lsn` on. Older segments stay until [`Wal::drop_before`].
    pub fn create(dir: WalDir, last_segment: u64, next_lsn: u64, generation: u64, counter: u64) -> Result<Wal, WalError> {
        let segment = last_segment + 1;
        let file = dir.create_segment(segment)?;
        Ok(Wal {
            dir,
            buffer: Mutex::new(Buffer { bytes: Vec::with_capacity(64 * 1024), entries: 0, next_lsn, generation, counter }),
            writer: Mutex::new(Writer { file, segment, len: 0, broken: false }),
            retry: Mutex::new(None),
        })
    }

    /// Appends one entry (called under the store's state lock, so entries
    /// follow the order in which batches were applied to sled).
    pub fn append(&self, ops: &[u8], generation: u64, counter: u64) {
        let mut buf = self.buffer.lock();
        let lsn = buf.next_lsn;
        buf.next_lsn += 1;
        let len = 8 + ops.len();
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&lsn.to_le_bytes());
        hasher.update(ops);
        buf.bytes.extend_from_slice(&(len as u32).to_le_bytes());
        buf.bytes.extend_from_slice(&hasher.finalize().to_le_bytes());
        buf.bytes.extend_from_slice(&lsn.to_le_bytes());
        buf.bytes.extend_from_slice(ops);
        buf.generation = generation;
        buf.counter = counter;
        buf.entries += 1;
    }

    /// True when appended entries wait to be written.
    pub fn has_unwritten(&self) -> bool {
        !self.buffer.lock().bytes.is_empty() || self.retry.lock().is_some()
    }

    /// Writes everything appended so far and `fdatasync`s it (blocking).
    /// Returns what is now durable, or `None` when nothing was waiting.
    pub fn sync(&self) -> Result<Option<Synced>, WalError> {
        let mut writer = self.writer.lock();
        let mut retry = self.retry.lock();
        let (bytes, synced) = match retry.take() {
            Some(chunk) => chunk,
            None => {
                let mut buf = self.buffer.lock();
                if buf.bytes.is_empty() {
                    return Ok(None);
                }
                let bytes = std::mem::replace(&mut buf.bytes, Vec::with_capacity(64 * 1024));
                let entries = std::mem::take(&mut buf.entries);
                (bytes, Synced { generation: buf.generation, counter: buf.counter, entries })
            }
        };
        match self.write_and_sync(&mut writer, &bytes) {
            Ok(()) => Ok(Some(synced)),
            Err(e) => {
                writer.broken = true;
                *retry = Some((bytes, synced));
                Err(e)
            }
        }
    }

    fn write_and_sync(&self, writer: &mut Writer, bytes: &[u8]) -> Result<(), WalError> {
        if writer.broken {
            self.rotate_locked(writer)?;
        }
        match (&mut writer.file, &self.dir) {
            (SegmentFile::Disk(file), WalDir::Files(dir)) => {
                let path = segment_path(dir, writer.segment);
                file.write_all(bytes).map_err(io_err(&path))?;
                file.sync_data().map_err(io_err(&path))?;
            }
            (SegmentFile::Memory(segment), WalDir::Memory(lock)) => {
                let segment = *segment;
                // Written, then synced: two steps, as with a file.
                WalDir::memory(lock, segment, |wal| wal.entry(segment).or_default().unsynced.extend_from_slice(bytes))?;
                WalDir::memory(lock, segment, |wal| {
                    let s = wal.entry(segment).or_default();
                    let written = std::mem::take(&mut s.unsynced);
                    s.synced.extend_from_slice(&written);
                })?;
            }
            _ => {
                let path = self.dir.path(writer.segment);
                return Err(WalError::Io { path, source: io::Error::other("segment and log folder of different kinds") });
            }
        }
        writer.len += bytes.len() as u64;
        Ok(())
    }

    fn rotate_locked(&self, writer: &mut Writer) -> Result<u64, WalError> {
        let segment = writer.segment + 1;
        writer.file = self.dir.create_segment(segment)?;
        writer.segment = segment;
        writer.len = 0;
        writer.broken = false;
        Ok(segment)
    }

    /// Starts a new segment and returns its number (a checkpoint's first
    /// step: every entry already written is in an older segment).
    pub fn rotate(&self) -> Result<u64, WalError> {
        let mut writer = self.writer.lock();
        self.rotate_locked(&mut writer)
    }

    /// Bytes in the current segment.
    pub fn segment_len(&self) -> u64 {
        self.writer.lock().len
    }

    /// Deletes segments older than `segment` (after a checkpoint).
    pub fn drop_before(&self, segment: u64) -> Result<(), WalError> {
        for old in self.dir.segments()?.into_iter().filter(|s| *s < segment) {
            self.dir.remove(old)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryDisk;
    use crate::store::engine::{MAIN, MemoryEngine};

    fn batch(ops: &[(&str, Option<&str>)]) -> WalBatch {
        let mut b = WalBatch::default();
        for (k, v) in ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        b
    }

    fn files(dir: &Path) -> WalDir {
        WalDir::Files(dir.to_owned())
    }

    fn memory_engine() -> MemoryEngine {
        MemoryEngine::new(Arc::new(MemoryDisk::new().lock().unwrap()), MAIN)
    }

    fn try_replay_from(dir: &WalDir, from: u64) -> Result<(MemoryEngine, u64, u64, usize), ReplayError> {
        let engine = memory_engine();
        let (seg, lsn, n) = replay(dir, from, |ops| apply_ops(&engine, ops, true))?;
        Ok((engine, seg, lsn, n))
    }

    fn try_replay_into(dir: &Path, from: u64) -> Result<(MemoryEngine, u64, u64, usize), ReplayError> {
        try_replay_from(&files(dir), from)
    }

    fn replay_into(dir: &Path, from: u64) -> (MemoryEngine, u64, u64, usize) {
        try_replay_into(dir, from).unwrap()
    }

    fn get(engine: &MemoryEngine, k: &str) -> Option<String> {
        engine.get(k.as_bytes()).unwrap().map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn synced_entries_replay_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::create(files(dir.path()), 0, 0, 0, 0).unwrap();
        wal.append(batch(&[("a", Some("1")), ("b", Some("2"))]).encoded(), 1, 1);
        wal.append(batch(&[("a", None)]).encoded(), 2, 2);
        assert_eq!(wal.sync().unwrap(), Some(Synced { generation: 2, counter: 2, entries: 2 }));
        assert_eq!(wal.sync().unwrap(), None, "nothing left to write");
        wal.append(batch(&[("c", Some("3"))]).encoded(), 3, 2);
        wal.sync().unwrap();
        let (tree, seg, lsn, n) = replay_into(dir.path(), 0);
        assert_eq!((seg, lsn, n), (1, 3, 3));
        assert_eq!(get(&tree, "a"), None);
        assert_eq!(get(&tree, "b").as_deref(), Some("2"));
        assert_eq!(get(&tree, "c").as_deref(), Some("3"));
    }

    #[test]
    fn a_torn_tail_is_ignored_and_a_gap_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::create(files(dir.path()), 0, 10, 0, 0).unwrap();
        wal.append(batch(&[("a", Some("1"))]).encoded(), 1, 1);
        wal.append(batch(&[("b", Some("2"))]).encoded(), 2, 2);
        wal.sync().unwrap();
        let path = segment_path(dir.path(), 1);
        let full = fs::read(&path).unwrap();
        fs::write(&path, &full[..full.len() - 3]).unwrap();
        let (tree, _, lsn, n) = replay_into(dir.path(), 0);
        assert_eq!((lsn, n), (11, 1));
        assert_eq!(get(&tree, "b"), None);
        // The retried chunk lands in the next segment: duplicates are skipped.
        fs::write(segment_path(dir.path(), 2), &full).unwrap();
        let (tree, seg, lsn, n) = replay_into(dir.path(), 0);
        assert_eq!((seg, lsn, n), (2, 12, 2));
        assert_eq!(get(&tree, "b").as_deref(), Some("2"));
        // A segment that skips entries is refused.
        let wal3 = Wal::create(files(dir.path()), 2, 20, 0, 0).unwrap();
        wal3.append(batch(&[("z", Some("9"))]).encoded(), 3, 3);
        wal3.sync().unwrap();
        let Err(err) = try_replay_into(dir.path(), 0) else { panic!("a gap must be an error") };
        assert!(err.to_string().contains("misses entries 12..20"), "{err}");
    }

    #[test]
    fn corrupt_bytes_stop_the_segment_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::create(files(dir.path()), 0, 0, 0, 0).unwrap();
        wal.append(batch(&[("a", Some("1"))]).encoded(), 1, 1);
        wal.sync().unwrap();
        let path = segment_path(dir.path(), 1);
        let mut data = fs::read(&path).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        data.extend_from_slice(&[0xff; 64]);
        fs::write(&path, &data).unwrap();
        let (tree, _, _, n) = replay_into(dir.path(), 0);
        assert_eq!(n, 0);
        assert_eq!(get(&tree, "a"), None);
    }

    #[test]
    fn checkpointed_segments_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::create(files(dir.path()), 0, 0, 0, 0).unwrap();
        wal.append(batch(&[("a", Some("1"))]).encoded(), 1, 1);
        wal.sync().unwrap();
        let next = wal.rotate().unwrap();
        wal.append(batch(&[("b", Some("2"))]).encoded(), 2, 2);
        wal.sync().unwrap();
        wal.drop_before(next).unwrap();
        assert_eq!(segments(dir.path()).unwrap(), vec![2]);
        let (tree, _, _, n) = replay_into(dir.path(), next);
        assert_eq!(n, 1);
        assert_eq!(get(&tree, "b").as_deref(), Some("2"));
    }
}

#[cfg(test)]
mod memory_tests {
    use super::*;
    use crate::store::MemoryDisk;
    use crate::store::engine::{MAIN, MemoryEngine};

    fn put(k: &str, v: &str) -> WalBatch {
        let mut b = WalBatch::default();
        b.insert(k, v);
        b
    }

    fn replayed(disk: &MemoryDisk) -> (Vec<crate::store::engine::Pair>, u64, u64, usize) {
        let lock = Arc::new(disk.lock().unwrap());
        let engine = MemoryEngine::new(lock.clone(), MAIN);
        let (seg, lsn, n) = replay(&WalDir::Memory(lock), 0, |ops| apply_ops(&engine, ops, true)).unwrap();
        (engine.scan_prefix(b"").map(|i| i.unwrap()).collect(), seg, lsn, n)
    }

    #[test]
    fn a_crash_keeps_synced_entries_and_loses_the_rest() {
        let disk = MemoryDisk::new();
        let lock = Arc::new(disk.lock().unwrap());
        let wal = Wal::create(WalDir::Memory(lock.clone()), 0, 0, 0, 0).unwrap();
        wal.append(put("a", "1").encoded(), 1, 1);
        wal.append(put("b", "2").encoded(), 2, 2);
        assert_eq!(wal.sync().unwrap(), Some(Synced { generation: 2, counter: 2, entries: 2 }));
        let next = wal.rotate().unwrap();
        wal.append(put("c", "3").encoded(), 3, 3);
        wal.sync().unwrap();
        wal.drop_before(next).unwrap();
        wal.append(put("lost", "4").encoded(), 4, 4);
        assert!(wal.has_unwritten());
        disk.crash();
        assert!(wal.sync().is_err(), "the dead process's log may not write to the disk");
        drop((wal, lock));
        let (pairs, seg, lsn, n) = replayed(&disk);
        assert_eq!(pairs, vec![(b"c".to_vec(), b"3".to_vec())]);
        assert_eq!((seg, lsn, n), (2, 3, 1));
    }

    #[test]
    fn bytes_written_but_not_synced_are_lost() {
        let disk = MemoryDisk::new();
        let lock = Arc::new(disk.lock().unwrap());
        let wal = Wal::create(WalDir::Memory(lock.clone()), 0, 0, 0, 0).unwrap();
        wal.append(put("a", "1").encoded(), 1, 1);
        wal.sync().unwrap();
        // A write that reached the disk without its sync (a crash between the two).
        WalDir::memory(&lock, 1, |w| w.entry(1).or_default().unsynced.extend_from_slice(b"partial")).unwrap();
        assert_eq!(WalDir::Memory(lock.clone()).read(1).unwrap().len(), wal.segment_len() as usize + 7);
        disk.crash();
        drop((wal, lock));
        let (pairs, _, lsn, n) = replayed(&disk);
        assert_eq!((pairs.len(), lsn, n), (1, 1, 1));
    }
}

//! Key encoding in the main engine's single keyspace (the sled tree
//! `causalkv`, or the memory disk's main map).

pub const RECORD: u8 = b'r';
pub const LOG: u8 = b'l';
pub const META: u8 = b'm';

pub fn record(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(RECORD);
    k.extend_from_slice(key.as_bytes());
    k
}

/// `l <origin> 0x00 <seq big-endian>`: entries of one origin sort by seq.
pub fn log(origin: &str, seq: u64) -> Vec<u8> {
    let mut k = log_prefix(origin);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn log_prefix(origin: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + origin.len() + 8);
    k.push(LOG);
    k.extend_from_slice(origin.as_bytes());
    k.push(0);
    k
}

pub fn meta(name: &str) -> Vec<u8> {
    let mut k = vec![META];
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn applied(origin: &str) -> Vec<u8> {
    meta(&format!("applied/{origin}"))
}

pub const COUNTER: &str = "counter";
pub const EPOCH: &str = "epoch";
pub const VIEW: &str = "view";
/// The write-ahead log segment recovery starts from (see `wal.rs`).
pub const WAL_CHECKPOINT: &str = "wal_checkpoint";
pub const APPLIED_PREFIX: &str = "applied/";

pub const TOMBSTONE: u8 = b't';

/// `t <origin> 0x00 <seq big-endian>` -> key: tombstones by dot, for purging.
pub fn tombstone(origin: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + origin.len() + 8);
    k.push(TOMBSTONE);
    k.extend_from_slice(origin.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn log_floor(origin: &str) -> Vec<u8> {
    meta(&format!("{LOG_FLOOR_PREFIX}{origin}"))
}

pub const LOG_FLOOR_PREFIX: &str = "log_floor/";

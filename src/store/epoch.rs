//! Staging and the epoch switch of a view change (the store's side of
//! `viewchange`): records sent to this node for a change in progress wait in
//! the staging area, invisible, until the change commits or aborts;
//! `commit_epoch` enters the new epoch in one write-ahead log entry.
//!
//! Invariants: staged records never reach the main keyspace before commit;
//! a commit keeps exactly the live records this node owns under the new
//! view (its own or staged, last writer wins) and restarts the causal
//! bookkeeping (counter, applied clock, logs, tombstones) at once, under
//! the state lock; an abort drops the staged records and nothing else.
//! `commit_epoch` scans every record and syncs: callers off the async
//! runtime run it with `spawn_blocking` (see `viewchange::participant`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::keys;
use super::record::Record;
use super::state::{Store, StoreError, refuse_whole};
use super::wal::WalBatch;
use crate::causal::Clock;

impl Store {
    /// Keeps records sent for view change `change` until it commits or
    /// aborts. Records the clock guard refuses fail the whole transfer.
    pub fn stage(&self, change: &str, records: &[Record]) -> Result<(), StoreError> {
        refuse_whole(&mut self.state.lock(), records, self.clock.now_ms())?;
        let batch: Vec<_> = records.iter().map(|r| (staging_key(change, &r.key), Some(r.encode()))).collect();
        self.staging.write_batch(&batch)?;
        self.staging.flush()?;
        Ok(())
    }

    /// Drops whatever was staged for view change `change` (abort).
    pub fn discard_stage(&self, change: &str) -> Result<(), StoreError> {
        let mut batch = Vec::new();
        for item in self.staging.scan_prefix(&staging_prefix(change)) {
            batch.push((item?.0, None));
        }
        self.staging.write_batch(&batch)?;
        Ok(())
    }

    /// Drops staged records of every change but `keep` (stale ones after a
    /// restart or a superseded change).
    pub fn discard_other_stages(&self, keep: Option<&str>) -> Result<(), StoreError> {
        let keep = keep.map(staging_prefix);
        let mut batch = Vec::new();
        for item in self.staging.scan_prefix(&[]) {
            let (k, _) = item?;
            if keep.as_ref().is_none_or(|p| !k.starts_with(p)) {
                batch.push((k, None));
            }
        }
        self.staging.write_batch(&batch)?;
        Ok(())
    }

    /// Enters `new_epoch` atomically: merges the records staged for `change`,
    /// keeps only live records of keys this node owns under the new view,
    /// and restarts the causal bookkeeping (counter, applied clock, logs,
    /// tombstones) for the new epoch. Returns the live-key count.
    pub fn commit_epoch(
        &self,
        change: &str,
        new_epoch: u64,
        view_json: &[u8],
        owns: impl Fn(&str) -> bool,
        keeps_log: bool,
    ) -> Result<u64, StoreError> {
        let mut st = self.state.lock();
        let mut batch = WalBatch::default();
        let mut kept: HashMap<String, Record> = HashMap::new();
        for item in self.engine.scan_prefix(&[keys::RECORD]) {
            let (k, v) = item?;
            let record = Record::decode(&v)?;
            if record.is_live() && owns(&record.key) {
                kept.insert(record.key.clone(), record);
            } else {
                batch.remove(k);
            }
        }
        for item in self.staging.scan_prefix(&staging_prefix(change)) {
            let (_, v) = item?;
            let record = Record::decode(&v)?;
            if !record.is_live() || !owns(&record.key) {
                continue;
            }
            if kept.get(&record.key).is_none_or(|current| record.wins_over(current)) {
                st.hlc.observe(record.hlc);
                batch.insert(keys::record(&record.key), record.encode());
                kept.insert(record.key.clone(), record);
            }
        }
        for prefix in [vec![keys::LOG], vec![keys::TOMBSTONE], keys::meta(keys::APPLIED_PREFIX), keys::meta(keys::LOG_FLOOR_PREFIX)] {
            for item in self.engine.scan_prefix(&prefix) {
                batch.remove(item?.0);
            }
        }
        batch.insert(keys::meta(keys::COUNTER), 0u64.to_be_bytes());
        batch.insert(keys::meta(keys::EPOCH), new_epoch.to_be_bytes());
        batch.insert(keys::meta(keys::VIEW), view_json);
        st.counter = 0;
        self.apply_logged(&mut st, batch)?;
        st.applied = Clock::new();
        st.pending.clear();
        st.pending_len = 0;
        st.log_floor = Clock::new();
        self.outbox.clear();
        st.live = kept.len() as u64;
        self.epoch.store(new_epoch, Ordering::Release);
        self.keeps_log.store(keeps_log, Ordering::Release);
        drop(st);
        self.discard_stage(change)?;
        self.flush()?;
        self.gate.notify();
        Ok(kept.len() as u64)
    }
}

pub(super) fn staging_prefix(change: &str) -> Vec<u8> {
    let mut k = change.as_bytes().to_vec();
    k.push(0);
    k
}

fn staging_key(change: &str, key: &str) -> Vec<u8> {
    let mut k = staging_prefix(change);
    k.extend_from_slice(key.as_bytes());
    k
}

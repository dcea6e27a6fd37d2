//! The node side of a view change (messages and coordinator in `viewchange::protocol`): write
//! admission (writes queue while a change is prepared), each step's local
//! work, the coordinator entry point, and catching up after a missed commit.
//!
//! Invariants: between prepare and commit/abort no write is taken (writes
//! wait, bounded); nothing staged is visible before commit; a commit is
//! applied atomically in the store (merge staged, drop non-owned keys, new
//! epoch, persisted view); a node paused longer than `PAUSE_LIMIT` without a
//! decision aborts by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{Notify, watch};

use super::protocol::{self as viewchange, Committed, PAUSE_LIMIT, Proposal, Receive, Step, TRANSFER_BATCH};
use crate::gossip::GossipError;
use crate::node::Node;
use crate::shard::{ShardMap, View};
use crate::store::{Record, StoreError};

/// How long writes in flight may take to finish when a change is prepared.
const DRAIN_BOUND: Duration = Duration::from_secs(4);
/// How often a node checks for a missed commit or a stale pause.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ChangeFail {
    #[error("this node is at epoch {ours}, the change starts from epoch {theirs}")]
    WrongEpoch { ours: u64, theirs: u64 },
    #[error("another view change ({0}) is in progress")]
    Busy(String),
    #[error("no view change {0} is prepared here")]
    NotPrepared(String),
    #[error("writes in flight did not finish in time")]
    Drain,
    #[error(transparent)]
    Gossip(#[from] GossipError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Pending {
    proposal: Proposal,
    since: Instant,
}

/// Write admission and the change in progress.
pub struct ChangeState {
    pending: Mutex<Option<Pending>>,
    paused: watch::Sender<bool>,
    inflight: AtomicUsize,
    idle: Notify,
}

impl Default for ChangeState {
    fn default() -> Self {
        Self { pending: Mutex::new(None), paused: watch::Sender::new(false), inflight: AtomicUsize::new(0), idle: Notify::new() }
    }
}

/// Held while a write is taken; a prepare waits until none is held.
pub struct WriteGuard<'a>(&'a ChangeState);

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl ChangeState {
    /// Waits (up to `bound`) until writes are not paused, then admits one.
    pub async fn admit_write(&self, bound: Duration) -> Option<WriteGuard<'_>> {
        let deadline = tokio::time::Instant::now() + bound;
        let mut rx = self.paused.subscribe();
        loop {
            if tokio::time::timeout_at(deadline, rx.wait_for(|p| !*p)).await.is_err() {
                return None;
            }
            self.inflight.fetch_add(1, Ordering::AcqRel);
            let guard = WriteGuard(self);
            if !*self.paused.borrow() {
                return Some(guard);
            }
            drop(guard);
        }
    }

    /// Waits (up to `bound`) until writes are not paused.
    pub async fn wait_unpaused(&self, bound: Duration) -> bool {
        let mut rx = self.paused.subscribe();
        tokio::time::timeout(bound, rx.wait_for(|p| !*p)).await.is_ok()
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// The nodes of the old and new views of the change prepared here (none
    /// when no change is prepared: an aborted proposal extends nothing).
    pub fn proposed_nodes(&self) -> Vec<String> {
        match &*self.pending.lock() {
            Some(p) => p.proposal.old.nodes.iter().chain(&p.proposal.new.nodes).cloned().collect(),
            None => Vec::new(),
        }
    }

    async fn drain(&self, bound: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let idle = self.idle.notified();
            if self.inflight.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.inflight.load(Ordering::Acquire) == 0;
            }
        }
    }

    fn resume(&self) {
        self.paused.send_replace(false);
    }
}

fn change_id(me: &str, epoch: u64) -> String {
    format!("{me}/{epoch}/{}", uuid::Uuid::new_v4())
}

impl Node {
    /// Enters `view`'s epoch in the store (it scans every record and syncs:
    /// off the runtime, see `Store::off_runtime`).
    async fn commit_epoch(&self, change: &str, view: &View, view_json: Vec<u8>) -> Result<u64, StoreError> {
        let (owns, keeps_log) = (self.owns_under(view), has_peers(view, self.me()));
        let (change, epoch) = (change.to_owned(), view.epoch);
        self.store.off_runtime(move |s| s.commit_epoch(&change, epoch, &view_json, owns, keeps_log)).await
    }

    fn owns_under(&self, view: &View) -> impl Fn(&str) -> bool + use<> {
        let map = ShardMap::new(view.clone(), self.me());
        move |key: &str| map.is_replica(map.shard_of(key))
    }

    fn check_prepared(&self, change: &str) -> Result<Proposal, ChangeFail> {
        match &*self.change.pending.lock() {
            Some(p) if p.proposal.change == change => Ok(p.proposal.clone()),
            _ => Err(ChangeFail::NotPrepared(change.to_owned())),
        }
    }

    /// Step 1: pause writes and wait for those in flight.
    pub async fn view_prepare(&self, p: Proposal) -> Result<(), ChangeFail> {
        let ours = self.epoch();
        if p.old.epoch != ours {
            return Err(ChangeFail::WrongEpoch { ours, theirs: p.old.epoch });
        }
        {
            let mut pending = self.change.pending.lock();
            if let Some(other) = &*pending
                && other.proposal.change != p.change
                && other.since.elapsed() < PAUSE_LIMIT
            {
                return Err(ChangeFail::Busy(other.proposal.change.clone()));
            }
            *pending = Some(Pending { proposal: p.clone(), since: Instant::now() });
            self.change.paused.send_replace(true);
        }
        if !self.change.drain(DRAIN_BOUND).await {
            self.abort_local(&p.change);
            return Err(ChangeFail::Drain);
        }
        Ok(())
    }

    /// Step 2: bring this replica to its shard's union.
    pub async fn view_sync(&self, change: &str) -> Result<(), ChangeFail> {
        self.check_prepared(change)?;
        let deadline = tokio::time::Instant::now() + viewchange::SYNC_TIMEOUT;
        self.current().gossip.sync_with_shard(deadline).await?;
        Ok(())
    }

    /// Step 3: the first replica of each old shard sends every live record
    /// to the nodes that gain it.
    pub async fn view_transfer(&self, change: &str) -> Result<usize, ChangeFail> {
        let p = self.check_prepared(change)?;
        let cur = self.current();
        let old = &cur.map;
        let Some(shard) = old.my_shard() else { return Ok(0) };
        if old.replicas(shard).first().map(String::as_str) != Some(self.me()) {
            return Ok(0);
        }
        let new = ShardMap::new(p.new.clone(), self.me());
        let mut after: Option<String> = None;
        let mut sent = 0;
        loop {
            let (page, next) = self.store.live_page(after.as_deref(), TRANSFER_BATCH)?;
            let mut per_target: std::collections::BTreeMap<&String, Vec<Record>> = std::collections::BTreeMap::new();
            for record in page {
                for target in viewchange_targets(old, &new, &record.key) {
                    per_target.entry(target).or_default().push(record.clone());
                }
            }
            for (target, mut records) in per_target {
                while !records.is_empty() {
                    let mut chunk = records.clone();
                    crate::gossip::fit_batch(&mut chunk);
                    let rest = records.split_off(chunk.len());
                    sent += chunk.len();
                    let body = serde_json::to_value(Receive { change: change.to_owned(), records: chunk }).expect("records serialise");
                    self.transport.view(target, Step::Receive, &body, viewchange::COMMIT_TIMEOUT).await?;
                    records = rest;
                }
            }
            match next {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        self.metrics.view_change_records_sent.inc_by(sent as u64);
        tracing::info!(change, sent, "view change: records transferred");
        Ok(sent)
    }

    /// Step 3, receiving side: stage records until commit.
    pub fn view_receive(&self, r: Receive) -> Result<(), ChangeFail> {
        self.check_prepared(&r.change)?;
        self.store.stage(&r.change, &r.records)?;
        Ok(())
    }

    /// Step 4: enter the new epoch.
    pub async fn view_commit(&self, p: Proposal) -> Result<Committed, ChangeFail> {
        let ours = self.epoch();
        let new_map = ShardMap::new(p.new.clone(), self.me());
        if ours >= p.new.epoch {
            // A retried commit that already took effect.
            return Ok(Committed { shard: new_map.my_shard(), key_count: self.store.live_count() });
        }
        if ours != p.old.epoch {
            return Err(ChangeFail::WrongEpoch { ours, theirs: p.old.epoch });
        }
        let prepared = self.check_prepared(&p.change).is_ok();
        let view_json = serde_json::to_vec(&p.new).expect("a view serialises");
        let count = self.commit_epoch(&p.change, &p.new, view_json).await?;
        self.install_epoch(p.new.clone());
        *self.change.pending.lock() = None;
        self.change.resume();
        tracing::info!(epoch = p.new.epoch, view = ?p.new.nodes, repl_factor = p.new.repl_factor, key_count = count, "view change committed");
        if !prepared {
            // This node missed the transfer (it restarted in between): copy
            // its new shard from a peer.
            self.rebuild_from_peers().await;
        }
        Ok(Committed { shard: new_map.my_shard(), key_count: self.store.live_count() })
    }

    /// Abort: drop what was staged and resume writes in the old view.
    pub fn view_abort(&self, change: &str) {
        self.abort_local(change);
    }

    fn abort_local(&self, change: &str) {
        let mut pending = self.change.pending.lock();
        if pending.as_ref().is_some_and(|p| p.proposal.change == change) {
            *pending = None;
            if let Err(e) = self.store.discard_stage(change) {
                tracing::error!(error = %e, "dropping staged records failed");
            }
            self.change.resume();
            tracing::warn!(change, "view change aborted here; the old view stays");
        }
    }

    /// The coordinator: runs a change from the current view to
    /// `nodes`/`repl_factor`. Returns the new map and each node's count.
    pub async fn change_view(&self, new: View) -> Result<(ShardMap, Vec<(String, Committed)>), viewchange::ChangeError> {
        let cur = self.current();
        let old = cur.map.view.clone();
        let new = View { epoch: old.epoch + 1, ..new };
        let p = Proposal { change: change_id(self.me(), old.epoch), old, new };
        let commits = viewchange::coordinate(&*self.transport, &p, self.me()).await?;
        Ok((ShardMap::new(p.new.clone(), self.me()), commits))
    }

    /// Copies this node's shard from the first peer that answers.
    async fn rebuild_from_peers(&self) {
        let cur = self.current();
        for peer in cur.map.peers() {
            match cur.gossip.rebuild_from(&peer).await {
                Ok(n) => {
                    tracing::info!(%peer, records = n, "rebuilt this node's shard after a missed view change");
                    return;
                }
                Err(e) => tracing::warn!(%peer, error = %e, "rebuild failed; trying the next peer"),
            }
        }
    }

    /// Adopts the view of a peer that is at a newer epoch.
    async fn adopt_view_of(&self, peer: &str) -> Result<(), ChangeFail> {
        let body = Value::Null;
        let answer = self.transport.view(peer, Step::Current, &body, viewchange::PREPARE_TIMEOUT).await?;
        let Ok(view) = serde_json::from_value::<View>(answer) else { return Ok(()) };
        if view.epoch <= self.epoch() {
            return Ok(());
        }
        let prepared = self.change.pending.lock().as_ref().map(|p| p.proposal.clone());
        if let Some(p) = prepared {
            if p.new == view {
                // The change prepared here committed elsewhere (a peer runs
                // its view): the coordinator decided commit, only its commit
                // message never came. Committing now ends the pause at once
                // instead of after PAUSE_LIMIT.
                tracing::warn!(%peer, epoch = view.epoch, change = %p.change, "the view change prepared here committed elsewhere: committing");
                self.view_commit(p).await?;
                return Ok(());
            }
            // A later view than the one prepared here: what was prepared is void.
            self.abort_local(&p.change);
        }
        tracing::warn!(%peer, epoch = view.epoch, "this node missed a view change: adopting the newer view");
        let view_json = serde_json::to_vec(&view).expect("a view serialises");
        let change = format!("adopt/{}", view.epoch);
        self.commit_epoch(&change, &view, view_json).await?;
        self.install_epoch(view);
        self.rebuild_from_peers().await;
        Ok(())
    }
}

fn viewchange_targets<'a>(old: &ShardMap, new: &'a ShardMap, key: &str) -> Vec<&'a String> {
    super::plan::gaining_nodes(old, new, key)
}

/// Aborts a pause nobody decided, and adopts newer views peers report.
pub async fn watch_for_missed_changes(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            biased;
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let stale = node.change.pending.lock().as_ref().filter(|p| p.since.elapsed() > PAUSE_LIMIT).map(|p| p.proposal.change.clone());
        if let Some(change) = stale {
            tracing::warn!(%change, "view change undecided for too long");
            node.abort_local(&change);
        }
        let (epoch, peer) = node.epoch_hint.highest();
        if epoch > node.epoch()
            && !peer.is_empty()
            && let Err(e) = node.adopt_view_of(&peer).await
        {
            tracing::warn!(%peer, error = %e, "adopting a newer view failed");
        }
    }
}

/// Whether this node has other replicas in its shard under `view` (its own
/// writes need a replication log then).
fn has_peers(view: &View, me: &str) -> bool {
    !ShardMap::new(view.clone(), me).peers().is_empty()
}

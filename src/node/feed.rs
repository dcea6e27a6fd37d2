//! Change feeds: every write to keys with a prefix, in causal order, from a
//! context on (`GET /kv-store/watch`; DESIGN.md "Change feeds").
//!
//! The node the watcher asked follows every shard: per shard, a task
//! long-polls one replica with [`FeedRequest`]s ("the writes after this
//! clock"), which that replica answers from its history of recent writes
//! (`store::recent`) in its apply order — a causal order of the shard's
//! writes — with the clock that covers everything it looked at (matching or
//! not). A merger then sends a write only once every write it depends on in
//! other shards has been sent or skipped, so a consumer that applies events
//! in order never sees an effect before its cause.
//!
//! Invariants kept here:
//! - Each event carries the resume context: the writes sent or skipped so
//!   far. Resuming from it sends every matching write not yet sent, and
//!   none twice (a clock is portable across replicas of a shard).
//! - What a watcher can make the node hold is bounded: [`EVENT_BUFFER`]
//!   events waiting for the consumer (a slower one is cut off with a final
//!   `slow-consumer` event), [`MAX_HELD`] writes waiting for their
//!   dependencies, [`MAX_WATCHERS`] watchers per node.
//! - A view change is followed: the old epoch's remaining writes are sent,
//!   then the new epoch's from its start. A replica whose history no longer
//!   holds what a watcher needs ends the feed with `history-gone` (the
//!   watcher re-reads and watches from now).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Node;
use crate::causal::{CausalContext, Clock};
use crate::gossip::Message;
use crate::gossip::dispatch::Refusal;
use crate::shard::{ShardId, ShardMap};
use crate::store::Record;

/// Watchers one node serves at once.
pub const MAX_WATCHERS: usize = 256;
/// Events queued for one watcher; a consumer this far behind is cut off.
pub const EVENT_BUFFER: usize = 1024;
/// Writes one watcher may hold while they wait for their dependencies.
pub const MAX_HELD: usize = 10_000;
/// Writes per feed answer.
const FEED_BATCH: usize = 1000;
/// How long a feed request waits for a write before answering without one.
const FEED_WAIT: Duration = Duration::from_secs(5);
/// Pause before asking another replica after a failed feed request.
const FEED_RETRY: Duration = Duration::from_millis(200);

/// "The writes of `shard` at `epoch` after `after`" (`None`: from now on).
#[derive(Debug, Serialize, Deserialize)]
pub struct FeedRequest {
    pub epoch: u64,
    pub shard: ShardId,
    pub after: Option<Clock>,
    /// The `next` of this replica's previous answer (0: look at everything).
    pub from: u64,
    pub prefix: String,
    pub limit: usize,
    pub wait_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FeedAnswer {
    /// Matching writes, in the replica's apply order.
    pub records: Vec<Record>,
    /// Covers every write looked at (matching or not): the next `after`.
    pub position: Clock,
    pub next: u64,
    /// The epoch is over at this replica and nothing of it is left.
    pub ended: bool,
}

/// Why a feed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The consumer read too slowly (`EVENT_BUFFER` events were waiting).
    SlowConsumer,
    /// A replica's history no longer holds writes the watcher needs.
    HistoryGone,
    /// Too many writes waited for their dependencies.
    TooFarBehind,
}

impl EndReason {
    pub fn name(self) -> &'static str {
        match self {
            EndReason::SlowConsumer => "slow-consumer",
            EndReason::HistoryGone => "history-gone",
            EndReason::TooFarBehind => "too-far-behind",
        }
    }
}

/// What a watcher receives.
#[derive(Debug)]
pub enum WatchEvent {
    /// A write (`record.value` is `None` for a delete) and the context to
    /// resume after it.
    Write {
        record: Record,
        context: CausalContext,
    },
    End {
        reason: EndReason,
        context: CausalContext,
    },
}

/// Counts a node's watchers; dropping it lets one more in.
pub struct WatcherSlot(Arc<AtomicUsize>);

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One shard's feed, as its task reports it to the merger.
enum FeedItem {
    Batch { shard: ShardId, records: Vec<Record>, position: Clock, ended: bool },
    Failed(EndReason),
}

impl Node {
    /// Answers a feed request from this replica's history.
    pub async fn feed(&self, req: FeedRequest) -> Result<FeedAnswer, Refusal> {
        let cur = self.current();
        let epoch = cur.map.epoch();
        if req.epoch > epoch || (req.epoch == epoch && cur.map.my_shard() != Some(req.shard)) {
            return Err((409, format!("this node is at epoch {epoch} and does not replicate shard {} of epoch {}", req.shard, req.epoch)));
        }
        let Some(after) = req.after else {
            if req.epoch != epoch {
                return Err((409, "from now: only at the current epoch".into()));
            }
            let (applied, next) = self.store.applied_and_position();
            return Ok(FeedAnswer { records: Vec::new(), position: applied, next, ended: false });
        };
        let deadline = Instant::now() + Duration::from_millis(req.wait_ms).min(FEED_WAIT);
        let limit = req.limit.clamp(1, FEED_BATCH);
        loop {
            let found = self.store.recent.after(&after, req.epoch, req.from, limit, |_| true).map_err(|e| (410, e.to_string()))?;
            let ended = req.epoch < self.epoch() && found.complete;
            if !found.records.is_empty() || ended || Instant::now() >= deadline {
                let mut position = after.clone();
                for r in &found.records {
                    position.observe(&r.dot.origin, r.dot.seq);
                }
                let records = found.records.into_iter().filter(|r| r.key.starts_with(&req.prefix)).map(|r| (*r).clone()).collect();
                return Ok(FeedAnswer { records, position, next: found.next, ended });
            }
            let seen = found.next;
            let recent = &self.store.recent;
            let epoch_now = self.epoch();
            self.store.gate.wait_until(deadline, || recent.position() > seen || self.epoch() != epoch_now).await;
        }
    }

    /// Takes a watcher slot, or `None` when [`MAX_WATCHERS`] are watching.
    pub fn watcher_slot(&self) -> Option<WatcherSlot> {
        let n = self.watchers.fetch_add(1, Ordering::AcqRel);
        if n >= MAX_WATCHERS {
            self.watchers.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(WatcherSlot(self.watchers.clone()))
    }

    /// Starts following every write to keys starting with `prefix` after
    /// `from` (`None`: from now on). Events arrive on the receiver until it
    /// is dropped or an `End` event.
    pub fn watch(self: &Arc<Self>, prefix: String, from: Option<CausalContext>) -> mpsc::Receiver<WatchEvent> {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let node = self.clone();
        tokio::spawn(async move { node.run_watch(prefix, from, tx).await });
        rx
    }

    async fn run_watch(self: Arc<Self>, prefix: String, from: Option<CausalContext>, tx: mpsc::Sender<WatchEvent>) {
        let current = self.epoch();
        // A context of an older epoch resumes in that epoch (its view is in
        // this node's history), then goes on with the next ones.
        let (mut epoch, mut start) = match from {
            Some(c) if c.epoch < current && self.view_of(c.epoch).is_some() => (c.epoch, Some(c.clock)),
            Some(c) if c.epoch == current => (current, Some(c.clock)),
            // An epoch unknown here: from the start of the current one.
            Some(_) => (current, Some(Clock::new())),
            None => (current, None),
        };
        loop {
            let Some(map) = self.view_of(epoch) else {
                let _ = tx.send(WatchEvent::End { reason: EndReason::HistoryGone, context: CausalContext { epoch, clock: Clock::new() } }).await;
                return;
            };
            match self.watch_epoch(&map, &prefix, start.take(), &tx).await {
                EpochOutcome::Over => {
                    // Everything of this epoch was sent: the next one, from its start.
                    let next = self.view_history.list().into_iter().map(|v| v.epoch).filter(|e| *e > epoch).min();
                    let next = match next {
                        Some(e) => e,
                        None => {
                            tokio::select! {
                                biased;
                                _ = tx.closed() => return,
                                _ = self.wait_for_epoch(epoch + 1, Duration::from_secs(3600)) => {}
                            }
                            self.epoch()
                        }
                    };
                    epoch = next;
                    start = Some(Clock::new());
                }
                EpochOutcome::Stopped => return,
            }
        }
    }

    /// The shard map of `epoch`: the current one, or one this node installed before.
    fn view_of(&self, epoch: u64) -> Option<ShardMap> {
        let cur = self.current();
        if cur.map.epoch() == epoch {
            return Some(ShardMap::new(cur.map.view.clone(), self.me()));
        }
        let record = self.view_history.list().into_iter().rev().find(|v| v.epoch == epoch)?;
        let view = crate::shard::View::new(record.view, record.repl_factor, record.epoch).ok()?;
        Some(ShardMap::new(view, self.me()))
    }

    /// Follows every shard of `map` until its epoch is over at every shard
    /// (then its last context), or the watch stops.
    async fn watch_epoch(self: &Arc<Self>, map: &ShardMap, prefix: &str, start: Option<Clock>, tx: &mpsc::Sender<WatchEvent>) -> EpochOutcome {
        let epoch = map.epoch();
        let shard_ids = map.shard_ids();
        let (items_tx, mut items) = mpsc::channel::<FeedItem>(shard_ids.len() * 2);
        let mut tasks = tokio::task::JoinSet::new();
        for shard in &shard_ids {
            let replicas = map.replicas(*shard).to_vec();
            let after = start.as_ref().map(|s| s.iter().filter(|(o, _)| replicas.iter().any(|r| r == o)).map(|(o, s)| (o.to_owned(), s)).collect());
            let feed = ShardFeed { shard: *shard, epoch, replicas, prefix: prefix.to_owned(), after, items: items_tx.clone() };
            tasks.spawn(feed.run(self.feed_caller()));
        }
        drop(items_tx);
        let mut merger = Merger::new(map, &shard_ids, start);
        loop {
            let item = tokio::select! {
                biased;
                _ = tx.closed() => return EpochOutcome::Stopped,
                item = items.recv() => item,
            };
            let Some(item) = item else { return EpochOutcome::Stopped };
            match item {
                FeedItem::Failed(reason) => {
                    let _ = tx.send(WatchEvent::End { reason, context: merger.context(epoch) }).await;
                    return EpochOutcome::Stopped;
                }
                FeedItem::Batch { shard, records, position, ended } => merger.take(shard, records, position, ended),
            }
            if merger.held() > MAX_HELD {
                self.metrics.watchers_cut_off.inc();
                let _ = tx.send(WatchEvent::End { reason: EndReason::TooFarBehind, context: merger.context(epoch) }).await;
                return EpochOutcome::Stopped;
            }
            while let Some((record, context)) = merger.next_ready(epoch) {
                if tx.capacity() <= 1 {
                    // The last slot carries the reason.
                    self.metrics.watchers_cut_off.inc();
                    let _ = tx.try_send(WatchEvent::End { reason: EndReason::SlowConsumer, context });
                    return EpochOutcome::Stopped;
                }
                self.metrics.watch_events.inc();
                if tx.send(WatchEvent::Write { record, context }).await.is_err() {
                    return EpochOutcome::Stopped;
                }
            }
            if merger.all_ended() {
                return EpochOutcome::Over;
            }
        }
    }

    fn feed_caller(self: &Arc<Self>) -> FeedCaller {
        FeedCaller { node: self.clone() }
    }
}

enum EpochOutcome {
    /// Every shard's feed of the epoch ended.
    Over,
    Stopped,
}

/// How a shard feed reaches replicas (this node in process).
struct FeedCaller {
    node: Arc<Node>,
}

impl FeedCaller {
    fn me(&self) -> &str {
        self.node.me()
    }

    async fn call(&self, replica: &str, req: FeedRequest) -> Result<FeedAnswer, Refusal> {
        if replica == self.me() {
            return self.node.feed(req).await;
        }
        if self.node.faults.is_blocked(replica) {
            return Err((503, "cut off".into()));
        }
        let body = serde_json::value::to_raw_value(&req).map_err(|e| (500, e.to_string()))?;
        let timeout = Duration::from_millis(req.wait_ms) + Duration::from_secs(2);
        let bytes = self.node.transport.call(replica, Message::Feed, body, timeout).await.map_err(|e| (503, e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| (502, e.to_string()))
    }
}

/// One shard's feed: long-polls a replica, moves to another on failure.
struct ShardFeed {
    shard: ShardId,
    epoch: u64,
    replicas: Vec<String>,
    prefix: String,
    after: Option<Clock>,
    items: mpsc::Sender<FeedItem>,
}

impl ShardFeed {
    async fn run(mut self, caller: FeedCaller) {
        let mut hint = 0;
        let mut turn = 0usize;
        // Replicas whose history lacks what this feed needs next.
        let mut gone: Vec<String> = Vec::new();
        loop {
            let order: Vec<&String> = caller.node.detector.alive_first(&self.replicas).into_iter().filter(|r| !gone.contains(r)).collect();
            if order.is_empty() {
                let _ = self.items.send(FeedItem::Failed(EndReason::HistoryGone)).await;
                return;
            }
            // This node first when it is a replica; else the next replica after each failure.
            let replica = match order.iter().find(|r| r.as_str() == caller.me()) {
                Some(me) => (*me).clone(),
                None => order[turn % order.len()].clone(),
            };
            let req = FeedRequest {
                epoch: self.epoch,
                shard: self.shard,
                after: self.after.clone(),
                from: hint,
                prefix: self.prefix.clone(),
                limit: FEED_BATCH,
                wait_ms: FEED_WAIT.as_millis() as u64,
            };
            match caller.call(&replica, req).await {
                Ok(answer) => {
                    gone.clear();
                    hint = answer.next;
                    self.after = Some(answer.position.clone());
                    let ended = answer.ended;
                    let item = FeedItem::Batch { shard: self.shard, records: answer.records, position: answer.position, ended };
                    if self.items.send(item).await.is_err() || ended {
                        return;
                    }
                }
                Err((410, _)) => {
                    // Another replica may still have it (this one restarted, say).
                    gone.push(replica);
                    hint = 0;
                }
                Err(_) => {
                    if self.items.is_closed() {
                        return;
                    }
                    hint = 0;
                    turn += 1;
                    tokio::time::sleep(FEED_RETRY).await;
                }
            }
        }
    }
}

/// Puts the shards' feeds into one causal order.
struct Merger {
    /// Per shard: its replicas (the origins of its writes), what waits, what
    /// was sent or skipped, whether its epoch ended.
    shards: Vec<MergeShard>,
}

struct MergeShard {
    id: ShardId,
    origins: Vec<String>,
    queue: VecDeque<Pending>,
    /// `None` until the feed said where "now" is.
    delivered: Option<Clock>,
    ended: bool,
}

enum Pending {
    Write(Record),
    /// Everything up to this clock was sent or is not wanted.
    Position(Clock),
}

impl Merger {
    fn new(map: &ShardMap, shard_ids: &[ShardId], start: Option<Clock>) -> Self {
        let shards = shard_ids
            .iter()
            .map(|id| {
                let origins = map.replicas(*id).to_vec();
                let delivered = start
                    .as_ref()
                    .map(|s| s.iter().filter(|(o, _)| origins.iter().any(|r| r == o)).map(|(o, s)| (o.to_owned(), s)).collect());
                MergeShard { id: *id, origins, queue: VecDeque::new(), delivered, ended: false }
            })
            .collect();
        Self { shards }
    }

    fn take(&mut self, shard: ShardId, records: Vec<Record>, position: Clock, ended: bool) {
        let Some(s) = self.shards.iter_mut().find(|s| s.id == shard) else { return };
        s.queue.extend(records.into_iter().map(Pending::Write));
        s.queue.push_back(Pending::Position(position));
        s.ended |= ended;
    }

    fn held(&self) -> usize {
        self.shards.iter().map(|s| s.queue.len()).sum()
    }

    fn all_ended(&self) -> bool {
        self.shards.iter().all(|s| s.ended && s.queue.is_empty())
    }

    /// The resume context: every shard's delivered clock.
    fn context(&self, epoch: u64) -> CausalContext {
        let mut clock = Clock::new();
        for s in &self.shards {
            if let Some(d) = &s.delivered {
                clock.merge(d);
            }
        }
        CausalContext { epoch, clock }
    }

    /// Whether every dependency of `record` outside its shard was delivered.
    fn deps_delivered(&self, shard: ShardId, record: &Record) -> bool {
        self.shards.iter().filter(|s| s.id != shard).all(|s| {
            let needs = s.origins.iter().any(|o| record.deps.get(o) > 0);
            !needs || s.delivered.as_ref().is_some_and(|d| d.covers_for(&record.deps, s.origins.iter().map(String::as_str)))
        })
    }

    /// The next write that may be sent, with the context after it; advances
    /// past positions on the way.
    fn next_ready(&mut self, epoch: u64) -> Option<(Record, CausalContext)> {
        loop {
            let mut progressed = false;
            for i in 0..self.shards.len() {
                let id = self.shards[i].id;
                match self.shards[i].queue.front() {
                    Some(Pending::Position(_)) => {
                        if let Some(Pending::Position(p)) = self.shards[i].queue.pop_front() {
                            self.shards[i].delivered.get_or_insert_with(Clock::new).merge(&p);
                        }
                        progressed = true;
                    }
                    Some(Pending::Write(record)) if self.shards[i].delivered.is_some() && self.deps_delivered(id, record) => {
                        let Some(Pending::Write(record)) = self.shards[i].queue.pop_front() else { continue };
                        if let Some(d) = self.shards[i].delivered.as_mut() {
                            d.observe(&record.dot.origin, record.dot.seq);
                        }
                        return Some((record, self.context(epoch)));
                    }
                    _ => {}
                }
            }
            if !progressed {
                return None;
            }
        }
    }
}

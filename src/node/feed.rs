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
/// Feed requests (long polls from watching nodes) one replica answers at
/// once; more are refused (503) and their feeds try again.
pub const MAX_FEED_REQUESTS: usize = 1024;
/// Events queued for one watcher; a consumer this far behind is cut off.
pub const EVENT_BUFFER: usize = 1024;
/// Writes one watcher may hold while they wait for their dependencies.
pub const MAX_HELD: usize = 10_000;
/// Writes per feed answer.
const FEED_BATCH: usize = 1000;
/// How long a feed request waits for a write before answering without one.
const FEED_WAIT: Duration = Duration::from_secs(5);
/// Failed requests after which a replica counts as done at an epoch's end.
const ENDING_TRIES: usize = 3;
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
    /// Every write after `after`, in the replica's apply order; writes to
    /// keys without the prefix without their value.
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
        let Ok(_slot) = self.feed_slots.clone().try_acquire_owned() else {
            return Err((503, "too many feed requests".into()));
        };
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
        let mut from = req.from;
        loop {
            // Read before the history: a write of the old epoch applied
            // after this read is still in what `after` finds.
            let over = req.epoch < self.epoch();
            let found = self.store.recent.after(&after, req.epoch, from, limit, |_| true).map_err(|e| (410, e.to_string()))?;
            let ended = over && found.complete;
            if !found.records.is_empty() || ended || Instant::now() >= deadline {
                let mut position = after.clone();
                for r in &found.records {
                    position.observe(&r.dot.origin, r.dot.seq);
                }
                // Every write goes back (the watcher orders by all of them);
                // values only of the keys it watches.
                let records = found
                    .records
                    .iter()
                    .map(|r| {
                        let mut r = (**r).clone();
                        if !r.key.starts_with(&req.prefix) {
                            r.value = None;
                        }
                        r
                    })
                    .collect();
                return Ok(FeedAnswer { records, position, next: found.next, ended });
            }
            let seen = found.next;
            from = seen;
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
    /// `from`. Events arrive on the receiver until it is dropped or an `End`
    /// event.
    pub fn watch(self: &Arc<Self>, prefix: String, from: CausalContext) -> mpsc::Receiver<WatchEvent> {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let node = self.clone();
        tokio::spawn(async move { node.run_watch(prefix, Some(from), tx).await });
        rx
    }

    /// "Now" for a watch: every shard's position at one of its replicas, so
    /// that a watch from it sends every write made after this returns.
    /// `None` when some shard does not answer in time.
    pub async fn watch_position(self: &Arc<Self>) -> Option<CausalContext> {
        let cur = self.current();
        let epoch = cur.map.epoch();
        let caller = self.feed_caller();
        let mut clock = Clock::new();
        for shard in cur.map.shard_ids() {
            let replicas = cur.map.replicas(shard);
            let mut order: Vec<&String> = self.detector.alive_first(replicas);
            if let Some(i) = order.iter().position(|r| r.as_str() == self.me()) {
                let me = order.remove(i);
                order.insert(0, me);
            }
            let mut found = None;
            for replica in order {
                let req = FeedRequest { epoch, shard, after: None, from: 0, prefix: String::new(), limit: 1, wait_ms: 0 };
                if let Ok(answer) = caller.call(replica, req).await {
                    found = Some(answer.position);
                    break;
                }
            }
            clock.merge(&found?);
        }
        Some(CausalContext { epoch, clock })
    }

    async fn run_watch(self: Arc<Self>, prefix: String, from: Option<CausalContext>, tx: mpsc::Sender<WatchEvent>) {
        let current = self.epoch();
        // A context of an epoch this node never ran (or no longer knows the
        // view of) cannot be resumed here: `view_of` below says so.
        let (mut epoch, mut start) = match from {
            Some(c) => {
                if c.epoch > current {
                    // A node that already runs a newer view sent this context.
                    self.wait_for_epoch(c.epoch, self.config.causal_wait).await;
                }
                (c.epoch, Some(c.clock))
            }
            None => (current, None),
        };
        loop {
            let Some(map) = self.view_of(epoch) else {
                let _ = tx
                    .send(WatchEvent::End { reason: EndReason::HistoryGone, context: CausalContext { epoch, clock: Clock::new() } })
                    .await;
                return;
            };
            match self.watch_epoch(&map, &prefix, start.take(), &tx).await {
                EpochOutcome::Over => {
                    // Everything of this epoch was sent: the next one, from its start.
                    let known = |e: u64| self.view_history.list().iter().any(|v| v.epoch == e);
                    if !known(epoch + 1) {
                        tokio::select! {
                            biased;
                            _ = tx.closed() => return,
                            _ = self.wait_for_epoch(epoch + 1, Duration::from_secs(3600)) => {}
                        }
                    }
                    // The very next epoch, or the feed cannot go on: a node
                    // that skipped one (it adopted a later view) never had its writes.
                    if !known(epoch + 1) {
                        let _ = tx
                            .send(WatchEvent::End { reason: EndReason::HistoryGone, context: CausalContext { epoch, clock: Clock::new() } })
                            .await;
                        return;
                    }
                    epoch += 1;
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
    async fn watch_epoch(
        self: &Arc<Self>,
        map: &ShardMap,
        prefix: &str,
        start: Option<Clock>,
        tx: &mpsc::Sender<WatchEvent>,
    ) -> EpochOutcome {
        let epoch = map.epoch();
        let shard_ids = map.shard_ids();
        tracing::debug!(epoch, ?start, "watch: following an epoch");
        let (items_tx, mut items) = mpsc::channel::<FeedItem>(shard_ids.len() * 2);
        let mut tasks = tokio::task::JoinSet::new();
        for shard in &shard_ids {
            let replicas = map.replicas(*shard).to_vec();
            let after =
                start.as_ref().map(|s| s.iter().filter(|(o, _)| replicas.iter().any(|r| r == o)).map(|(o, s)| (o.to_owned(), s)).collect());
            let feed = ShardFeed { shard: *shard, epoch, replicas, prefix: prefix.to_owned(), after, items: items_tx.clone() };
            tasks.spawn(feed.run(self.feed_caller()));
        }
        drop(items_tx);
        let mut merger = Merger::new(map, &shard_ids, start, prefix);
        merger.ignore_deps = self.faults.has_bug(crate::faults::Bug::FeedIgnoresDeps);
        loop {
            let item = tokio::select! {
                biased;
                _ = tx.closed() => return EpochOutcome::Stopped,
                item = items.recv() => item,
            };
            let Some(item) = item else {
                // Every shard's epoch ended, yet writes wait for dependencies
                // no replica had: the watcher would never see them.
                tracing::debug!(epoch, held = merger.held(), "watch: every shard feed ended with writes held back");
                let _ = tx.send(WatchEvent::End { reason: EndReason::HistoryGone, context: merger.context(epoch) }).await;
                return EpochOutcome::Stopped;
            };
            match item {
                FeedItem::Failed(reason) => {
                    let _ = tx.send(WatchEvent::End { reason, context: merger.context(epoch) }).await;
                    return EpochOutcome::Stopped;
                }
                FeedItem::Batch { shard, records, position, ended } => {
                    tracing::trace!(epoch, shard, records = records.len(), ?position, ended, "watch: feed batch");
                    merger.take(shard, records, position, ended)
                }
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
        let bytes = self.node.transport.call(replica, Message::Feed, body, timeout).await.map_err(refusal)?;
        serde_json::from_slice(&bytes).map_err(|e| (502, e.to_string()))
    }
}

/// A transport error as the refusal it carries (its status when the peer
/// answered one, else 503).
pub(super) fn refusal(e: crate::gossip::GossipError) -> Refusal {
    match e {
        crate::gossip::GossipError::Rejected { status, .. } => (status, e.to_string()),
        e => (503, e.to_string()),
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
        // A history position means something only at the replica that gave it.
        let mut hint: (String, u64) = (String::new(), 0);
        let mut turn = 0usize;
        // Replicas whose history lacks what this feed needs next.
        let mut gone: Vec<String> = Vec::new();
        // Once the epoch is over, every replica is asked for its end of it
        // (one may have applied writes another lacks); these have answered,
        // or stayed unreachable `ENDING_TRIES` times.
        let mut done: Vec<String> = Vec::new();
        let mut failures: std::collections::HashMap<String, usize> = Default::default();
        let mut unreachable: Vec<String> = Vec::new();
        loop {
            let ending = !done.is_empty();
            let order: Vec<&String> =
                caller.node.detector.alive_first(&self.replicas).into_iter().filter(|r| !gone.contains(r) && !done.contains(r)).collect();
            if order.is_empty() {
                // The epoch's end is known only when every replica gave its
                // own: one that could not may have had writes the others lack.
                let complete = ending && done.iter().all(|r| !unreachable.contains(r)) && gone.is_empty();
                let item = if complete {
                    FeedItem::Batch {
                        shard: self.shard,
                        records: Vec::new(),
                        position: self.after.clone().unwrap_or_default(),
                        ended: true,
                    }
                } else {
                    FeedItem::Failed(EndReason::HistoryGone)
                };
                let _ = self.items.send(item).await;
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
                from: if hint.0 == replica { hint.1 } else { 0 },
                prefix: self.prefix.clone(),
                limit: FEED_BATCH,
                wait_ms: FEED_WAIT.as_millis() as u64,
            };
            match caller.call(&replica, req).await {
                Ok(answer) => {
                    if !ending {
                        gone.clear();
                    }
                    hint = (replica.clone(), answer.next);
                    self.after = Some(answer.position.clone());
                    if answer.ended {
                        tracing::debug!(epoch = self.epoch, shard = self.shard, %replica, position = ?answer.position, "feed: the epoch ended there");
                        done.push(replica);
                    }
                    let item = FeedItem::Batch { shard: self.shard, records: answer.records, position: answer.position, ended: false };
                    if self.items.send(item).await.is_err() {
                        return;
                    }
                }
                Err((410, _)) => {
                    // Another replica may still have it (this one restarted, say).
                    tracing::debug!(shard = self.shard, %replica, "feed: history gone there");
                    gone.push(replica);
                }
                Err((status, reason)) => {
                    tracing::debug!(shard = self.shard, %replica, status, %reason, "feed request failed");
                    if self.items.is_closed() {
                        return;
                    }
                    let tries = failures.entry(replica.clone()).or_default();
                    *tries += 1;
                    if ending && *tries >= ENDING_TRIES {
                        unreachable.push(replica.clone());
                        done.push(replica);
                    }
                    turn += 1;
                    tokio::time::sleep(FEED_RETRY).await;
                }
            }
        }
    }
}

/// Puts the shards' feeds into one causal order.
///
/// A write may go once every write it depends on went (or was skipped, not
/// matching the prefix): the writes of its own origin before it, and for
/// every other origin what its deps name. The feeds' apply orders are not
/// enough: a replica applies a write once its deps *on its shard* are
/// applied, so another shard's write it depends on through a third write
/// may come later in that feed; the merger waits across feeds instead.
struct Merger {
    prefix: String,
    /// `Bug::FeedIgnoresDeps` (tests of the checker only).
    ignore_deps: bool,
    /// Per shard: its origins, and whether its start is known.
    shards: Vec<MergeShard>,
    /// Per origin: writes received, not sent yet, in seq order.
    waiting: std::collections::BTreeMap<String, VecDeque<Record>>,
    /// Every write sent or skipped, per origin.
    delivered: Clock,
}

struct MergeShard {
    id: ShardId,
    origins: Vec<String>,
    /// Its start position arrived (or was given).
    started: bool,
    ended: bool,
}

impl Merger {
    fn new(map: &ShardMap, shard_ids: &[ShardId], start: Option<Clock>, prefix: &str) -> Self {
        let shards = shard_ids
            .iter()
            .map(|id| MergeShard { id: *id, origins: map.replicas(*id).to_vec(), started: start.is_some(), ended: false })
            .collect();
        Self { prefix: prefix.to_owned(), ignore_deps: false, shards, waiting: Default::default(), delivered: start.unwrap_or_default() }
    }

    fn take(&mut self, shard: ShardId, records: Vec<Record>, position: Clock, ended: bool) {
        let Some(s) = self.shards.iter_mut().find(|s| s.id == shard) else { return };
        if !s.started {
            // "From now on": where this shard's feed starts.
            s.started = true;
            for (origin, seq) in position.iter().filter(|(o, _)| s.origins.iter().any(|r| r == o)) {
                self.delivered.observe(origin, seq);
            }
        }
        s.ended |= ended;
        for r in records {
            if r.dot.seq > self.delivered.get(&r.dot.origin) {
                let queue = self.waiting.entry(r.dot.origin.clone()).or_default();
                // Feeds of one shard may overlap after a move to another replica.
                if queue.back().is_none_or(|last| last.dot.seq < r.dot.seq) {
                    queue.push_back(r);
                }
            }
        }
    }

    fn held(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }

    fn all_ended(&self) -> bool {
        self.shards.iter().all(|s| s.ended) && self.waiting.values().all(VecDeque::is_empty)
    }

    /// The resume context: everything sent or skipped.
    fn context(&self, epoch: u64) -> CausalContext {
        CausalContext { epoch, clock: self.delivered.clone() }
    }

    fn ready(&self, r: &Record) -> bool {
        self.delivered.get(&r.dot.origin) + 1 == r.dot.seq
            && (self.ignore_deps || r.deps.iter().all(|(origin, seq)| origin == r.dot.origin || self.delivered.get(origin) >= seq))
    }

    /// The next matching write that may be sent, with the context after it;
    /// skips the writes that do not match on the way.
    fn next_ready(&mut self, epoch: u64) -> Option<(Record, CausalContext)> {
        if !self.shards.iter().all(|s| s.started) {
            return None;
        }
        loop {
            let origin = self.waiting.iter().find(|(_, q)| q.front().is_some_and(|r| self.ready(r))).map(|(o, _)| o.clone())?;
            let record = self.waiting.get_mut(&origin)?.pop_front()?;
            self.delivered.observe(&record.dot.origin, record.dot.seq);
            if record.key.starts_with(&self.prefix) {
                return Some((record, self.context(epoch)));
            }
        }
    }
}

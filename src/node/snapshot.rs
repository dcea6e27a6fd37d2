//! Snapshot reads: several keys, of any shards, read from one causally
//! consistent cut (DESIGN.md "Snapshot reads"; after COPS-GT's and Eiger's
//! read-only transactions and Occult's causally consistent reads).
//!
//! The node asked coordinates, in at most two rounds per shard:
//! 1. [`ReadFirst`] to one replica of each involved shard: once it satisfies
//!    the client's context, it returns each key's record (value or tombstone,
//!    dot, deps), its applied clock `A1` and its history position `p1`, read
//!    together.
//! 2. The cut `N` = the client's context + the dot and deps of every record
//!    returned. A shard whose `A1` covers `N` (on its origins) answered from
//!    a state that had every write `N` names: done. Else [`ReadSecond`] to the
//!    same replica: once it has applied `N` on its origins, it returns for each
//!    key the latest (LWW) version applied after `A1` whose dot `N` covers —
//!    found in its history of recent writes (`store::recent`) — and the
//!    coordinator keeps it if it wins over the first round's.
//!
//! Every version returned is covered by `N`, and its deps are too (round-1
//! records' by construction, round-2 ones checked), so no version depends on
//! a write `N` lacks; and for every shard the version
//! returned is the latest of those `N` covers, so a write *u* of a requested key
//! that another returned version depends on (u ∈ N) is returned or beaten by a
//! later one. Writers are never blocked: replicas only wait to apply writes.
//! A version chosen in round 2 is covered by `N`, but `N` names writes by
//! per-origin prefixes, so that version's own deps may reach beyond `N` (its
//! writer saw less than the writer of a later write of the same origin that
//! `N` names); then the read starts again from `N` plus those deps, whose
//! round 1 waits for them. A replica whose history no longer holds the
//! writes after `A1`, or an epoch change between the rounds, restarts the
//! read as well; after three attempts it is refused (503, retry).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::Node;
use crate::causal::{CausalContext, Clock};
use crate::gossip::Message;
use crate::gossip::dispatch::Refusal;
use crate::shard::ShardId;
use crate::store::Record;

/// Most keys one snapshot read may name.
pub const MAX_SNAPSHOT_KEYS: usize = 1000;
/// Snapshot reads one node coordinates at once; more are refused (503).
pub const MAX_SNAPSHOT_READS: usize = 256;
/// How many times a read is started again after its second round failed.
const ATTEMPTS: usize = 3;
/// Network time on top of a replica's hold-back bound.
const ROUND_SLACK: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, Deserialize)]
pub struct ReadFirst {
    pub epoch: u64,
    pub keys: Vec<String>,
    /// The client's context at `epoch`.
    pub context: Clock,
    pub wait_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReadFirstAnswer {
    /// The keys' records (absent keys have none).
    pub records: Vec<Record>,
    pub applied: Clock,
    pub position: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReadSecond {
    pub epoch: u64,
    pub keys: Vec<String>,
    /// The first round's applied clock and history position.
    pub after: Clock,
    pub from: u64,
    /// The cut.
    pub upto: Clock,
    pub wait_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReadSecondAnswer {
    /// Per key, the latest version applied after `after` that `upto` covers.
    pub records: Vec<Record>,
}

/// The answer to a snapshot read.
#[derive(Debug)]
pub struct SnapshotRead {
    /// Every key asked for (once, in the order asked) and its value, if live.
    pub values: Vec<(String, Option<Box<RawValue>>)>,
    /// The cut: the client's context plus everything the answer reveals.
    pub context: CausalContext,
    /// Shards that needed a second round.
    pub second_rounds: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    /// Some shard could not answer within its bounds; retry later.
    Unavailable,
    /// Two views at one epoch are known here.
    ViewConflict(String),
}

/// What one shard answered in the first round.
struct FirstRound {
    replica: String,
    keys: Vec<String>,
    answer: ReadFirstAnswer,
}

/// Why an attempt stopped.
enum Retry {
    /// Start the read again (history gone, epoch changed, replica lost).
    Again,
    /// Start again from this larger context.
    From(CausalContext),
    Fail(SnapshotError),
}

impl Node {
    /// Reads `keys` from one causally consistent cut that covers `context`.
    pub async fn snapshot_read(&self, keys: &[String], context: &CausalContext) -> Result<SnapshotRead, SnapshotError> {
        let Ok(_slot) = self.snapshot_slots.clone().try_acquire_owned() else {
            return Err(SnapshotError::Unavailable);
        };
        if let Some(conflict) = self.view_conflicts().into_iter().next() {
            return Err(SnapshotError::ViewConflict(conflict.to_string()));
        }
        if context.epoch > self.epoch() && !self.wait_for_epoch(context.epoch, self.config.causal_wait).await {
            return Err(SnapshotError::Unavailable);
        }
        let mut unique = Vec::with_capacity(keys.len());
        let mut seen = HashSet::new();
        for key in keys {
            if seen.insert(key.as_str()) {
                unique.push(key.clone());
            }
        }
        let mut context = context.clone();
        for _ in 0..ATTEMPTS {
            match self.snapshot_attempt(&unique, &context).await {
                Ok(read) => return Ok(read),
                Err(Retry::Again) => continue,
                Err(Retry::From(wider)) => context = wider,
                Err(Retry::Fail(e)) => return Err(e),
            }
        }
        self.metrics.snapshot_reads_failed.inc();
        Err(SnapshotError::Unavailable)
    }

    async fn snapshot_attempt(&self, keys: &[String], context: &CausalContext) -> Result<SnapshotRead, Retry> {
        let cur = self.current();
        let epoch = cur.map.epoch();
        let ctx = context.at_epoch(epoch).into_owned();
        let mut by_shard: BTreeMap<ShardId, Vec<String>> = BTreeMap::new();
        for key in keys {
            by_shard.entry(cur.map.shard_of(key)).or_default().push(key.clone());
        }
        // Round 1, every shard at once.
        let firsts = futures_util::future::join_all(by_shard.iter().map(|(shard, keys)| self.first_round(*shard, keys, &ctx, epoch))).await;
        let mut rounds: Vec<(ShardId, FirstRound)> = Vec::with_capacity(firsts.len());
        for (shard, first) in by_shard.keys().zip(firsts) {
            rounds.push((*shard, first?));
        }
        // The cut.
        let mut cut = ctx.clock.clone();
        for (_, round) in &rounds {
            for r in round.answer.records.iter().filter(|r| r.dot.epoch == epoch) {
                cut.observe(&r.dot.origin, r.dot.seq);
                cut.merge(&r.deps);
            }
        }
        // Round 2 where the first round's state did not have the whole cut.
        let behind: Vec<&(ShardId, FirstRound)> = rounds
            .iter()
            .filter(|(shard, round)| !round.answer.applied.covers_for(&cut, cur.map.replicas(*shard).iter().map(String::as_str)))
            .filter(|_| !self.faults.has_bug(crate::faults::Bug::SnapshotOneRound))
            .collect();
        let seconds = futures_util::future::join_all(behind.iter().map(|(_, round)| {
            let req = ReadSecond {
                epoch,
                keys: round.keys.clone(),
                after: round.answer.applied.clone(),
                from: round.answer.position,
                upto: cut.clone(),
                wait_ms: self.config.causal_wait.as_millis() as u64,
            };
            self.call_read::<ReadSecondAnswer>(&round.replica, Message::ReadSecond, req)
        }))
        .await;
        let mut latest: HashMap<String, Record> = HashMap::new();
        for (_, round) in &rounds {
            for r in &round.answer.records {
                latest.insert(r.key.clone(), r.clone());
            }
        }
        // A version chosen in round 2 is covered by the cut, but its own
        // deps may not be: the cut covers a write through a later write of
        // the same origin (a clock names prefixes), whose writer saw less.
        // Such deps may name writes the other shards' states lack: start
        // again from the larger cut (its round 1 waits for them).
        let mut wider = cut.clone();
        for second in seconds {
            let answer = second.map_err(|_| Retry::Again)?;
            for r in answer.records {
                if latest.get(&r.key).is_none_or(|old| r.wins_over(old)) {
                    wider.merge(&r.deps);
                    latest.insert(r.key.clone(), r);
                }
            }
        }
        if wider != cut {
            return Err(Retry::From(CausalContext { epoch, clock: wider }));
        }
        self.metrics.snapshot_reads.inc();
        self.metrics.snapshot_second_rounds.inc_by(behind.len() as u64);
        let values = keys.iter().map(|k| (k.clone(), latest.remove(k).and_then(|r| r.value))).collect();
        Ok(SnapshotRead { values, context: CausalContext { epoch, clock: cut }, second_rounds: behind.len() })
    }

    /// The first round at one shard: its replicas in read order (this node
    /// first when it is one), until one satisfies the context.
    async fn first_round(&self, shard: ShardId, keys: &[String], ctx: &CausalContext, epoch: u64) -> Result<FirstRound, Retry> {
        let cur = self.current();
        let replicas = cur.map.replicas(shard);
        let mut order: Vec<&String> = if cur.map.is_replica(shard) {
            let mut o = vec![replicas.iter().find(|r| *r == self.me()).expect("a replica of its own shard")];
            o.extend(replicas.iter().filter(|r| *r != self.me()));
            o
        } else {
            self.detector.alive_first(self.read_order(replicas))
        };
        order.retain(|r| !self.faults.is_blocked(r) || *r == self.me());
        let mut epoch_moved = false;
        for replica in order {
            let req =
                ReadFirst { epoch, keys: keys.to_vec(), context: ctx.clock.clone(), wait_ms: self.config.causal_wait.as_millis() as u64 };
            match self.call_read::<ReadFirstAnswer>(replica, Message::ReadFirst, req).await {
                Ok(answer) => return Ok(FirstRound { replica: replica.clone(), keys: keys.to_vec(), answer }),
                Err((409, _)) => epoch_moved = true,
                Err(_) => continue,
            }
        }
        if epoch_moved {
            self.wait_for_epoch(epoch + 1, self.config.causal_wait).await;
            return Err(Retry::Again);
        }
        Err(Retry::Fail(SnapshotError::Unavailable))
    }

    /// One read step at `replica`: in process when it is this node.
    async fn call_read<T: for<'de> Deserialize<'de>>(&self, replica: &str, kind: Message, req: impl Serialize) -> Result<T, Refusal> {
        let body = serde_json::value::to_raw_value(&req).map_err(|e| (500, e.to_string()))?;
        if replica == self.me() {
            let answer = self.dispatch(replica, kind, body.get().as_bytes()).await?;
            return serde_json::from_str(answer.get()).map_err(|e| (500, e.to_string()));
        }
        let timeout = self.config.causal_wait + ROUND_SLACK;
        let bytes = self.transport.call(replica, kind, body, timeout).await.map_err(super::feed::refusal)?;
        serde_json::from_slice(&bytes).map_err(|e| (502, e.to_string()))
    }

    /// Checks a read step: this node is at `epoch` and a replica of every key's shard.
    fn read_shard(&self, epoch: u64, keys: &[String]) -> Result<(std::sync::Arc<super::Epoch>, ShardId), Refusal> {
        let cur = self.current();
        if epoch != cur.map.epoch() {
            return Err((409, format!("this node is at epoch {}, not {epoch}", cur.map.epoch())));
        }
        let Some(shard) = cur.map.my_shard() else {
            return Err((409, "this node is not a replica".into()));
        };
        if keys.len() > MAX_SNAPSHOT_KEYS || keys.iter().any(|k| cur.map.shard_of(k) != shard) {
            return Err((409, "keys of another shard".into()));
        }
        Ok((cur, shard))
    }

    /// First round at this replica (see the module documentation).
    pub async fn read_first(&self, req: ReadFirst) -> Result<ReadFirstAnswer, Refusal> {
        let (cur, shard) = self.read_shard(req.epoch, &req.keys)?;
        let wait = Duration::from_millis(req.wait_ms).min(self.config.causal_wait);
        let ctx = CausalContext { epoch: req.epoch, clock: req.context };
        if !self.hold_back(&cur, &ctx, shard, wait).await {
            return Err((503, "Unable to satisfy request".into()));
        }
        // Clock and position before the values: every write a value may
        // show beyond the clock is in the history from the position on.
        let (applied, position) = self.store.applied_and_position();
        let mut records = Vec::with_capacity(req.keys.len());
        for key in &req.keys {
            if let Some(r) = self.store.get(key).map_err(|e| (500, e.to_string()))? {
                records.push(r);
            }
        }
        Ok(ReadFirstAnswer { records, applied, position })
    }

    /// Second round at this replica (see the module documentation).
    pub async fn read_second(&self, req: ReadSecond) -> Result<ReadSecondAnswer, Refusal> {
        let (cur, shard) = self.read_shard(req.epoch, &req.keys)?;
        let wait = Duration::from_millis(req.wait_ms).min(self.config.causal_wait);
        let cut = CausalContext { epoch: req.epoch, clock: req.upto.clone() };
        if !self.hold_back(&cur, &cut, shard, wait).await {
            return Err((503, "Unable to satisfy request".into()));
        }
        let wanted: HashSet<&str> = req.keys.iter().map(String::as_str).collect();
        let found = self
            .store
            .recent
            .after(&req.after, req.epoch, req.from, usize::MAX, |r| {
                wanted.contains(r.key.as_str()) && r.dot.seq <= req.upto.get(&r.dot.origin)
            })
            .map_err(|e| (410, e.to_string()))?;
        let mut best: HashMap<&str, &Record> = HashMap::new();
        for r in &found.records {
            if best.get(r.key.as_str()).is_none_or(|b| r.wins_over(b)) {
                best.insert(r.key.as_str(), r);
            }
        }
        Ok(ReadSecondAnswer { records: best.into_values().cloned().collect() })
    }
}

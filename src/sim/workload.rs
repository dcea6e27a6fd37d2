//! What the simulated clients and the fault schedule do.
//!
//! - **Sessions**: each sends its operations one after another to a random
//!   node (any node: a non-replica forwards), carrying the causal context
//!   of its last answer, as a client of the HTTP API does. Every PUT writes
//!   a value no other operation writes; a DELETE is a write of a unique
//!   tombstone; every answer goes into the history.
//! - **Nemesis**: while sessions run, partitions that heal, crashes that
//!   restart, clock steps, and one view change that adds the spare node.
//!
//! Invariant: every choice is drawn from the network's seeded generator.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use serde_json::value::RawValue;

use super::{SimCluster, SimConfig};
use crate::causal::CausalContext;
use crate::check::{History, Op, OpKind, Outcome};
use crate::node::kv::{KvAnswer, KvErrorKind, KvOp, KvOutcome, KvRequest};
use crate::shard::View;

/// How long a client waits for an answer before giving up (the HTTP
/// client's timeout).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs every session to its end.
pub async fn run_sessions(cluster: Arc<SimCluster>, config: &SimConfig, history: Arc<Mutex<History>>) {
    let per_session = config.ops.div_ceil(config.sessions.max(1));
    let sessions: Vec<_> = (0..config.sessions)
        .map(|id| tokio::spawn(session(cluster.clone(), id, per_session, config.keys.max(1), history.clone())))
        .collect();
    for s in sessions {
        let _ = s.await;
    }
}

async fn session(cluster: Arc<SimCluster>, id: usize, ops: usize, keys: usize, history: Arc<Mutex<History>>) {
    let mut context = CausalContext::default();
    for n in 0..ops {
        let (pause, key, target, choice, others) = cluster.net.with_rng(|r| {
            let others: Vec<String> = (0..r.random_range(1..4)).map(|_| format!("k{}", r.random_range(0..keys))).collect();
            (
                Duration::from_millis(r.random_range(0..40)),
                format!("k{}", r.random_range(0..keys)),
                r.random_range(0..cluster.addresses.len()),
                r.random_range(0..12),
                others,
            )
        });
        let op = match choice {
            0..=4 => KvOp::Put,
            5..=8 => KvOp::Get,
            9 => KvOp::Delete,
            _ => {
                tokio::time::sleep(pause).await;
                let mut read_keys = vec![key];
                read_keys.extend(others);
                snapshot_read(&cluster, id, n, target, read_keys, &mut context, &history).await;
                continue;
            }
        };
        tokio::time::sleep(pause).await;
        let written = format!("s{id}-{n}");
        let value = match op {
            KvOp::Put => RawValue::from_string(serde_json::to_string(&written).unwrap_or_default()).ok(),
            _ => None,
        };
        let address = cluster.addresses[target].clone();
        let answer = match cluster.incarnation(&address) {
            Some(inc) => {
                let req = KvRequest::client(op, key.clone(), value, context.clone(), inc.node.config.causal_wait);
                let node = inc.node.clone();
                match tokio::time::timeout(CLIENT_TIMEOUT, inc.run(async move { node.serve_key(&req).await })).await {
                    Ok(Some(answer)) => Some(answer),
                    _ => None,
                }
            }
            // Connection refused: nothing happened.
            None => None,
        };
        let served_by = match &answer {
            Some(KvAnswer::Reply(r)) => r.served_by.clone(),
            Some(KvAnswer::Error(e)) => e.served_by.clone(),
            _ => None,
        };
        let (kind, outcome, next) = judge(op, &key, &written, answer);
        tracing::debug!(at = ?cluster.elapsed(), session = id, n, %address, ?served_by, ?kind, ?outcome, context = ?next, "sim op");
        if let Some(next) = next {
            context = next;
        }
        history.lock().record(Op { session: id, kind, outcome, context: serde_json::Value::Null, group: None });
    }
}

/// A snapshot read of `keys` (duplicates allowed: the node answers each
/// once), recorded as one group of reads.
async fn snapshot_read(
    cluster: &SimCluster,
    id: usize,
    n: usize,
    target: usize,
    keys: Vec<String>,
    context: &mut CausalContext,
    history: &Mutex<History>,
) {
    let group = (id as u64) << 32 | n as u64;
    let answer = match cluster.incarnation(&cluster.addresses[target]) {
        Some(inc) => {
            let node = inc.node.clone();
            let (ks, ctx) = (keys.clone(), context.clone());
            tokio::time::timeout(CLIENT_TIMEOUT, inc.run(async move { node.snapshot_read(&ks, &ctx).await })).await.ok().flatten()
        }
        None => None,
    };
    tracing::debug!(at = ?cluster.elapsed(), session = id, n, ?keys, ok = matches!(answer, Some(Ok(_))), "sim snapshot read");
    let Some(Ok(read)) = answer else {
        // A failed read says nothing.
        return;
    };
    *context = read.context;
    let mut h = history.lock();
    for (key, value) in read.values {
        let value = value.map(|v| serde_json::from_str::<String>(v.get()).unwrap_or_else(|_| v.get().to_owned()));
        h.record(Op::read(id, key, value.as_deref()).in_snapshot(group));
    }
}

/// The history entry of one answer, and the context to carry on with.
fn judge(op: KvOp, key: &str, written: &str, answer: Option<KvAnswer>) -> (OpKind, Outcome, Option<CausalContext>) {
    let write = |value: String| OpKind::Write { key: key.to_owned(), value };
    let tombstone = format!("{}{written}", crate::check::TOMBSTONE_PREFIX);
    let attempted = match op {
        KvOp::Put => write(written.to_owned()),
        KvOp::Delete => write(tombstone),
        KvOp::Get => OpKind::Read { key: key.to_owned(), value: None },
    };
    let Some(answer) = answer else { return (attempted, Outcome::Failed, None) };
    match answer {
        KvAnswer::Reply(reply) => {
            let kind = match (&reply.outcome, op) {
                (KvOutcome::Found(v), _) => {
                    let value = serde_json::from_str::<String>(v.get()).unwrap_or_else(|_| v.get().to_owned());
                    OpKind::Read { key: key.to_owned(), value: Some(value) }
                }
                _ => attempted,
            };
            (kind, Outcome::Ok, Some(reply.context))
        }
        KvAnswer::Error(e) => match (e.kind, op) {
            // A DELETE of an absent key: the master found nothing, as a read would.
            (KvErrorKind::NotFound, KvOp::Delete) => (OpKind::Read { key: key.to_owned(), value: None }, Outcome::Ok, Some(e.context)),
            (KvErrorKind::NotFound, _) => (attempted, Outcome::Ok, Some(e.context)),
            _ => (attempted, Outcome::Failed, None),
        },
        // The simulated network relays typed answers.
        KvAnswer::Relayed(_) => (attempted, Outcome::Failed, None),
    }
}

/// Injects faults until `done` is notified.
pub async fn nemesis(cluster: Arc<SimCluster>, config: SimConfig, done: Arc<tokio::sync::Notify>) {
    let mut view_changed = false;
    let start = tokio::time::Instant::now();
    loop {
        let pause = cluster.net.with_rng(|r| Duration::from_millis(r.random_range(300..1500)));
        tokio::select! {
            biased;
            _ = done.notified() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let n = cluster.addresses.len();
        let (choice, a, b) = cluster.net.with_rng(|r| (r.random_range(0..10), r.random_range(0..n), r.random_range(0..n)));
        let (addr_a, addr_b) = (cluster.addresses[a].clone(), cluster.addresses[b].clone());
        match choice {
            0..=2 if config.has("partition") && a != b => {
                tracing::debug!(a = %addr_a, b = %addr_b, "sim: cut");
                cluster.net.cut(&addr_a, &addr_b);
                let heal_after = cluster.net.with_rng(|r| Duration::from_millis(r.random_range(500..3000)));
                let net = cluster.net.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(heal_after).await;
                    net.heal_all();
                });
            }
            3..=4 if config.has("crash") && cluster.is_up(&addr_a) => {
                tracing::debug!(node = %addr_a, "sim: crash");
                cluster.crash(&addr_a);
                let down_for = cluster.net.with_rng(|r| Duration::from_millis(r.random_range(200..3000)));
                let c = cluster.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(down_for).await;
                    if !c.is_up(&addr_a) {
                        tracing::debug!(node = %addr_a, "sim: restart");
                        c.start(&addr_a);
                    }
                });
            }
            5 if config.has("skew") => {
                let step = cluster.net.with_rng(|r| r.random_range(-100..=100));
                cluster.clocks[&addr_a].step(step);
            }
            6..=7 if config.has("viewchange") && !view_changed && start.elapsed() > Duration::from_secs(2) => {
                view_changed = true;
                let c = cluster.clone();
                tokio::spawn(async move { change_view(&c).await });
            }
            _ => {}
        }
    }
}

/// Adds every node of the cluster to the view, from a live coordinator.
async fn change_view(cluster: &SimCluster) {
    let current = cluster.current_view();
    let Ok(new) = View::new(cluster.addresses.clone(), current.repl_factor, current.epoch + 1) else { return };
    let coordinator =
        cluster.addresses.iter().find_map(|a| cluster.incarnation(a).filter(|i| i.node.current().map.view.epoch == current.epoch));
    let Some(inc) = coordinator else { return };
    let node = inc.node.clone();
    let result = inc.run(async move { node.change_view(new).await.map(|_| ()) }).await;
    if let Some(Err(e)) = result {
        tracing::debug!(error = %e, "simulated view change failed");
    }
}

/// What a simulated watcher received.
#[derive(Debug, Default)]
pub struct WatchLog {
    pub events: Vec<Seen>,
    /// Times it connected again (after its node died, a feed ended, or on purpose).
    pub reconnects: usize,
    /// Feeds that ended with `history-gone` (the watcher was told it missed writes).
    pub gaps: usize,
}

/// One write event.
#[derive(Debug, Clone)]
pub struct Seen {
    pub key: String,
    pub value: Option<String>,
    pub epoch: u64,
    pub origin: String,
    pub seq: u64,
    pub deps: crate::causal::Clock,
}

/// Watches every key (`k…`) from the start of the first epoch, through a
/// random node; moves to another node when its node dies or a feed ends,
/// and now and then on purpose, resuming from the last context it received.
/// After a `history-gone` end it watches from now, and drops the events the
/// end's context covers (as API.md tells clients to): it had them already,
/// and a replica that lags behind the one it read before sends them again.
pub async fn watcher(cluster: Arc<SimCluster>, id: usize, stop: Arc<std::sync::atomic::AtomicBool>, log: Arc<Mutex<WatchLog>>) {
    use crate::node::feed::{EndReason, WatchEvent};
    use std::sync::atomic::Ordering;
    let mut from = Some(CausalContext { epoch: cluster.current_view().epoch, clock: Default::default() });
    // What the watcher had when its last feed said `history-gone`.
    let mut before_gap: Option<CausalContext> = None;
    while !stop.load(Ordering::Relaxed) {
        let (target, leave_after) = cluster.net.with_rng(|r| (r.random_range(0..cluster.addresses.len()), r.random_range(5..60)));
        let address = cluster.addresses[target].clone();
        let Some(inc) = cluster.incarnation(&address) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        // The watch runs as work of that node: its crash ends it.
        let (pipe_tx, mut events) = tokio::sync::mpsc::channel::<WatchEvent>(crate::node::feed::EVENT_BUFFER);
        let node = inc.node.clone();
        let start = from.clone();
        let pipe = tokio::spawn(async move {
            inc.run(async move {
                let start = match start {
                    Some(s) => s,
                    None => match node.watch_position().await {
                        Some(now) => now,
                        None => return,
                    },
                };
                let mut rx = node.watch("k".into(), start);
                while let Some(event) = rx.recv().await {
                    if pipe_tx.send(event).await.is_err() {
                        return;
                    }
                }
            })
            .await
        });
        let mut received = 0;
        loop {
            if stop.load(Ordering::Relaxed) || received >= leave_after {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
                Err(_) => continue,
                Ok(None) => break,
                Ok(Some(WatchEvent::Write { record, context })) => {
                    received += 1;
                    let had = before_gap
                        .as_ref()
                        .is_some_and(|c| c.epoch == record.dot.epoch && c.clock.get(&record.dot.origin) >= record.dot.seq);
                    if had {
                        from = Some(context);
                        continue;
                    }
                    let value =
                        record.value.as_ref().map(|v| serde_json::from_str::<String>(v.get()).unwrap_or_else(|_| v.get().to_owned()));
                    log.lock().events.push(Seen {
                        key: record.key.clone(),
                        value,
                        epoch: record.dot.epoch,
                        origin: record.dot.origin.clone(),
                        seq: record.dot.seq,
                        deps: record.deps.clone(),
                    });
                    from = Some(context);
                }
                Ok(Some(WatchEvent::End { reason, context })) => {
                    tracing::debug!(at = ?cluster.elapsed(), watcher = id, ?reason, "sim: feed ended");
                    if reason == EndReason::HistoryGone {
                        log.lock().gaps += 1;
                        // Joined with an earlier gap's: a feed from now may
                        // start below what the watcher had then.
                        before_gap = Some(match before_gap.take() {
                            Some(mut had) if had.epoch == context.epoch => {
                                had.clock.merge(&context.clock);
                                had
                            }
                            _ => context,
                        });
                        from = None;
                    } else {
                        from = Some(context);
                    }
                    break;
                }
            }
        }
        pipe.abort();
        log.lock().reconnects += 1;
        tracing::debug!(at = ?cluster.elapsed(), watcher = id, %address, received, "sim: watcher reconnects");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a watcher has every acknowledged put of the history (or said it
/// has a gap: then it cannot).
pub fn caught_up(log: &WatchLog, history: &History) -> bool {
    log.gaps > 0 || watch_problems(log, history).iter().all(|p| !p.starts_with("missed"))
}

/// What is wrong with what a watcher received, given the acknowledged
/// writes: the same write twice, a write after one that depends on it, and
/// acknowledged puts never received (unless a feed said it had a gap).
pub fn watch_problems(log: &WatchLog, history: &History) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for e in &log.events {
        if !seen.insert((e.epoch, e.origin.clone(), e.seq)) {
            problems.push(format!("duplicated event: {} = {:?} ({}:{}@{})", e.key, e.value, e.origin, e.seq, e.epoch));
        }
    }
    for (j, later) in log.events.iter().enumerate() {
        for earlier in &log.events[..j] {
            let cause_after_effect =
                later.epoch < earlier.epoch || (later.epoch == earlier.epoch && earlier.deps.get(&later.origin) >= later.seq);
            if cause_after_effect {
                problems.push(format!(
                    "out of order: {} = {:?} ({}:{}) came after {} = {:?}, which depends on it",
                    later.key, later.value, later.origin, later.seq, earlier.key, earlier.value
                ));
                break;
            }
        }
    }
    if log.gaps == 0 {
        let received: std::collections::HashSet<&str> = log.events.iter().filter_map(|e| e.value.as_deref()).collect();
        for op in history.ops() {
            if let (OpKind::Write { key, value }, Outcome::Ok) = (&op.kind, op.outcome)
                && !value.starts_with(crate::check::TOMBSTONE_PREFIX)
                && key.starts_with('k')
                && !received.contains(value.as_str())
            {
                problems.push(format!("missed event: acknowledged write {key} = {value:?}"));
            }
        }
    }
    problems
}

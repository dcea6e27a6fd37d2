//! Causal-consistency checker for histories recorded by client sessions
//! (used by the fault tests and the simulator).
//!
//! **What it checks.** A history is a list of single-key operations recorded
//! by sessions (each session is one client carrying its causal context):
//! writes of globally unique values, and reads that return a value or
//! "absent". The checker builds the causal order `hb` as the transitive
//! closure of session order and reads-from (as in Elle's session guarantees
//! and Biswas & Enea, "On the complexity of checking transactional
//! consistency", OOPSLA 2019, restricted to single-key operations), then
//! looks for the bad pattern: a read of key k that returns a write w (or
//! nothing) although it causally depends on a write w' to k that itself
//! causally follows w (or any write to k, when the read returned nothing).
//! Each violating read is reported once, classified as a session guarantee
//! ([`ViolationKind`]); reads of values no write wrote and cycles in `hb` are
//! reported too. After convergence, the final per-node values
//! ([`FinalState`]) are checked for divergence and lost acknowledged writes.
//!
//! **Deletes** are writes of a unique tombstone ([`Op::delete`],
//! [`TOMBSTONE_PREFIX`]): no read returns one, and a read that finds its key
//! absent may have read from the initial state or from any delete of the key
//! that is not in its causal future — it is a violation only when every
//! such source is overwritten by a write the read depends on. A key absent
//! everywhere at the end is right when some delete of it is followed by no
//! acknowledged write.
//!
//! **Invariants the caller must keep.** Every written value is globally
//! unique (a read names the write it saw by its value); a session's
//! operations are recorded in that session's order (sessions may interleave
//! freely); operation indices are recording order. The checker itself is
//! deterministic: the same history and final state give the same [`Report`]
//! (no hash-map iteration order reaches the output), and
//! [`History::digest_into`] / [`History::dump`] give a stable fingerprint of
//! a history for replaying simulations.
//!
//! Failed operations (errors, timeouts): a failed read says nothing and is
//! ignored; a failed write may or may not have happened, so it is a possible
//! reads-from source, it depends on its session's earlier operations, but its
//! session's later operations do not depend on it (session order skips it).
//!
//! ```
//! use causalkv::check::{FinalState, History, Op, ViolationKind};
//!
//! let mut h = History::new();
//! h.record(Op::write(1, "x", "1"));
//! h.record(Op::write(1, "x", "2"));
//! h.record(Op::read(1, "x", Some("1"))); // stale: its own write x=2 is missing
//! let report = h.check(&FinalState::converged(3, [("x", Some("2"))]));
//! assert_eq!(report.violations[0].kind, ViolationKind::ReadYourWrites);
//! ```

use std::collections::{BTreeMap, HashMap};

/// A client session (one causal context).
pub type SessionId = usize;

/// Whether the client learned the operation's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    /// Error or timeout: a write may or may not have happened.
    Failed,
}

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Every written value is globally unique.
    Write { key: String, value: String },
    /// `None` = 404 (key absent).
    Read { key: String, value: Option<String> },
}

/// One recorded operation.
///
/// `Hash` covers every field; the context is hashed through its canonical
/// text (object keys sorted), so equal operations hash equally in any
/// process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub session: SessionId,
    pub kind: OpKind,
    pub outcome: Outcome,
    /// The causal context the operation returned (informational only: the
    /// checker never reads it). `Value::Null` when the caller has none.
    pub context: serde_json::Value,
    /// Reads of one snapshot read share a group ([`Op::in_snapshot`]): each
    /// of them depends on what all of them returned.
    pub group: Option<u64>,
}

/// Marks a write that deletes its key: a DELETE is recorded as a write of
/// `TOMBSTONE_PREFIX` + a unique id ([`Op::delete`]). A read that finds the
/// key absent may have read from the initial state or from any delete.
pub const TOMBSTONE_PREFIX: &str = "\u{2205}";

fn is_tombstone(op: &Op) -> bool {
    matches!(&op.kind, OpKind::Write { value, .. } if value.starts_with(TOMBSTONE_PREFIX))
}

impl Op {
    /// An acknowledged delete of `key`; `id` must be unique among deletes.
    pub fn delete(session: SessionId, key: impl Into<String>, id: &str) -> Op {
        Op::write(session, key, format!("{TOMBSTONE_PREFIX}{id}"))
    }

    /// An acknowledged write of `value` (globally unique) to `key`, with no context.
    pub fn write(session: SessionId, key: impl Into<String>, value: impl Into<String>) -> Op {
        Op {
            session,
            kind: OpKind::Write { key: key.into(), value: value.into() },
            outcome: Outcome::Ok,
            context: serde_json::Value::Null,
            group: None,
        }
    }

    /// An acknowledged read of `key` that returned `value` (`None` = absent), with no context.
    pub fn read(session: SessionId, key: impl Into<String>, value: Option<&str>) -> Op {
        Op {
            session,
            kind: OpKind::Read { key: key.into(), value: value.map(String::from) },
            outcome: Outcome::Ok,
            context: serde_json::Value::Null,
            group: None,
        }
    }

    /// The same read, as one key of snapshot read `group` (unique per
    /// snapshot read). A snapshot read of n keys is recorded as n reads of
    /// one session, one after another, in one group: the checker makes each
    /// depend on every write the group read, so a group that returns a
    /// write together with an older version of something it depends on is a
    /// violation ([`ViolationKind::SnapshotNotClosed`]).
    pub fn in_snapshot(mut self, group: u64) -> Op {
        self.group = Some(group);
        self
    }

    /// The same operation, failed (error or timeout).
    pub fn failed(mut self) -> Op {
        self.outcome = Outcome::Failed;
        self
    }

    /// The same operation with the causal context it returned.
    pub fn with_context(mut self, context: serde_json::Value) -> Op {
        self.context = context;
        self
    }

    /// The key the operation touched.
    pub fn key(&self) -> &str {
        key_of(self)
    }

    /// One line, stable across processes and versions of this crate's
    /// dependencies: `session kind key value outcome context`, fields
    /// separated by tabs, strings JSON-quoted, the context in canonical JSON.
    pub fn dump_line(&self) -> String {
        let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
        let (kind, key, value) = match &self.kind {
            OpKind::Write { key, value } => ("write", key, q(value)),
            OpKind::Read { key, value: Some(v) } => ("read", key, q(v)),
            OpKind::Read { key, value: None } => ("read", key, "absent".to_string()),
        };
        let outcome = match self.outcome {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
        };
        let mut context = String::new();
        canonical_json(&self.context, &mut context);
        let group = self.group.map(|g| format!("\tsnapshot {g}")).unwrap_or_default();
        format!("{}\t{kind}\t{}\t{value}\t{outcome}\t{context}{group}", self.session, q(key))
    }
}

impl std::hash::Hash for Op {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.session.hash(state);
        self.kind.hash(state);
        self.outcome.hash(state);
        let mut context = String::new();
        canonical_json(&self.context, &mut context);
        context.hash(state);
        self.group.hash(state);
    }
}

/// JSON text with object keys in sorted order, whatever map type
/// `serde_json` was built with (`preserve_order` keeps insertion order).
fn canonical_json(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The operations of all sessions, in recording order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct History {
    ops: Vec<Op>,
}

/// After the cluster converged: for every key, the value each node returns
/// (`None` = absent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FinalState {
    pub values: BTreeMap<String, Vec<Option<String>>>,
}

impl FinalState {
    /// No keys.
    pub fn new() -> FinalState {
        FinalState::default()
    }

    /// Every key in `pairs` with the same value on `nodes` nodes.
    pub fn converged<'a>(nodes: usize, pairs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> FinalState {
        FinalState { values: pairs.into_iter().map(|(k, v)| (k.to_owned(), vec![v.map(String::from); nodes])).collect() }
    }

    /// Sets what each node returns for `key` (`None` = absent).
    pub fn set(&mut self, key: impl Into<String>, per_node: Vec<Option<String>>) -> &mut FinalState {
        self.values.insert(key.into(), per_node);
        self
    }
}

/// What [`History::check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub operations: usize,
    pub reads: usize,
    pub writes: usize,
    pub failed: usize,
    /// Empty = causally consistent.
    pub violations: Vec<Violation>,
    /// Descriptions of acknowledged writes lost after convergence.
    pub lost_writes: Vec<String>,
}

/// One read that broke causal consistency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub kind: ViolationKind,
    pub description: String,
}

/// The session guarantee (or other rule) a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViolationKind {
    ReadYourWrites,
    MonotonicReads,
    MonotonicWrites,
    WritesFollowReads,
    CyclicCausality,
    ThinAirRead,
    /// A snapshot read returned a write and an older version of a key that
    /// write depends on.
    SnapshotNotClosed,
}

const ALL_KINDS: [ViolationKind; 7] = [
    ViolationKind::ReadYourWrites,
    ViolationKind::MonotonicReads,
    ViolationKind::MonotonicWrites,
    ViolationKind::WritesFollowReads,
    ViolationKind::CyclicCausality,
    ViolationKind::ThinAirRead,
    ViolationKind::SnapshotNotClosed,
];

impl Report {
    /// No violation and no lost write.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty() && self.lost_writes.is_empty()
    }

    /// One line: operation counts, violations by kind, lost writes.
    pub fn summary(&self) -> String {
        let by_kind: Vec<String> = ALL_KINDS
            .iter()
            .filter_map(|k| {
                let n = self.violations.iter().filter(|v| v.kind == *k).count();
                (n > 0).then(|| format!("{k:?}={n}"))
            })
            .collect();
        format!(
            "operations={} reads={} writes={} failed={} violations={} [{}] lost_writes={}",
            self.operations,
            self.reads,
            self.writes,
            self.failed,
            self.violations.len(),
            if by_kind.is_empty() { "none".to_string() } else { by_kind.join(", ") },
            self.lost_writes.len()
        )
    }
}

fn is_failed(op: &Op) -> bool {
    matches!(op.outcome, Outcome::Failed)
}

fn key_of(op: &Op) -> &str {
    match &op.kind {
        OpKind::Write { key, .. } | OpKind::Read { key, .. } => key,
    }
}

/// `op #i (session s, write k='v')`, for descriptions.
fn describe(ops: &[Op], i: usize) -> String {
    let op = &ops[i];
    let failed = if is_failed(op) { ", failed" } else { "" };
    match &op.kind {
        OpKind::Write { key, value } => format!("op #{i} (session {}, write {key}='{value}'{failed})", op.session),
        OpKind::Read { key, value: Some(v) } => {
            format!("op #{i} (session {}, read {key} -> '{v}'{failed})", op.session)
        }
        OpKind::Read { key, value: None } => format!("op #{i} (session {}, read {key} -> absent{failed})", op.session),
    }
}

fn value_of(ops: &[Op], w: Option<usize>) -> String {
    match w.map(|w| &ops[w].kind) {
        Some(OpKind::Write { value, .. }) => format!("'{value}'"),
        _ => "absent".to_string(),
    }
}

/// Strict causal predecessors of every operation, one bitset row per op.
struct Closure {
    words: usize,
    bits: Vec<u64>,
}

impl Closure {
    fn new(n: usize) -> Self {
        let words = n.div_ceil(64);
        Closure { words, bits: vec![0; words * n] }
    }

    /// `a hb b`.
    fn hb(&self, a: usize, b: usize) -> bool {
        (self.bits[b * self.words + a / 64] >> (a % 64)) & 1 == 1
    }

    /// Row `dst` |= row `src` ∪ {src}.
    fn absorb(&mut self, dst: usize, src: usize) {
        let w = self.words;
        let (d, s) = if dst > src {
            let (lo, hi) = self.bits.split_at_mut(dst * w);
            (&mut hi[..w], &lo[src * w..src * w + w])
        } else {
            let (lo, hi) = self.bits.split_at_mut(src * w);
            (&mut lo[dst * w..dst * w + w], &hi[..w])
        };
        for (a, b) in d.iter_mut().zip(s) {
            *a |= *b;
        }
        d[src / 64] |= 1 << (src % 64);
    }
}

/// The dependency graph of a history.
struct Graph<'a> {
    ops: &'a [Op],
    /// Direct predecessors (session order and reads-from).
    preds: Vec<Vec<usize>>,
    /// For an acknowledged read: the write it read from.
    read_from: Vec<Option<usize>>,
    /// (key, value) -> the write of that value.
    write_of: HashMap<(&'a str, &'a str), usize>,
    /// key -> its writes, in recording order.
    writes_to: BTreeMap<&'a str, Vec<usize>>,
    /// Reads whose value no write wrote.
    thin_air: Vec<usize>,
    /// Session -> its operations in session order (failed reads excluded).
    sessions: HashMap<SessionId, Vec<usize>>,
    /// Snapshot group -> the writes its reads returned.
    group_sources: HashMap<u64, Vec<usize>>,
}

impl<'a> Graph<'a> {
    fn build(ops: &'a [Op]) -> Self {
        let n = ops.len();
        let mut write_of = HashMap::new();
        let mut writes_to: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            if let OpKind::Write { key, value } = &op.kind {
                write_of.entry((key.as_str(), value.as_str())).or_insert(i);
                writes_to.entry(key.as_str()).or_default().push(i);
            }
        }
        let mut preds = vec![Vec::new(); n];
        let mut read_from = vec![None; n];
        let mut thin_air = Vec::new();
        let mut sessions: HashMap<SessionId, Vec<usize>> = HashMap::new();
        // Last operation of each session whose effects the session knows.
        let mut last: HashMap<SessionId, usize> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            let is_read = matches!(op.kind, OpKind::Read { .. });
            if is_read && is_failed(op) {
                continue;
            }
            sessions.entry(op.session).or_default().push(i);
            if let Some(&p) = last.get(&op.session) {
                preds[i].push(p);
            }
            if !is_failed(op) {
                last.insert(op.session, i);
            }
            if let OpKind::Read { key, value: Some(v) } = &op.kind {
                match write_of.get(&(key.as_str(), v.as_str())) {
                    Some(&w) => {
                        preds[i].push(w);
                        read_from[i] = Some(w);
                    }
                    None => thin_air.push(i),
                }
            }
        }
        // Every read of a snapshot depends on what each of them returned.
        let mut group_sources: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            if let (Some(g), Some(w)) = (op.group, read_from[i]) {
                group_sources.entry(g).or_default().push(w);
            }
        }
        for (i, op) in ops.iter().enumerate() {
            let Some(sources) = op.group.and_then(|g| group_sources.get(&g)) else { continue };
            if is_failed(op) {
                continue;
            }
            for &w in sources {
                if read_from[i] != Some(w) && !preds[i].contains(&w) {
                    preds[i].push(w);
                }
            }
        }
        Graph { ops, preds, read_from, write_of, writes_to, thin_air, sessions, group_sources }
    }

    /// A topological order of all operations, or a cycle (in edge order).
    fn topo_order(&self) -> Result<Vec<usize>, (Vec<usize>, usize)> {
        let n = self.ops.len();
        let mut succs = vec![Vec::new(); n];
        let mut indeg = vec![0usize; n];
        for (i, ps) in self.preds.iter().enumerate() {
            for &p in ps {
                succs[p].push(i);
                indeg[i] += 1;
            }
        }
        let mut order: Vec<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
        let mut next = 0;
        while next < order.len() {
            let i = order[next];
            next += 1;
            for &s in &succs[i] {
                indeg[s] -= 1;
                if indeg[s] == 0 {
                    order.push(s);
                }
            }
        }
        if order.len() == n {
            return Ok(order);
        }
        // Every op left over has a left-over predecessor: walk backwards
        // until an op repeats; the walk between the repeats is a cycle.
        let stuck = n - order.len();
        let start = (0..n).find(|&i| indeg[i] > 0).expect("a left-over op");
        let mut seen_at: HashMap<usize, usize> = HashMap::new();
        let mut walk = Vec::new();
        let mut cur = start;
        loop {
            if let Some(&at) = seen_at.get(&cur) {
                let mut cycle = walk[at..].to_vec();
                cycle.reverse();
                return Err((cycle, stuck));
            }
            seen_at.insert(cur, walk.len());
            walk.push(cur);
            cur = *self.preds[cur].iter().find(|&&p| indeg[p] > 0).expect("a left-over predecessor");
        }
    }

    fn closure(&self, order: &[usize]) -> Closure {
        let mut c = Closure::new(self.ops.len());
        for &i in order {
            for &p in &self.preds[i] {
                c.absorb(i, p);
            }
        }
        c
    }

    /// The cross-session hops of a causal path from `from` to `to`.
    fn witness(&self, hb: &Closure, from: usize, to: usize) -> String {
        let mut path = vec![to];
        let mut cur = to;
        while cur != from {
            cur = *self.preds[cur].iter().find(|&&p| p == from || hb.hb(from, p)).expect("a predecessor on the causal path");
            path.push(cur);
        }
        path.reverse();
        let hops: Vec<String> = path
            .windows(2)
            .filter(|e| self.ops[e[0]].session != self.ops[e[1]].session)
            .map(|e| format!("{} => {}", describe(self.ops, e[0]), describe(self.ops, e[1])))
            .collect();
        if hops.is_empty() { "via session order".to_string() } else { format!("via {}", hops.join(", then ")) }
    }

    /// Checks one acknowledged read against the bad pattern.
    fn check_read(&self, hb: &Closure, r: usize) -> Option<Violation> {
        let ops = self.ops;
        let key = key_of(&ops[r]);
        let w = self.read_from[r];
        if w.is_none() && matches!(ops[r].kind, OpKind::Read { value: Some(_), .. }) {
            return None; // thin air, reported on its own
        }
        let writes = self.writes_to.get(key)?;
        // Writes to the key that r depends on and that overwrote `source`.
        let newer_than = |source: Option<usize>| -> Vec<usize> {
            writes.iter().copied().filter(|&w2| Some(w2) != source && hb.hb(w2, r) && source.is_none_or(|s| hb.hb(s, w2))).collect()
        };
        let mut newer = newer_than(w);
        if w.is_none() && !newer.is_empty() {
            // Absent: read from the initial state or from any delete of the
            // key that is not in r's future; the best fitting source counts.
            for t in writes.iter().copied().filter(|&t| is_tombstone(&ops[t]) && !hb.hb(r, t)) {
                let over_t = newer_than(Some(t));
                if over_t.len() < newer.len() {
                    newer = over_t;
                }
                if newer.is_empty() {
                    return None;
                }
            }
        }
        if newer.is_empty() {
            return None;
        }
        let session = ops[r].session;
        let got = value_of(ops, w);
        let read = describe(ops, r);
        let overwrote = match w {
            Some(w) => format!(", which causally follows the returned {}", describe(ops, w)),
            None => String::new(),
        };

        // Not a cut: another read of the same snapshot returned a write
        // that depends on a newer version of this key.
        if let Some(sources) = ops[r].group.and_then(|g| self.group_sources.get(&g)) {
            for &s in sources.iter().filter(|&&s| Some(s) != w) {
                if let Some(&w2) = newer.iter().find(|&&w2| w2 == s || hb.hb(w2, s)) {
                    return Some(Violation {
                        kind: ViolationKind::SnapshotNotClosed,
                        description: format!(
                            "snapshot-not-closed: {read} returned {got}, but the same snapshot read returned {}, which \
                             depends on {}, a later write of that key",
                            describe(ops, s),
                            describe(ops, w2)
                        ),
                    });
                }
            }
        }

        // Read your writes: the session itself wrote w' before r.
        if let Some(&w2) = newer.iter().find(|&&w2| ops[w2].session == session && !is_failed(&ops[w2])) {
            return Some(Violation {
                kind: ViolationKind::ReadYourWrites,
                description: format!(
                    "read-your-writes: session {session} wrote {} and later {read} returned {got}{overwrote}",
                    describe(ops, w2)
                ),
            });
        }
        // Monotonic writes: w and a later write w' of one other session.
        if let Some(w) = w {
            let writer = ops[w].session;
            if writer != session
                && let Some(&w2) = newer.iter().find(|&&w2| ops[w2].session == writer && w2 > w)
            {
                return Some(Violation {
                    kind: ViolationKind::MonotonicWrites,
                    description: format!(
                        "monotonic-writes: session {writer} wrote {} then {}; session {session} depends on the \
                         second ({}) but {read} returned the first",
                        describe(ops, w),
                        describe(ops, w2),
                        self.witness(hb, w2, r)
                    ),
                });
            }
        }
        // Monotonic reads: the session earlier read k and saw w' (or a write
        // that causally follows w').
        let earlier = &self.sessions[&session];
        for &r0 in earlier.iter().take_while(|&&r0| r0 < r) {
            if is_failed(&ops[r0]) || !matches!(ops[r0].kind, OpKind::Read { .. }) || key_of(&ops[r0]) != key {
                continue;
            }
            let Some(seen) = self.read_from[r0] else { continue };
            if let Some(&w2) = newer.iter().find(|&&w2| w2 == seen || hb.hb(w2, seen)) {
                return Some(Violation {
                    kind: ViolationKind::MonotonicReads,
                    description: format!(
                        "monotonic-reads: session {session} earlier {} (which includes {}), then {read} returned \
                         {got}{overwrote}",
                        describe(ops, r0),
                        describe(ops, w2)
                    ),
                });
            }
        }
        // Writes follow reads: the dependency came through other sessions.
        let w2 = *newer.last().expect("non-empty");
        Some(Violation {
            kind: ViolationKind::WritesFollowReads,
            description: format!(
                "writes-follow-reads: {read} returned {got}{overwrote}, but session {session} causally depends on \
                 {} {}{}",
                describe(ops, w2),
                self.witness(hb, w2, r),
                if newer.len() > 1 { format!(" (and {} more such writes)", newer.len() - 1) } else { String::new() }
            ),
        })
    }

    /// Divergence and lost acknowledged writes; `hb` is None when the
    /// history is cyclic (then only the checks that need no order run).
    fn check_final(&self, hb: Option<&Closure>, final_state: &FinalState, lost: &mut Vec<String>) {
        let ops = self.ops;
        for (&key, writes) in &self.writes_to {
            let acked: Vec<usize> = writes.iter().copied().filter(|&w| !is_failed(&ops[w])).collect();
            let Some(&last) = acked.last() else { continue };
            let values = match final_state.values.get(key) {
                Some(v) if !v.is_empty() => v,
                _ => {
                    lost.push(format!(
                        "key {key} missing from the final state: {} acknowledged writes lost (e.g. {})",
                        acked.len(),
                        describe(ops, last)
                    ));
                    continue;
                }
            };
            if values.windows(2).any(|p| p[0] != p[1]) {
                lost.push(format!("key {key} diverged: nodes report {values:?}"));
                continue;
            }
            let Some(value) = &values[0] else {
                // Absent is right when some delete is overwritten by no
                // acknowledged write that causally follows it.
                let deleted = writes.iter().copied().filter(|&t| is_tombstone(&ops[t])).any(|t| match hb {
                    Some(hb) => !acked.iter().any(|&a| a != t && hb.hb(t, a)),
                    None => true,
                });
                if deleted {
                    continue;
                }
                lost.push(format!(
                    "key {key} absent on every node: {} acknowledged writes lost (e.g. {})",
                    acked.len(),
                    describe(ops, last)
                ));
                continue;
            };
            let Some(&w0) = self.write_of.get(&(key, value.as_str())) else {
                lost.push(format!("key {key} converged to '{value}', which no write wrote: acknowledged writes lost"));
                continue;
            };
            let Some(hb) = hb else { continue };
            for &a in &acked {
                if a != w0 && hb.hb(w0, a) {
                    lost.push(format!(
                        "acknowledged write {} lost: overwritten by causally earlier {}",
                        describe(ops, a),
                        describe(ops, w0)
                    ));
                }
            }
        }
    }
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// The recorded operations, in recording order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Feeds the whole history (every field of every operation, in
    /// recording order, and the count) to `hasher`: equal histories give
    /// equal digests for a given hasher, in any process.
    pub fn digest_into<H: std::hash::Hasher>(&self, hasher: &mut H) {
        std::hash::Hash::hash(self, hasher);
    }

    /// The history as text, one [`Op::dump_line`] per operation, each line
    /// prefixed with its index: stable, diffable, hashable.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for (i, op) in self.ops.iter().enumerate() {
            out.push_str(&format!("{i}\t{}\n", op.dump_line()));
        }
        out
    }

    /// Appends an operation and returns its index. A session's operations
    /// must be recorded in that session's order (sessions may interleave).
    pub fn record(&mut self, op: Op) -> usize {
        self.ops.push(op);
        self.ops.len() - 1
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Checks the history against causal consistency and `final_state`
    /// against it (see the module documentation).
    pub fn check(&self, final_state: &FinalState) -> Report {
        let ops = &self.ops[..];
        let mut report = Report { operations: ops.len(), ..Report::default() };
        for op in ops {
            match op.kind {
                OpKind::Read { .. } => report.reads += 1,
                OpKind::Write { .. } => report.writes += 1,
            }
            if is_failed(op) {
                report.failed += 1;
            }
        }
        let graph = Graph::build(ops);
        for &r in &graph.thin_air {
            report.violations.push(Violation {
                kind: ViolationKind::ThinAirRead,
                description: format!("thin-air read: {} returned a value no write wrote", describe(ops, r)),
            });
        }
        let order = match graph.topo_order() {
            Ok(order) => order,
            Err((cycle, stuck)) => {
                let ring: Vec<String> = cycle.iter().chain(cycle.first()).map(|&i| describe(ops, i)).collect();
                report.violations.push(Violation {
                    kind: ViolationKind::CyclicCausality,
                    description: format!(
                        "causality cycle of {} ops: {} ({stuck} ops are on or after a cycle)",
                        cycle.len(),
                        ring.join(" -> ")
                    ),
                });
                graph.check_final(None, final_state, &mut report.lost_writes);
                return report;
            }
        };
        let hb = graph.closure(&order);
        for (r, op) in ops.iter().enumerate() {
            if matches!(op.kind, OpKind::Read { .. })
                && !is_failed(op)
                && let Some(v) = graph.check_read(&hb, r)
            {
                report.violations.push(v);
            }
        }
        graph.check_final(Some(&hb), final_state, &mut report.lost_writes);
        report
    }
}

//! Self-tests of the causal-consistency checker on hand-built histories:
//! every anomaly it must find is seeded once, and correct histories (including
//! a large generated one) must pass.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hasher};
use std::time::{Duration, Instant};

use causalkv::check::{FinalState, History, Op, Outcome, Report, ViolationKind};
use serde_json::json;

fn write(session: usize, key: &str, value: &str) -> Op {
    Op::write(session, key, value).with_context(json!({}))
}

fn read(session: usize, key: &str, value: Option<&str>) -> Op {
    Op::read(session, key, value).with_context(json!({}))
}

fn failed(op: Op) -> Op {
    op.failed()
}

fn history(ops: Vec<Op>) -> History {
    let mut h = History::new();
    for op in ops {
        h.record(op);
    }
    h
}

/// Every key with the same value on `nodes` nodes.
fn converged(nodes: usize, pairs: &[(&str, Option<&str>)]) -> FinalState {
    FinalState::converged(nodes, pairs.iter().copied())
}

fn state(pairs: &[(&str, &[Option<&str>])]) -> FinalState {
    FinalState { values: pairs.iter().map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.map(String::from)).collect())).collect() }
}

fn kinds(report: &Report) -> Vec<ViolationKind> {
    report.violations.iter().map(|v| v.kind).collect()
}

/// Exactly one violation, of `kind`; returns its description.
fn only(report: &Report, kind: ViolationKind) -> String {
    assert_eq!(kinds(report), vec![kind], "{:#?}", report.violations);
    report.violations[0].description.clone()
}

fn correct_ops() -> Vec<Op> {
    vec![
        read(4, "x", None), // nothing precedes it: absent is fine
        write(0, "x", "a"),
        read(1, "x", Some("a")),
        write(1, "y", "b"),
        read(2, "y", Some("b")),
        read(2, "x", Some("a")),
        write(0, "z", "c1"),
        write(1, "z", "c2"), // concurrent with c1
        read(2, "z", Some("c2")),
        read(2, "z", Some("c2")),
        read(3, "z", Some("c1")),
        read(3, "z", Some("c2")), // c1 and c2 are concurrent: either order is fine
        read(3, "z", Some("c1")),
        read(3, "x", Some("a")),
        read(4, "y", Some("b")),
        read(4, "x", Some("a")),
    ]
}

#[test]
fn correct_history_passes() {
    let h = correct_ops();
    let h = history(h);
    assert_eq!(h.len(), 16);
    for z in ["c1", "c2"] {
        // Concurrent writes: last-writer-wins may keep either.
        let report = h.check(&converged(3, &[("x", Some("a")), ("y", Some("b")), ("z", Some(z))]));
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
        assert!(report.lost_writes.is_empty(), "{:#?}", report.lost_writes);
        assert!(report.is_clean());
        assert_eq!((report.operations, report.reads, report.writes, report.failed), (16, 12, 4, 0));
    }
}

#[test]
fn stale_read_breaks_read_your_writes() {
    let h = history(vec![write(1, "x", "1"), write(1, "x", "2"), read(1, "x", Some("1"))]);
    let report = h.check(&converged(2, &[("x", Some("2"))]));
    let d = only(&report, ViolationKind::ReadYourWrites);
    assert!(d.contains("session 1") && d.contains("x='2'") && d.contains("'1'"), "{d}");
    assert!(report.lost_writes.is_empty());

    // Reading nothing after one's own write is the same anomaly.
    let h = history(vec![write(1, "x", "1"), read(1, "x", None)]);
    only(&h.check(&converged(2, &[("x", Some("1"))])), ViolationKind::ReadYourWrites);
}

#[test]
fn going_back_in_time_breaks_monotonic_reads() {
    let h = history(vec![
        write(1, "x", "1"),
        read(2, "x", Some("1")),
        write(2, "x", "2"), // x=1 hb x=2, different sessions
        read(3, "x", Some("2")),
        read(3, "x", Some("1")),
    ]);
    let d = only(&h.check(&converged(2, &[("x", Some("2"))])), ViolationKind::MonotonicReads);
    assert!(d.contains("session 3") && d.contains("op #4"), "{d}");

    // Seeing a value, then nothing.
    let h = history(vec![write(1, "x", "1"), read(3, "x", Some("1")), read(3, "x", None)]);
    only(&h.check(&converged(2, &[("x", Some("1"))])), ViolationKind::MonotonicReads);
}

#[test]
fn missing_dependency_breaks_writes_follow_reads() {
    // The canonical example: y=b was written after reading x=a, so a session
    // that saw y=b must see x=a.
    let h = history(vec![write(1, "x", "a"), read(2, "x", Some("a")), write(2, "y", "b"), read(3, "y", Some("b")), read(3, "x", None)]);
    let d = only(&h.check(&converged(2, &[("x", Some("a")), ("y", Some("b"))])), ViolationKind::WritesFollowReads);
    assert!(d.contains("session 3") && d.contains("x='a'") && d.contains("y='b'"), "{d}");

    // The same with an older value instead of nothing.
    let h = history(vec![
        write(0, "x", "old"),
        read(1, "x", Some("old")),
        write(1, "x", "a"),
        read(2, "x", Some("a")),
        write(2, "y", "b"),
        read(3, "y", Some("b")),
        read(3, "x", Some("old")),
    ]);
    let d = only(&h.check(&converged(2, &[("x", Some("a")), ("y", Some("b"))])), ViolationKind::WritesFollowReads);
    assert!(d.contains("'old'"), "{d}");
}

#[test]
fn out_of_order_writes_break_monotonic_writes() {
    let h = history(vec![write(1, "x", "1"), write(1, "x", "2"), read(2, "x", Some("2")), read(2, "x", Some("1"))]);
    let d = only(&h.check(&converged(2, &[("x", Some("2"))])), ViolationKind::MonotonicWrites);
    assert!(d.contains("session 1") && d.contains("session 2"), "{d}");

    // Across keys: s1 writes x=1 then y=2; s2 sees y=2 and then x absent.
    // The dependency runs through s1's own session order, so this is the
    // writes-follow-reads pattern (the kinds only name where w' came from).
    let h = history(vec![write(1, "x", "1"), write(1, "y", "2"), read(2, "y", Some("2")), read(2, "x", None)]);
    only(&h.check(&converged(2, &[("x", Some("1")), ("y", Some("2"))])), ViolationKind::WritesFollowReads);
}

#[test]
fn value_nobody_wrote_is_a_thin_air_read() {
    let h = history(vec![write(1, "x", "1"), read(2, "x", Some("ghost")), read(2, "y", Some("1"))]);
    let report = h.check(&converged(2, &[("x", Some("1"))]));
    assert_eq!(kinds(&report), vec![ViolationKind::ThinAirRead; 2], "{:#?}", report.violations);
    assert!(report.violations[0].description.contains("ghost"));
}

#[test]
fn mutual_dependency_is_a_cycle() {
    let h = history(vec![read(1, "y", Some("b")), write(1, "x", "a"), read(2, "x", Some("a")), write(2, "y", "b")]);
    let d = only(&h.check(&converged(2, &[("x", Some("a")), ("y", Some("b"))])), ViolationKind::CyclicCausality);
    for i in 0..4 {
        assert!(d.contains(&format!("op #{i} ")), "{d}");
    }

    // Reading one's own future write.
    let h = history(vec![read(1, "x", Some("a")), write(1, "x", "a")]);
    only(&h.check(&converged(2, &[("x", Some("a"))])), ViolationKind::CyclicCausality);
}

#[test]
fn lost_and_divergent_writes_are_found() {
    let ops = || vec![write(1, "x", "1"), write(1, "x", "2"), write(2, "y", "a"), write(3, "y", "b")];
    let ok = history(ops()).check(&converged(3, &[("x", Some("2")), ("y", Some("a"))]));
    assert!(ok.violations.is_empty() && ok.lost_writes.is_empty(), "{ok:#?}");

    // x=2 causally follows x=1, yet x=1 won.
    let r = history(ops()).check(&converged(3, &[("x", Some("1")), ("y", Some("b"))]));
    assert_eq!(r.lost_writes.len(), 1, "{:#?}", r.lost_writes);
    assert!(r.lost_writes[0].contains("x='2'") && r.lost_writes[0].contains("causally earlier"), "{:?}", r.lost_writes);
    assert!(r.violations.is_empty());

    // Replicas disagree.
    let r = history(ops()).check(&state(&[("x", &[Some("2"), Some("1"), Some("2")]), ("y", &[Some("a"); 3])]));
    assert_eq!(r.lost_writes.len(), 1, "{:#?}", r.lost_writes);
    assert!(r.lost_writes[0].contains("key x diverged"), "{:?}", r.lost_writes);

    // Key absent everywhere, key not in the final state at all.
    let r = history(ops()).check(&state(&[("x", &[None, None, None])]));
    assert_eq!(r.lost_writes.len(), 2, "{:#?}", r.lost_writes);
    assert!(r.lost_writes.iter().any(|l| l.contains("key x")) && r.lost_writes.iter().any(|l| l.contains("key y")));

    // A value no write wrote.
    let r = history(ops()).check(&converged(3, &[("x", Some("zzz")), ("y", Some("a"))]));
    assert_eq!(r.lost_writes.len(), 1, "{:#?}", r.lost_writes);
    assert!(r.lost_writes[0].contains("zzz"));
}

#[test]
fn failed_operations() {
    // A failed write may have happened: reading it is fine.
    let h = history(vec![failed(write(1, "x", "a")), read(2, "x", Some("a"))]);
    let r = h.check(&converged(2, &[("x", Some("a"))]));
    assert!(r.violations.is_empty() && r.lost_writes.is_empty(), "{r:#?}");
    assert_eq!(r.failed, 1);

    // The session does not know a failed write happened: its next write does
    // not depend on it.
    let h = history(vec![failed(write(1, "x", "a")), write(1, "y", "b"), read(2, "y", Some("b")), read(2, "x", None)]);
    let r = h.check(&converged(2, &[("y", Some("b"))]));
    assert!(r.violations.is_empty() && r.lost_writes.is_empty(), "{r:#?}");

    // ... but session order skips over it: what preceded it still precedes
    // what follows it.
    let h = history(vec![write(1, "x", "1"), failed(write(1, "z", "q")), write(1, "y", "b"), read(2, "y", Some("b")), read(2, "x", None)]);
    only(&h.check(&converged(2, &[("x", Some("1")), ("y", Some("b"))])), ViolationKind::WritesFollowReads);

    // A failed write still depends on its session's past: reading it and
    // then missing that past is a violation.
    let h = history(vec![write(1, "x", "1"), failed(write(1, "y", "f")), read(2, "y", Some("f")), read(2, "x", None)]);
    only(&h.check(&converged(2, &[("x", Some("1")), ("y", Some("f"))])), ViolationKind::WritesFollowReads);

    // Failed reads carry no information (not even a thin-air value).
    let h = history(vec![write(1, "x", "1"), failed(read(1, "x", None)), failed(read(1, "x", Some("garbage"))), read(1, "x", Some("1"))]);
    let r = h.check(&converged(2, &[("x", Some("1"))]));
    assert!(r.violations.is_empty(), "{r:#?}");
    assert_eq!((r.operations, r.reads, r.writes, r.failed), (4, 3, 1, 2));

    // Final state: a key with only failed writes may stay absent; a failed
    // write is concurrent with its session's later writes, so it may win.
    let h = history(vec![failed(write(1, "w", "lost?")), failed(write(1, "x", "f")), write(1, "x", "2")]);
    for x in ["f", "2"] {
        let r = h.check(&converged(2, &[("w", None), ("x", Some(x))]));
        assert!(r.violations.is_empty() && r.lost_writes.is_empty(), "{r:#?}");
    }
}

#[test]
fn summary_is_one_line_with_counts() {
    let h = history(vec![
        write(1, "x", "1"),
        write(1, "x", "2"),
        read(1, "x", Some("1")),
        read(2, "x", Some("ghost")),
        failed(write(3, "y", "f")),
    ]);
    let s = h.check(&converged(2, &[("x", Some("1"))])).summary();
    assert!(!s.contains('\n'), "{s}");
    for part in ["operations=5", "reads=2", "writes=3", "failed=1", "violations=2", "ReadYourWrites=1", "ThinAirRead=1"] {
        assert!(s.contains(part), "{part} missing in: {s}");
    }
    assert!(s.contains("lost_writes=1"), "{s}");
    let clean = history(correct_ops()).check(&converged(1, &[("x", Some("a")), ("y", Some("b")), ("z", Some("c1"))]));
    assert!(clean.summary().contains("violations=0 [none] lost_writes=0"), "{}", clean.summary());
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// 20 sessions × 1000 operations over 50 keys against one sequentially
/// consistent store (so the history is causally consistent), with a few
/// failed operations, some of which took effect.
fn generated(sessions: usize, per_session: usize, keys: usize) -> (Vec<Op>, FinalState) {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut store: BTreeMap<String, String> = BTreeMap::new();
    let mut left = vec![per_session; sessions];
    let mut ops = Vec::new();
    let mut n = 0;
    while left.iter().any(|&l| l > 0) {
        let s = rng.below(sessions as u64) as usize;
        if left[s] == 0 {
            continue;
        }
        left[s] -= 1;
        n += 1;
        let key = format!("k{}", rng.below(keys as u64));
        let fails = rng.below(100) < 2;
        if rng.below(2) == 0 {
            let value = store.get(&key).cloned();
            ops.push(if fails { failed(read(s, &key, None)) } else { read(s, &key, value.as_deref()) });
        } else {
            let value = format!("s{s}-w{n}");
            if !fails || rng.below(2) == 0 {
                store.insert(key.clone(), value.clone());
            }
            let op = write(s, &key, &value);
            ops.push(if fails { failed(op) } else { op });
        }
    }
    let final_state = FinalState { values: store.into_iter().map(|(k, v)| (k, vec![Some(v); 3])).collect() };
    (ops, final_state)
}

#[test]
fn large_valid_history_is_fast() {
    let (ops, final_state) = generated(20, 1000, 50);
    let h = history(ops.clone());
    assert_eq!(h.len(), 20_000);
    let started = Instant::now();
    let report = h.check(&final_state);
    let took = started.elapsed();
    println!("20 000 ops: {} in {took:?}", report.summary());
    assert!(report.violations.is_empty(), "{:#?}", &report.violations[..report.violations.len().min(5)]);
    assert!(report.lost_writes.is_empty(), "{:#?}", &report.lost_writes[..report.lost_writes.len().min(5)]);
    assert!(report.failed > 0 && report.reads > 5000 && report.writes > 5000, "{}", report.summary());
    assert!(took < Duration::from_secs(10), "check took {took:?}");

    // The same history with one stale read seeded at the end of session 0.
    let mut seeded = ops;
    seeded.push(write(0, "k0", "seed-1"));
    seeded.push(write(0, "k0", "seed-2"));
    seeded.push(read(0, "k0", Some("seed-1")));
    let mut final_state = final_state;
    final_state.values.insert("k0".into(), vec![Some("seed-2".into()); 3]);
    let started = Instant::now();
    let report = history(seeded).check(&final_state);
    println!("20 003 ops, seeded: {} in {:?}", report.summary(), started.elapsed());
    only(&report, ViolationKind::ReadYourWrites);
    assert!(report.lost_writes.is_empty(), "{:#?}", report.lost_writes);
}

fn digest(h: &History) -> u64 {
    let mut hasher = DefaultHasher::new();
    h.digest_into(&mut hasher);
    hasher.finish()
}

#[test]
fn digest_and_dump_are_deterministic() {
    let ops = || {
        vec![
            write(0, "x", "a").with_context(json!({"clock": {"n1": 1, "n2": 3}, "epoch": 0})),
            read(1, "x", Some("a")),
            failed(read(1, "y", None)),
            failed(write(2, "y", "b\tc")),
        ]
    };
    let h = history(ops());
    assert_eq!(digest(&h), digest(&history(ops())), "equal histories digest equally");
    assert_eq!(h.dump(), history(ops()).dump());

    // The context's object keys are hashed in sorted order, whatever order
    // they were inserted in.
    let mut reordered = ops();
    let mut ctx = serde_json::Map::new();
    ctx.insert("epoch".into(), json!(0));
    ctx.insert("clock".into(), json!({"n2": 3, "n1": 1}));
    reordered[0].context = serde_json::Value::Object(ctx);
    assert_eq!(digest(&h), digest(&history(reordered.clone())));
    assert_eq!(h.dump(), history(reordered).dump());

    // Any change to any field changes the digest and the dump.
    let mut changes: Vec<Vec<Op>> = Vec::new();
    let mut c = ops();
    c[1].session = 3;
    changes.push(c);
    let mut c = ops();
    c[1] = read(1, "x", None);
    changes.push(c);
    let mut c = ops();
    c[3].outcome = Outcome::Ok;
    changes.push(c);
    let mut c = ops();
    c[0].context = json!({"clock": {"n1": 2, "n2": 3}, "epoch": 0});
    changes.push(c);
    let mut c = ops();
    c.swap(1, 2);
    changes.push(c);
    let mut c = ops();
    c.pop();
    changes.push(c);
    for (i, changed) in changes.into_iter().enumerate() {
        let changed = history(changed);
        assert_ne!(digest(&h), digest(&changed), "change {i}");
        assert_ne!(h.dump(), changed.dump(), "change {i}");
    }

    // The dump: one line per op, index first, strings quoted.
    let dump = h.dump();
    let lines: Vec<&str> = dump.lines().collect();
    assert_eq!(lines.len(), 4, "{dump}");
    assert_eq!(lines[0], "0\t0\twrite\t\"x\"\t\"a\"\tok\t{\"clock\":{\"n1\":1,\"n2\":3},\"epoch\":0}");
    assert_eq!(lines[2], "2\t1\tread\t\"y\"\tabsent\tfailed\t{}");
    assert_eq!(lines[3], "3\t2\twrite\t\"y\"\t\"b\\tc\"\tfailed\t{}");
    assert_eq!(Op::write(4, "k", "v").dump_line(), "4\twrite\t\"k\"\t\"v\"\tok\tnull");
}

#[test]
fn checking_is_deterministic() {
    let (ops, final_state) = generated(6, 200, 8);
    let mut seeded = ops;
    seeded.push(write(0, "k0", "seed-1"));
    seeded.push(write(0, "k0", "seed-2"));
    seeded.push(read(0, "k0", Some("seed-1")));
    seeded.push(read(1, "k1", Some("ghost")));
    let h = history(seeded.clone());
    let first = h.check(&final_state);
    assert!(!first.violations.is_empty());
    for _ in 0..3 {
        // A fresh history each time: fresh hash maps with fresh seeds.
        assert_eq!(history(seeded.clone()).check(&final_state), first);
    }
    assert_eq!(h.ops().len(), seeded.len());
    assert_eq!(h.ops(), &seeded[..]);
}

#[test]
fn deletes_explain_absent_reads_and_absent_final_values() {
    use causalkv::check::{FinalState, History, Op, ViolationKind};
    // Session 1 writes then deletes x; session 2 reads x's value, then absent.
    let mut h = History::new();
    h.record(Op::write(1, "x", "a"));
    h.record(Op::delete(1, "x", "d1"));
    h.record(Op::read(2, "x", Some("a")));
    h.record(Op::read(2, "x", None));
    let report = h.check(&FinalState::converged(2, [("x", None)]));
    assert!(report.is_clean(), "{}", report.summary());

    // Absent after the session's own write, with no delete anywhere: a violation.
    let mut h = History::new();
    h.record(Op::write(1, "y", "b"));
    h.record(Op::read(1, "y", None));
    let report = h.check(&FinalState::converged(2, [("y", Some("b"))]));
    assert_eq!(report.violations.len(), 1, "{}", report.summary());
    assert_eq!(report.violations[0].kind, ViolationKind::ReadYourWrites);

    // A delete that the later write causally follows cannot explain an absent read.
    let mut h = History::new();
    h.record(Op::delete(1, "z", "d2"));
    h.record(Op::write(1, "z", "c"));
    h.record(Op::read(1, "z", None));
    let report = h.check(&FinalState::converged(2, [("z", Some("c"))]));
    assert_eq!(report.violations.len(), 1, "{}", report.summary());

    // Absent everywhere at the end although the last write followed the delete: lost.
    let report = h.check(&FinalState::converged(2, [("z", None)]));
    assert_eq!(report.lost_writes.len(), 1, "{:?}", report.lost_writes);
}

// A snapshot read is a cut: returning a write together with an older version
// of a key that write depends on is a violation — in either order of the
// recorded reads — while the same two reads taken one at a time (older key
// first) are fine, and a snapshot that returns both new versions is clean.
#[test]
fn a_snapshot_read_must_be_closed_under_dependencies() {
    let writes = || vec![write(0, "profile", "p1"), write(0, "photos", "f1"), write(0, "photos", "f2"), write(0, "profile", "p2")];
    let final_state = converged(2, &[("profile", Some("p2")), ("photos", Some("f2"))]);
    // profile=p2 depends on photos=f2 (session order of session 0).
    for (first, second) in [(("photos", "f1"), ("profile", "p2")), (("profile", "p2"), ("photos", "f1"))] {
        let mut ops = writes();
        ops.push(read(1, first.0, Some(first.1)).in_snapshot(7));
        ops.push(read(1, second.0, Some(second.1)).in_snapshot(7));
        let report = history(ops).check(&final_state);
        let text = only(&report, ViolationKind::SnapshotNotClosed);
        assert!(text.contains("f2"), "names the missing dependency: {text}");
    }
    // Not a snapshot: photos read first (old), then profile (new) — each
    // read on its own is causally fine.
    let mut ops = writes();
    ops.push(read(1, "photos", Some("f1")));
    ops.push(read(1, "profile", Some("p2")));
    assert!(history(ops).check(&final_state).is_clean());
    // A closed cut.
    let mut ops = writes();
    ops.push(read(1, "photos", Some("f2")).in_snapshot(8));
    ops.push(read(1, "profile", Some("p2")).in_snapshot(8));
    ops.push(read(2, "photos", Some("f1")).in_snapshot(9));
    ops.push(read(2, "profile", Some("p1")).in_snapshot(9));
    assert!(history(ops).check(&final_state).is_clean());
}

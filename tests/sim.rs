//! The deterministic simulator as part of `cargo test`: hundreds of seeded
//! fault schedules against real node code in one process (see
//! `causalkv::sim`), a replay check, and proof that the checker catches a
//! protocol bug when one is injected.

use causalkv::faults::Bug;
use causalkv::sim::{SeedOutcome, SimConfig, SimReplication, combined_digest, run_seed, run_seeds};

fn failures(outcomes: &[SeedOutcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter(|o| !o.is_clean())
        .map(|o| {
            let path = if o.streams_opened > 0 { "stream" } else { "push" };
            format!(
                "seed {}: {} {:?} (replay: cargo run --bin causalkv-sim -- --seed {} --replication {path})",
                o.seed, o.summary, o.problems, o.seed
            )
        })
        .collect()
}

/// 200 seeds, every fault on, snapshot reads among the operations and a
/// watcher following every key: no causal violation (snapshot reads
/// included), no acknowledged write lost, no replicas apart after the heal,
/// no watch event missed (unless its feed said so), duplicated or out of order.
#[test]
fn two_hundred_seeded_fault_schedules_keep_causality() {
    // One watcher here (the watcher test below has two, without crashes).
    let config = SimConfig { watchers: 1, ..SimConfig::default() };
    let outcomes = run_seeds(&config, 0, 200, 2, |_| {});
    assert_eq!(outcomes.len(), 200);
    let bad = failures(&outcomes);
    assert!(bad.is_empty(), "{} of 200 seeds failed:\n{}", bad.len(), bad.join("\n"));
    // The runs did real work: most operations succeeded, some failed under
    // faults (a snapshot read is recorded as one read per key it answered,
    // a failed one not at all).
    let ops: usize = outcomes.iter().map(|o| o.operations).sum();
    let failed: usize = outcomes.iter().map(|o| o.failed).sum();
    assert!(ops >= 200 * config.ops * 9 / 10, "only {ops} operations recorded");
    assert!(failed > 0 && failed < ops / 4, "{failed} of {ops} operations failed");
    assert!(outcomes.iter().any(|o| o.final_epoch > 0), "no seed ran its view change to the end");
    // Both replication paths ran: streams on odd seeds, pushes on even ones.
    for o in &outcomes {
        assert_eq!(o.streams_opened > 0, o.seed % 2 == 1, "seed {}: {} streams opened", o.seed, o.streams_opened);
    }
}

/// Every seed replicating over streams (in-memory pipes that break on
/// partitions, crashes and at random while messages are lost): the stream
/// path keeps causality and loses nothing acknowledged.
#[test]
fn replication_streams_hold_under_seeded_faults() {
    let config = SimConfig { watchers: 1, replication: SimReplication::Stream, ..SimConfig::default() };
    let outcomes = run_seeds(&config, 1000, 100, 2, |_| {});
    let bad = failures(&outcomes);
    assert!(bad.is_empty(), "{} of 100 seeds failed:\n{}", bad.len(), bad.join("\n"));
    assert!(outcomes.iter().all(|o| o.streams_opened > 0), "a run replicated without streams");
    let ops: usize = outcomes.iter().map(|o| o.operations).sum();
    assert!(ops >= 100 * config.ops * 9 / 10, "only {ops} operations recorded");
}

/// The same seed and settings give the same history and digest.
#[test]
fn a_seed_replays_exactly() {
    let config = SimConfig { ops: 120, ..SimConfig::default() };
    let first: Vec<SeedOutcome> = (7..10).map(|s| run_seed(&config, s)).collect();
    let again: Vec<SeedOutcome> = (7..10).map(|s| run_seed(&config, s)).collect();
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a.digest, b.digest, "seed {} gave two different histories", a.seed);
    }
    assert_eq!(combined_digest(&first), combined_digest(&again));
    assert_ne!(first[0].digest, first[1].digest, "different seeds, different histories");
}

/// A node that answers before its hold-back gate is satisfied (the bug the
/// gate exists to prevent): the simulator must report violations.
#[test]
fn the_simulator_catches_a_read_served_before_the_gate() {
    let config = SimConfig { bug: Some(Bug::SkipHoldBack), ..SimConfig::default() };
    let outcomes = run_seeds(&config, 0, 20, 2, |_| {});
    let violations: usize = outcomes.iter().map(|o| o.violations).sum();
    let caught = outcomes.iter().filter(|o| o.violations > 0).count();
    assert!(violations > 0 && caught >= 2, "the injected bug went unnoticed: {caught} of 20 seeds with violations");
    // Without the bug the same seeds are clean.
    let clean = run_seeds(&SimConfig::default(), 0, 20, 2, |_| {});
    assert!(failures(&clean).is_empty(), "{:?}", failures(&clean));
}

/// Snapshot reads that stop after their first round can return a cut that
/// is not closed under dependencies: the checker must see it (and the
/// 200-seed run above, with the second round, sees none).
#[test]
fn the_simulator_catches_a_snapshot_read_that_is_not_a_cut() {
    let config = SimConfig { bug: Some(Bug::SnapshotOneRound), ..SimConfig::default() };
    let outcomes = run_seeds(&config, 0, 40, 2, |_| {});
    let caught = outcomes.iter().filter(|o| o.violations > 0).count();
    assert!(caught >= 2, "one-round snapshot reads went unnoticed: {caught} of 40 seeds with violations");
}

/// Watchers (change feeds) while sessions write, with partitions, message
/// loss and a view change but no crash (a crash loses a replica's in-memory
/// history, and then the feed says so with a `history-gone` end instead):
/// every acknowledged write arrives, once, in causal order; and a feed that
/// ignores cross-shard dependencies is caught.
#[test]
fn watchers_miss_nothing_see_nothing_twice_and_keep_causal_order() {
    let faults: Vec<String> = ["drop", "delay", "duplicate", "partition", "skew", "viewchange"].iter().map(|f| f.to_string()).collect();
    let config = SimConfig { faults, watchers: 2, ..SimConfig::default() };
    let outcomes = run_seeds(&config, 0, 40, 2, |_| {});
    let bad = failures(&outcomes);
    assert!(bad.is_empty(), "{} of 40 seeds failed:\n{}", bad.len(), bad.join("\n"));
    let events: usize = outcomes.iter().map(|o| o.watch_events).sum();
    let gaps: usize = outcomes.iter().map(|o| o.watch_gaps).sum();
    assert_eq!(gaps, 0, "without crashes no feed may lose its history");
    assert!(events > 40 * 100, "the watchers saw only {events} events");
    assert!(outcomes.iter().any(|o| o.final_epoch > 0), "no seed ran its view change to the end");

    let buggy = SimConfig { bug: Some(Bug::FeedIgnoresDeps), ..config };
    let outcomes = run_seeds(&buggy, 0, 12, 2, |_| {});
    let caught = outcomes.iter().filter(|o| o.watch_problems > 0).count();
    assert!(caught >= 2, "a feed out of causal order went unnoticed: {caught} of 12 seeds");
}

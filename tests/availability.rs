//! Availability and convergence: the master role moves when the master is
//! dead or frozen, anti-entropy relays writes whose origin died, a replica
//! that lost its disk is rebuilt from a snapshot, and purged tombstones never
//! let a deleted key come back.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::json;

/// A key of shard 1 (master node 0), written once at node 0.
async fn shard1_key(c: &Cluster, prefix: &str) -> (String, serde_json::Value) {
    for k in 0..200 {
        let key = format!("{prefix}-{k}");
        let put = c.put(0, &key, json!("v0"), &json!({})).await;
        if put.forwarded_to().is_none() {
            return (key, put.ctx());
        }
    }
    panic!("no key in shard 1");
}

// A frozen master (SIGSTOP): a write sent to it before the detector
// suspects it may have reached it, so it is answered 503 within the forward
// timeout and never executed a second time elsewhere (docs/decisions.md,
// "At most one execution per forwarded write"); once the detector suspects
// the master (about 1 s) every write goes straight to the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_continue_when_the_master_freezes() {
    let c = Cluster::start(4, 2).await;
    let (key, _) = shard1_key(&c, "frz").await;
    let synced = wait_until(Duration::from_secs(10), || async { c.get(1, &key, &json!({})).await.value() == Some(&json!("v0")) }).await;
    assert!(synced);
    c.nodes[0].signal(libc::SIGSTOP);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut after_detection = Vec::new();
    let mut ambiguous = 0;
    let mut ctx = json!({});
    for i in 0..30 {
        let t = Instant::now();
        let put = c.put(2, &key, json!(i), &ctx).await;
        let detected = started.elapsed() > Duration::from_millis(2500);
        if put.status == 503 && !detected {
            // Sent to the frozen master: maybe executed, so not retried.
            ambiguous += 1;
            slowest = slowest.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert!(put.status.is_success(), "write {i} failed while the master is frozen: {}", put.body);
        assert_eq!(put.forwarded_to(), Some(c.addr(1)), "the worker took the write");
        ctx = put.ctx();
        slowest = slowest.max(t.elapsed());
        if started.elapsed() > Duration::from_millis(2500) {
            after_detection.push(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.nodes[0].signal(libc::SIGCONT);
    assert!(slowest < Duration::from_millis(2500), "slowest write took {slowest:?}");
    assert!(ambiguous <= 3, "{ambiguous} writes answered 503: the frozen master was not suspected in time");
    assert!(!after_detection.is_empty());
    assert!(
        after_detection.iter().all(|d| *d < Duration::from_millis(500)),
        "after detection writes skip the frozen master: {after_detection:?}"
    );
    // Once thawed, the old master converges on the last write.
    let converged = wait_until(Duration::from_secs(10), || async { c.get(0, &key, &json!({})).await.value() == Some(&json!(29)) }).await;
    if !converged {
        let at0 = c.get(0, &key, &json!({})).await;
        let at1 = c.get(1, &key, &json!({})).await;
        let m = c.client.get(c.nodes[0].url("/metrics")).send().await.unwrap().text().await.unwrap();
        let m: Vec<&str> = m
            .lines()
            .filter(|l| {
                !l.starts_with('#') && (l.contains("replicat") || l.contains("pending") || l.contains("snapshot") || l.contains("auth"))
            })
            .collect();
        panic!("the thawed master did not catch up: node0 {} / node1 {}\n{}", at0.body, at1.body, m.join("\n"));
    }
}

// RF 3: a write that reached only one worker before its origin died still
// reaches the other worker, relayed by anti-entropy without client traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_relays_writes_of_a_dead_origin() {
    let mut c = Cluster::start_with(3, 3, &[("CAUSALKV_FAULTS", "1")]).await;
    c.set_faults(0, json!({"paused_replication": [c.addr(2)]})).await;
    // Node 2 must not pull straight from node 0 either: cut 0 <-> 2.
    c.set_faults(0, json!({"blocked": [c.addr(2)]})).await;
    c.set_faults(2, json!({"blocked": [c.addr(0)]})).await;
    let put = c.put(0, "relayed", json!("only-via-1"), &json!({})).await;
    assert_eq!(put.status, StatusCode::CREATED);
    let at_1 = wait_until(Duration::from_secs(10), || async { c.get(1, "relayed", &json!({})).await.status == StatusCode::OK }).await;
    assert!(at_1);
    c.nodes[0].kill();
    let at_2 =
        wait_until(Duration::from_secs(10), || async { c.get(2, "relayed", &json!({})).await.value() == Some(&json!("only-via-1")) }).await;
    assert!(at_2, "node 2 never got the dead origin's write");
    // And it satisfies the writer's context now.
    assert_eq!(c.get(2, "relayed", &put.ctx()).await.status, StatusCode::OK);
    c.restart(0).await;
}

// Logs are compacted once every replica applied them; a replica that lost
// its disk is rebuilt from a snapshot and serves every key again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_its_disk_is_rebuilt_from_a_snapshot() {
    let mut c = Cluster::start(2, 2).await;
    let mut last = json!({});
    for i in 0..300 {
        let put = c.put(0, &format!("snap-{i}"), json!(i), &json!({})).await;
        assert!(put.status.is_success());
        last = put.ctx();
    }
    for i in 0..30 {
        assert_eq!(c.delete(0, &format!("snap-{i}"), &last).await.status, StatusCode::OK);
    }
    let compacted = wait_until(Duration::from_secs(15), || async { c.metric(0, "causalkv_log_entries_compacted").await >= 300 }).await;
    assert!(compacted, "the master never compacted its log");
    let purged = wait_until(Duration::from_secs(20), || async { c.metric(1, "causalkv_tombstones_purged").await >= 30 }).await;
    assert!(purged, "stable tombstones were not purged");
    c.nodes[1].kill();
    std::fs::remove_dir_all(&c.nodes[1].data_dir).expect("wipe the worker's disk");
    c.restart(1).await;
    let rebuilt =
        wait_until(Duration::from_secs(20), || async { c.get_json(1, "/kv-store/key-count").await.body["key-count"] == json!(270) }).await;
    assert!(rebuilt, "the wiped worker was not rebuilt");
    assert!(c.metric(1, "causalkv_snapshots_installed").await >= 1);
    for i in [0, 29, 30, 150, 299] {
        let get = c.get(1, &format!("snap-{i}"), &json!({})).await;
        let want = if i < 30 { StatusCode::NOT_FOUND } else { StatusCode::OK };
        assert_eq!(get.status, want, "snap-{i} at the rebuilt worker");
    }
    // It satisfies contexts from before the wipe.
    assert_eq!(c.get(1, "snap-299", &last).await.status, StatusCode::OK);
    // New writes at the wiped node's origin never reuse an old seq.
    let w = c.put(1, "after-wipe", json!(1), &json!({})).await;
    assert!(w.status.is_success());
}

// Deleted keys stay deleted: tombstones are purged only once every replica
// has them, so a replica that was away never brings the key back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_never_comes_back_after_a_heal() {
    let c = Cluster::start_with(2, 2, &[("CAUSALKV_FAULTS", "1")]).await;
    let put = c.put(0, "gone", json!("v"), &json!({})).await;
    let synced = wait_until(Duration::from_secs(10), || async { c.get(1, "gone", &json!({})).await.status == StatusCode::OK }).await;
    assert!(synced);
    c.set_faults(0, json!({"blocked": [c.addr(1)]})).await;
    c.set_faults(1, json!({"blocked": [c.addr(0)]})).await;
    let del = c.delete(0, "gone", &put.ctx()).await;
    assert_eq!(del.status, StatusCode::OK);
    // Give compaction several rounds while the worker is away: nothing may be purged.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(c.metric(0, "causalkv_tombstones_purged").await, 0, "purged a tombstone a replica had not applied");
    c.set_faults(0, json!({})).await;
    c.set_faults(1, json!({})).await;
    let healed = wait_until(Duration::from_secs(10), || async { c.get(1, "gone", &json!({})).await.status == StatusCode::NOT_FOUND }).await;
    assert!(healed, "the worker never learned of the delete");
    let purged = wait_until(Duration::from_secs(20), || async { c.metric(0, "causalkv_tombstones_purged").await >= 1 }).await;
    assert!(purged);
    for node in 0..2 {
        assert_eq!(c.get(node, "gone", &json!({})).await.status, StatusCode::NOT_FOUND);
    }
}

// Background compaction never leaves a no-op write waiting: a DELETE of a key
// that was never written answers 404 at once, also after compaction rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_missing_key_after_compaction_answers_at_once() {
    let c = Cluster::start(2, 2).await;
    for i in 0..20 {
        assert!(c.put(0, &format!("cmp-{i}"), json!(i), &json!({})).await.status.is_success());
    }
    assert_eq!(c.delete(0, "cmp-0", &json!({})).await.status, StatusCode::OK);
    let purged = wait_until(Duration::from_secs(20), || async { c.metric(0, "causalkv_tombstones_purged").await >= 1 }).await;
    assert!(purged);
    // Let compaction run a few more rounds with nothing to do.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    for node in 0..2 {
        for i in 0..3 {
            let started = Instant::now();
            let del = c.delete(node, &format!("never-{i}"), &json!({})).await;
            assert_eq!(del.status, StatusCode::NOT_FOUND, "{}", del.body);
            assert!(started.elapsed() < Duration::from_secs(1), "no-op delete took {:?}", started.elapsed());
        }
    }
}

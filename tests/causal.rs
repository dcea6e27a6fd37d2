//! Causal hold-back with a lagging worker (fault switches), cross-shard
//! causality, and the bounded 503 when nothing can satisfy a context.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT_MS: u64 = 1000;

async fn faulty_cluster() -> Cluster {
    Cluster::start_with(4, 2, &[("CAUSALKV_FAULTS", "1"), ("CAUSAL_WAIT_MS", "1000")]).await
}

/// A fresh key whose shard is mastered by node `master` (found by writing).
async fn key_mastered_by(c: &Cluster, master: usize, prefix: &str, value: Value) -> (String, Value) {
    for k in 0..200 {
        let key = format!("{prefix}-{k}");
        let put = c.put(master, &key, value.clone(), &json!({})).await;
        assert!(put.status.is_success(), "{}", put.body);
        if put.forwarded_to().is_none() {
            return (key, put.ctx());
        }
    }
    panic!("no key mastered by node {master}");
}

async fn wait_value(c: &Cluster, node: usize, key: &str, want: &Value) {
    let ok = wait_until(Duration::from_secs(10), || async { c.get(node, key, &json!({})).await.value() == Some(want) }).await;
    assert!(ok, "node {node} never saw {key} = {want}");
}

// A read at a lagging worker with a context that includes the new write
// never returns the old value; without a context it may (and here does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_worker_never_answers_older_than_the_context() {
    let c = faulty_cluster().await;
    let (key, _) = key_mastered_by(&c, 0, "lag", json!("old")).await;
    wait_value(&c, 1, &key, &json!("old")).await;

    c.set_faults(0, json!({"paused_replication": [c.addr(1)]})).await;
    let put = c.put(0, &key, json!("new"), &json!({})).await;
    assert_eq!(put.status, StatusCode::OK);

    let stale = c.get(1, &key, &json!({})).await;
    assert_eq!(stale.value(), Some(&json!("old")), "without a context the lagging worker serves what it has");
    assert!(stale.forwarded_to().is_none());

    let fresh = c.get(1, &key, &put.ctx()).await;
    assert_eq!(fresh.status, StatusCode::OK, "{}", fresh.body);
    assert_eq!(fresh.value(), Some(&json!("new")), "with the context: never the old value");
    if let Some(a) = fresh.forwarded_to() {
        assert_eq!(a, c.addr(0));
    }
    // The same through a non-replica entry node (forwarded to the worker).
    for _ in 0..4 {
        let via = c.get(2, &key, &put.ctx()).await;
        assert_eq!(via.value(), Some(&json!("new")), "{}", via.body);
    }
    // The hold-back pulled the write: the worker now serves it without context.
    assert_eq!(c.get(1, &key, &json!({})).await.value(), Some(&json!("new")));
}

// With replication cut off and the master unreachable, a read that cannot be
// satisfied answers 503 with Retry-After within CAUSAL_WAIT_MS + a margin,
// and the worker catches up once the partition heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsatisfiable_read_is_a_bounded_503() {
    let c = faulty_cluster().await;
    let (key, _) = key_mastered_by(&c, 0, "cut", json!("old")).await;
    wait_value(&c, 1, &key, &json!("old")).await;

    c.set_faults(0, json!({"blocked": [c.addr(1)]})).await;
    c.set_faults(1, json!({"blocked": [c.addr(0)]})).await;
    let put = c.put(0, &key, json!("new"), &json!({})).await;
    assert_eq!(put.status, StatusCode::OK);

    let started = Instant::now();
    let answer = c.get(1, &key, &put.ctx()).await;
    let took = started.elapsed();
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.body);
    assert_eq!(answer.body["error"], "Unable to satisfy request");
    assert_eq!(answer.body["message"], "Error in GET");
    assert!(answer.retry_after.is_some(), "503 carries Retry-After");
    assert!(answer.body.get("causal-context").is_some());
    assert!(took >= Duration::from_millis(WAIT_MS - 50), "answered after {took:?}: it must wait for the write first");
    assert!(took < Duration::from_millis(WAIT_MS + 700), "answered after {took:?}: past the bound");

    // Through a non-replica entry the bound holds too.
    let started = Instant::now();
    let mut via = c.get(3, &key, &put.ctx()).await;
    // Node 3 may pick the master (reachable from it) or the worker.
    if via.status == StatusCode::OK {
        assert_eq!(via.value(), Some(&json!("new")));
        via = c.get(3, &key, &put.ctx()).await;
    }
    assert!(via.status == StatusCode::OK || via.status == StatusCode::SERVICE_UNAVAILABLE);
    if via.status == StatusCode::OK {
        assert_eq!(via.value(), Some(&json!("new")));
    }
    assert!(started.elapsed() < Duration::from_millis(2 * WAIT_MS + 1500));

    // Heal: the worker catches up by itself.
    c.set_faults(0, json!({})).await;
    c.set_faults(1, json!({})).await;
    wait_value(&c, 1, &key, &json!("new")).await;
}

// Client 1 writes x (shard 1) then y (shard 2), carrying its context; client
// 2 reads y, then reads x at shard 1's lagging worker with y's context: it
// never sees the old x.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causality_crosses_shards() {
    let c = faulty_cluster().await;
    let (x, _) = key_mastered_by(&c, 0, "x", json!("x-old")).await;
    let (y, _) = key_mastered_by(&c, 2, "y", json!("y-old")).await;
    wait_value(&c, 1, &x, &json!("x-old")).await;

    // Node 1 (worker of x's shard) lags: it gets nothing from node 0.
    c.set_faults(0, json!({"paused_replication": [c.addr(1)]})).await;
    let w1 = c.put(0, &x, json!("x-new"), &json!({})).await;
    let w2 = c.put(2, &y, json!("y-new"), &w1.ctx()).await;
    assert_eq!(w2.status, StatusCode::OK);

    // Client 2 reads y (at y's master, no context), then x at the lagging worker.
    let ry = c.get(2, &y, &json!({})).await;
    assert_eq!(ry.value(), Some(&json!("y-new")));
    assert!(ry.seq_of(c.addr(0)) >= w1.seq_of(c.addr(0)), "y's context carries x's write: {}", ry.body);
    // The worker really is behind:
    assert_eq!(c.get(1, &x, &json!({})).await.value(), Some(&json!("x-old")));
    let rx = c.get(1, &x, &ry.ctx()).await;
    assert_eq!(rx.value(), Some(&json!("x-new")), "{}", rx.body);

    // Now fully cut the worker off: it must refuse rather than answer stale.
    c.set_faults(0, json!({"blocked": [c.addr(1)]})).await;
    c.set_faults(1, json!({"blocked": [c.addr(0)]})).await;
    let w3 = c.put(0, &x, json!("x-newer"), &json!({})).await;
    let w4 = c.put(2, &y, json!("y-newer"), &w3.ctx()).await;
    let ry = c.get(3, &y, &w4.ctx()).await;
    assert_eq!(ry.value(), Some(&json!("y-newer")));
    let rx = c.get(1, &x, &ry.ctx()).await;
    assert_eq!(rx.status, StatusCode::SERVICE_UNAVAILABLE, "{}", rx.body);
}

// A write whose context depends on writes this shard has not applied waits
// for them too (the master holds the write back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_from_a_newer_epoch_or_unknown_write_is_not_served_stale() {
    let c = faulty_cluster().await;
    let (key, ctx) = key_mastered_by(&c, 0, "e", json!(1)).await;
    // A context claiming a write the master never made: unsatisfiable.
    let mut bogus = ctx.clone();
    bogus["clock"][c.addr(0)] = json!(1_000_000);
    let started = Instant::now();
    let get = c.get(1, &key, &bogus).await;
    assert_eq!(get.status, StatusCode::SERVICE_UNAVAILABLE);
    let put = c.put(0, &key, json!(2), &bogus).await;
    assert_eq!(put.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_millis(2 * WAIT_MS + 1500));
    // A context of a future epoch is refused, not served stale.
    let future = json!({"epoch": 7, "clock": {c.addr(0): 1}});
    assert_eq!(c.get(0, &key, &future).await.status, StatusCode::SERVICE_UNAVAILABLE);
    // Contexts carrying entries of other shards do not make this shard wait.
    let other = json!({"epoch": 0, "clock": {c.addr(2): 999, c.addr(3): 5}});
    let started = Instant::now();
    let ok = c.get(0, &key, &other).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(WAIT_MS / 2));
    assert_eq!(ok.seq_of(c.addr(2)), 999, "other shards' entries are carried along");
}

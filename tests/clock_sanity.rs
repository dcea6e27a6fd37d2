//! Issue 11, hole 5: one record with a clock value from the far future
//! (`hlc = u64::MAX`) sent to `/internal/replicate` used to be applied, wrap
//! the HLC and split the replicas for good. It is refused (4xx, counted in
//! `causalkv_clock_skew_rejected_total`) and changes nothing; later writes
//! converge on every replica.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The HLC of a wall-clock time `ahead` from now (the format of `hlc.rs`).
fn hlc_ahead(ahead: Duration) -> u64 {
    let ms = (SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + ahead).as_millis() as u64;
    ms << 16
}

fn record(key: &str, value: &str, origin: &str, seq: u64, hlc: u64) -> Value {
    json!({"key": key, "value": value, "dot": {"epoch": 0, "origin": origin, "seq": seq}, "deps": {}, "hlc": hlc})
}

/// Sends a forged replication batch to node `target`, claiming to come from
/// the member `claimed`, the way internal authentication accepts it without
/// CLUSTER_KEY (from loopback, a view address). The one place to adapt when
/// internal authentication changes.
async fn forge_replicate(c: &Cluster, target: usize, claimed: &str, records: Vec<Value>) -> (StatusCode, String) {
    let body = json!({"from": claimed, "epoch": 0, "records": records});
    let resp = c
        .client
        .post(c.nodes[target].url("/internal/replicate"))
        .header("x-causalkv-from", claimed)
        .json(&body)
        .send()
        .await
        .expect("the node answered");
    (resp.status(), resp.text().await.unwrap_or_default())
}

async fn values(c: &Cluster, key: &str) -> Vec<Option<Value>> {
    let mut out = Vec::new();
    for i in 0..c.node_count() {
        out.push(c.get(i, key, &json!({})).await.value().cloned());
    }
    out
}

async fn key_counts(c: &Cluster) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for i in 0..c.node_count() {
        out.push(c.get_json(i, "/kv-store/key-count").await.body["key-count"].as_u64());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_from_the_far_future_is_refused_and_replicas_converge() {
    let c = Cluster::start(3, 3).await;
    let put = c.put(0, "k", json!("before"), &json!({})).await;
    assert_eq!(put.status, StatusCode::CREATED);
    let before = Some(json!("before"));
    assert!(
        wait_until(Duration::from_secs(10), || async { values(&c, "k").await.iter().all(|v| *v == before) }).await,
        "the first write reached every replica"
    );
    let counts = key_counts(&c).await;
    assert_eq!(counts, vec![Some(1); 3]);

    // The attack, at every node: the next seq of another member, with the largest HLC.
    for target in 0..3 {
        let claimed = c.addr((target + 1) % 3).to_string();
        let seq = put.seq_of(&claimed) + 1;
        let forged = vec![record("k", "forged", &claimed, seq, u64::MAX)];
        let (status, body) = forge_replicate(&c, target, &claimed, forged).await;
        assert!(status.is_client_error(), "node {target} answered {status}: {body}");
        assert!(body.contains("MAX_CLOCK_SKEW_MS"), "the refusal says why: {body}");
        assert!(c.metric(target, "causalkv_clock_skew_rejected_total").await >= 1, "node {target} counted it");
    }
    // Nothing changed, not even after anti-entropy had its chance.
    let settled = wait_until(Duration::from_millis(600), || async { values(&c, "k").await.iter().any(|v| *v != before) }).await;
    assert!(!settled, "a replica took the forged value: {:?}", values(&c, "k").await);
    assert_eq!(key_counts(&c).await, counts);

    // A legitimate write wins on every replica (it used to win on one only,
    // or panic the node with an overflowing clock).
    let after = c.put(1, "k", json!("after"), &put.ctx()).await;
    assert_eq!(after.status, StatusCode::OK, "{:?}", after.body);
    let expected = Some(json!("after"));
    assert!(
        wait_until(Duration::from_secs(10), || async { values(&c, "k").await.iter().all(|v| *v == expected) }).await,
        "replicas did not converge: {:?}",
        values(&c, "k").await
    );
    assert_eq!(key_counts(&c).await, counts);
}

// MAX_CLOCK_SKEW_MS sets the bound: a record 30 s ahead passes the default
// (60 s) but not 2 s; replication of real writes goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clock_skew_ms_sets_the_bound() {
    let c = Cluster::start_with(2, 2, &[("MAX_CLOCK_SKEW_MS", "2000")]).await;
    let claimed = c.addr(0).to_string();
    let forged = vec![record("x", "ahead", &claimed, 1, hlc_ahead(Duration::from_secs(30)))];
    let (status, body) = forge_replicate(&c, 1, &claimed, forged).await;
    assert!(status.is_client_error(), "{status}: {body}");
    assert!(body.contains("2000 ms"), "the refusal names the bound: {body}");
    assert_eq!(c.metric(1, "causalkv_clock_skew_rejected_total").await, 1);
    assert_eq!(c.get(1, "x", &json!({})).await.status, StatusCode::NOT_FOUND);
    let put = c.put(0, "y", json!("real"), &json!({})).await;
    assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.body);
    assert_eq!(put.seq_of(&claimed), 1, "the refused record took no seq");
    assert!(
        wait_until(Duration::from_secs(10), || async { c.get(1, "y", &json!({})).await.value() == Some(&json!("real")) }).await,
        "replication still works"
    );
}

/// Two nodes, node 0 with the largest bound (it accepts what node 1 refuses),
/// node 1 with the default; VIEW is the first `view` of them.
async fn lenient_and_strict(rf: usize, view: usize) -> Cluster {
    with_port_retries(|| async {
        let addrs: Vec<String> = (0..2).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let common = vec![("VIEW".to_string(), addrs[..view].join(",")), ("REPL_FACTOR".to_string(), rf.to_string())];
        let mut lenient = common.clone();
        lenient.push(("MAX_CLOCK_SKEW_MS".into(), "86400000".into()));
        Cluster::try_start_nodes(&addrs, rf, &[lenient, common], client()).await
    })
    .await
}

// Pull answers go through the same guard: a record 10 minutes ahead that
// node 0 took (its bound is a day) never reaches node 1 by anti-entropy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_records_from_the_future_are_refused() {
    let c = lenient_and_strict(2, 2).await;
    // Claimed from node 1 with node 1 as origin: node 0's replicator never
    // pushes it (it pushes its own records), so only a pull can carry it.
    let claimed = c.addr(1).to_string();
    let forged = vec![record("x", "ahead", &claimed, 1, hlc_ahead(Duration::from_secs(600)))];
    let (status, body) = forge_replicate(&c, 0, &claimed, forged).await;
    assert_eq!(status, StatusCode::OK, "the lenient node takes it: {body}");
    assert_eq!(c.get(0, "x", &json!({})).await.value(), Some(&json!("ahead")));
    assert!(
        wait_until(Duration::from_secs(10), || async { c.metric(1, "causalkv_clock_skew_rejected_total").await >= 1 }).await,
        "node 1 refused the pulled record"
    );
    assert_eq!(c.get(1, "x", &json!({})).await.status, StatusCode::NOT_FOUND);
    assert_eq!(c.get_json(1, "/kv-store/key-count").await.body["key-count"], json!(0));
}

// View-change transfers too: a record 10 minutes ahead held by node 0 makes
// the transfer to node 1 fail, so the change is refused and the old view stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_with_a_record_from_the_future_is_refused() {
    let c = lenient_and_strict(1, 1).await;
    let me = c.addr(0).to_string();
    let forged = vec![record("x", "ahead", &me, 1, hlc_ahead(Duration::from_secs(600)))];
    let (status, body) = forge_replicate(&c, 0, &me, forged).await;
    assert_eq!(status, StatusCode::OK, "the lenient node takes it: {body}");
    let view = json!({"view": [c.addr(0), c.addr(1)], "repl-factor": 2});
    let answer = send(c.client.put(c.nodes[0].url("/kv-store/view-change")).json(&view)).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.body);
    assert!(c.metric(1, "causalkv_clock_skew_rejected_total").await >= 1);
    let shard = c.get_json(0, "/kv-store/shards/1").await.body;
    assert_eq!(shard["replicas"], json!([c.addr(0)]), "the old view stays: {shard}");
    assert_eq!(c.get_json(1, "/kv-store/key-count").await.body["key-count"], json!(0));
}

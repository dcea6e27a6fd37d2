//! Online resharding with real processes: growing, shrinking, replacing
//! nodes, changing only the repl-factor, aborting when a node dies mid-change,
//! writes and reads that run through a change, and the view surviving
//! restarts. Every scenario checks 200+ keys at every node.

mod common;
#[path = "common/workload.rs"]
mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const KEYS: usize = 200;

async fn view_change(c: &Cluster, via: usize, nodes: &[usize], rf: usize) -> Answer {
    let view: Vec<&str> = nodes.iter().map(|i| c.addr(*i)).collect();
    send(c.client.put(c.nodes[via].url("/kv-store/view-change")).json(&json!({"view": view, "repl-factor": rf}))).await
}

async fn load(c: &Cluster, prefix: &str, n: usize) -> BTreeMap<String, (Value, Value)> {
    let mut written = BTreeMap::new();
    for i in 0..n {
        let key = format!("{prefix}-{i}");
        let put = c.put(i % c.node_count(), &key, json!({"i": i}), &json!({})).await;
        assert!(put.status.is_success(), "{key}: {}", put.body);
        written.insert(key, (json!({"i": i}), put.ctx()));
    }
    written
}

/// The answer's shards agree with every node's view of them, every replica
/// reports the same key count, counts sum to `total`, and every key is
/// readable at every node with and without the writer's context (old
/// contexts never block).
async fn check_after(c: &Cluster, answer: &Answer, nodes: &[usize], rf: usize, written: &BTreeMap<String, (Value, Value)>) {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["message"], "View change successful");
    let shards = answer.body["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), nodes.len() / rf);
    let mut total = 0;
    let mut members = Vec::new();
    for shard in shards {
        let id = shard["shard-id"].as_u64().unwrap();
        let count = shard["key-count"].as_u64().unwrap_or_else(|| panic!("no key-count in {shard}"));
        total += count;
        let replicas: Vec<String> = shard["replicas"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
        assert!(replicas.len() >= rf);
        for i in 0..c.node_count() {
            let info = c.get_json(i, &format!("/kv-store/shards/{id}")).await;
            assert_eq!(info.body["key-count"].as_u64(), Some(count), "shards/{id} at node {i}");
            assert_eq!(info.body["replicas"], shard["replicas"], "shards/{id} at node {i}");
        }
        for r in &replicas {
            let kc = c.get_json(c.index_of(r), "/kv-store/key-count").await;
            assert_eq!(kc.body["key-count"].as_u64(), Some(count), "key-count at replica {r}");
            assert_eq!(kc.body["shard-id"].as_u64(), Some(id));
        }
        members.extend(replicas);
    }
    members.sort();
    let mut expected: Vec<String> = nodes.iter().map(|i| c.addr(*i).to_string()).collect();
    expected.sort();
    assert_eq!(members, expected, "every node of the new view is in exactly one shard");
    assert_eq!(total, written.len() as u64, "key counts sum to the number of keys");
    for i in 0..c.node_count() {
        let shard_list = c.get_json(i, "/kv-store/shards").await;
        assert_eq!(shard_list.body["shards"].as_array().unwrap().len(), shards.len(), "node {i} knows the new view");
    }
    for (key, (value, ctx)) in written {
        for i in 0..c.node_count() {
            let started = Instant::now();
            let with_ctx = c.get(i, key, ctx).await;
            assert_eq!(with_ctx.status, StatusCode::OK, "{key} at node {i} with its context: {}", with_ctx.body);
            assert_eq!(with_ctx.value(), Some(value));
            assert!(started.elapsed() < Duration::from_millis(500), "an old context made {key} wait at node {i}");
            let plain = c.get(i, key, &json!({})).await;
            assert_eq!(plain.value(), Some(value), "{key} at node {i}");
        }
    }
}

// Growing: 1 node -> 4 nodes with RF 2 (the new nodes started as proxies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_from_one_node_to_four_with_two_replicas() {
    let c = Cluster::start_with_view(4, 1, 1, &[]).await;
    let written = load(&c, "grow", KEYS).await;
    assert_eq!(c.get_json(3, "/kv-store/key-count").await.body["shard-id"], Value::Null, "node 3 starts as a proxy");
    let answer = view_change(&c, 0, &[0, 1, 2, 3], 2).await;
    check_after(&c, &answer, &[0, 1, 2, 3], 2, &written).await;
}

// 2 shards -> 3 shards: only keys whose shard changes move, at most
// 1/3 + 5% of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_by_a_shard_moves_only_a_fair_share_of_keys() {
    let c = Cluster::start_with_view(3, 2, 1, &[]).await;
    let n = 300;
    let written = load(&c, "share", n).await;
    let answer = view_change(&c, 1, &[0, 1, 2], 1).await;
    check_after(&c, &answer, &[0, 1, 2], 1, &written).await;
    let mut moved = 0;
    for i in 0..3 {
        moved += c.metric(i, "causalkv_view_change_records_sent").await;
    }
    let share = moved as f64 / n as f64;
    println!("2 -> 3 shards: {moved} of {n} keys moved ({:.1}%)", share * 100.0);
    assert!(moved > 0, "the new shard received keys");
    assert!(share <= 1.0 / 3.0 + 0.05, "moved {:.1}% of the keys", share * 100.0);
}

// Shrinking: 4 nodes -> 2; removed nodes forward to the new owners and hold
// nothing themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shrink_from_four_nodes_to_two() {
    let c = Cluster::start(4, 2).await;
    let written = load(&c, "shrink", KEYS).await;
    let answer = view_change(&c, 3, &[0, 2], 1).await;
    check_after(&c, &answer, &[0, 2], 1, &written).await;
    for removed in [1, 3] {
        let kc = c.get_json(removed, "/kv-store/key-count").await;
        assert_eq!(kc.body["key-count"], json!(0));
        assert_eq!(kc.body["shard-id"], Value::Null);
        let key = written.keys().next().unwrap();
        let get = c.get(removed, key, &json!({})).await;
        let served_by = get.forwarded_to().expect("a removed node forwards");
        assert!(served_by == c.addr(0) || served_by == c.addr(2));
    }
}

// Replacing every node: [a, b] -> [c, d], where c and d were started with the
// old VIEW that does not contain them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_every_node() {
    let c = Cluster::start_with_view(4, 2, 1, &[]).await;
    let written = load(&c, "replace", KEYS).await;
    let answer = view_change(&c, 2, &[2, 3], 1).await;
    check_after(&c, &answer, &[2, 3], 1, &written).await;
    assert_eq!(c.get_json(0, "/kv-store/key-count").await.body["key-count"], json!(0), "old nodes dropped their keys");
}

// Only the repl-factor changes: 4 nodes RF 2 -> RF 1 -> RF 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_only_the_repl_factor_and_back() {
    let c = Cluster::start(4, 2).await;
    let written = load(&c, "rf", KEYS).await;
    let answer = view_change(&c, 0, &[0, 1, 2, 3], 1).await;
    check_after(&c, &answer, &[0, 1, 2, 3], 1, &written).await;
    let answer = view_change(&c, 2, &[0, 1, 2, 3], 2).await;
    check_after(&c, &answer, &[0, 1, 2, 3], 2, &written).await;
    // Writes work in the new epoch, with contexts of the old ones.
    let (_, (_, old_ctx)) = written.iter().next().unwrap();
    let put = c.put(1, "after-rf", json!(1), old_ctx).await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.body);
    assert_eq!(put.ctx()["epoch"], json!(2));
}

// A node killed during the transfer aborts the change: every node stays in
// the old view with all its data, the caller gets 503, and a retry later
// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dying_mid_transfer_aborts_the_change() {
    let mut c = Cluster::start_with_view(4, 2, 1, &[("CAUSALKV_FAULTS", "1")]).await;
    let written = load(&c, "abort", KEYS).await;
    let before: Vec<u64> = futures_util::future::join_all((0..2).map(|i| c.get_json(i, "/kv-store/key-count")))
        .await
        .iter()
        .map(|a| a.body["key-count"].as_u64().unwrap())
        .collect();
    c.set_faults(2, json!({"view_step_delay_ms": 1500})).await;
    let client = c.client.clone();
    let url = c.nodes[0].url("/kv-store/view-change");
    let view: Vec<String> = (0..4).map(|i| c.addr(i).to_string()).collect();
    let started = Instant::now();
    let change = tokio::spawn(async move { send(client.put(url).json(&json!({"view": view, "repl-factor": 2}))).await });
    // Every step at node 2 is delayed 1.5 s: once it has received the first
    // batch of transferred records (the request is counted on arrival), it
    // is inside the transfer and stages nothing for 1.5 s: kill it there.
    let receive = "causalkv_internal_http_requests_total{path=\"/internal/view/receive\"}";
    let in_transfer = wait_until(Duration::from_secs(20), || async { c.metric(2, receive).await > 0 }).await;
    assert!(in_transfer, "node 2 never received transferred records");
    assert!(!change.is_finished(), "the change ended before node 2 staged anything");
    c.nodes[2].kill();
    let answer = change.await.unwrap();
    println!("aborted change answered {} after {:?}", answer.status, started.elapsed());
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.body);
    assert_eq!(answer.body["error"], "Unable to satisfy request");
    // Everyone still in the old view, all data there, writes work.
    for i in [0, 1, 3] {
        let shards = c.get_json(i, "/kv-store/shards").await;
        assert_eq!(shards.body["shards"], json!([1, 2]), "node {i} is still in the old view");
    }
    for (i, count) in before.iter().enumerate() {
        assert_eq!(c.get_json(i, "/kv-store/key-count").await.body["key-count"].as_u64(), Some(*count));
    }
    for (key, (value, ctx)) in &written {
        assert_eq!(c.get(3, key, ctx).await.value(), Some(value), "{key} after the abort");
    }
    let put = c.put(1, "after-abort", json!(1), &json!({})).await;
    assert!(put.status.is_success(), "writes resume after an abort: {}", put.body);
    // Later, with the node back, the same request succeeds.
    c.restart(2).await;
    c.set_faults(2, json!({})).await;
    let mut written = written;
    written.insert("after-abort".into(), (json!(1), put.ctx()));
    let answer = view_change(&c, 0, &[0, 1, 2, 3], 2).await;
    check_after(&c, &answer, &[0, 1, 2, 3], 2, &written).await;
}

// A writer and a reader run through a view change: no write is refused, no
// acknowledged write is lost, no session goes backwards (causal checker).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_run_through_a_view_change_without_loss() {
    let c = Cluster::start_with_view(4, 2, 1, &[]).await;
    let nodes: Vec<String> = (0..4).map(|i| c.addr(i).to_string()).collect();
    let progress = Arc::new(workload::Progress::default());
    let wl =
        workload::Workload { nodes: nodes.clone(), sessions: 4, ops_per_session: 400, keys: 16, read_percent: 50, session_nodes: vec![] };
    let run = tokio::spawn(wl.run(progress.clone()));
    while progress.done.load(std::sync::atomic::Ordering::Relaxed) < 400 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answer = view_change(&c, 1, &[0, 1, 2, 3], 2).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let done_at_change = progress.done.load(std::sync::atomic::Ordering::Relaxed);
    let history = run.await.unwrap();
    assert!(done_at_change < 1600, "the change happened while the sessions ran");
    let (state, took) = workload::converge(&nodes, 16, Duration::from_secs(20)).await;
    let report = history.check(&state);
    println!("through a view change: {} ; converged in {took:?}", report.summary());
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert!(report.lost_writes.is_empty(), "{:#?}", report.lost_writes);
    assert_eq!(report.failed, 0, "no request failed during the change");
}

// The new view and epoch survive a restart of every node, even though their
// VIEW variable still names the old view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_view_survives_restarts() {
    let mut c = Cluster::start_with_view(3, 1, 1, &[]).await;
    let written = load(&c, "persist", KEYS).await;
    let answer = view_change(&c, 0, &[0, 1, 2], 1).await;
    assert_eq!(answer.status, StatusCode::OK);
    for i in 0..3 {
        assert_eq!(c.nodes[i].terminate(), Some(0));
    }
    for i in 0..3 {
        c.restart(i).await;
    }
    check_after(&c, &answer, &[0, 1, 2], 1, &written).await;
    let put = c.put(2, "new-epoch", json!(1), &json!({})).await;
    assert_eq!(put.ctx()["epoch"], json!(1));
}

// POST /join adds one node with the current repl-factor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_adds_a_node() {
    let c = Cluster::start_with_view(3, 2, 1, &[]).await;
    let written = load(&c, "join", KEYS).await;
    let url = format!("{}?nodeid=3&nodeaddr={}", c.nodes[2].url("/join"), c.addr(2));
    let answer = send(c.client.post(url)).await;
    check_after(&c, &answer, &[0, 1, 2], 1, &written).await;
}

// Bad requests are 400s and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_view_changes_are_rejected() {
    let c = Cluster::start(2, 1).await;
    let a = c.addr(0);
    let cases = [
        json!({"view": [], "repl-factor": 1}),
        json!({"view": "", "repl-factor": 1}),
        json!({"view": [a], "repl-factor": 0}),
        json!({"view": [a], "repl-factor": 2}),
        json!({"view": [a, a], "repl-factor": 1}),
        json!({"view": ["not an address"], "repl-factor": 1}),
        json!({"view": [a], "repl-factor": "1"}),
        json!({"repl-factor": 1}),
    ];
    for body in cases {
        let answer = send(c.client.put(c.nodes[0].url("/kv-store/view-change")).json(&body)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}: {}", answer.body);
        assert_eq!(answer.body["message"], "Error in PUT");
    }
    let answer = send(c.client.put(c.nodes[0].url("/kv-store/view-change")).body("[not json")).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let missing = send(c.client.post(c.nodes[0].url("/join?nodeid=1"))).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(c.get_json(1, "/kv-store/shards").await.body["shards"], json!([1, 2]), "nothing changed");
}

// A view change that names no repl-factor keeps the current one (as
// clients written for the course API send it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_change_without_repl_factor_keeps_the_current_one() {
    let c = Cluster::start_with_view(4, 2, 2, &[]).await;
    let written = load(&c, "norf", 20).await;
    let view: Vec<&str> = (0..4).map(|i| c.addr(i)).collect();
    let answer = send(c.client.put(c.nodes[0].url("/kv-store/view-change")).json(&json!({"view": view}))).await;
    check_after(&c, &answer, &[0, 1, 2, 3], 2, &written).await;
}

//! Durability: a master killed with SIGKILL right after acknowledging a burst
//! of writes has every one of them after restart, and never reuses a seq.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

async fn burst(c: &Arc<Cluster>, node: usize, prefix: &str, writes: usize, concurrency: usize) -> Vec<(String, u64, u64)> {
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let c = c.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for k in (t..writes).step_by(concurrency) {
                let key = format!("{prefix}-{k}");
                let put = c.put(node, &key, json!({"k": k, "pad": "x".repeat(200)}), &json!({})).await;
                assert!(put.status.is_success(), "{}", put.body);
                let origin = put.forwarded_to().unwrap_or(c.addr(node)).to_string();
                acked.push((key, k as u64, put.seq_of(&origin)));
            }
            acked
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("writer task"));
    }
    all
}

/// Every acknowledged write of `acked` reads back with its value at `node`.
async fn assert_all_present(c: &Cluster, node: usize, acked: &[(String, u64, u64)]) {
    for (key, k, _) in acked {
        let get = c.get(node, key, &json!({})).await;
        assert_eq!(get.status, StatusCode::OK, "{key} lost at node {node}");
        assert_eq!(get.value().map(|v| v["k"].clone()), Some(json!(k)), "{key} at node {node}");
    }
}

// SIGKILL right after the last acknowledgement; restart; everything is there
// and new writes get seqs above every acknowledged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let c = Arc::new(Cluster::start(1, 1).await);
    let acked = burst(&c, 0, "dur", 400, 16).await;
    let mut c = Arc::try_unwrap(c).unwrap_or_else(|_| panic!("writers finished"));
    c.nodes[0].kill();
    c.restart(0).await;
    let max_seq = acked.iter().map(|a| a.2).max().unwrap();
    assert_eq!(max_seq, 400, "one seq per write");
    let mut seqs: Vec<u64> = acked.iter().map(|a| a.2).collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 400, "no seq handed out twice");
    assert_all_present(&c, 0, &acked).await;
    assert_eq!(c.get_json(0, "/kv-store/key-count").await.body["key-count"], json!(400));
    // The writes came back from the write-ahead log: sled was not flushed
    // since start (checkpoints run every 30 s or 32 MiB of log).
    assert!(c.metric(0, "causalkv_wal_replayed_entries").await >= 400, "recovery did not replay the write-ahead log");
    let next = c.put(0, "after-restart", json!(1), &json!({})).await;
    assert_eq!(next.status, StatusCode::CREATED);
    assert_eq!(next.seq_of(c.addr(0)), max_seq + 1, "the counter continues after the last durable seq");
}

// The same for a master in a 2-replica shard: after its restart the worker
// and the master hold every acknowledged write, and seqs stay unique.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_keeps_its_writes_and_its_worker_gets_them() {
    let c = Arc::new(Cluster::start(2, 2).await);
    let acked = burst(&c, 0, "rep", 300, 8).await;
    let mut c = Arc::try_unwrap(c).unwrap_or_else(|_| panic!("writers finished"));
    c.nodes[0].kill();
    c.restart(0).await;
    let worker_has_all =
        wait_until(Duration::from_secs(15), || async { c.get_json(1, "/kv-store/key-count").await.body["key-count"] == json!(300) }).await;
    assert!(worker_has_all, "the worker did not receive every acknowledged write");
    for (key, k, _) in &acked {
        for node in 0..2 {
            let get = c.get(node, key, &json!({})).await;
            assert_eq!(get.value().map(|v| v["k"].clone()), Some(json!(k)), "{key} at node {node}");
        }
    }
    let next = c.put(0, "fresh", json!(1), &json!({})).await;
    assert_eq!(next.seq_of(c.addr(0)), 301);
}

/// The newest write-ahead log segment of a stopped node.
fn newest_segment(data_dir: &std::path::Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(data_dir.join("wal"))
        .expect("wal dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segs.sort();
    segs.pop().expect("a segment")
}

// A crash mid-append leaves a torn entry (here: garbage after the last good
// one); recovery keeps every acknowledged write and ignores the tail. The node
// is also SIGKILLed once right after it is spawned (wherever in its start-up
// that lands), which must change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_log_tail_and_a_kill_at_start_up_lose_nothing() {
    let c = Arc::new(Cluster::start(1, 1).await);
    let acked = burst(&c, 0, "torn", 200, 8).await;
    let mut c = Arc::try_unwrap(c).unwrap_or_else(|_| panic!("writers finished"));
    c.nodes[0].kill();
    let segment = newest_segment(&c.nodes[0].data_dir);
    let mut tail = std::fs::OpenOptions::new().append(true).open(&segment).expect("open segment");
    // A plausible frame header (length 100, wrong checksum) and half a body.
    std::io::Write::write_all(&mut tail, &[100, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9, 9, 9]).expect("append garbage");
    drop(tail);
    c.nodes[0].start();
    c.nodes[0].kill();
    c.restart(0).await;
    assert_all_present(&c, 0, &acked).await;
    let next = c.put(0, "after", json!(1), &json!({})).await;
    assert_eq!(next.status, StatusCode::CREATED);
    assert_eq!(next.seq_of(c.addr(0)), 201, "no seq reused after the torn tail");
    // A clean stop checkpoints: the next start replays nothing.
    assert_eq!(c.nodes[0].terminate(), Some(0));
    c.restart(0).await;
    assert_eq!(c.metric(0, "causalkv_wal_replayed_entries").await, 0, "a clean stop left log entries to replay");
    assert_eq!(c.get_json(0, "/kv-store/key-count").await.body["key-count"], json!(201));
}

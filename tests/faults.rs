//! Fault tests judged by the causal checker: concurrent sessions run against
//! a 4-node RF-2 cluster of real processes while a master is killed, a
//! worker is frozen, a replica is partitioned, or every node restarts in
//! turn. Each run: 5 sessions, 2 000+ operations; after healing, the checker
//! must find zero causal violations and zero lost acknowledged writes.

mod common;
#[path = "common/workload.rs"]
mod workload;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use serde_json::json;
use workload::{Progress, Workload, converge};

const SESSIONS: usize = 5;
const OPS_PER_SESSION: usize = 420;
const KEYS: usize = 12;

fn workload(c: &Cluster, session_nodes: Vec<Vec<usize>>) -> Workload {
    Workload {
        nodes: (0..c.node_count()).map(|i| c.addr(i).to_string()).collect(),
        sessions: SESSIONS,
        ops_per_session: OPS_PER_SESSION,
        keys: KEYS,
        read_percent: 50,
        session_nodes,
    }
}

async fn faulty_cluster() -> Cluster {
    Cluster::start_with(4, 2, &[("CAUSALKV_FAULTS", "1"), ("CAUSAL_WAIT_MS", "500")]).await
}

async fn until_done(progress: &Progress, ops: usize) {
    let total = SESSIONS * OPS_PER_SESSION;
    while progress.done.load(Ordering::Relaxed) < ops.min(total) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks the history against the converged state and prints the counts.
async fn judge(name: &str, c: &Cluster, history: causalkv::check::History) {
    let nodes: Vec<String> = (0..c.node_count()).map(|i| c.addr(i).to_string()).collect();
    let (state, took) = converge(&nodes, KEYS, Duration::from_secs(30)).await;
    let report = history.check(&state);
    println!("{name}: {} ; converged in {took:?}", report.summary());
    assert!(report.operations >= 2000, "{name}: only {} operations", report.operations);
    assert!(report.reads > 0 && report.writes > 0);
    assert!(report.violations.is_empty(), "{name}: causal violations: {:#?}", report.violations);
    assert!(report.lost_writes.is_empty(), "{name}: lost acknowledged writes: {:#?}", report.lost_writes);
}

// SIGKILL of shard 1's master during writes, restart later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn master_killed_during_writes() {
    let c = Arc::new(tokio::sync::Mutex::new(faulty_cluster().await));
    let progress = Arc::new(Progress::default());
    let run = tokio::spawn(workload(&*c.lock().await, vec![]).run(progress.clone()));
    until_done(&progress, 600).await;
    c.lock().await.nodes[0].kill();
    until_done(&progress, 1400).await;
    c.lock().await.restart(0).await;
    let history = run.await.expect("workload");
    judge("master killed", &*c.lock().await, history).await;
}

// SIGSTOP/SIGCONT of shard 1's worker: a frozen node, not a dead socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_frozen_and_thawed() {
    let c = faulty_cluster().await;
    let progress = Arc::new(Progress::default());
    let run = tokio::spawn(workload(&c, vec![]).run(progress.clone()));
    until_done(&progress, 500).await;
    c.nodes[1].signal(libc::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.nodes[1].signal(libc::SIGCONT);
    let history = run.await.expect("workload");
    judge("worker frozen", &c, history).await;
}

// A partition: shard 1's worker is cut off from its master while clients
// keep using both sides; then the partition heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_partitioned_then_healed() {
    let c = faulty_cluster().await;
    let progress = Arc::new(Progress::default());
    // Sessions 0-1 talk only to node 1 (the cut-off side), the others to the rest.
    let sides = vec![vec![1], vec![1], vec![0, 2, 3], vec![0, 2, 3], vec![0, 2, 3]];
    let run = tokio::spawn(workload(&c, sides).run(progress.clone()));
    until_done(&progress, 300).await;
    c.set_faults(0, json!({"blocked": [c.addr(1)]})).await;
    c.set_faults(1, json!({"blocked": [c.addr(0)]})).await;
    until_done(&progress, 1500).await;
    c.set_faults(0, json!({})).await;
    c.set_faults(1, json!({})).await;
    let history = run.await.expect("workload");
    judge("partition", &c, history).await;
}

// A rolling restart of every node (SIGTERM, start again, wait ready) under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_of_every_node() {
    let c = Arc::new(tokio::sync::Mutex::new(faulty_cluster().await));
    let progress = Arc::new(Progress::default());
    let run = tokio::spawn(workload(&*c.lock().await, vec![]).run(progress.clone()));
    for i in 0..4 {
        until_done(&progress, 300 + i * 350).await;
        let mut guard = c.lock().await;
        assert_eq!(guard.nodes[i].terminate(), Some(0), "node {i} exits cleanly on SIGTERM");
        guard.restart(i).await;
    }
    let history = run.await.expect("workload");
    judge("rolling restart", &*c.lock().await, history).await;
}

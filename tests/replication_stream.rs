//! The replication stream between real node processes (1 shard × 3):
//! a worker killed and restarted in the middle of a stream of writes gets
//! every write once it is back (the stream reopens), and a frozen worker
//! fills its stream's window without slowing the master's writes, then
//! catches up after it is thawed. The protocol's unit tests (frames,
//! window, reordering, duplicates) are in `src/gossip/stream/`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;

const STREAMS_OPENED: &str = "causalkv_replication_streams_opened_total";
const WINDOW_FULL: &str = "causalkv_replication_window_full_total";
const LIVE_KEYS: &str = "causalkv_live_keys";

/// The master of the one shard (the node that takes a write itself).
async fn master_of(c: &Cluster) -> usize {
    let answer = c.put(0, "probe", json!("x"), &json!({})).await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    c.index_of(answer.forwarded_to().unwrap_or(c.addr(0)))
}

/// Writes keys `from..to` at node `at` with `tasks` concurrent sessions;
/// every write must be acknowledged. Returns once all are.
async fn write_keys(c: &Arc<Cluster>, at: usize, from: usize, to: usize, tasks: usize) {
    let next = Arc::new(AtomicUsize::new(from));
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (c, next) = (c.clone(), next.clone());
        handles.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    return;
                }
                let answer = c.put(at, &format!("key{i}"), json!(i), &json!({})).await;
                assert!(answer.status == 200 || answer.status == 201, "write {i}: {} {:?}", answer.status, answer.body);
            }
        }));
    }
    for h in handles {
        h.await.expect("writer");
    }
}

async fn live_keys_reach(c: &Cluster, i: usize, n: u64, limit: Duration) -> bool {
    wait_until(limit, || async { c.metric(i, LIVE_KEYS).await >= n }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_restarted_mid_stream_gets_every_write() {
    let c = Cluster::start(3, 3).await;
    let master = master_of(&c).await;
    let worker = (master + 1) % 3;
    assert!(
        wait_until(Duration::from_secs(10), || async { c.metric(master, STREAMS_OPENED).await >= 2 }).await,
        "the master opens a stream to each worker"
    );
    let before = c.metric(master, STREAMS_OPENED).await;
    let mut c = Arc::new(c);
    let writes = tokio::spawn({
        let c = c.clone();
        async move { write_keys(&c, master, 0, 3000, 8).await }
    });
    // Kill the worker once part of the writes reached it, mid-stream.
    assert!(live_keys_reach(&c, worker, 500, Duration::from_secs(30)).await, "writes reach the worker");
    unsafe {
        libc::kill(c.nodes[worker].pid(), libc::SIGKILL);
    }
    let at_kill = c.metric(master, LIVE_KEYS).await;
    writes.await.expect("writes go on while a worker is down");
    assert!(at_kill < 3001, "the worker died in the middle of the writes");
    let cluster = Arc::get_mut(&mut c).expect("the writers are done");
    // Reaps the killed process, so it can be started again.
    cluster.nodes[worker].kill();
    cluster.restart(worker).await;
    // 3000 keys and the probe, on every replica.
    for i in 0..3 {
        assert!(live_keys_reach(&c, i, 3001, Duration::from_secs(30)).await, "node {i} has every write");
    }
    let status = |i: usize| {
        let c = &c;
        async move { c.get_json(i, "/kv-store/status").await.body["applied"].clone() }
    };
    assert!(
        wait_until(Duration::from_secs(10), || async { status(worker).await == status(master).await }).await,
        "the restarted worker's applied clock equals the master's"
    );
    // The master retries with backoff (at most 2 s between attempts).
    assert!(
        wait_until(Duration::from_secs(10), || async { c.metric(master, STREAMS_OPENED).await > before }).await,
        "the master reopened its stream to the restarted worker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_worker_fills_the_window_and_catches_up_after_thaw() {
    let c = Cluster::start(3, 3).await;
    let master = master_of(&c).await;
    let frozen = (master + 1) % 3;
    let other = (master + 2) % 3;
    c.nodes[frozen].signal(libc::SIGSTOP);
    let c = Arc::new(c);
    let started = std::time::Instant::now();
    write_keys(&c, master, 0, 2000, 8).await;
    let took = started.elapsed();
    assert!(live_keys_reach(&c, other, 2001, Duration::from_secs(30)).await, "the running worker gets every write meanwhile");
    assert!(c.metric(master, WINDOW_FULL).await > 0, "the stream to the frozen worker filled its window");
    c.nodes[frozen].signal(libc::SIGCONT);
    assert!(live_keys_reach(&c, frozen, 2001, Duration::from_secs(30)).await, "the thawed worker catches up");
    println!("2000 writes with a frozen worker took {took:?}");
}

//! Smoke run of `causalkv-bench` so the load generator never rots: ~2 s
//! against one causalkv node and against the bench's own ceiling server,
//! checking the JSON report (throughput, no errors, ordered percentiles).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_causalkv-bench");

/// Runs the bench with `args` and returns its JSON report.
fn bench(args: &[&str]) -> Value {
    let out = Command::new(BENCH).args(args).args(["--format", "json"]).output().expect("run causalkv-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "causalkv-bench {args:?} failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("bench output is not JSON ({e}): {stdout}"))
}

/// Checks one operation's summary: work done, no errors, ordered percentiles.
fn check_summary(report: &Value, op: &str) {
    let s = &report[op];
    let f = |name: &str| s[name].as_f64().unwrap_or_else(|| panic!("{op}.{name} missing in {report}"));
    assert!(f("throughput") > 0.0, "{op}: no throughput in {report}");
    assert!(f("ops") > 0.0, "{op}: no operations in {report}");
    assert_eq!(f("errors"), 0.0, "{op}: errors in {report}");
    let (p50, p99, p999, max) = (f("p50_ms"), f("p99_ms"), f("p999_ms"), f("max_ms"));
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= p999 && p999 <= max, "{op}: percentiles out of order in {report}");
}

struct Ceiling(Child);

impl Drop for Ceiling {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_against_one_causalkv_node() {
    let cluster = Cluster::start(1, 1).await;
    let node = cluster.addr(0).to_string();
    let report = tokio::task::spawn_blocking(move || {
        bench(&[
            "--target",
            "causalkv",
            "--nodes",
            &node,
            "--connections",
            "8",
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--keys",
            "500",
            "--preload",
            "--put-ratio",
            "0.3",
            "--dist",
            "zipfian",
        ])
    })
    .await
    .expect("bench thread");
    check_summary(&report, "get");
    check_summary(&report, "put");
    check_summary(&report, "all");
    assert_eq!(report["get"]["misses"].as_u64(), Some(0), "every key was preloaded: {report}");
    assert_eq!(report["preload"]["errors"].as_u64(), Some(0), "{report}");
    assert_eq!(report["config"]["connections"].as_u64(), Some(8));
    // Contexts were carried: the node has seen every write of the run.
    let count = cluster.get_json(0, "/kv-store/key-count").await;
    assert_eq!(count.body["key-count"].as_u64(), Some(500), "{}", count.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_against_the_ceiling_server() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _server = Ceiling(
        Command::new(BENCH)
            .args(["ceiling-server", "--port", &port.to_string(), "--threads", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the ceiling server"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "the ceiling server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = tokio::task::spawn_blocking(move || {
        bench(&["--target", "ceiling", "--nodes", &addr, "--connections", "4", "--duration", "2", "--warmup", "0.2"])
    })
    .await
    .expect("bench thread");
    check_summary(&report, "get");
    check_summary(&report, "put");
    assert_eq!(report["config"]["target"].as_str(), Some("ceiling"));
}

/// `--route shard` and the key filters against 2 shards × 2: the other
/// shard's keys only, each sent to its own shard, nothing forwarded; the
/// nodes' CPU is sampled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_routes_keys_to_their_shard() {
    let cluster = Cluster::start(4, 2).await;
    let entry = cluster.addr(0).to_string();
    let before = cluster.get_json(0, "/kv-store/status").await.body;
    let pids = (0..4).map(|i| format!("{}={}", cluster.addr(i), cluster.nodes[i].pid())).collect::<Vec<_>>().join(",");
    let e = entry.clone();
    let report = tokio::task::spawn_blocking(move || {
        bench(&[
            "--nodes",
            &e,
            "--connections",
            "4",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--keys",
            "200",
            "--put-ratio",
            "0.5",
            "--route",
            "shard",
            "--only-keys-not-served-by",
            &e,
            "--server-pids",
            &pids,
        ])
    })
    .await
    .expect("bench thread");
    check_summary(&report, "put");
    let routing = &report["routing"];
    let shards = routing["shards"].as_array().expect("routing.shards");
    assert_eq!(shards.len(), 2, "{routing}");
    let total: u64 = shards.iter().map(|s| s["keys"].as_u64().unwrap()).sum();
    assert_eq!(total, 200, "every key has a shard: {routing}");
    let other = shards.iter().find(|s| !s["replicas"].as_array().unwrap().iter().any(|r| r == &Value::from(entry.clone()))).unwrap();
    assert_eq!(routing["keys_used"], other["keys"], "{routing}");
    let cpu = &report["server_cpu"];
    assert_eq!(cpu["processes"].as_array().map(Vec::len), Some(4), "{cpu}");
    assert!(cpu["us_per_op"].as_f64().unwrap() > 0.0, "the other shard's nodes did the work: {cpu}");
    // The entry node forwarded only the probe's GETs of the other shard's keys (one each): the run itself sent
    // it nothing, as its own shard's keys were left out and the others went to their shard.
    let after = cluster.get_json(0, "/kv-store/status").await.body;
    let forwarded = after["forwarded"].as_u64().unwrap() - before["forwarded"].as_u64().unwrap();
    assert_eq!(Some(forwarded), other["keys"].as_u64(), "{after}");
}

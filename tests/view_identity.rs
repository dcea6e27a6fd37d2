//! Two views at one epoch (issue 11, hole 7): a node whose data folder keeps
//! another cluster's view at the same epoch is found out through heartbeats
//! and refuses key requests until the views agree; `causalkv cluster`
//! refuses to start over such a folder unless `--fresh`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{NodeProc, client, free_port, free_port_run, key_path, send, wait_until};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// How long a conflict may take to be noticed: a few heartbeat rounds.
const DETECTION_BOUND: Duration = Duration::from_secs(10);

async fn wait_ready(client: &reqwest::Client, node: &mut NodeProc) {
    let url = node.url("/ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if matches!(client.get(&url).send().await, Ok(r) if r.status() == StatusCode::OK) {
            return;
        }
        assert!(!node.exited(), "node {} exited during start-up", node.addr);
        assert!(Instant::now() < deadline, "node {} did not become ready", node.addr);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get_json(client: &reqwest::Client, node: &NodeProc, path: &str) -> common::Answer {
    send(client.get(node.url(path))).await
}

async fn put(client: &reqwest::Client, node: &NodeProc, key: &str, value: Value, ctx: &Value) -> common::Answer {
    send(client.put(node.url(&key_path(key))).json(&json!({"value": value, "causal-context": ctx}))).await
}

async fn get(client: &reqwest::Client, node: &NodeProc, key: &str, ctx: &Value) -> common::Answer {
    send(client.get(node.url(&key_path(key))).json(&json!({"causal-context": ctx}))).await
}

fn is_conflict(a: &common::Answer) -> bool {
    a.status == StatusCode::SERVICE_UNAVAILABLE && a.body["error"].as_str().is_some_and(|e| e.starts_with("Two views at one epoch"))
}

async fn metric(client: &reqwest::Client, node: &NodeProc, name: &str) -> u64 {
    let text = client.get(node.url("/metrics")).send().await.expect("metrics").text().await.expect("metrics text");
    text.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().last()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

// The README in order, without the cluster command: a node run alone keeps
// its one-node view at epoch 0 when it is restarted as part of a four-node
// cluster (also at epoch 0) on the same data folder. Today nobody notices: a
// PUT at that node is acknowledged with 201 and the other nodes never find
// it. Now both sides notice within a few heartbeats, refuse key requests
// with a clear error, and a view change makes them agree again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_keeping_another_view_at_the_same_epoch_refuses_key_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let http = client();
    let addrs: Vec<String> = (0..4).map(|_| format!("127.0.0.1:{}", free_port())).collect();

    // `cargo run`: the node alone, its own one-node view at epoch 0.
    let mut alone = NodeProc::new(&addrs[0], tmp.path().join("n0"), &[]);
    alone.start();
    wait_ready(&http, &mut alone).await;
    let a = put(&http, &alone, "before", json!("alone"), &json!({})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    alone.terminate();

    // `cluster --nodes 4 --repl-factor 2` on the same folder for node 0.
    let view = addrs.join(",");
    let env = [("VIEW", view.as_str()), ("REPL_FACTOR", "2")];
    let mut nodes: Vec<NodeProc> =
        addrs.iter().enumerate().map(|(i, addr)| NodeProc::new(addr, tmp.path().join(format!("n{i}")), &env)).collect();
    for n in &mut nodes {
        n.start();
    }
    for n in &mut nodes {
        wait_ready(&http, n).await;
    }
    // Node 0 kept the stored one-node view: one shard, and its key.
    let shards = get_json(&http, &nodes[0], "/kv-store/shards").await;
    assert_eq!(shards.body["shards"], json!([1]), "node 0 runs its stored one-node view: {:?}", shards.body);
    assert_eq!(get_json(&http, &nodes[1], "/kv-store/shards").await.body["shards"], json!([1, 2]));
    let count_before = get_json(&http, &nodes[0], "/kv-store/key-count").await.body["key-count"].clone();
    assert_eq!(count_before, json!(1));

    // Node 0 notices (polled with reads: a write here is what must not happen).
    let noticed = wait_until(DETECTION_BOUND, || async { is_conflict(&get(&http, &nodes[0], "before", &json!({})).await) }).await;
    assert!(noticed, "node 0 never refused key requests for the conflicting view");

    let a = put(&http, &nodes[0], "after", json!("lost"), &json!({})).await;
    assert!(is_conflict(&a), "a write at node 0 is refused: {a:?}");
    assert_eq!(a.body["message"], "Error in PUT", "{:?}", a.body);
    assert!(a.body.get("causal-context").is_some(), "{:?}", a.body);
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    let text = a.body["error"].as_str().unwrap_or_default();
    assert!(text.contains(&addrs[0]) && text.contains("epoch 0") && text.contains("fresh data folder"), "clear error: {text}");

    // /health says why; the metric counts it.
    let health = get_json(&http, &nodes[0], "/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["status"], "view-conflict", "{:?}", health.body);
    let conflict = &health.body["view-conflicts"][0];
    assert_eq!(conflict["epoch"], 0, "{conflict}");
    assert_eq!(conflict["ours"]["view"], json!([addrs[0]]), "{conflict}");
    assert!(addrs[1..].iter().any(|a| conflict["peer"] == json!(a)), "{conflict}");
    assert!(metric(&http, &nodes[0], "causalkv_view_conflicts_total").await >= 1);

    // The other side notices too (node 0 answers their heartbeats with its view).
    for n in &nodes[1..] {
        let seen = wait_until(DETECTION_BOUND, || async {
            let c = get_json(&http, n, "/health").await.body["view-conflicts"][0].clone();
            c["peer"] == json!(addrs[0]) && c["theirs"]["view"] == json!([addrs[0]])
        })
        .await;
        assert!(seen, "node {} never reported the conflict with node 0's members: {:?}", n.addr, get_json(&http, n, "/health").await.body);
        assert!(is_conflict(&get(&http, n, "before", &json!({})).await));
        assert!(is_conflict(&put(&http, n, "after", json!("lost"), &json!({})).await), "writes refused at {}", n.addr);
    }
    // Nothing changed while refusing: node 0 still has exactly its key, and
    // the answers it still gives say why key requests are refused.
    let count = get_json(&http, &nodes[0], "/kv-store/key-count").await;
    assert_eq!(count.body["key-count"], count_before);
    assert!(count.body["view-conflict"].as_str().is_some_and(|t| t.starts_with("Two views at one epoch")), "{:?}", count.body);
    assert!(get_json(&http, &nodes[1], "/kv-store/shards").await.body.get("view-conflict").is_some());

    // The way out the log names: a view change to the cluster's view.
    let change = send(http.put(nodes[1].url("/kv-store/view-change")).json(&json!({"view": addrs, "repl-factor": 2}))).await;
    assert_eq!(change.status, StatusCode::OK, "{:?}", change.body);
    let cleared = wait_until(DETECTION_BOUND, || async {
        let mut ok = true;
        for n in &nodes {
            ok &= get_json(&http, n, "/health").await.body["status"] == "ok";
        }
        ok
    })
    .await;
    if !cleared {
        for n in &nodes {
            eprintln!("{}: {:?} {:?}", n.addr, get_json(&http, n, "/health").await.body, get_json(&http, n, "/kv-store/shards").await.body);
        }
    }
    assert!(cleared, "the conflict did not clear after the view change: {:?}", change.body);
    assert!(get_json(&http, &nodes[0], "/kv-store/key-count").await.body.get("view-conflict").is_none());
    let a = put(&http, &nodes[0], "after", json!("kept"), &json!({})).await;
    assert!(a.status.is_success(), "{a:?}");
    for n in &nodes {
        let g = get(&http, n, "after", &a.ctx()).await;
        assert_eq!(g.status, StatusCode::OK, "{} after the change: {g:?}", n.addr);
        assert_eq!(g.value(), Some(&json!("kept")));
        let g = get(&http, n, "before", &a.ctx()).await;
        assert_eq!(g.value(), Some(&json!("alone")), "node 0's key was handed over by the change: {g:?}");
    }
}

// A node configured as a member of a cluster whose view does not name it,
// while it keeps another view at the same epoch: it heartbeats the nodes of
// its VIEW, learns from their answers that they run another view, and
// refuses key requests. The others do not take a non-member's claim for a
// conflict (a stranger must not be able to stop a cluster): they keep
// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_node_refuses_key_requests_while_the_cluster_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let http = client();
    let addrs: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let mut stray = NodeProc::new(&addrs[0], tmp.path().join("n0"), &[]);
    stray.start();
    wait_ready(&http, &mut stray).await;
    stray.terminate();
    // A two-node cluster that does not name node 0 ...
    let pair = format!("{},{}", addrs[1], addrs[2]);
    let mut others: Vec<NodeProc> =
        (1..3).map(|i| NodeProc::new(&addrs[i], tmp.path().join(format!("n{i}")), &[("VIEW", &pair), ("REPL_FACTOR", "2")])).collect();
    for n in &mut others {
        n.start();
    }
    for n in &mut others {
        wait_ready(&http, n).await;
    }
    // ... and node 0, configured as a member of it, still on its one-node view.
    let all = addrs.join(",");
    let mut stray = NodeProc::new(&addrs[0], tmp.path().join("n0"), &[("VIEW", &all), ("REPL_FACTOR", "1")]);
    stray.start();
    wait_ready(&http, &mut stray).await;
    let seen = wait_until(DETECTION_BOUND, || async { is_conflict(&get(&http, &stray, "k", &json!({})).await) }).await;
    assert!(seen, "node 0 never learned the others' view");
    for n in &others {
        let a = put(&http, n, "k", json!("still-served"), &json!({})).await;
        assert!(a.status.is_success(), "{} keeps serving: {a:?}", n.addr);
        assert_eq!(get_json(&http, n, "/health").await.body["status"], "ok", "{} records no conflict from a non-member", n.addr);
    }
}

fn cluster_command(base: u16, data: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(common::BIN);
    cmd.args(["cluster", "--nodes", "2", "--repl-factor", "2", "--base-port", &base.to_string()])
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .env("RUST_LOG", "warn");
    cmd
}

// `causalkv cluster` over the folder of a node first run alone (the README
// in order) refuses to start, names the folder and suggests `--fresh`; with
// `--fresh` it deletes the folders and starts a fresh cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_command_refuses_another_views_data_unless_fresh() {
    let http = client();
    let data = tempfile::tempdir().unwrap();
    let base = free_port_run(2);
    let first = format!("127.0.0.1:{base}");
    let folder = data.path().join(format!("127.0.0.1_{base}"));
    let mut alone = NodeProc::new(&first, folder.clone(), &[]);
    alone.start();
    wait_ready(&http, &mut alone).await;
    assert_eq!(put(&http, &alone, "k", json!(1), &json!({})).await.status, StatusCode::CREATED);
    alone.terminate();

    let refused =
        cluster_command(base, data.path(), &[]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("run the cluster command");
    let mut refused = KillOnDrop(refused);
    let mut err_pipe = refused.0.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut err_pipe, &mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = refused.0.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the cluster command started over another view's data");
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = reader.join().expect("stderr read");
    assert_eq!(status.code(), Some(2), "refused with exit 2: {stderr}");
    assert!(stderr.contains(&folder.display().to_string()), "names the folder: {stderr}");
    assert!(stderr.contains("--fresh"), "suggests --fresh: {stderr}");
    assert!(folder.exists(), "the folder is kept");
    assert!(!data.path().join(format!("127.0.0.1_{}", base + 1)).exists(), "no node was started");
    assert!(std::net::TcpStream::connect(("127.0.0.1", base)).is_err(), "nothing listens");

    // The data is intact: the node alone still serves its key.
    alone.start();
    wait_ready(&http, &mut alone).await;
    assert_eq!(get(&http, &alone, "k", &json!({})).await.value(), Some(&json!(1)));
    alone.terminate();

    let cluster = cluster_command(base, data.path(), &["--fresh"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the cluster command");
    let mut cluster = KillOnDrop(cluster);
    let stdout = cluster.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("the cluster started with --fresh");
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    let node = NodeProc::new(&first, folder.clone(), &[]);
    assert_eq!(get_json(&http, &node, "/kv-store/key-count").await.body["key-count"], json!(0), "a fresh cluster");
    let shard = get_json(&http, &node, "/kv-store/shards/1").await;
    assert_eq!(shard.body["replicas"], json!([first, format!("127.0.0.1:{}", base + 1)]), "the cluster's view: {:?}", shard.body);
    assert_eq!(get_json(&http, &node, "/health").await.body["status"], "ok");
    unsafe {
        libc::kill(cluster.0.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = cluster.0.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the cluster did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "cluster exited with {status}");
    // Started again without --fresh on its own data: accepted.
    let again = cluster_command(base, data.path(), &[]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("restart");
    let mut again = KillOnDrop(again);
    let stdout = again.0.stdout.take().expect("stdout");
    // Keep reading: a closed pipe would make the command's next line fail
    // and leave its nodes running after the test.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first_line = rx.recv_timeout(Duration::from_secs(60)).ok();
    assert!(first_line.is_some_and(|l| l.starts_with("causalkv cluster: 2 nodes")), "a cluster restarts on its own data");
    unsafe {
        libc::kill(again.0.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while again.0.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "the cluster did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the cluster command if the test fails before stopping it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            unsafe {
                libc::kill(self.0.id() as i32, libc::SIGINT);
            }
            let _ = self.0.wait();
        }
    }
}

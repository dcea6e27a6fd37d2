//! The trust boundary (issue 11): nobody outside the cluster can
//! reconfigure, poison or split it. Each test reproduces an attack against
//! real node processes and checks it is refused with nothing changed (key
//! counts, values and the view compared before and after).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "test-cluster-key";

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The request signature of `gossip::auth`, written out independently.
fn sign(key: &str, path: &str, ts: &str, sender: &str, receiver: &str, body: &[u8]) -> (String, String) {
    let digest = hex::encode(Sha256::digest(body));
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    for (i, part) in ["req", "POST", path, ts, sender, receiver, &digest].iter().enumerate() {
        if i > 0 {
            mac.update(b"\n");
        }
        mac.update(part.as_bytes());
    }
    (digest, hex::encode(mac.finalize().into_bytes()))
}

struct Internal<'a> {
    sender: &'a str,
    receiver: &'a str,
    key: Option<&'a str>,
    ts: Option<String>,
}

async fn post_internal(c: &Cluster, node: usize, path: &str, how: &Internal<'_>, body: &[u8]) -> (StatusCode, String) {
    let mut req = c
        .client
        .post(c.nodes[node].url(path))
        .header("x-causalkv-from", how.sender)
        .header("x-causalkv-to", how.receiver)
        .header("content-type", "application/json");
    if let Some(key) = how.key {
        let ts = how.ts.clone().unwrap_or_else(|| format!("{}.{}", now_ms(), rand_nonce()));
        let (digest, sig) = sign(key, path, &ts, how.sender, how.receiver, body);
        req = req.header("x-causalkv-timestamp", ts).header("x-causalkv-body-sha256", digest).header("x-causalkv-signature", sig);
    }
    let resp = req.body(body.to_vec()).send().await.expect("answer");
    let status = resp.status();
    (status, resp.text().await.unwrap_or_default())
}

fn rand_nonce() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(1_000_000);
    N.fetch_add(1, Ordering::Relaxed) as u64
}

/// Everything an attack could change, read from every node.
async fn state(c: &Cluster, keys: &[&str]) -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0..c.node_count() {
        let count = c.get_json(i, "/kv-store/key-count").await.body["key-count"].clone();
        let shards = c.get_json(i, "/kv-store/shards").await.body["shards"].clone();
        let mut values = Vec::new();
        for k in keys {
            values.push(c.get(i, k, &json!({})).await.body.get("value").cloned().unwrap_or(Value::Null));
        }
        out.push(json!({"count": count, "shards": shards, "values": values}));
    }
    out
}

/// A fake node: answers every request with `answer`, counts requests.
async fn rogue_server(answer: Value) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let answer = answer.clone();
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::Relaxed);
            axum::Json(answer)
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, hits)
}

async fn seed(c: &Cluster, n: usize) -> Vec<String> {
    let mut ctx = json!({});
    let mut keys = Vec::new();
    for i in 0..n {
        let key = format!("key{i}");
        let a = c.put(i % c.node_count(), &key, json!(i), &ctx).await;
        assert_eq!(a.status, StatusCode::CREATED);
        ctx = a.ctx();
        keys.push(key);
    }
    // Every node serves every key before the attack.
    for i in 0..c.node_count() {
        for k in &keys {
            let ok = wait_until(Duration::from_secs(10), || async { c.get(i, k, &ctx).await.status == StatusCode::OK }).await;
            assert!(ok, "{k} readable at node {i}");
        }
    }
    keys
}

// Hole 1: with CLUSTER_KEY, `POST /join` of a rogue and a view change to a
// rogue-only view need the admin token; without it they are refused with
// 401 and nothing changes. The cluster key is the admin token by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfiguration_needs_the_admin_token() {
    let c = Cluster::start_with(3, 3, &[("CLUSTER_KEY", KEY)]).await;
    let keys = seed(&c, 6).await;
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (rogue, hits) = rogue_server(json!({})).await;
    let before = state(&c, &keys).await;

    let join = format!("/join?nodeid=x&nodeaddr={rogue}");
    let change = json!({"view": [rogue], "repl-factor": 1});
    for (auth, what) in [(None, "no token"), (Some("Bearer wrong"), "a wrong token"), (Some(KEY), "the key without Bearer")] {
        let mut req = c.client.post(c.nodes[0].url(&join));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let a = send(req).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "join with {what}: {}", a.body);
        assert_eq!((a.body["message"].as_str(), a.body["error"].as_str()), (Some("Error in JOIN"), Some("Unauthorized")));
        let mut req = c.client.put(c.nodes[1].url("/kv-store/view-change")).json(&change);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let a = send(req).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "view change with {what}: {}", a.body);
        assert_eq!((a.body["message"].as_str(), a.body["error"].as_str()), (Some("Error in VIEW-CHANGE"), Some("Unauthorized")));
    }
    assert_eq!(state(&c, &keys).await, before, "nothing changed");
    assert_eq!(hits.load(Ordering::Relaxed), 0, "the rogue was never contacted");
    assert!(c.metric(0, "causalkv_admin_rejected").await >= 3);

    // The legitimate operator (the key as bearer token) can still change
    // the view: RF 3 → 2 over the same nodes.
    let ok = send(
        c.client
            .put(c.nodes[2].url("/kv-store/view-change"))
            .header("authorization", format!("Bearer {KEY}"))
            .json(&json!({"view": [c.addr(0), c.addr(1), c.addr(2)], "repl-factor": 2})),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
}

// A separate ADMIN_TOKEN replaces the cluster key as the admin credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_token_of_its_own_is_required_when_set() {
    let c = Cluster::start_with(2, 2, &[("CLUSTER_KEY", KEY), ("ADMIN_TOKEN", "adm1n")]).await;
    let body = json!({"view": [c.addr(0), c.addr(1)], "repl-factor": 1});
    let with =
        |token: &str| c.client.put(c.nodes[0].url("/kv-store/view-change")).header("authorization", format!("Bearer {token}")).json(&body);
    assert_eq!(send(with(KEY)).await.status, StatusCode::UNAUTHORIZED, "the cluster key is not the admin token then");
    assert_eq!(c.get_json(0, "/kv-store/shards").await.body["shards"], json!([1]), "unchanged");
    let a = send(with("adm1n")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(c.get_json(0, "/kv-store/shards").await.body["shards"], json!([1, 2]));
}

// Hole 2: answers are signed and bound to the request. A fake node in the
// view answers every pull with a record; the real node refuses the unsigned
// answer, applies nothing, and says so loudly (/health, metric).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_answers_inject_nothing_and_are_loud() {
    let real = format!("127.0.0.1:{}", free_port());
    let (rogue, hits) = rogue_server(json!({
        "records": [{"key": "injected", "value": "evil", "dot": {"epoch": 0, "origin": "x", "seq": 1}, "deps": {}, "hlc": 1}],
        "applied": {"x": 1}, "snapshot_needed": false, "epoch": 0
    }))
    .await;
    let c = Cluster::start_nodes(
        std::slice::from_ref(&real),
        2,
        &[vec![("VIEW".into(), format!("{real},{rogue}")), ("CLUSTER_KEY".into(), KEY.into())]],
    )
    .await;
    let talked = wait_until(Duration::from_secs(10), || async { hits.load(Ordering::Relaxed) >= 5 }).await;
    assert!(talked, "the node pulls from its shard peer");
    let failing = wait_until(Duration::from_secs(10), || async {
        let h = c.get_json(0, "/health").await.body;
        h["status"] == json!("degraded") && h["failing-peers"].get(&rogue).is_some()
    })
    .await;
    assert!(failing, "/health names the peer whose answers fail: {}", c.get_json(0, "/health").await.body);
    let a = c.get(0, "injected", &json!({})).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "nothing injected: {}", a.body);
    assert_eq!(c.get_json(0, "/kv-store/key-count").await.body["key-count"], json!(0));
    let metrics = c.client.get(c.nodes[0].url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(&format!("causalkv_peer_refusals_total{{peer=\"{rogue}\"}}")), "per-peer refusal metric");
}

// Hole 2: a signature names its receiver: a request signed for one node is
// refused by another, and one signed for the node itself passes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_request_is_valid_only_at_its_receiver_and_once() {
    let c = Cluster::start_with(3, 3, &[("CLUSTER_KEY", KEY)]).await;
    let from = c.addr(0).to_string();
    let hb = serde_json::to_vec(&json!({"from": from, "epoch": 0})).unwrap();
    let ts = format!("{}.7", now_ms());
    let for_1 = Internal { sender: &from, receiver: c.addr(1), key: Some(KEY), ts: Some(ts.clone()) };
    let (status, _) = post_internal(&c, 2, "/internal/heartbeat", &for_1, &hb).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "signed for node 1, sent to node 2");
    let (status, _) = post_internal(&c, 1, "/internal/heartbeat", &for_1, &hb).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post_internal(&c, 1, "/internal/heartbeat", &for_1, &hb).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "replay");

    // Forged, stale, unsigned: refused before anything is parsed.
    let forged = serde_json::to_vec(&json!({"from": from, "epoch": 0, "records": [
        {"key": "k", "value": "forged", "dot": {"epoch": 0, "origin": from, "seq": 1}, "deps": {}, "hlc": 1}]}))
    .unwrap();
    let to2 = c.addr(2).to_string();
    let cases = [
        ("unsigned", Internal { sender: &from, receiver: &to2, key: None, ts: None }),
        ("wrong key", Internal { sender: &from, receiver: &to2, key: Some("not-the-key"), ts: None }),
        ("stale", Internal { sender: &from, receiver: &to2, key: Some(KEY), ts: Some(format!("{}.1", now_ms() - 60_000)) }),
    ];
    for (what, how) in &cases {
        let (status, _) = post_internal(&c, 2, "/internal/replicate", how, &forged).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
    }
    // A valid signature whose body was swapped.
    let ts = format!("{}.9", now_ms());
    let (digest, sig) = sign(KEY, "/internal/replicate", &ts, &from, &to2, b"{}");
    let resp = c
        .client
        .post(c.nodes[2].url("/internal/replicate"))
        .header("x-causalkv-from", &from)
        .header("x-causalkv-to", &to2)
        .header("x-causalkv-timestamp", ts)
        .header("x-causalkv-body-sha256", digest)
        .header("x-causalkv-signature", sig)
        .body(forged.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "body swapped under a valid signature");
    assert_eq!(c.get(2, "k", &json!({})).await.status, StatusCode::NOT_FOUND, "nothing applied");
}

// Hole 2: a key holder cannot speak for another node: the sender a body
// names must be the authenticated sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_names_the_authenticated_sender() {
    let c = Cluster::start_with(3, 3, &[("CLUSTER_KEY", KEY)]).await;
    let (me, victim) = (c.addr(0).to_string(), c.addr(1).to_string());
    let body = serde_json::to_vec(&json!({"from": victim, "epoch": 0, "records": [
        {"key": "k", "value": "spoofed", "dot": {"epoch": 0, "origin": victim, "seq": 1}, "deps": {}, "hlc": 1}]}))
    .unwrap();
    let how = Internal { sender: &me, receiver: c.addr(2), key: Some(KEY), ts: None };
    let (status, text) = post_internal(&c, 2, "/internal/replicate", &how, &body).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert_eq!(c.get(2, "k", &json!({})).await.status, StatusCode::NOT_FOUND);
}

// Hole 3: with a key, an unauthenticated request is refused from its
// headers, before its body is read: the node answers while the caller is
// still sending, and 60 such 9 MB uploads leave its memory where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_bodies_are_never_buffered() {
    let c = Cluster::start_with(1, 1, &[("CLUSTER_KEY", KEY)]).await;
    let pid = c.nodes[0].pid();
    let rss_before = rss_kib(pid);
    let addr = c.addr(0).to_string();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
            let head = format!(
                "POST /internal/replicate HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 9000000\r\n\
                 x-causalkv-from: {addr}\r\nx-causalkv-to: {addr}\r\nx-causalkv-timestamp: {}.{i}\r\n\
                 x-causalkv-body-sha256: {}\r\nx-causalkv-signature: {}\r\n\r\n",
                now_ms(),
                "00".repeat(32),
                "ab".repeat(32)
            );
            s.write_all(head.as_bytes()).await.expect("headers");
            // Part of the body; the rest would follow if the node waited for it.
            let _ = s.write_all(&vec![b' '; 256 * 1024]).await;
            let mut buf = vec![0u8; 4096];
            let n =
                tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("answered before the body ended").unwrap_or(0);
            String::from_utf8_lossy(&buf[..n]).to_string()
        }));
    }
    for t in tasks {
        let answer = t.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 401"), "refused from the headers: {answer:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    let rss_after = rss_kib(pid);
    assert!(rss_after < rss_before + 64 * 1024, "RSS grew from {rss_before} KiB to {rss_after} KiB");
    let a = c.get_json(0, "/health").await;
    assert_eq!(a.status, StatusCode::OK);
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).expect("VmRSS")
}

// Hole 4: a failed view change extends nothing. Without a key, a proposal
// naming 127.0.0.2:9 fails (it cannot be reached); afterwards neither
// 127.0.0.2 nor anyone claiming to be 127.0.0.2:9 may dump the shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_proposal_extends_no_trust() {
    let c = Cluster::start(2, 2).await;
    let keys = seed(&c, 4).await;
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let before = state(&c, &keys).await;
    let view = json!({"view": [c.addr(0), c.addr(1), "127.0.0.2:9"], "repl-factor": 2});
    let failed = send(c.client.put(c.nodes[0].url("/kv-store/view-change")).json(&view)).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE, "{}", failed.body);
    assert_eq!(state(&c, &keys).await, before, "the failed change changed nothing");

    let ask = serde_json::to_vec(&json!({"from": "127.0.0.2:9", "epoch": 0, "after_key": null, "limit": 1000})).unwrap();
    common::tls_provider();
    let outsider = reqwest::Client::builder().local_address(Some("127.0.0.2".parse().unwrap())).build().unwrap();
    for client in [&c.client, &outsider] {
        let resp = client
            .post(c.nodes[1].url("/internal/snapshot"))
            .header("x-causalkv-from", "127.0.0.2:9")
            .header("x-causalkv-to", c.addr(1))
            .header("content-type", "application/json")
            .body(ask.clone())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
        assert!(!text.contains("key0"), "no record leaked");
    }
}

// Hole 6: identity is the sender a request claims, not its source address.
// Node addresses 127.0.0.2 and 127.0.0.3: their connections to each other
// come from 127.0.0.1 (as a multi-homed container's come from its other
// network), and replication still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_does_not_depend_on_the_source_address() {
    let c = with_port_retries(|| async {
        let addrs = [format!("127.0.0.2:{}", free_port()), format!("127.0.0.3:{}", free_port())];
        Cluster::try_start_nodes(&addrs, 2, &[], client()).await
    })
    .await;
    let put = c.put(0, "k", json!("v"), &json!({})).await;
    assert_eq!(put.status, StatusCode::CREATED);
    let copied = wait_until(Duration::from_secs(10), || async { c.get(1, "k", &json!({})).await.value() == Some(&json!("v")) }).await;
    assert!(copied, "replicated without a context");
    for i in 0..2 {
        assert_eq!(c.get_json(i, "/health").await.body["status"], json!("ok"));
        assert_eq!(c.metric(i, "causalkv_auth_rejected").await, 0, "node {i} refused nothing");
    }
}

// Hole 6: a peer that refuses our traffic is loud. Two nodes with
// different keys: each shows the other as failing on /health with the
// reason, and counts the refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_peer_is_loud() {
    let envs = [vec![("CLUSTER_KEY".to_string(), "key-a".to_string())], vec![("CLUSTER_KEY".to_string(), "key-b".to_string())]];
    let c = with_port_retries(|| async {
        let addrs = [format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port())];
        Cluster::try_start_nodes(&addrs, 2, &envs, client()).await
    })
    .await;
    for i in 0..2 {
        let other = c.addr(1 - i).to_string();
        let loud = wait_until(Duration::from_secs(10), || async {
            let h = c.get_json(i, "/health").await.body;
            h["failing-peers"][&other].as_str().is_some_and(|why| why.contains("401"))
        })
        .await;
        assert!(loud, "node {i} shows {other} failing: {}", c.get_json(i, "/health").await.body);
        assert!(c.metric(i, "causalkv_auth_rejected").await > 0);
    }
}

// Hole 9: the key can come from a file, so it is in neither the command
// line nor the environment of the process (both readable through /proc and
// `ps`), and the node really uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_key_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("cluster.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let file = key_file.to_str().unwrap().to_string();
    let c = Cluster::start_with(2, 2, &[("CLUSTER_KEY_FILE", &file)]).await;
    let put = c.put(0, "k", json!("v"), &json!({})).await;
    assert_eq!(put.status, StatusCode::CREATED);
    let copied = wait_until(Duration::from_secs(10), || async { c.get(1, "k", &json!({})).await.value() == Some(&json!("v")) }).await;
    assert!(copied, "signed replication works with the key from the file");
    let hb = serde_json::to_vec(&json!({"from": c.addr(0), "epoch": 0})).unwrap();
    let unsigned = Internal { sender: c.addr(0), receiver: c.addr(1), key: None, ts: None };
    assert_eq!(post_internal(&c, 1, "/internal/heartbeat", &unsigned, &hb).await.0, StatusCode::UNAUTHORIZED, "the key is in force");
    let signed = Internal { sender: c.addr(0), receiver: c.addr(1), key: Some(KEY), ts: None };
    assert_eq!(post_internal(&c, 1, "/internal/heartbeat", &signed, &hb).await.0, StatusCode::OK, "it is the file's key");
    let admin = send(c.client.post(c.nodes[0].url("/join?nodeid=x&nodeaddr=127.0.0.1:9"))).await;
    assert_eq!(admin.status, StatusCode::UNAUTHORIZED, "the file's key is the admin token");
    let pid = c.nodes[0].pid();
    for what in ["cmdline", "environ"] {
        let text = std::fs::read(format!("/proc/{pid}/{what}")).unwrap();
        assert!(!String::from_utf8_lossy(&text).contains(KEY), "the key shows in /proc/{pid}/{what}");
    }
}

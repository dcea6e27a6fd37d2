//! The Rust client (`causalkv::client`) and the CLI on top of it, against
//! real node processes: sessions read their writes across shards with no
//! context handling and no forwarded write; the client follows a view change
//! and a failover; `causalkv status` shows a frozen worker as behind.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use causalkv::client::{Client, Error};
use common::{BIN, Cluster, wait_until};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Profile {
    name: String,
    photos: Vec<u32>,
    note: Option<String>,
}

fn client_of(c: &Cluster, nodes: &[usize]) -> Client {
    let addrs: Vec<&str> = nodes.iter().map(|i| c.addr(*i)).collect();
    Client::builder(addrs).build().expect("client")
}

async fn forwarded_writes(c: &Cluster) -> u64 {
    let mut sum = 0;
    for i in 0..c.node_count() {
        sum += c.metric(i, "causalkv_forwarded_writes_total").await;
    }
    sum
}

// A session writes keys of every shard and reads each back right away at
// whichever replica the client picks: every read sees the session's write
// (the client carries the context), and no node forwarded a write (the
// client sent each to its master).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_its_writes_across_shards_with_no_forwarded_write() {
    let c = Cluster::start(6, 2).await;
    let client = client_of(&c, &[4]);
    let session = client.session();
    let mut shards_written = std::collections::BTreeSet::new();
    for i in 0..40u32 {
        let key = format!("profile:{i}");
        let profile = Profile { name: format!("user {i}"), photos: (0..i % 4).collect(), note: (i % 2 == 0).then(|| "é ✓".into()) };
        let written = session.put(&key, &profile).await.expect("put");
        assert!(written.created, "{key} is new");
        shards_written.insert(written.served_by.clone().expect("served-by"));
        // Read at once, wherever the client sends it: the session's own write.
        let read: Option<Profile> = session.get(&key).await.expect("get");
        assert_eq!(read.as_ref(), Some(&profile), "{key}");
        let again = session.put(&key, &Profile { note: Some("v2".into()), ..profile.clone() }).await.expect("update");
        assert!(!again.created, "{key} was there");
        let read: Profile = session.get(&key).await.expect("get").expect("present");
        assert_eq!(read.note.as_deref(), Some("v2"));
    }
    assert_eq!(shards_written.len(), 3, "writes were served by the 3 masters: {shards_written:?}");
    assert_eq!(forwarded_writes(&c).await, 0, "no node forwarded a write the client sent");
    // Reads went to workers too (round robin over replicas).
    let mut worker_reads = 0;
    for i in [1, 3, 5] {
        worker_reads += c.metric(i, "causalkv_requests_total{op=\"get\",status=\"200\"}").await;
    }
    assert!(worker_reads > 0, "no read reached a worker");
    // Deletes, absent keys, and the context the session carries.
    assert!(session.delete("profile:0").await.expect("delete"));
    assert!(!session.delete("profile:0").await.expect("delete again"), "already gone");
    assert_eq!(session.get::<Profile>("profile:0").await.expect("get"), None);
    assert_eq!(session.get::<Value>("never-written").await.expect("get"), None);
    assert!(session.context().clock.len() >= 3, "the context names the writes of every master: {:?}", session.context());
    assert_eq!(forwarded_writes(&c).await, 0);
    assert_eq!(client.key_count().await.expect("key count"), 39);
    let shards = client.shards().await.expect("shards");
    assert_eq!(shards.len(), 3);
    assert_eq!(shards.iter().map(|s| s.key_count.unwrap_or(0)).sum::<u64>(), 39);
}

// Another session that starts from the first one's context sees its writes
// on every replica (a context is all causality needs), and a typed read of
// the wrong type is an error, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_handed_over_carries_causality_and_bad_types_are_errors() {
    let c = Cluster::start(4, 2).await;
    let writer = client_of(&c, &[0]).session();
    for i in 0..10 {
        writer.put(&format!("k{i}"), &i).await.expect("put");
    }
    let reader_client = client_of(&c, &[3]);
    let reader = reader_client.session_from(writer.context());
    for _ in 0..3 {
        for i in 0..10 {
            assert_eq!(reader.get::<i32>(&format!("k{i}")).await.expect("get"), Some(i));
        }
    }
    match reader.get::<Profile>("k1").await {
        Err(Error::Value(_)) => {}
        other => panic!("a number read as a struct: {other:?}"),
    }
    // Invalid requests are refused, not retried.
    let long = "x".repeat(51);
    match writer.put(&long, &1).await {
        Err(Error::Rejected { status: 400, .. }) => {}
        other => panic!("a 51-character key: {other:?}"),
    }
}

// After a view change the client learns the new view (from the answers'
// newer epoch) and still sends writes to the masters; when a master dies,
// writes go on (the worker takes them once it suspects the master).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_a_view_change_and_a_failover() {
    let mut c = Cluster::start(4, 2).await;
    let client = client_of(&c, &[0, 1]);
    let session = client.session();
    for i in 0..10 {
        session.put(&format!("vc{i}"), &i).await.expect("put");
    }
    let view: Vec<String> = (0..4).map(|i| c.addr(i).to_string()).collect();
    client.view_change(&view, Some(1)).await.expect("view change");
    assert_eq!(client.shards().await.expect("shards").len(), 4, "the client sees the new view");
    let before = forwarded_writes(&c).await;
    for i in 0..10 {
        assert_eq!(session.get::<i32>(&format!("vc{i}")).await.expect("get"), Some(i), "vc{i} after the view change");
        session.put(&format!("vc{i}"), &(i + 100)).await.expect("put after the change");
    }
    assert_eq!(forwarded_writes(&c).await, before, "writes after the change went to the new masters");

    // Back to 2 × 2, then kill shard 1's master: the client's writes go on.
    client.view_change(&view, Some(2)).await.expect("view change back");
    let shards = client.shards().await.expect("shards");
    let victim = c.index_of(&shards[0].master);
    let mut shard1_key = None;
    for i in 0..200 {
        let k = format!("fo-{i}");
        let w = session.put(&k, &i).await.expect("put");
        if w.served_by.as_deref() == Some(c.addr(victim)) {
            shard1_key = Some(k);
            break;
        }
    }
    let shard1_key = shard1_key.expect("a key of shard 1");
    // The worker must hold what the session's context names before the
    // master dies, or it rightly refuses (503) to build on writes it lacks.
    let worker = shards[0].replicas.iter().find(|r| **r != shards[0].master).expect("a worker").clone();
    let ctx = session.context().to_json();
    let replicated = wait_until(Duration::from_secs(10), || async {
        let a = c.get(c.index_of(&worker), &shard1_key, &ctx).await;
        a.status.is_success() && a.served_by.as_deref() == Some(worker.as_str())
    })
    .await;
    assert!(replicated, "the worker never caught up with the session");
    c.nodes[victim].kill();
    let started = Instant::now();
    let mut done = false;
    while started.elapsed() < Duration::from_secs(15) {
        match session.put(&shard1_key, &"after the master died").await {
            Ok(w) => {
                assert_ne!(w.served_by.as_deref(), Some(c.addr(victim)));
                done = true;
                break;
            }
            Err(e) if e.is_unavailable() => continue,
            Err(e) => panic!("write with the master down: {e}"),
        }
    }
    assert!(done, "no write succeeded within 15 s of the master's death");
    assert_eq!(session.get::<String>(&shard1_key).await.expect("get").as_deref(), Some("after the master died"));
}

fn cli(c: &Cluster, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).env("CAUSALKV_NODES", c.addr(0)).env("RUST_LOG", "warn").output().expect("run the CLI");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

// `causalkv status` shows a frozen worker as behind within 3 s, while its
// master takes writes; once it runs again it catches up and shows ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_frozen_worker_as_behind_within_3_s() {
    let c = Cluster::start(4, 2).await;
    let client = client_of(&c, &[0]);
    let status = client.status().await.expect("status");
    let shard = &status.shards[0];
    let master = shard.master.clone();
    let worker = shard.replicas.iter().find(|r| r.node != master).expect("a worker").node.clone();
    let w = c.index_of(&worker);
    let session = client.session();
    // Keys of that shard: written through its master.
    let mut keys = Vec::new();
    for i in 0..200 {
        let k = format!("lag-{i}");
        if session.put(&k, &i).await.expect("put").served_by.as_deref() == Some(master.as_str()) {
            keys.push(k);
        }
        if keys.len() == 5 {
            break;
        }
    }
    let (code, out, err) = cli(&c, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let parsed: Value = serde_json::from_str(&out).expect("status --json is JSON");
    assert!(
        parsed["shards"].as_array().expect("shards").iter().all(|s| s["replicas"].as_array().unwrap().iter().all(|r| r["state"] == "ok")),
        "{out}"
    );

    c.nodes[w].signal(libc::SIGSTOP);
    let frozen_at = Instant::now();
    let writer = tokio::spawn({
        let session = client.session();
        let keys = keys.clone();
        async move {
            for round in 0..30 {
                for k in &keys {
                    let _ = session.put(k, &round).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let mut seen = String::new();
    let shown = wait_until(Duration::from_secs(3), || {
        let (code, out, _) = cli(&c, &["status"]);
        seen = out.clone();
        let row = out.lines().find(|l| l.starts_with(&worker)).map(str::to_owned);
        async move { code == 0 && row.is_some_and(|r| r.split_whitespace().nth(3) == Some("behind")) }
    })
    .await;
    let took = frozen_at.elapsed();
    c.nodes[w].signal(libc::SIGCONT);
    assert!(shown, "within 3 s of the freeze, status did not show {worker} as behind:\n{seen}");
    println!("frozen worker shown as behind after {took:?}:\n{seen}");
    writer.abort();
    let caught_up = wait_until(Duration::from_secs(15), || {
        let (_, out, _) = cli(&c, &["status"]);
        let row = out.lines().find(|l| l.starts_with(&worker)).map(str::to_owned);
        async move { row.is_some_and(|r| r.split_whitespace().nth(3) == Some("ok")) }
    })
    .await;
    assert!(caught_up, "the worker did not show ok again after SIGCONT");
}

// The CLI's exit codes and its session file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_keeps_a_session_and_answers_with_exit_codes() {
    let c = Cluster::start(2, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session.json");
    let file = file.to_str().unwrap();
    assert_eq!(cli(&c, &["put", "--session", file, "a", r#"{"n": 1}"#]).0, 0);
    let (code, out, _) = cli(&c, &["get", "--session", file, "a"]);
    assert_eq!((code, out.trim()), (0, r#"{"n": 1}"#), "the value as written");
    let ctx: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).expect("the session file is JSON");
    assert!(ctx["clock"].as_object().is_some_and(|c| !c.is_empty()), "the session file holds the context: {ctx}");
    assert_eq!(cli(&c, &["put", "--string", "b", "plain text"]).0, 0);
    assert_eq!(cli(&c, &["get", "b"]).1.trim(), r#""plain text""#);
    assert_eq!(cli(&c, &["get", "missing"]).0, 1, "not found");
    assert_eq!(cli(&c, &["delete", "missing"]).0, 1, "not found");
    assert_eq!(cli(&c, &["put", "b", "not json"]).0, 2, "a value that is not JSON is a usage error");
    assert_eq!(cli(&c, &["get"]).0, 2, "a missing key argument is a usage error");
    assert_eq!(cli(&c, &["put", &"k".repeat(51), "1"]).0, 2, "a key the node refuses");
    let (code, _, err) = cli(&c, &["get", "a", "--nodes", "127.0.0.1:1", "--retry-for", "0.3"]);
    assert_eq!(code, 3, "no node answers: {err}");
    std::fs::write(file, "{not json").unwrap();
    assert_eq!(cli(&c, &["get", "--session", file, "a"]).0, 2, "a corrupt session file is reported");
    let (code, out, _) = cli(&c, &["get", "--json", "a"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"key": "a", "found": true, "value": {"n": 1}}));
}

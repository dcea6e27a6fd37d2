//! Snapshot reads (`POST /kv-store/read`) and change feeds (`GET
//! /kv-store/watch`) over HTTP against real node processes. Their protocol
//! under faults is checked in the simulator (tests/sim.rs); here: the API,
//! its bounds, and a watcher that resumes from its last context.

mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn read(c: &Cluster, i: usize, body: Value) -> (StatusCode, Value) {
    let resp = c.client.post(c.nodes[i].url("/kv-store/read")).json(&body).send().await.expect("an answer");
    let status = resp.status();
    (status, resp.json().await.expect("JSON"))
}

// A snapshot read at any node answers every key once, in the order asked,
// from the shards that hold them, with a context that covers the session's
// writes (so reading on with it sees them); bad requests get 4xx JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_reads_answer_every_key_from_one_cut() {
    let c = Cluster::start(4, 2).await;
    let mut ctx = json!({});
    for (i, key) in ["order-1", "item-1", "item-2", "item-3", "profile"].iter().enumerate() {
        let a = c.put(i % 4, key, json!({"n": i}), &ctx).await;
        assert!(a.status.is_success(), "{}", a.body);
        ctx = a.ctx();
    }
    let a = c.delete(0, "item-2", &ctx).await;
    ctx = a.ctx();
    for node in 0..4 {
        let (status, body) =
            read(&c, node, json!({"keys": ["order-1", "item-1", "item-2", "item-3", "nope", "order-1"], "causal-context": ctx})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body["values"],
            json!([
                {"key": "order-1", "doesExist": true, "value": {"n": 0}},
                {"key": "item-1", "doesExist": true, "value": {"n": 1}},
                {"key": "item-2", "doesExist": false},
                {"key": "item-3", "doesExist": true, "value": {"n": 3}},
                {"key": "nope", "doesExist": false},
            ]),
            "at node {node}"
        );
        let clock = body["causal-context"]["clock"].as_object().expect("a context with a clock");
        for (origin, seq) in ctx["clock"].as_object().unwrap() {
            assert!(clock.get(origin).and_then(Value::as_u64) >= seq.as_u64(), "the answer's context covers the request's");
        }
    }
    let long = "k".repeat(51);
    let too_many: Vec<String> = (0..1001).map(|i| format!("k{i}")).collect();
    for (body, status, error) in [
        (json!({"keys": []}), 400, "A read names 1 to 1000 keys"),
        (json!({"keys": too_many}), 400, "A read names 1 to 1000 keys"),
        (json!({"keys": [long]}), 400, "Key is too long"),
        (json!({"keys": ["a/b"]}), 400, "Key is invalid"),
        (json!({"keys": [""]}), 400, "Key is missing"),
        (json!({"keys": ["a"], "causal-context": {"clock": {"n": -1}}}), 400, "Invalid causal-context"),
        (json!({"keys": "a"}), 400, "Failed to parse request body"),
        (json!({}), 400, "Failed to parse request body"),
    ] {
        let (got, answer) = read(&c, 1, body.clone()).await;
        assert_eq!((got.as_u16(), answer["error"].as_str()), (status, Some(error)), "{body}");
    }
    let resp = c.client.post(c.nodes[0].url("/kv-store/read")).body("not json").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

/// Server-Sent Events read from a streaming response.
struct Events {
    resp: reqwest::Response,
    buf: String,
}

impl Events {
    async fn open(c: &Cluster, i: usize, query: &str, last_event_id: Option<&str>) -> Events {
        let mut req = c.client.get(c.nodes[i].url(&format!("/kv-store/watch{query}"))).timeout(Duration::from_secs(120));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.expect("the watch answers");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Events { resp, buf: String::new() }
    }

    /// The next event (name, id, data), or None when none came within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<(String, Option<String>, Value)> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut name, mut id, mut data) = (String::new(), None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if name.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some((name, id, serde_json::from_str(&data).expect("event data is JSON")));
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// `n` write events (their data), in the order they came.
    async fn writes(&mut self, n: usize) -> Vec<(Option<String>, Value)> {
        let mut out = Vec::new();
        while out.len() < n {
            let (name, id, data) =
                self.next(Duration::from_secs(20)).await.unwrap_or_else(|| panic!("only {} of {n} events came: {out:?}", out.len()));
            assert_eq!(name, "write", "{data}");
            out.push((id, data));
        }
        out
    }
}

// A watcher gets every write to its prefix (none of the others) in the
// order the session made them, each with the context to resume from;
// resuming from the last one — by `from` or by `Last-Event-ID`, at another
// node — sends what came since, and nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_every_write_in_order_and_resumes_where_it_stopped() {
    let c = Cluster::start(4, 2).await;
    let mut events = Events::open(&c, 0, "?prefix=w-", None).await;
    let mut ctx = json!({});
    for i in 0..12 {
        let key = if i % 4 == 3 { format!("other-{i}") } else { format!("w-{i}") };
        let a = c.put(i % 4, &key, json!(i), &ctx).await;
        assert!(a.status.is_success(), "{}", a.body);
        ctx = a.ctx();
    }
    let a = c.delete(1, "w-0", &ctx).await;
    ctx = a.ctx();
    let got = events.writes(10).await;
    let keys: Vec<&str> = got.iter().map(|(_, d)| d["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["w-0", "w-1", "w-2", "w-4", "w-5", "w-6", "w-8", "w-9", "w-10", "w-0"], "in session order, prefix only");
    assert_eq!(got[1].1["value"], json!(1));
    assert_eq!(got[9].1["deleted"], json!(true), "the delete comes as an event");
    assert!(got[9].1.get("value").is_none());
    assert!(got.iter().all(|(_, d)| d["dot"]["origin"].is_string() && d["deps"].is_object()));
    let (last_id, last) = got.last().cloned().unwrap();
    let resume = last["causal-context"].clone();
    assert_eq!(serde_json::from_str::<Value>(last_id.as_deref().unwrap()).unwrap(), resume, "the event id is the resume context");
    drop(events);

    for i in 12..17 {
        let a = c.put(i % 4, &format!("w-{i}"), json!(i), &ctx).await;
        ctx = a.ctx();
    }
    let from = percent_encoding::utf8_percent_encode(&resume.to_string(), percent_encoding::NON_ALPHANUMERIC).to_string();
    let mut resumed = Events::open(&c, 3, &format!("?prefix=w-&from={from}"), None).await;
    let again: Vec<String> = resumed.writes(5).await.iter().map(|(_, d)| d["key"].as_str().unwrap().to_owned()).collect();
    assert_eq!(again, ["w-12", "w-13", "w-14", "w-15", "w-16"], "what came since, once");
    assert!(resumed.next(Duration::from_millis(700)).await.is_none(), "nothing more, nothing twice");
    drop(resumed);
    // The browser's way: Last-Event-ID.
    let mut by_header = Events::open(&c, 2, "?prefix=w-", Some(last_id.as_deref().unwrap())).await;
    assert_eq!(by_header.writes(5).await[0].1["key"], "w-12");

    // From now on (no context): only later writes.
    let mut fresh = Events::open(&c, 1, "?prefix=w-", None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = c.put(0, "w-new", json!("new"), &ctx).await;
    assert!(a.status.is_success());
    assert_eq!(fresh.writes(1).await[0].1["key"], "w-new");
}

// Bad watch requests are refused with a JSON 4xx before any stream starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_watch_requests_get_a_4xx() {
    let c = Cluster::start(1, 1).await;
    for query in ["?from=%7Bnot", "?from=%7B%22clock%22%3A%7B%22n%22%3A-1%7D%7D", &format!("?prefix={}", "p".repeat(51))] {
        let a = common::send(c.client.get(c.nodes[0].url(&format!("/kv-store/watch{query}")))).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{query}: {}", a.body);
        assert!(a.body["error"].is_string());
    }
}

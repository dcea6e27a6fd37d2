//! The routes of the replaced stores (docs/API.md "Routes of the replaced
//! stores"): the README's curl lines as written, form and JSON bodies on
//! keys of both shards, the `X-Causal-Context` header across nodes (and
//! honoured under a partition), and every bad input a 4xx JSON error.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

const CONTEXT: &str = "x-causal-context";
const FORM: &str = "application/x-www-form-urlencoded";

/// An answer of a legacy route: status, body, the context header (every
/// answer has one, a JSON object: checked here) and the headers tests look at.
#[derive(Debug)]
struct Legacy {
    status: u16,
    body: Value,
    text: String,
    context: Value,
    allow: Option<String>,
    retry_after: Option<String>,
    served_by: Option<String>,
}

async fn call(req: reqwest::RequestBuilder) -> Legacy {
    let resp = req.send().await.expect("the node answered (no dropped connection)");
    let status = resp.status().as_u16();
    let header = |name: &str| resp.headers().get(name).map(|v| v.to_str().expect("an ASCII header").to_owned());
    let (allow, retry_after, served_by) = (header("allow"), header("retry-after"), header("x-causalkv-served-by"));
    let context_text = header(CONTEXT).unwrap_or_else(|| panic!("no {CONTEXT} header on a {status} answer"));
    let context: Value = serde_json::from_str(&context_text).unwrap_or_else(|e| panic!("{CONTEXT} is not JSON ({e}): {context_text}"));
    assert!(context.is_object(), "{CONTEXT} is not an object: {context_text}");
    let text = resp.text().await.expect("a body");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON answer ({status}): {text}"));
    assert!(body.is_object(), "answer is not an object: {text}");
    Legacy { status, body, text, context, allow, retry_after, served_by }
}

/// `POST path` on node `i` with a body of the given content type (none: no header).
fn post(c: &Cluster, i: usize, path: &str, content_type: Option<&str>, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
    let req = c.client.post(c.nodes[i].url(path)).body(body);
    match content_type {
        Some(ct) => req.header(CONTENT_TYPE, ct),
        None => req,
    }
}

fn with_context(req: reqwest::RequestBuilder, ctx: Option<&Value>) -> reqwest::RequestBuilder {
    match ctx {
        Some(ctx) => req.header(CONTEXT, ctx.to_string()),
        None => req,
    }
}

async fn set_json(c: &Cluster, i: usize, body: Value, ctx: Option<&Value>) -> Legacy {
    call(with_context(post(c, i, "/set", Some("application/json"), body.to_string()), ctx)).await
}

async fn set_form(c: &Cluster, i: usize, key: &str, value: &str, ctx: Option<&Value>) -> Legacy {
    let body = format!("key={}&value={}", encode(key), encode(value));
    call(with_context(post(c, i, "/set", Some(FORM), body), ctx)).await
}

async fn get(c: &Cluster, i: usize, key: &str, ctx: Option<&Value>) -> Legacy {
    call(with_context(c.client.get(c.nodes[i].url(&format!("/get?key={}", encode(key)))), ctx)).await
}

fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A 4xx/5xx with the main API's error body named by the route.
#[track_caller]
fn expect_error(a: &Legacy, status: u16, route: &str, error: &str) {
    assert_eq!(a.status, status, "status of {}", a.text);
    assert_eq!(a.body["error"], json!(error), "error of {}", a.text);
    assert_eq!(a.body["message"], json!(format!("Error in {route}")), "message of {}", a.text);
}

#[track_caller]
fn expect_ok(a: &Legacy, body: Value) {
    assert_eq!((a.status, &a.body), (200, &body), "{}", a.text);
}

/// The only clock entry of a context: the node that took a write sent
/// without a context.
#[track_caller]
fn only_origin(ctx: &Value) -> (String, u64) {
    let clock = ctx["clock"].as_object().unwrap_or_else(|| panic!("no clock in {ctx}"));
    assert_eq!(clock.len(), 1, "one write, one origin: {ctx}");
    let (origin, seq) = clock.iter().next().unwrap();
    (origin.clone(), seq.as_u64().expect("a counter"))
}

/// The README's curl lines (after "### Clients of the replaced stores"):
/// each command and the answer its comment shows.
fn readme_lines() -> Vec<(String, Value)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let at = readme.find("### Clients of the replaced stores").expect("the README has the section");
    let rest = &readme[at..];
    let open = rest.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let close = rest[open..].find("```").expect("block end");
    rest[open..open + close]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (cmd, shown) = line.split_once(" # ").unwrap_or_else(|| panic!("no answer shown for {line}"));
            (cmd.trim().to_owned(), serde_json::from_str(shown.trim()).unwrap_or_else(|_| panic!("not JSON: {shown}")))
        })
        .collect()
}

/// Runs a README command with bash against `addr` (for 127.0.0.1:13800),
/// adding only curl options that report the status and the headers.
fn run_curl(cmd: &str, addr: &str) -> (u16, Value, Value) {
    let headers = tempfile::NamedTempFile::new().expect("temp file");
    let cmd = cmd.replace("127.0.0.1:13800", addr);
    let full = format!("{cmd} -sS -D {} -w '\\n%{{http_code}}'", headers.path().display());
    let out = Command::new("bash").arg("-c").arg(&full).output().expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = stdout.rsplit_once('\n').unwrap_or_else(|| panic!("{full}: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    let body: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{cmd} answered non-JSON: {body}"));
    let head = std::fs::read_to_string(headers.path()).expect("headers");
    let context = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(name, _)| name.eq_ignore_ascii_case(CONTEXT)).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("{cmd}: no {CONTEXT} header in {head}"));
    (status.trim().parse().expect("a status"), body, serde_json::from_str(&context).expect("a JSON context"))
}

// The README's three curl lines as written (set, get at both nodes, delete,
// get is 404); form and JSON sets on keys of both shards, read at the other
// node; a form value three times its size in escapes; 503 when the owner is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_lines_and_keys_of_both_shards() {
    assert!(Command::new("curl").arg("--version").output().is_ok(), "curl is needed to run the README lines");
    let mut c = Cluster::start(2, 1).await;
    let (a0, a1) = (c.addr(0).to_string(), c.addr(1).to_string());

    let lines = readme_lines();
    assert_eq!(lines.len(), 3, "set, get, delete: {lines:?}");
    let (set_line, get_line, delete_line) = (&lines[0], &lines[1], &lines[2]);
    assert!(set_line.0.contains("/set") && get_line.0.contains("/get") && delete_line.0.contains("/delete"), "{lines:?}");

    let (status, body, ctx) = run_curl(&set_line.0, &a0);
    assert_eq!((status, &body), (200, &set_line.1), "{}", set_line.0);
    let (owner, seq) = only_origin(&ctx);
    assert!(owner == a0 || owner == a1, "the context names a node: {ctx}");
    assert_eq!(seq, 1, "the first write of its owner: {ctx}");
    for addr in [&a0, &a1] {
        let (status, body, got_ctx) = run_curl(&get_line.0, addr);
        assert_eq!((status, &body), (200, &get_line.1), "{} at {addr}", get_line.0);
        assert_eq!(got_ctx, ctx, "a read reveals the write it returns");
    }
    let (status, body, ctx) = run_curl(&delete_line.0, &a0);
    assert_eq!((status, &body), (200, &delete_line.1), "{}", delete_line.0);
    assert_eq!(only_origin(&ctx), (owner.clone(), 2), "the delete is the owner's next write");
    for addr in [&a0, &a1] {
        let (status, body, _) = run_curl(&get_line.0, addr);
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"], json!("Key does not exist"), "{body}");
    }

    // Form sets at node 0 on keys of both shards, each read at node 1.
    let mut owners = Vec::new();
    for i in 0..16 {
        let key = format!("both {i} é?&=+|");
        let a = set_form(&c, 0, &key, &format!("v {i} & +"), None).await;
        expect_ok(&a, json!({"key": key, "result": "created"}));
        let (origin, _) = only_origin(&a.context);
        let got = get(&c, 1, &key, None).await;
        expect_ok(&got, json!({"key": key, "value": format!("v {i} & +")}));
        assert_eq!(got.served_by.as_deref(), Some(origin.as_str()), "the key's owner served the read at node 1");
        owners.push((key, origin));
    }
    let of = |addr: &str| owners.iter().find(|(_, o)| o == addr).map(|(k, _)| k.clone());
    let (local, remote) = (of(&a0).expect("a key of node 0's shard"), of(&a1).expect("a key of node 1's shard"));

    // JSON sets (replacing), JSON deletes by action and by /delete, on both shards.
    for key in [&local, &remote] {
        let body = format!(r#"{{"key": {}, "value": {{"n": [1, 2.50]}}, "action": "set"}}"#, json!(key));
        let a = call(post(&c, 0, "/set", Some("application/json"), body)).await;
        expect_ok(&a, json!({"key": key, "result": "replaced"}));
        let got = get(&c, 1, key, Some(&a.context)).await;
        assert!(got.text.contains(r#""value":{"n": [1, 2.50]}"#), "the value as sent: {}", got.text);
        let a = set_json(&c, 0, json!({"key": key, "action": "delete"}), Some(&got.context)).await;
        expect_ok(&a, json!({"key": key, "result": "deleted"}));
        expect_error(&get(&c, 1, key, Some(&a.context)).await, 404, "GET", "Key does not exist");
        let again = set_json(&c, 1, json!({"key": key, "value": 7, "action": "delete"}), None).await;
        expect_error(&again, 404, "SET", "Key does not exist");
        let a = set_json(&c, 1, json!({"key": key, "value": 7}), None).await;
        expect_ok(&a, json!({"key": key, "result": "created"}));
        let del = call(post(&c, 0, "/delete", Some("application/json"), json!({"key": key}).to_string())).await;
        expect_ok(&del, json!({"key": key, "result": "deleted"}));
        let del = call(post(&c, 1, "/delete", None, format!("key={}", encode(key)))).await;
        expect_error(&del, 404, "DELETE", "Key does not exist");
    }

    // A form value within MAX_VALUE_BYTES (1 MiB) as JSON text, whose escapes
    // make the body three times as long.
    let big = "é".repeat(400_000);
    let a = call(post(&c, 0, "/set", Some(FORM), format!("key=big&value={}", encode(&big)))).await;
    expect_ok(&a, json!({"key": "big", "result": "created"}));
    let got = get(&c, 1, "big", None).await;
    assert_eq!(got.body["value"].as_str().map(|v| v.chars().count()), Some(400_000), "the value comes back whole");

    // The owner of node 1's shard goes down: 503 with Retry-After, promptly.
    c.nodes[1].kill();
    let started = Instant::now();
    for a in [set_form(&c, 0, &remote, "x", None).await, get(&c, 0, &remote, None).await] {
        assert_eq!(a.status, 503, "{}", a.text);
        assert_eq!(a.body["error"], json!("Unable to satisfy request"), "{}", a.text);
        assert!(a.retry_after.as_deref().is_some_and(|v| !v.is_empty()), "503 without Retry-After: {a:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(5), "the 503s took {:?}", started.elapsed());
    // Node 0's shard still works.
    expect_ok(&set_form(&c, 0, &local, "still", None).await, json!({"key": local, "result": "created"}));
}

// A set returns a context naming the write, and a read at the other replica
// honours it: with the replicas partitioned, the read without the header gets
// the old value, with it a 503 (never the old value); once healed, the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_header_round_trips_and_is_honoured() {
    let c = Cluster::start_with(2, 2, &[("CAUSALKV_FAULTS", "1"), ("CAUSAL_WAIT_MS", "300")]).await;
    let (a0, a1) = (c.addr(0).to_string(), c.addr(1).to_string());

    // No header in, the empty context out.
    let missing = get(&c, 1, "nothing", None).await;
    expect_error(&missing, 404, "GET", "Key does not exist");
    assert_eq!(missing.context, json!({}));

    // Node 0 is the shard's master: it takes the write and names it.
    let a = set_form(&c, 0, "ck", "old", None).await;
    expect_ok(&a, json!({"key": "ck", "result": "created"}));
    let (origin, seq) = only_origin(&a.context);
    assert_eq!((origin.as_str(), seq), (a0.as_str(), 1), "{}", a.context);
    let got = get(&c, 1, "ck", Some(&a.context)).await;
    expect_ok(&got, json!({"key": "ck", "value": "old"}));
    assert_eq!(got.context, a.context);

    c.set_faults(0, json!({"blocked": [a1]})).await;
    c.set_faults(1, json!({"blocked": [a0]})).await;
    let new = set_json(&c, 0, json!({"key": "ck", "value": "new"}), Some(&got.context)).await;
    expect_ok(&new, json!({"key": "ck", "result": "replaced"}));
    assert_eq!(only_origin(&new.context), (a0.clone(), 2), "{}", new.context);

    expect_ok(&get(&c, 1, "ck", None).await, json!({"key": "ck", "value": "old"}));
    let held = get(&c, 1, "ck", Some(&new.context)).await;
    expect_error(&held, 503, "GET", "Unable to satisfy request");
    assert!(held.retry_after.is_some(), "503 without Retry-After: {held:?}");
    assert_eq!(held.context, new.context, "the error carries the context back");

    c.set_faults(0, json!({})).await;
    c.set_faults(1, json!({})).await;
    let healed =
        wait_until(Duration::from_secs(10), || async { get(&c, 1, "ck", Some(&new.context)).await.body["value"] == json!("new") }).await;
    assert!(healed, "node 1 never served the write its context names");
}

// Every bad input gets its 4xx and a JSON error (with the context header),
// stores nothing, and is counted; wrong methods get 405 with Allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_a_4xx_json_error() {
    let c = Cluster::start_with(1, 1, &[("MAX_VALUE_BYTES", "1000")]).await;
    let too_long = "x".repeat(51);
    let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));

    let forms: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"value=v".to_vec(), 400, "Key is missing"),
        (b"key=&value=v".to_vec(), 400, "Key is missing"),
        (b"".to_vec(), 400, "Key is missing"),
        (b"key=a%2Fb&value=v".to_vec(), 400, "Key is invalid"),
        (b"key=a/b&value=v".to_vec(), 400, "Key is invalid"),
        (b"key=a%zz&value=v".to_vec(), 400, "Key is invalid"),
        (b"key=%ff&value=v".to_vec(), 400, "Key is invalid"),
        (b"key=a%00&value=v".to_vec(), 400, "Key is invalid"),
        (format!("key={too_long}&value=v").into_bytes(), 400, "Key is too long"),
        (b"key=k".to_vec(), 400, "Value is missing"),
        (b"key=k&value=".to_vec(), 400, "Value is missing"),
        (format!("key=k&value={}", "x".repeat(1001)).into_bytes(), 413, "Value is too large"),
        (format!("key=k&value={}", "x".repeat(5 << 20)).into_bytes(), 413, "Value is too large"),
        (b"key=a&key=b&value=v".to_vec(), 400, r#"Field "key" is given more than once"#),
        (b"key=k&value=v&value=w".to_vec(), 400, r#"Field "value" is given more than once"#),
        (b"key=k&value=v&extra=1".to_vec(), 400, r#"Unknown field "extra" (the fields are key, value, action)"#),
        (b"key=k&value=v&action=frobnicate".to_vec(), 400, r#"Unknown action (use "set" or "delete")"#),
        (b"key=k&value=\xff\xfe".to_vec(), 400, "Failed to parse request body"),
        (b"key=k&value=%zz".to_vec(), 400, "Failed to parse request body"),
    ];
    let jsons: Vec<(String, u16, &str)> = vec![
        (r#"{"key": "k", "value": 1, "extra": 2}"#.into(), 400, r#"Unknown field "extra" (the fields are key, value, action)"#),
        (
            r#"{"key": "k", "value": 1, "causal-context": {}}"#.into(),
            400,
            r#"Unknown field "causal-context" (the fields are key, value, action)"#,
        ),
        (r#"{"key": "k", "value": nope}"#.into(), 400, "Failed to parse request body"),
        (r#"{"key": "k", "value": 1"#.into(), 400, "Failed to parse request body"),
        (r#"{"key": "k", "value": 1} {}"#.into(), 400, "Failed to parse request body"),
        ("[1]".into(), 400, "Failed to parse request body"),
        (r#"{"key": "k", "key": "l", "value": 1}"#.into(), 400, r#"Field "key" is given more than once"#),
        (r#"{"key": "k", "value": null}"#.into(), 400, "Value is missing"),
        (r#"{"key": "k", "value": ""}"#.into(), 400, "Value is missing"),
        (format!(r#"{{"key": "k", "value": {deep}}}"#), 400, "Value is nested more than 64 levels deep"),
        (r#"{"key": 5, "value": 1}"#.into(), 400, "Key is invalid"),
        (r#"{"key": "a/b", "value": 1}"#.into(), 400, "Key is invalid"),
        (r#"{"key": null, "value": 1}"#.into(), 400, "Key is missing"),
        (r#"{"value": 1}"#.into(), 400, "Key is missing"),
        (r#"{"key": "k", "value": 1, "action": "drop"}"#.into(), 400, r#"Unknown action (use "set" or "delete")"#),
        (format!(r#"{{"key": "k", "value": "{}"}}"#, "x".repeat(999)), 413, "Value is too large"),
    ];
    let counted_before = c.metric(0, r#"causalkv_requests_total{op="put",status="400"}"#).await;
    let mut bad_sets = 0;
    for (body, status, error) in &forms {
        let a = call(post(&c, 0, "/set", Some(FORM), body.clone())).await;
        expect_error(&a, *status, "SET", error);
        assert_eq!(a.context, json!({}), "{}", String::from_utf8_lossy(&body[..body.len().min(80)]));
        bad_sets += (*status == 400) as u64;
    }
    for (body, status, error) in &jsons {
        for content_type in [Some("application/json"), None] {
            let a = call(post(&c, 0, "/set", content_type, body.clone())).await;
            expect_error(&a, *status, "SET", error);
            bad_sets += (*status == 400) as u64;
        }
    }
    let counted = c.metric(0, r#"causalkv_requests_total{op="put",status="400"}"#).await - counted_before;
    assert_eq!(counted, bad_sets, "refused sets are counted as key requests");

    // A set by action delete is refused as a delete.
    let a = set_json(&c, 0, json!({"key": "a/b", "action": "delete"}), None).await;
    expect_error(&a, 400, "SET", "Key is invalid");
    let a = call(post(&c, 0, "/set", Some("text/plain"), "key=k&value=v")).await;
    expect_error(&a, 415, "SET", "Content-Type must be application/x-www-form-urlencoded or application/json");

    for (body, status, error) in [
        ("key=k&value=v", 400, r#"Unknown field "value" (the fields are key)"#),
        (r#"{"key": "k", "action": "delete"}"#, 400, r#"Unknown field "action" (the fields are key)"#),
        ("", 400, "Key is missing"),
        ("key=a%2F", 400, "Key is invalid"),
        ("key=nope", 404, "Key does not exist"),
    ] {
        expect_error(&call(post(&c, 0, "/delete", None, body)).await, status, "DELETE", error);
    }
    for (query, status, error) in [
        ("", 400, "Key is missing"),
        ("?key=", 400, "Key is missing"),
        ("?key=a&key=b", 400, r#"Field "key" is given more than once"#),
        ("?key=a&foo=1", 400, r#"Unknown field "foo" (the fields are key)"#),
        ("?key=%ff", 400, "Key is invalid"),
        ("?key=a%2Fb", 400, "Key is invalid"),
        (&format!("?key={too_long}"), 400, "Key is too long"),
        ("?key=nope", 404, "Key does not exist"),
    ] {
        expect_error(&call(c.client.get(c.nodes[0].url(&format!("/get{query}")))).await, status, "GET", error);
    }

    // Malformed, non-ASCII or repeated context headers: 400, the empty context back.
    let ctx = |v: &[u8]| reqwest::header::HeaderValue::from_bytes(v).unwrap();
    for values in [
        vec![ctx(b"nope")],
        vec![ctx(br#"{"clock": {"a": -1}, "epoch": 0}"#)],
        vec![ctx(b"[1]")],
        vec![ctx(b"{\"clock\": {\"\xc3\xa9\": 1}}")],
        vec![ctx(b"{}"), ctx(b"{}")],
    ] {
        let mut req = c.client.get(c.nodes[0].url("/get?key=k"));
        for v in &values {
            req = req.header(CONTEXT, v.clone());
        }
        let a = call(req).await;
        expect_error(&a, 400, "GET", "Invalid causal-context");
        assert_eq!(a.context, json!({}));
    }

    // Wrong methods.
    for (method, path, allow) in
        [(reqwest::Method::GET, "/set", "POST"), (reqwest::Method::PUT, "/delete", "POST"), (reqwest::Method::POST, "/get", "GET, HEAD")]
    {
        let a = call(c.client.request(method.clone(), c.nodes[0].url(path))).await;
        assert_eq!(a.status, 405, "{method} {path}: {}", a.text);
        assert_eq!(a.body["error"], json!("Method not allowed"), "{}", a.text);
        assert_eq!(a.allow.as_deref(), Some(allow), "{method} {path}");
    }

    // Nothing above was stored; a good request still works.
    let count = c.get_json(0, "/kv-store/key-count").await;
    assert_eq!(count.body["key-count"], json!(0), "{}", count.body);
    expect_ok(&set_form(&c, 0, "k", "v", None).await, json!({"key": "k", "result": "created"}));
    let head = c.client.head(c.nodes[0].url("/get?key=k")).send().await.expect("an answer");
    assert_eq!(head.status(), 200);
    assert!(head.headers().get(CONTEXT).is_some_and(|v| v.to_str().is_ok_and(|v| v.contains("clock"))), "{head:?}");
}

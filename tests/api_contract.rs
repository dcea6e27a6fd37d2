//! The HTTP contract of /work/shared/API.md, row by row, against real node
//! processes: a single node for most rows, a 2-node cluster for the answers
//! of forwarded requests, and the bare binary for start-up configuration.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

/// A raw answer: status, headers we look at, and the body text as sent.
struct RawAnswer {
    status: StatusCode,
    text: String,
    content_type: Option<String>,
}

/// Sends a request and keeps the body text (for byte-exact checks).
async fn send_text(req: reqwest::RequestBuilder) -> RawAnswer {
    let resp = req.send().await.expect("the node answered (no dropped connection)");
    let status = resp.status();
    let content_type = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(String::from);
    let text = resp.text().await.expect("a body");
    RawAnswer { status, text, content_type }
}

/// A PUT with a raw body text (or bytes) on node `i`.
fn put_raw(c: &Cluster, i: usize, path: &str, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
    c.client.put(c.nodes[i].url(path)).header(CONTENT_TYPE, "application/json").body(body)
}

/// A request of any method with a raw body on node `i`.
fn req_raw(c: &Cluster, i: usize, method: reqwest::Method, path: &str, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
    c.client.request(method, c.nodes[i].url(path)).header(CONTENT_TYPE, "application/json").body(body)
}

/// Asserts the status and that the body is exactly `expected` plus a
/// `causal-context` object (so no `address`, no stray fields).
#[track_caller]
fn expect(a: &Answer, status: u16, expected: Value) {
    assert_eq!(a.status.as_u16(), status, "status of answer {}", a.body);
    let mut body = a.body.as_object().expect("an object").clone();
    let ctx = body.remove("causal-context").unwrap_or_else(|| panic!("no causal-context in {}", a.body));
    assert!(ctx.is_object(), "causal-context is not an object in {}", a.body);
    assert_eq!(Value::Object(body), expected, "body of answer (status {status})");
}

/// Like [`expect`] for an answer served by another node: `address` names it.
#[track_caller]
fn expect_forwarded(a: &Answer, status: u16, mut expected: Value, served_by: &str) {
    expected["address"] = json!(served_by);
    expect(a, status, expected);
}

fn error(method: &str, reason: &str) -> Value {
    json!({"message": format!("Error in {method}"), "error": reason})
}

fn not_found(method: &str) -> Value {
    json!({"message": format!("Error in {method}"), "error": "Key does not exist", "doesExist": false})
}

fn added() -> Value {
    json!({"message": "Added successfully", "replaced": false})
}

fn updated() -> Value {
    json!({"message": "Updated successfully", "replaced": true})
}

fn retrieved(value: Value) -> Value {
    json!({"message": "Retrieved successfully", "value": value, "doesExist": true})
}

fn deleted() -> Value {
    json!({"message": "Deleted successfully", "doesExist": true})
}

/// A 503 "Unable to satisfy request" with a Retry-After header.
#[track_caller]
fn expect_unavailable(a: &Answer, method: &str) {
    expect(a, 503, error(method, "Unable to satisfy request"));
    assert!(a.retry_after.as_deref().is_some_and(|v| !v.trim().is_empty()), "503 without Retry-After: {a:?}");
}

fn query_ctx(path: &str, ctx: &str) -> String {
    format!("{path}?causal-context={}", utf8_percent_encode(ctx, NON_ALPHANUMERIC))
}

// PUT new/again/after delete, GET found/missing, DELETE existing/again: statuses and exact bodies, no `address`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_lifecycle() {
    let c = Cluster::start(1, 1).await;
    let empty = json!({});

    expect(&c.get(0, "k", &empty).await, 404, not_found("GET"));
    expect(&c.delete(0, "k", &empty).await, 404, not_found("DELETE"));

    let a = c.put(0, "k", json!("v1"), &empty).await;
    expect(&a, 201, added());
    let ctx = a.ctx();
    assert!(ctx.as_object().is_some_and(|o| !o.is_empty()), "a write returns a non-empty context: {ctx}");

    let a = c.get(0, "k", &ctx).await;
    expect(&a, 200, retrieved(json!("v1")));
    let a = c.put(0, "k", json!("v2"), &a.ctx()).await;
    expect(&a, 200, updated());
    let a = c.get(0, "k", &a.ctx()).await;
    expect(&a, 200, retrieved(json!("v2")));

    let a = c.delete(0, "k", &a.ctx()).await;
    expect(&a, 200, deleted());
    let ctx = a.ctx();
    expect(&c.delete(0, "k", &ctx).await, 404, not_found("DELETE"));
    expect(&c.get(0, "k", &ctx).await, 404, not_found("GET"));
    expect(&c.get(0, "k", &empty).await, 404, not_found("GET"));

    let a = c.put(0, "k", json!("v3"), &ctx).await;
    expect(&a, 201, added());
    expect(&c.put(0, "k", json!("v4"), &a.ctx()).await, 200, updated());
    expect(&c.get(0, "k", &empty).await, 200, retrieved(json!("v4")));

    // A value of another type replaces the old one.
    expect(&c.put(0, "k", json!({"n": 5}), &empty).await, 200, updated());
    expect(&c.get(0, "k", &empty).await, 200, retrieved(json!({"n": 5})));
    // Other keys are untouched.
    expect(&c.get(0, "k2", &empty).await, 404, not_found("GET"));
}

// Every JSON value type (except null and "") is stored and returned as given; numbers textually identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_types_round_trip() {
    let c = Cluster::start(1, 1).await;
    let values = [
        r#""hello""#,
        r#""héllo wörld ✓ 日本語 🦀""#,
        r#""tab\tnew\nline \"quoted\" back\\slash nul\u0000 \u00e9 \ud83e\udd80""#,
        r#"" ""#,
        r#""null""#,
        r#""0""#,
        "0",
        "-17",
        "1.0",
        "-0.5",
        "1e10",
        "2.5E-3",
        "123456789012345678901234567890",
        "-123456789012345678901234567890",
        "3.14159265358979323846264338327950288",
        "18446744073709551616",
        "true",
        "false",
        "[]",
        "{}",
        r#"[1,"two",{"three":[3]},null,false]"#,
        r#"{"a":{"b":[1,2,{"c":null}]},"d":"e","f":1.0}"#,
    ];
    for (i, text) in values.iter().enumerate() {
        let key = format!("v{i}");
        let path = key_path(&key);
        let a = send(put_raw(&c, 0, &path, format!(r#"{{"value":{text}}}"#))).await;
        expect(&a, 201, added());

        let raw = send_text(c.client.get(c.nodes[0].url(&path))).await;
        assert_eq!(raw.status, StatusCode::OK, "GET {key} ({text}): {}", raw.text);
        let body: Value = serde_json::from_str(&raw.text).unwrap_or_else(|e| panic!("GET {key}: not JSON ({e}): {}", raw.text));
        let sent: Value = serde_json::from_str(text).expect("test value is JSON");
        assert_eq!(body["value"], sent, "value {text} came back as {}", raw.text);
        assert_eq!(body["doesExist"], json!(true), "{}", raw.text);
        assert!(body.get("causal-context").is_some_and(Value::is_object), "{}", raw.text);
        let is_number = text.starts_with(|ch: char| ch == '-' || ch.is_ascii_digit());
        let is_compound = text.starts_with('[') || text.starts_with('{');
        if is_number || is_compound {
            // Numbers (also inside arrays/objects) must keep their exact text.
            assert!(raw.text.contains(&format!(r#""value":{text}"#)), "value {text} not returned textually: {}", raw.text);
        }
    }
}

// Key rules: length in characters (50 ok, 51 too long on PUT/GET/DELETE), any UTF-8 but '/', empty key, body `key` ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rules() {
    let c = Cluster::start(1, 1).await;
    let empty = json!({});

    for unit in ["a", "é", "日", "🦀"] {
        let ok = unit.repeat(50);
        let long = unit.repeat(51);
        expect(&c.put(0, &ok, json!(unit), &empty).await, 201, added());
        expect(&c.get(0, &ok, &empty).await, 200, retrieved(json!(unit)));
        expect(&c.put(0, &long, json!(1), &empty).await, 400, error("PUT", "Key is too long"));
        expect(&c.get(0, &long, &empty).await, 400, error("GET", "Key is too long"));
        expect(&c.delete(0, &long, &empty).await, 400, error("DELETE", "Key is too long"));
        expect(&c.delete(0, &ok, &empty).await, 200, deleted());
    }

    // Spaces, unicode, URL-special characters (percent-encoded in the path).
    let special = ["with space", "ünïcödé ключ", "a?b", "a#b", "a?b=c&d", "100%", "%2F", "+plus+", "semi;colon", ".dot", "~tilde"];
    for (i, key) in special.iter().enumerate() {
        expect(&c.put(0, key, json!(i), &empty).await, 201, added());
    }
    for (i, key) in special.iter().enumerate() {
        expect(&c.get(0, key, &empty).await, 200, retrieved(json!(i)));
    }
    // "a?b" and "a#b" are keys of their own, not "a" with a query or fragment.
    expect(&c.get(0, "a", &empty).await, 404, not_found("GET"));

    // A '/' in the key, encoded or not.
    for path in ["/kv-store/keys/a%2Fb", "/kv-store/keys/%2F", "/kv-store/keys/a/b"] {
        let a = send(put_raw(&c, 0, path, r#"{"value": 1}"#)).await;
        expect(&a, 400, error("PUT", "Key is invalid"));
        let a = send(c.client.get(c.nodes[0].url(path))).await;
        expect(&a, 400, error("GET", "Key is invalid"));
        let a = send(c.client.delete(c.nodes[0].url(path))).await;
        expect(&a, 400, error("DELETE", "Key is invalid"));
    }
    // A path segment that is not UTF-8 once decoded.
    let a = send(put_raw(&c, 0, "/kv-store/keys/%FF%FE", r#"{"value": 1}"#)).await;
    expect(&a, 400, error("PUT", "Key is invalid"));

    // No key at all.
    for path in ["/kv-store/keys/", "/kv-store/keys"] {
        let a = send(put_raw(&c, 0, path, r#"{"value": 1}"#)).await;
        expect(&a, 400, error("PUT", "Key is missing"));
        expect(&send(c.client.get(c.nodes[0].url(path))).await, 400, error("GET", "Key is missing"));
        expect(&send(c.client.delete(c.nodes[0].url(path))).await, 400, error("DELETE", "Key is missing"));
    }

    // A `key` field in the body is ignored: the key comes from the URL.
    let a = send(put_raw(&c, 0, &key_path("url-key"), r#"{"key": "body-key", "value": "x"}"#)).await;
    expect(&a, 201, added());
    expect(&c.get(0, "url-key", &empty).await, 200, retrieved(json!("x")));
    expect(&c.get(0, "body-key", &empty).await, 404, not_found("GET"));
    let a = send(req_raw(&c, 0, reqwest::Method::DELETE, &key_path("url-key"), r#"{"key": "body-key"}"#)).await;
    expect(&a, 200, deleted());
    expect(&c.get(0, "url-key", &empty).await, 404, not_found("GET"));
}

// Body errors: missing/null/"" value, unparsable or wrongly typed bodies, bad context type; empty bodies on GET/DELETE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_errors() {
    let c = Cluster::start(1, 1).await;
    let path = key_path("b");

    for body in ["", "   \n", "{}", r#"{"value": null}"#, r#"{"value": ""}"#, r#"{"causal-context": {}}"#, r#"{"val": 1}"#] {
        let a = send(put_raw(&c, 0, &path, body)).await;
        expect(&a, 400, error("PUT", "Value is missing"));
    }
    // Without any body or Content-Type.
    expect(&send(c.client.put(c.nodes[0].url(&path))).await, 400, error("PUT", "Value is missing"));

    let garbage: Vec<u8> = (0..2048u32).map(|i| 0x80 | (i.wrapping_mul(37) % 128) as u8).collect();
    assert!(std::str::from_utf8(&garbage).is_err(), "the garbage must not be UTF-8");
    let unparsable: Vec<(&str, reqwest::Body)> = vec![
        ("text", "hello".into()),
        ("trailing comma", r#"{"value": 1,}"#.into()),
        ("truncated", r#"{"value": "abc"#.into()),
        ("single quotes", "{'value': 1}".into()),
        ("JSON string", r#""value""#.into()),
        ("JSON number", "42".into()),
        ("JSON null", "null".into()),
        ("JSON true", "true".into()),
        ("two objects", r#"{"value": 1} {"value": 2}"#.into()),
        ("non-UTF-8 bytes", garbage.clone().into()),
    ];
    for (what, body) in unparsable {
        let a = send(put_raw(&c, 0, &path, body)).await;
        assert_eq!(a.status.as_u16(), 400, "PUT with {what}: {}", a.body);
        expect(&a, 400, error("PUT", "Failed to parse request body"));
    }
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        for body in
            [reqwest::Body::from("not json"), reqwest::Body::from(garbage.clone()), reqwest::Body::from("{\"causal-context\": {},}")]
        {
            let a = send(req_raw(&c, 0, method.clone(), &path, body)).await;
            expect(&a, 400, error(method.as_str(), "Failed to parse request body"));
        }
    }

    // Wrong type of causal-context.
    let a = send(put_raw(&c, 0, &path, r#"{"value": 1, "causal-context": "abc"}"#)).await;
    expect(&a, 400, error("PUT", "Invalid causal-context"));

    // Nothing above was stored.
    expect(&c.get(0, "b", &json!({})).await, 404, not_found("GET"));

    // Empty (or whitespace) bodies on GET and DELETE are fine.
    expect(&c.put(0, "b", json!(7), &json!({})).await, 201, added());
    expect(&send(c.client.get(c.nodes[0].url(&path))).await, 200, retrieved(json!(7)));
    expect(&send(req_raw(&c, 0, reqwest::Method::GET, &path, " \r\n")).await, 200, retrieved(json!(7)));
    expect(&send(req_raw(&c, 0, reqwest::Method::GET, &path, "{}")).await, 200, retrieved(json!(7)));
    expect(&send(c.client.delete(c.nodes[0].url(&path))).await, 200, deleted());
    expect(&send(c.client.get(c.nodes[0].url(&path))).await, 404, not_found("GET"));
    expect(&send(req_raw(&c, 0, reqwest::Method::DELETE, &path, "")).await, 404, not_found("DELETE"));
}

// Size limits: MAX_VALUE_BYTES counts the value's JSON text in bytes (413 beyond), huge bodies get a 413 answer; MAX_KEY_LENGTH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits() {
    let (small, default) =
        tokio::join!(Cluster::start_with(1, 1, &[("MAX_VALUE_BYTES", "1000"), ("MAX_KEY_LENGTH", "5")]), Cluster::start(1, 1));
    let empty = json!({});

    // 990-byte string; exactly 1000 bytes of JSON text (998 chars + quotes); 1001 bytes.
    expect(&small.put(0, "a", json!("x".repeat(990)), &empty).await, 201, added());
    expect(&small.get(0, "a", &empty).await, 200, retrieved(json!("x".repeat(990))));
    expect(&small.put(0, "b", json!("x".repeat(998)), &empty).await, 201, added());
    expect(&small.put(0, "c", json!("x".repeat(999)), &empty).await, 413, error("PUT", "Value is too large"));
    expect(&small.put(0, "c", json!("x".repeat(2000)), &empty).await, 413, error("PUT", "Value is too large"));
    // Bytes, not characters: 499 × "é" is 998 bytes + quotes = 1000; 500 × "é" is 1002.
    expect(&small.put(0, "d", json!("é".repeat(499)), &empty).await, 201, added());
    expect(&small.put(0, "e", json!("é".repeat(500)), &empty).await, 413, error("PUT", "Value is too large"));
    // Non-string values count too.
    let big_array: Vec<u32> = (0..400).collect();
    expect(&small.put(0, "f", json!(big_array), &empty).await, 413, error("PUT", "Value is too large"));
    expect(&small.get(0, "c", &empty).await, 404, not_found("GET"));
    expect(&small.get(0, "e", &empty).await, 404, not_found("GET"));

    // MAX_KEY_LENGTH=5.
    expect(&small.put(0, "abcde", json!(1), &empty).await, 201, added());
    expect(&small.put(0, "abcdef", json!(1), &empty).await, 400, error("PUT", "Key is too long"));
    expect(&small.get(0, "abcdef", &empty).await, 400, error("GET", "Key is too long"));
    expect(&small.delete(0, "abcdef", &empty).await, 400, error("DELETE", "Key is too long"));
    expect(&small.put(0, "ééééé", json!(1), &empty).await, 201, added());
    expect(&small.put(0, "éééééé", json!(1), &empty).await, 400, error("PUT", "Key is too long"));

    // Default limit: 1 MiB of value JSON text.
    let limit = 1024 * 1024;
    expect(&default.put(0, "big", json!("y".repeat(limit - 2)), &empty).await, 201, added());
    let a = default.get(0, "big", &empty).await;
    assert_eq!(a.value().and_then(Value::as_str).map(str::len), Some(limit - 2), "the 1 MiB value comes back whole");
    expect(&default.put(0, "big2", json!("y".repeat(limit - 1)), &empty).await, 413, error("PUT", "Value is too large"));
    // Default key limit is 50 (checked in key_rules) — here: not 5.
    expect(&default.put(0, "abcdef", json!(1), &empty).await, 201, added());
}

// A JSON array body is not a request object: 400 "Failed to parse request body", nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_array_body_is_rejected() {
    let c = Cluster::start(1, 1).await;
    let path = key_path("arr");
    for body in ["[1]", r#"["x", {}]"#, "[]", "[null]"] {
        let a = send(put_raw(&c, 0, &path, body)).await;
        assert_eq!(a.status.as_u16(), 400, "PUT with body {body}: {}", a.body);
        expect(&a, 400, error("PUT", "Failed to parse request body"));
    }
    expect(&c.get(0, "arr", &json!({})).await, 404, not_found("GET"));
    expect(&c.put(0, "arr", json!("v"), &json!({})).await, 201, added());
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        for body in ["[1]", "[{}]", "[]"] {
            let a = send(req_raw(&c, 0, method.clone(), &path, body)).await;
            assert_eq!(a.status.as_u16(), 400, "{method} with body {body}: {}", a.body);
            expect(&a, 400, error(method.as_str(), "Failed to parse request body"));
        }
    }
    expect(&c.get(0, "arr", &json!({})).await, 200, retrieved(json!("v")));
}

// A 5 MB body (far beyond MAX_VALUE_BYTES) gets a JSON 413 answer, not a dropped connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn huge_body_gets_413_answer() {
    let (small, default) = tokio::join!(Cluster::start_with(1, 1, &[("MAX_VALUE_BYTES", "1000")]), Cluster::start(1, 1));
    let huge = format!(r#"{{"value": "{}"}}"#, "x".repeat(5 * 1024 * 1024));
    for c in [&small, &default] {
        let a = send(put_raw(c, 0, &key_path("g"), huge.clone())).await;
        expect(&a, 413, error("PUT", "Value is too large"));
        // The node still works afterwards, and stored nothing.
        expect(&c.get(0, "g", &json!({})).await, 404, not_found("GET"));
    }
}

// Causal contexts: returned contexts accepted back (body and query), malformed forms 400, unsatisfiable ones 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causal_contexts() {
    let c = Cluster::start_with(1, 1, &[("CAUSAL_WAIT_MS", "300")]).await;
    let me = c.addr(0).to_string();

    let a = c.put(0, "k", json!("v"), &json!({})).await;
    expect(&a, 201, added());
    let ctx = a.ctx();
    assert!(ctx.as_object().is_some_and(|o| !o.is_empty()), "PUT returns a context: {ctx}");

    // Back in the body, and as the URL query parameter (no body).
    expect(&c.get(0, "k", &ctx).await, 200, retrieved(json!("v")));
    let path = query_ctx(&key_path("k"), &ctx.to_string());
    let a = send(c.client.get(c.nodes[0].url(&path))).await;
    expect(&a, 200, retrieved(json!("v")));
    let a2 = c.put(0, "k", json!("w"), &a.ctx()).await;
    expect(&a2, 200, updated());
    let path = query_ctx(&key_path("k"), &a2.ctx().to_string());
    expect(&send(c.client.get(c.nodes[0].url(&path))).await, 200, retrieved(json!("w")));
    // Empty forms: null, {}, empty query parameter.
    expect(&c.get(0, "k", &Value::Null).await, 200, retrieved(json!("w")));
    expect(&c.put(0, "k", json!("x"), &Value::Null).await, 200, updated());
    let path = format!("{}?causal-context=", key_path("k"));
    expect(&send(c.client.get(c.nodes[0].url(&path))).await, 200, retrieved(json!("x")));

    let malformed = [
        json!("abc"),
        json!(5),
        json!(true),
        json!([]),
        json!([1, 2]),
        json!({"clock": {me.clone(): -1}}),
        json!({"clock": {me.clone(): 1.5}}),
        json!({"clock": {me.clone(): "1"}}),
        json!({"clock": "x"}),
        json!({"clock": [1]}),
        json!({"epoch": -1, "clock": {}}),
        json!({"epoch": 0.5}),
        json!({"epoch": "0"}),
        json!({"unknown": 1}),
        json!({"epoch": 0, "clock": {}, "extra": true}),
    ];
    for bad in &malformed {
        let a = c.put(0, "k", json!("bad"), bad).await;
        assert_eq!(a.status.as_u16(), 400, "PUT with context {bad}: {}", a.body);
        expect(&a, 400, error("PUT", "Invalid causal-context"));
        expect(&c.get(0, "k", bad).await, 400, error("GET", "Invalid causal-context"));
        expect(&c.delete(0, "k", bad).await, 400, error("DELETE", "Invalid causal-context"));
        let path = query_ctx(&key_path("k"), &bad.to_string());
        let a = send(c.client.get(c.nodes[0].url(&path))).await;
        assert_eq!(a.status.as_u16(), 400, "GET with query context {bad}: {}", a.body);
        expect(&a, 400, error("GET", "Invalid causal-context"));
        let a = send(c.client.get(c.nodes[0].url("/kv-store/key-count")).json(&json!({"causal-context": bad}))).await;
        expect(&a, 400, error("GET", "Invalid causal-context"));
    }
    // A counter beyond u64 (raw JSON text: json! cannot express it).
    let body = format!(r#"{{"value": 1, "causal-context": {{"epoch": 0, "clock": {{"{me}": 123456789012345678901234567890}}}}}}"#);
    expect(&send(put_raw(&c, 0, &key_path("k"), body)).await, 400, error("PUT", "Invalid causal-context"));
    // Query parameter that is not JSON.
    for text in ["not json", "{", "{'epoch': 0}"] {
        let path = query_ctx(&key_path("k"), text);
        expect(&send(c.client.get(c.nodes[0].url(&path))).await, 400, error("GET", "Invalid causal-context"));
    }
    // None of the bad writes or deletes happened.
    expect(&c.get(0, "k", &json!({})).await, 200, retrieved(json!("x")));

    // Contexts this node cannot satisfy (a write it never made; a future view): 503 after a bounded wait.
    let future_seq = json!({"epoch": 0, "clock": {me.clone(): 1_000_000}});
    let future_epoch = json!({"epoch": 7, "clock": {me.clone(): 1}});
    for ctx in [&future_seq, &future_epoch] {
        let started = Instant::now();
        expect_unavailable(&c.get(0, "k", ctx).await, "GET");
        expect_unavailable(&c.put(0, "k", json!("y"), ctx).await, "PUT");
        expect_unavailable(&c.delete(0, "k", ctx).await, "DELETE");
        let path = query_ctx(&key_path("k"), &ctx.to_string());
        expect_unavailable(&send(c.client.get(c.nodes[0].url(&path))).await, "GET");
        assert!(started.elapsed() < Duration::from_secs(8), "unsatisfiable contexts took {:?}", started.elapsed());
    }
    expect(&c.get(0, "k", &json!({})).await, 200, retrieved(json!("x")));
}

// Cluster endpoints on one node: key-count, shards, shard info, unknown shards, health, ready, metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_endpoints() {
    let c = Cluster::start(1, 1).await;
    let empty = json!({});
    let count_msg = "Key count retrieved successfully";

    expect(&c.get_json(0, "/kv-store/key-count").await, 200, json!({"message": count_msg, "key-count": 0, "shard-id": 1}));
    for k in ["a", "b", "c"] {
        expect(&c.put(0, k, json!(k), &empty).await, 201, added());
    }
    expect(&c.get_json(0, "/kv-store/key-count").await, 200, json!({"message": count_msg, "key-count": 3, "shard-id": 1}));
    expect(&c.put(0, "a", json!("again"), &empty).await, 200, updated());
    expect(&c.delete(0, "b", &empty).await, 200, deleted());
    expect(&c.delete(0, "b", &empty).await, 404, not_found("DELETE"));
    expect(&c.get_json(0, "/kv-store/key-count").await, 200, json!({"message": count_msg, "key-count": 2, "shard-id": 1}));

    expect(&c.get_json(0, "/kv-store/shards").await, 200, json!({"message": "Shard membership retrieved successfully", "shards": [1]}));
    expect(
        &c.get_json(0, "/kv-store/shards/1").await,
        200,
        json!({"message": "Shard information retrieved successfully", "shard-id": 1, "key-count": 2, "replicas": [c.addr(0)]}),
    );
    for id in ["2", "0", "abc", "-1", "1.0", "99999999999"] {
        let a = c.get_json(0, &format!("/kv-store/shards/{id}")).await;
        assert_eq!(a.status.as_u16(), 404, "shard {id}: {}", a.body);
        expect(&a, 404, error("GET", "Shard does not exist"));
    }

    let a = c.get_json(0, "/health").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert!(a.body.get("causal-context").is_some(), "health has causal-context: {}", a.body);
    let a = c.get_json(0, "/ready").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert!(a.body.get("causal-context").is_some(), "ready has causal-context: {}", a.body);

    let m = send_text(c.client.get(c.nodes[0].url("/metrics"))).await;
    assert_eq!(m.status, StatusCode::OK, "{}", m.text);
    assert!(m.content_type.as_deref().is_some_and(|t| t.starts_with("text/plain")), "metrics content type {:?}", m.content_type);
    assert!(m.text.contains("causalkv_requests"), "metrics lack causalkv_requests:\n{}", m.text);
}

// Unknown routes 404 JSON "Not found", other methods on keys 405 JSON, fault switches off by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_methods() {
    let c = Cluster::start(1, 1).await;
    for path in ["/nope", "/kv-store", "/kv-store/key", "/kv-store/shards/1/extra", "/internal/faults"] {
        expect(&send(c.client.get(c.nodes[0].url(path))).await, 404, error("GET", "Not found"));
    }
    let a = send(put_raw(&c, 0, "/internal/faults", r#"{"block": []}"#)).await;
    expect(&a, 404, error("PUT", "Not found"));
    expect(&send(c.client.post(c.nodes[0].url("/nope")).json(&json!({}))).await, 404, error("POST", "Not found"));

    for method in [reqwest::Method::POST, reqwest::Method::PATCH, reqwest::Method::OPTIONS] {
        let a = send(req_raw(&c, 0, method.clone(), &key_path("k"), r#"{"value": 1}"#)).await;
        expect(&a, 405, error(method.as_str(), "Method not allowed"));
    }
    for path in ["/kv-store/key-count", "/kv-store/shards", "/kv-store/shards/1"] {
        expect(&send(c.client.post(c.nodes[0].url(path)).json(&json!({}))).await, 405, error("POST", "Method not allowed"));
        expect(&send(c.client.delete(c.nodes[0].url(path))).await, 405, error("DELETE", "Method not allowed"));
    }
    // The refused POST stored nothing.
    expect(&c.get(0, "k", &json!({})).await, 404, not_found("GET"));
}

/// Runs the binary with only `env` (plus a temp DATA_DIR) and `args`; it must
/// exit within 10 s. Returns (exit code, stderr).
fn run_binary(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(BIN);
    cmd.env_clear().env("DATA_DIR", tmp.path().join("data")).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    if !env.iter().any(|(k, _)| *k == "ADDRESS") {
        cmd.env("ADDRESS", format!("127.0.0.1:{}", free_port()));
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn causalkv");
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("causalkv with {env:?} {args:?} did not exit: the configuration was accepted");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read stderr");
    (code, stderr)
}

/// Environment variables for one run of the binary.
type Env<'a> = Vec<(&'a str, &'a str)>;

// Misconfiguration exits at start-up with status 2 and exactly one non-empty line on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_2_with_one_line() {
    let p1 = format!("127.0.0.1:{}", free_port());
    let p2 = format!("127.0.0.1:{}", free_port());
    let two = format!("{p1},{p2}");
    let dup = format!("{p1},{p1}");
    let cases: Vec<(Env, Vec<&str>)> = vec![
        (vec![("REPL_FACTOR", "0")], vec![]),
        (vec![("REPL_FACTOR", "abc")], vec![]),
        (vec![("VIEW", "not an address")], vec![]),
        (vec![("VIEW", "127.0.0.1:0")], vec![]),
        (vec![("VIEW", "127.0.0.1:99999")], vec![]),
        (vec![("VIEW", dup.as_str())], vec![]),
        (vec![("ADDRESS", p1.as_str()), ("VIEW", two.as_str()), ("REPL_FACTOR", "3")], vec![]),
        (vec![("ADDRESS", "not an address")], vec![]),
        (vec![("DURABILITY", "bogus")], vec![]),
        (vec![("DURABILITY", "bo\ngus")], vec![]),
        (vec![("MAX_KEY_LENGTH", "0")], vec![]),
        (vec![("MAX_VALUE_BYTES", "0")], vec![]),
        (vec![("PORT", "0"), ("VIEW", "127.0.0.1:13800,127.0.0.1:13801")], vec![]),
        (vec![("CAUSAL_WAIT_MS", "-5")], vec![]),
        (vec![], vec!["--no-such-flag"]),
        (vec![], vec!["--repl-factor", "0"]),
        (vec![], vec!["--view", "a b c"]),
    ];
    for (env, args) in cases {
        let (code, stderr) = run_binary(&env, &args);
        assert_eq!(code, Some(2), "exit status with {env:?} {args:?}; stderr: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "stderr with {env:?} {args:?} must be one line, got: {stderr:?}");
        assert_eq!(stderr.lines().count(), 1, "stderr with {env:?} {args:?} has blank lines: {stderr:?}");
    }
}

/// Kills a process started by the test when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// A node whose VIEW lacks its ADDRESS runs as a proxy: /health answers, key requests get a prompt JSON 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_outside_its_view_is_a_proxy() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let me = format!("127.0.0.1:{}", free_port());
    let other = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("ADDRESS", &me)
        .env("VIEW", &other)
        .env("DATA_DIR", tmp.path().join("proxy"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = ChildGuard(cmd.spawn().expect("spawn causalkv"));
    let client = client();
    let health = format!("http://{me}/health");
    let up =
        wait_until(Duration::from_secs(10), || async { matches!(client.get(&health).send().await, Ok(r) if r.status() == StatusCode::OK) })
            .await;
    let exited = child.0.try_wait().expect("try_wait");
    assert!(exited.is_none(), "the proxy node exited: {exited:?}");
    assert!(up, "the proxy node never answered /health");
    let a = send(client.get(&health)).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");

    let url = format!("http://{me}{}", key_path("k"));
    let requests = [
        ("GET", client.get(&url).json(&json!({"causal-context": {}}))),
        ("PUT", client.put(&url).json(&json!({"value": 1, "causal-context": {}}))),
        ("DELETE", client.delete(&url)),
    ];
    for (method, req) in requests {
        let started = Instant::now();
        let a = tokio::time::timeout(Duration::from_secs(5), send(req)).await.unwrap_or_else(|_| panic!("{method} hung"));
        assert!(started.elapsed() < Duration::from_secs(5), "{method} took {:?}", started.elapsed());
        expect_unavailable(&a, method);
    }
    expect(
        &send(client.get(format!("http://{me}/kv-store/shards"))).await,
        200,
        json!({"message": "Shard membership retrieved successfully", "shards": [1]}),
    );
    let exited = child.0.try_wait().expect("try_wait");
    assert!(exited.is_none(), "the proxy node exited after serving: {exited:?}");
}

// SIGTERM: exit status 0, and every acknowledged write is readable after a restart (fsync and async durability).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_keeps_writes() {
    let (mut fsync, mut async_) = tokio::join!(Cluster::start(1, 1), Cluster::start_with(1, 1, &[("DURABILITY", "async")]));
    for c in [&mut fsync, &mut async_] {
        let empty = json!({});
        for i in 0..50 {
            expect(&c.put(0, &format!("key{i}"), json!({"i": i, "s": format!("value {i}")}), &empty).await, 201, added());
        }
        let code = c.nodes[0].terminate();
        assert_eq!(code, Some(0), "exit status after SIGTERM");
        c.restart(0).await;
        for i in 0..50 {
            let a = c.get(0, &format!("key{i}"), &empty).await;
            expect(&a, 200, retrieved(json!({"i": i, "s": format!("value {i}")})));
        }
        let a = c.get_json(0, "/kv-store/key-count").await;
        assert_eq!(a.body["key-count"], json!(50), "{}", a.body);
    }
}

// Two shards (rf 1): forwarded answers carry `address` of the serving node, local ones do not; 503 when the owner is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_requests() {
    let mut c = Cluster::start(2, 1).await;
    let empty = json!({});
    let (a0, a1) = (c.addr(0).to_string(), c.addr(1).to_string());

    // Learn the owner of each key from the PUT answers given by node 0.
    let mut local = Vec::new();
    let mut remote = Vec::new();
    for i in 0..24 {
        let key = format!("fw {i}?#%é-");
        let a = c.put(0, &key, json!(i), &empty).await;
        match a.address() {
            None => {
                expect(&a, 201, added());
                local.push((key, i));
            }
            Some(_) => {
                expect_forwarded(&a, 201, added(), &a1);
                remote.push((key, i));
            }
        }
    }
    assert!(!local.is_empty() && remote.len() >= 2, "keys spread over both shards: {} local, {} remote", local.len(), remote.len());

    for (key, i) in &remote {
        expect_forwarded(&c.get(0, key, &empty).await, 200, retrieved(json!(i)), &a1);
        // Served locally at the owner: no address.
        expect(&c.get(1, key, &empty).await, 200, retrieved(json!(i)));
    }
    for (key, i) in &local {
        expect(&c.get(0, key, &empty).await, 200, retrieved(json!(i)));
        expect_forwarded(&c.get(1, key, &empty).await, 200, retrieved(json!(i)), &a0);
    }

    // Update, delete, missing key, all through node 0; contexts from one node accepted by the other.
    let (rkey, _) = remote[0].clone();
    let a = c.put(0, &rkey, json!("updated"), &empty).await;
    expect_forwarded(&a, 200, updated(), &a1);
    let a = c.get(1, &rkey, &a.ctx()).await;
    expect(&a, 200, retrieved(json!("updated")));
    let a = c.delete(0, &rkey, &a.ctx()).await;
    expect_forwarded(&a, 200, deleted(), &a1);
    let ctx = a.ctx();
    expect_forwarded(&c.delete(0, &rkey, &ctx).await, 404, not_found("DELETE"), &a1);
    expect_forwarded(&c.get(0, &rkey, &ctx).await, 404, not_found("GET"), &a1);
    expect(&c.get(1, &rkey, &ctx).await, 404, not_found("GET"));

    // A forwarded big number keeps its text.
    let (nkey, _) = remote[1].clone();
    let a = send(put_raw(&c, 0, &key_path(&nkey), r#"{"value":123456789012345678901234567890}"#)).await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.body);
    let raw = send_text(c.client.get(c.nodes[0].url(&key_path(&nkey)))).await;
    assert!(raw.text.contains(r#""value":123456789012345678901234567890"#), "forwarded value text: {}", raw.text);

    // Bad requests are refused at the entry node, never forwarded.
    expect(&c.put(0, &"x".repeat(51), json!(1), &empty).await, 400, error("PUT", "Key is too long"));
    expect(&c.get(0, &rkey, &json!("bad")).await, 400, error("GET", "Invalid causal-context"));

    // Cluster endpoints see two shards.
    let live_remote = remote.len() as u64 - 1;
    let count = "Key count retrieved successfully";
    expect(&c.get_json(0, "/kv-store/key-count").await, 200, json!({"message": count, "key-count": local.len(), "shard-id": 1}));
    expect(&c.get_json(1, "/kv-store/key-count").await, 200, json!({"message": count, "key-count": live_remote, "shard-id": 2}));
    for i in 0..2 {
        let a = c.get_json(i, "/kv-store/shards").await;
        expect(&a, 200, json!({"message": "Shard membership retrieved successfully", "shards": [1, 2]}));
    }
    let info = "Shard information retrieved successfully";
    expect(
        &c.get_json(0, "/kv-store/shards/2").await,
        200,
        json!({"message": info, "shard-id": 2, "key-count": live_remote, "replicas": [a1]}),
    );
    expect(
        &c.get_json(1, "/kv-store/shards/1").await,
        200,
        json!({"message": info, "shard-id": 1, "key-count": local.len(), "replicas": [a0]}),
    );
    expect(&c.get_json(0, "/kv-store/shards/3").await, 404, error("GET", "Shard does not exist"));

    // The owner of shard 2 goes down: its keys answer 503 promptly, shard 1 keeps working.
    c.nodes[1].kill();
    let started = Instant::now();
    expect_unavailable(&c.get(0, &nkey, &empty).await, "GET");
    expect_unavailable(&c.put(0, &rkey, json!(1), &empty).await, "PUT");
    expect_unavailable(&c.delete(0, &nkey, &empty).await, "DELETE");
    assert!(started.elapsed() < Duration::from_secs(5), "503s took {:?}", started.elapsed());
    let (lkey, li) = &local[0];
    expect(&c.get(0, lkey, &empty).await, 200, retrieved(json!(li)));
}

/// PORT=0: a node that is its whole view takes the port the system gives
/// it, names itself by it (records carry the real address), and reports it
/// in PORT_FILE.
#[tokio::test]
async fn port_zero_binds_a_free_port_and_reports_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let port_file = tmp.path().join("port");
    let mut child = Command::new(BIN)
        .env_clear()
        .env("PORT", "0")
        .env("PORT_FILE", &port_file)
        .env("DATA_DIR", tmp.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn causalkv");
    let written = wait_until(Duration::from_secs(20), || async { port_file.exists() }).await;
    let addr = std::fs::read_to_string(&port_file).unwrap_or_default().trim().to_owned();
    let put =
        if written { Some(send(client().put(format!("http://{addr}/kv-store/keys/p0")).json(&json!({"value": 1}))).await) } else { None };
    let _ = child.kill();
    let _ = child.wait();
    assert!(written, "no PORT_FILE written");
    let parsed: std::net::SocketAddr = addr.parse().expect("PORT_FILE holds ip:port");
    assert_ne!(parsed.port(), 0);
    let put = put.expect("answered");
    assert_eq!(put.status, 201, "{}", put.body);
    assert_eq!(put.seq_of(&addr), 1, "records are named by the real address: {}", put.body);
}

//! Issue 11, hole 9 (input parts): values nested deeper than the limit and
//! keys that are not validly percent-encoded are refused with a 400 JSON
//! error and store nothing; valid encoded keys still round-trip.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// `MAX_VALUE_DEPTH` in src/api/request.rs (documented in docs/API.md).
const MAX_DEPTH: usize = 64;

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

async fn key_count(c: &Cluster) -> u64 {
    c.get_json(0, "/kv-store/key-count").await.body["key-count"].as_u64().expect("a key count")
}

fn assert_error(a: &Answer, method: &str, error: &str) {
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{method}: {}", a.body);
    assert_eq!(a.body["message"], json!(format!("Error in {method}")), "{}", a.body);
    assert_eq!(a.body["error"], json!(error), "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_nested_too_deeply_are_refused_and_not_stored() {
    let c = Cluster::start(1, 1).await;
    let put_nested = |key: &str, depth: usize| {
        let body = format!(r#"{{"value": {}}}"#, nested(depth));
        c.client.put(c.nodes[0].url(&key_path(key))).header("content-type", "application/json").body(body)
    };
    let limit_error = format!("Value is nested more than {MAX_DEPTH} levels deep");
    for (key, depth) in [("deep", 100_000), ("one-too-deep", MAX_DEPTH + 1)] {
        let a = send(put_nested(key, depth)).await;
        assert_error(&a, "PUT", &limit_error);
        assert_eq!(c.get(0, key, &json!({})).await.status, StatusCode::NOT_FOUND, "{key} was not stored");
    }
    // Objects count as arrays do; brackets inside strings do not count.
    let objects = format!(r#"{{"value": {}1{}}}"#, r#"{"a":"#.repeat(MAX_DEPTH + 1), "}".repeat(MAX_DEPTH + 1));
    let a = send(c.client.put(c.nodes[0].url(&key_path("objects"))).header("content-type", "application/json").body(objects)).await;
    assert_error(&a, "PUT", &limit_error);
    assert_eq!(key_count(&c).await, 0);

    let at_limit = send(put_nested("at-limit", MAX_DEPTH)).await;
    assert_eq!(at_limit.status, StatusCode::CREATED, "{}", at_limit.body);
    let back = c.get(0, "at-limit", &json!({})).await;
    assert_eq!(back.value(), Some(&serde_json::from_str::<Value>(&nested(MAX_DEPTH)).unwrap()));
    let brackets = json!(["[".repeat(1000), "{".repeat(1000)]);
    assert_eq!(c.put(0, "brackets-in-strings", brackets.clone(), &json!({})).await.status, StatusCode::CREATED);
    assert_eq!(c.get(0, "brackets-in-strings", &json!({})).await.value(), Some(&brackets));
    assert_eq!(key_count(&c).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_follow_one_percent_decoding_rule() {
    let c = Cluster::start(1, 1).await;
    // Invalid escapes, a decoded NUL, bytes that are not UTF-8 once decoded.
    for raw in ["a%zz", "a%00b", "a%ff", "a%", "a%2", "%C3%28"] {
        let path = format!("/kv-store/keys/{raw}");
        let put = send(c.client.put(c.nodes[0].url(&path)).json(&json!({"value": raw}))).await;
        assert_error(&put, "PUT", "Key is invalid");
        assert_error(&send(c.client.get(c.nodes[0].url(&path))).await, "GET", "Key is invalid");
        assert_error(&send(c.client.delete(c.nodes[0].url(&path))).await, "DELETE", "Key is invalid");
    }
    assert_eq!(key_count(&c).await, 0, "no refused key was stored");

    // Valid encodings keep working: the same key spelt encoded or as text.
    let put = send(c.client.put(c.nodes[0].url("/kv-store/keys/%C3%A9t%C3%A9%20100%25")).json(&json!({"value": "v"}))).await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.body);
    assert_eq!(c.get(0, "été 100%", &json!({})).await.value(), Some(&json!("v")));
    let lower = send(c.client.get(c.nodes[0].url("/kv-store/keys/%c3%a9t%c3%a9%20100%25"))).await;
    assert_eq!(lower.value(), Some(&json!("v")), "hex digits in either case");
    assert_eq!(key_count(&c).await, 1);
}

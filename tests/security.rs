//! Internal traffic is authenticated: with CLUSTER_KEY a forged, stale,
//! unsigned or replayed request is refused and changes nothing; without it,
//! only the view's addresses may call internal endpoints.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

const KEY: &str = "test-cluster-key";

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn sign(key: &str, path: &str, ts: u64, sender: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    for part in ["POST", path, &ts.to_string(), sender] {
        mac.update(part.as_bytes());
        mac.update(b"\n");
    }
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

async fn post(c: &Cluster, node: usize, path: &str, sender: &str, body: &[u8], ts: Option<u64>, sig: Option<String>) -> StatusCode {
    let mut req = c.client.post(c.nodes[node].url(path)).header("x-causalkv-from", sender).header("content-type", "application/json");
    if let Some(ts) = ts {
        req = req.header("x-causalkv-timestamp", ts.to_string());
    }
    if let Some(sig) = sig {
        req = req.header("x-causalkv-signature", sig);
    }
    req.body(body.to_vec()).send().await.expect("answer").status()
}

// With CLUSTER_KEY the cluster works, and forged / stale / unsigned /
// replayed internal requests are refused without changing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_internal_requests_are_rejected() {
    let c = Cluster::start_with(2, 2, &[("CLUSTER_KEY", KEY)]).await;
    let put = c.put(1, "k", json!("real"), &json!({})).await;
    assert_eq!(put.status, StatusCode::CREATED);
    let synced = wait_until(Duration::from_secs(10), || async { c.get(1, "k", &json!({})).await.value() == Some(&json!("real")) }).await;
    assert!(synced, "signed replication works");

    let master = c.addr(0).to_string();
    let seq = put.seq_of(&master);
    let forged_record = json!({
        "from": master, "epoch": 0,
        "records": [{"key": "k", "value": "forged", "dot": {"epoch": 0, "origin": master, "seq": seq + 1}, "deps": {}, "hlc": u64::MAX / 2}]
    });
    let body = serde_json::to_vec(&forged_record).unwrap();
    let path = "/internal/replicate";
    let ts = now_ms();
    let cases: Vec<(&str, Option<u64>, Option<String>)> = vec![
        ("unsigned", None, None),
        ("wrong key", Some(ts), Some(sign("not-the-key", path, ts, &master, &body))),
        ("signature of another body", Some(ts), Some(sign(KEY, path, ts, &master, b"{}"))),
        ("stale timestamp", Some(ts - 60_000), Some(sign(KEY, path, ts - 60_000, &master, &body))),
        ("garbage signature", Some(ts), Some("zz".into())),
    ];
    for (what, ts, sig) in cases {
        assert_eq!(post(&c, 1, path, &master, &body, ts, sig).await, StatusCode::UNAUTHORIZED, "{what}");
    }
    assert!(c.metric(1, "causalkv_auth_rejected").await >= 5);
    // Nothing changed at the target.
    let get = c.get(1, "k", &json!({})).await;
    assert_eq!(get.value(), Some(&json!("real")));
    let again = c.put(0, "k2", json!(1), &json!({})).await;
    assert_eq!(again.seq_of(&master), seq + 1, "the master's seq space was not polluted");

    // A correctly signed request passes once; its replay is refused.
    let hb = serde_json::to_vec(&json!({"from": master, "epoch": 0})).unwrap();
    let ts = now_ms();
    let sig = sign(KEY, "/internal/heartbeat", ts, &master, &hb);
    assert_eq!(post(&c, 1, "/internal/heartbeat", &master, &hb, Some(ts), Some(sig.clone())).await, StatusCode::OK);
    assert_eq!(post(&c, 1, "/internal/heartbeat", &master, &hb, Some(ts), Some(sig)).await, StatusCode::UNAUTHORIZED, "replay");
}

// Without CLUSTER_KEY internal endpoints answer only view addresses
// (127.0.0.1 here); a caller from 127.0.0.2 is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_only_view_addresses_may_call_internal_endpoints() {
    let c = Cluster::start(2, 2).await;
    let hb = serde_json::to_vec(&json!({"from": c.addr(0), "epoch": 0})).unwrap();
    assert_eq!(post(&c, 1, "/internal/heartbeat", c.addr(0), &hb, None, None).await, StatusCode::OK);
    common::tls_provider();
    let outsider = reqwest::Client::builder().local_address(Some("127.0.0.2".parse().unwrap())).build().unwrap();
    let before = c.get(1, "x", &json!({})).await;
    assert_eq!(before.status, StatusCode::NOT_FOUND);
    let body = json!({"from": c.addr(0), "epoch": 0, "records": [
        {"key": "x", "value": "evil", "dot": {"epoch": 0, "origin": c.addr(0), "seq": 1}, "deps": {}, "hlc": 1}
    ]});
    let resp = outsider.post(c.nodes[1].url("/internal/replicate")).header("x-causalkv-from", c.addr(0)).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let after: Value = c.get(1, "x", &json!({})).await.body;
    assert_eq!(after["doesExist"], json!(false), "the refused write changed nothing");
}

//! A 4-node, RF-2 cluster of real processes: forwarding, replication,
//! key counts and shard information.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Shard id -> replicas, as the cluster reports it.
async fn shard_map(c: &Cluster) -> BTreeMap<u64, Vec<String>> {
    let shards = c.get_json(0, "/kv-store/shards").await;
    assert_eq!(shards.status, StatusCode::OK);
    let mut map = BTreeMap::new();
    for id in shards.body["shards"].as_array().expect("shards array") {
        let id = id.as_u64().expect("integer shard id");
        let info = c.get_json(0, &format!("/kv-store/shards/{id}")).await;
        assert_eq!(info.status, StatusCode::OK);
        assert_eq!(info.body["message"], "Shard information retrieved successfully");
        let replicas = info.body["replicas"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
        map.insert(id, replicas);
    }
    map
}

// Forwarding: `address` appears exactly when the entry node is not the one
// that served, and always names a replica of the key's shard; writes go to
// the master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_forwarded_to_replicas_of_the_keys_shard() {
    let c = Cluster::start(4, 2).await;
    let shards = shard_map(&c).await;
    assert_eq!(shards.len(), 2);
    assert_eq!(shards[&1], vec![c.addr(0).to_string(), c.addr(1).to_string()]);
    assert_eq!(shards[&2], vec![c.addr(2).to_string(), c.addr(3).to_string()]);
    let shard_of_master: HashMap<String, u64> = shards.iter().map(|(id, r)| (r[0].clone(), *id)).collect();

    let mut key_shard = HashMap::new();
    for k in 0..60 {
        let key = format!("fwd-{k}");
        let entry = k % 4;
        let put = c.put(entry, &key, json!(k), &json!({})).await;
        assert_eq!(put.status, StatusCode::CREATED, "{}", put.body);
        let master = put.forwarded_to().unwrap_or(c.addr(entry)).to_string();
        let shard = *shard_of_master.get(&master).unwrap_or_else(|| panic!("write for {key} served by {master}, not a master"));
        // An entry node that is the master serves it itself.
        assert_eq!(put.forwarded_to().is_none(), c.addr(entry) == master, "{key} at {entry}: {}", put.body);
        key_shard.insert(key.clone(), shard);
        // Reads at every node, with the write's context.
        for i in 0..4 {
            let get = c.get(i, &key, &put.ctx()).await;
            assert_eq!(get.status, StatusCode::OK, "{key} at node {i}: {}", get.body);
            assert_eq!(get.value(), Some(&json!(k)));
            let replicas = &shards[&shard];
            let entry_is_replica = replicas.iter().any(|r| r == c.addr(i));
            match get.forwarded_to() {
                None => assert!(entry_is_replica, "{key} served locally by a non-replica {}", c.addr(i)),
                Some(a) => {
                    assert!(!entry_is_replica, "a replica forwarded a satisfiable read of {key}");
                    assert!(replicas.iter().any(|r| r == a), "{key} served by {a}, not a replica of shard {shard}");
                }
            }
        }
    }
    // Both shards got keys.
    assert!(key_shard.values().any(|s| *s == 1) && key_shard.values().any(|s| *s == 2));
}

// Replication: every write reaches every replica of its shard without any
// context or client traffic, and key counts add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_and_key_counts_add_up() {
    let c = Cluster::start(4, 2).await;
    let n = 200;
    for k in 0..n {
        let put = c.put(k % 4, &format!("rep-{k}"), json!({"k": k}), &json!({})).await;
        assert_eq!(put.status, StatusCode::CREATED);
    }
    for k in (0..n).step_by(10) {
        let del = c.delete(k % 4, &format!("rep-{k}"), &json!({})).await;
        assert_eq!(del.status, StatusCode::OK, "{}", del.body);
    }
    let live = n - n / 10;
    // Every replica converges to the same count, and the shards sum to `live`.
    let converged = wait_until(Duration::from_secs(10), || async {
        let mut counts = Vec::new();
        for i in 0..4 {
            counts.push(c.get_json(i, "/kv-store/key-count").await.body["key-count"].as_u64().unwrap_or(u64::MAX));
        }
        counts[0] == counts[1] && counts[2] == counts[3] && counts[0] + counts[2] == live as u64
    })
    .await;
    assert!(converged, "replicas did not converge to {live} keys");
    let visible = c.metric(1, "causalkv_visibility_seconds_count").await;
    assert!(visible > 0, "the worker measured visibility of pushed writes");
    let mut total = 0;
    for id in [1, 2] {
        let info = c.get_json(3, &format!("/kv-store/shards/{id}")).await;
        assert_eq!(info.body["shard-id"], json!(id));
        total += info.body["key-count"].as_u64().unwrap();
    }
    assert_eq!(total, live as u64);
    for i in 0..4 {
        let kc = c.get_json(i, "/kv-store/key-count").await;
        assert_eq!(kc.body["shard-id"], json!(if i < 2 { 1 } else { 2 }));
    }
    // Every key readable at its own replicas without context (served locally).
    for k in 0..n {
        let key = format!("rep-{k}");
        for i in 0..4 {
            let get = c.get(i, &key, &json!({})).await;
            if get.forwarded_to().is_none() {
                let want = if k % 10 == 0 { StatusCode::NOT_FOUND } else { StatusCode::OK };
                assert_eq!(get.status, want, "{key} at replica {i}: {}", get.body);
            }
        }
    }
}

// Reads at non-replicas spread over the shard's replicas (round-robin over
// workers, master as fallback when the worker is down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_use_workers_and_fall_back_to_the_master() {
    let mut c = Cluster::start(4, 2).await;
    // A key of shard 2 (master node 2, worker node 3), entered at node 0.
    let mut key = None;
    for k in 0..100 {
        let put = c.put(0, &format!("rr-{k}"), json!(k), &json!({})).await;
        if put.forwarded_to() == Some(c.addr(2)) {
            key = Some((format!("rr-{k}"), put.ctx()));
            break;
        }
    }
    let (key, ctx) = key.expect("some key lands in shard 2");
    let mut served_by = HashMap::new();
    for _ in 0..10 {
        let get = c.get(0, &key, &ctx).await;
        assert_eq!(get.status, StatusCode::OK);
        *served_by.entry(get.forwarded_to().unwrap().to_string()).or_insert(0) += 1;
    }
    assert_eq!(served_by.get(c.addr(3)), Some(&10), "reads go to the worker: {served_by:?}");
    c.nodes[3].kill();
    let get = c.get(0, &key, &ctx).await;
    assert_eq!(get.status, StatusCode::OK);
    assert_eq!(get.forwarded_to(), Some(c.addr(2)), "master serves when the worker is down");
    // Writes still work with the worker down (only the master is needed).
    let put = c.put(1, &key, json!("after"), &ctx).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    // The worker catches up after a restart without client traffic.
    c.restart(3).await;
    let caught_up = wait_until(Duration::from_secs(10), || async {
        let g = c.get(3, &key, &json!({})).await;
        g.value() == Some(&json!("after"))
    })
    .await;
    assert!(caught_up, "restarted worker did not catch up");
}

// Writes that arrive at a worker are forwarded to the master; when the master
// is down the worker accepts them itself, and they reach the master later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_accepts_writes_when_the_master_is_down() {
    let mut c = Cluster::start(2, 2).await;
    let put = c.put(1, "w", json!(1), &json!({})).await;
    assert_eq!(put.forwarded_to(), Some(c.addr(0)));
    // The worker must hold the write the client's context names before the
    // master dies, or it would rightly refuse (503) to build on it.
    let replicated = wait_until(Duration::from_secs(10), || async { c.get(1, "w", &json!({})).await.value() == Some(&json!(1)) }).await;
    assert!(replicated);
    c.nodes[0].kill();
    let put2 = c.put(1, "w", json!(2), &put.ctx()).await;
    assert_eq!(put2.status, StatusCode::OK, "{}", put2.body);
    assert!(put2.forwarded_to().is_none(), "served by the worker itself");
    assert!(put2.seq_of(c.addr(1)) >= 1, "the write is a dot of the worker: {}", put2.body);
    c.restart(0).await;
    let got = c.get(0, "w", &put2.ctx()).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.value(), Some(&json!(2)));
}

// Values of every JSON type survive replication unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_replicate_exactly() {
    let c = Cluster::start(2, 2).await;
    let values: Vec<Value> = vec![json!("s"), json!(1.5), json!(true), json!([1, {"a": null}]), json!({"x": {"y": [false]}})];
    for (i, v) in values.iter().enumerate() {
        let put = c.put(0, &format!("v{i}"), v.clone(), &json!({})).await;
        let get = c.get(1, &format!("v{i}"), &put.ctx()).await;
        assert_eq!(get.value(), Some(v));
    }
}

// A write sent to a worker is passed to the master and answered once the
// worker holds it too: reading again at the worker with no context (as a
// client of the course API does) finds it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_a_worker_is_readable_there_at_once_without_context() {
    let c = Cluster::start(2, 2).await;
    for i in 0..20 {
        let key = format!("ryw-{i}");
        let put = c.put(1, &key, json!(i), &json!({})).await;
        assert!(put.status.is_success(), "{}", put.body);
        assert_eq!(put.forwarded_to(), Some(c.addr(0)), "the master took the write");
        assert_eq!(put.address(), None, "a write passed to the node's own shard's master names no address: {}", put.body);
        let get = c.get(1, &key, &json!({})).await;
        assert_eq!(get.value(), Some(&json!(i)), "{key} not yet at the worker that passed it on: {}", get.body);
    }
}

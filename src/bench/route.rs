//! Where each key lives in a causalkv cluster, for `--route shard` and the
//! `--only-keys-[not-]served-by` filters: the shards with their master and
//! replicas come from the entry node's `/kv-store/status` (docs/API.md), and
//! the shard of every key from a probe: a GET without context for each key at
//! the entry node, whose answer names the replica that served it in
//! `x-causalkv-served-by` (the entry node itself for its own shard's keys).
//! The probe writes nothing, so it works before and after a preload alike.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::http::HttpConn;
use super::keyspace::key_into;
use super::session::{Outcome, Session, Spec};

/// Where the requests of a run go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// Connection i sends everything to node i mod n of `--nodes`; a node
    /// that does not hold a key forwards the request.
    Node,
    /// Every key to a node of its own shard (nothing is forwarded): a PUT to
    /// the shard's master, a GET to one replica of the shard (session i uses
    /// replica i mod the shard's replica count). `--nodes` names the entry
    /// node the shards are learnt from.
    Shard,
}

/// Keeps only some keys of `0..keys`, by the shard they belong to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyFilter {
    /// Keys of the shard this node is a replica of (it serves them itself).
    ServedBy(String),
    /// Keys of every other shard (this node forwards them).
    NotServedBy(String),
}

#[derive(Clone, Debug, Serialize)]
pub struct Shard {
    pub id: u64,
    pub master: String,
    pub replicas: Vec<String>,
    /// Keys of the keyspace (before any filter) that belong to this shard.
    pub keys: u64,
}

/// The cluster's shards and the shard of every key.
#[derive(Clone, Debug)]
pub struct Routes {
    pub shards: Vec<Shard>,
    /// Index into `shards` of key i.
    pub key_shard: Vec<u32>,
}

impl Routes {
    /// The key indexes the filter keeps, in order.
    pub fn filter(&self, filter: &KeyFilter) -> Result<Vec<u64>, String> {
        let (node, keep_own) = match filter {
            KeyFilter::ServedBy(n) => (n, true),
            KeyFilter::NotServedBy(n) => (n, false),
        };
        if !self.shards.iter().any(|s| s.replicas.iter().any(|r| r == node)) {
            return Err(format!("{node} is not a replica of any shard ({:?})", self.shards));
        }
        let own: Vec<bool> = self.shards.iter().map(|s| s.replicas.iter().any(|r| r == node)).collect();
        let keys: Vec<u64> = (0..self.key_shard.len() as u64).filter(|&k| own[self.key_shard[k as usize] as usize] == keep_own).collect();
        if keys.is_empty() {
            return Err(format!("no key of the keyspace passes {filter:?}"));
        }
        Ok(keys)
    }
}

/// Learns the shards from `entry`'s status and probes the shard of every key.
pub async fn discover(
    entry: &str,
    spec: &Arc<Spec>,
    keys: u64,
    key_size: usize,
    conns: usize,
    timeout: Duration,
) -> Result<Routes, String> {
    let mut shards = status_shards(entry).await?;
    let workers = (conns.max(1) as u64).min(keys.max(1));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut s = Session::new(spec.clone(), entry);
        s.record_served_by = true;
        let replicas: Vec<Vec<String>> = shards.iter().map(|s| s.replicas.clone()).collect();
        tasks.push(tokio::spawn(async move {
            let mut found = Vec::new();
            let mut key = Vec::new();
            let mut i = w;
            while i < keys {
                key_into(&mut key, "k", i, key_size);
                let mut tries = 0;
                let served_by = loop {
                    let outcome = tokio::time::timeout(timeout, s.get_without_context(&key)).await;
                    match outcome {
                        Ok(Outcome::Ok | Outcome::Miss) if !s.served_by().is_empty() => {
                            break String::from_utf8_lossy(s.served_by()).into_owned();
                        }
                        other if tries >= 3 => {
                            return Err(format!(
                                "probing key {i} at {}: {other:?} (served-by {:?})",
                                s.addr(),
                                String::from_utf8_lossy(s.served_by())
                            ));
                        }
                        _ => tries += 1,
                    }
                };
                let shard = replicas
                    .iter()
                    .position(|r| r.contains(&served_by))
                    .ok_or_else(|| format!("key {i} was served by {served_by}, a replica of no shard in {replicas:?}"))?;
                found.push((i, shard as u32));
                i += workers;
            }
            Ok::<_, String>(found)
        }));
    }
    let mut key_shard = vec![0u32; keys as usize];
    for t in tasks {
        for (i, shard) in t.await.map_err(|e| format!("probe task failed: {e}"))?? {
            key_shard[i as usize] = shard;
            shards[shard as usize].keys += 1;
        }
    }
    Ok(Routes { shards, key_shard })
}

async fn status_shards(entry: &str) -> Result<Vec<Shard>, String> {
    let mut conn = HttpConn::connect(entry).await.map_err(|e| format!("connect {entry}: {e}"))?;
    let status = conn.request("GET", "/kv-store/status", None).await.map_err(|e| format!("{entry} /kv-store/status: {e}"))?;
    if status != 200 {
        return Err(format!("{entry} /kv-store/status: {status} {}", String::from_utf8_lossy(&conn.body)));
    }
    let v: serde_json::Value = serde_json::from_slice(&conn.body).map_err(|e| format!("{entry} /kv-store/status: bad JSON: {e}"))?;
    let shards = v["shards"].as_array().ok_or_else(|| format!("{entry} /kv-store/status has no shards: {v}"))?;
    let mut out = Vec::new();
    for s in shards {
        let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
        let (Some(id), Some(master), Some(replicas)) = (s["shard-id"].as_u64(), text(&s["master"]), s["replicas"].as_array()) else {
            return Err(format!("{entry} /kv-store/status: unexpected shard {s}"));
        };
        let replicas: Vec<String> = replicas.iter().filter_map(text).collect();
        out.push(Shard { id, master, replicas, keys: 0 });
    }
    if out.is_empty() {
        return Err(format!("{entry} /kv-store/status lists no shard"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        let shard = |id: u64, master: &str, replicas: &[&str]| Shard {
            id,
            master: master.into(),
            replicas: replicas.iter().map(|r| r.to_string()).collect(),
            keys: 0,
        };
        Routes { shards: vec![shard(1, "a", &["a", "b"]), shard(2, "c", &["c", "d"])], key_shard: vec![0, 1, 1, 0, 1] }
    }

    #[test]
    fn filters_keep_one_side() {
        let r = routes();
        assert_eq!(r.filter(&KeyFilter::ServedBy("b".into())).unwrap(), vec![0, 3]);
        assert_eq!(r.filter(&KeyFilter::NotServedBy("a".into())).unwrap(), vec![1, 2, 4]);
        assert!(r.filter(&KeyFilter::ServedBy("x".into())).is_err());
    }
}

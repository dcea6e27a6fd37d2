//! Client sessions that drive a cluster and record a history for the causal
//! checker: each session carries its own context, writes globally unique
//! values, reads keys of every shard, and records every outcome.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::common::key_path;
use causalkv::check::{FinalState, History, Op, OpKind, Outcome};

/// Per-request time limit of a session (a request never hangs past its
/// bound, so this only trips on frozen nodes).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Workload {
    pub nodes: Vec<String>,
    pub sessions: usize,
    pub ops_per_session: usize,
    pub keys: usize,
    /// Share of reads, in percent.
    pub read_percent: u64,
    /// Nodes each session may talk to (all when absent); lets a partition
    /// test keep clients on both sides.
    pub session_nodes: Vec<Vec<usize>>,
}

/// Shared progress, so fault schedules can follow the workload.
#[derive(Default)]
pub struct Progress {
    pub done: AtomicUsize,
}

/// xorshift64: enough randomness for choosing keys and nodes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn key_name(i: usize) -> String {
    format!("ck-{i}")
}

fn seed(session: usize) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7);
    (0x9E37_79B9_7F4A_7C15 ^ ((session as u64 + 1) * 0x1000_0000_0001) ^ now) | 1
}

impl Workload {
    /// Runs every session to completion and returns the merged history.
    pub async fn run(self, progress: Arc<Progress>) -> History {
        crate::common::tls_provider();
        let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("client");
        let this = Arc::new(self);
        let mut tasks = Vec::new();
        for s in 0..this.sessions {
            let (this, client, progress) = (this.clone(), client.clone(), progress.clone());
            tasks.push(tokio::spawn(async move { this.session(s, &client, &progress).await }));
        }
        let mut history = History::new();
        for t in tasks {
            for op in t.await.expect("session task") {
                history.record(op);
            }
        }
        history
    }

    async fn session(&self, s: usize, client: &reqwest::Client, progress: &Progress) -> Vec<Op> {
        let mut rng = Rng(seed(s));
        let nodes: Vec<usize> = self.session_nodes.get(s).cloned().unwrap_or_else(|| (0..self.nodes.len()).collect());
        let mut ctx = json!({});
        let mut ops = Vec::new();
        for n in 0..self.ops_per_session {
            let node = &self.nodes[nodes[rng.below(nodes.len() as u64) as usize]];
            let key = key_name(rng.below(self.keys as u64) as usize);
            let url = format!("http://{node}{}", key_path(&key));
            if rng.below(100) < self.read_percent {
                let answer = match client.get(&url).json(&json!({"causal-context": ctx})).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        r.json::<Value>().await.ok().map(|b| (status, b))
                    }
                    Err(_) => None,
                };
                let (outcome, value) = match answer {
                    Some((200, body)) => {
                        ctx = body["causal-context"].clone();
                        (Outcome::Ok, body["value"].as_str().map(String::from))
                    }
                    Some((404, body)) => {
                        ctx = body["causal-context"].clone();
                        (Outcome::Ok, None)
                    }
                    other => {
                        eprintln!("session {s}: GET {key} at {node} failed: {other:?}");
                        (Outcome::Failed, None)
                    }
                };
                ops.push(Op { session: s, kind: OpKind::Read { key, value }, outcome, context: ctx.clone(), group: None });
            } else {
                let value = format!("s{s}-w{n}");
                let acked = match client.put(&url).json(&json!({"value": value, "causal-context": ctx})).send().await {
                    Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                    Ok(r) => {
                        eprintln!("session {s}: PUT {key} at {node} failed: {} {:?}", r.status(), r.text().await);
                        None
                    }
                    Err(e) => {
                        eprintln!("session {s}: PUT {key} at {node} failed: {e}");
                        None
                    }
                };
                let outcome = match acked {
                    Some(body) => {
                        ctx = body["causal-context"].clone();
                        Outcome::Ok
                    }
                    None => Outcome::Failed,
                };
                ops.push(Op { session: s, kind: OpKind::Write { key, value }, outcome, context: ctx.clone(), group: None });
            }
            progress.done.fetch_add(1, Ordering::Relaxed);
        }
        ops
    }
}

/// Waits until every node answers the same for every key (no context), then
/// returns what they answer; gives up after `limit` and returns the last view.
pub async fn converge(nodes: &[String], keys: usize, limit: Duration) -> (FinalState, Duration) {
    crate::common::tls_provider();
    let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("client");
    let started = Instant::now();
    loop {
        let mut values = std::collections::BTreeMap::new();
        let mut agreed = true;
        for k in 0..keys {
            let key = key_name(k);
            let mut per_node = Vec::new();
            for node in nodes {
                let url = format!("http://{node}{}", key_path(&key));
                let v = match client.get(&url).send().await {
                    Ok(r) => r.json::<Value>().await.ok().and_then(|b| b["value"].as_str().map(String::from)),
                    Err(_) => None,
                };
                per_node.push(v);
            }
            agreed &= per_node.windows(2).all(|w| w[0] == w[1]);
            values.insert(key, per_node);
        }
        if agreed || started.elapsed() > limit {
            return (FinalState { values }, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

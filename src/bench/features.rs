//! `causalkv-bench features`: what snapshot reads and change feeds cost.
//!
//! - Snapshot read of `--keys-per-read` keys spread over the shards (one
//!   `POST /kv-store/read`) against the same keys read by as many
//!   sequential GETs, both through the Rust client (`causalkv::client`) at
//!   the same concurrency, so the ratio compares the two, not two clients.
//! - Watch delay: a write acknowledged to the client → its event at a
//!   watcher of another node (ms), writes paced at `--watch-rate` per second.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use causalkv::client::Client;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

use super::stats::{Latency, histogram};

#[derive(Serialize, Debug)]
pub struct FeatureReport {
    pub keys_per_read: usize,
    pub connections: usize,
    pub snapshot_reads_per_s: f64,
    pub snapshot_read: Latency,
    pub sequential_gets_per_s: f64,
    pub sequential_gets: Latency,
    pub watch_events: u64,
    pub watch_delay: Latency,
}

#[derive(Clone)]
pub struct FeatureArgs {
    pub nodes: Vec<String>,
    pub connections: usize,
    pub seconds: f64,
    pub keys_per_read: usize,
    pub watch_writes: usize,
    pub watch_rate: f64,
}

/// Reads of `keys_per_read` keys for `seconds` on `connections` tasks; each
/// read is one snapshot read or that many GETs.
async fn reads(client: &Client, args: &FeatureArgs, keys: &[String], snapshot: bool) -> (f64, Histogram<u64>) {
    let stop = Instant::now() + Duration::from_secs_f64(args.seconds);
    let hist = Arc::new(Mutex::new(histogram()));
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks: Vec<_> = (0..args.connections)
        .map(|t| {
            let (client, keys, hist, count) = (client.clone(), keys.to_vec(), hist.clone(), count.clone());
            let per = args.keys_per_read;
            tokio::spawn(async move {
                let session = client.session();
                let mut local = histogram();
                let mut i = t;
                while Instant::now() < stop {
                    let chosen: Vec<&str> = (0..per).map(|k| keys[(i * per + k) % keys.len()].as_str()).collect();
                    i += args_stride(t);
                    let started = Instant::now();
                    let ok = if snapshot {
                        session.get_many(&chosen).await.is_ok()
                    } else {
                        let mut ok = true;
                        for key in &chosen {
                            ok &= session.get_raw(key).await.is_ok();
                        }
                        ok
                    };
                    if ok {
                        let _ = local.record(started.elapsed().as_micros() as u64);
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                let _ = hist.lock().add(&local);
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let n = count.load(std::sync::atomic::Ordering::Relaxed);
    let h = hist.lock().clone();
    (n as f64 / args.seconds, h)
}

fn args_stride(t: usize) -> usize {
    7 + 2 * t
}

/// Write acknowledged → event received, for `watch_writes` writes.
async fn watch_delay(client: &Client, args: &FeatureArgs) -> Result<(u64, Histogram<u64>), String> {
    let watcher_node = args.nodes.last().cloned().unwrap_or_default();
    let http = reqwest::Client::builder().build().map_err(|e| e.to_string())?;
    let prefix = format!("wd{}-", std::process::id());
    let mut resp =
        http.get(format!("http://{watcher_node}/kv-store/watch?prefix={prefix}")).send().await.map_err(|e| format!("watch: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("watch answered {}", resp.status()));
    }
    let acked: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let received: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let writer = {
        let (client, acked, prefix) = (client.clone(), acked.clone(), prefix.clone());
        let (n, pause) = (args.watch_writes, Duration::from_secs_f64(1.0 / args.watch_rate.max(1.0)));
        tokio::spawn(async move {
            let session = client.session();
            for i in 0..n {
                let key = format!("{prefix}{i}");
                if session.put(&key, &i).await.is_ok() {
                    acked.lock().insert(key, Instant::now());
                }
                tokio::time::sleep(pause).await;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs_f64(args.watch_writes as f64 / args.watch_rate.max(1.0) + 10.0);
    let mut buf = String::new();
    while received.lock().len() < args.watch_writes && Instant::now() < deadline {
        let chunk = match tokio::time::timeout(Duration::from_secs(2), resp.chunk()).await {
            Ok(Ok(Some(c))) => c,
            Ok(_) => break,
            Err(_) => continue,
        };
        let now = Instant::now();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:"))
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim())
                && let Some(key) = v.get("key").and_then(|k| k.as_str())
            {
                received.lock().insert(key.to_owned(), now);
            }
        }
    }
    let _ = writer.await;
    let mut hist = histogram();
    let acked = acked.lock();
    for (key, at) in received.lock().iter() {
        // An event can come before the client has its ack: then 0.
        if let Some(ack) = acked.get(key) {
            let _ = hist.record(at.saturating_duration_since(*ack).as_micros() as u64);
        }
    }
    Ok((hist.len(), hist))
}

pub async fn run(args: FeatureArgs) -> Result<FeatureReport, String> {
    let client = Client::builder(&args.nodes).build().map_err(|e| e.to_string())?;
    // Keys spread over the shards: enough that every read names several shards.
    let keys: Vec<String> = (0..args.keys_per_read * 20).map(|i| format!("feat-{i}")).collect();
    let loader = client.session();
    for key in &keys {
        loader.put(key, &serde_json::json!({"pad": "x".repeat(200)})).await.map_err(|e| format!("load {key}: {e}"))?;
    }
    // Warm the connection pools once each way.
    let warm = FeatureArgs { seconds: 1.0, ..args.clone() };
    let _ = reads(&client, &warm, &keys, true).await;
    let _ = reads(&client, &warm, &keys, false).await;
    let (snap_rate, snap_hist) = reads(&client, &args, &keys, true).await;
    let (get_rate, get_hist) = reads(&client, &args, &keys, false).await;
    let (events, delay) = watch_delay(&client, &args).await?;
    Ok(FeatureReport {
        keys_per_read: args.keys_per_read,
        connections: args.connections,
        snapshot_reads_per_s: snap_rate,
        snapshot_read: Latency::of(&snap_hist),
        sequential_gets_per_s: get_rate,
        sequential_gets: Latency::of(&get_hist),
        watch_events: events,
        watch_delay: Latency::of(&delay),
    })
}

//! Visibility latency: the time from a PUT's acknowledgement by the shard's
//! master to the moment a GET without context at each worker returns it,
//! measured under a paced background write load.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::keyspace::{KeyChooser, Rng, key_into, value_bytes};
use super::session::{Outcome, Session, Spec, TargetKind};
use super::stats::{Latency, OpStats, Summary, histogram};

#[derive(Clone, Debug, Serialize)]
pub struct VisConfig {
    pub master: String,
    pub workers: Vec<String>,
    /// Background PUTs per second at the master (0: none).
    pub rate: f64,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub keys: u64,
    pub key_size: usize,
    pub value_size: usize,
    /// Pause between two probes.
    pub probe_interval: Duration,
    /// A probe not visible after this long counts as a timeout.
    pub probe_timeout: Duration,
    pub seed: u64,
}

#[derive(Serialize, Debug)]
pub struct WorkerVisibility {
    pub worker: String,
    pub timeouts: u64,
    #[serde(flatten)]
    pub latency: Latency,
}

#[derive(Serialize, Debug)]
pub struct VisReport {
    pub tool: &'static str,
    pub mode: &'static str,
    pub config: VisConfig,
    pub seconds: f64,
    /// Achieved background writes.
    pub background: Summary,
    pub probes: u64,
    /// All workers together.
    pub all: Latency,
    pub workers: Vec<WorkerVisibility>,
}

impl VisReport {
    pub fn table(&self) -> String {
        let mut out = format!(
            "visibility at master {} (background {:.0} PUT/s asked, {:.0}/s achieved, put p99 {:.3} ms), {} probes in {:.1} s\n",
            self.config.master, self.config.rate, self.background.throughput, self.background.latency.p99_ms, self.probes, self.seconds
        );
        out.push_str(&format!(
            "{:<22} {:>10} {:>10} {:>10} {:>10} {:>9}\n",
            "worker", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "timeouts"
        ));
        for w in &self.workers {
            out.push_str(&format!(
                "{:<22} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>9}\n",
                w.worker, w.latency.p50_ms, w.latency.p99_ms, w.latency.p999_ms, w.latency.max_ms, w.timeouts
            ));
        }
        out.push_str(&format!(
            "{:<22} {:>10.3} {:>10.3} {:>10.3} {:>10.3}\n",
            "all", self.all.p50_ms, self.all.p99_ms, self.all.p999_ms, self.all.max_ms
        ));
        out
    }
}

pub async fn run(cfg: VisConfig) -> Result<VisReport, String> {
    if cfg.workers.is_empty() {
        return Err("visibility needs at least one worker".into());
    }
    let spec = Spec::new(TargetKind::Causalkv, false, true, value_bytes(cfg.value_size, cfg.seed));
    let cfg = Arc::new(cfg);
    let start = Instant::now();
    let measure_start = start + cfg.warmup;
    let end = measure_start + cfg.duration;

    // Background writers, paced.
    let mut writers = Vec::new();
    if cfg.rate > 0.0 && cfg.connections > 0 {
        let period = Duration::from_secs_f64(cfg.connections as f64 / cfg.rate);
        for i in 0..cfg.connections {
            let cfg = cfg.clone();
            let mut s = Session::new(spec.clone(), &cfg.master);
            s.connect().await.map_err(|e| format!("connect {}: {e}", cfg.master))?;
            writers.push(tokio::spawn(async move {
                let chooser = KeyChooser::new(super::keyspace::Dist::Uniform, cfg.keys, 0.99);
                let mut rng = Rng::new(cfg.seed ^ (i as u64 + 1) << 20);
                let mut stats = OpStats::default();
                let mut key = Vec::new();
                // Stagger the connections over one period.
                let mut next = Instant::now() + period.mul_f64(i as f64 / cfg.connections as f64);
                while next < end {
                    tokio::time::sleep_until(next).await;
                    key_into(&mut key, "k", chooser.next(&mut rng), cfg.key_size);
                    let t0 = Instant::now();
                    let outcome = s.put(&key).await;
                    if t0 >= measure_start {
                        stats.record(&outcome, t0.elapsed());
                    }
                    next += period;
                    // Behind schedule (the server is slower than the rate): no burst to catch up.
                    let now = Instant::now();
                    if next + period < now {
                        next = now;
                    }
                }
                stats
            }));
        }
    }

    // Probes: a fresh key each, written at the master with no context, then
    // polled at every worker with GETs without context until found.
    let mut probe_writer = Session::new(spec.clone(), &cfg.master);
    probe_writer.connect().await.map_err(|e| format!("connect {}: {e}", cfg.master))?;
    let mut readers = Vec::new();
    for w in &cfg.workers {
        let mut r = Session::new(spec.clone(), w);
        r.connect().await.map_err(|e| format!("connect {w}: {e}"))?;
        readers.push(r);
    }
    let mut hists: Vec<_> = cfg.workers.iter().map(|_| histogram()).collect();
    let mut timeouts = vec![0u64; cfg.workers.len()];
    let mut all = histogram();
    let mut probes = 0u64;
    let mut seq = 0u64;
    let mut key = Vec::new();
    let prefix = format!("v{:x}", cfg.seed & 0xfff);
    while Instant::now() < end {
        tokio::time::sleep(cfg.probe_interval).await;
        seq += 1;
        key_into(&mut key, &prefix, seq, cfg.key_size);
        probe_writer.ctx = b"{}".to_vec();
        if probe_writer.put(&key).await != Outcome::Ok {
            continue;
        }
        let acked = Instant::now();
        let key_ref = &key;
        let probe_timeout = cfg.probe_timeout;
        let polls = readers.iter_mut().map(|r| async move {
            loop {
                match r.get_without_context(key_ref).await {
                    Outcome::Ok => return Some(acked.elapsed()),
                    _ if acked.elapsed() > probe_timeout => return None,
                    _ => {}
                }
            }
        });
        let results = futures_util::future::join_all(polls).await;
        if acked < measure_start {
            continue;
        }
        probes += 1;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Some(d) => {
                    let us = (d.as_micros() as u64).max(1);
                    hists[i].saturating_record(us);
                    all.saturating_record(us);
                }
                None => timeouts[i] += 1,
            }
        }
    }
    let mut background = OpStats::default();
    for w in writers {
        background.merge(&w.await.map_err(|e| format!("writer failed: {e}"))?);
    }
    let seconds = cfg.duration.as_secs_f64();
    Ok(VisReport {
        tool: "causalkv-bench",
        mode: "visibility",
        config: (*cfg).clone(),
        seconds,
        background: background.summary(seconds),
        probes,
        all: Latency::of(&all),
        workers: cfg
            .workers
            .iter()
            .zip(hists.iter().zip(timeouts))
            .map(|(w, (h, t))| WorkerVisibility { worker: w.clone(), timeouts: t, latency: Latency::of(h) })
            .collect(),
    })
}

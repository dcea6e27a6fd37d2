//! Latency histograms (HDR, microseconds) and their summaries.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histograms hold (60 s, in µs); larger ones saturate.
const MAX_MICROS: u64 = 60_000_000;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

/// Counters and latencies of one kind of operation.
#[derive(Clone)]
pub struct OpStats {
    pub hist: Histogram<u64>,
    pub ok: u64,
    pub misses: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats { hist: histogram(), ok: 0, misses: 0, errors: 0, error_samples: Vec::new() }
    }
}

impl OpStats {
    pub fn record(&mut self, outcome: &super::session::Outcome, latency: std::time::Duration) {
        use super::session::Outcome;
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Miss => self.misses += 1,
            Outcome::Error(e) => {
                self.errors += 1;
                if self.error_samples.len() < 5 {
                    self.error_samples.push(e.clone());
                }
                // Failed requests are counted, not timed.
                return;
            }
        }
        self.hist.saturating_record((latency.as_micros() as u64).max(1));
    }

    pub fn merge(&mut self, other: &OpStats) {
        self.hist.add(&other.hist).expect("histograms with the same bounds");
        self.ok += other.ok;
        self.misses += other.misses;
        self.errors += other.errors;
        for e in &other.error_samples {
            if self.error_samples.len() < 10 {
                self.error_samples.push(e.clone());
            }
        }
    }

    pub fn summary(&self, seconds: f64) -> Summary {
        let ops = self.ok + self.misses;
        Summary {
            ops,
            ok: self.ok,
            misses: self.misses,
            errors: self.errors,
            throughput: if seconds > 0.0 { ops as f64 / seconds } else { 0.0 },
            latency: Latency::of(&self.hist),
        }
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct Latency {
    pub samples: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Latency { samples: 0, mean_ms: 0.0, p50_ms: 0.0, p99_ms: 0.0, p999_ms: 0.0, max_ms: 0.0 };
        }
        Latency {
            samples: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct Summary {
    /// Successful operations (hits and misses).
    pub ops: u64,
    pub ok: u64,
    pub misses: u64,
    pub errors: u64,
    /// Successful operations per second of the measured window.
    pub throughput: f64,
    #[serde(flatten)]
    pub latency: Latency,
}

/// Fixed-width table of summaries: `(row name, summary)`.
pub fn table(title: &str, rows: &[(String, &Summary)]) -> String {
    let mut out = String::new();
    out.push_str(title);
    out.push('\n');
    out.push_str(&format!(
        "{:<10} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}\n",
        "op", "ops/s", "mean ms", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "misses", "errors"
    ));
    for (name, s) in rows {
        out.push_str(&format!(
            "{:<10} {:>12.0} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>8} {:>8}\n",
            name,
            s.throughput,
            s.latency.mean_ms,
            s.latency.p50_ms,
            s.latency.p99_ms,
            s.latency.p999_ms,
            s.latency.max_ms,
            s.misses,
            s.errors
        ));
    }
    out
}

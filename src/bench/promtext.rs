//! Scraping causalkv's `/metrics` (Prometheus text) for the hold-back share.

use serde::Serialize;

use super::http::HttpConn;

/// The counters the hold-back measurement needs, summed over nodes.
#[derive(Default, Clone, Copy, Debug, Serialize)]
pub struct HoldbackCounters {
    pub get_requests: f64,
    pub holdback_waits: f64,
    pub holdback_unsatisfied: f64,
    pub holdback_seconds_sum: f64,
    pub holdback_seconds_count: f64,
}

impl HoldbackCounters {
    pub fn add(&mut self, o: &HoldbackCounters) {
        self.get_requests += o.get_requests;
        self.holdback_waits += o.holdback_waits;
        self.holdback_unsatisfied += o.holdback_unsatisfied;
        self.holdback_seconds_sum += o.holdback_seconds_sum;
        self.holdback_seconds_count += o.holdback_seconds_count;
    }

    pub fn delta(&self, before: &HoldbackCounters) -> HoldbackCounters {
        HoldbackCounters {
            get_requests: self.get_requests - before.get_requests,
            holdback_waits: self.holdback_waits - before.holdback_waits,
            holdback_unsatisfied: self.holdback_unsatisfied - before.holdback_unsatisfied,
            holdback_seconds_sum: self.holdback_seconds_sum - before.holdback_seconds_sum,
            holdback_seconds_count: self.holdback_seconds_count - before.holdback_seconds_count,
        }
    }
}

/// Sum of the samples of metric `name` whose labels contain `label` (if any).
pub fn sum(text: &str, name: &str, label: Option<&str>) -> f64 {
    let mut total = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(p) => p,
            None => continue,
        };
        let (metric, labels) = match series.split_once('{') {
            Some((m, l)) => (m, l),
            None => (series, ""),
        };
        if metric != name || label.is_some_and(|l| !labels.contains(l)) {
            continue;
        }
        total += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    total
}

pub fn holdback_counters(text: &str) -> HoldbackCounters {
    HoldbackCounters {
        get_requests: sum(text, "causalkv_requests_total", Some("op=\"get\"")),
        holdback_waits: sum(text, "causalkv_holdback_waits_total", None),
        holdback_unsatisfied: sum(text, "causalkv_holdback_unsatisfied_total", None),
        holdback_seconds_sum: sum(text, "causalkv_holdback_seconds_sum", None),
        holdback_seconds_count: sum(text, "causalkv_holdback_seconds_count", None),
    }
}

/// Scrapes every node and sums their counters.
pub async fn scrape(nodes: &[String]) -> std::io::Result<HoldbackCounters> {
    let mut total = HoldbackCounters::default();
    for node in nodes {
        let mut conn = HttpConn::connect(node).await?;
        let status = conn.request("GET", "/metrics", None).await?;
        if status != 200 {
            return Err(std::io::Error::other(format!("{node}/metrics answered {status}")));
        }
        total.add(&holdback_counters(&String::from_utf8_lossy(&conn.body)));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_labelled_series() {
        let text = "# TYPE x counter\ncausalkv_requests_total{op=\"get\",status=\"200\"} 3\n\
                    causalkv_requests_total{op=\"get\",status=\"404\"} 2\ncausalkv_requests_total{op=\"put\",status=\"200\"} 7\n\
                    causalkv_holdback_waits_total 4\n";
        let c = super::holdback_counters(text);
        assert_eq!(c.get_requests, 5.0);
        assert_eq!(c.holdback_waits, 4.0);
    }
}

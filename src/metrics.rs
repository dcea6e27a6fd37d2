//! Prometheus metrics (served at `/metrics` in the text format).

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub op: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

/// A gossip message kind (`replicate`, `pull`, `snapshot`, `heartbeat`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// Why a Mycelium message was dropped.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// The path of an internal HTTP endpoint.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    pub path: String,
}

/// Operations and statuses of the `requests` counters kept at hand.
const COMMON_OPS: [&str; 3] = ["get", "put", "delete"];
const COMMON_STATUSES: [u16; 5] = [200, 201, 404, 400, 503];

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabel, Counter>,
    /// The `requests` counters of the common (op, status) pairs, each
    /// fetched from the family on first use (so `/metrics` shows the same
    /// series as before): `get_or_create` hashes the label and takes a lock
    /// on every call.
    common_requests: [[OnceLock<Counter>; COMMON_STATUSES.len()]; COMMON_OPS.len()],
    pub request_seconds: Histogram,
    pub forwarded: Counter,
    /// The writes among `forwarded` (a client that sends writes to the master needs none).
    pub forwarded_writes: Counter,
    /// Snapshot reads answered, their second rounds (shards), and the reads refused after retrying.
    pub snapshot_reads: Counter,
    pub snapshot_second_rounds: Counter,
    pub snapshot_reads_failed: Counter,
    /// Change-feed events sent to watchers, and watchers cut off for being slow.
    pub watch_events: Counter,
    pub watchers_cut_off: Counter,
    /// Forwarded writes that got no answer (maybe executed): answered 503, never retried elsewhere.
    pub ambiguous_forwards: Counter,
    pub holdback_waits: Counter,
    pub holdback_unsatisfied: Counter,
    pub holdback_seconds: Histogram,
    /// Write (at its origin) to applied here, for pushed records.
    pub visibility_seconds: Histogram,
    pub replication_lag: Family<PeerLabel, Gauge>,
    pub replication_batches: Counter,
    pub replication_failures: Counter,
    /// Replication streams this node opened to its peers (one per peer while healthy).
    pub replication_streams_opened: Counter,
    /// Times a replication stream had its window full of unacknowledged batches.
    pub replication_window_full: Counter,
    pub replicated_records: Counter,
    pub live_keys: Gauge,
    pub pending_records: Gauge,
    pub wal_syncs: Gauge,
    pub wal_synced_entries: Gauge,
    pub wal_checkpoints: Gauge,
    pub wal_replayed_entries: Gauge,
    pub pending_dropped: Counter,
    pub snapshots_installed: Counter,
    pub log_limit_hits: Counter,
    pub log_entries_compacted: Counter,
    pub tombstones_purged: Counter,
    pub auth_rejected: Counter,
    /// Admin requests (view-change, join) refused for a missing or wrong token.
    pub admin_rejected: Counter,
    /// Internal requests a peer refused (or answered unsigned), per peer.
    pub peer_refusals: Family<PeerLabel, Counter>,
    /// Internal requests waiting for memory to read their bodies.
    pub internal_body_waits: Counter,
    pub clock_skew_rejected: Counter,
    pub view_change_records_sent: Counter,
    pub expired_writes: Counter,
    pub internal_http_requests: Family<PathLabel, Counter>,
    pub mycelium_messages_sent: Counter,
    pub mycelium_messages_received: Counter,
    pub mycelium_requests_sent: Family<KindLabel, Counter>,
    pub mycelium_requests_received: Family<KindLabel, Counter>,
    pub mycelium_timeouts: Family<KindLabel, Counter>,
    pub mycelium_stray_replies: Counter,
    pub mycelium_duplicates: Counter,
    pub mycelium_rejected: Family<ReasonLabel, Counter>,
    pub mycelium_daemon_errors: Counter,
    /// Request attempts over Mycelium whose reply did not come in the
    /// attempt's time (request or reply lost, or late), per peer.
    pub mycelium_lost: Family<PeerLabel, Counter>,
    /// Messages padded so the daemon's chunking does not drop them.
    pub mycelium_padded: Counter,
    /// Conflicts begun: a peer met running another view at this epoch.
    pub view_conflicts: Counter,
    /// Peers currently known to run another view at this epoch (set when
    /// `/metrics` is read).
    pub view_conflict_peers: Gauge,
    /// Client connections open now (`crate::server`).
    pub open_connections: Gauge,
    /// Connections refused because MAX_CONNECTIONS were open.
    pub connections_refused: Counter,
    /// Connections closed because a request's headers came too slowly.
    pub header_timeouts: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("causalkv");
        let m = Metrics {
            requests: Family::default(),
            common_requests: Default::default(),
            request_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            forwarded: Counter::default(),
            forwarded_writes: Counter::default(),
            snapshot_reads: Counter::default(),
            snapshot_second_rounds: Counter::default(),
            snapshot_reads_failed: Counter::default(),
            watch_events: Counter::default(),
            watchers_cut_off: Counter::default(),
            ambiguous_forwards: Counter::default(),
            holdback_waits: Counter::default(),
            holdback_unsatisfied: Counter::default(),
            holdback_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            visibility_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            replication_lag: Family::default(),
            replication_batches: Counter::default(),
            replication_failures: Counter::default(),
            replication_streams_opened: Counter::default(),
            replication_window_full: Counter::default(),
            replicated_records: Counter::default(),
            live_keys: Gauge::default(),
            pending_records: Gauge::default(),
            wal_syncs: Gauge::default(),
            wal_synced_entries: Gauge::default(),
            wal_checkpoints: Gauge::default(),
            wal_replayed_entries: Gauge::default(),
            pending_dropped: Counter::default(),
            snapshots_installed: Counter::default(),
            log_limit_hits: Counter::default(),
            log_entries_compacted: Counter::default(),
            tombstones_purged: Counter::default(),
            auth_rejected: Counter::default(),
            admin_rejected: Counter::default(),
            peer_refusals: Family::default(),
            internal_body_waits: Counter::default(),
            clock_skew_rejected: Counter::default(),
            view_change_records_sent: Counter::default(),
            expired_writes: Counter::default(),
            internal_http_requests: Family::default(),
            mycelium_messages_sent: Counter::default(),
            mycelium_messages_received: Counter::default(),
            mycelium_requests_sent: Family::default(),
            mycelium_requests_received: Family::default(),
            mycelium_timeouts: Family::default(),
            mycelium_stray_replies: Counter::default(),
            mycelium_duplicates: Counter::default(),
            mycelium_rejected: Family::default(),
            mycelium_daemon_errors: Counter::default(),
            mycelium_lost: Family::default(),
            mycelium_padded: Counter::default(),
            view_conflicts: Counter::default(),
            view_conflict_peers: Gauge::default(),
            open_connections: Gauge::default(),
            connections_refused: Counter::default(),
            header_timeouts: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "Client requests by operation and status", m.requests.clone());
        registry.register("request_seconds", "Client request latency", m.request_seconds.clone());
        registry.register("forwarded", "Requests forwarded to another node", m.forwarded.clone());
        registry.register("forwarded_writes", "Writes (PUT, DELETE) forwarded to another node", m.forwarded_writes.clone());
        registry.register("snapshot_reads", "Snapshot reads answered", m.snapshot_reads.clone());
        registry.register("snapshot_second_rounds", "Second rounds of snapshot reads (one per shard)", m.snapshot_second_rounds.clone());
        registry.register("snapshot_reads_failed", "Snapshot reads refused after their retry", m.snapshot_reads_failed.clone());
        registry.register("watch_events", "Change-feed events sent to watchers", m.watch_events.clone());
        registry.register("watchers_cut_off", "Watchers cut off because they read too slowly", m.watchers_cut_off.clone());
        registry.register(
            "ambiguous_forwards",
            "Forwarded writes without an answer (maybe executed): answered 503, not retried at another replica",
            m.ambiguous_forwards.clone(),
        );
        registry.register("holdback_waits", "Requests held back for causal dependencies", m.holdback_waits.clone());
        registry.register("holdback_unsatisfied", "Held-back requests not satisfied locally in time", m.holdback_unsatisfied.clone());
        registry.register("holdback_seconds", "Time requests spent held back", m.holdback_seconds.clone());
        registry.register(
            "visibility_seconds",
            "From a write at its origin to its application at this replica (pushed records; origin's HLC wall clock)",
            m.visibility_seconds.clone(),
        );
        registry.register("replication_lag_records", "Own durable writes not yet acknowledged, per peer", m.replication_lag.clone());
        registry.register("replication_batches", "Replication batches acknowledged", m.replication_batches.clone());
        registry.register("replication_failures", "Replication pushes that failed", m.replication_failures.clone());
        registry.register("replication_streams_opened", "Replication streams opened to peers", m.replication_streams_opened.clone());
        registry.register(
            "replication_window_full",
            "Times a replication stream waited with its window full of unacknowledged batches",
            m.replication_window_full.clone(),
        );
        registry.register("replicated_records", "Remote records applied", m.replicated_records.clone());
        registry.register("live_keys", "Live keys stored at this node", m.live_keys.clone());
        registry.register("pending_records", "Records waiting for predecessors", m.pending_records.clone());
        registry.register("wal_syncs", "Write-ahead log write+fdatasync rounds since start (group commits)", m.wal_syncs.clone());
        registry.register(
            "wal_synced_entries",
            "Write-ahead log entries made durable since start (divided by wal_syncs: the group-commit batch size)",
            m.wal_synced_entries.clone(),
        );
        registry.register(
            "wal_checkpoints",
            "Checkpoints (sled flushed, older log segments deleted) since start",
            m.wal_checkpoints.clone(),
        );
        registry.register(
            "wal_replayed_entries",
            "Write-ahead log entries replayed at start-up (non-zero after a crash)",
            m.wal_replayed_entries.clone(),
        );
        registry.register("pending_dropped", "Records dropped because the pending queue was full", m.pending_dropped.clone());
        registry.register("snapshots_installed", "Shard snapshots fetched because logs were compacted", m.snapshots_installed.clone());
        registry.register("log_limit_hits", "Times a per-origin log hit its size limit", m.log_limit_hits.clone());
        registry.register("log_entries_compacted", "Log entries dropped after every replica applied them", m.log_entries_compacted.clone());
        registry.register("tombstones_purged", "Tombstones removed once stable", m.tombstones_purged.clone());
        registry.register("auth_rejected", "Internal requests refused by authentication", m.auth_rejected.clone());
        registry.register(
            "admin_rejected",
            "View-change and join requests refused for a missing or wrong bearer token",
            m.admin_rejected.clone(),
        );
        registry.register(
            "peer_refusals",
            "Internal requests a peer refused or answered without a valid signature, per peer",
            m.peer_refusals.clone(),
        );
        registry.register(
            "internal_body_waits",
            "Internal requests that waited for the internal body memory budget",
            m.internal_body_waits.clone(),
        );
        registry.register(
            "clock_skew_rejected",
            "Remote records refused because their HLC was more than MAX_CLOCK_SKEW_MS ahead of this node's clock",
            m.clock_skew_rejected.clone(),
        );
        registry.register(
            "view_change_records_sent",
            "Records sent to nodes that gained them in view changes",
            m.view_change_records_sent.clone(),
        );
        registry.register(
            "expired_writes",
            "Forwarded writes dropped because the forwarding node had given up on them",
            m.expired_writes.clone(),
        );
        registry.register("internal_http_requests", "Internal HTTP requests received, by endpoint", m.internal_http_requests.clone());
        registry.register("mycelium_messages_sent", "Messages handed to the Mycelium daemon", m.mycelium_messages_sent.clone());
        registry.register("mycelium_messages_received", "Messages popped from the Mycelium daemon", m.mycelium_messages_received.clone());
        registry.register("mycelium_requests_sent", "Gossip requests sent over Mycelium, by kind", m.mycelium_requests_sent.clone());
        registry.register(
            "mycelium_requests_received",
            "Gossip requests received over Mycelium and handled, by kind",
            m.mycelium_requests_received.clone(),
        );
        registry.register("mycelium_timeouts", "Gossip requests over Mycelium that got no reply in time", m.mycelium_timeouts.clone());
        registry.register(
            "mycelium_stray_replies",
            "Mycelium replies nobody waited for (late or duplicate)",
            m.mycelium_stray_replies.clone(),
        );
        registry.register("mycelium_duplicates", "Mycelium frames received twice (dropped)", m.mycelium_duplicates.clone());
        registry.register("mycelium_rejected", "Mycelium messages dropped, by reason", m.mycelium_rejected.clone());
        registry.register("mycelium_daemon_errors", "Failed calls to the Mycelium daemon's API", m.mycelium_daemon_errors.clone());
        registry.register(
            "mycelium_lost",
            "Gossip requests over Mycelium whose reply did not come within the attempt's time (then resent with a new id), per peer",
            m.mycelium_lost.clone(),
        );
        registry.register(
            "mycelium_padded",
            "Mycelium messages padded to a length the daemon's chunking delivers",
            m.mycelium_padded.clone(),
        );
        registry.register(
            "view_conflicts",
            "Peers met running another view at this node's epoch (two views at one epoch; key requests refused meanwhile)",
            m.view_conflicts.clone(),
        );
        registry.register(
            "view_conflict_peers",
            "Peers currently running another view at this node's epoch",
            m.view_conflict_peers.clone(),
        );
        registry.register("open_connections", "Client connections open now", m.open_connections.clone());
        registry.register("connections_refused", "Connections refused because MAX_CONNECTIONS were open", m.connections_refused.clone());
        registry.register("header_timeouts", "Connections closed because request headers came too slowly", m.header_timeouts.clone());
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts one client request by operation and answer status.
    /// Key requests answered, by operation (the common statuses: 200, 201,
    /// 404, 400, 503).
    pub fn requests_by_op(&self) -> std::collections::BTreeMap<&'static str, u64> {
        COMMON_OPS
            .iter()
            .zip(&self.common_requests)
            .map(|(op, by_status)| (*op, by_status.iter().filter_map(|c| c.get()).map(Counter::get).sum()))
            .collect()
    }

    pub fn count_request(&self, op: &'static str, status: u16) {
        let o = COMMON_OPS.iter().position(|c| *c == op);
        let s = COMMON_STATUSES.iter().position(|c| *c == status);
        match (o, s) {
            (Some(o), Some(s)) => {
                self.common_requests[o][s].get_or_init(|| self.requests.get_or_create(&RequestLabel { op, status }).clone()).inc();
            }
            _ => {
                self.requests.get_or_create(&RequestLabel { op, status }).inc();
            }
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counters_share_the_family_series() {
        let m = Metrics::default();
        assert!(!m.render().contains("causalkv_requests_total{"), "no series before the first request");
        m.count_request("get", 200);
        m.count_request("get", 200);
        m.count_request("put", 418);
        let text = m.render();
        assert!(text.contains(r#"causalkv_requests_total{op="get",status="200"} 2"#), "{text}");
        assert!(text.contains(r#"causalkv_requests_total{op="put",status="418"} 1"#), "{text}");
        assert!(!text.contains(r#"status="201""#), "{text}");
    }
}

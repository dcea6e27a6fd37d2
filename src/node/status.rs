//! What a node says about itself (`GET /kv-store/status`): its place in the
//! view (shard, role), health, key count, applied clock, how far each other
//! replica of its shard is behind it, and the view changes it has seen.
//! Pure reads of node state; the HTTP endpoints (one node, and the whole
//! cluster gathered from every node) live in `api::status`.
//!
//! Replication lag is reported by the replica that has the writes: each
//! replica of a shard compares its own applied clock with the clock every
//! other replica last acknowledged (replication acks, anti-entropy), so the
//! shard's master tells how far each worker is behind — also when that
//! worker is frozen and cannot answer for itself.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::Node;
use crate::causal::Clock;
use crate::shard::ShardId;

/// View changes remembered for the status (since the process started).
const VIEW_HISTORY: usize = 10;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct NodeStatus {
    pub node: String,
    pub epoch: u64,
    pub view: Vec<String>,
    #[serde(rename = "repl-factor")]
    pub repl_factor: usize,
    /// `None` for a node outside the view (a proxy).
    #[serde(rename = "shard-id")]
    pub shard_id: Option<ShardId>,
    /// `master`, `worker` or `proxy`, by this node's failure detector.
    pub role: String,
    /// `ok`, `degraded` (a peer refuses this node's internal traffic),
    /// `view-conflict`, or `starting` (catching up after a start).
    pub health: String,
    #[serde(rename = "key-count")]
    pub key_count: u64,
    /// Writes applied here, per origin.
    pub applied: Clock,
    /// Every shard of the view with its replicas and the master this node
    /// would send the shard's writes to.
    pub shards: Vec<ShardStatus>,
    /// The other replicas of this node's shard, as this node sees them.
    pub replicas: Vec<ReplicaStatus>,
    #[serde(rename = "view-changes")]
    pub view_changes: Vec<ViewChangeRecord>,
    /// Key requests answered since start, by operation.
    pub requests: BTreeMap<String, u64>,
    /// Key requests this node passed to another node, and how many of them were writes.
    pub forwarded: u64,
    #[serde(rename = "forwarded-writes")]
    pub forwarded_writes: u64,
    #[serde(rename = "uptime-ms")]
    pub uptime_ms: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ShardStatus {
    #[serde(rename = "shard-id")]
    pub shard_id: ShardId,
    pub master: String,
    pub replicas: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ReplicaStatus {
    pub node: String,
    /// Heard from within the failure detector's bound.
    pub alive: bool,
    /// Writes applied here that the replica has not acknowledged; `None`
    /// until it has acknowledged anything in this epoch.
    #[serde(rename = "behind-writes")]
    pub behind_writes: Option<u64>,
    /// Age of the oldest write applied here that it has not acknowledged
    /// (0 when it has them all; `None` when unknown).
    #[serde(rename = "behind-ms")]
    pub behind_ms: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ViewChangeRecord {
    pub epoch: u64,
    pub view: Vec<String>,
    #[serde(rename = "repl-factor")]
    pub repl_factor: usize,
    /// When this node installed it (unix ms, this node's clock).
    #[serde(rename = "at-ms")]
    pub at_ms: u64,
}

/// The view changes a node installed, newest last, bounded.
#[derive(Default)]
pub struct ViewHistory(parking_lot::Mutex<VecDeque<ViewChangeRecord>>);

impl ViewHistory {
    pub fn record(&self, record: ViewChangeRecord) {
        let mut h = self.0.lock();
        if h.back().is_some_and(|last| last.epoch == record.epoch && last.view == record.view) {
            return;
        }
        if h.len() == VIEW_HISTORY {
            h.pop_front();
        }
        h.push_back(record);
    }

    pub fn list(&self) -> Vec<ViewChangeRecord> {
        self.0.lock().iter().cloned().collect()
    }
}

impl Node {
    /// `ok`, `degraded`, `view-conflict` or `starting`.
    pub fn health(&self) -> &'static str {
        if !self.view_conflicts().is_empty() {
            "view-conflict"
        } else if !self.refusals.failing().is_empty() {
            "degraded"
        } else if !self.is_ready() {
            "starting"
        } else {
            "ok"
        }
    }

    pub fn status(&self) -> NodeStatus {
        let cur = self.current();
        let map = &cur.map;
        let shard_id = map.my_shard();
        let shards: Vec<ShardStatus> = map
            .shard_ids()
            .into_iter()
            .map(|id| {
                let replicas = map.replicas(id);
                let master = self.detector.alive_first(replicas).first().map(|m| m.to_string()).unwrap_or_default();
                ShardStatus { shard_id: id, master, replicas: replicas.to_vec() }
            })
            .collect();
        let role = match shard_id.and_then(|id| shards.iter().find(|s| s.shard_id == id)) {
            None => "proxy",
            Some(s) if s.master == self.me() => "master",
            Some(_) => "worker",
        };
        let replicas = cur
            .gossip
            .replica_lags()
            .into_iter()
            .map(|lag| ReplicaStatus {
                alive: self.detector.is_alive(&lag.peer),
                node: lag.peer,
                behind_writes: lag.behind_writes,
                behind_ms: lag.behind_ms,
            })
            .collect();
        NodeStatus {
            node: self.me().to_owned(),
            epoch: map.epoch(),
            view: map.view.nodes.clone(),
            repl_factor: map.view.repl_factor,
            shard_id,
            role: role.to_owned(),
            health: self.health().to_owned(),
            key_count: if shard_id.is_some() { self.store.live_count() } else { 0 },
            applied: self.store.applied(),
            shards,
            replicas,
            view_changes: self.view_history.list(),
            requests: self.metrics.requests_by_op().into_iter().map(|(op, n)| (op.to_owned(), n)).collect(),
            forwarded: self.metrics.forwarded.get(),
            forwarded_writes: self.metrics.forwarded_writes.get(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}

/// A replica is shown as behind once it lacks writes this old (ms), or
/// lacks any while its master no longer hears from it.
pub const BEHIND_AFTER_MS: u64 = 500;

/// The whole cluster as one node gathered it: every node's own status (or
/// why it could not be had) and, per shard, each replica's state.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ClusterStatus {
    /// The node that gathered it.
    pub asked: String,
    pub epoch: u64,
    pub view: Vec<String>,
    #[serde(rename = "repl-factor")]
    pub repl_factor: usize,
    pub shards: Vec<ShardReport>,
    pub nodes: Vec<NodeReport>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct NodeReport {
    pub node: String,
    /// The node's own status; `None` when it did not answer in time.
    pub status: Option<NodeStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ShardReport {
    #[serde(rename = "shard-id")]
    pub shard_id: ShardId,
    pub master: String,
    pub replicas: Vec<ReplicaReport>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ReplicaReport {
    pub node: String,
    /// `master` or `worker`, by the gathering node's view of the shard.
    pub role: String,
    /// `ok`, `behind` (lacks writes the master has: see [`BEHIND_AFTER_MS`]),
    /// `unreachable` (did not answer), or the node's own health when it is
    /// not `ok` (`degraded`, `view-conflict`, `starting`).
    pub state: String,
    pub reachable: bool,
    #[serde(rename = "key-count")]
    pub key_count: Option<u64>,
    pub epoch: Option<u64>,
    /// As the shard's master (or, when it does not answer, another replica) reports it.
    #[serde(rename = "behind-writes")]
    pub behind_writes: Option<u64>,
    #[serde(rename = "behind-ms")]
    pub behind_ms: Option<u64>,
}

impl ClusterStatus {
    /// Puts the statuses of every node of `asked`'s view together.
    /// `others` holds what each other node answered, or why it did not.
    pub fn gather(asked: NodeStatus, others: Vec<(String, Result<NodeStatus, String>)>) -> ClusterStatus {
        let mut reports: Vec<NodeReport> = vec![NodeReport { node: asked.node.clone(), status: Some(asked.clone()), error: None }];
        for (node, answer) in others {
            match answer {
                Ok(status) => reports.push(NodeReport { node, status: Some(status), error: None }),
                Err(error) => reports.push(NodeReport { node, status: None, error: Some(error) }),
            }
        }
        let status_of = |node: &str| reports.iter().find(|r| r.node == node).and_then(|r| r.status.as_ref());
        let shards = asked
            .shards
            .iter()
            .map(|shard| {
                // The lag of a replica as the master reports it, else as the
                // replica that reports it furthest behind.
                let reporters: Vec<&NodeStatus> =
                    std::iter::once(shard.master.as_str()).chain(shard.replicas.iter().map(String::as_str)).filter_map(status_of).collect();
                let replicas = shard
                    .replicas
                    .iter()
                    .map(|node| {
                        let own = status_of(node);
                        let is_master = *node == shard.master;
                        let lag = if is_master {
                            None
                        } else {
                            reporters.iter().filter(|r| r.node != *node).find_map(|r| r.replicas.iter().find(|l| l.node == *node))
                        };
                        let behind_writes = if is_master { Some(0) } else { lag.and_then(|l| l.behind_writes) };
                        let behind_ms = if is_master { Some(0) } else { lag.and_then(|l| l.behind_ms) };
                        let lagging = behind_writes.unwrap_or(0) > 0
                            && (behind_ms.is_none_or(|ms| ms >= BEHIND_AFTER_MS) || lag.is_some_and(|l| !l.alive) || own.is_none());
                        let state = match own {
                            _ if lagging => "behind".to_owned(),
                            None => "unreachable".to_owned(),
                            Some(s) if s.health != "ok" => s.health.clone(),
                            Some(_) => "ok".to_owned(),
                        };
                        ReplicaReport {
                            node: node.clone(),
                            role: if is_master { "master" } else { "worker" }.to_owned(),
                            state,
                            reachable: own.is_some(),
                            key_count: own.map(|s| s.key_count),
                            epoch: own.map(|s| s.epoch),
                            behind_writes,
                            behind_ms,
                        }
                    })
                    .collect();
                ShardReport { shard_id: shard.shard_id, master: shard.master.clone(), replicas }
            })
            .collect();
        ClusterStatus {
            asked: asked.node.clone(),
            epoch: asked.epoch,
            view: asked.view.clone(),
            repl_factor: asked.repl_factor,
            shards,
            nodes: reports,
        }
    }
}

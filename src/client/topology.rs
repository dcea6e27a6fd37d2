//! What a client knows of the cluster: the view, its shard map (the same
//! placement the nodes use) and each shard's master, learned from a node's
//! `GET /kv-store/status` and learned again when an answer shows it is
//! stale (a newer epoch, a misroute, a write served by another node).

use std::collections::HashMap;

use crate::node::status::NodeStatus;
use crate::shard::{ShardId, ShardMap, View};

use super::Error;

#[derive(Debug)]
pub struct Topology {
    pub map: ShardMap,
    masters: HashMap<ShardId, String>,
}

impl Topology {
    pub fn from_status(status: &NodeStatus) -> Result<Self, Error> {
        let view = View::new(status.view.clone(), status.repl_factor, status.epoch)
            .map_err(|e| Error::Protocol(format!("a node reported a view the client cannot use: {e}")))?;
        // The client is in no shard: it only asks the map where keys live.
        let map = ShardMap::new(view, "");
        let masters = status.shards.iter().map(|s| (s.shard_id, s.master.clone())).collect();
        Ok(Self { map, masters })
    }

    pub fn epoch(&self) -> u64 {
        self.map.epoch()
    }

    pub fn shard_of(&self, key: &str) -> ShardId {
        self.map.shard_of(key)
    }

    pub fn replicas(&self, shard: ShardId) -> &[String] {
        self.map.replicas(shard)
    }

    /// The master the node asked named, else the shard's first replica.
    pub fn master(&self, shard: ShardId) -> &str {
        match self.masters.get(&shard) {
            Some(m) if self.replicas(shard).contains(m) => m,
            _ => self.replicas(shard).first().map(String::as_str).unwrap_or_default(),
        }
    }

    /// Every node of the view.
    pub fn nodes(&self) -> &[String] {
        &self.map.view.nodes
    }
}

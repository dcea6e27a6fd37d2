//! The view (ordered node addresses, replication factor, epoch), its
//! identity, and the shard map derived from it.
//!
//! A view's identity ([`View::id`]) is a hash of exactly what makes it: the
//! members in order, the replication factor and the epoch. It is computed,
//! never stored, so views persisted before it existed load unchanged; two
//! nodes that report the same epoch with different ids run different views
//! (two clusters sharing one epoch), which `gossip::conflict` refuses to
//! serve through.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Placement;

pub type ShardId = u32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ViewError {
    #[error("the view is empty")]
    Empty,
    #[error("invalid node address {0:?}: expected host:port, [ipv6]:port or name:port")]
    BadAddress(String),
    #[error("duplicate address {0} in the view")]
    Duplicate(String),
    #[error("repl-factor must be at least 1")]
    ReplFactorZero,
    #[error("repl-factor {rf} is larger than the view ({len} nodes)")]
    ReplFactorTooLarge { rf: usize, len: usize },
}

/// Checks one `host:port` address and returns it in canonical form
/// (trimmed; IPv6 hosts in brackets, compressed).
pub fn normalise_address(raw: &str) -> Result<String, ViewError> {
    let addr = raw.trim();
    let bad = || ViewError::BadAddress(raw.to_owned());
    if let Ok(sock) = addr.parse::<SocketAddr>() {
        if sock.port() == 0 {
            return Err(bad());
        }
        return Ok(sock.to_string());
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let valid_name =
        !host.is_empty() && host.len() <= 253 && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if port == 0 || !valid_name {
        return Err(bad());
    }
    Ok(format!("{host}:{port}"))
}

/// An ordered list of nodes, a replication factor and an epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub nodes: Vec<String>,
    pub repl_factor: usize,
    pub epoch: u64,
}

/// What a node tells its peers about its view: the epoch and the view's id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewStamp {
    pub epoch: u64,
    pub id: String,
}

impl View {
    pub fn new(nodes: Vec<String>, repl_factor: usize, epoch: u64) -> Result<Self, ViewError> {
        if nodes.is_empty() {
            return Err(ViewError::Empty);
        }
        let mut normalised = Vec::with_capacity(nodes.len());
        for raw in nodes {
            let addr = normalise_address(&raw)?;
            if normalised.contains(&addr) {
                return Err(ViewError::Duplicate(addr));
            }
            normalised.push(addr);
        }
        if repl_factor == 0 {
            return Err(ViewError::ReplFactorZero);
        }
        if repl_factor > normalised.len() {
            return Err(ViewError::ReplFactorTooLarge { rf: repl_factor, len: normalised.len() });
        }
        Ok(Self { nodes: normalised, repl_factor, epoch })
    }

    /// Parses the `VIEW` variable: comma-separated addresses.
    pub fn parse(view: &str, repl_factor: usize, epoch: u64) -> Result<Self, ViewError> {
        let nodes: Vec<String> = view.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        Self::new(nodes, repl_factor, epoch)
    }

    /// The view's identity: 16 hex digits of a SHA-256 over the members in
    /// order, the replication factor and the epoch. Stable across versions
    /// and platforms (a unit test pins one value): nodes of different builds
    /// compare it.
    pub fn id(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(b"causalkv view v1\n");
        for node in &self.nodes {
            // Addresses never contain a newline (`normalise_address`), so the
            // encoding is unambiguous.
            hash.update(node.as_bytes());
            hash.update(b"\n");
        }
        hash.update(format!("repl-factor {}\nepoch {}\n", self.repl_factor, self.epoch).as_bytes());
        hex::encode(&hash.finalize()[..8])
    }

    pub fn stamp(&self) -> ViewStamp {
        ViewStamp { epoch: self.epoch, id: self.id() }
    }

    /// Replicas of every shard, shard `i` at index `i - 1`.
    pub fn shards(&self) -> Vec<Vec<String>> {
        let rf = self.repl_factor;
        let count = self.nodes.len() / rf;
        let mut shards: Vec<Vec<String>> = self.nodes.chunks(rf).take(count).map(<[String]>::to_vec).collect();
        for (i, leftover) in self.nodes[count * rf..].iter().enumerate() {
            shards[i % count].push(leftover.clone());
        }
        shards
    }
}

/// The view as one node sees it: shards, placement, its own shard.
#[derive(Debug)]
pub struct ShardMap {
    pub view: View,
    /// `view.id()`, computed once: every key request compares it.
    view_id: String,
    me: String,
    shards: Vec<Vec<String>>,
    placement: Placement,
    my_shard: Option<ShardId>,
}

impl ShardMap {
    pub fn new(view: View, me: &str) -> Self {
        let shards = view.shards();
        let placement = Placement::new(shards.len() as ShardId);
        let my_shard = shards.iter().position(|r| r.iter().any(|a| a == me)).map(|i| i as ShardId + 1);
        let view_id = view.id();
        Self { view, view_id, me: me.to_owned(), shards, placement, my_shard }
    }

    pub fn view_id(&self) -> &str {
        &self.view_id
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn epoch(&self) -> u64 {
        self.view.epoch
    }

    /// This node's shard, `None` when the view does not contain it (proxy).
    pub fn my_shard(&self) -> Option<ShardId> {
        self.my_shard
    }

    pub fn shard_ids(&self) -> Vec<ShardId> {
        (1..=self.shards.len() as ShardId).collect()
    }

    pub fn shard_of(&self, key: &str) -> ShardId {
        self.placement.shard_of(key)
    }

    /// Replicas of `shard` in view order (master first); empty if unknown.
    pub fn replicas(&self, shard: ShardId) -> &[String] {
        shard.checked_sub(1).and_then(|i| self.shards.get(i as usize)).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether this node is a replica of `key`'s shard.
    pub fn is_replica_of_key(&self, key: &str) -> bool {
        self.is_replica(self.shard_of(key))
    }

    pub fn is_replica(&self, shard: ShardId) -> bool {
        self.my_shard == Some(shard)
    }

    /// The other replicas of this node's shard.
    pub fn peers(&self) -> Vec<String> {
        self.my_shard.map(|s| self.replicas(s).iter().filter(|a| **a != self.me).cloned().collect()).unwrap_or_default()
    }

    /// Replicas of this node's shard, including itself.
    pub fn my_replicas(&self) -> &[String] {
        self.my_shard.map(|s| self.replicas(s)).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(n: usize, rf: usize) -> View {
        View::new((0..n).map(|i| format!("10.0.0.{i}:13800")).collect(), rf, 0).unwrap()
    }

    #[test]
    fn shards_take_consecutive_nodes() {
        let v = view(4, 2);
        let shards = v.shards();
        assert_eq!(shards, vec![vec!["10.0.0.0:13800", "10.0.0.1:13800"], vec!["10.0.0.2:13800", "10.0.0.3:13800"]]);
    }

    #[test]
    fn leftover_nodes_join_the_first_shards_in_order() {
        let shards = view(7, 2).shards();
        assert_eq!(shards.len(), 3);
        assert_eq!(shards[0], vec!["10.0.0.0:13800", "10.0.0.1:13800", "10.0.0.6:13800"]);
        assert_eq!(shards[1].len(), 2);
        let shards = view(5, 3).shards();
        assert_eq!(shards.len(), 1);
        assert_eq!(shards[0].len(), 5);
        let shards = view(8, 3).shards();
        assert_eq!(shards.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4]);
    }

    #[test]
    fn every_node_is_in_exactly_one_shard() {
        for n in 1..12 {
            for rf in 1..=n {
                let v = view(n, rf);
                let mut all: Vec<String> = v.shards().concat();
                all.sort();
                let mut nodes = v.nodes.clone();
                nodes.sort();
                assert_eq!(all, nodes, "n={n} rf={rf}");
            }
        }
    }

    #[test]
    fn invalid_views_are_rejected() {
        assert_eq!(View::parse("", 1, 0), Err(ViewError::Empty));
        assert_eq!(View::parse("a:1", 0, 0), Err(ViewError::ReplFactorZero));
        assert!(matches!(View::parse("a:1,b:2", 3, 0), Err(ViewError::ReplFactorTooLarge { .. })));
        assert!(matches!(View::parse("a:1,a:1", 1, 0), Err(ViewError::Duplicate(_))));
        for bad in ["nohost", "a:b", ":80", "a:0", "a b:1", "a:70000", "[::1]"] {
            assert!(View::parse(bad, 1, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_are_normalised() {
        assert_eq!(normalise_address(" 127.0.0.1:80 ").unwrap(), "127.0.0.1:80");
        assert_eq!(normalise_address("[0:0::1]:80").unwrap(), "[::1]:80");
        assert_eq!(normalise_address("node-1.svc:13800").unwrap(), "node-1.svc:13800");
    }

    #[test]
    fn view_ids_tell_views_apart_and_are_stable() {
        let base = View::parse("127.0.0.1:13800,127.0.0.1:13801,127.0.0.1:13802,127.0.0.1:13803", 2, 0).unwrap();
        // Pinned (also: sha256 of "causalkv view v1\n" + each node + "\n" +
        // "repl-factor 2\nepoch 0\n", first 8 bytes): every build must agree.
        assert_eq!(base.id(), "e93154f469a07cda");
        assert_eq!(base.id(), base.clone().id(), "computed, deterministic");
        assert_eq!(base.id().len(), 16);
        let mut reordered = base.clone();
        reordered.nodes.swap(0, 1);
        let fewer = View::parse("127.0.0.1:13800", 1, 0).unwrap();
        let other_rf = View { repl_factor: 1, ..base.clone() };
        let next_epoch = View { epoch: 1, ..base.clone() };
        let ids = [base.id(), reordered.id(), fewer.id(), other_rf.id(), next_epoch.id()];
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a, b, "{ids:?}");
            }
        }
        assert_eq!(base.stamp(), ViewStamp { epoch: 0, id: base.id() });
        assert_eq!(ShardMap::new(base.clone(), "127.0.0.1:13800").view_id(), base.id());
        // Views stored before ids existed (no id field) still load.
        let stored: View = serde_json::from_str(r#"{"nodes":["127.0.0.1:13800"],"repl_factor":1,"epoch":0}"#).unwrap();
        assert_eq!(stored.id(), fewer.id());
    }

    #[test]
    fn shard_map_knows_roles() {
        let map = ShardMap::new(view(4, 2), "10.0.0.3:13800");
        assert_eq!(map.my_shard(), Some(2));
        assert_eq!(map.peers(), vec!["10.0.0.2:13800"]);
        assert_eq!(map.replicas(2)[0], "10.0.0.2:13800");
        assert!(map.replicas(3).is_empty());
        assert!(map.replicas(0).is_empty());
        let proxy = ShardMap::new(view(4, 2), "10.0.0.9:13800");
        assert_eq!(proxy.my_shard(), None);
        assert!(proxy.peers().is_empty());
    }
}

//! Views, shard formation, key placement and roles (DESIGN.md "View, shards,
//! roles").
//!
//! Invariants kept here:
//! - `n = floor(len(view) / rf)` shards with ids `1..=n`; shard `i` holds the
//!   nodes at positions `(i-1)*rf .. i*rf`; leftover nodes join shards 1, 2, …
//!   in order. Every node of the view is in exactly one shard.
//! - Placement is a pure function of the shard ids: a `hashring` ring with a
//!   fixed (zero-keyed SipHash) hasher and [`VNODES_PER_SHARD`] virtual nodes
//!   per shard, so every process computes the same owner for every key.
//! - The master of a shard is its first replica in view order that the
//!   failure detector (`gossip::detector`) trusts; callers reorder replicas
//!   with `FailureDetector::alive_first`.
//!
//! - A view change moves a key only to nodes that gain it (`change`).

mod placement;
mod view;

pub use placement::{Placement, VNODES_PER_SHARD};
pub use view::{ShardId, ShardMap, View, ViewError, ViewStamp, normalise_address};

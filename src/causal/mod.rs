//! Causal model: vector clocks, client contexts, the hybrid logical clock and
//! the hold-back gate (DESIGN.md "Causal model", "Read path").
//!
//! Invariants kept here:
//! - A [`Clock`] maps an origin (a node address) to the highest seq of that
//!   origin a history depends on; merging takes the per-origin maximum.
//! - A context is *satisfied* at a replica of shard `s` when, for every origin
//!   that is a replica of `s`, the replica's `applied` clock is at least the
//!   context's entry. Entries of other shards are carried, never waited on.
//! - A context from an older epoch is satisfied by definition and its entries
//!   are dropped from replies; one from a newer epoch is never satisfied until
//!   the node reaches that epoch.
//! - HLC timestamps only grow at a node, and every applied record advances the
//!   node's HLC, so a write that causally follows another gets a larger HLC.
//!   The HLC never wraps: at its largest value it refuses to tick.
//!
//! Everything here is pure (no I/O) except [`gate::Gate`], which only wraps a
//! `tokio::sync::watch` so waiters wake as soon as a write is applied.

mod clock;
mod context;
pub mod gate;
pub mod hlc;

pub use clock::Clock;
pub use context::{CausalContext, ContextError, PlainContext};
pub use hlc::{Hlc, HlcExhausted};

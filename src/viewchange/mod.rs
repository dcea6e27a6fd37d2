//! View change (resharding), in one place (DESIGN.md "View change"):
//! - [`protocol`]: the messages, the steps and the coordinator that drives
//!   prepare → sync → transfer → commit (or abort) across every node;
//! - [`participant`]: what one node does at each step (pause writes, bring
//!   its shard to the union, stage and commit records, adopt a view it
//!   missed), and the write queue a prepared change holds;
//! - [`plan`]: which nodes gain which keys between two views, and how an
//!   admin request names the new view.
//!
//! Invariants: all-or-nothing — a node enters the new epoch only by a
//! commit the coordinator decided (or, having missed it, on seeing a peer
//! run that view); nothing staged is visible before commit; an abort or a
//! pause nobody decides leaves the old view with nothing lost.
//! The staging area and the epoch switch themselves are the store's
//! (`Store::stage`, `Store::commit_epoch`).

pub mod participant;
pub mod plan;
pub mod protocol;

pub use protocol::*;

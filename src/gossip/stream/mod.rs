//! Replication as a stream (DESIGN.md "Replication stream"): one persistent
//! connection from each replica to each peer of its shard, carrying this
//! node's durable records in binary batches ([`frame`]), several batches in
//! flight ([`window`]), each acknowledged with the peer's applied clock once
//! applied and durable there.
//!
//! - **Opening**: the sender makes a signed internal request
//!   (`POST /internal/stream`, authenticated like all internal traffic) that
//!   the receiver upgrades to the stream; frames are then authenticated with
//!   a key derived from that request's MAC ([`frame::session_key`]). A
//!   transport that cannot stream (Mycelium; the simulator's network when a
//!   run replicates by pushes) opens none, and the request/response
//!   replicator (`replicator`) runs instead. The simulator's streams are
//!   in-memory pipes (`sim::net`).
//! - **Sending** ([`sender`]): the node's own per-origin log is the send
//!   queue; what is sent is read from it as stored (no decode, no JSON).
//!   Backpressure is the window: at most [`WINDOW_BATCHES`] unacknowledged
//!   batches. A batch unacknowledged for [`super::PUSH_TIMEOUT`] closes the
//!   stream; it is reopened with backoff and resumes after what the peer
//!   acknowledged.
//! - **Receiving** ([`receiver`]): batches are applied in arrival order as
//!   they come; acknowledgements go out in the same order, each after the
//!   group-commit flush that covers its batch, so several batches share one
//!   flush. One stream per sender: a newer one replaces an older one.
//!
//! Time is tokio's ([`tokio::time::Instant`]), never the OS clock, so the
//! simulator's paused clock drives the window's timeouts and probes.
//!
//! Invariants: the same as the pushes this replaces — a record leaves its
//! origin only once durable; an acknowledgement covers only what is applied
//! and durable at the receiver; duplicates and gaps are harmless (the store
//! skips applied seqs and holds early ones back until their turn).

pub mod frame;
pub mod receiver;
pub mod sender;
pub mod window;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

/// The internal path a stream is opened on.
pub const STREAM_PATH: &str = "/internal/stream";
/// The `Upgrade` token of the stream.
pub const UPGRADE_TOKEN: &str = "causalkv-replication/1";
/// Most unacknowledged batches on one stream.
pub const WINDOW_BATCHES: usize = 8;
/// Most records per streamed batch (smaller than a push: several go at once).
pub const STREAM_BATCH_RECORDS: usize = 256;
/// Most bytes of records per streamed batch (at least one record goes).
pub const STREAM_BATCH_BYTES: usize = 1024 * 1024;

/// Anything a stream can run over (a TCP or TLS connection, an in-memory pipe).
pub trait StreamIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> StreamIo for T {}

/// An open stream to a peer, as a transport hands it over.
pub struct StreamConn {
    pub io: Box<dyn StreamIo>,
    /// The session key (None without `CLUSTER_KEY`).
    pub key: Option<[u8; 32]>,
    /// True while the test fault switches cut this peer off: the stream
    /// then closes (a fault switch must stop a stream already open).
    pub cut: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl StreamConn {
    pub fn is_cut(&self) -> bool {
        self.cut.as_ref().is_some_and(|cut| cut())
    }
}

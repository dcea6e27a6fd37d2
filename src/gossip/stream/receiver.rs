//! The receiving side of a stream: applies each batch as it arrives and
//! acknowledges it, in order, once the flush covering it is done.
//!
//! Invariants: an ack names a batch only after every batch up to it was
//! applied and made durable; frames are handled by the gossip of the epoch
//! current when they arrive and refused (the stream closed) when their epoch
//! is not this node's, when the sender is cut off, or when a newer stream
//! from the same sender replaced this one. At most [`ACK_QUEUE`] applied
//! batches wait for their flush: beyond that the reader stops reading and
//! TCP pushes back on the sender.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::StreamIo;
use super::frame::{Direction, Frame, FrameError, Framer, decode_records};
use crate::gossip::Gossip;

/// Applied batches waiting for their flush before their ack.
pub const ACK_QUEUE: usize = 64;
/// A stream that sends no frame for this long is closed (senders probe every second).
pub const IDLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a receiving stream needs from its node.
pub trait StreamHost: Send + Sync + 'static {
    /// The gossip of the current epoch.
    fn gossip(&self) -> Arc<Gossip>;
    /// Whether frames from `sender` on stream `id` must be refused now
    /// (fault switches, or a newer stream from the same sender).
    fn refuses(&self, sender: &str, id: u64) -> bool;
}

enum Pending {
    Ack { batch: u64, generation: u64, gossip: Arc<Gossip> },
    Refuse { epoch: u64, reason: String },
}

/// Serves one stream from `sender` until it closes or fails.
pub async fn receive(host: Arc<dyn StreamHost>, sender: String, id: u64, io: impl StreamIo, key: Option<[u8; 32]>) {
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut reader = Framer::new(key, Direction::ToSender);
    let mut writer = Framer::new(key, Direction::ToSender);
    let (tx, mut rx) = mpsc::channel::<Pending>(ACK_QUEUE);
    let read = async {
        let end = read_batches(&*host, &sender, id, &mut reader, &mut rd, &tx).await;
        drop(tx);
        end
    };
    let write = async {
        while let Some(pending) = rx.recv().await {
            let frame = match pending {
                Pending::Ack { batch, generation, gossip } => {
                    if let Err(e) = gossip.store.wait_durable(generation).await {
                        tracing::warn!(%sender, error = %e, "streamed batch not made durable; closing the stream");
                        return;
                    }
                    Frame::Ack { batch, applied: gossip.store.applied() }
                }
                Pending::Refuse { epoch, reason } => Frame::Refused { epoch, reason },
            };
            let refused = matches!(frame, Frame::Refused { .. });
            if writer.write(&mut wr, &frame).await.is_err() || refused {
                return;
            }
        }
    };
    let (end, ()) = tokio::join!(read, write);
    if let Err(e) = end {
        tracing::debug!(%sender, error = %e, "replication stream closed");
    }
}

async fn read_batches(
    host: &dyn StreamHost,
    sender: &str,
    id: u64,
    reader: &mut Framer,
    rd: &mut (impl tokio::io::AsyncRead + Unpin),
    tx: &mpsc::Sender<Pending>,
) -> Result<(), FrameError> {
    loop {
        // A live sender probes every second: a stream silent for longer
        // (replaced, or held open by a peer that sends nothing) is closed,
        // so idle upgraded connections cannot pile up.
        let Ok(frame) = tokio::time::timeout(IDLE_LIMIT, reader.read(rd)).await else {
            return Ok(());
        };
        let frame = frame?;
        let Frame::Batch { batch, epoch, records } = frame else {
            return Err(FrameError::Malformed);
        };
        let gossip = host.gossip();
        let ours = gossip.store.epoch();
        let refuse = |reason: String| Pending::Refuse { epoch: ours, reason };
        if host.refuses(sender, id) {
            let _ = tx.send(refuse("stream refused (replaced or cut off)".into())).await;
            return Ok(());
        }
        if epoch != ours {
            let _ = tx.send(refuse(format!("wrong epoch: ours {ours}, theirs {epoch}"))).await;
            return Ok(());
        }
        if !gossip.shard().iter().any(|r| r == sender) {
            let _ = tx.send(refuse(format!("{sender} is not a replica of this node's shard"))).await;
            return Ok(());
        }
        let records = decode_records(&records)?;
        match gossip.apply_streamed(sender, records) {
            Ok(generation) => {
                if tx.send(Pending::Ack { batch, generation, gossip }).await.is_err() {
                    return Ok(());
                }
            }
            Err(e) => {
                let _ = tx.send(refuse(e.to_string())).await;
                return Ok(());
            }
        }
    }
}

/// The stream each sender uses now: a newer stream from a sender (it
/// reconnected) replaces the older, which closes at its next frame. Holds
/// one entry per sender that ever opened a stream (replicas of the shard).
#[derive(Default)]
pub struct Registry {
    latest: dashmap::DashMap<String, u64>,
    next: std::sync::atomic::AtomicU64,
}

impl Registry {
    /// Registers a new stream from `sender`; returns its id.
    pub fn open(&self, sender: &str) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.latest.insert(sender.to_owned(), id);
        id
    }

    pub fn is_current(&self, sender: &str, id: u64) -> bool {
        self.latest.get(sender).is_some_and(|v| *v == id)
    }
}

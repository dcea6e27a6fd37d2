//! The sending side: one task per peer of the shard that keeps a stream
//! open and this node's durable records flowing through it (see the module
//! above for the protocol, [`super::window`] for the rules).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::frame::{Direction, Frame, FrameError, Framer};
use super::window::{AckOutcome, Window};
use super::{STREAM_BATCH_BYTES, STREAM_BATCH_RECORDS, StreamConn, WINDOW_BATCHES};
use crate::gossip::{Gossip, MAX_BACKOFF, MIN_BACKOFF, PROBE_INTERVAL, PUSH_TIMEOUT};

/// Why a stream ended (it is reopened after a backoff unless shut down).
#[derive(Debug, thiserror::Error)]
pub enum StreamEnd {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the peer refused the stream: {0}")]
    Refused(String),
    #[error("no acknowledgement within {0:?}")]
    AckTimeout(Duration),
    #[error("cut off by a fault switch")]
    Cut,
    #[error("reading the log failed: {0}")]
    Log(String),
}

/// Keeps a stream to `peer` open until `shutdown`; falls back to the
/// request/response replicator when the transport cannot stream.
pub async fn run(gossip: Arc<Gossip>, peer: String, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        if *shutdown.borrow() {
            return;
        }
        match gossip.transport.open_stream(&peer).await {
            Ok(Some(conn)) => {
                gossip.metrics.replication_streams_opened.inc();
                let opened = Instant::now();
                match stream_to(&gossip, &peer, conn, &mut shutdown).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "replication stream ended; reopening");
                        gossip.metrics.replication_failures.inc();
                    }
                }
                // A stream that ran a while was healthy: reopen quickly.
                if opened.elapsed() > MAX_BACKOFF {
                    backoff = MIN_BACKOFF;
                }
            }
            Ok(None) => return crate::gossip::replicator::run(gossip, peer, shutdown).await,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "cannot open a replication stream; retrying");
                gossip.metrics.replication_failures.inc();
            }
        }
        if crate::gossip::sleep_or_shutdown(&mut shutdown, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Until shutdown is asked for (the guard `wait_for` returns is not held).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Runs one open stream until it fails (Err) or shutdown (Ok).
async fn stream_to(gossip: &Gossip, peer: &str, conn: StreamConn, shutdown: &mut watch::Receiver<bool>) -> Result<(), StreamEnd> {
    let store = &gossip.store;
    let me = store.me().to_owned();
    let cut = conn.cut.clone();
    let is_cut = || cut.as_ref().is_some_and(|c| c());
    let (mut rd, mut wr) = tokio::io::split(conn.io);
    let mut writer = Framer::new(conn.key, Direction::ToReceiver);
    let mut reader = Framer::new(conn.key, Direction::ToReceiver);
    // Frames are read by their own task (a read is not cancel-safe); acks
    // reach this loop through a channel, which is.
    let (ack_tx, mut acks) = mpsc::channel::<Result<Frame, FrameError>>(WINDOW_BATCHES * 2);
    let read_task = tokio::spawn(async move {
        loop {
            let frame = reader.read(&mut rd).await;
            let failed = frame.is_err();
            if ack_tx.send(frame).await.is_err() || failed {
                return;
            }
        }
    });
    let _stop_reader = AbortOnDrop(read_task);
    let lag = gossip.metrics.replication_lag.get_or_create(&crate::metrics::PeerLabel { peer: peer.to_owned() }).clone();
    let mut durable = store.durability.durable_seq();
    let mut window = Window::new(WINDOW_BATCHES);
    let mut backoff = MIN_BACKOFF;
    let mut paused_until: Option<Instant> = None;
    let mut last_sent = Instant::now();
    let mut compacted = false;
    let epoch = store.epoch();
    let probe = window.sent(None, Instant::now());
    write(&mut writer, &mut wr, &Frame::Batch { batch: probe, epoch, records: Vec::new() }).await?;
    loop {
        if is_cut() {
            return Err(StreamEnd::Cut);
        }
        let target = *durable.borrow_and_update();
        lag.set(target.saturating_sub(window.acked().unwrap_or(0)) as i64);
        let now = Instant::now();
        if paused_until.is_some_and(|t| t <= now) {
            paused_until = None;
        }
        // Fill the window with what is durable and not yet sent.
        while paused_until.is_none() && !compacted && window.can_send() && window.next_after() < target {
            let after = window.next_after();
            let records = match store.log_raw_after(&me, after, target, STREAM_BATCH_RECORDS, STREAM_BATCH_BYTES) {
                Ok(Some(r)) => r,
                // Compacted past what the peer has: its anti-entropy exchange
                // learns that and fetches a snapshot; probes meanwhile.
                Ok(None) => {
                    compacted = true;
                    break;
                }
                Err(e) => return Err(StreamEnd::Log(e.to_string())),
            };
            let Some(&(up_to, _)) = records.last() else { break };
            let batch = window.sent(Some(up_to), Instant::now());
            let records = records.into_iter().map(|(_, bytes)| bytes).collect();
            write(&mut writer, &mut wr, &Frame::Batch { batch, epoch, records }).await?;
            last_sent = Instant::now();
            if window.is_full() {
                gossip.metrics.replication_window_full.inc();
            }
        }
        // Sleep until an ack, a new durable write (when it could be sent),
        // the next probe, the end of a pause, or an ack overdue.
        let idle_probe = window.in_flight() == 0 && (compacted || window.acked().is_some_and(|a| a >= target));
        let mut wake = window.oldest_sent_at().map(|t| t + PUSH_TIMEOUT).unwrap_or(now + PROBE_INTERVAL);
        if idle_probe {
            wake = wake.min(last_sent + PROBE_INTERVAL);
        }
        if let Some(t) = paused_until {
            wake = wake.min(t);
        }
        let may_send = window.can_send() && paused_until.is_none() && !compacted;
        tokio::select! {
            biased;
            () = stopped(shutdown) => return Ok(()),
            frame = acks.recv() => match frame {
                Some(Ok(Frame::Ack { batch, applied })) => {
                    gossip.learned(peer, &applied);
                    gossip.metrics.replication_batches.inc();
                    match window.on_ack(batch, applied.get(&me)) {
                        AckOutcome::Stalled => {
                            // The peer could not apply what it got (deps or a
                            // full queue): do not resend in a tight loop.
                            paused_until = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                        AckOutcome::Progress => backoff = MIN_BACKOFF,
                        AckOutcome::Stale => {}
                    }
                }
                Some(Ok(Frame::Refused { reason, .. })) => return Err(StreamEnd::Refused(reason)),
                Some(Ok(Frame::Batch { .. })) => return Err(FrameError::Malformed.into()),
                Some(Err(e)) => return Err(e.into()),
                None => return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()).into()),
            },
            _ = durable.changed(), if may_send => {}
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if window.overdue(now, PUSH_TIMEOUT) {
                    return Err(StreamEnd::AckTimeout(PUSH_TIMEOUT));
                }
                if window.in_flight() == 0 && now >= last_sent + PROBE_INTERVAL {
                    // Learn where the peer stands (it may have lost data, or
                    // compaction may have let it catch up by snapshot).
                    compacted = false;
                    let probe = window.sent(None, now);
                    write(&mut writer, &mut wr, &Frame::Batch { batch: probe, epoch, records: Vec::new() }).await?;
                    last_sent = now;
                }
            }
        }
    }
}

/// Writes one frame, bounded by [`PUSH_TIMEOUT`] (a peer that stopped
/// reading must not hold the sender forever).
async fn write<W: tokio::io::AsyncWrite + Unpin>(framer: &mut Framer, w: &mut W, frame: &Frame) -> Result<(), StreamEnd> {
    match tokio::time::timeout(PUSH_TIMEOUT, framer.write(w, frame)).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StreamEnd::AckTimeout(PUSH_TIMEOUT)),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

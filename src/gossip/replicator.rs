//! One push loop per peer: ship durable own records after the peer's
//! acknowledged seq, retry with backoff, re-probe when idle.

use std::sync::Arc;

use tokio::sync::watch;

use super::{Gossip, MAX_BACKOFF, MAX_BATCH_RECORDS, MIN_BACKOFF, PROBE_INTERVAL, ReplicateBatch};

pub(super) async fn run(gossip: Arc<Gossip>, peer: String, mut shutdown: watch::Receiver<bool>) {
    let store = &gossip.store;
    let me = store.me().to_owned();
    let mut durable = store.durability.durable_seq();
    // Unknown until the first acknowledgement: the first request is a probe.
    let mut acked: Option<u64> = None;
    let mut backoff = MIN_BACKOFF;
    let lag = gossip.metrics.replication_lag.get_or_create(&crate::metrics::PeerLabel { peer: peer.clone() }).clone();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let target = *durable.borrow_and_update();
        lag.set(target.saturating_sub(acked.unwrap_or(0)) as i64);
        if acked.is_some_and(|a| a >= target) {
            // Caught up: wait for a new durable write or the probe timer.
            tokio::select! {
                biased;
                _ = durable.changed() => {}
                _ = tokio::time::sleep(PROBE_INTERVAL) => { acked = None; }
                _ = shutdown.wait_for(|s| *s) => return,
            }
            continue;
        }
        let after = acked.unwrap_or(target);
        let records = if acked.is_some() {
            match store.log_after_checked(&me, after, MAX_BATCH_RECORDS) {
                Ok(Some(mut recs)) => {
                    recs.retain(|r| r.dot.seq <= target);
                    super::fit_batch(&mut recs);
                    recs
                }
                // Compacted past what the peer has: its anti-entropy exchange
                // learns that and fetches a snapshot; keep probing meanwhile.
                Ok(None) => Vec::new(),
                Err(e) => {
                    tracing::error!(error = %e, "reading the log for replication failed");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let sent_up_to = records.last().map(|r| r.dot.seq);
        let batch = ReplicateBatch { from: me.clone(), epoch: store.epoch(), records };
        match gossip.transport.replicate(&peer, &batch).await {
            Ok(ack) => {
                gossip.learned(&peer, &ack.applied);
                let peer_has = ack.applied.get(&me);
                let progressed = acked.is_none() || peer_has > acked.unwrap_or(0);
                acked = Some(peer_has);
                gossip.metrics.replication_batches.inc();
                if (sent_up_to.is_some() && !progressed) || (sent_up_to.is_none() && peer_has < target) {
                    // The peer could not apply (pending deps or full queue): do
                    // not resend in a tight loop.
                    sleep_or_shutdown(&mut shutdown, backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                } else {
                    backoff = MIN_BACKOFF;
                }
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "replication push failed; retrying");
                gossip.metrics.replication_failures.inc();
                acked = None;
                sleep_or_shutdown(&mut shutdown, backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn sleep_or_shutdown(shutdown: &mut watch::Receiver<bool>, d: std::time::Duration) {
    tokio::select! {
        biased;
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.wait_for(|s| *s) => {}
    }
}

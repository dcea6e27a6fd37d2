//! The receiving side of a stream against a real (in-memory) store, driven
//! frame by frame over an in-memory pipe: batches out of order, the same
//! batch twice, a wrong epoch, and a sender that is not a replica.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::io::DuplexStream;

use super::frame::{Direction, Frame, Framer};
use super::receiver::{Registry, StreamHost, receive};
use crate::causal::Clock;
use crate::gossip::{BoxFuture, EpochHint, FailureDetector, Gossip, GossipDeps, GossipError, Message, Transport, ViewConflicts};
use crate::metrics::Metrics;
use crate::shard::{ShardMap, View};
use crate::store::outbox::RawRecord;
use crate::store::{DurabilityMode, MemoryDisk, Store};
use crate::time::SystemClock;

const ORIGIN: &str = "127.0.0.1:1";
const RECEIVER: &str = "127.0.0.1:2";

struct NoTransport;

impl Transport for NoTransport {
    fn call<'a>(&'a self, peer: &'a str, _: Message, _: Box<RawValue>, _: Duration) -> BoxFuture<'a, Result<Vec<u8>, GossipError>> {
        Box::pin(std::future::ready(Err(GossipError::Unreachable { peer: peer.to_owned(), reason: "no network in this test".into() })))
    }
}

struct Host {
    gossip: Arc<Gossip>,
    streams: Registry,
}

impl StreamHost for Host {
    fn gossip(&self) -> Arc<Gossip> {
        self.gossip.clone()
    }
    fn refuses(&self, sender: &str, id: u64) -> bool {
        !self.streams.is_current(sender, id)
    }
}

fn store(me: &str) -> Arc<Store> {
    let store = Store::open_in_memory(&MemoryDisk::new(), me, DurabilityMode::Async, Arc::new(SystemClock)).expect("store");
    store.set_keeps_log(true);
    Arc::new(store)
}

fn receiver_host() -> Arc<Host> {
    let view = View::new(vec![ORIGIN.to_owned(), RECEIVER.to_owned()], 2, 1).expect("view");
    let map = ShardMap::new(view, RECEIVER);
    let deps = GossipDeps {
        store: store(RECEIVER),
        transport: Arc::new(NoTransport),
        metrics: Arc::new(Metrics::default()),
        detector: Arc::new(FailureDetector::new(RECEIVER)),
        epoch_hint: Arc::new(EpochHint::default()),
        conflicts: Arc::new(ViewConflicts::new(RECEIVER)),
        wall: Arc::new(SystemClock),
    };
    Arc::new(Host { gossip: Arc::new(Gossip::new(deps, &map)), streams: Registry::default() })
}

/// `n` writes at the origin, as its log stores them (seq 1..=n).
fn origin_records(n: u64) -> Vec<RawRecord> {
    let origin = store(ORIGIN);
    for i in 0..n {
        let value = RawValue::from_string(format!("{i}")).expect("json");
        origin.write_local(&format!("k{i}"), Some(value), Clock::new()).expect("write");
    }
    let raw = origin.log_raw_after(ORIGIN, 0, n, 1000, usize::MAX).expect("log").expect("not compacted");
    assert_eq!(raw.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>());
    raw.into_iter().map(|(_, r)| r).collect()
}

/// A sender's end of a stream into `host`.
struct Peer {
    io: DuplexStream,
    writer: Framer,
    reader: Framer,
    epoch: u64,
}

impl Peer {
    fn open(host: &Arc<Host>, key: Option<[u8; 32]>) -> Peer {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let id = host.streams.open(ORIGIN);
        let dyn_host: Arc<dyn StreamHost> = host.clone();
        tokio::spawn(receive(dyn_host, ORIGIN.to_owned(), id, theirs, key));
        let epoch = host.gossip.store.epoch();
        Peer { io: ours, writer: Framer::new(key, Direction::ToReceiver), reader: Framer::new(key, Direction::ToReceiver), epoch }
    }

    async fn send(&mut self, batch: u64, records: &[RawRecord]) {
        let frame = Frame::Batch { batch, epoch: self.epoch, records: records.to_vec() };
        self.writer.write(&mut self.io, &frame).await.expect("send");
    }

    async fn ack(&mut self) -> Frame {
        tokio::time::timeout(Duration::from_secs(5), self.reader.read(&mut self.io)).await.expect("an answer in time").expect("a frame")
    }

    async fn applied_after(&mut self, batch: u64) -> u64 {
        match self.ack().await {
            Frame::Ack { batch: b, applied } => {
                assert_eq!(b, batch, "acks come in batch order");
                applied.get(ORIGIN)
            }
            other => panic!("expected an ack, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn reordered_batches_wait_for_their_turn_and_then_apply() {
    let host = receiver_host();
    let recs = origin_records(6);
    let mut peer = Peer::open(&host, Some([3u8; 32]));
    // Batch 1 carries seqs 4..=6 and arrives before batch 2 with 1..=3.
    peer.send(1, &recs[3..]).await;
    assert_eq!(peer.applied_after(1).await, 0, "seqs after a gap are held back, not applied");
    peer.send(2, &recs[..3]).await;
    assert_eq!(peer.applied_after(2).await, 6, "the gap filled, everything held back applies");
    let store = &host.gossip.store;
    for i in 0..6 {
        assert!(store.get(&format!("k{i}")).expect("get").is_some_and(|r| r.is_live()), "k{i}");
    }
}

#[tokio::test]
async fn a_batch_received_twice_is_applied_once() {
    let host = receiver_host();
    let recs = origin_records(4);
    let mut peer = Peer::open(&host, None);
    peer.send(1, &recs).await;
    assert_eq!(peer.applied_after(1).await, 4);
    let applied_once = host.gossip.metrics.replicated_records.get();
    peer.send(2, &recs).await;
    peer.send(3, &recs[1..3]).await;
    assert_eq!(peer.applied_after(2).await, 4);
    assert_eq!(peer.applied_after(3).await, 4);
    assert_eq!(host.gossip.metrics.replicated_records.get(), applied_once, "duplicates applied nothing");
    assert_eq!(applied_once, 4);
}

#[tokio::test]
async fn a_batch_of_another_epoch_is_refused_and_ends_the_stream() {
    let host = receiver_host();
    let recs = origin_records(2);
    let mut peer = Peer::open(&host, None);
    peer.epoch += 1;
    peer.send(1, &recs).await;
    match peer.ack().await {
        Frame::Refused { reason, .. } => assert!(reason.contains("epoch"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(host.gossip.store.applied().get(ORIGIN), 0, "nothing of the refused batch applied");
}

#[tokio::test]
async fn a_newer_stream_from_the_same_sender_replaces_the_older() {
    let host = receiver_host();
    let recs = origin_records(2);
    let mut old = Peer::open(&host, None);
    let mut new = Peer::open(&host, None);
    old.send(1, &recs[..1]).await;
    assert!(matches!(old.ack().await, Frame::Refused { .. }), "the replaced stream is closed");
    new.send(1, &recs).await;
    assert_eq!(new.applied_after(1).await, 2);
}

#[tokio::test]
async fn a_frame_under_a_wrong_key_closes_the_stream_unapplied() {
    let host = receiver_host();
    let recs = origin_records(2);
    let mut peer = Peer::open(&host, Some([1u8; 32]));
    // The sender signs with another session's key.
    peer.writer = Framer::new(Some([2u8; 32]), Direction::ToReceiver);
    peer.send(1, &recs).await;
    let answer = tokio::time::timeout(Duration::from_secs(5), peer.reader.read(&mut peer.io)).await.expect("closed in time");
    assert!(answer.is_err(), "no answer to a forged frame: {answer:?}");
    assert_eq!(host.gossip.store.applied().get(ORIGIN), 0);
}

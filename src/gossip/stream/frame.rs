//! The replication stream's frames on the wire, and their authentication.
//!
//! A frame is `u32 length | u8 kind | payload | MAC`, integers
//! little-endian, `length` counting kind, payload and MAC. Payloads:
//! - `BATCH` (sender → receiver): `batch u64 | epoch u64 | count u32 |
//!   count × (u32 len + record)`, each record in the storage encoding
//!   ([`Record::encode`], the bytes the sender's log holds: no JSON, no
//!   re-encoding at the sender). An empty batch is a probe.
//! - `ACK` (receiver → sender): `batch u64 | clock`, the receiver's applied
//!   clock once everything up to that batch is applied and durable; a clock
//!   is `u16 count × (u16 len + origin + u64 seq)`.
//! - `REFUSED` (receiver → sender, then closes): `epoch u64 | reason`.
//!
//! With `CLUSTER_KEY` each frame ends with `HMAC-SHA256(session key,
//! direction | frame number | kind | payload)`; the session key is derived
//! from the MAC of the signed request that opened the stream (fresh, never
//! accepted twice), and each side numbers the frames it sends from 0. So a
//! frame cannot be forged, replayed, dropped, reordered or moved to another
//! stream without the reader noticing (it then closes the stream). Without a
//! key no MAC is sent.
//!
//! Invariants: a reader never allocates more than [`MAX_FRAME_BYTES`] for a
//! frame, whatever a length field claims; every decode is bounds-checked
//! (bad input is an error, never a panic).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::causal::Clock;
use crate::store::Record;
use crate::store::outbox::RawRecord;

/// Largest frame accepted: a full batch plus room for framing.
pub const MAX_FRAME_BYTES: usize = crate::gossip::MAX_BATCH_BYTES + 1024 * 1024;
const MAC_LEN: usize = 32;

const BATCH: u8 = 1;
const ACK: u8 = 2;
const REFUSED: u8 = 3;

type HmacSha256 = Hmac<Sha256>;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Records in the storage encoding, in the sender's seq order.
    Batch {
        batch: u64,
        epoch: u64,
        records: Vec<RawRecord>,
    },
    Ack {
        batch: u64,
        applied: Clock,
    },
    Refused {
        epoch: u64,
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stream i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed frame")]
    Malformed,
    #[error("frame failed authentication")]
    BadMac,
}

/// Which way a frame goes (part of its MAC, so a frame cannot be reflected).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ToReceiver,
    ToSender,
}

/// One side's framing state: the session key, and the number of the next
/// frame it writes and reads.
pub struct Framer {
    key: Option<[u8; 32]>,
    outgoing: Direction,
    sent: u64,
    received: u64,
}

impl Framer {
    /// `key`: the session key (None without `CLUSTER_KEY`); `outgoing`: the
    /// direction of the frames this side writes.
    pub fn new(key: Option<[u8; 32]>, outgoing: Direction) -> Self {
        Self { key, outgoing, sent: 0, received: 0 }
    }

    fn incoming(&self) -> Direction {
        match self.outgoing {
            Direction::ToReceiver => Direction::ToSender,
            Direction::ToSender => Direction::ToReceiver,
        }
    }

    fn mac(key: &[u8; 32], dir: Direction, number: u64, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(&[dir as u8]);
        mac.update(&number.to_le_bytes());
        mac.update(body);
        mac
    }

    /// The whole frame as bytes (kind and payload from `frame`).
    pub fn encode(&mut self, frame: &Frame) -> Vec<u8> {
        let mut out = vec![0u8; 4];
        encode_body(frame, &mut out);
        if let Some(key) = &self.key {
            let tag = Self::mac(key, self.outgoing, self.sent, &out[4..]).finalize().into_bytes();
            out.extend_from_slice(&tag);
        }
        self.sent += 1;
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_le_bytes());
        out
    }

    pub async fn write<W: AsyncWrite + Unpin>(&mut self, w: &mut W, frame: &Frame) -> Result<(), FrameError> {
        let bytes = self.encode(frame);
        w.write_all(&bytes).await?;
        w.flush().await?;
        Ok(())
    }

    /// Reads one frame. Not cancel-safe: read from one task only.
    pub async fn read<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<Frame, FrameError> {
        let len = r.read_u32_le().await? as usize;
        if len > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge(len));
        }
        let mut buf = vec![0u8; len];
        r.read_exact(&mut buf).await?;
        self.decode(&buf)
    }

    /// Checks and decodes a frame's bytes after its length field.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Frame, FrameError> {
        let body = match &self.key {
            Some(key) => {
                let split = buf.len().checked_sub(MAC_LEN).ok_or(FrameError::Malformed)?;
                let (body, tag) = buf.split_at(split);
                Self::mac(key, self.incoming(), self.received, body).verify_slice(tag).map_err(|_| FrameError::BadMac)?;
                body
            }
            None => buf,
        };
        self.received += 1;
        decode_body(body).ok_or(FrameError::Malformed)
    }
}

/// The session key of a stream opened by a request whose MAC is
/// `request_mac` (None without a cluster key).
pub fn session_key(cluster_key: Option<&[u8]>, request_mac: &[u8]) -> Option<[u8; 32]> {
    let key = cluster_key?;
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"replication-stream\n");
    mac.update(request_mac);
    Some(mac.finalize().into_bytes().into())
}

fn encode_body(frame: &Frame, out: &mut Vec<u8>) {
    match frame {
        Frame::Batch { batch, epoch, records } => {
            out.push(BATCH);
            out.extend_from_slice(&batch.to_le_bytes());
            out.extend_from_slice(&epoch.to_le_bytes());
            out.extend_from_slice(&(records.len() as u32).to_le_bytes());
            for r in records {
                out.extend_from_slice(&(r.len() as u32).to_le_bytes());
                out.extend_from_slice(r);
            }
        }
        Frame::Ack { batch, applied } => {
            out.push(ACK);
            out.extend_from_slice(&batch.to_le_bytes());
            out.extend_from_slice(&(applied.len() as u16).to_le_bytes());
            for (origin, seq) in applied.iter() {
                out.extend_from_slice(&(origin.len() as u16).to_le_bytes());
                out.extend_from_slice(origin.as_bytes());
                out.extend_from_slice(&seq.to_le_bytes());
            }
        }
        Frame::Refused { epoch, reason } => {
            out.push(REFUSED);
            out.extend_from_slice(&epoch.to_le_bytes());
            out.extend_from_slice(reason.as_bytes());
        }
    }
}

/// A bounds-checked reader over a frame's payload.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

fn decode_body(body: &[u8]) -> Option<Frame> {
    let (&kind, rest) = body.split_first()?;
    let mut c = Cursor(rest);
    let frame = match kind {
        BATCH => {
            let batch = c.u64()?;
            let epoch = c.u64()?;
            let count = c.u32()? as usize;
            // Each record takes at least its 4-byte length: a count the
            // payload cannot hold is malformed, not an allocation.
            if count > c.0.len() / 4 {
                return None;
            }
            let mut records = Vec::with_capacity(count);
            for _ in 0..count {
                let len = c.u32()? as usize;
                records.push(RawRecord::from(c.take(len)?));
            }
            Frame::Batch { batch, epoch, records }
        }
        ACK => {
            let batch = c.u64()?;
            let count = c.u16()?;
            let mut applied = Clock::new();
            for _ in 0..count {
                let len = c.u16()? as usize;
                let origin = std::str::from_utf8(c.take(len)?).ok()?;
                let seq = c.u64()?;
                applied.set(origin, seq);
            }
            Frame::Ack { batch, applied }
        }
        REFUSED => {
            let epoch = c.u64()?;
            let reason = String::from_utf8_lossy(std::mem::take(&mut c.0)).into_owned();
            Frame::Refused { epoch, reason }
        }
        _ => return None,
    };
    if !c.0.is_empty() {
        return None;
    }
    Some(frame)
}

/// Decodes a batch's records (the receiver's side of [`Frame::Batch`]).
pub fn decode_records(raw: &[RawRecord]) -> Result<Vec<Record>, FrameError> {
    raw.iter().map(|r| Record::decode(r).map_err(|_| FrameError::Malformed)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames() -> Vec<Frame> {
        let mut applied = Clock::new();
        applied.set("10.0.0.1:13800", 42);
        applied.set("10.0.0.2:13800", 7);
        vec![
            Frame::Batch { batch: 3, epoch: 1, records: vec![RawRecord::from(&b"abc"[..]), RawRecord::from(&b""[..])] },
            Frame::Batch { batch: 4, epoch: 1, records: Vec::new() },
            Frame::Ack { batch: 3, applied },
            Frame::Refused { epoch: 2, reason: "wrong epoch".into() },
        ]
    }

    #[test]
    fn frames_round_trip_with_and_without_a_key() {
        for key in [None, Some([7u8; 32])] {
            let mut writer = Framer::new(key, Direction::ToReceiver);
            let mut reader = Framer::new(key, Direction::ToSender);
            for f in frames() {
                let bytes = writer.encode(&f);
                assert_eq!(u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize, bytes.len() - 4);
                assert_eq!(reader.decode(&bytes[4..]).unwrap(), f);
            }
        }
    }

    #[test]
    fn a_keyed_reader_refuses_forged_replayed_reordered_and_reflected_frames() {
        let key = Some([9u8; 32]);
        let mut writer = Framer::new(key, Direction::ToReceiver);
        let first = writer.encode(&frames()[0]);
        let second = writer.encode(&frames()[1]);
        // Reordered: the second frame first.
        assert!(matches!(Framer::new(key, Direction::ToSender).decode(&second[4..]), Err(FrameError::BadMac)));
        // Replayed: the first frame twice.
        let mut reader = Framer::new(key, Direction::ToSender);
        reader.decode(&first[4..]).unwrap();
        assert!(matches!(reader.decode(&first[4..]), Err(FrameError::BadMac)));
        // Forged: one byte changed.
        let mut forged = first.clone();
        forged[10] ^= 1;
        assert!(matches!(Framer::new(key, Direction::ToSender).decode(&forged[4..]), Err(FrameError::BadMac)));
        // Reflected: a frame read back by the side that wrote it.
        assert!(matches!(Framer::new(key, Direction::ToReceiver).decode(&first[4..]), Err(FrameError::BadMac)));
        // Another session's key.
        assert!(matches!(Framer::new(Some([1u8; 32]), Direction::ToSender).decode(&first[4..]), Err(FrameError::BadMac)));
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        let mut reader = Framer::new(None, Direction::ToSender);
        for bad in [&b""[..], &[9], &[BATCH, 1, 2], &[ACK, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0]] {
            assert!(matches!(reader.decode(bad), Err(FrameError::Malformed)), "{bad:?}");
        }
        // A count no payload could hold is refused before any allocation.
        let mut huge = vec![BATCH];
        huge.extend_from_slice(&0u64.to_le_bytes());
        huge.extend_from_slice(&0u64.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(reader.decode(&huge), Err(FrameError::Malformed)));
        // Trailing bytes.
        let mut writer = Framer::new(None, Direction::ToReceiver);
        let mut bytes = writer.encode(&frames()[1]);
        bytes.push(0);
        assert!(matches!(reader.decode(&bytes[4..]), Err(FrameError::Malformed)));
    }

    #[tokio::test]
    async fn a_length_over_the_limit_is_refused_before_reading() {
        let mut bytes = ((MAX_FRAME_BYTES + 1) as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        let mut reader = Framer::new(None, Direction::ToSender);
        assert!(matches!(reader.read(&mut &bytes[..]).await, Err(FrameError::TooLarge(_))));
    }
}

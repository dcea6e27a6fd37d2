//! What travels inside a Mycelium message's payload (JSON; the daemon API
//! base64-encodes it).
//!
//! A payload is one [`Frame`] from one node to another:
//! `{"v":1,"from":"<VIEW address>","msgs":[Msg,...]}` — every gossip request
//! or reply queued for that destination while the previous send was in
//! flight, so one Mycelium message carries many (each replication batch or
//! pull answer itself carries many records). With `CLUSTER_KEY` the frame
//! also has `ts` and `sig`: the HMAC of the `msgs` text (`gossip::auth`).
//!
//! A [`Msg`] is a request `{"id","kind","body"}` or a reply
//! `{"id","status","body"|"error"}`; `id` correlates them.
//!
//! A frame whose JSON is larger than [`MAX_FRAME_BYTES`] (Mycelium takes
//! about 1.5 MB of payload per message) is sent as fragments:
//! `{"v":1,"from":…,"frag":{"id","i","n","data":"<base64 of a slice>"}}`,
//! reassembled by the receiver ([`Reassembly`]); losing any fragment loses
//! the frame, like losing a message.
//!
//! Every payload handed to the daemon — a whole frame or a fragment — is
//! first [`pad`]ded with trailing spaces to a length the daemon delivers
//! ([`deliverable`]): the real daemon silently drops messages of some
//! lengths (see [`CHUNK_BYTES`]). JSON allows trailing whitespace, so the
//! receiver parses a padded frame as it is, and the padding lies outside
//! `msgs`, so the signature is unaffected.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Format version of frames.
pub const VERSION: u32 = 1;
/// Largest frame JSON sent as one message (base64 makes it 4/3 larger, well
/// under Mycelium's 2 MiB request limit).
pub const MAX_FRAME_BYTES: usize = 1_000_000;
/// Bytes of frame text per fragment (base64 inside the fragment's JSON,
/// then base64 again by the API: still under the limit).
pub const FRAGMENT_BYTES: usize = 600_000;
/// Most fragments of one frame the receiver accepts.
pub const MAX_FRAGMENTS: u32 = 256;
/// Most bytes held in partly received frames.
pub const MAX_REASSEMBLY_BYTES: usize = 256 * 1024 * 1024;
/// A partly received frame is dropped after this long.
pub const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(60);
/// The Mycelium daemon (0.7.x, measured) sends a message longer than this
/// in chunks of this many bytes...
pub const CHUNK_BYTES: usize = 1300;
/// ...and the receiving daemon discards a last chunk shorter than this
/// (`Dropping CHUNK 5/26 which is too small (40 bytes / 250 bytes)`), so
/// the whole message is lost while the sender's status says it was sent and
/// acknowledged.
pub const MIN_LAST_CHUNK: usize = 250;

/// Whether the daemon delivers a payload of `len` bytes: it fits one chunk,
/// or its last chunk is full or at least [`MIN_LAST_CHUNK`] long.
pub fn deliverable(len: usize) -> bool {
    let last = len % CHUNK_BYTES;
    len <= CHUNK_BYTES || last == 0 || last >= MIN_LAST_CHUNK
}

/// The length a payload of `len` bytes is padded to: itself when the daemon
/// delivers it, else grown until its last chunk is [`MIN_LAST_CHUNK`] long
/// (at most 249 bytes more). Padding, not splitting: one message stays one
/// message (one id, one signature), and the cost is under 20 % of a
/// message, under 1 % on average.
pub fn padded_len(len: usize) -> usize {
    if deliverable(len) { len } else { len - len % CHUNK_BYTES + MIN_LAST_CHUNK }
}

/// Pads a payload (JSON) with trailing spaces to [`padded_len`]; true when
/// it had to.
pub fn pad(payload: &mut Vec<u8>) -> bool {
    let len = padded_len(payload.len());
    let padded = len != payload.len();
    payload.resize(len, b' ');
    padded
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Frame {
    pub v: u32,
    /// The sending node's VIEW address.
    pub from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
    /// A JSON array of [`Msg`], kept as sent (it is what `sig` covers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msgs: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frag: Option<Fragment>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Fragment {
    /// Identifies the fragmented frame (per sender).
    pub id: String,
    pub i: u32,
    pub n: u32,
    /// Base64 of this slice of the frame's JSON text.
    pub data: String,
}

/// A request (has `kind`) or a reply (has `status`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Msg {
    /// Correlation id: a reply carries its request's.
    pub id: String,
    /// Request: `replicate`, `pull`, `snapshot` or `heartbeat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Reply: 200, or the status the HTTP endpoint would have answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Request body, or a 200 reply's body (the same JSON as over HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Joins serialised messages into the `msgs` array.
pub fn msgs_array(msgs: &[&str]) -> Box<RawValue> {
    let mut text = String::with_capacity(msgs.iter().map(|m| m.len() + 1).sum::<usize>() + 2);
    text.push('[');
    for (i, m) in msgs.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(m);
    }
    text.push(']');
    RawValue::from_string(text).expect("serialised messages form a JSON array")
}

/// Splits a frame's text into fragment payloads (each a JSON frame).
pub fn fragment(from: &str, frag_id: &str, frame: &[u8]) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = frame.chunks(FRAGMENT_BYTES).collect();
    let n = chunks.len() as u32;
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let f = Frame {
                v: VERSION,
                from: from.to_owned(),
                ts: None,
                sig: None,
                msgs: None,
                frag: Some(Fragment { id: frag_id.to_owned(), i: i as u32, n, data: B64.encode(chunk) }),
            };
            serde_json::to_vec(&f).expect("a fragment serialises")
        })
        .collect()
}

struct Partial {
    parts: Vec<Option<Vec<u8>>>,
    missing: u32,
    bytes: usize,
    started: Instant,
}

/// Partly received fragmented frames, by (sender, fragment id); bounded in
/// bytes and age.
#[derive(Default)]
pub struct Reassembly {
    partial: HashMap<(String, String), Partial>,
    bytes: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum FragmentError {
    Malformed,
    TooLarge,
}

impl Reassembly {
    /// Adds a fragment; returns the whole frame's text once every fragment
    /// arrived. Duplicates are ignored.
    pub fn add(&mut self, sender: &str, frag: Fragment) -> Result<Option<Vec<u8>>, FragmentError> {
        self.expire();
        if frag.n == 0 || frag.n > MAX_FRAGMENTS || frag.i >= frag.n {
            return Err(FragmentError::Malformed);
        }
        let data = B64.decode(frag.data.as_bytes()).map_err(|_| FragmentError::Malformed)?;
        if self.bytes + data.len() > MAX_REASSEMBLY_BYTES {
            return Err(FragmentError::TooLarge);
        }
        let key = (sender.to_owned(), frag.id);
        let partial = self.partial.entry(key.clone()).or_insert_with(|| Partial {
            parts: vec![None; frag.n as usize],
            missing: frag.n,
            bytes: 0,
            started: Instant::now(),
        });
        if partial.parts.len() != frag.n as usize {
            return Err(FragmentError::Malformed);
        }
        let slot = &mut partial.parts[frag.i as usize];
        if slot.is_some() {
            return Ok(None);
        }
        partial.bytes += data.len();
        self.bytes += data.len();
        *slot = Some(data);
        partial.missing -= 1;
        if partial.missing > 0 {
            return Ok(None);
        }
        let done = self.partial.remove(&key).expect("present");
        self.bytes -= done.bytes;
        Ok(Some(done.parts.into_iter().flatten().flatten().collect()))
    }

    fn expire(&mut self) {
        let before = self.partial.len();
        let mut freed = 0;
        self.partial.retain(|_, p| {
            let keep = p.started.elapsed() < REASSEMBLY_TIMEOUT;
            if !keep {
                freed += p.bytes;
            }
            keep
        });
        if self.partial.len() != before {
            self.bytes -= freed;
        }
    }

    #[cfg(test)]
    pub fn held_bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_raw_bodies() {
        let req = Msg {
            id: "a1".into(),
            kind: Some("pull".into()),
            status: None,
            body: Some(RawValue::from_string(r#"{"x": 1.0, "big": 12345678901234567890123}"#.into()).unwrap()),
            error: None,
        };
        let text = serde_json::to_string(&req).unwrap();
        let frame = Frame { v: VERSION, from: "n:1".into(), ts: None, sig: None, msgs: Some(msgs_array(&[&text, &text])), frag: None };
        let bytes = serde_json::to_vec(&frame).unwrap();
        let back: Frame = serde_json::from_slice(&bytes).unwrap();
        let msgs: Vec<Msg> = serde_json::from_str(back.msgs.unwrap().get()).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[1].body.as_ref().unwrap().get(), r#"{"x": 1.0, "big": 12345678901234567890123}"#);
        assert_eq!(msgs[0].kind.as_deref(), Some("pull"));
    }

    /// Builds frames of a chosen length whose `msgs` (one reply with a
    /// filler `error`) are signed (when `auth` has a key).
    struct Frames {
        auth: crate::gossip::Auth,
        /// Frame length without filler, for the current timestamp width.
        base: usize,
    }

    impl Frames {
        fn new(key: Option<&str>) -> Self {
            let auth = crate::gossip::Auth::new(key, "n:1");
            let base = Self::build(&auth, 0).len();
            Self { auth, base }
        }

        fn build(auth: &crate::gossip::Auth, filler: usize) -> Vec<u8> {
            let msg = Msg { id: "1".into(), kind: None, status: Some(200), body: None, error: Some("x".repeat(filler)) };
            let msgs = msgs_array(&[&serde_json::to_string(&msg).unwrap()]);
            let (ts, sig) = auth.sign_message("/mycelium/frame", "n:2", msgs.get().as_bytes()).unzip();
            serde_json::to_vec(&Frame { v: VERSION, from: "n:1".into(), ts, sig, msgs: Some(msgs), frag: None }).unwrap()
        }

        /// A frame of exactly `len` bytes and its filler's length (the
        /// timestamp's width can change between two signatures: then the
        /// filler is adjusted).
        fn of_len(&mut self, len: usize) -> (Vec<u8>, usize) {
            loop {
                let filler = len.checked_sub(self.base).expect("len above the smallest frame");
                let bytes = Self::build(&self.auth, filler);
                if bytes.len() == len {
                    return (bytes, filler);
                }
                self.base = bytes.len() - filler;
            }
        }
    }

    #[test]
    fn padded_lengths_are_delivered_and_padded_frames_still_parse_and_verify() {
        // The rule itself, at the edges.
        for (len, ok) in [(1, true), (1300, true), (1301, false), (1549, false), (1550, true), (2600, true), (2606, false), (2850, true)] {
            assert_eq!(deliverable(len), ok, "{len}");
        }
        // Signing is slow in a debug build: every padded length is parsed,
        // the signature is checked at both ends of each boundary's bad range
        // and at every 16th length in it.
        let (mut signed, mut unsigned) = (Frames::new(Some("k")), Frames::new(None));
        let mut verified = 0;
        let receiver = crate::gossip::Auth::new(Some("k"), "n:2");
        let mut padded_any = 0;
        for len in 1..=20_000 {
            let padded = padded_len(len);
            assert!(deliverable(padded), "{len} padded to {padded}, which the daemon drops");
            assert!(padded >= len && padded - len < MIN_LAST_CHUNK, "{len} padded to {padded}");
            // The smallest deliverable length at or above `len`.
            assert!((len..padded).all(|l| !deliverable(l)), "{len} padded past a deliverable length");
            let mut payload = vec![b'}'; len];
            assert_eq!(pad(&mut payload), padded != len);
            assert_eq!(payload.len(), padded);
            assert_eq!(payload[len - 1], b'}');
            assert!(payload[len..].iter().all(|b| *b == b' '));
            if deliverable(len) {
                assert_eq!(padded, len, "{len} is sent as it is");
                continue;
            }
            padded_any += 1;
            // Padded: the receiver still parses the frame and the signature
            // over its messages still verifies.
            let sign = matches!(len % CHUNK_BYTES, 1 | 249) || len % 16 == 0;
            let (mut bytes, filler) = if sign { signed.of_len(len) } else { unsigned.of_len(len) };
            assert!(pad(&mut bytes));
            assert_eq!(bytes.len(), padded);
            let frame: Frame = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("padded frame of {len} bytes: {e}"));
            let msgs = frame.msgs.expect("msgs");
            if sign {
                receiver
                    .verify_message("/mycelium/frame", "n:1", frame.ts.as_deref(), frame.sig.as_deref(), msgs.get().as_bytes())
                    .unwrap_or_else(|e| panic!("padded frame of {len} bytes: {e}"));
                verified += 1;
            }
            let msgs: Vec<Msg> = serde_json::from_str(msgs.get()).unwrap();
            assert_eq!(msgs[0].error.as_ref().map(String::len), Some(filler));
        }
        assert_eq!(padded_any, 15 * (MIN_LAST_CHUNK - 1), "15 chunk boundaries below 20 000, 249 bad lengths after each");
        assert!(verified > 15 * 2 + 15 * 249 / 16 - 15, "{verified}");

        // Fragments are padded the same way and still parse.
        for mut part in fragment("n:1", "f", &vec![b'a'; FRAGMENT_BYTES + 977]) {
            pad(&mut part);
            assert!(deliverable(part.len()));
            assert!(serde_json::from_slice::<Frame>(&part).unwrap().frag.is_some());
        }
    }

    #[test]
    fn fragments_reassemble_in_any_order_once() {
        let frame: Vec<u8> = (0..(FRAGMENT_BYTES * 2 + 17)).map(|i| b'a' + (i % 26) as u8).collect();
        let parts = fragment("n:1", "f1", &frame);
        assert_eq!(parts.len(), 3);
        let mut r = Reassembly::default();
        let decode = |p: &Vec<u8>| serde_json::from_slice::<Frame>(p).unwrap().frag.unwrap();
        assert_eq!(r.add("n:1", decode(&parts[2])), Ok(None));
        assert_eq!(r.add("n:1", decode(&parts[2])), Ok(None), "duplicate ignored");
        assert_eq!(r.add("n:2", decode(&parts[0])), Ok(None), "other sender, other frame");
        assert_eq!(r.add("n:1", decode(&parts[0])), Ok(None));
        assert_eq!(r.add("n:1", decode(&parts[1])), Ok(Some(frame)));
        assert!(r.held_bytes() > 0, "n:2's part is still held");
        let bad = Fragment { id: "x".into(), i: 3, n: 3, data: String::new() };
        assert_eq!(r.add("n:1", bad), Err(FragmentError::Malformed));
    }
}

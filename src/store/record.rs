//! Stored records and their identity (dot).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::causal::Clock;

/// Identity of a write: `(epoch, origin, seq)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dot {
    pub epoch: u64,
    pub origin: String,
    pub seq: u64,
}

/// One version of a key. `value: None` is a tombstone.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    /// The JSON value exactly as the client sent it (raw text, never re-encoded).
    pub value: Option<Box<RawValue>>,
    pub dot: Dot,
    /// The context clock the write was taken under.
    pub deps: Clock,
    pub hlc: u64,
}

impl Record {
    pub fn is_live(&self) -> bool {
        self.value.is_some()
    }

    /// LWW order: true when `self` wins over `other`.
    pub fn wins_over(&self, other: &Record) -> bool {
        (self.hlc, &self.dot.origin, self.dot.seq) > (other.hlc, &other.dot.origin, other.dot.seq)
    }

    /// Storage encoding: one tag byte (live or tombstone, so counting live
    /// keys at start-up decodes nothing), then the fields in binary:
    /// `epoch seq hlc: u64 | origin: u16 len + bytes | key: u32 len + bytes |
    /// value: u32 len + bytes (live only) | deps: u16 count × (u16 len +
    /// origin + u64)`, integers little-endian. Half the bytes of the JSON
    /// form this replaced, and no JSON parsing on the read path.
    pub fn encode(&self) -> Vec<u8> {
        let value = self.value.as_ref().map(|v| v.get().as_bytes());
        let mut out = Vec::with_capacity(64 + self.key.len() + self.dot.origin.len() + value.map_or(0, <[u8]>::len) + 24 * self.deps.len());
        out.push(if value.is_some() { LIVE } else { TOMBSTONE });
        out.extend_from_slice(&self.dot.epoch.to_le_bytes());
        out.extend_from_slice(&self.dot.seq.to_le_bytes());
        out.extend_from_slice(&self.hlc.to_le_bytes());
        put_short(&mut out, self.dot.origin.as_bytes());
        put_long(&mut out, self.key.as_bytes());
        if let Some(v) = value {
            put_long(&mut out, v);
        }
        out.extend_from_slice(&(self.deps.len() as u16).to_le_bytes());
        for (origin, seq) in self.deps.iter() {
            put_short(&mut out, origin.as_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
        match bytes.first() {
            Some(&LIVE) => decode_binary(&bytes[1..], true),
            Some(&TOMBSTONE) => decode_binary(&bytes[1..], false),
            // Data written before the binary encoding.
            Some(b'L' | b'T') => Ok(serde_json::from_slice(&bytes[1..])?),
            _ => Err(DecodeError::Malformed),
        }
    }

    pub fn encoded_is_live(bytes: &[u8]) -> bool {
        matches!(bytes.first(), Some(&LIVE | b'L'))
    }
}

const LIVE: u8 = 1;
const TOMBSTONE: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed stored record")]
    Malformed,
    #[error("malformed stored record: {0}")]
    Json(#[from] serde_json::Error),
}

fn put_short(out: &mut Vec<u8>, bytes: &[u8]) {
    // Origins are node addresses (host:port), far below 64 KiB.
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_long(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(DecodeError::Malformed)?;
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| DecodeError::Malformed)?))
    }

    fn len16(&mut self) -> Result<usize, DecodeError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().map_err(|_| DecodeError::Malformed)?) as usize)
    }

    fn len32(&mut self) -> Result<usize, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| DecodeError::Malformed)?) as usize)
    }

    fn string(&mut self, len: usize) -> Result<String, DecodeError> {
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| DecodeError::Malformed)
    }
}

fn decode_binary(bytes: &[u8], live: bool) -> Result<Record, DecodeError> {
    let mut r = Reader(bytes);
    let epoch = r.u64()?;
    let seq = r.u64()?;
    let hlc = r.u64()?;
    let n = r.len16()?;
    let origin = r.string(n)?;
    let n = r.len32()?;
    let key = r.string(n)?;
    let value = if live {
        let n = r.len32()?;
        // Stored values were validated JSON when written; no re-parse here.
        Some(RawValue::from_string(r.string(n)?).map_err(DecodeError::Json)?)
    } else {
        None
    };
    let count = r.len16()?;
    let mut deps = Clock::new();
    for _ in 0..count {
        let n = r.len16()?;
        let o = r.string(n)?;
        deps.set(&o, r.u64()?);
    }
    Ok(Record { key, value, dot: Dot { epoch, origin, seq }, deps, hlc })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(hlc: u64, origin: &str, value: Option<&str>) -> Record {
        Record {
            key: "k".into(),
            value: value.map(|v| RawValue::from_string(v.to_string()).unwrap()),
            dot: Dot { epoch: 0, origin: origin.into(), seq: 1 },
            deps: Clock::new(),
            hlc,
        }
    }

    #[test]
    fn lww_orders_by_hlc_then_origin() {
        assert!(rec(2, "a", Some("1")).wins_over(&rec(1, "b", Some("1"))));
        assert!(rec(2, "b", Some("1")).wins_over(&rec(2, "a", Some("1"))));
        assert!(!rec(2, "a", Some("1")).wins_over(&rec(2, "b", Some("1"))));
        assert!(!rec(1, "a", None).wins_over(&rec(1, "a", None)), "a record does not beat itself");
    }

    #[test]
    fn encoding_round_trips_values_exactly() {
        for raw in [r#""text""#, "12345678901234567890123", "1.0", r#"{"b":1,"a":[true,null]}"#, "false"] {
            let r = rec(7, "n:1", Some(raw));
            let bytes = r.encode();
            assert!(Record::encoded_is_live(&bytes));
            let back = Record::decode(&bytes).unwrap();
            assert_eq!(back.value.unwrap().get(), raw);
            assert_eq!(back.hlc, 7);
        }
        let tomb = rec(1, "n:1", None).encode();
        assert!(!Record::encoded_is_live(&tomb));
        assert!(Record::decode(&tomb).unwrap().value.is_none());
    }

    #[test]
    fn every_field_round_trips_and_the_json_form_still_reads() {
        let mut r = rec(u64::MAX - 3, "10.0.0.7:13800", Some(r#""héllo""#));
        r.key = "ключ/🙂".into();
        r.dot.epoch = 9;
        r.dot.seq = 1 << 40;
        r.deps.set("a:1", 5);
        r.deps.set("b:2", u64::MAX);
        let back = Record::decode(&r.encode()).unwrap();
        assert_eq!((back.key.as_str(), back.hlc, &back.dot, &back.deps), (r.key.as_str(), r.hlc, &r.dot, &r.deps));
        assert_eq!(back.value.unwrap().get(), r#""héllo""#);
        let mut legacy = vec![b'L'];
        legacy.extend_from_slice(&serde_json::to_vec(&r).unwrap());
        assert!(Record::encoded_is_live(&legacy));
        assert_eq!(Record::decode(&legacy).unwrap().dot, r.dot);
    }

    #[test]
    fn truncated_or_garbage_bytes_are_errors_not_panics() {
        let bytes = rec(7, "n:1", Some("[1,2,3]")).encode();
        for cut in 0..bytes.len() {
            assert!(Record::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Record::decode(&[0xff, 1, 2]).is_err());
    }
}

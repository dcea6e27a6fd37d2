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

    /// Storage encoding: one tag byte (`L` live, `T` tombstone) so counting
    /// live keys at start-up needs no JSON parsing, then the JSON record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.value.as_ref().map_or(0, |v| v.get().len()));
        out.push(if self.is_live() { b'L' } else { b'T' });
        // Serialising plain data into a Vec cannot fail.
        serde_json::to_writer(&mut out, self).expect("record serialises");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(bytes.get(1..).unwrap_or_default())
    }

    pub fn encoded_is_live(bytes: &[u8]) -> bool {
        bytes.first() == Some(&b'L')
    }
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
}

//! The client-facing causal context: `{"epoch": n, "clock": {origin: seq}}`.
//!
//! Clients treat it as opaque. Parsing is strict (wrong types, negative or
//! fractional counters, unknown fields are errors) so that a corrupted context
//! is reported instead of silently weakening the guarantee.
//!
//! [`CausalContext::from_json`] on a `serde_json::Value` is the reference
//! parser. Requests carry the context as JSON text, and building a `Value`
//! for it costs allocations on every request, so [`CausalContext::parse_json`]
//! (and the request body parser, through [`PlainContext`]) first try a typed
//! parse that accepts only the plain form (an object, each field once);
//! anything else goes through the reference parser, so the two can never
//! disagree. Replies serialise the context directly
//! ([`Serialize`]), in the same bytes as `to_json()`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::Clock;

/// What a client carries between requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CausalContext {
    /// View epoch the clock's entries belong to.
    pub epoch: u64,
    /// Highest seq per origin the client's history depends on.
    pub clock: Clock,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid causal-context: {0}")]
pub struct ContextError(pub &'static str);

/// Longest origin name accepted in a context (addresses are far shorter).
const MAX_ORIGIN_LEN: usize = 300;
/// Most entries accepted in one context; a cluster has far fewer nodes.
const MAX_ENTRIES: usize = 4096;

impl CausalContext {
    /// Parses a context from its JSON form. `null` and a missing context are
    /// the empty context.
    pub fn from_json(value: &Value) -> Result<Self, ContextError> {
        let obj = match value {
            Value::Null => return Ok(Self::default()),
            Value::Object(obj) => obj,
            _ => return Err(ContextError("must be a JSON object")),
        };
        let mut ctx = CausalContext::default();
        for (field, v) in obj {
            match field.as_str() {
                "epoch" => ctx.epoch = v.as_u64().ok_or(ContextError("epoch must be a non-negative integer"))?,
                "clock" => ctx.clock = parse_clock(v)?,
                _ => return Err(ContextError("unknown field")),
            }
        }
        Ok(ctx)
    }

    /// Parses the URL-query form (the same JSON, URL-decoded by the caller).
    pub fn parse_text(text: &str) -> Result<Self, ContextError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        Self::parse_json(text)
    }

    /// Parses a context from JSON text; the same result as `from_json` on
    /// the text parsed as a `Value` (`null` is the empty context).
    pub fn parse_json(text: &str) -> Result<Self, ContextError> {
        if let Some(ctx) = Self::parse_plain(text) {
            return Ok(ctx);
        }
        let value: Value = serde_json::from_str(text).map_err(|_| ContextError("not JSON"))?;
        Self::from_json(&value)
    }

    /// The typed fast path: `Some` only when `from_json` would accept the
    /// text with this very result (see [`PlainContext`]).
    fn parse_plain(text: &str) -> Option<Self> {
        serde_json::from_str::<PlainContext>(text).ok()?.into_context()
    }

    pub fn to_json(&self) -> Value {
        if self.clock.is_empty() {
            return Value::Object(Map::new());
        }
        let clock: Map<String, Value> = self.clock.iter().map(|(o, s)| (o.to_owned(), Value::from(s))).collect();
        let mut obj = Map::new();
        obj.insert("epoch".into(), Value::from(self.epoch));
        obj.insert("clock".into(), Value::Object(clock));
        Value::Object(obj)
    }

    /// The context as seen by a node at `epoch`: entries of older epochs are
    /// already satisfied everywhere and are dropped.
    pub fn at_epoch(&self, epoch: u64) -> Cow<'_, CausalContext> {
        if self.epoch < epoch { Cow::Owned(CausalContext { epoch, clock: Clock::new() }) } else { Cow::Borrowed(self) }
    }
}

/// A context in its plain JSON form: an object with at most one `epoch` and
/// one `clock`, no other field, `u64` counters. It deserialises only what
/// `from_json` accepts with the same result, and fails on everything else
/// (a repeated field, where a `Value` keeps the last one; `null` for a
/// field; a negative, fractional or string counter; an unknown field; a
/// non-object), so the caller can then ask the reference parser. Request
/// bodies use it to parse the context in place.
pub struct PlainContext {
    epoch: u64,
    clock: BTreeMap<String, u64>,
}

impl PlainContext {
    /// The context; `None` when `from_json` would reject it.
    pub fn into_context(self) -> Option<CausalContext> {
        // A map keeps the last of duplicate origins, like a `Value` object.
        if self.clock.len() > MAX_ENTRIES || self.clock.keys().any(|o| !valid_origin(o)) {
            return None;
        }
        Some(CausalContext { epoch: self.epoch, clock: Clock::from_map(self.clock) })
    }
}

impl<'de> Deserialize<'de> for PlainContext {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // An object only: a derived struct would also take an array (fields by position).
        deserializer.deserialize_map(PlainVisitor)
    }
}

struct PlainVisitor;

impl<'de> Visitor<'de> for PlainVisitor {
    type Value = PlainContext;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a causal-context object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PlainContext, A::Error> {
        let (mut epoch, mut clock) = (None, None);
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Epoch if epoch.is_none() => epoch = Some(map.next_value::<u64>()?),
                Field::Clock if clock.is_none() => clock = Some(map.next_value::<BTreeMap<String, u64>>()?),
                _ => return Err(de::Error::custom("repeated causal-context field")),
            }
        }
        Ok(PlainContext { epoch: epoch.unwrap_or(0), clock: clock.unwrap_or_default() })
    }
}

enum Field {
    Epoch,
    Clock,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`epoch` or `clock`")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                match v {
                    "epoch" => Ok(Field::Epoch),
                    "clock" => Ok(Field::Clock),
                    _ => Err(E::unknown_field(v, &["epoch", "clock"])),
                }
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

/// The same bytes as `serde_json::to_vec(&self.to_json())`: `{}` for an
/// empty clock, else `{"clock":{..},"epoch":n}` (keys sorted, as in a
/// `Value` object).
impl Serialize for CausalContext {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.clock.is_empty() {
            return serializer.serialize_map(Some(0))?.end();
        }
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("clock", &self.clock)?;
        map.serialize_entry("epoch", &self.epoch)?;
        map.end()
    }
}

fn valid_origin(origin: &str) -> bool {
    !origin.is_empty() && origin.len() <= MAX_ORIGIN_LEN
}

fn parse_clock(value: &Value) -> Result<Clock, ContextError> {
    let obj = value.as_object().ok_or(ContextError("clock must be an object"))?;
    if obj.len() > MAX_ENTRIES {
        return Err(ContextError("too many clock entries"));
    }
    let mut map = BTreeMap::new();
    for (origin, seq) in obj {
        if !valid_origin(origin) {
            return Err(ContextError("bad origin"));
        }
        let seq = seq.as_u64().ok_or(ContextError("counters must be non-negative integers"))?;
        map.insert(origin.clone(), seq);
    }
    Ok(Clock::from_map(map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_forms_parse_to_the_empty_context() {
        assert_eq!(CausalContext::from_json(&json!({})).unwrap(), CausalContext::default());
        assert_eq!(CausalContext::from_json(&Value::Null).unwrap(), CausalContext::default());
        assert_eq!(CausalContext::parse_text("").unwrap(), CausalContext::default());
    }

    #[test]
    fn round_trips_through_json() {
        let ctx = CausalContext::from_json(&json!({"epoch": 2, "clock": {"a:1": 3, "b:2": 7}})).unwrap();
        assert_eq!(ctx.epoch, 2);
        assert_eq!(ctx.clock.get("a:1"), 3);
        assert_eq!(CausalContext::from_json(&ctx.to_json()).unwrap(), ctx);
        assert_eq!(CausalContext::parse_text(&ctx.to_json().to_string()).unwrap(), ctx);
    }

    #[test]
    fn empty_context_serialises_as_empty_object() {
        assert_eq!(CausalContext::default().to_json(), json!({}));
    }

    #[test]
    fn rejects_malformed_contexts() {
        for bad in [
            json!("abc"),
            json!(""),
            json!(5),
            json!([1, 2]),
            json!(true),
            json!({"clock": {"a": -1}}),
            json!({"clock": {"a": 1.5}}),
            json!({"clock": {"a": "3"}}),
            json!({"clock": [1]}),
            json!({"epoch": -1}),
            json!({"epoch": "1"}),
            json!({"vector": {}}),
            json!({"clock": {"": 1}}),
        ] {
            assert!(CausalContext::from_json(&bad).is_err(), "{bad} should be rejected");
        }
        assert!(CausalContext::parse_text("{not json").is_err());
    }

    /// The typed fast path must agree with the reference parser on every
    /// input: the same context, or an error from both.
    #[test]
    fn parse_json_agrees_with_from_json() {
        let long = "o".repeat(MAX_ORIGIN_LEN + 1);
        let many: String = (0..=MAX_ENTRIES).map(|i| format!("\"n{i}\":1")).collect::<Vec<_>>().join(",");
        let cases = [
            "{}".to_string(),
            " \n{ } ".into(),
            "null".into(),
            r#"{"epoch":2,"clock":{"a:1":3,"b:2":7}}"#.into(),
            r#"{"clock":{"b":1,"a":2},"epoch":0}"#.into(),
            r#"{"epoch":3}"#.into(),
            r#"{"clock":{"a":0}}"#.into(),
            r#"{"clock":{"a":0,"b":4}}"#.into(),
            r#"{"clock":{"a":1,"a":5}}"#.into(),
            r#"{"clock":{"a":-1,"a":5}}"#.into(),
            r#"{"clock":{"a":5,"a":-1}}"#.into(),
            r#"{"clock":5,"clock":{"a":1}}"#.into(),
            r#"{"clock":{"a":1},"clock":5}"#.into(),
            r#"{"epoch":1,"epoch":2}"#.into(),
            r#"{"epoch":"x","epoch":2}"#.into(),
            r#"{"epoch":null}"#.into(),
            r#"{"clock":null}"#.into(),
            r#"{"epoch":-0}"#.into(),
            r#"{"epoch":1.0}"#.into(),
            r#"{"epoch":1e2}"#.into(),
            r#"{"epoch":18446744073709551615}"#.into(),
            r#"{"epoch":18446744073709551616}"#.into(),
            r#"{"clock":{"a":"3"}}"#.into(),
            r#"{"clock":{"a":1.5}}"#.into(),
            r#"{"clock":{"":1}}"#.into(),
            r#"{"clock":{"a":1}}"#.into(),
            r#"{"epoch":4,"clock":{"a":1}}"#.into(),
            format!(r#"{{"clock":{{"{long}":1}}}}"#),
            format!(r#"{{"clock":{{{many}}}}}"#),
            r#"{"clock":[1]}"#.into(),
            r#"{"vector":{}}"#.into(),
            r#"[2,{"a":1}]"#.into(),
            r#"[]"#.into(),
            r#""abc""#.into(),
            "5".into(),
            "true".into(),
            "{not json".into(),
            r#"{"epoch":1} x"#.into(),
        ];
        for text in &cases {
            let reference = serde_json::from_str::<Value>(text).map_err(|_| ()).and_then(|v| CausalContext::from_json(&v).map_err(|_| ()));
            assert_eq!(CausalContext::parse_json(text).map_err(|_| ()), reference, "{text}");
        }
    }

    #[test]
    fn plain_contexts_take_the_fast_path() {
        for text in ["{}", r#"{"epoch":2,"clock":{"a:1":3,"b:2":7}}"#, r#"{"clock":{"a":1,"a":5}}"#, r#"{"clock":{"a":0}}"#] {
            assert!(CausalContext::parse_plain(text).is_some(), "{text}");
        }
        for text in ["null", r#"[2,{"a":1}]"#, r#"{"epoch":1,"epoch":2}"#, r#"{"clock":{"":1}}"#] {
            assert!(CausalContext::parse_plain(text).is_none(), "{text}");
        }
    }

    #[test]
    fn serialises_like_to_json() {
        for ctx in [
            CausalContext::default(),
            CausalContext { epoch: 7, clock: Clock::new() },
            CausalContext::from_json(&json!({"epoch": 2, "clock": {"b\"\n": 3, "a:1": 18446744073709551615u64}})).unwrap(),
        ] {
            assert_eq!(serde_json::to_string(&ctx).unwrap(), ctx.to_json().to_string());
        }
    }

    #[test]
    fn older_epochs_are_dropped() {
        let ctx = CausalContext::from_json(&json!({"epoch": 1, "clock": {"a": 3}})).unwrap();
        assert!(ctx.at_epoch(2).clock.is_empty());
        assert_eq!(*ctx.at_epoch(1), ctx);
        assert_eq!(*ctx.at_epoch(0), ctx, "a newer epoch is kept so the node waits for it");
    }
}

//! The client-facing causal context: `{"epoch": n, "clock": {origin: seq}}`.
//!
//! Clients treat it as opaque. Parsing is strict (wrong types, negative or
//! fractional counters, unknown fields are errors) so that a corrupted context
//! is reported instead of silently weakening the guarantee.

use std::collections::BTreeMap;

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
        let value: Value = serde_json::from_str(text).map_err(|_| ContextError("not JSON"))?;
        Self::from_json(&value)
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
    pub fn at_epoch(&self, epoch: u64) -> CausalContext {
        if self.epoch < epoch { CausalContext { epoch, clock: Clock::new() } } else { self.clone() }
    }
}

fn parse_clock(value: &Value) -> Result<Clock, ContextError> {
    let obj = value.as_object().ok_or(ContextError("clock must be an object"))?;
    if obj.len() > MAX_ENTRIES {
        return Err(ContextError("too many clock entries"));
    }
    let mut map = BTreeMap::new();
    for (origin, seq) in obj {
        if origin.is_empty() || origin.len() > MAX_ORIGIN_LEN {
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

    #[test]
    fn older_epochs_are_dropped() {
        let ctx = CausalContext::from_json(&json!({"epoch": 1, "clock": {"a": 3}})).unwrap();
        assert!(ctx.at_epoch(2).clock.is_empty());
        assert_eq!(ctx.at_epoch(1), ctx);
        assert_eq!(ctx.at_epoch(0), ctx, "a newer epoch is kept so the node waits for it");
    }
}

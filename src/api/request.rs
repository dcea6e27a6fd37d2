//! Parsing of public requests: key, body, causal context, hop headers. Every
//! failure becomes an [`ApiError`]; nothing here can panic on input.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body as RequestBody;
use axum::extract::Query;
use axum::http::{HeaderMap, HeaderName, Uri};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::error::ApiError;
use crate::causal::{CausalContext, PlainContext};

/// Marks a forwarded request and how many hops it has made (1: entry node
/// to a replica; 2: hold-back fallback to another replica of the shard).
pub const HOP_HEADER: &str = "x-causalkv-hop";
/// On a forwarded request: the epoch of the node that forwarded it.
pub const EPOCH_HEADER: &str = "x-causalkv-epoch";
/// On a forwarded request: when (unix ms) the forwarding node stops waiting.
/// A write that reaches this point unexecuted is dropped, because the sender
/// may already have had it taken by another replica (a node frozen with the
/// request in its socket buffer must not replay it later with a newer HLC).
pub const DEADLINE_HEADER: &str = "x-causalkv-deadline-ms";
/// On a hop-2 request: how long the target may hold it back.
pub const WAIT_HEADER: &str = "x-causalkv-wait-ms";
pub use crate::gossip::FROM_HEADER;

// The same names as `HeaderName`s, for lookups: a lookup by `&str` parses
// and validates the name on every request.
static HOP_NAME: HeaderName = HeaderName::from_static(HOP_HEADER);
static EPOCH_NAME: HeaderName = HeaderName::from_static(EPOCH_HEADER);
static DEADLINE_NAME: HeaderName = HeaderName::from_static(DEADLINE_HEADER);
static WAIT_NAME: HeaderName = HeaderName::from_static(WAIT_HEADER);
static FROM_NAME: HeaderName = HeaderName::from_static(FROM_HEADER);

/// A JSON object body with the context as raw text, for the reference
/// context parser ([`CausalContext::parse_json`]).
#[derive(Deserialize)]
struct Body<'a> {
    #[serde(default)]
    value: Option<Box<RawValue>>,
    /// `null` is `None`, as for an absent field.
    #[serde(rename = "causal-context", default, borrow)]
    context: Option<&'a RawValue>,
}

/// The same body with a plain context parsed in place: one pass over the
/// body instead of two, and no copy of the context text.
#[derive(Deserialize)]
struct PlainBody {
    #[serde(default)]
    value: Option<Box<RawValue>>,
    #[serde(rename = "causal-context", default)]
    context: Option<PlainContext>,
}

/// The context a body carries.
enum BodyContext<'a> {
    Absent,
    Parsed(CausalContext),
    Raw(&'a str),
}

/// The parts of a request body the API uses.
pub struct ParsedBody<'a> {
    pub value: Option<Box<RawValue>>,
    pub context: CausalContext,
    /// The context came from the query, not from the body.
    pub context_from_query: bool,
    bytes: &'a [u8],
    query: Option<&'a str>,
}

impl ParsedBody<'_> {
    /// The context as sent (body, else query), echoed on errors that happen
    /// before it is used. Only errors need it, so it is found again here.
    pub fn raw_context(&self) -> Value {
        let body = match first_byte(self.bytes) {
            Some(b'{') => serde_json::from_slice::<Body>(self.bytes).ok().and_then(|b| b.context).map(RawValue::get),
            _ => None,
        };
        body.or_else(|| nonblank(self.query))
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_else(|| Value::Object(Default::default()))
    }
}

/// Most bytes of an oversized body read (and discarded) before answering 413:
/// a client that sends its whole body before reading the answer then gets
/// the 413 instead of a reset connection; beyond this the connection closes.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Reads a request body of at most `limit` bytes. A body that came in one
/// chunk (the common case) is that chunk, not a copy.
pub async fn read_body(body: RequestBody, limit: usize) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut first: Option<Bytes> = None;
    let mut buf = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::BadBody)?;
        total = total.saturating_add(chunk.len());
        if total > DRAIN_LIMIT {
            return Err(ApiError::ValueTooLarge);
        }
        if total <= limit {
            match first.take() {
                None if buf.is_empty() => first = Some(chunk),
                earlier => {
                    buf.extend_from_slice(earlier.as_deref().unwrap_or_default());
                    buf.extend_from_slice(&chunk);
                }
            }
        }
    }
    if total > limit { Err(ApiError::ValueTooLarge) } else { Ok(first.unwrap_or_else(|| Bytes::from(buf))) }
}

/// Parses an optional JSON body and the `causal-context` query parameter
/// (`query`, see [`query_context`]; used when the body has no context).
/// Every error answers with the empty context.
pub fn parse_body<'a>(bytes: &'a [u8], query: Option<&'a str>) -> Result<ParsedBody<'a>, ApiError> {
    let (value, context) = match first_byte(bytes) {
        None => (None, BodyContext::Absent),
        Some(b'{') => read_object(bytes)?,
        // serde would also accept an array as a struct (fields by position).
        Some(_) => return Err(ApiError::BadBody),
    };
    let (context, context_from_query) = match context {
        BodyContext::Parsed(ctx) => (ctx, false),
        BodyContext::Raw(text) => (CausalContext::parse_json(text).map_err(|_| ApiError::InvalidContext)?, false),
        BodyContext::Absent => match nonblank(query) {
            Some(text) => (CausalContext::parse_json(text).map_err(|_| ApiError::InvalidContext)?, true),
            None => (CausalContext::default(), false),
        },
    };
    Ok(ParsedBody { value, context, context_from_query, bytes, query })
}

/// A JSON object body: first with a plain context parsed in place; a body
/// that fails that (a malformed context, or a malformed body) is parsed
/// again with the context as text, so that the reference parser decides.
/// A body the first parse accepts is one the second accepts with the same
/// value and a context text that parses to the same context.
fn read_object(bytes: &[u8]) -> Result<(Option<Box<RawValue>>, BodyContext<'_>), ApiError> {
    if let Ok(PlainBody { value, context }) = serde_json::from_slice(bytes) {
        match context.map(PlainContext::into_context) {
            None => return Ok((value, BodyContext::Absent)),
            Some(Some(ctx)) => return Ok((value, BodyContext::Parsed(ctx))),
            Some(None) => {}
        }
    }
    let Body { value, context } = serde_json::from_slice(bytes).map_err(|_| ApiError::BadBody)?;
    Ok((value, context.map_or(BodyContext::Absent, |raw| BodyContext::Raw(raw.get()))))
}

fn first_byte(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

fn nonblank(text: Option<&str>) -> Option<&str> {
    text.filter(|t| !t.trim().is_empty())
}

/// The `causal-context` query parameter of a request, if it has one. Only a
/// URI with a query is decoded (as axum's `Query` extractor does it, so a
/// repeated parameter keeps the last value).
pub fn query_context(uri: &Uri) -> Option<String> {
    uri.query()?;
    let Query(mut params) = Query::<HashMap<String, String>>::try_from_uri(uri).ok()?;
    params.remove("causal-context")
}

/// The route of key requests; the rest of the path is the key, percent-encoded.
pub const KEY_PATH_PREFIX: &str = "/kv-store/keys/";

/// Validates the key of a request path (see [`decode_key`]).
pub fn parse_key(path: &str, max_len: usize) -> Result<String, ApiError> {
    let raw = path.strip_prefix(KEY_PATH_PREFIX).ok_or(ApiError::KeyMissing)?;
    let key = decode_key(raw)?;
    if key.is_empty() {
        return Err(ApiError::KeyMissing);
    }
    if key.chars().count() > max_len {
        return Err(ApiError::KeyTooLong);
    }
    if key.contains('/') {
        return Err(ApiError::InvalidKey);
    }
    Ok(key)
}

/// The one rule for percent-decoding a key (API.md "Keys"): every `%`
/// starts an escape of two hex digits, and the decoded bytes are UTF-8
/// without NUL; anything else is [`ApiError::InvalidKey`]. (A lenient
/// decoder passes `%zz` through as text and turns `%00` into a NUL, so the
/// same key could be spelt two ways, or not be printable in a log.)
pub fn decode_key(raw: &str) -> Result<String, ApiError> {
    let bytes = raw.as_bytes();
    let Some(first) = bytes.iter().position(|b| *b == b'%') else {
        // Nothing to decode (the common case): the text is the key.
        return if bytes.contains(&0) { Err(ApiError::InvalidKey) } else { Ok(raw.to_owned()) };
    };
    let mut rest = &bytes[first..];
    while let Some(at) = rest.iter().position(|b| *b == b'%') {
        match rest.get(at + 1..at + 3) {
            Some([hi, lo]) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => rest = &rest[at + 3..],
            _ => return Err(ApiError::InvalidKey),
        }
    }
    let key = percent_encoding::percent_decode_str(raw).decode_utf8().map_err(|_| ApiError::InvalidKey)?;
    if key.contains('\0') {
        return Err(ApiError::InvalidKey);
    }
    Ok(key.into_owned())
}

/// Deepest nesting of arrays and objects accepted in a value (API.md): a
/// reply nests the value one level deeper, and common JSON parsers stop at
/// 100 to 128 levels (serde_json: 128), so every client can read it back.
pub const MAX_VALUE_DEPTH: usize = 64;

/// Checks a PUT value: present, not null, not "", within the size and
/// nesting limits.
pub fn check_value(value: Option<Box<RawValue>>, max_bytes: usize) -> Result<Box<RawValue>, ApiError> {
    let value = value.ok_or(ApiError::ValueMissing)?;
    let text = value.get().trim();
    if text == "null" || text == "\"\"" {
        return Err(ApiError::ValueMissing);
    }
    if value.get().len() > max_bytes {
        return Err(ApiError::ValueTooLarge);
    }
    if nested_deeper_than(value.get(), MAX_VALUE_DEPTH) {
        return Err(ApiError::ValueTooDeep(MAX_VALUE_DEPTH));
    }
    Ok(value)
}

/// Whether the JSON text `json` (already validated) nests arrays and objects
/// deeper than `limit`: one pass over the bytes counting brackets outside
/// strings, no parse (values are kept as raw text, so nothing else looks at
/// their depth). A scalar (the common value) is answered from its first byte.
fn nested_deeper_than(json: &str, limit: usize) -> bool {
    let bytes = json.as_bytes();
    if !matches!(bytes.iter().find(|b| !b.is_ascii_whitespace()), Some(b'[' | b'{')) {
        return false;
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => loop {
                // To the closing quote, stepping over escapes (`\"`, `\\`).
                i += 1;
                match bytes.get(i..).and_then(|rest| rest.iter().position(|b| *b == b'"' || *b == b'\\')) {
                    Some(at) if bytes[i + at] == b'\\' => i += at + 1,
                    Some(at) => {
                        i += at;
                        break;
                    }
                    // Unterminated: not JSON (values are validated before).
                    None => return false,
                }
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

/// What a forwarding node says about a request in its headers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HopHeaders {
    /// 0 for a client request.
    pub hop: u8,
    pub wait: Option<Duration>,
    pub sender_epoch: Option<u64>,
    pub deadline: Option<u64>,
}

/// Prefix of every header [`HopHeaders`] reads.
const HOP_PREFIX: &str = "x-causalkv-";

/// Reads [`HopHeaders`]. A client request has none of them: one pass over
/// its few header names finds that, instead of four hashed lookups.
pub fn hop_headers(headers: &HeaderMap) -> HopHeaders {
    if !headers.keys().any(|name| name.as_str().starts_with(HOP_PREFIX)) {
        return HopHeaders::default();
    }
    HopHeaders { hop: hop(headers), wait: wait_override(headers), sender_epoch: sender_epoch(headers), deadline: deadline(headers) }
}

/// The hop count of a request (0 for a client request).
pub fn hop(headers: &HeaderMap) -> u8 {
    headers.get(&HOP_NAME).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u8>().ok()).unwrap_or(0).min(2)
}

/// The hold-back bound a hop-2 request asks for.
fn wait_override(headers: &HeaderMap) -> Option<Duration> {
    headers.get(&WAIT_NAME).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).map(Duration::from_millis)
}

/// The epoch of the node that forwarded a request, if it said.
fn sender_epoch(headers: &HeaderMap) -> Option<u64> {
    headers.get(&EPOCH_NAME).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// The deadline a forwarding node set, if any (unix ms).
fn deadline(headers: &HeaderMap) -> Option<u64> {
    headers.get(&DEADLINE_NAME).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// The sending node of an internal or forwarded request.
pub fn sender(headers: &HeaderMap) -> Option<&str> {
    headers.get(&FROM_NAME).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    /// The parser before the fast path: the context through a `Value`.
    fn reference(bytes: &[u8], query: Option<&str>) -> Result<(Option<String>, CausalContext, Value), String> {
        #[derive(Deserialize)]
        struct ValueBody {
            #[serde(default)]
            value: Option<Box<RawValue>>,
            #[serde(rename = "causal-context", default)]
            context: Option<Value>,
        }
        let empty = || Value::Object(Default::default());
        let parsed: ValueBody = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            None => ValueBody { value: None, context: None },
            Some(b'{') => serde_json::from_slice(bytes).map_err(|_| "BadBody")?,
            Some(_) => return Err("BadBody".into()),
        };
        let raw_context = match parsed.context {
            Some(v) => v,
            None => match query {
                Some(text) if !text.trim().is_empty() => serde_json::from_str(text).map_err(|_| "InvalidContext")?,
                _ => empty(),
            },
        };
        let context = CausalContext::from_json(&raw_context).map_err(|_| "InvalidContext")?;
        Ok((parsed.value.map(|v| v.get().to_owned()), context, raw_context))
    }

    #[test]
    fn a_context_from_the_query_is_marked() {
        // The body alone does not say the request then: it cannot be relayed as sent.
        let q = Some(r#"{"epoch":1,"clock":{"q":2}}"#);
        assert!(parse_body(b"", q).unwrap().context_from_query);
        assert!(parse_body(br#"{"value": 1}"#, q).unwrap().context_from_query);
        assert!(parse_body(br#"{"causal-context": null}"#, q).unwrap().context_from_query);
        assert!(!parse_body(br#"{"causal-context": {}}"#, q).unwrap().context_from_query);
        assert!(!parse_body(b"", None).unwrap().context_from_query);
        assert!(!parse_body(b"", Some(" ")).unwrap().context_from_query);
    }

    #[test]
    fn plain_contexts_are_parsed_in_place() {
        let body = br#"{"value": 1, "causal-context": {"epoch": 2, "clock": {"a": 3}}}"#;
        assert!(matches!(read_object(body), Ok((Some(_), BodyContext::Parsed(_)))));
        let body = br#"{"causal-context": {"epoch": 2, "epoch": 3}}"#;
        assert!(matches!(read_object(body), Ok((None, BodyContext::Raw(_)))));
    }

    #[test]
    fn parse_body_agrees_with_the_value_parser() {
        let contexts = [
            "{}",
            "null",
            r#"{"epoch":2,"clock":{"a:1":3,"b:2":7}}"#,
            r#" { "clock" : { "b" : 1 , "a" : 0 } } "#,
            r#"{"epoch":3}"#,
            r#"{"clock":{"a":1,"a":5}}"#,
            r#"{"clock":{"a":-1,"a":5}}"#,
            r#"{"clock":5,"clock":{"a":1}}"#,
            r#"{"epoch":1,"epoch":2}"#,
            r#"{"epoch":null}"#,
            r#"{"clock":null}"#,
            r#"{"epoch":1.0}"#,
            r#"{"epoch":-0}"#,
            r#"{"clock":{"":1}}"#,
            r#"{"clock":{"a":"3"}}"#,
            r#"{"vector":{}}"#,
            r#"[2,{"a":1}]"#,
            r#""abc""#,
            "7",
        ];
        let mut bodies: Vec<String> = vec![
            String::new(),
            "  \n".into(),
            "{}".into(),
            "[]".into(),
            "[1]".into(),
            "null".into(),
            "{bad".into(),
            r#"{"value": 1} x"#.into(),
            r#"{"value": "v", "value": "w"}"#.into(),
            r#"{"key": "k", "value": {"a": [1, null]}}"#.into(),
            r#"{"value": null}"#.into(),
            r#"{"causal-context": {}, "causal-context": {}}"#.into(),
            r#"{"causal-context": {"clock": }}"#.into(),
        ];
        for ctx in contexts {
            bodies.push(format!(r#"{{"causal-context": {ctx}}}"#));
            bodies.push(format!(r#"{{"value": "v", "causal-context": {ctx}, "other": [1, {{}}]}}"#));
            bodies.push(format!(r#"{{"causal-context": {ctx}, "value": 12.50}}"#));
        }
        let queries =
            [None, Some(""), Some(" "), Some(r#"{"epoch":1,"clock":{"q":2}}"#), Some("null"), Some("{bad"), Some(r#"{"clock":{"q":-2}}"#)];
        for body in &bodies {
            for query in queries {
                let expected = reference(body.as_bytes(), query);
                let got = parse_body(body.as_bytes(), query)
                    .map(|p| (p.value.as_ref().map(|v| v.get().to_owned()), p.context.clone(), p.raw_context()))
                    .map_err(|e| format!("{e:?}"));
                assert_eq!(got, expected, "body {body:?}, query {query:?}");
            }
        }
    }

    #[test]
    fn one_rule_decodes_every_key() {
        let valid = [
            ("abc", "abc"),
            ("with%20space", "with space"),
            ("%C3%A9t%C3%A9", "été"),
            ("%c3%a9", "é"),
            ("100%25", "100%"),
            ("a%3Fb%23c", "a?b#c"),
            ("+plus+", "+plus+"),
            ("%F0%9F%A6%80", "🦀"),
            ("semi;colon~.dot", "semi;colon~.dot"),
            ("%252F", "%2F"),
            ("%2F", "/"),
            ("", ""),
        ];
        for (raw, key) in valid {
            assert_eq!(decode_key(raw).ok().as_deref(), Some(key), "{raw}");
        }
        let invalid =
            ["a%zz", "a%", "a%2", "%g0", "a%0g", "%%41", "a%00b", "%00", "a%ff", "%FF%FE", "%C3", "%C3%28", "%ED%A0%80", "%C0%AF", "a\0b"];
        for raw in invalid {
            assert!(matches!(decode_key(raw), Err(ApiError::InvalidKey)), "{raw}");
        }
        assert!(matches!(parse_key("/kv-store/keys/a%2Fb", 50), Err(ApiError::InvalidKey)));
        assert!(matches!(parse_key("/kv-store/keys/a%zz", 50), Err(ApiError::InvalidKey)));
        assert!(matches!(parse_key("/kv-store/keys/", 50), Err(ApiError::KeyMissing)));
        assert!(matches!(parse_key("/kv-store/keys/%C3%A9%C3%A9", 1), Err(ApiError::KeyTooLong)));
        assert_eq!(parse_key("/kv-store/keys/%C3%A9%C3%A9", 2).ok().as_deref(), Some("éé"));
    }

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(!nested_deeper_than(&deep(64), 64));
        assert!(nested_deeper_than(&deep(65), 64));
        assert!(nested_deeper_than(&deep(100_000), 64));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(65), "}".repeat(65));
        assert!(nested_deeper_than(&objects, 64));
        for shallow in [r#""[[[[[[""#, r#"["\"[[[[", "\\", "{{{{"]"#, r#"{"[":"{[{["}"#, "12", "\"\"", "[]", "{}"] {
            assert!(!nested_deeper_than(shallow, 2), "{shallow}");
        }
        assert!(nested_deeper_than(r#"[["\\",[1]]]"#, 2), "an escaped backslash ends before the quote");
        let value = |text: &str| Some(RawValue::from_string(text.to_owned()).unwrap());
        assert!(matches!(check_value(value(&deep(65)), 1 << 20), Err(ApiError::ValueTooDeep(64))));
        assert!(check_value(value(&deep(64)), 1 << 20).is_ok());
    }

    #[test]
    fn hop_headers_read_every_header_or_none() {
        for name in [HOP_HEADER, WAIT_HEADER, EPOCH_HEADER, DEADLINE_HEADER] {
            assert!(name.starts_with(HOP_PREFIX), "{name}");
        }
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        assert_eq!(hop_headers(&headers), HopHeaders::default());
        headers.insert(WAIT_HEADER, HeaderValue::from_static("70"));
        assert_eq!(hop_headers(&headers), HopHeaders { wait: Some(Duration::from_millis(70)), ..HopHeaders::default() });
        headers.insert(HOP_HEADER, HeaderValue::from_static("2"));
        headers.insert(EPOCH_HEADER, HeaderValue::from_static("4"));
        headers.insert(DEADLINE_HEADER, HeaderValue::from_static("123"));
        let expected = HopHeaders { hop: 2, wait: Some(Duration::from_millis(70)), sender_epoch: Some(4), deadline: Some(123) };
        assert_eq!(hop_headers(&headers), expected);
    }
}

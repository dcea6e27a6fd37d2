//! The routes of the stores causalkv replaces, so that their users switch
//! without rewriting clients: `POST /set` (form `key`, `value`, or JSON
//! `{"key", "value", "action": "set" | "delete"}`), `GET /get?key=`, `POST
//! /delete` (docs/API.md "Routes of the replaced stores"). This file owns
//! only the translation: fields in, `{"key", "value" | "result"}` out, and the
//! causal context in the `X-Causal-Context` header both ways. Everything else
//! is the main API's: keys and values pass its checks (`request::parse_key`,
//! `check_value`), bodies its bounded reader, each request goes through
//! `Node::serve_key` as a client request, is counted as a key request and
//! names the node that served it (`x-causalkv-served-by`), and errors
//! become statuses in `error.rs` (`ErrorReply`, `Error in SET`).

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::error::{ApiError, ErrorReply, SERVED_BY_HEADER};
use super::reply::json_response;
use super::request::{KEY_PATH_PREFIX, check_value, parse_key, read_body};
use crate::causal::CausalContext;
use crate::node::Node;
use crate::node::kv::{KvAnswer, KvOp, KvOutcome, KvRequest, Relayed};

/// Carries the causal context, in and out: the main API's `causal-context`
/// as compact JSON.
pub const CONTEXT_HEADER: &str = "x-causal-context";
static CONTEXT_NAME: HeaderName = HeaderName::from_static(CONTEXT_HEADER);

/// A form-encoded value may take three bytes for each byte of its JSON
/// text (`%C3%A9` for `é`), so a form body may be this many times
/// `MAX_VALUE_BYTES` (plus the overhead) before a value in bounds is refused.
const FORM_EXPANSION: usize = 3;

/// Longest field name an "Unknown field" error repeats.
const MAX_NAME_ECHO: usize = 40;

/// `/set`, `/get`, `/delete`, every method (a wrong one gets this module's 405).
pub fn routes() -> Router<Arc<Node>> {
    Router::new().route("/set", any(set)).route("/get", any(get)).route("/delete", any(delete))
}

async fn set(State(node): State<Arc<Node>>, req: Request) -> Response {
    serve(&node, Route::Set, req).await
}

async fn get(State(node): State<Arc<Node>>, req: Request) -> Response {
    serve(&node, Route::Get, req).await
}

async fn delete(State(node): State<Arc<Node>>, req: Request) -> Response {
    serve(&node, Route::Delete, req).await
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    Set,
    Get,
    Delete,
}

impl Route {
    /// The operation in error messages (`Error in SET`).
    fn name(self) -> &'static str {
        match self {
            Route::Set => "SET",
            Route::Get => "GET",
            Route::Delete => "DELETE",
        }
    }

    /// The `Allow` header of a 405.
    fn allow(self) -> &'static str {
        match self {
            Route::Get => "GET, HEAD",
            Route::Set | Route::Delete => "POST",
        }
    }

    fn accepts(self, method: &Method) -> bool {
        match self {
            Route::Get => method == Method::GET || method == Method::HEAD,
            Route::Set | Route::Delete => method == Method::POST,
        }
    }

    /// The fields the route takes, as an "Unknown field" error lists them.
    fn field_names(self) -> &'static str {
        match self {
            Route::Set => "key, value, action",
            Route::Get | Route::Delete => "key",
        }
    }

    /// The operation before the fields say otherwise (`action`).
    fn op(self) -> KvOp {
        match self {
            Route::Set => KvOp::Put,
            Route::Get => KvOp::Get,
            Route::Delete => KvOp::Delete,
        }
    }
}

async fn serve(node: &Node, route: Route, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    if !route.accepts(&parts.method) {
        // As the main API's 405s, not counted.
        let context = request_context(&parts.headers).unwrap_or_default();
        let mut response = respond(route, &parts.method, "", Err(ApiError::MethodNotAllowed), context);
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(route.allow()));
        return response;
    }
    let (op, response) = match parse(node, route, &parts, body).await {
        Ok(req) => {
            let answer = node.serve_key(&req).await;
            let served_by = HeaderValue::from_str(served_by(&answer).unwrap_or(node.me())).ok();
            let (result, context) = outcome(req.op, answer, &req.context);
            let mut response = respond(route, &parts.method, &req.key, result, context);
            if let Some(served_by) = served_by {
                response.headers_mut().insert(SERVED_BY_HEADER, served_by);
            }
            (req.op, response)
        }
        Err(rejected) => {
            let Rejected { op, error, context } = *rejected;
            (op, respond(route, &parts.method, "", Err(error), context))
        }
    };
    node.metrics.count_request(op.name(), response.status().as_u16());
    node.metrics.request_seconds.observe(started.elapsed().as_secs_f64());
    response
}

/// A request refused before it reached the node.
struct Rejected {
    op: KvOp,
    error: ApiError,
    /// The request's context (empty when its header was the problem).
    context: CausalContext,
}

/// The request as a client [`KvRequest`]: the context header first, then
/// the fields (the query of `/get`, the body of the others), the action,
/// the key and the value, each refused with the main API's error.
async fn parse(node: &Node, route: Route, parts: &Parts, body: Body) -> Result<KvRequest, Box<Rejected>> {
    let mut op = route.op();
    let context = match request_context(&parts.headers) {
        Ok(context) => context,
        Err(error) => return Err(Box::new(Rejected { op, error, context: CausalContext::default() })),
    };
    let (kind, bytes) = match route {
        Route::Get => (None, Vec::new()),
        Route::Set | Route::Delete => match read(node, &parts.headers, body).await {
            Ok(read) => read,
            Err(error) => return Err(Box::new(Rejected { op, error, context })),
        },
    };
    let checked = match route {
        Route::Get => form_fields(parts.uri.query().unwrap_or(""), route),
        Route::Set | Route::Delete => body_fields(&bytes, kind, route),
    }
    .and_then(|fields| {
        if route == Route::Set {
            op = action(fields.action)?;
        }
        let key = key(fields.key, node.config.max_key_length)?;
        let value = match op {
            KvOp::Put => Some(value(fields.value, node.config.max_value_bytes)?),
            KvOp::Get | KvOp::Delete => None,
        };
        Ok((key, value))
    });
    match checked {
        Ok((key, value)) => Ok(KvRequest::client(op, key, value, context, node.config.causal_wait)),
        Err(error) => Err(Box::new(Rejected { op, error, context })),
    }
}

/// A body, bounded by the main API's reader, and what its `Content-Type`
/// says it is. It is read even when the type is refused, so that the
/// client gets the answer rather than a reset connection.
async fn read(node: &Node, headers: &HeaderMap, body: Body) -> Result<(Option<BodyKind>, Vec<u8>), ApiError> {
    let declared = body_kind(headers);
    let max_value = match declared {
        Ok(Some(BodyKind::Json)) => node.config.max_value_bytes,
        _ => node.config.max_value_bytes.saturating_mul(FORM_EXPANSION),
    };
    let bytes = read_body(body, max_value.saturating_add(super::BODY_OVERHEAD)).await;
    Ok((declared?, Vec::from(bytes?)))
}

/// The `X-Causal-Context` header: absent or blank is the empty context;
/// more than one, non-ASCII or malformed is `Invalid causal-context`.
fn request_context(headers: &HeaderMap) -> Result<CausalContext, ApiError> {
    let mut values = headers.get_all(&CONTEXT_NAME).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return if headers.contains_key(&CONTEXT_NAME) { Err(ApiError::InvalidContext) } else { Ok(CausalContext::default()) };
    };
    let text = value.to_str().map_err(|_| ApiError::InvalidContext)?;
    CausalContext::parse_text(text).map_err(|_| ApiError::InvalidContext)
}

/// The context as a header value: its compact JSON with every character
/// outside printable ASCII written as a `\u` escape (header values carry
/// only printable ASCII; such characters can only be inside strings).
fn context_header(context: &CausalContext) -> HeaderValue {
    let json = serde_json::to_string(context).unwrap_or_else(|_| "{}".into());
    let printable = |c: char| (' '..='~').contains(&c);
    let text = if json.chars().all(printable) {
        json
    } else {
        let mut out = String::with_capacity(json.len() + 16);
        for c in json.chars() {
            if printable(c) {
                out.push(c);
            } else {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
        out
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("{}"))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum BodyKind {
    Form,
    Json,
}

/// What the `Content-Type` says the body is: a form, JSON (also `…+json`),
/// or nothing (`None`: the body's first byte decides); anything else is
/// refused.
fn body_kind(headers: &HeaderMap) -> Result<Option<BodyKind>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| ApiError::UnsupportedMediaType)?;
    let media = text.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match media.as_str() {
        "" => Ok(None),
        "application/x-www-form-urlencoded" => Ok(Some(BodyKind::Form)),
        "application/json" => Ok(Some(BodyKind::Json)),
        m if m.starts_with("application/") && m.ends_with("+json") => Ok(Some(BodyKind::Json)),
        _ => Err(ApiError::UnsupportedMediaType),
    }
}

/// A field as sent: form-encoded text, or JSON.
enum Field<'a> {
    Form(&'a str),
    Json(&'a RawValue),
}

/// The fields of one request, each given at most once.
#[derive(Default)]
struct Fields<'a> {
    key: Option<Field<'a>>,
    value: Option<Field<'a>>,
    action: Option<Field<'a>>,
}

impl<'a> Fields<'a> {
    /// Takes a field by its (decoded) name; a name the route does not take
    /// and a name given twice are refused.
    fn take(&mut self, name: &str, field: Field<'a>, route: Route) -> Result<(), ApiError> {
        let (slot, name) = match name {
            "key" => (&mut self.key, "key"),
            "value" if route == Route::Set => (&mut self.value, "value"),
            "action" if route == Route::Set => (&mut self.action, "action"),
            _ => return Err(unknown_field(name, route)),
        };
        if slot.is_some() {
            return Err(ApiError::DuplicateField(name));
        }
        *slot = Some(field);
        Ok(())
    }
}

fn unknown_field(name: &str, route: Route) -> ApiError {
    let mut shown: String = name.chars().take(MAX_NAME_ECHO).collect();
    if shown.len() < name.len() {
        shown.push('…');
    }
    ApiError::UnknownField(shown, route.field_names())
}

/// The fields of a body; an empty (or blank) body has none. Without a
/// declared kind, a body that starts like JSON (`{`, `[`) is JSON.
fn body_fields(bytes: &[u8], declared: Option<BodyKind>, route: Route) -> Result<Fields<'_>, ApiError> {
    let first = bytes.iter().copied().find(|b| !b.is_ascii_whitespace());
    let Some(first) = first else {
        return Ok(Fields::default());
    };
    let sniffed = if matches!(first, b'{' | b'[') { BodyKind::Json } else { BodyKind::Form };
    match declared.unwrap_or(sniffed) {
        BodyKind::Form => form_fields(std::str::from_utf8(bytes).map_err(|_| ApiError::BadBody)?, route),
        BodyKind::Json => json_fields(bytes, route),
    }
}

/// `name=value&…` (a body or a query): names decoded by [`form_decode`],
/// values kept encoded until they are read. A pair without `=` has an empty
/// value; empty pairs (`a=1&&b=2`) are skipped.
fn form_fields(text: &str, route: Route) -> Result<Fields<'_>, ApiError> {
    let mut fields = Fields::default();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = form_decode(name).ok_or_else(|| unknown_field(name, route))?;
        fields.take(&decoded, Field::Form(value), route)?;
    }
    Ok(fields)
}

/// One form-encoded component: `+` is a space, every `%` starts an escape
/// of exactly two hex digits, and the decoded bytes are UTF-8 (the key rule
/// of API.md); `None` otherwise. A lenient decoder would pass `%zz` through
/// and turn `%ff` into U+FFFD, so one text could be spelt several ways.
fn form_decode(raw: &str) -> Option<Cow<'_, str>> {
    let bytes = raw.as_bytes();
    if !bytes.iter().any(|b| *b == b'%' || *b == b'+') {
        return Some(Cow::Borrowed(raw));
    }
    let escapes_ok = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'%')
        .all(|(at, _)| matches!(bytes.get(at + 1..at + 3), Some([hi, lo]) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit()));
    if !escapes_ok {
        return None;
    }
    let spaced = raw.replace('+', " ");
    percent_decode_str(&spaced).decode_utf8().ok().map(|text| Cow::Owned(text.into_owned()))
}

/// A JSON object body's fields, as [`Fields::take`] takes them. The whole
/// body is parsed (so malformed JSON is `BadBody` wherever it is) before a
/// refused field is reported.
fn json_fields(bytes: &[u8], route: Route) -> Result<Fields<'_>, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let (fields, refused) = FieldsSeed(route).deserialize(&mut de).map_err(|_| ApiError::BadBody)?;
    de.end().map_err(|_| ApiError::BadBody)?;
    match refused {
        Some(error) => Err(error),
        None => Ok(fields),
    }
}

/// Deserialises a JSON object into [`Fields`], keeping the first refused
/// field's error (the rest of the object is still read, and checked).
struct FieldsSeed(Route);

impl<'de> DeserializeSeed<'de> for FieldsSeed {
    type Value = (Fields<'de>, Option<ApiError>);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldsSeed {
    type Value = (Fields<'de>, Option<ApiError>);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::default();
        let mut refused = None;
        while let Some(name) = map.next_key::<String>()? {
            if refused.is_some() {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let value: &'de RawValue = map.next_value()?;
            if let Err(error) = fields.take(&name, Field::Json(value), self.0) {
                refused = Some(error);
            }
        }
        Ok((fields, refused))
    }
}

/// The operation of `/set`: `set` (also when absent or null) or `delete`.
fn action(field: Option<Field>) -> Result<KvOp, ApiError> {
    let text: Option<Cow<str>> = match field {
        None => None,
        Some(Field::Form(raw)) => Some(form_decode(raw).ok_or(ApiError::UnknownAction)?),
        Some(Field::Json(raw)) => serde_json::from_str::<Option<String>>(raw.get()).map_err(|_| ApiError::UnknownAction)?.map(Cow::Owned),
    };
    match text.as_deref() {
        None | Some("set") => Ok(KvOp::Put),
        Some("delete") => Ok(KvOp::Delete),
        Some(_) => Err(ApiError::UnknownAction),
    }
}

/// The key, checked by the main API's [`parse_key`] as the path segment a
/// client would send it in: a form's text as it is (with `+` a space), a
/// JSON string percent-encoded (so `%` in it is a percent). Missing, empty
/// or null is `Key is missing`; not a string, `Key is invalid`.
fn key(field: Option<Field>, max_len: usize) -> Result<String, ApiError> {
    let segment = match field {
        None => return Err(ApiError::KeyMissing),
        Some(Field::Form(raw)) => raw.replace('+', "%20"),
        Some(Field::Json(raw)) => match serde_json::from_str::<Option<String>>(raw.get()) {
            Ok(None) => return Err(ApiError::KeyMissing),
            Ok(Some(key)) => utf8_percent_encode(&key, NON_ALPHANUMERIC).to_string(),
            Err(_) => return Err(ApiError::InvalidKey),
        },
    };
    parse_key(&format!("{KEY_PATH_PREFIX}{segment}"), max_len)
}

/// The value of a set, checked by the main API's [`check_value`]: JSON as
/// sent, or a form's text as a JSON string.
fn value(field: Option<Field>, max_bytes: usize) -> Result<Box<RawValue>, ApiError> {
    let raw = match field {
        None => None,
        Some(Field::Json(raw)) => Some(raw.to_owned()),
        Some(Field::Form(raw)) => {
            let text = form_decode(raw).ok_or(ApiError::BadBody)?;
            // Its JSON string is longer still: refused before it is built.
            if text.len() > max_bytes {
                return Err(ApiError::ValueTooLarge);
            }
            let json = serde_json::to_string(&*text).map_err(ApiError::internal)?;
            Some(RawValue::from_string(json).map_err(ApiError::internal)?)
        }
    };
    check_value(raw, max_bytes)
}

/// What a served request did.
#[derive(Debug)]
enum Outcome {
    Created,
    Replaced,
    Deleted,
    Found(Box<RawValue>),
}

/// The node that served a request, as every key answer names it
/// (`x-causalkv-served-by`, API.md).
fn served_by(answer: &KvAnswer) -> Option<&str> {
    match answer {
        KvAnswer::Reply(reply) => reply.served_by.as_deref(),
        KvAnswer::Error(e) => e.served_by.as_deref(),
        KvAnswer::Relayed(relayed) => relayed.served_by.as_deref(),
    }
}

/// The node's answer as an outcome or an error, with the context to answer
/// with.
fn outcome(op: KvOp, answer: KvAnswer, sent: &CausalContext) -> (Result<Outcome, ApiError>, CausalContext) {
    match answer {
        KvAnswer::Reply(reply) => {
            let outcome = match reply.outcome {
                KvOutcome::Created => Outcome::Created,
                KvOutcome::Updated => Outcome::Replaced,
                KvOutcome::Deleted => Outcome::Deleted,
                KvOutcome::Found(value) => Outcome::Found(value),
            };
            (Ok(outcome), reply.context)
        }
        KvAnswer::Error(e) => (Err(e.kind.into()), e.context),
        KvAnswer::Relayed(relayed) => relayed_outcome(op, &relayed, sent),
    }
}

/// The main API's answer of the node a request was passed to, read back:
/// its status, `value`, `error` and `causal-context` (nothing else of it).
fn relayed_outcome(op: KvOp, relayed: &Relayed, sent: &CausalContext) -> (Result<Outcome, ApiError>, CausalContext) {
    #[derive(Deserialize)]
    struct Answer<'a> {
        #[serde(default)]
        value: Option<Box<RawValue>>,
        #[serde(default)]
        error: Option<String>,
        #[serde(rename = "causal-context", default, borrow)]
        context: Option<&'a RawValue>,
    }
    let unreadable = |what: &str| ApiError::internal(std::io::Error::other(format!("answer of another node: {what}")));
    let Ok(answer) = serde_json::from_slice::<Answer>(&relayed.body) else {
        return (Err(unreadable("not a JSON object")), sent.clone());
    };
    let context = answer.context.and_then(|c| CausalContext::parse_json(c.get()).ok()).unwrap_or_else(|| sent.clone());
    let status = StatusCode::from_u16(relayed.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let result = match (status, op) {
        (StatusCode::CREATED, KvOp::Put) => Ok(Outcome::Created),
        (StatusCode::OK, KvOp::Put) => Ok(Outcome::Replaced),
        (StatusCode::OK, KvOp::Delete) => Ok(Outcome::Deleted),
        (StatusCode::OK, KvOp::Get) => answer.value.map(Outcome::Found).ok_or_else(|| unreadable("found, without a value")),
        (StatusCode::NOT_FOUND, _) => Err(ApiError::KeyNotFound),
        (s, _) if s.is_client_error() || s.is_server_error() => {
            let reason = answer.error.unwrap_or_else(|| s.canonical_reason().unwrap_or("Error").to_owned());
            Err(ApiError::Forwarded { status: s, reason })
        }
        (s, _) => Err(unreadable(&format!("status {s}"))),
    };
    (result, context)
}

/// A successful answer's body.
#[derive(Serialize)]
struct Done<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'static str>,
}

/// The answer: 200 with `{"key", "value"}` or `{"key", "result"}`, or the
/// error as `error.rs` maps it; the context in `X-Causal-Context` either way.
fn respond(route: Route, method: &Method, key: &str, result: Result<Outcome, ApiError>, context: CausalContext) -> Response {
    let header = context_header(&context);
    let mut response = match result {
        Ok(outcome) => {
            let (value, result) = match &outcome {
                Outcome::Created => (None, Some("created")),
                Outcome::Replaced => (None, Some("replaced")),
                Outcome::Deleted => (None, Some("deleted")),
                Outcome::Found(value) => (Some(&**value), None),
            };
            // Serialising plain data cannot fail.
            let body = serde_json::to_vec(&Done { key, value, result }).unwrap_or_else(|_| b"{}".to_vec());
            json_response(StatusCode::OK, body)
        }
        Err(error) => ErrorReply::of_operation(route.name(), method, error, context).into_response(),
    };
    response.headers_mut().insert(CONTEXT_NAME.clone(), header);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key, value and action of a form, as sent.
    type Sent = (Option<String>, Option<String>, Option<String>);

    fn form(text: &str, route: Route) -> Result<Sent, ApiError> {
        let shown = |f: Option<Field>| {
            f.map(|f| match f {
                Field::Form(t) => t.to_owned(),
                Field::Json(r) => r.get().to_owned(),
            })
        };
        form_fields(text, route).map(|f| (shown(f.key), shown(f.value), shown(f.action)))
    }

    #[test]
    fn form_components_decode_by_one_strict_rule() {
        for (raw, text) in [("abc", "abc"), ("a+b", "a b"), ("a%2Bb", "a+b"), ("%C3%A9t%C3%A9", "été"), ("100%25", "100%"), ("", "")] {
            assert_eq!(form_decode(raw).as_deref(), Some(text), "{raw}");
        }
        assert_eq!(form_decode("nul%00").as_deref(), Some("nul\0"), "a NUL is text in a value");
        for raw in ["a%zz", "a%", "%2", "%%41", "%ff", "%C3", "%C3%28"] {
            assert_eq!(form_decode(raw), None, "{raw}");
        }
    }

    #[test]
    fn forms_refuse_repeated_and_unknown_fields() {
        assert!(
            matches!(form("key=k&value=v&action=set", Route::Set), Ok((Some(k), Some(v), Some(a))) if k == "k" && v == "v" && a == "set")
        );
        assert!(matches!(form("k%65y=a&&value", Route::Set), Ok((Some(k), Some(v), None)) if k == "a" && v.is_empty()));
        assert!(matches!(form("key=a&key=b", Route::Set), Err(ApiError::DuplicateField("key"))));
        assert!(matches!(form("key=a&k%65y=b", Route::Get), Err(ApiError::DuplicateField("key"))));
        assert!(matches!(form("key=a&value=1", Route::Delete), Err(ApiError::UnknownField(n, "key")) if n == "value"));
        assert!(matches!(form("key=a&%zz=1", Route::Set), Err(ApiError::UnknownField(n, _)) if n == "%zz"));
        let long = "n".repeat(100);
        assert!(matches!(form(&long, Route::Set), Err(ApiError::UnknownField(n, _)) if n.chars().count() == MAX_NAME_ECHO + 1));
    }

    #[test]
    fn json_bodies_are_read_whole_before_a_field_is_refused() {
        let fields =
            |body: &str| json_fields(body.as_bytes(), Route::Set).map(|f| (f.key.is_some(), f.value.is_some(), f.action.is_some()));
        assert!(matches!(fields(r#"{"key": "k", "value": {"a": [1]}, "action": "delete"}"#), Ok((true, true, true))));
        assert!(matches!(fields(r#"{"key": "k", "key": "l"}"#), Err(ApiError::DuplicateField("key"))));
        assert!(matches!(fields(r#"{"key": "k", "extra": 1}"#), Err(ApiError::UnknownField(n, _)) if n == "extra"));
        assert!(matches!(fields(r#"{"extra": 1, "key": nope}"#), Err(ApiError::BadBody)));
        for bad in [r#"{"key": "k", "value": nope}"#, r#"{"key": "k"} x"#, "[1]", r#""k""#, "{"] {
            assert!(matches!(fields(bad), Err(ApiError::BadBody)), "{bad}");
        }
    }

    #[test]
    fn keys_pass_the_main_api_rule() {
        let json = |text: &str| RawValue::from_string(text.to_owned()).unwrap();
        let key_of_json = |text: &str| key(Some(Field::Json(&json(text))), 5);
        assert_eq!(key(Some(Field::Form("a+b%2B")), 5).ok().as_deref(), Some("a b+"));
        assert_eq!(key_of_json(r#""a%2F""#).ok().as_deref(), Some("a%2F"), "a JSON key is not percent-decoded");
        assert_eq!(key_of_json(r#""été""#).ok().as_deref(), Some("été"));
        assert!(matches!(key(Some(Field::Form("a%2Fb")), 5), Err(ApiError::InvalidKey)));
        assert!(matches!(key(Some(Field::Form("a/b")), 5), Err(ApiError::InvalidKey)));
        assert!(matches!(key(Some(Field::Form("a%00")), 5), Err(ApiError::InvalidKey)));
        assert!(matches!(key(Some(Field::Form("")), 5), Err(ApiError::KeyMissing)));
        assert!(matches!(key(Some(Field::Form("abcdef")), 5), Err(ApiError::KeyTooLong)));
        assert!(matches!(key(None, 5), Err(ApiError::KeyMissing)));
        assert!(matches!(key_of_json("null"), Err(ApiError::KeyMissing)));
        assert!(matches!(key_of_json("5"), Err(ApiError::InvalidKey)));
        assert!(matches!(key_of_json(r#""a/b""#), Err(ApiError::InvalidKey)));
        assert!(matches!(key_of_json(r#""a\u0000""#), Err(ApiError::InvalidKey)));
    }

    #[test]
    fn form_values_are_stored_as_json_strings() {
        let v = |raw: &str| value(Some(Field::Form(raw)), 12).map(|v| v.get().to_owned());
        assert_eq!(v("my+value").ok().as_deref(), Some(r#""my value""#));
        assert_eq!(v("q%22%0A").ok().as_deref(), Some(r#""q\"\n""#));
        assert!(matches!(v(""), Err(ApiError::ValueMissing)));
        assert!(matches!(v("%zz"), Err(ApiError::BadBody)));
        assert!(v("1234567890").is_ok());
        assert!(matches!(v("12345678901"), Err(ApiError::ValueTooLarge)), "11 characters are 13 bytes of JSON");
        assert!(matches!(v(&"x".repeat(13)), Err(ApiError::ValueTooLarge)));
    }

    #[test]
    fn context_headers_are_printable_ascii() {
        let mut ctx = CausalContext::default();
        assert_eq!(context_header(&ctx), "{}");
        ctx.epoch = 2;
        ctx.clock.observe("n:1", 3);
        ctx.clock.observe("é🦀\u{7f}", 4);
        let header = context_header(&ctx);
        let text = header.to_str().expect("printable ASCII");
        assert_eq!(text, r#"{"clock":{"n:1":3,"\u00e9\ud83e\udd80\u007f":4},"epoch":2}"#);
        assert_eq!(CausalContext::parse_json(text), Ok(ctx.clone()), "the header reads back as the context");
        let mut headers = HeaderMap::new();
        assert_eq!(request_context(&headers).ok(), Some(CausalContext::default()));
        headers.insert(CONTEXT_HEADER, header.clone());
        assert_eq!(request_context(&headers).ok(), Some(ctx));
        headers.append(CONTEXT_HEADER, header);
        assert!(matches!(request_context(&headers), Err(ApiError::InvalidContext)), "two contexts are one too many");
        for bad in ["nope", "[1]", r#"{"clock": {"a": -1}}"#, r#"{"clock": {"a": 1}, "x": 1}"#] {
            let mut headers = HeaderMap::new();
            headers.insert(CONTEXT_HEADER, HeaderValue::from_static(bad));
            assert!(matches!(request_context(&headers), Err(ApiError::InvalidContext)), "{bad}");
        }
    }

    #[test]
    fn content_types_choose_the_parser() {
        let kind = |ct: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            body_kind(&headers)
        };
        assert!(matches!(body_kind(&HeaderMap::new()), Ok(None)));
        assert!(matches!(kind("application/x-www-form-urlencoded; charset=UTF-8"), Ok(Some(BodyKind::Form))));
        assert!(matches!(kind("Application/JSON"), Ok(Some(BodyKind::Json))));
        assert!(matches!(kind("application/merge-patch+json"), Ok(Some(BodyKind::Json))));
        assert!(matches!(kind("multipart/form-data; boundary=x"), Err(ApiError::UnsupportedMediaType)));
        assert!(matches!(kind("text/plain"), Err(ApiError::UnsupportedMediaType)));
        // Without a Content-Type the first byte decides.
        assert!(matches!(body_fields(br#" {"key": "k"}"#, None, Route::Delete), Ok(f) if f.key.is_some()));
        assert!(matches!(body_fields(b"key=k", None, Route::Delete), Ok(f) if f.key.is_some()));
        assert!(matches!(body_fields(b" \n", Some(BodyKind::Json), Route::Delete), Ok(f) if f.key.is_none()));
        assert!(matches!(body_fields(b"key=\xff", Some(BodyKind::Form), Route::Delete), Err(ApiError::BadBody)));
    }

    #[test]
    fn relayed_answers_read_back() {
        let relayed = |status: u16, body: &str| Relayed {
            status,
            served_by: None,
            misrouted_epoch: None,
            maybe_applied: false,
            retry_after: None,
            body: body.as_bytes().to_vec(),
        };
        let sent = CausalContext::default();
        let ctx = r#"{"clock":{"n:2":1},"epoch":0}"#;
        let (result, context) = relayed_outcome(
            KvOp::Put,
            &relayed(201, &format!(r#"{{"message":"Added successfully","replaced":false,"address":"n:2","causal-context":{ctx}}}"#)),
            &sent,
        );
        assert!(matches!(result, Ok(Outcome::Created)));
        assert_eq!(serde_json::to_string(&context).unwrap(), ctx);
        let (result, _) = relayed_outcome(KvOp::Get, &relayed(200, r#"{"value":[1, 2.50],"causal-context":{}}"#), &sent);
        assert!(matches!(result, Ok(Outcome::Found(v)) if v.get() == "[1, 2.50]"));
        let (result, _) = relayed_outcome(KvOp::Delete, &relayed(404, r#"{"error":"Key does not exist","causal-context":{}}"#), &sent);
        assert!(matches!(result, Err(ApiError::KeyNotFound)));
        let (result, _) = relayed_outcome(KvOp::Get, &relayed(503, r#"{"error":"Two views at one epoch: x","causal-context":{}}"#), &sent);
        assert!(
            matches!(&result, Err(e @ ApiError::Forwarded { .. }) if e.status() == 503 && e.to_string() == "Two views at one epoch: x")
        );
        let (result, _) = relayed_outcome(KvOp::Get, &relayed(200, "<html>"), &sent);
        assert!(matches!(result, Err(ApiError::Internal(_))));
    }
}

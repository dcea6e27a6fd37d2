//! Limits on a request's head (URI and headers), checked before routing so
//! that an oversized head gets the API's JSON error shape.
//!
//! hyper answers heads beyond its own limits itself, with an empty body; the
//! server (`crate::server`) keeps hyper's limits above these so that only
//! heads that are far too large (more than [`HYPER_MAX_HEAD_BYTES`] in all,
//! or more than [`HYPER_MAX_HEADERS`] headers) or malformed ones (a bad
//! request line or header syntax: hyper's 400) get hyper's empty answer.
//!
//! hyper's header count stays at its default: any explicit `max_headers`
//! makes it build two header arrays of that length per request
//! (`smallvec![..; n]`, on the heap above 100), ≈ 3 900 instructions, 9 % of
//! a whole GET under callgrind. So the JSON limit sits below hyper's 100.

use axum::http::Request;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ErrorReply};

/// Longest path and query, in bytes (a key is at most MAX_KEY_LENGTH
/// characters, three bytes each when percent-encoded).
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header bytes (names and values) in one request.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most headers in one request (real clients send fewer than 20).
pub const MAX_HEADERS: usize = 64;
/// hyper's read buffer, which bounds a request head.
pub const HYPER_MAX_HEAD_BYTES: usize = 64 * 1024;
/// hyper's limit on the number of headers: its default, left unset.
pub const HYPER_MAX_HEADERS: usize = 100;
const _: () = assert!(MAX_HEADERS < HYPER_MAX_HEADERS);

/// A 414 or 431 JSON answer when the head is over a limit.
pub fn refuse_oversized<B>(req: &Request<B>) -> Option<Response> {
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let error = if uri_len > MAX_URI_BYTES {
        ApiError::UriTooLong
    } else if req.headers().len() > MAX_HEADERS
        || req.headers().iter().map(|(name, value)| name.as_str().len() + value.len()).sum::<usize>() > MAX_HEADER_BYTES
    {
        ApiError::HeadersTooLarge
    } else {
        return None;
    };
    Some(ErrorReply::new(req.method(), error, serde_json::Value::Object(Default::default())).into_response())
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn oversized_heads_are_refused() {
        let ok = Request::get("/kv-store/keys/a").header("x", "y").body(()).unwrap();
        assert!(refuse_oversized(&ok).is_none());
        let long = Request::get(format!("/kv-store/keys/{}", "a".repeat(MAX_URI_BYTES))).body(()).unwrap();
        assert_eq!(refuse_oversized(&long).map(|r| r.status()), Some(StatusCode::URI_TOO_LONG));
        let big = Request::get("/").header("x", "y".repeat(MAX_HEADER_BYTES)).body(()).unwrap();
        assert_eq!(refuse_oversized(&big).map(|r| r.status()), Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        let mut many = Request::get("/");
        for i in 0..=MAX_HEADERS {
            many = many.header(format!("x-{i}"), "1");
        }
        assert_eq!(refuse_oversized(&many.body(()).unwrap()).map(|r| r.status()), Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
    }
}

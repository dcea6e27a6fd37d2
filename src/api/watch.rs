//! `GET /kv-store/watch?prefix=<p>&from=<context>`: a change feed as
//! Server-Sent Events (the protocol is `node::feed`). One `write` event per
//! write (JSON: key, value or `"deleted": true`, the write's dot and deps,
//! and the `causal-context` to resume from), in causal order; a final `end`
//! event says why the feed stopped. The resume context also goes in each
//! event's `id`, so a browser's `EventSource` resumes by itself
//! (`Last-Event-ID`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::error::{ApiError, ErrorReply};
use crate::causal::{CausalContext, Clock};
use crate::node::Node;
use crate::node::feed::{WatchEvent, WatcherSlot};

#[derive(Serialize)]
struct WriteEvent<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a RawValue>,
    deleted: bool,
    dot: DotJson<'a>,
    deps: &'a Clock,
    #[serde(rename = "causal-context")]
    context: &'a CausalContext,
}

#[derive(Serialize)]
struct DotJson<'a> {
    origin: &'a str,
    seq: u64,
    epoch: u64,
}

pub async fn watch(
    State(node): State<Arc<Node>>,
    method: Method,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let empty = || Value::Object(Default::default());
    let Ok(Query(query)) = query else {
        return ErrorReply::new(&method, ApiError::BadBody, empty()).into_response();
    };
    let prefix = query.get("prefix").cloned().unwrap_or_default();
    if prefix.chars().count() > node.config.max_key_length || prefix.contains('\0') {
        return ErrorReply::new(&method, ApiError::InvalidKey, empty()).into_response();
    }
    // `from` in the query, else the browser's Last-Event-ID.
    let from_text = query.get("from").cloned().or_else(|| headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned));
    let from = match from_text.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        None => None,
        Some(text) => match CausalContext::parse_json(text) {
            Ok(c) => Some(c),
            Err(_) => return ErrorReply::new(&method, ApiError::InvalidContext, empty()).into_response(),
        },
    };
    let Some(slot) = node.watcher_slot() else {
        return ErrorReply::new(&method, ApiError::TooManyWatchers, empty()).into_response();
    };
    // "From now on" is fixed before the answer starts: every write made
    // after the client has the 200 is sent.
    let from = match from {
        Some(from) => from,
        None => match node.watch_position().await {
            Some(now) => now,
            None => return ErrorReply::new(&method, ApiError::Unavailable, empty()).into_response(),
        },
    };
    let events = node.watch(prefix, from);
    Sse::new(stream(events, slot)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

fn stream(events: tokio::sync::mpsc::Receiver<WatchEvent>, slot: WatcherSlot) -> impl Stream<Item = Result<Event, Infallible>> {
    // The slot lives as long as the stream: the client's disconnect drops both.
    futures_util::stream::unfold((events, slot, false), |(mut events, slot, ended)| async move {
        if ended {
            return None;
        }
        let event = events.recv().await?;
        let (sse, last) = to_sse(event);
        Some((Ok(sse), (events, slot, last)))
    })
}

fn to_sse(event: WatchEvent) -> (Event, bool) {
    match event {
        WatchEvent::Write { record, context } => {
            let body = WriteEvent {
                key: &record.key,
                value: record.value.as_deref(),
                deleted: record.value.is_none(),
                dot: DotJson { origin: &record.dot.origin, seq: record.dot.seq, epoch: record.dot.epoch },
                deps: &record.deps,
                context: &context,
            };
            let data = serde_json::to_string(&body).unwrap_or_default();
            let id = serde_json::to_string(&context).unwrap_or_default();
            (Event::default().event("write").id(id).data(data), false)
        }
        WatchEvent::End { reason, context } => {
            let data = serde_json::json!({"reason": reason.name(), "causal-context": context}).to_string();
            (Event::default().event("end").data(data), true)
        }
    }
}

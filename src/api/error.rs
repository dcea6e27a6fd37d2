//! The one place where errors become HTTP statuses and API.md messages.

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::reply::{Reply, ReplyContext};
use crate::node::kv::KvErrorKind;

/// Marks a 503 from a node that has moved to a newer view than the sender's;
/// the value is that epoch.
pub const MISROUTED_HEADER: &str = "x-causalkv-misrouted";
/// On a 503 to a write that was passed to another node and got no answer
/// there: it may have been applied (the client decides whether to retry).
pub const MAYBE_APPLIED_HEADER: &str = "x-causalkv-maybe-applied";
/// The node that served a key request (on every key answer): the node asked,
/// or the replica it passed the request to.
pub const SERVED_BY_HEADER: &str = "x-causalkv-served-by";

/// Seconds a client is told to wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Key is too long")]
    KeyTooLong,
    #[error("Key is missing")]
    KeyMissing,
    #[error("Key is invalid")]
    InvalidKey,
    #[error("Value is missing")]
    ValueMissing,
    #[error("Failed to parse request body")]
    BadBody,
    #[error("Value is too large")]
    ValueTooLarge,
    #[error("Value is nested more than {0} levels deep")]
    ValueTooDeep(usize),
    #[error("Invalid causal-context")]
    InvalidContext,
    #[error("Unable to satisfy request")]
    Unavailable,
    /// This node met a peer running another view at its epoch (the text
    /// says which and what to do); see `gossip::conflict`.
    #[error("{0}")]
    ViewConflict(String),
    #[error("Key does not exist")]
    KeyNotFound,
    #[error("{0}")]
    InvalidView(String),
    #[error("Shard does not exist")]
    ShardNotFound,
    #[error("Not found")]
    RouteNotFound,
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// An admin endpoint without the admin bearer token.
    #[error("Unauthorized")]
    Unauthorized,
    #[error("URI is too long")]
    UriTooLong,
    #[error("Request headers are too large")]
    HeadersTooLarge,
    #[error("Too many connections")]
    TooManyConnections,
    /// A snapshot read naming more keys than it may (or none).
    #[error("A read names 1 to {0} keys")]
    KeyCount(usize),
    #[error("Too many watchers")]
    TooManyWatchers,
    #[error("Something went wrong")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
    // The routes of the replaced stores (`api::legacy`) refuse these too.
    #[error("Field \"{0}\" is given more than once")]
    DuplicateField(&'static str),
    /// A field the route does not take (its name, shortened; the names it takes).
    #[error("Unknown field \"{0}\" (the fields are {1})")]
    UnknownField(String, &'static str),
    #[error("Unknown action (use \"set\" or \"delete\")")]
    UnknownAction,
    #[error("Content-Type must be application/x-www-form-urlencoded or application/json")]
    UnsupportedMediaType,
    /// The error another node answered a request passed on to it with, as it
    /// said it (status and `error` text).
    #[error("{reason}")]
    Forwarded { status: StatusCode, reason: String },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::KeyTooLong
            | Self::KeyMissing
            | Self::InvalidKey
            | Self::ValueMissing
            | Self::ValueTooDeep(_)
            | Self::KeyCount(_)
            | Self::BadBody
            | Self::InvalidContext
            | Self::InvalidView(_) => StatusCode::BAD_REQUEST,
            Self::ValueTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Unavailable | Self::ViewConflict(_) | Self::TooManyConnections | Self::TooManyWatchers => StatusCode::SERVICE_UNAVAILABLE,
            Self::KeyNotFound | Self::ShardNotFound | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::DuplicateField(_) | Self::UnknownField(..) | Self::UnknownAction => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Forwarded { status, .. } => *status,
        }
    }

    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Internal(Box::new(e))
    }
}

/// The key protocol's errors as API errors (a misroute is a 503 for a client).
impl From<KvErrorKind> for ApiError {
    fn from(kind: KvErrorKind) -> Self {
        match kind {
            KvErrorKind::NotFound => ApiError::KeyNotFound,
            KvErrorKind::Unavailable | KvErrorKind::MaybeApplied | KvErrorKind::Misrouted { .. } => ApiError::Unavailable,
            KvErrorKind::ViewConflict(text) => ApiError::ViewConflict(text),
            KvErrorKind::Internal(text) => ApiError::internal(std::io::Error::other(text)),
        }
    }
}

/// The whole answer to a connection refused because MAX_CONNECTIONS are
/// open: written to the socket before any request is read (no method is
/// known), then the connection is closed.
pub fn connection_refused_answer() -> Vec<u8> {
    let error = ApiError::TooManyConnections;
    let body = serde_json::json!({"message": "Error", "error": error.to_string(), "causal-context": {}}).to_string();
    let status = error.status();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: {RETRY_AFTER_SECS}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Service Unavailable"),
        body.len()
    )
    .into_bytes()
}

/// An error answer: `{"message": "Error in <METHOD>", "error": ..., "causal-context": ...}`.
pub struct ErrorReply {
    pub method: Method,
    pub error: ApiError,
    pub context: ReplyContext,
    /// Set when this node served a forwarded request.
    pub address: Option<String>,
    /// Set when the request was routed by an older view (see [`MISROUTED_HEADER`]).
    pub misrouted_epoch: Option<u64>,
    /// Names the operation in the message instead of the method
    /// (`Error in VIEW-CHANGE`).
    pub operation: Option<&'static str>,
}

impl ErrorReply {
    pub fn new(method: &Method, error: ApiError, context: impl Into<ReplyContext>) -> Self {
        Self { method: method.clone(), error, context: context.into(), address: None, misrouted_epoch: None, operation: None }
    }

    /// An error of an admin operation (`VIEW-CHANGE`, `JOIN`).
    pub fn of_operation(operation: &'static str, method: &Method, error: ApiError, context: impl Into<ReplyContext>) -> Self {
        Self { operation: Some(operation), ..Self::new(method, error, context) }
    }
}

impl IntoResponse for ErrorReply {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self.error {
            tracing::error!(error = %cause, method = %self.method, "request failed");
        }
        let status = self.error.status();
        let reply = Reply {
            message: match self.operation {
                Some(op) => format!("Error in {op}"),
                None => format!("Error in {}", self.method),
            }
            .into(),
            error: Some(self.error.to_string()),
            does_exist: matches!(self.error, ApiError::KeyNotFound).then_some(false),
            address: self.address,
            causal_context: self.context,
            ..Reply::default()
        };
        let mut resp = reply.into_response_with(status);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(epoch) = self.misrouted_epoch
            && let Ok(v) = HeaderValue::from_str(&epoch.to_string())
        {
            resp.headers_mut().insert(MISROUTED_HEADER, v);
        }
        resp
    }
}

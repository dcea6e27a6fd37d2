//! The client's one error type.

/// Why a client call failed. A key that does not exist is not an error
/// (`Ok(None)` / `Ok(false)`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad settings: no nodes, a node that is not `host:port` or a URL, ...
    #[error("{0}")]
    Config(String),
    /// No node of the cluster could be reached.
    #[error("no node answered: {0}")]
    Unreachable(String),
    /// The cluster answered 503 (a replica could not satisfy the context in
    /// time, a view change was under way, ...) until the retry budget ran out.
    #[error("the cluster is unavailable: {0}")]
    Unavailable(String),
    /// A write was sent but no answer came: it may or may not have been
    /// applied (it was not sent again, which would apply it twice).
    #[error("no answer to a write (it may have been applied): {0}")]
    Ambiguous(String),
    /// The request was refused as invalid (400, 404 of a route, 413, ...).
    #[error("refused ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// An admin call without the right token (401, 403).
    #[error("not authorised ({status}): {message}")]
    Unauthorized { status: u16, message: String },
    /// An answer that does not follow the API.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// A value could not be turned into JSON or back into the caller's type.
    #[error("value: {0}")]
    Value(#[from] serde_json::Error),
    /// The TLS settings could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
}

impl Error {
    /// Worth trying again later (the cluster, not the request, was the problem).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unreachable(_) | Error::Unavailable(_) | Error::Ambiguous(_))
    }
}

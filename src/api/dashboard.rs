//! `GET /dashboard`: one self-contained HTML page (inline CSS and script,
//! no external origin) that polls `GET /kv-store/cluster-status` and
//! `/metrics` of the node serving it every second and draws the cluster:
//! the view, one card per shard with each replica's role, state and lag,
//! recent view changes and request rates per node.
//!
//! The page builds its DOM with `textContent`/`setAttribute` only (node
//! addresses come from the network), and the Content-Security-Policy
//! below lets it load nothing and talk to nothing but its own origin.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page, compiled in.
pub const PAGE: &str = include_str!("dashboard.html");

/// Inline script and style only; requests to the page's own origin only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
        .into_response()
}

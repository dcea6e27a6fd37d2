//! The HTTP surface: the public API of API.md, internal gossip endpoints, and
//! the mapping of every error to a status and JSON body (`error.rs`, the only
//! place that does it).
//!
//! Guarantees: every answer is a JSON object with `causal-context`; bad input
//! of any kind gets a 4xx JSON error; a panic in a handler becomes a 500 JSON
//! answer instead of a dropped connection; bodies are bounded by
//! `MAX_VALUE_BYTES` plus room for the context.

mod admin;
mod cluster;
mod dashboard;
mod error;
pub mod forward;
mod internal;
mod key_requests;
mod legacy;
pub mod limits;
mod read;
mod reply;
mod request;
mod status;
mod watch;

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use serde_json::Value;

pub use error::{ApiError, connection_refused_answer};
pub use request::{HOP_HEADER, WAIT_HEADER};

use crate::node::Node;
use error::ErrorReply;

/// Room for the causal context and JSON framing on top of the value limit.
pub(crate) const BODY_OVERHEAD: usize = 256 * 1024;

/// The HTTP client the admin endpoints use to ask other nodes (key counts
/// of other shards, a view change passed on by a proxy node): the process's
/// pooled client, not the node's (the node owns no socket).
#[derive(Clone)]
pub struct AdminClient(pub reqwest::Client);

pub fn router(node: Arc<Node>, client: reqwest::Client) -> Router {
    // Public bodies are bounded in their handlers; this bounds internal ones.
    let body_limit = crate::gossip::MAX_BATCH_BYTES + node.config.max_value_bytes + BODY_OVERHEAD;
    // Only the handlers that ask other nodes get the client and the status
    // cache: an extension layer on the whole router costs every key request a
    // map insert and an allocation (callgrind: ~2 % of a GET).
    let admin_client = axum::Extension(AdminClient(client));
    let mut router = Router::new()
        .route(&format!("{}{{*key}}", request::KEY_PATH_PREFIX), any(key_requests::handle))
        .route("/kv-store/keys", any(missing_key))
        .route("/kv-store/keys/", any(missing_key))
        .route("/kv-store/key-count", get(cluster::key_count))
        .route("/kv-store/shards", get(cluster::shards))
        .route("/kv-store/shards/{id}", get(cluster::shard_info).layer(admin_client.clone()))
        .route("/kv-store/view-change", put(admin::view_change).layer(admin_client.clone()))
        .route("/join", post(admin::join).layer(admin_client.clone()))
        .route("/kv-store/read", post(read::read))
        .route("/kv-store/watch", get(watch::watch))
        .route("/kv-store/status", get(status::node_status))
        .route(
            "/kv-store/cluster-status",
            get(status::cluster_status)
                .layer::<_, std::convert::Infallible>(admin_client)
                .layer(axum::Extension(status::StatusCache::default())),
        )
        .route("/dashboard", get(dashboard::page))
        .route("/health", get(cluster::health))
        .route("/ready", get(cluster::ready))
        .route("/metrics", get(cluster::metrics));
    let mut internal_routes = Router::new();
    for kind in crate::gossip::Message::ALL {
        let handler = move |State(node): State<Arc<Node>>, Extension(peer): Extension<internal::Peer>, body: axum::body::Bytes| {
            internal::message(node, peer, kind, body)
        };
        internal_routes = internal_routes.route(kind.path(), post(handler));
    }
    internal_routes = internal_routes.route(crate::gossip::stream::STREAM_PATH, post(internal::stream));
    // Every internal route is authenticated before its body is read. Only
    // internal bodies are read by axum's extractors, so only they carry the
    // body limit (public handlers bound their bodies themselves; an extension
    // on every request costs a key request an allocation).
    let internal_routes = internal_routes
        .route_layer(axum::middleware::from_fn_with_state(node.clone(), internal::authenticate))
        .layer(DefaultBodyLimit::max(body_limit));
    router = router.merge(internal_routes);
    router = router.merge(legacy::routes());
    if node.config.faults {
        router = router.route("/internal/faults", get(internal::get_faults).put(internal::put_faults));
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .with_state(node)
}

fn empty() -> Value {
    Value::Object(Default::default())
}

async fn missing_key(method: Method) -> Response {
    ErrorReply::new(&method, ApiError::KeyMissing, empty()).into_response()
}

async fn not_found(method: Method) -> Response {
    ErrorReply::new(&method, ApiError::RouteNotFound, empty()).into_response()
}

async fn method_not_allowed(method: Method) -> Response {
    ErrorReply::new(&method, ApiError::MethodNotAllowed, empty()).into_response()
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    let body = serde_json::json!({"message": "Error", "error": "Something went wrong", "causal-context": {}});
    (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
}

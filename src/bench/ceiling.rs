//! The HTTP ceiling: an axum server that reads each request's body and
//! answers a fixed small JSON body, whatever the path and method. What the
//! machine's HTTP stack and the load generator allow, with no storage work.

use axum::Router;
use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

/// Shaped like a causalkv answer, so clients parse the same thing.
const BODY: &str = r#"{"message":"Retrieved successfully","doesExist":true,"causal-context":{}}"#;

async fn answer(_body: Bytes) -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], BODY)
}

pub async fn serve(bind: &str, port: u16) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind((bind, port)).await?;
    eprintln!("ceiling server listening on {}", listener.local_addr()?);
    axum::serve(listener, Router::new().fallback(answer)).await
}

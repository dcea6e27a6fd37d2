//! A client of the local Mycelium daemon's message API (MYCELIUM.md): send
//! with `POST /api/v1/messages`, pop with
//! `GET /api/v1/messages?peek=false&timeout=0&topic=…` — never a waiting
//! GET, which would hold the daemon's lock and stall every send through it.

use std::net::Ipv6Addr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::json;

use super::settings::{Identity, MyceliumConfig};

/// Time limit of one API call (the daemon is local; a call that takes longer
/// is failing).
const API_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Daemon {
    client: reqwest::Client,
    api: String,
    /// The topic, base64.
    topic: String,
    /// The pop URL (topic base64 and percent-encoded).
    pop_url: String,
}

/// A message popped from the daemon's inbox.
#[derive(Debug)]
pub struct Received {
    pub id: String,
    pub src_ip: Option<Ipv6Addr>,
    pub src_pk: Option<String>,
    pub topic: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMessage {
    id: String,
    #[serde(default)]
    src_ip: Option<String>,
    #[serde(default)]
    src_pk: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    payload: String,
}

/// What `GET /api/v1/admin` says about the daemon.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Admin {
    pub node_ip: String,
    pub node_pubkey: String,
}

impl Daemon {
    pub fn new(cfg: &MyceliumConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .timeout(API_TIMEOUT)
            .pool_max_idle_per_host(16)
            .tcp_nodelay(true)
            // A static binary has no glibc resolver for a named MYCELIUM_API.
            .dns_resolver(std::sync::Arc::new(crate::gossip::auth::ViewDns::default()))
            .build()?;
        let topic = B64.encode(cfg.topic.as_bytes());
        let pop_url = format!("{}/api/v1/messages?peek=false&timeout=0&topic={}", cfg.api, utf8_percent_encode(&topic, NON_ALPHANUMERIC));
        Ok(Self { client, api: cfg.api.clone(), topic, pop_url })
    }

    /// Hands one message to the daemon; returns its id.
    pub async fn send(&self, dst: &Identity, payload: &[u8]) -> Result<String, String> {
        let body = json!({"dst": dst.dst(), "topic": self.topic, "payload": B64.encode(payload)});
        let resp = self
            .client
            .post(format!("{}/api/v1/messages", self.api))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("Mycelium daemon at {}: {e}", self.api))?;
        let status = resp.status();
        if status != reqwest::StatusCode::CREATED {
            let text = resp.text().await.unwrap_or_default();
            return Err(format!("Mycelium daemon refused a message: {status} {}", text.trim()));
        }
        #[derive(Deserialize)]
        struct Sent {
            id: String,
        }
        resp.json::<Sent>().await.map(|s| s.id).map_err(|e| format!("Mycelium daemon: bad answer to a send: {e}"))
    }

    /// Pops the oldest message of the topic, if any (never waits).
    pub async fn pop(&self) -> Result<Option<Received>, String> {
        let resp = self.client.get(&self.pop_url).send().await.map_err(|e| format!("Mycelium daemon at {}: {e}", self.api))?;
        match resp.status() {
            reqwest::StatusCode::NO_CONTENT => Ok(None),
            reqwest::StatusCode::OK => {
                let raw: RawMessage = resp.json().await.map_err(|e| format!("Mycelium daemon: bad message: {e}"))?;
                let payload = B64.decode(raw.payload.as_bytes()).map_err(|e| format!("Mycelium daemon: bad payload base64: {e}"))?;
                let topic = match raw.topic {
                    Some(t) => Some(B64.decode(t.as_bytes()).map_err(|e| format!("Mycelium daemon: bad topic base64: {e}"))?),
                    None => None,
                };
                Ok(Some(Received { id: raw.id, src_ip: raw.src_ip.and_then(|ip| ip.parse().ok()), src_pk: raw.src_pk, topic, payload }))
            }
            other => {
                let text = resp.text().await.unwrap_or_default();
                Err(format!("Mycelium daemon refused a poll: {other} {}", text.trim()))
            }
        }
    }

    /// The daemon's own identity.
    pub async fn admin(&self) -> Result<Admin, String> {
        let resp = self
            .client
            .get(format!("{}/api/v1/admin", self.api))
            .send()
            .await
            .map_err(|e| format!("Mycelium daemon at {}: {e}", self.api))?;
        if !resp.status().is_success() {
            return Err(format!("Mycelium daemon at {}: {}", self.api, resp.status()));
        }
        resp.json().await.map_err(|e| format!("Mycelium daemon: bad admin answer: {e}"))
    }

    pub fn topic_bytes(&self) -> Vec<u8> {
        B64.decode(self.topic.as_bytes()).unwrap_or_default()
    }
}

//! One client session per connection, for every target: the same request
//! loop drives causalkv, the HTTP ceiling, etcd's v3 JSON gateway and Redis.
//! A causalkv session sends back the last `causal-context` it received, as
//! API.md asks of real clients.

use std::io;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::http::HttpConn;
use super::resp::{Reply, RespConn};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// causalkv's HTTP API (docs/API.md).
    Causalkv,
    /// `causalkv-bench ceiling-server`: a fixed JSON body for any request.
    Ceiling,
    /// etcd v3 JSON gateway (`/v3/kv/put`, `/v3/kv/range`).
    Etcd,
    /// Redis protocol (`SET`/`GET`).
    Redis,
}

/// What every session of a run shares.
pub struct Spec {
    pub kind: TargetKind,
    /// etcd: serializable (member-local) ranges instead of linearizable ones.
    pub serializable: bool,
    /// causalkv/ceiling: send the session's causal context with each request.
    pub with_context: bool,
    pub value: Vec<u8>,
    value_b64: String,
}

impl Spec {
    pub fn new(kind: TargetKind, serializable: bool, with_context: bool, value: Vec<u8>) -> Arc<Spec> {
        let value_b64 = B64.encode(&value);
        Arc::new(Spec { kind, serializable, with_context, value, value_b64 })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The key does not exist (GET 404, nil, empty range).
    Miss,
    Error(String),
}

enum Conn {
    Http(HttpConn),
    Redis(RespConn),
}

pub struct Session {
    spec: Arc<Spec>,
    addr: String,
    conn: Option<Conn>,
    /// The last causal context received (raw JSON).
    pub ctx: Vec<u8>,
    path: String,
    body: Vec<u8>,
    pub reconnects: u64,
    /// Keep each answer's `x-causalkv-served-by` header (see [`Session::served_by`]).
    pub record_served_by: bool,
}

#[derive(Deserialize)]
struct ContextOnly<'a> {
    #[serde(rename = "causal-context", borrow)]
    ctx: Option<&'a RawValue>,
}

impl Session {
    pub fn new(spec: Arc<Spec>, addr: &str) -> Session {
        Session {
            spec,
            addr: addr.to_string(),
            conn: None,
            ctx: b"{}".to_vec(),
            path: String::with_capacity(64),
            body: Vec::with_capacity(1024),
            reconnects: 0,
            record_served_by: false,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Opens the connection now (instead of at the first request).
    pub async fn connect(&mut self) -> io::Result<()> {
        if self.conn.is_none() {
            self.conn = Some(match self.spec.kind {
                TargetKind::Redis => Conn::Redis(RespConn::connect(&self.addr).await?),
                _ => {
                    let mut c = HttpConn::connect(&self.addr).await?;
                    c.record_served_by = self.record_served_by;
                    Conn::Http(c)
                }
            });
        }
        Ok(())
    }

    pub async fn put(&mut self, key: &[u8]) -> Outcome {
        self.op(true, key, self.spec.with_context).await
    }

    pub async fn get(&mut self, key: &[u8]) -> Outcome {
        self.op(false, key, self.spec.with_context).await
    }

    /// The `x-causalkv-served-by` header of the last answer (empty when
    /// absent or when `record_served_by` is off).
    pub fn served_by(&self) -> &[u8] {
        match &self.conn {
            Some(Conn::Http(c)) => &c.served_by,
            _ => &[],
        }
    }

    /// A GET that sends no causal context (a fresh client).
    pub async fn get_without_context(&mut self, key: &[u8]) -> Outcome {
        self.op(false, key, false).await
    }

    async fn op(&mut self, put: bool, key: &[u8], with_context: bool) -> Outcome {
        if self.conn.is_none() {
            if let Err(e) = self.connect().await {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                return Outcome::Error(format!("connect {}: {e}", self.addr));
            }
            self.reconnects += 1;
        }
        let result = match self.spec.kind {
            TargetKind::Causalkv | TargetKind::Ceiling => self.kv_op(put, key, with_context).await,
            TargetKind::Etcd => self.etcd_op(put, key).await,
            TargetKind::Redis => self.redis_op(put, key).await,
        };
        match result {
            Ok(outcome) => {
                if let Some(Conn::Http(c)) = &self.conn
                    && c.closed
                {
                    self.conn = None;
                }
                outcome
            }
            Err(e) => {
                self.conn = None;
                Outcome::Error(format!("{}: {e}", self.addr))
            }
        }
    }

    fn http(&mut self) -> &mut HttpConn {
        match self.conn.as_mut() {
            Some(Conn::Http(c)) => c,
            _ => unreachable!("an HTTP target has an HTTP connection"),
        }
    }

    async fn kv_op(&mut self, put: bool, key: &[u8], with_context: bool) -> io::Result<Outcome> {
        self.path.clear();
        self.path.push_str("/kv-store/keys/");
        self.path.push_str(std::str::from_utf8(key).unwrap_or("invalid-key"));
        self.body.clear();
        let send_body = put || with_context;
        if put {
            self.body.extend_from_slice(b"{\"value\":\"");
            self.body.extend_from_slice(&self.spec.value);
            self.body.extend_from_slice(b"\",\"causal-context\":");
        } else {
            self.body.extend_from_slice(b"{\"causal-context\":");
        }
        if with_context {
            self.body.extend_from_slice(&self.ctx);
        } else {
            self.body.extend_from_slice(b"{}");
        }
        self.body.push(b'}');
        let method = if put { "PUT" } else { "GET" };
        let path = std::mem::take(&mut self.path);
        let body = std::mem::take(&mut self.body);
        let result = self.http().request(method, &path, send_body.then_some(&body[..])).await;
        self.path = path;
        self.body = body;
        let status = result?;
        let outcome = match (put, status) {
            (true, 200 | 201) | (false, 200) => Outcome::Ok,
            (false, 404) => Outcome::Miss,
            _ => {
                let text = String::from_utf8_lossy(&self.http().body).chars().take(200).collect::<String>();
                return Ok(Outcome::Error(format!("{} {method} {status}: {text}", self.addr)));
            }
        };
        let parsed: Result<ContextOnly, _> = serde_json::from_slice(&self.http().body);
        match parsed {
            Ok(ContextOnly { ctx: Some(ctx) }) => {
                let ctx = ctx.get().as_bytes().to_vec();
                self.ctx = ctx;
                Ok(outcome)
            }
            Ok(ContextOnly { ctx: None }) => Ok(Outcome::Error(format!("{} {method} {status}: no causal-context", self.addr))),
            Err(e) => Ok(Outcome::Error(format!("{} {method} {status}: bad JSON: {e}", self.addr))),
        }
    }

    async fn etcd_op(&mut self, put: bool, key: &[u8]) -> io::Result<Outcome> {
        let key_b64 = B64.encode(key);
        self.body.clear();
        self.body.extend_from_slice(b"{\"key\":\"");
        self.body.extend_from_slice(key_b64.as_bytes());
        if put {
            self.body.extend_from_slice(b"\",\"value\":\"");
            self.body.extend_from_slice(self.spec.value_b64.as_bytes());
            self.body.extend_from_slice(b"\"}");
        } else if self.spec.serializable {
            self.body.extend_from_slice(b"\",\"serializable\":true}");
        } else {
            self.body.extend_from_slice(b"\"}");
        }
        let path = if put { "/v3/kv/put" } else { "/v3/kv/range" };
        let body = std::mem::take(&mut self.body);
        let result = self.http().request("POST", path, Some(&body)).await;
        self.body = body;
        let status = result?;
        if status != 200 {
            let text = String::from_utf8_lossy(&self.http().body).chars().take(200).collect::<String>();
            return Ok(Outcome::Error(format!("{} {path} {status}: {text}", self.addr)));
        }
        if put {
            return Ok(Outcome::Ok);
        }
        let found = self.http().body.windows(6).any(|w| w == b"\"kvs\":");
        Ok(if found { Outcome::Ok } else { Outcome::Miss })
    }

    async fn redis_op(&mut self, put: bool, key: &[u8]) -> io::Result<Outcome> {
        let spec = self.spec.clone();
        let conn = match self.conn.as_mut() {
            Some(Conn::Redis(c)) => c,
            _ => unreachable!("a Redis target has a Redis connection"),
        };
        let reply = if put { conn.set(key, &spec.value).await? } else { conn.get(key).await? };
        Ok(match reply {
            Reply::Value => Outcome::Ok,
            Reply::Nil => Outcome::Miss,
            Reply::Error(e) => Outcome::Error(format!("{}: {e}", self.addr)),
        })
    }
}

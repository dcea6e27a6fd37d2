//! A Rust client for causalkv that carries causality for its caller.
//!
//! A [`Client`] is built from one or more node addresses; it learns the view
//! and every shard's master from the cluster (`GET /kv-store/status`) and
//! sends each write straight to its key's master (no forwarding hop) and each
//! read to a replica of the key's shard, round robin, skipping replicas that
//! failed recently. A [`Session`] keeps the causal context: every answer's
//! context is merged into it and sent with the next request, so a session
//! reads its own writes (and what they depended on) on any replica, across
//! shards, with no context handling by the caller.
//!
//! ```no_run
//! # async fn demo() -> Result<(), causalkv::client::Error> {
//! use causalkv::client::Client;
//! let client = Client::builder(["127.0.0.1:13800", "127.0.0.1:13801"]).build()?;
//! let session = client.session();
//! session.put("profile:7", &serde_json::json!({"name": "Ada"})).await?;
//! let profile: Option<serde_json::Value> = session.get("profile:7").await?;
//! # Ok(()) }
//! ```
//!
//! Guarantees kept here:
//! - A 503 is retried, honouring `Retry-After`, until the retry budget is
//!   spent; a write is sent again only when it surely was not applied (the
//!   connection was refused, or the node answered): a write that got no
//!   answer is reported as [`Error::Ambiguous`], never applied twice by the
//!   client.
//! - A stale picture of the cluster (new epoch, misroute, another master)
//!   is refreshed, at most once per [`REFRESH_GAP`].

mod error;
mod topology;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;

pub use error::Error;
use topology::Topology;

use crate::causal::CausalContext;
use crate::node::status::{ClusterStatus, NodeStatus};
use crate::shard::ShardId;

/// Characters left as they are in a key's path segment.
const KEY_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
/// The header every key answer names its serving node in.
const SERVED_BY: &str = "x-causalkv-served-by";
/// The header of a 503 to a write that may have been applied all the same.
const MAYBE_APPLIED: &str = "x-causalkv-maybe-applied";
/// The header of an answer from a node at a newer view than the request's.
const MISROUTED: &str = "x-causalkv-misrouted";
/// Least time between two refreshes of the cluster picture.
pub const REFRESH_GAP: Duration = Duration::from_millis(200);
/// A node that failed is tried last for this long.
const FAILING_FOR: Duration = Duration::from_secs(2);
/// Longest single wait a `Retry-After` may impose.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(1);

/// TLS to the cluster: its CA, and a client certificate when the nodes
/// require one (`TLS_CLIENT_AUTH=required`).
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub ca: PathBuf,
    /// Certificate and key (PEM files).
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Builds a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    nodes: Vec<String>,
    admin_token: Option<String>,
    timeout: Duration,
    retry_budget: Duration,
    tls: Option<ClientTls>,
}

impl ClientBuilder {
    /// Bearer token for view changes and joins (`ADMIN_TOKEN` of the nodes).
    pub fn admin_token(mut self, token: impl Into<String>) -> Self {
        self.admin_token = Some(token.into());
        self
    }

    /// Time limit of one HTTP request (default 10 s: above the nodes' own
    /// bound on a held-back request).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a call keeps retrying 503s and unreachable nodes (default 5 s).
    pub fn retry_budget(mut self, budget: Duration) -> Self {
        self.retry_budget = budget;
        self
    }

    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        let mut scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut seeds = Vec::new();
        for node in &self.nodes {
            let (s, addr) = parse_node(node)?;
            if let Some(s) = s {
                scheme = s;
            }
            seeds.push(addr);
        }
        if seeds.is_empty() {
            return Err(Error::Config("bad node list: no node given".into()));
        }
        crate::tls::install_provider();
        let tls_config = match &self.tls {
            Some(tls) => client_tls(tls)?,
            None => crate::tls::plain_client_config().map_err(|e| Error::Tls(e.to_string()))?,
        };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config)
            .timeout(self.timeout)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                scheme,
                seeds,
                admin_token: self.admin_token,
                retry_budget: self.retry_budget,
                topology: RwLock::new(None),
                refreshed: tokio::sync::Mutex::new(None),
                failing: Mutex::new(HashMap::new()),
                round_robin: AtomicUsize::new(0),
            }),
        })
    }
}

fn client_tls(tls: &ClientTls) -> Result<rustls::ClientConfig, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem = |e: rustls::pki_types::pem::Error| Error::Tls(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&tls.ca).map_err(pem)? {
        roots.add(cert.map_err(pem)?).map_err(|e| Error::Tls(e.to_string()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match &tls.identity {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert).map_err(pem)?.collect::<Result<Vec<_>, _>>().map_err(pem)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(pem)?;
            builder.with_client_auth_cert(certs, key).map_err(|e| Error::Tls(e.to_string()))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// `host:port` or `http(s)://host:port[/]`: the scheme (if given) and `host:port`.
fn parse_node(node: &str) -> Result<(Option<&'static str>, String), Error> {
    let node = node.trim();
    let (scheme, rest) = if let Some(rest) = node.strip_prefix("http://") {
        (Some("http"), rest)
    } else if let Some(rest) = node.strip_prefix("https://") {
        (Some("https"), rest)
    } else {
        (None, node)
    };
    let addr = rest.trim_end_matches('/');
    let valid = !addr.is_empty()
        && !addr.contains('/')
        && addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid {
        return Err(Error::Config(format!("bad node list: {node:?} is not host:port or http(s)://host:port")));
    }
    Ok((scheme, addr.to_owned()))
}

/// A handle to a cluster; cheap to clone (the picture of the cluster and the
/// connection pool are shared).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    scheme: &'static str,
    seeds: Vec<String>,
    admin_token: Option<String>,
    retry_budget: Duration,
    topology: RwLock<Option<Arc<Topology>>>,
    /// When the picture was last fetched; held while fetching, so
    /// concurrent refreshes become one.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
    failing: Mutex<HashMap<String, Instant>>,
    round_robin: AtomicUsize,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// PUT: the key had no live value before. DELETE: always false.
    pub created: bool,
    /// The node that applied it.
    pub served_by: Option<String>,
}

/// A shard: its replicas, its master and how many live keys it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub id: ShardId,
    pub master: String,
    pub replicas: Vec<String>,
    /// As its master (or, when the master does not answer, a replica) counts them.
    pub key_count: Option<u64>,
}

/// One answer to a key request.
struct KeyAnswer {
    status: StatusCode,
    body: Value,
    /// The body as it came (values are returned byte for byte).
    bytes: axum::body::Bytes,
    served_by: Option<String>,
}

impl Client {
    /// A builder for a client of the cluster these nodes belong to (any
    /// subset: the rest is learned).
    pub fn builder<I, S>(nodes: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nodes = nodes.into_iter().flat_map(|n| n.as_ref().split(',').map(str::to_owned).collect::<Vec<_>>()).collect();
        ClientBuilder { nodes, admin_token: None, timeout: Duration::from_secs(10), retry_budget: Duration::from_secs(5), tls: None }
    }

    /// A session with an empty context.
    pub fn session(&self) -> Session {
        self.session_from(CausalContext::default())
    }

    /// A session that goes on from a context kept earlier (e.g. in a file).
    pub fn session_from(&self, context: CausalContext) -> Session {
        Session { client: self.clone(), context: Mutex::new(context) }
    }

    fn url(&self, node: &str, path: &str) -> String {
        format!("{}://{node}{path}", self.inner.scheme)
    }

    /// The cluster picture, fetched when there is none yet.
    async fn topology(&self) -> Result<Arc<Topology>, Error> {
        if let Some(t) = self.inner.topology.read().clone() {
            return Ok(t);
        }
        self.refresh(None).await
    }

    /// Fetches the cluster picture again, unless one newer than `seen` was
    /// fetched less than [`REFRESH_GAP`] ago.
    async fn refresh(&self, seen: Option<u64>) -> Result<Arc<Topology>, Error> {
        let mut last = self.inner.refreshed.lock().await;
        if let (Some(t), Some(at)) = (self.inner.topology.read().clone(), *last)
            && (at.elapsed() < REFRESH_GAP || seen.is_some_and(|e| t.epoch() > e))
        {
            return Ok(t);
        }
        let mut candidates: Vec<String> = self.inner.seeds.clone();
        if let Some(t) = self.inner.topology.read().clone() {
            candidates.extend(t.nodes().iter().filter(|n| !self.inner.seeds.contains(n)).cloned());
        }
        let candidates = self.healthy_first(candidates);
        let mut failures = Vec::new();
        for node in &candidates {
            match self.node_status(node).await {
                Ok(status) => {
                    let topology = Arc::new(Topology::from_status(&status)?);
                    *self.inner.topology.write() = Some(topology.clone());
                    *last = Some(Instant::now());
                    return Ok(topology);
                }
                Err(Error::Unreachable(why)) => {
                    self.mark_failing(node);
                    failures.push(format!("{node}: {why}"));
                }
                Err(e) => {
                    self.mark_failing(node);
                    failures.push(format!("{node}: {e}"));
                }
            }
        }
        Err(Error::Unreachable(failures.join("; ")))
    }

    /// One node's own status.
    pub async fn node_status(&self, node: &str) -> Result<NodeStatus, Error> {
        let resp = self.inner.http.get(self.url(node, "/kv-store/status")).send().await.map_err(|e| Error::Unreachable(describe(&e)))?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| Error::Protocol(e.to_string()))?;
        if !status.is_success() {
            return Err(rejection(status, &body));
        }
        serde_json::from_value(body).map_err(|e| Error::Protocol(format!("status of {node}: {e}")))
    }

    fn mark_failing(&self, node: &str) {
        self.inner.failing.lock().insert(node.to_owned(), Instant::now());
    }

    fn is_failing(&self, node: &str) -> bool {
        self.inner.failing.lock().get(node).is_some_and(|at| at.elapsed() < FAILING_FOR)
    }

    /// `nodes` with the recently failing ones moved to the end (order kept).
    fn healthy_first(&self, nodes: Vec<String>) -> Vec<String> {
        let (mut ok, failing): (Vec<String>, Vec<String>) = nodes.into_iter().partition(|n| !self.is_failing(n));
        ok.extend(failing);
        ok
    }

    /// Where to send a key request, in order of preference.
    fn targets(&self, topology: &Topology, key: &str, write: bool) -> Vec<String> {
        let shard = topology.shard_of(key);
        let replicas = topology.replicas(shard);
        let master = topology.master(shard).to_owned();
        let mut order = Vec::with_capacity(replicas.len());
        if write {
            order.push(master.clone());
            order.extend(replicas.iter().filter(|r| **r != master).cloned());
        } else {
            let start = self.inner.round_robin.fetch_add(1, Ordering::Relaxed) % replicas.len().max(1);
            order.extend(replicas[start..].iter().chain(&replicas[..start]).cloned());
        }
        self.healthy_first(order)
    }

    /// Sends a key request to the key's master (writes) or a replica
    /// (reads), retrying as the module documentation says.
    async fn key_request(&self, method: Method, key: &str, value: Option<&RawValue>, context: &CausalContext) -> Result<KeyAnswer, Error> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            value: Option<&'a RawValue>,
            #[serde(rename = "causal-context")]
            context: &'a CausalContext,
        }
        let body = serde_json::to_vec(&Body { value, context })?;
        let write = method != Method::GET;
        let path = format!("/kv-store/keys/{}", utf8_percent_encode(key, KEY_SEGMENT));
        let deadline = Instant::now() + self.inner.retry_budget;
        let mut last_problem = String::new();
        loop {
            let topology = self.topology().await?;
            let mut retry_after = Duration::ZERO;
            for target in self.targets(&topology, key, write) {
                let sent = self
                    .inner
                    .http
                    .request(method.clone(), self.url(&target, &path))
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                let resp = match sent {
                    Ok(resp) => resp,
                    Err(e) if e.is_connect() => {
                        // Never reached the node: safe to send elsewhere.
                        self.mark_failing(&target);
                        last_problem = format!("{target}: {}", describe(&e));
                        continue;
                    }
                    Err(e) if write => return Err(Error::Ambiguous(format!("{target}: {}", describe(&e)))),
                    Err(e) => {
                        self.mark_failing(&target);
                        last_problem = format!("{target}: {}", describe(&e));
                        continue;
                    }
                };
                let status = resp.status();
                let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let served_by = header(SERVED_BY);
                let misrouted = header(MISROUTED).is_some();
                let maybe_applied = header(MAYBE_APPLIED).is_some();
                let wait = header(reqwest::header::RETRY_AFTER.as_str()).and_then(|v| v.parse::<u64>().ok()).map(Duration::from_secs);
                let bytes = match resp.bytes().await {
                    Ok(b) => b,
                    Err(e) if write => return Err(Error::Ambiguous(format!("{target}: answer lost: {}", describe(&e)))),
                    Err(e) => {
                        last_problem = format!("{target}: {}", describe(&e));
                        continue;
                    }
                };
                let body: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(format!("{target}: {e}")))?;
                let answer_epoch = body.get("causal-context").and_then(|c| c.get("epoch")).and_then(Value::as_u64);
                let stale = misrouted
                    || answer_epoch.is_some_and(|e| e > topology.epoch())
                    || (write && served_by.as_deref().is_some_and(|s| s != target));
                if stale {
                    // Refreshed for the next request; this answer stands.
                    let _ = self.refresh(Some(topology.epoch())).await;
                }
                if status == StatusCode::SERVICE_UNAVAILABLE && maybe_applied {
                    // The node passed the write on and got no answer: it may
                    // have been applied; sending it again could apply it twice.
                    return Err(Error::Ambiguous(format!("{target}: {}", error_text(&body))));
                }
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    last_problem = format!("{target}: {}", error_text(&body));
                    retry_after = retry_after.max(wait.unwrap_or(Duration::from_millis(100)));
                    if write {
                        // Refused without taking it (hold-back, view change
                        // under way): wait and ask the master again.
                        break;
                    }
                    continue;
                }
                return Ok(KeyAnswer { status, body, bytes, served_by });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(if last_problem.contains("nable") || retry_after > Duration::ZERO {
                    Error::Unavailable(last_problem)
                } else {
                    Error::Unreachable(last_problem)
                });
            }
            let pause = retry_after.clamp(Duration::from_millis(50), MAX_RETRY_WAIT).min(deadline - now);
            tokio::time::sleep(pause).await;
            let _ = self.refresh(None).await;
        }
    }

    /// Every node's status, gathered by one node (`GET /kv-store/cluster-status`).
    pub async fn status(&self) -> Result<ClusterStatus, Error> {
        let value = self.any_node_get("/kv-store/cluster-status").await?;
        serde_json::from_value(value).map_err(|e| Error::Protocol(format!("cluster status: {e}")))
    }

    /// Every shard with its master, replicas and key count.
    pub async fn shards(&self) -> Result<Vec<ShardInfo>, Error> {
        let status = self.status().await?;
        Ok(status
            .shards
            .iter()
            .map(|s| {
                let master_count = s.replicas.iter().find(|r| r.node == s.master).and_then(|r| r.key_count);
                ShardInfo {
                    id: s.shard_id,
                    master: s.master.clone(),
                    replicas: s.replicas.iter().map(|r| r.node.clone()).collect(),
                    key_count: master_count.or_else(|| s.replicas.iter().filter_map(|r| r.key_count).max()),
                }
            })
            .collect())
    }

    /// Live keys in the whole cluster (each shard counted once, by its master).
    pub async fn key_count(&self) -> Result<u64, Error> {
        Ok(self.shards().await?.iter().filter_map(|s| s.key_count).sum())
    }

    /// `PUT /kv-store/view-change`: the new view (and replication factor;
    /// `None` keeps the current one). Answers the new shards.
    pub async fn view_change(&self, view: &[String], repl_factor: Option<usize>) -> Result<Value, Error> {
        let mut body = serde_json::json!({"view": view});
        if let Some(rf) = repl_factor {
            body["repl-factor"] = Value::from(rf);
        }
        let answer = self.admin(Method::PUT, "/kv-store/view-change", Some(body)).await?;
        let _ = self.refresh(None).await;
        Ok(answer.get("shards").cloned().unwrap_or(Value::Null))
    }

    /// `POST /join`: adds one node to the view.
    pub async fn join(&self, node_id: &str, node_addr: &str) -> Result<Value, Error> {
        let path =
            format!("/join?nodeid={}&nodeaddr={}", utf8_percent_encode(node_id, KEY_SEGMENT), utf8_percent_encode(node_addr, KEY_SEGMENT));
        let answer = self.admin(Method::POST, &path, None).await?;
        let _ = self.refresh(None).await;
        Ok(answer)
    }

    /// An admin request to the first node that answers. Not retried after
    /// it was sent: a view change must not run twice.
    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, Error> {
        let mut problems = Vec::new();
        for node in self.candidates().await {
            let mut req = self.inner.http.request(method.clone(), self.url(&node, path)).timeout(Duration::from_secs(120));
            if let Some(token) = &self.inner.admin_token {
                req = req.bearer_auth(token);
            }
            if let Some(body) = &body {
                req = req.json(body);
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let value: Value = resp.json().await.map_err(|e| Error::Protocol(e.to_string()))?;
                    return if status.is_success() { Ok(value) } else { Err(rejection(status, &value)) };
                }
                Err(e) if e.is_connect() => problems.push(format!("{node}: {}", describe(&e))),
                Err(e) => return Err(Error::Ambiguous(format!("{node}: {}", describe(&e)))),
            }
        }
        Err(Error::Unreachable(problems.join("; ")))
    }

    /// GET of a read-only path at the first node that answers.
    async fn any_node_get(&self, path: &str) -> Result<Value, Error> {
        let mut problems = Vec::new();
        for node in self.candidates().await {
            match self.inner.http.get(self.url(&node, path)).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    match resp.json::<Value>().await {
                        Ok(value) if status.is_success() => return Ok(value),
                        Ok(value) => problems.push(format!("{node}: {}", rejection(status, &value))),
                        Err(e) => problems.push(format!("{node}: {e}")),
                    }
                }
                Err(e) => {
                    self.mark_failing(&node);
                    problems.push(format!("{node}: {e}"));
                }
            }
        }
        Err(Error::Unreachable(problems.join("; ")))
    }

    /// A read-only POST at the first node that answers, with 503s retried
    /// within the budget (a snapshot read, which may be repeated freely).
    async fn any_node_post(&self, path: &str, body: Vec<u8>) -> Result<KeyAnswer, Error> {
        let deadline = Instant::now() + self.inner.retry_budget;
        let mut problem = String::new();
        loop {
            for node in self.candidates().await {
                let sent = self
                    .inner
                    .http
                    .post(self.url(&node, path))
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                let resp = match sent {
                    Ok(r) => r,
                    Err(e) => {
                        self.mark_failing(&node);
                        problem = format!("{node}: {}", describe(&e));
                        continue;
                    }
                };
                let status = resp.status();
                let served_by = resp.headers().get(SERVED_BY).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let bytes = resp.bytes().await.map_err(|e| Error::Unreachable(describe(&e)))?;
                let value: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(format!("{node}: {e}")))?;
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    problem = format!("{node}: {}", error_text(&value));
                    break;
                }
                if !status.is_success() {
                    return Err(rejection(status, &value));
                }
                return Ok(KeyAnswer { status, body: value, bytes, served_by });
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(problem));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Seeds, then the rest of the known view, healthy ones first.
    async fn candidates(&self) -> Vec<String> {
        let mut nodes = self.inner.seeds.clone();
        if let Ok(t) = self.topology().await {
            nodes.extend(t.nodes().iter().filter(|n| !self.inner.seeds.contains(n)).cloned());
        }
        self.healthy_first(nodes)
    }
}

/// A transport error with its cause (reqwest's own text names only the URL).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

fn error_text(body: &Value) -> String {
    body.get("error").or_else(|| body.get("message")).and_then(Value::as_str).unwrap_or("no reason given").to_owned()
}

fn rejection(status: StatusCode, body: &Value) -> Error {
    let message = error_text(body);
    match status.as_u16() {
        401 | 403 => Error::Unauthorized { status: status.as_u16(), message },
        503 => Error::Unavailable(message),
        s => Error::Rejected { status: s, message },
    }
}

/// A causal session: every request carries the context of everything the
/// session wrote or read before, so what it reads is never older than that.
/// Requests of one session may run concurrently; contexts are merged.
pub struct Session {
    client: Client,
    context: Mutex<CausalContext>,
}

impl Session {
    /// The context to keep (e.g. in a file) to go on later with
    /// [`Client::session_from`].
    pub fn context(&self) -> CausalContext {
        self.context.lock().clone()
    }

    /// Takes in a context learned elsewhere (another session's, say).
    pub fn observe(&self, other: &CausalContext) {
        merge(&mut self.context.lock(), other);
    }

    fn learn(&self, body: &Value) -> Result<(), Error> {
        let ctx = body.get("causal-context").ok_or_else(|| Error::Protocol("an answer without causal-context".into()))?;
        let ctx = CausalContext::from_json(ctx).map_err(|e| Error::Protocol(format!("causal-context: {e}")))?;
        self.observe(&ctx);
        Ok(())
    }

    /// Writes `value` (any serde type, stored as its JSON).
    pub async fn put<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<Written, Error> {
        let raw = serde_json::value::to_raw_value(value)?;
        self.put_raw(key, &raw).await
    }

    /// Writes a value given as JSON text.
    pub async fn put_raw(&self, key: &str, value: &RawValue) -> Result<Written, Error> {
        let ctx = self.context();
        let answer = self.client.key_request(Method::PUT, key, Some(value), &ctx).await?;
        match answer.status {
            StatusCode::OK | StatusCode::CREATED => {
                self.learn(&answer.body)?;
                Ok(Written { created: answer.status == StatusCode::CREATED, served_by: answer.served_by })
            }
            status => Err(rejection(status, &answer.body)),
        }
    }

    /// The key's value as `T`, or `None` when the key does not exist.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        match self.get_raw(key).await? {
            Some(raw) => Ok(Some(serde_json::from_str(raw.get())?)),
            None => Ok(None),
        }
    }

    /// The key's value as JSON text, or `None`.
    pub async fn get_raw(&self, key: &str) -> Result<Option<Box<RawValue>>, Error> {
        let ctx = self.context();
        let answer = self.client.key_request(Method::GET, key, None, &ctx).await?;
        match answer.status {
            StatusCode::OK => {
                self.learn(&answer.body)?;
                #[derive(serde::Deserialize)]
                struct Found {
                    value: Box<RawValue>,
                }
                let found: Found = serde_json::from_slice(&answer.bytes).map_err(|e| Error::Protocol(format!("a found key: {e}")))?;
                Ok(Some(found.value))
            }
            StatusCode::NOT_FOUND => {
                self.learn(&answer.body)?;
                Ok(None)
            }
            status => Err(rejection(status, &answer.body)),
        }
    }

    /// Several keys read from one causally consistent cut (`POST
    /// /kv-store/read`): every key once, in the order given, with its value
    /// as JSON text or `None`. If the answer holds a write that depends on
    /// a write of another key asked for, it holds that write or a later one.
    pub async fn get_many(&self, keys: &[&str]) -> Result<Vec<(String, Option<Box<RawValue>>)>, Error> {
        #[derive(Serialize)]
        struct ReadBody<'a> {
            keys: &'a [&'a str],
            #[serde(rename = "causal-context")]
            context: &'a CausalContext,
        }
        #[derive(serde::Deserialize)]
        struct KeyValue {
            key: String,
            value: Option<Box<RawValue>>,
        }
        #[derive(serde::Deserialize)]
        struct ReadAnswer {
            values: Vec<KeyValue>,
        }
        let ctx = self.context();
        let body = serde_json::to_vec(&ReadBody { keys, context: &ctx })?;
        let answer = self.client.any_node_post("/kv-store/read", body).await?;
        self.learn(&answer.body)?;
        let read: ReadAnswer = serde_json::from_slice(&answer.bytes).map_err(|e| Error::Protocol(format!("a snapshot read: {e}")))?;
        Ok(read.values.into_iter().map(|kv| (kv.key, kv.value)).collect())
    }

    /// Deletes the key; false when it did not exist.
    pub async fn delete(&self, key: &str) -> Result<bool, Error> {
        let ctx = self.context();
        let answer = self.client.key_request(Method::DELETE, key, None, &ctx).await?;
        match answer.status {
            StatusCode::OK => {
                self.learn(&answer.body)?;
                Ok(true)
            }
            StatusCode::NOT_FOUND => {
                self.learn(&answer.body)?;
                Ok(false)
            }
            status => Err(rejection(status, &answer.body)),
        }
    }
}

/// Merges `other` into `ctx`: within one epoch, the larger counter of each
/// origin; a newer epoch's context replaces an older one (the nodes accept
/// an older epoch's context, and satisfy it at once).
fn merge(ctx: &mut CausalContext, other: &CausalContext) {
    if other.clock.is_empty() {
        return;
    }
    if ctx.clock.is_empty() || other.epoch > ctx.epoch {
        *ctx = other.clone();
    } else if other.epoch == ctx.epoch {
        ctx.clock.merge(&other.clock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_and_urls_parse() {
        assert_eq!(parse_node("127.0.0.1:13800").unwrap(), (None, "127.0.0.1:13800".into()));
        assert_eq!(parse_node(" http://h:1/ ").unwrap(), (Some("http"), "h:1".into()));
        assert_eq!(parse_node("https://[::1]:13800").unwrap(), (Some("https"), "[::1]:13800".into()));
        for bad in ["", "h", "h:", ":1", "h:0", "h:99999", "http://h:1/x", "ftp://h:1"] {
            assert!(parse_node(bad).is_err(), "{bad:?}");
        }
        assert!(Client::builder(Vec::<String>::new()).build().is_err());
        assert!(Client::builder(["a:1,b:2"]).build().is_ok());
    }

    #[test]
    fn contexts_merge_by_epoch() {
        let ctx = |epoch, clock: &[(&str, u64)]| CausalContext { epoch, clock: clock.iter().map(|(o, s)| (o.to_string(), *s)).collect() };
        let mut mine = ctx(1, &[("a", 3), ("b", 1)]);
        merge(&mut mine, &ctx(1, &[("a", 2), ("b", 4), ("c", 1)]));
        assert_eq!(mine, ctx(1, &[("a", 3), ("b", 4), ("c", 1)]));
        merge(&mut mine, &ctx(0, &[("a", 9)]));
        assert_eq!(mine, ctx(1, &[("a", 3), ("b", 4), ("c", 1)]), "an older epoch adds nothing");
        merge(&mut mine, &CausalContext::default());
        assert_eq!(mine.clock.len(), 3, "an empty context adds nothing");
        merge(&mut mine, &ctx(2, &[("d", 1)]));
        assert_eq!(mine, ctx(2, &[("d", 1)]), "a newer epoch replaces");
    }
}

//! Test harness: real `causalkv` node processes on OS-chosen loopback ports,
//! each with a temp data dir, killed on drop. Waits poll with deadlines.
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_causalkv");

static USED_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port the OS says is free (never handed out twice per process).
pub fn free_port() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port();
        let mut used = USED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
        if used.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

pub struct NodeProc {
    pub addr: String,
    pub data_dir: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl NodeProc {
    /// A node (not started) at `addr` with its data in `data_dir` and the
    /// extra environment `env` (VIEW defaults to ADDRESS alone).
    pub fn new(addr: &str, data_dir: PathBuf, env: &[(&str, &str)]) -> NodeProc {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        NodeProc { addr: addr.to_owned(), data_dir, env, child: None }
    }

    /// Whether the process has exited (false when not started).
    pub fn exited(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} already running", self.addr);
        let log = std::env::var("CAUSALKV_TEST_LOG").is_ok();
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("ADDRESS", &self.addr)
            .env("DATA_DIR", &self.data_dir)
            .env(
                "RUST_LOG",
                std::env::var("CAUSALKV_TEST_LOG")
                    .ok()
                    .filter(|v| v.contains("="))
                    .unwrap_or_else(|| if log { "info".into() } else { "warn".into() }),
            )
            .stdout(Stdio::null())
            .stderr(if log { Stdio::inherit() } else { Stdio::null() });
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn causalkv"));
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("node running").id() as i32
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.env.iter().any(|(k, _)| k == "TLS_CERT") { "https" } else { "http" };
        format!("{scheme}://{}{}", self.addr, path)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
        }
        self.kill();
    }
}

pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub client: reqwest::Client,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes with `REPL_FACTOR = rf` and waits until all are ready.
    pub async fn start(n: usize, rf: usize) -> Cluster {
        Self::start_with(n, rf, &[]).await
    }

    pub async fn start_with(n: usize, rf: usize, env: &[(&str, &str)]) -> Cluster {
        Self::start_with_view(n, n, rf, env).await
    }

    /// Starts `n` nodes whose VIEW holds only the first `in_view` of them
    /// (the others are proxies until a view change adds them).
    pub async fn start_with_view(n: usize, in_view: usize, rf: usize, env: &[(&str, &str)]) -> Cluster {
        Self::start_with_client(n, in_view, rf, env, client()).await
    }

    /// As `start_with_view`, talking to the nodes with `client` (TLS tests).
    pub async fn start_with_client(n: usize, in_view: usize, rf: usize, env: &[(&str, &str)], client: reqwest::Client) -> Cluster {
        let tmp = tempfile::tempdir().expect("temp dir");
        let addrs: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let view = addrs[..in_view].join(",");
        let mut nodes = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let mut node_env = vec![("VIEW".to_string(), view.clone()), ("REPL_FACTOR".to_string(), rf.to_string())];
            node_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            let mut node = NodeProc { addr: addr.clone(), data_dir: tmp.path().join(format!("node{i}")), env: node_env, child: None };
            node.start();
            nodes.push(node);
        }
        let mut cluster = Cluster { nodes, client, _tmp: tmp };
        for i in 0..n {
            cluster.wait_ready(i).await;
        }
        cluster
    }

    /// Starts nodes at `addrs` (VIEW = all of them, REPL_FACTOR = `rf`), node
    /// `i` with the extra environment `envs[i]` (which may override VIEW),
    /// and waits until all are ready.
    pub async fn start_nodes(addrs: &[String], rf: usize, envs: &[Vec<(String, String)>]) -> Cluster {
        let tmp = tempfile::tempdir().expect("temp dir");
        let view = addrs.join(",");
        let mut nodes = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let mut env = vec![("VIEW".to_string(), view.clone()), ("REPL_FACTOR".to_string(), rf.to_string())];
            env.extend(envs.get(i).cloned().unwrap_or_default());
            let mut node = NodeProc { addr: addr.clone(), data_dir: tmp.path().join(format!("node{i}")), env, child: None };
            node.start();
            nodes.push(node);
        }
        let mut cluster = Cluster { nodes, client: client(), _tmp: tmp };
        for i in 0..addrs.len() {
            cluster.wait_ready(i).await;
        }
        cluster
    }

    pub fn addr(&self, i: usize) -> &str {
        &self.nodes[i].addr
    }

    pub fn index_of(&self, addr: &str) -> usize {
        self.nodes.iter().position(|n| n.addr == addr).unwrap_or_else(|| panic!("{addr} is not a node of this cluster"))
    }

    pub async fn wait_ready(&mut self, i: usize) {
        let url = self.nodes[i].url("/ready");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if matches!(self.client.get(&url).send().await, Ok(r) if r.status() == StatusCode::OK) {
                return;
            }
            if let Some(Ok(Some(status))) = self.nodes[i].child.as_mut().map(|c| c.try_wait()) {
                panic!("node {} exited during start-up: {status}", self.nodes[i].addr);
            }
            assert!(Instant::now() < deadline, "node {} did not become ready", self.nodes[i].addr);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn restart(&mut self, i: usize) {
        self.nodes[i].start();
        self.wait_ready(i).await;
    }

    pub async fn put(&self, i: usize, key: &str, value: Value, ctx: &Value) -> Answer {
        let body = json!({"value": value, "causal-context": ctx});
        send(self.client.put(self.nodes[i].url(&key_path(key))).json(&body)).await
    }

    pub async fn get(&self, i: usize, key: &str, ctx: &Value) -> Answer {
        send(self.client.get(self.nodes[i].url(&key_path(key))).json(&json!({"causal-context": ctx}))).await
    }

    pub async fn delete(&self, i: usize, key: &str, ctx: &Value) -> Answer {
        send(self.client.delete(self.nodes[i].url(&key_path(key))).json(&json!({"causal-context": ctx}))).await
    }

    pub async fn get_json(&self, i: usize, path: &str) -> Answer {
        send(self.client.get(self.nodes[i].url(path))).await
    }

    /// The value of a Prometheus counter or gauge of node `i` (0 if absent).
    pub async fn metric(&self, i: usize, name: &str) -> u64 {
        let text = self.client.get(self.nodes[i].url("/metrics")).send().await.expect("metrics").text().await.expect("metrics text");
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or(0)
    }

    /// Sets the fault switches of node `i` (needs `CAUSALKV_FAULTS=1`).
    pub async fn set_faults(&self, i: usize, faults: Value) {
        let resp = self.client.put(self.nodes[i].url("/internal/faults")).json(&faults).send().await.expect("set faults");
        assert_eq!(resp.status(), StatusCode::OK, "setting faults on node {i}");
    }

    /// Index of the node the key's shard is mastered by, learned by a write.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

/// reqwest has no TLS provider of its own here (the node installs ring):
/// call before building a `reqwest::Client` that `client()` did not build.
pub fn tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn client() -> reqwest::Client {
    tls_provider();
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client")
}

pub fn key_path(key: &str) -> String {
    let encoded: String = percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC).to_string();
    format!("/kv-store/keys/{encoded}")
}

/// A decoded answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub retry_after: Option<String>,
}

impl Answer {
    pub fn ctx(&self) -> Value {
        self.body.get("causal-context").cloned().unwrap_or_else(|| panic!("no causal-context in {}", self.body))
    }

    pub fn address(&self) -> Option<&str> {
        self.body.get("address").and_then(Value::as_str)
    }

    pub fn value(&self) -> Option<&Value> {
        self.body.get("value")
    }

    /// The seq of `origin` in the returned context's clock.
    pub fn seq_of(&self, origin: &str) -> u64 {
        self.ctx().get("clock").and_then(|c| c.get(origin)).and_then(Value::as_u64).unwrap_or(0)
    }
}

pub async fn send(req: reqwest::RequestBuilder) -> Answer {
    let resp = req.send().await.expect("the node answered (no dropped connection)");
    let status = resp.status();
    let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(String::from);
    let text = resp.text().await.expect("a body");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON answer ({status}): {text}"));
    assert!(body.is_object(), "answer is not an object: {body}");
    Answer { status, body, retry_after }
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub async fn wait_until<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

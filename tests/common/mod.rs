//! Test harness: real `causalkv` node processes on loopback ports from this
//! process's own port block, each with a temp data dir, killed on drop.
//! Waits poll with deadlines.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_causalkv");

/// The descriptor number a node finds its inherited listening socket at.
const INHERITED_FD: i32 = 3;

/// Ports handed out to nodes: below Linux's ephemeral range (32768-60999),
/// so no outgoing connection of any process is given one of them between
/// our check and the node's bind (asking the OS for a free port returned
/// one from that very range and released it: a race).
const PORT_RANGE: std::ops::Range<u32> = 12_000..32_000;
/// Ports per block; each test process starts in the block its pid picks,
/// so concurrent test processes (other binaries, other checkouts) use
/// different ports.
const PORT_BLOCK: u32 = 250;

/// The next port this process hands out (offset into `PORT_RANGE`).
static NEXT_PORT: Mutex<Option<u32>> = Mutex::new(None);

/// Whether nothing listens on `port` on any IPv4 or IPv6 address now.
fn port_is_free(port: u16) -> bool {
    let v4 = std::net::TcpListener::bind(("0.0.0.0", port)).is_ok();
    // No IPv6 on this machine is fine; a port taken on it is not.
    let v6 = match std::net::TcpListener::bind(("::", port)) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::AddrInUse,
    };
    v4 && v6
}

/// `n` consecutive free ports from this process's block (never handed out
/// twice per process); returns the first.
pub fn free_port_run(n: u16) -> u16 {
    let span = PORT_RANGE.end - PORT_RANGE.start;
    let mut next = NEXT_PORT.lock().unwrap_or_else(|e| e.into_inner());
    let offset = next.get_or_insert_with(|| (std::process::id() % (span / PORT_BLOCK)) * PORT_BLOCK);
    for _ in 0..span {
        if *offset + n as u32 > span {
            *offset = 0;
        }
        let base = (PORT_RANGE.start + *offset) as u16;
        *offset += n as u32;
        if (0..n).all(|i| port_is_free(base + i)) {
            return base;
        }
    }
    panic!("no run of {n} free ports in {PORT_RANGE:?}");
}

/// A free loopback port (never handed out twice per process). A node can
/// still lose it to another process before it binds: `Cluster` retries a
/// start that failed for that reason on new ports.
pub fn free_port() -> u16 {
    free_port_run(1)
}

/// Whether a node's stderr says it could not bind its port because another
/// process has it.
pub fn is_port_taken(stderr: &str) -> bool {
    stderr.contains("cannot listen on") && (stderr.contains("in use") || stderr.contains("os error 98"))
}

/// Tries `start` on fresh ports up to 5 times while nodes fail to bind for
/// a port another process took (`Err` from `start` carries the node's
/// stderr); panics on any other start failure.
pub async fn with_port_retries<T, F, Fut>(mut start: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut last = String::new();
    for attempt in 0..5 {
        match start().await {
            Ok(t) => return t,
            Err(e) if is_port_taken(&e) => {
                eprintln!("attempt {attempt}: a node's port was taken ({}); starting again on other ports", e.trim());
                last = e;
            }
            Err(e) => panic!("a node exited during start-up: {e}"),
        }
    }
    panic!("nodes kept losing their ports: {last}");
}

fn stderr_path(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".stderr");
    data_dir.with_file_name(name)
}

pub struct NodeProc {
    pub addr: String,
    pub data_dir: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Whether the node binds its port itself instead of inheriting the
    /// harness's socket (see `start`).
    binds_itself: bool,
}

impl NodeProc {
    /// A node (not started) at `addr` with its data in `data_dir` and the
    /// extra environment `env` (VIEW defaults to ADDRESS alone).
    pub fn new(addr: &str, data_dir: PathBuf, env: &[(&str, &str)]) -> NodeProc {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        NodeProc { addr: addr.to_owned(), data_dir, env, child: None, binds_itself: false }
    }

    /// The node binds its port by itself (as in production) rather than
    /// inheriting a socket the harness bound: for tests of the node's own
    /// binding (BIND_ADDR, when it starts to listen).
    pub fn binding_itself(mut self) -> NodeProc {
        self.binds_itself = true;
        self
    }

    /// Whether the process has exited (false when not started).
    pub fn exited(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Where the node's stderr goes (next to its data dir, so wiping the
    /// data keeps it), unless `CAUSALKV_TEST_LOG` sends it to the test's.
    pub fn stderr_path(&self) -> PathBuf {
        stderr_path(&self.data_dir)
    }

    /// If the process exited: its exit status and stderr.
    pub fn exit_report(&mut self) -> Option<String> {
        let status = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())?;
        let stderr = std::fs::read_to_string(self.stderr_path()).unwrap_or_default();
        Some(format!("node {} exited ({status}): {}", self.addr, stderr.trim()))
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} already running", self.addr);
        let log = std::env::var("CAUSALKV_TEST_LOG").is_ok();
        let stderr = if log {
            Stdio::inherit()
        } else {
            match std::fs::File::create(self.stderr_path()) {
                Ok(f) => Stdio::from(f),
                Err(_) => Stdio::null(),
            }
        };
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("ADDRESS", &self.addr)
            .env("DATA_DIR", &self.data_dir)
            .env(
                "RUST_LOG",
                std::env::var("CAUSALKV_TEST_LOG")
                    .ok()
                    .filter(|v| v.contains("="))
                    .unwrap_or_else(|| if log { "info".into() } else { "warn,causalkv::node=info".into() }),
            )
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        // The harness binds the node's port itself and hands the listening
        // socket over (LISTEN_FD): from this bind on, nothing else can take
        // the port. Binding here fails only when another process has the
        // port already; then the node binds by itself, fails the same way,
        // and `with_port_retries` moves on to other ports.
        let binds_itself = self.binds_itself || self.env.iter().any(|(k, _)| k == "BIND_ADDR");
        let listener = if binds_itself {
            None
        } else {
            self.addr.parse::<std::net::SocketAddr>().ok().and_then(|a| std::net::TcpListener::bind(a).ok())
        };
        if let Some(listener) = &listener {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            let fd = listener.as_raw_fd();
            cmd.env("LISTEN_FD", INHERITED_FD.to_string());
            // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let ok = if fd == INHERITED_FD { libc::fcntl(fd, libc::F_SETFD, 0) != -1 } else { libc::dup2(fd, INHERITED_FD) != -1 };
                    if ok { Ok(()) } else { Err(std::io::Error::last_os_error()) }
                });
            }
        }
        self.child = Some(cmd.spawn().expect("spawn causalkv"));
        // The child has its own copy now.
        drop(listener);
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
        // A failing test shows how a node that died under it ended.
        if std::thread::panicking()
            && let Some(report) = self.exit_report()
        {
            let tail: Vec<&str> = report.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("{}", tail.join("\n"));
        }
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
    /// Starts again on other ports when a node lost its port to another
    /// process.
    pub async fn start_with_client(n: usize, in_view: usize, rf: usize, env: &[(&str, &str)], client: reqwest::Client) -> Cluster {
        with_port_retries(|| {
            let addrs: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect();
            let view = addrs[..in_view].join(",");
            let envs: Vec<Vec<(String, String)>> = (0..n)
                .map(|_| {
                    let mut node_env = vec![("VIEW".to_string(), view.clone())];
                    node_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
                    node_env
                })
                .collect();
            let client = client.clone();
            async move { Cluster::try_start_nodes(&addrs, rf, &envs, client).await }
        })
        .await
    }

    /// Starts nodes at `addrs` (VIEW = all of them, REPL_FACTOR = `rf`), node
    /// `i` with the extra environment `envs[i]` (which may override VIEW),
    /// and waits until all are ready. The caller chose the addresses: a node
    /// that cannot bind its port fails the test (see `try_start_nodes`).
    pub async fn start_nodes(addrs: &[String], rf: usize, envs: &[Vec<(String, String)>]) -> Cluster {
        Self::try_start_nodes(addrs, rf, envs, client()).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// As `start_nodes`; `Err` with the exit status and stderr of a node
    /// that exited during start-up (the other nodes are killed), for
    /// `with_port_retries`.
    pub async fn try_start_nodes(
        addrs: &[String],
        rf: usize,
        envs: &[Vec<(String, String)>],
        client: reqwest::Client,
    ) -> Result<Cluster, String> {
        let tmp = tempfile::tempdir().expect("temp dir");
        let view = addrs.join(",");
        let mut nodes = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let mut env = vec![("VIEW".to_string(), view.clone()), ("REPL_FACTOR".to_string(), rf.to_string())];
            env.extend(envs.get(i).cloned().unwrap_or_default());
            let mut node =
                NodeProc { addr: addr.clone(), data_dir: tmp.path().join(format!("node{i}")), env, child: None, binds_itself: false };
            node.start();
            nodes.push(node);
        }
        let mut cluster = Cluster { nodes, client, _tmp: tmp };
        for i in 0..addrs.len() {
            cluster.try_wait_ready(i).await?;
        }
        Ok(cluster)
    }

    pub fn addr(&self, i: usize) -> &str {
        &self.nodes[i].addr
    }

    pub fn index_of(&self, addr: &str) -> usize {
        self.nodes.iter().position(|n| n.addr == addr).unwrap_or_else(|| panic!("{addr} is not a node of this cluster"))
    }

    pub async fn wait_ready(&mut self, i: usize) {
        if let Err(e) = self.try_wait_ready(i).await {
            panic!("{e}");
        }
    }

    /// Waits until node `i` answers `/ready`; `Err` (exit status and
    /// stderr) when it exited first.
    pub async fn try_wait_ready(&mut self, i: usize) -> Result<(), String> {
        let url = self.nodes[i].url("/ready");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // A short limit per probe: whatever holds the port may never
            // answer (another process took it), and the exit check below
            // must still run.
            if matches!(self.client.get(&url).timeout(Duration::from_secs(2)).send().await, Ok(r) if r.status() == StatusCode::OK) {
                return Ok(());
            }
            if let Some(report) = self.nodes[i].exit_report() {
                return Err(report);
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
    /// The `x-causalkv-served-by` header: the node that served a key request.
    pub served_by: Option<String>,
    /// `host:port` of the node the request was sent to.
    pub asked: String,
}

impl Answer {
    pub fn ctx(&self) -> Value {
        self.body.get("causal-context").cloned().unwrap_or_else(|| panic!("no causal-context in {}", self.body))
    }

    /// The body's `address` (set only when a node of another shard served it).
    pub fn address(&self) -> Option<&str> {
        self.body.get("address").and_then(Value::as_str)
    }

    /// The node that served the request when it was not the node asked
    /// (from the served-by header; tests address nodes as their ADDRESS).
    pub fn forwarded_to(&self) -> Option<&str> {
        self.served_by.as_deref().filter(|s| *s != self.asked)
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
    let served_by = resp.headers().get("x-causalkv-served-by").and_then(|v| v.to_str().ok()).map(String::from);
    let url = resp.url();
    let asked = format!("{}:{}", url.host_str().unwrap_or_default(), url.port_or_known_default().unwrap_or_default());
    let text = resp.text().await.expect("a body");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON answer ({status}): {text}"));
    assert!(body.is_object(), "answer is not an object: {body}");
    Answer { status, body, retry_after, served_by, asked }
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

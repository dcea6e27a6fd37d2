//! Issue 11, holes 8 and 9 (part): what one client can hold of a node.
//! Slow headers, idle and surplus connections are cut off, a stalled client
//! cannot delay SIGTERM, oversized heads get JSON errors, and a node
//! addressed at loopback listens on loopback only.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Cluster, NodeProc, free_port, wait_until};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Reads until EOF, an error or `limit`; `true` when the node closed the
/// connection (EOF or reset) in time. Whatever was read is appended to `got`.
fn closed_within(stream: &mut TcpStream, limit: Duration, got: &mut Vec<u8>) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left.min(Duration::from_millis(200)))).expect("set read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
}

/// Reads one whole HTTP/1.1 answer (head and `Content-Length` body) or
/// until the node closes the connection or `limit` passes; returns what
/// was read and whether the connection was closed.
fn read_answer(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                .unwrap_or(0);
            if body.len() >= length {
                return (got, false);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, false);
        }
        stream.set_read_timeout(Some(left.min(Duration::from_millis(200)))).expect("set read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return (got, true),
        }
    }
}

/// The JSON body of a raw HTTP/1.1 answer.
fn body_of(answer: &[u8]) -> Value {
    let text = String::from_utf8_lossy(answer);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_else(|| panic!("no head in {text:?}"));
    serde_json::from_str(body).unwrap_or_else(|_| panic!("non-JSON body in {text:?}"))
}

// Slowloris: one header line every 300 ms (never finishing the head) is cut
// off once HEADER_READ_TIMEOUT_MS has passed since the request's first byte.
// Before: hyper under axum::serve had no header timer; the connection lived on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let c = Cluster::start_with(1, 1, &[("HEADER_READ_TIMEOUT_MS", "1500")]).await;
    let mut s = TcpStream::connect(c.addr(0)).expect("connect");
    let start = Instant::now();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").expect("request line");
    let mut cut = false;
    let mut got = Vec::new();
    for i in 0..40 {
        if closed_within(&mut s, Duration::from_millis(300), &mut got) || s.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes()).is_err() {
            cut = true;
            break;
        }
    }
    let held = start.elapsed();
    assert!(cut, "a client dribbling headers kept its connection for {held:?}");
    assert!(held >= Duration::from_millis(1400), "cut after {held:?}, before the header timeout");
    assert!(held < Duration::from_secs(4), "cut only after {held:?}");
    assert!(got.is_empty(), "no answer to an unfinished request: {:?}", String::from_utf8_lossy(&got));
    // The node serves others as before, and counted the cut.
    assert_eq!(c.get_json(0, "/health").await.status, StatusCode::OK);
    assert_eq!(c.metric(0, "causalkv_header_timeouts").await, 1);
}

// The header timeout runs from a request's first byte, not from the last
// answer: a keep-alive connection idle for longer than it still serves the
// next request; one idle for IDLE_TIMEOUT_MS is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_outlive_the_header_timeout_until_the_idle_timeout() {
    let c = Cluster::start_with(1, 1, &[("HEADER_READ_TIMEOUT_MS", "500"), ("IDLE_TIMEOUT_MS", "3000")]).await;
    let mut s = TcpStream::connect(c.addr(0)).expect("connect");
    let request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut last_sent = Instant::now();
    for round in 0..2 {
        last_sent = Instant::now();
        s.write_all(request).expect("request");
        let (got, closed) = read_answer(&mut s, Duration::from_secs(10));
        assert!(!closed, "round {round}: the node closed a keep-alive connection: {:?}", String::from_utf8_lossy(&got));
        assert!(got.starts_with(b"HTTP/1.1 200"), "round {round}: {:?}", String::from_utf8_lossy(&got));
        // Idle for three times the header timeout (the gap this test is about).
        std::thread::sleep(Duration::from_millis(1500));
    }
    let mut got = Vec::new();
    assert!(closed_within(&mut s, Duration::from_secs(6), &mut got), "an idle connection was kept past IDLE_TIMEOUT_MS");
    let idle = last_sent.elapsed();
    assert!(idle >= Duration::from_millis(2900), "closed after {idle:?} idle, before IDLE_TIMEOUT_MS");
}

// MAX_CONNECTIONS=20: surplus connections get an immediate 503 JSON answer and
// are closed; once the holders leave, /health answers again.
// Before: every connection was accepted until file descriptors ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surplus_connections_are_refused_at_once() {
    let c = Cluster::start_with(1, 1, &[("MAX_CONNECTIONS", "20")]).await;
    let before = c.get_json(0, "/kv-store/key-count").await;
    let addr = c.addr(0).to_string();
    let mut held = Vec::new();
    for _ in 0..25 {
        held.push(tokio::net::TcpStream::connect(&addr).await.expect("connect"));
    }
    let reads = held.iter_mut().map(|s| async move {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut got)).await;
        got
    });
    let answers = futures_util::future::join_all(reads).await;
    let refused: Vec<&Vec<u8>> = answers.iter().filter(|a| !a.is_empty()).collect();
    // 25 - 20 = 5 at least; a few more when the test client's pool holds
    // connections of its own (reqwest may open a second one while the first
    // is on its way back to the pool).
    assert!((5..=8).contains(&refused.len()), "{} of 25 connections refused with MAX_CONNECTIONS=20", refused.len());
    for a in &refused {
        assert!(a.starts_with(b"HTTP/1.1 503 "), "{:?}", String::from_utf8_lossy(a));
        let body = body_of(a);
        assert_eq!(body, json!({"message": "Error", "error": "Too many connections", "causal-context": {}}));
    }
    drop(held);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            matches!(c.client.get(c.nodes[0].url("/health")).send().await, Ok(r) if r.status() == StatusCode::OK)
        })
        .await,
        "/health does not answer after the connections closed"
    );
    assert!(c.metric(0, "causalkv_connections_refused").await >= 5);
    let after = c.get_json(0, "/kv-store/key-count").await;
    assert_eq!(before.body["key-count"], after.body["key-count"]);
}

// SIGTERM with stalled clients (one mid-headers, one mid-body) open: the
// process exits cleanly within 10 s and keeps acknowledged writes.
// Before: graceful shutdown waited for every connection (59 s measured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_in_time_whatever_clients_do() {
    let mut c = Cluster::start(1, 1).await;
    let empty = json!({});
    assert_eq!(c.put(0, "kept", json!("yes"), &empty).await.status, StatusCode::CREATED);
    let mut mid_head = TcpStream::connect(c.addr(0)).expect("connect");
    mid_head.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").expect("partial head");
    let mut mid_body = TcpStream::connect(c.addr(0)).expect("connect");
    mid_body
        .write_all(
            b"PUT /kv-store/keys/stalled HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"value\":",
        )
        .expect("partial body");
    // The node has the partial body: a request is in flight.
    let mut got = Vec::new();
    assert!(!closed_within(&mut mid_body, Duration::from_millis(300), &mut got));
    let start = Instant::now();
    let code = c.nodes[0].terminate();
    let took = start.elapsed();
    assert_eq!(code, Some(0), "exit status after SIGTERM (None: still running after 15 s)");
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
    c.restart(0).await;
    let a = c.get(0, "kept", &empty).await;
    assert_eq!((a.status, a.value().cloned()), (StatusCode::OK, Some(json!("yes"))));
    assert_eq!(c.get(0, "stalled", &empty).await.status, StatusCode::NOT_FOUND);
}

// Oversized heads get the API's JSON error shape, not hyper's empty answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_json_errors() {
    let c = Cluster::start(1, 1).await;
    let big_header = "v".repeat(20 * 1024);
    let a = common::send(c.client.get(c.nodes[0].url("/health")).header("x-big", big_header)).await;
    assert_eq!(a.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "{}", a.body);
    assert_eq!(a.body, json!({"message": "Error in GET", "error": "Request headers are too large", "causal-context": {}}));
    let long_key = "k".repeat(10 * 1024);
    let a = common::send(c.client.put(c.nodes[0].url(&format!("/kv-store/keys/{long_key}"))).json(&json!({"value": 1}))).await;
    assert_eq!(a.status, StatusCode::URI_TOO_LONG, "{}", a.body);
    assert_eq!(a.body, json!({"message": "Error in PUT", "error": "URI is too long", "causal-context": {}}));
    // Up to 64 headers in all are served (reqwest adds host and accept); 80
    // get the JSON 431 (hyper's own limit, 100, is above).
    let headers = |n: usize| (0..n).fold(c.client.get(c.nodes[0].url("/health")), |r, i| r.header(format!("x-h{i}"), "1"));
    assert_eq!(common::send(headers(60)).await.status, StatusCode::OK);
    let a = common::send(headers(80)).await;
    assert_eq!(a.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(a.body["error"], json!("Request headers are too large"), "JSON, not hyper's empty answer");
    assert_eq!(c.get_json(0, "/kv-store/key-count").await.body["key-count"], json!(0), "nothing was stored");
}

/// This machine's first non-loopback IPv4 address, if it has one.
fn non_loopback_ip() -> Option<IpAddr> {
    // Connecting a UDP socket sends nothing; it picks the outgoing address.
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// Local addresses listening on `port` (from /proc/net/tcp; IPv4).
fn listening_on(port: u16) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (ip, p) = f.get(1)?.split_once(':')?;
            (f.get(3) == Some(&"0A") && u16::from_str_radix(p, 16).ok() == Some(port)).then(|| ip.to_string())
        })
        .collect()
}

// A node with ADDRESS 127.0.0.1:p listens on loopback only; BIND_ADDR=0.0.0.0
// restores every interface. Before: every node bound 0.0.0.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_addressed_nodes_listen_on_loopback_only() {
    let (local, everywhere) = tokio::join!(Cluster::start(1, 1), Cluster::start_with(1, 1, &[("BIND_ADDR", "0.0.0.0")]));
    let port = |c: &Cluster| c.addr(0).rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).expect("port");
    if std::path::Path::new("/proc/net/tcp").exists() {
        assert_eq!(listening_on(port(&local)), ["0100007F"], "listening on 127.0.0.1 only");
        assert_eq!(listening_on(port(&everywhere)), ["00000000"], "BIND_ADDR=0.0.0.0 listens everywhere");
    }
    match non_loopback_ip() {
        Some(ip) => {
            let refused = TcpStream::connect_timeout(&SocketAddr::new(ip, port(&local)), Duration::from_secs(2));
            assert!(refused.is_err(), "a loopback node answered at {ip}");
            let reached = TcpStream::connect_timeout(&SocketAddr::new(ip, port(&everywhere)), Duration::from_secs(2));
            assert!(reached.is_ok(), "BIND_ADDR=0.0.0.0 node not reachable at {ip}: {reached:?}");
        }
        None => eprintln!("no non-loopback address on this machine: checked /proc/net/tcp only"),
    }
    assert_eq!(local.get_json(0, "/health").await.status, StatusCode::OK);
}

// SIGTERM the moment the node's port accepts a connection: the signal
// handlers exist before the node listens, so the node still shuts down
// cleanly (exit status 0, not killed by the signal), every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_start_is_a_clean_shutdown() {
    for _ in 0..5 {
        let tmp = tempfile::tempdir().expect("temp dir");
        let addr = format!("127.0.0.1:{}", free_port());
        // Bound by the node itself: a socket the harness bound would accept
        // before the node even runs.
        let mut node = NodeProc::new(&addr, tmp.path().join("n"), &[]).binding_itself();
        node.start();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline && !node.exited(), "the node never listened");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(node.terminate(), Some(0), "a clean exit, not death by signal");
    }
}

// The harness's port retry (tests/common): a node whose port another
// process holds exits with the bind error `is_port_taken` recognises, and
// `with_port_retries` starts the cluster again on other ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_port_is_started_again_on_another() {
    let held = std::net::TcpListener::bind(("127.0.0.1", free_port())).expect("hold a port");
    let taken = format!("127.0.0.1:{}", held.local_addr().unwrap().port());
    let mut attempts = Vec::new();
    let c = common::with_port_retries(|| {
        let addr = if attempts.is_empty() { taken.clone() } else { format!("127.0.0.1:{}", free_port()) };
        attempts.push(addr.clone());
        async move { Cluster::try_start_nodes(&[addr], 1, &[], common::client()).await }
    })
    .await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(c.addr(0), attempts[1]);
    assert_eq!(c.get_json(0, "/health").await.status, StatusCode::OK);
    // What the first attempt saw: the node's own words for a taken port.
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut node = NodeProc::new(&taken, tmp.path().join("n"), &[]);
    node.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        if let Some(report) = node.exit_report() {
            break report;
        }
        assert!(Instant::now() < deadline, "a node on a taken port kept running");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(common::is_port_taken(&report), "{report}");
    drop(held);
}

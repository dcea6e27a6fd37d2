//! `causalkv probe [URL | PATH]`: a health probe for container HEALTHCHECKs.
//!
//! A `FROM scratch` image has no curl or shell, so the image probes itself
//! with its own binary: one blocking HTTP/1.1 GET over `std::net`, exit 0 on
//! a 2xx answer and 1 otherwise (refused, timed out, any other status), the
//! codes Docker's HEALTHCHECK expects. Hidden from `--help`: it is plumbing.
//!
//! The target is a full `http://IP:PORT/PATH` URL, or just a path (`/health`,
//! `/ready`) on this node at `127.0.0.1:PORT`, where PORT comes from the
//! environment the node was configured by (`PORT`, else the port of
//! `ADDRESS`, else 13800). Hosts must be IP literals or `localhost`: a static
//! binary cannot resolve names through glibc, and a probe needs none.
//!
//! When the environment configures TLS (`TLS_CERT`, `TLS_KEY`, `TLS_CA`), a
//! path target is probed over TLS as a peer would: presenting the node's own
//! certificate and checking the node's against TLS_CA under the host name of
//! `ADDRESS`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// `http://IP:PORT/PATH`, or a path on this node (default `/health`).
    #[arg(default_value = "/health")]
    target: String,
    /// Time limit for connecting and for the answer, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
}

pub fn run(args: &ProbeArgs) -> ExitCode {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    match probe(&args.target, timeout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("causalkv probe {}: {e}", args.target);
            ExitCode::FAILURE
        }
    }
}

/// The port this node listens on, as the node itself would work it out.
fn own_port() -> u16 {
    let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    from_env("PORT")
        .and_then(|p| p.parse().ok())
        .or_else(|| from_env("ADDRESS").and_then(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse().ok())))
        .unwrap_or(13800)
}

/// Splits a target into the socket address to connect to, the Host header
/// and the request path.
fn parse_target(target: &str) -> Result<(SocketAddr, String, String), String> {
    if target.starts_with('/') {
        let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), own_port());
        return Ok((addr, addr.to_string(), target.to_string()));
    }
    let rest = target.strip_prefix("http://").ok_or("the target must be http://IP:PORT/PATH or a /path")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/health"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !authority.ends_with(']') && (!h.contains(':') || h.ends_with(']')) => {
            (h, p.parse::<u16>().map_err(|_| format!("bad port in {authority}"))?)
        }
        _ => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST.into()
    } else {
        host.parse().map_err(|_| format!("{host} is not an IP address (a probe resolves no names)"))?
    };
    Ok((SocketAddr::new(ip, port), authority.to_string(), path.to_string()))
}

/// TLS to this node's own port when the environment configures TLS.
fn own_tls() -> Result<Option<(rustls::ClientConfig, rustls::pki_types::ServerName<'static>)>, String> {
    let path = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    let (Some(cert), Some(key), Some(ca)) = (path("TLS_CERT"), path("TLS_KEY"), path("TLS_CA")) else {
        return Ok(None);
    };
    let settings = causalkv::tls::TlsSettings { cert, key, ca, client_auth_required: false };
    causalkv::tls::install_provider();
    let config = causalkv::tls::load_client(&settings).map_err(|e| e.to_string())?;
    let address = std::env::var("ADDRESS").unwrap_or_default();
    let host = address.rsplit_once(':').map_or("localhost", |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() { "localhost" } else { host };
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| format!("ADDRESS host {host:?}: {e}"))?;
    Ok(Some((config, name)))
}

fn probe(target: &str, timeout: Duration) -> Result<(), String> {
    let (addr, host, path) = parse_target(target)?;
    let deadline = Instant::now() + timeout;
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    stream.set_write_timeout(Some(left())).map_err(|e| e.to_string())?;
    let tls = if target.starts_with('/') { own_tls()? } else { None };
    match tls {
        Some((config, name)) => {
            let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).map_err(|e| e.to_string())?;
            exchange(rustls::StreamOwned::new(conn, stream), &host, &path, left)
        }
        None => exchange(stream, &host, &path, left),
    }
}

/// Something to read and write with a per-read deadline.
trait Timed: Read + Write {
    fn set_read_timeout(&self, t: Duration) -> std::io::Result<()>;
}

impl Timed for TcpStream {
    fn set_read_timeout(&self, t: Duration) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, Some(t))
    }
}

impl Timed for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn set_read_timeout(&self, t: Duration) -> std::io::Result<()> {
        self.sock.set_read_timeout(Some(t))
    }
}

fn exchange(mut stream: impl Timed, host: &str, path: &str, left: impl Fn() -> Duration) -> Result<(), String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: causalkv-probe\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| format!("cannot send the request: {e}"))?;
    // Only the status line matters: read until its end (or 4 KiB).
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        stream.set_read_timeout(left()).map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("no answer: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    let status: u16 = match line.split_whitespace().collect::<Vec<_>>()[..] {
        [version, code, ..] if version.starts_with("HTTP/") => code.parse().map_err(|_| format!("bad status line {line:?}"))?,
        _ => return Err(format!("not an HTTP answer: {line:?}")),
    };
    if (200..300).contains(&status) { Ok(()) } else { Err(format!("status {status}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let (addr, host, path) = parse_target("http://127.0.0.1:13801/ready").unwrap();
        assert_eq!((addr.to_string(), host.as_str(), path.as_str()), ("127.0.0.1:13801".into(), "127.0.0.1:13801", "/ready"));
        let (addr, _, path) = parse_target("http://localhost:9").unwrap();
        assert_eq!((addr.to_string(), path.as_str()), ("127.0.0.1:9".into(), "/health"));
        let (addr, _, _) = parse_target("http://[::1]:13800/health").unwrap();
        assert_eq!(addr.to_string(), "[::1]:13800");
        let (addr, _, path) = parse_target("/ready").unwrap();
        assert_eq!((addr.ip().to_string(), path.as_str()), ("127.0.0.1".into(), "/ready"));
        assert!(parse_target("https://127.0.0.1:1/").is_err());
        assert!(parse_target("http://node1:13800/health").is_err());
    }

    #[test]
    fn answers_decide_the_exit() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for answer in ["HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", "HTTP/1.1 503 Service Unavailable\r\n\r\n"] {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = [0u8; 1024];
                let _ = s.read(&mut req);
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        let url = format!("http://{addr}/health");
        assert_eq!(probe(&url, Duration::from_secs(5)), Ok(()));
        assert_eq!(probe(&url, Duration::from_secs(5)), Err("status 503".to_string()));
        server.join().unwrap();
        assert!(probe(&url, Duration::from_secs(1)).unwrap_err().starts_with("cannot connect"));
    }
}

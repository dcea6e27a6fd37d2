//! Authentication of internal traffic (DESIGN.md "Security").
//!
//! With `CLUSTER_KEY`: every internal request carries
//! `HMAC-SHA256(key, method \n path \n timestamp \n sender \n body)` and its
//! timestamp; a request outside [`WINDOW`] of the receiver's clock, with a
//! wrong MAC, or whose MAC was already seen (a replay) is refused before it
//! is parsed, so it changes nothing. Without a key, internal requests are
//! accepted only from the IP addresses the view's nodes resolve to.
//!
//! [`ViewDns`] resolves the view's names for this check and for the HTTP
//! client, without glibc (a static binary cannot load NSS modules).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::LookupIpStrategy;
use hmac::{Hmac, KeyInit, Mac};
use parking_lot::Mutex;
use sha2::Sha256;

pub const TIMESTAMP_HEADER: &str = "x-causalkv-timestamp";
pub const SIGNATURE_HEADER: &str = "x-causalkv-signature";

/// Largest clock difference accepted between sender and receiver.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Seen MACs kept for replay detection; beyond this the oldest are dropped
/// (they are outside the window long before at any realistic rate).
const MAX_SEEN: usize = 200_000;
/// How often the view's names are resolved again when an unknown IP calls.
const RESOLVE_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing or malformed authentication headers")]
    Missing,
    #[error("timestamp outside the accepted window")]
    Stale,
    #[error("bad signature")]
    BadSignature,
    #[error("replayed request")]
    Replay,
    #[error("sender address {0} is not in the view")]
    UnknownAddress(IpAddr),
}

type HmacSha256 = Hmac<Sha256>;

/// The parts of an incoming internal request that authentication looks at.
pub struct Incoming<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub sender: &'a str,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub body: &'a [u8],
    pub peer_ip: Option<IpAddr>,
}

pub struct Auth {
    key: Option<Vec<u8>>,
    view: Mutex<Vec<String>>,
    dns: ViewDns,
    allowed: Mutex<(HashSet<IpAddr>, Option<Instant>)>,
    seen: Mutex<HashMap<Vec<u8>, u64>>,
    /// Distinguishes requests signed in the same millisecond.
    nonce: std::sync::atomic::AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Auth {
    pub fn new(key: Option<&str>, view: &[String]) -> Self {
        Self {
            key: key.filter(|k| !k.is_empty()).map(|k| k.as_bytes().to_vec()),
            view: Mutex::new(view.to_vec()),
            dns: ViewDns::default(),
            allowed: Mutex::new((HashSet::new(), None)),
            seen: Mutex::new(HashMap::new()),
            nonce: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Adds nodes of a new view to the addresses accepted without a key.
    pub fn extend_view(&self, nodes: &[String]) {
        let mut view = self.view.lock();
        let mut grew = false;
        for n in nodes {
            if !view.contains(n) {
                view.push(n.clone());
                grew = true;
            }
        }
        if grew {
            self.allowed.lock().1 = None;
        }
    }

    /// Every node of the views this node has known or been asked to
    /// change to.
    pub fn nodes(&self) -> Vec<String> {
        self.view.lock().clone()
    }

    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    fn keyed(key: &[u8], method: &str, path: &str, ts: &str, sender: &str, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length.
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        for part in [method.as_bytes(), path.as_bytes(), ts.as_bytes(), sender.as_bytes()] {
            mac.update(part);
            mac.update(b"\n");
        }
        mac.update(body);
        mac
    }

    /// Headers to add to an outgoing internal request (none without a key).
    pub fn sign(&self, method: &str, path: &str, sender: &str, body: &[u8]) -> Vec<(&'static str, String)> {
        let Some(key) = &self.key else { return Vec::new() };
        // `<ms>.<nonce>`: two identical requests in the same millisecond
        // still get different MACs, so neither is taken for a replay.
        let ts = format!("{}.{}", now_ms(), self.nonce.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let mac = Self::keyed(key, method, path, &ts, sender, body).finalize().into_bytes();
        vec![(TIMESTAMP_HEADER, ts), (SIGNATURE_HEADER, hex::encode(mac))]
    }

    /// Checks an incoming internal request.
    pub async fn verify(&self, req: &Incoming<'_>) -> Result<(), AuthError> {
        match &self.key {
            Some(key) => self.verify_mac(key, req),
            None => self.verify_address(req.peer_ip).await,
        }
    }

    fn verify_mac(&self, key: &[u8], req: &Incoming<'_>) -> Result<(), AuthError> {
        let Incoming { method, path, sender, body, .. } = *req;
        let ts_text = req.timestamp.ok_or(AuthError::Missing)?;
        let ts: u64 = ts_text.split('.').next().and_then(|t| t.parse().ok()).ok_or(AuthError::Missing)?;
        let sig = req.signature.and_then(|s| hex::decode(s).ok()).ok_or(AuthError::Missing)?;
        let now = now_ms();
        if now.abs_diff(ts) > WINDOW.as_millis() as u64 {
            return Err(AuthError::Stale);
        }
        Self::keyed(key, method, path, ts_text, sender, body).verify_slice(&sig).map_err(|_| AuthError::BadSignature)?;
        let mut seen = self.seen.lock();
        if seen.len() >= MAX_SEEN {
            let horizon = now.saturating_sub(2 * WINDOW.as_millis() as u64);
            seen.retain(|_, t| *t >= horizon);
            if seen.len() >= MAX_SEEN {
                seen.clear();
            }
        }
        if seen.insert(sig, ts).is_some() {
            return Err(AuthError::Replay);
        }
        Ok(())
    }

    async fn verify_address(&self, peer_ip: Option<IpAddr>) -> Result<(), AuthError> {
        let Some(ip) = peer_ip else { return Ok(()) };
        let ip = canonical(ip);
        let due = {
            let allowed = self.allowed.lock();
            if allowed.0.contains(&ip) {
                return Ok(());
            }
            allowed.1.is_none_or(|t| t.elapsed() > RESOLVE_EVERY)
        };
        if due {
            let mut ips = HashSet::new();
            let view = self.view.lock().clone();
            for node in &view {
                ips.extend(self.dns.lookup(host_of(node)).await.unwrap_or_default().into_iter().map(canonical));
            }
            *self.allowed.lock() = (ips, Some(Instant::now()));
        }
        if self.allowed.lock().0.contains(&ip) { Ok(()) } else { Err(AuthError::UnknownAddress(ip)) }
    }
}

/// DNS for the view's names that works in a static binary: hickory reads
/// `/etc/resolv.conf` and `/etc/hosts` itself (glibc could not load its NSS
/// modules). Also the HTTP client's resolver (`reqwest::dns::Resolve`), so
/// forwarding and gossip resolve the same way.
///
/// Answers are kept at most [`RESOLVE_EVERY`] and failures at most 1 s:
/// reqwest's own hickory resolver keeps them for their full TTL, which for a
/// missing name can be a day (the root zone's SOA), so a peer that looked a
/// container up while it was stopped would not find it again after it
/// restarts. Without a readable system configuration only IP literals
/// resolve: there is deliberately no fallback to a public resolver.
#[derive(Clone, Default)]
pub struct ViewDns {
    resolver: Arc<OnceLock<Option<TokioResolver>>>,
}

impl ViewDns {
    /// Built on first use, inside the runtime that uses it.
    fn resolver(&self) -> Option<&TokioResolver> {
        self.resolver
            .get_or_init(|| {
                let built = TokioResolver::builder_tokio().and_then(|mut builder| {
                    let options = builder.options_mut();
                    options.positive_max_ttl = Some(RESOLVE_EVERY);
                    options.negative_max_ttl = Some(Duration::from_secs(1));
                    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
                    builder.build()
                });
                built.inspect_err(|e| tracing::warn!(error = %e, "no DNS configuration: only IP addresses resolve")).ok()
            })
            .as_ref()
    }

    /// The addresses of a host (a name or an IP literal, no port).
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let resolver = self.resolver().ok_or_else(|| format!("cannot resolve {host}: no DNS configuration"))?;
        let found = resolver.lookup_ip(host).await.map_err(|e| format!("cannot resolve {host}: {e}"))?;
        Ok(found.iter().collect())
    }
}

impl reqwest::dns::Resolve for ViewDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let dns = self.clone();
        Box::pin(async move {
            let ips = dns.lookup(name.as_str()).await?;
            let addrs: reqwest::dns::Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// The host part of a view entry (`host:port`, `[v6]:port`, or a bare host).
fn host_of(entry: &str) -> &str {
    match entry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None if entry.matches(':').count() == 1 => entry.split(':').next().unwrap_or(entry),
        None => entry,
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn signed_requests_verify_once() {
        let auth = Auth::new(Some("secret"), &[]);
        let headers = auth.sign("POST", "/internal/pull", "a:1", b"{}");
        let (ts, sig) = (headers[0].1.clone(), headers[1].1.clone());
        let req = |sender, ts, sig, body| Incoming {
            method: "POST",
            path: "/internal/pull",
            sender,
            timestamp: ts,
            signature: sig,
            body,
            peer_ip: None,
        };
        let check = |body: &'static [u8], sender: &'static str| auth.verify_mac(b"secret", &req(sender, Some(&ts), Some(&sig), body));
        assert_eq!(check(b"{}", "a:1"), Ok(()));
        assert_eq!(check(b"{}", "a:1"), Err(AuthError::Replay));
        assert_eq!(check(b"{ }", "a:1"), Err(AuthError::BadSignature));
        assert_eq!(check(b"{}", "b:1"), Err(AuthError::BadSignature));
        let other = Auth::new(Some("other"), &[]);
        let forged = other.sign("POST", "/internal/pull", "a:1", b"{}");
        assert_eq!(auth.verify_mac(b"secret", &req("a:1", Some(&forged[0].1), Some(&forged[1].1), b"{}")), Err(AuthError::BadSignature));
        assert_eq!(auth.verify_mac(b"secret", &req("a:1", Some("1000"), Some(&sig), b"{}")), Err(AuthError::Stale));
        assert_eq!(auth.verify_mac(b"secret", &req("a:1", None, None, b"")), Err(AuthError::Missing));
    }

    #[tokio::test]
    async fn identical_requests_signed_in_the_same_millisecond_both_pass() {
        let auth = Auth::new(Some("secret"), &[]);
        let a = auth.sign("POST", "/internal/pull", "a:1", b"{}");
        let b = auth.sign("POST", "/internal/pull", "a:1", b"{}");
        assert_ne!(a[1].1, b[1].1, "a nonce makes every signature unique");
        for h in [a, b] {
            let req = Incoming {
                method: "POST",
                path: "/internal/pull",
                sender: "a:1",
                timestamp: Some(&h[0].1),
                signature: Some(&h[1].1),
                body: b"{}",
                peer_ip: None,
            };
            assert_eq!(auth.verify(&req).await, Ok(()));
        }
    }

    #[tokio::test]
    async fn without_a_key_only_view_addresses_pass() {
        let auth = Auth::new(None, &["127.0.0.1:1".to_string()]);
        assert_eq!(auth.verify_address(Some("127.0.0.1".parse().unwrap())).await, Ok(()));
        assert_eq!(auth.verify_address(Some("::ffff:127.0.0.1".parse().unwrap())).await, Ok(()));
        assert!(auth.verify_address(Some("10.9.9.9".parse().unwrap())).await.is_err());
    }

    #[tokio::test]
    async fn view_names_resolve_without_glibc() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!((host_of("node1:13800"), host_of("[::1]:13800"), host_of("10.1.2.3")), ("node1", "::1", "10.1.2.3"));
        let dns = ViewDns::default();
        assert_eq!(dns.lookup("10.1.2.3").await, Ok(vec![ip("10.1.2.3")]));
        assert_eq!(dns.lookup("[::1]").await, Ok(vec![ip("::1")]));
        // From /etc/hosts, which hickory reads itself.
        assert!(dns.lookup("localhost").await.unwrap().iter().any(IpAddr::is_loopback));
        let auth = Auth::new(None, &["localhost:1".to_string()]);
        assert_eq!(auth.verify_address(Some(ip("127.0.0.1"))).await, Ok(()));
        // The HTTP client resolves through it too.
        crate::tls::install_provider();
        let client = reqwest::Client::builder().dns_resolver(Arc::new(ViewDns::default())).build().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let answer = client.get(format!("http://localhost:{port}/health")).send().await.unwrap();
        assert_eq!(answer.text().await.unwrap(), "ok");
    }
}

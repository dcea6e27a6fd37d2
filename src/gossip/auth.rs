//! Authentication of internal traffic (DESIGN.md "Security", docs/SECURITY.md).
//!
//! With `CLUSTER_KEY` every internal request carries, in headers only,
//! `HMAC-SHA256(key, "req" \n method \n path \n timestamp \n sender \n
//! receiver \n sha256(body))` with its timestamp and body digest, so the
//! receiver authenticates a request **before it reads one byte of its body**
//! and only then reads the body and checks it against the digest. A request
//! outside [`WINDOW`] of the receiver's clock, addressed to another node, with
//! a wrong MAC, or whose MAC was already seen (a replay) is refused and
//! changes nothing. Every answer is signed too, bound to the request it
//! answers (`HMAC(key, "resp" \n request MAC \n responder \n status \n
//! body)`), so whoever answers in a peer's place cannot inject records.
//!
//! Without a key nothing can be verified: identity is the sender a request
//! claims, which must be a member of the current view (or of a view being
//! committed) — never the source address, which says nothing on multi-homed
//! hosts. Nodes log at start that anyone who can reach the port can speak
//! for a member.
//!
//! [`ViewDns`] resolves the view's names for the HTTP client, without glibc
//! (a static binary cannot load NSS modules).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::LookupIpStrategy;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

pub const TIMESTAMP_HEADER: &str = "x-causalkv-timestamp";
pub const SIGNATURE_HEADER: &str = "x-causalkv-signature";
/// The node a request is addressed to (as it appears in the view).
pub const TO_HEADER: &str = "x-causalkv-to";
/// Hex SHA-256 of the request body, covered by the signature.
pub const BODY_DIGEST_HEADER: &str = "x-causalkv-body-sha256";

/// Largest clock difference accepted between sender and receiver.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Seen MACs kept for replay detection; beyond this the oldest are dropped
/// (they are outside the window long before at any realistic rate).
const MAX_SEEN: usize = 200_000;
/// Longest time a resolved view name is kept.
const RESOLVE_EVERY: Duration = Duration::from_secs(5);
/// Longest accepted timestamp header (`<ms>.<nonce>`).
const MAX_TIMESTAMP_LEN: usize = 48;

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
    #[error("request addressed to {0}, not to this node")]
    WrongReceiver(String),
    #[error("body does not match its signed digest")]
    BodyMismatch,
    #[error("sender {0:?} is not a member of the view")]
    NotAMember(String),
}

type HmacSha256 = Hmac<Sha256>;

/// The header fields of an incoming internal request that authentication
/// looks at (the body is checked separately, after these passed).
pub struct Incoming<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub sender: &'a str,
    pub receiver: &'a str,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub body_digest: Option<&'a str>,
}

/// What a verified request's answer must be bound to.
#[derive(Clone, Debug, Default)]
pub struct Verified {
    /// The request's MAC (empty without a key).
    pub request_mac: Vec<u8>,
    /// The body digest the request was signed over (None without a key).
    pub body_digest: Option<[u8; 32]>,
}

/// Headers of an outgoing signed request, and what checks its answer.
pub struct Signed {
    pub headers: Vec<(&'static str, String)>,
    pub request_mac: Vec<u8>,
}

pub struct Auth {
    key: Option<Vec<u8>>,
    me: String,
    seen: DashMap<Vec<u8>, u64>,
    /// Distinguishes requests signed in the same millisecond.
    nonce: std::sync::atomic::AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn body_digest(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

impl Auth {
    /// `me` is this node's address as it appears in the view: requests must
    /// be addressed to it.
    pub fn new(key: Option<&str>, me: &str) -> Self {
        Self {
            key: key.filter(|k| !k.is_empty()).map(|k| k.as_bytes().to_vec()),
            me: me.to_owned(),
            seen: DashMap::new(),
            nonce: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
        // HMAC accepts keys of any length.
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                mac.update(b"\n");
            }
            mac.update(part);
        }
        mac
    }

    fn request_mac(key: &[u8], method: &str, path: &str, ts: &str, sender: &str, receiver: &str, digest_hex: &str) -> HmacSha256 {
        let parts: [&[u8]; 7] =
            [b"req", method.as_bytes(), path.as_bytes(), ts.as_bytes(), sender.as_bytes(), receiver.as_bytes(), digest_hex.as_bytes()];
        Self::mac(key, &parts)
    }

    fn response_mac(key: &[u8], request_mac: &[u8], responder: &str, status: u16, body: &[u8]) -> HmacSha256 {
        let status = status.to_string();
        let parts: [&[u8]; 5] = [b"resp", request_mac, responder.as_bytes(), status.as_bytes(), body];
        Self::mac(key, &parts)
    }

    /// Headers for an outgoing internal request from this node to
    /// `receiver` (none without a key, but the receiver's name).
    pub fn sign(&self, method: &str, path: &str, receiver: &str, body: &[u8]) -> Signed {
        let mut headers = vec![(TO_HEADER, receiver.to_owned())];
        let Some(key) = &self.key else { return Signed { headers, request_mac: Vec::new() } };
        // `<ms>.<nonce>`: two identical requests in the same millisecond
        // still get different MACs, so neither is taken for a replay.
        let ts = format!("{}.{}", now_ms(), self.nonce.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let digest = hex::encode(body_digest(body));
        let mac = Self::request_mac(key, method, path, &ts, &self.me, receiver, &digest).finalize().into_bytes().to_vec();
        headers.push((TIMESTAMP_HEADER, ts));
        headers.push((BODY_DIGEST_HEADER, digest));
        headers.push((SIGNATURE_HEADER, hex::encode(&mac)));
        Signed { headers, request_mac: mac }
    }

    /// Checks an incoming request's headers (before its body is read). With
    /// a key: receiver, window, MAC and replay; without one there is nothing
    /// to verify here (membership is checked by the caller).
    pub fn verify_headers(&self, req: &Incoming<'_>) -> Result<Verified, AuthError> {
        let Some(key) = &self.key else { return Ok(Verified::default()) };
        if req.receiver != self.me {
            return Err(AuthError::WrongReceiver(req.receiver.chars().take(100).collect()));
        }
        let ts_text = req.timestamp.filter(|t| t.len() <= MAX_TIMESTAMP_LEN).ok_or(AuthError::Missing)?;
        let ts: u64 = ts_text.split('.').next().and_then(|t| t.parse().ok()).ok_or(AuthError::Missing)?;
        let sig = req.signature.and_then(|s| hex::decode(s).ok()).ok_or(AuthError::Missing)?;
        let digest_hex = req.body_digest.ok_or(AuthError::Missing)?;
        let digest: [u8; 32] = hex::decode(digest_hex).ok().and_then(|d| d.try_into().ok()).ok_or(AuthError::Missing)?;
        let now = now_ms();
        if now.abs_diff(ts) > WINDOW.as_millis() as u64 {
            return Err(AuthError::Stale);
        }
        Self::request_mac(key, req.method, req.path, ts_text, req.sender, req.receiver, digest_hex)
            .verify_slice(&sig)
            .map_err(|_| AuthError::BadSignature)?;
        self.remember(sig.clone(), ts, now)?;
        Ok(Verified { request_mac: sig, body_digest: Some(digest) })
    }

    /// Checks a body read after its headers were verified.
    pub fn verify_body(&self, verified: &Verified, body: &[u8]) -> Result<(), AuthError> {
        match verified.body_digest {
            Some(d) if d != body_digest(body) => Err(AuthError::BodyMismatch),
            _ => Ok(()),
        }
    }

    fn remember(&self, sig: Vec<u8>, ts: u64, now: u64) -> Result<(), AuthError> {
        if self.seen.len() >= MAX_SEEN {
            let horizon = now.saturating_sub(2 * WINDOW.as_millis() as u64);
            self.seen.retain(|_, t| *t >= horizon);
            if self.seen.len() >= MAX_SEEN {
                self.seen.clear();
            }
        }
        // One insert decides: of two copies of a MAC racing in, one wins.
        if self.seen.insert(sig, ts).is_some() {
            return Err(AuthError::Replay);
        }
        Ok(())
    }

    /// The signature header value of this node's answer to a verified
    /// request (None without a key).
    pub fn sign_response(&self, verified: &Verified, status: u16, body: &[u8]) -> Option<String> {
        let key = self.key.as_ref()?;
        Some(hex::encode(Self::response_mac(key, &verified.request_mac, &self.me, status, body).finalize().into_bytes()))
    }

    /// Checks the answer of `responder` to a request this node signed.
    pub fn verify_response(
        &self,
        request_mac: &[u8],
        responder: &str,
        status: u16,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), AuthError> {
        let Some(key) = &self.key else { return Ok(()) };
        let sig = signature.and_then(|s| hex::decode(s).ok()).ok_or(AuthError::Missing)?;
        Self::response_mac(key, request_mac, responder, status, body).verify_slice(&sig).map_err(|_| AuthError::BadSignature)
    }

    /// The frame key of a replication stream opened by the request whose
    /// MAC is `request_mac` (None without a key).
    pub fn stream_key(&self, request_mac: &[u8]) -> Option<[u8; 32]> {
        super::stream::frame::session_key(self.key.as_deref(), request_mac)
    }

    /// Signs a whole message (the Mycelium transport's frames, whose
    /// payload travels with its signature): `(timestamp, signature)`.
    pub fn sign_message(&self, kind: &str, receiver: &str, body: &[u8]) -> Option<(String, String)> {
        let signed = self.sign("POST", kind, receiver, body);
        if signed.request_mac.is_empty() {
            return None;
        }
        let get = |name| signed.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
        Some((get(TIMESTAMP_HEADER)?, get(SIGNATURE_HEADER)?))
    }

    /// Verifies a whole signed message (see [`Auth::sign_message`]).
    pub fn verify_message(
        &self,
        kind: &str,
        sender: &str,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), AuthError> {
        let digest = hex::encode(body_digest(body));
        let incoming =
            Incoming { method: "POST", path: kind, sender, receiver: &self.me, timestamp, signature, body_digest: Some(&digest) };
        self.verify_headers(&incoming).map(|_| ())
    }
}

/// Whether `token` equals `expected`, in time independent of where they
/// differ (both are hashed first, so lengths leak nothing either).
pub fn token_matches(token: &str, expected: &str) -> bool {
    let a = Sha256::digest(token.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// DNS for the view's names that works in a static binary: hickory reads
/// `/etc/resolv.conf` and `/etc/hosts` itself (glibc could not load its NSS
/// modules). Also the HTTP client's resolver (`reqwest::dns::Resolve`), so
/// forwarding and gossip resolve the same way.
///
/// Answers are kept at most `RESOLVE_EVERY` and failures at most 1 s:
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

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming<'a>(signed: &'a Signed, sender: &'a str, receiver: &'a str, path: &'a str) -> Incoming<'a> {
        let get = |name| signed.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
        Incoming {
            method: "POST",
            path,
            sender,
            receiver,
            timestamp: get(TIMESTAMP_HEADER),
            signature: get(SIGNATURE_HEADER),
            body_digest: get(BODY_DIGEST_HEADER),
        }
    }

    #[test]
    fn signed_requests_verify_once_at_their_receiver_only() {
        let a = Auth::new(Some("secret"), "a:1");
        let b = Auth::new(Some("secret"), "b:1");
        let c = Auth::new(Some("secret"), "c:1");
        let signed = a.sign("POST", "/internal/pull", "b:1", b"{}");
        let v = b.verify_headers(&incoming(&signed, "a:1", "b:1", "/internal/pull")).expect("verifies");
        assert_eq!(b.verify_body(&v, b"{}"), Ok(()));
        assert_eq!(b.verify_body(&v, b"{ }"), Err(AuthError::BodyMismatch), "the body is bound to the headers");
        assert_eq!(b.verify_headers(&incoming(&signed, "a:1", "b:1", "/internal/pull")).err(), Some(AuthError::Replay));
        let signed = a.sign("POST", "/internal/pull", "b:1", b"{}");
        assert!(matches!(c.verify_headers(&incoming(&signed, "a:1", "b:1", "/internal/pull")), Err(AuthError::WrongReceiver(_))));
        assert_eq!(b.verify_headers(&incoming(&signed, "x:1", "b:1", "/internal/pull")).err(), Some(AuthError::BadSignature), "sender");
        assert_eq!(b.verify_headers(&incoming(&signed, "a:1", "b:1", "/internal/snapshot")).err(), Some(AuthError::BadSignature), "path");
        let other = Auth::new(Some("other"), "a:1");
        let forged = other.sign("POST", "/internal/pull", "b:1", b"{}");
        assert_eq!(b.verify_headers(&incoming(&forged, "a:1", "b:1", "/internal/pull")).err(), Some(AuthError::BadSignature));
        let mut stale = a.sign("POST", "/internal/pull", "b:1", b"{}");
        stale.headers.iter_mut().filter(|(n, _)| *n == TIMESTAMP_HEADER).for_each(|(_, v)| *v = "1000.0".into());
        assert_eq!(b.verify_headers(&incoming(&stale, "a:1", "b:1", "/internal/pull")).err(), Some(AuthError::Stale));
        let bare =
            Incoming { method: "POST", path: "/", sender: "a:1", receiver: "b:1", timestamp: None, signature: None, body_digest: None };
        assert_eq!(b.verify_headers(&bare).err(), Some(AuthError::Missing));
    }

    #[test]
    fn answers_are_bound_to_their_request_and_responder() {
        let a = Auth::new(Some("secret"), "a:1");
        let b = Auth::new(Some("secret"), "b:1");
        let signed = a.sign("POST", "/internal/pull", "b:1", b"{}");
        let v = b.verify_headers(&incoming(&signed, "a:1", "b:1", "/internal/pull")).unwrap();
        let sig = b.sign_response(&v, 200, b"{\"records\":[]}").unwrap();
        assert_eq!(a.verify_response(&signed.request_mac, "b:1", 200, Some(&sig), b"{\"records\":[]}"), Ok(()));
        assert!(a.verify_response(&signed.request_mac, "b:1", 200, Some(&sig), b"{\"records\":[1]}").is_err(), "body");
        assert!(a.verify_response(&signed.request_mac, "c:1", 200, Some(&sig), b"{\"records\":[]}").is_err(), "responder");
        assert!(a.verify_response(&signed.request_mac, "b:1", 500, Some(&sig), b"{\"records\":[]}").is_err(), "status");
        let later = a.sign("POST", "/internal/pull", "b:1", b"{}");
        assert!(a.verify_response(&later.request_mac, "b:1", 200, Some(&sig), b"{\"records\":[]}").is_err(), "an old answer replayed");
        assert_eq!(a.verify_response(&signed.request_mac, "b:1", 200, None, b"{}"), Err(AuthError::Missing));
    }

    #[test]
    fn identical_requests_signed_in_the_same_millisecond_both_pass() {
        let a = Auth::new(Some("secret"), "a:1");
        let b = Auth::new(Some("secret"), "b:1");
        let x = a.sign("POST", "/internal/pull", "b:1", b"{}");
        let y = a.sign("POST", "/internal/pull", "b:1", b"{}");
        assert_ne!(x.request_mac, y.request_mac, "a nonce makes every signature unique");
        for s in [x, y] {
            assert!(b.verify_headers(&incoming(&s, "a:1", "b:1", "/internal/pull")).is_ok());
        }
    }

    #[test]
    fn messages_verify_at_their_receiver() {
        let a = Auth::new(Some("secret"), "a:1");
        let b = Auth::new(Some("secret"), "b:1");
        let (ts, sig) = a.sign_message("mycelium", "b:1", b"[]").unwrap();
        assert_eq!(b.verify_message("mycelium", "a:1", Some(&ts), Some(&sig), b"[]"), Ok(()));
        assert_eq!(b.verify_message("mycelium", "a:1", Some(&ts), Some(&sig), b"[]"), Err(AuthError::Replay));
        let (ts, sig) = a.sign_message("mycelium", "c:1", b"[]").unwrap();
        assert_eq!(b.verify_message("mycelium", "a:1", Some(&ts), Some(&sig), b"[]"), Err(AuthError::BadSignature), "for another node");
        assert!(Auth::new(None, "a:1").sign_message("mycelium", "b:1", b"[]").is_none());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cre", "s3cret"));
        assert!(!token_matches("", "s3cret"));
    }

    #[tokio::test]
    async fn view_names_resolve_without_glibc() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let dns = ViewDns::default();
        assert_eq!(dns.lookup("10.1.2.3").await, Ok(vec![ip("10.1.2.3")]));
        assert_eq!(dns.lookup("[::1]").await, Ok(vec![ip("::1")]));
        // From /etc/hosts, which hickory reads itself.
        assert!(dns.lookup("localhost").await.unwrap().iter().any(IpAddr::is_loopback));
        // The HTTP client resolves through it too.
        crate::tls::install_provider();
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

//! TLS with rustls (ring provider): the node's certificate and key
//! (`TLS_CERT`, `TLS_KEY`), the cluster's CA (`TLS_CA`) and whether callers
//! must present a certificate (`TLS_CLIENT_AUTH=required`).
//!
//! Invariants: with TLS on, the listener speaks nothing but TLS (public and
//! internal endpoints alike), every URL this node builds to reach a peer uses
//! [`scheme`] (`https`), peers' certificates are verified against `TLS_CA`
//! only (never the system's roots), and the node presents its own certificate
//! to peers so that mutual TLS holds between nodes too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Set once a node process turns TLS on: one process is one node.
static HTTPS: AtomicBool = AtomicBool::new(false);

/// The scheme of every URL to a peer: `https` once TLS is on.
pub fn scheme() -> &'static str {
    if HTTPS.load(Ordering::Relaxed) { "https" } else { "http" }
}

/// Makes ring the process's rustls provider. reqwest is built without a
/// provider of its own (its default, aws-lc-rs, needs cmake and C) and
/// panics when it builds a client before one is installed, TLS or not:
/// call this before building any `reqwest::Client` (`Node::start` does).
pub fn install_provider() {
    // Err: already installed (by an earlier call).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// TLS_CERT, TLS_KEY, TLS_CA and TLS_CLIENT_AUTH, validated.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// `TLS_CLIENT_AUTH=required`: callers without a certificate signed by
    /// TLS_CA are refused during the handshake.
    pub client_auth_required: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {detail}")]
    Pem { what: &'static str, path: String, detail: String },
    #[error("{what} {path} holds no certificate")]
    Empty { what: &'static str, path: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The server's acceptor and the configuration of the node's own client.
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub client: ClientConfig,
}

/// Loads the PEM files and builds both sides; from here on [`scheme`] is
/// `https`.
pub fn load(settings: &TlsSettings) -> Result<Tls, TlsError> {
    let (certs, key, roots) = read_files(settings)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = if settings.client_auth_required {
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build().map_err(|e| TlsError::Config(e.to_string()))?
    } else {
        WebPkiClientVerifier::no_client_auth()
    };
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(config_error)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = client_config(certs, key, roots)?;
    HTTPS.store(true, Ordering::Relaxed);
    Ok(Tls { acceptor: TlsAcceptor::from(Arc::new(server)), client })
}

/// The client side alone (the container health probe speaks to its own
/// node as a peer would).
pub fn load_client(settings: &TlsSettings) -> Result<ClientConfig, TlsError> {
    let (certs, key, roots) = read_files(settings)?;
    client_config(certs, key, roots)
}

type Files = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, Arc<RootCertStore>);

fn read_files(settings: &TlsSettings) -> Result<Files, TlsError> {
    let certs = certificates("TLS_CERT", &settings.cert)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key).map_err(|e| pem_error("TLS_KEY", &settings.key, e))?;
    let mut roots = RootCertStore::empty();
    for ca in certificates("TLS_CA", &settings.ca)? {
        roots.add(ca).map_err(|e| TlsError::Config(format!("TLS_CA {}: {e}", settings.ca.display())))?;
    }
    Ok((certs, key, Arc::new(roots)))
}

fn client_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
) -> Result<ClientConfig, TlsError> {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(config_error)
}

/// The client configuration of a node without TLS settings: it speaks
/// plain HTTP only, so it trusts no certificate at all. Handing it to
/// reqwest keeps reqwest from loading the platform's root certificates,
/// which a scratch image does not have (building the client fails there).
pub fn plain_client_config() -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth())
}

fn config_error(e: rustls::Error) -> TlsError {
    TlsError::Config(e.to_string())
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, path: path.display().to_string() });
    }
    Ok(certs)
}

fn pem_error(what: &'static str, path: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    TlsError::Pem { what, path: path.display().to_string(), detail: e.to_string() }
}

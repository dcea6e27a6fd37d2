//! TLS (issue 11): with TLS_CERT/TLS_KEY/TLS_CA a node serves HTTPS only and
//! replicates to its peers over HTTPS; with TLS_CLIENT_AUTH=required every
//! caller needs a certificate signed by TLS_CA. Certificates are made here.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, wait_until};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

/// A CA and the PEM files made with it, in a temp dir.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA certificate");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca.pem");
        Pki { ca, dir }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for `names` (server and client use), as (cert, key) paths.
    fn issue(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::CommonName, file);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let (cert_path, key_path) = (self.dir.path().join(format!("{file}.pem")), self.dir.path().join(format!("{file}.key")));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }

    fn node_env(&self, client_auth: &str) -> Vec<(String, String)> {
        let (cert, key) = self.issue("node", &["127.0.0.1", "localhost"]);
        vec![
            ("TLS_CERT".into(), cert.display().to_string()),
            ("TLS_KEY".into(), key.display().to_string()),
            ("TLS_CA".into(), self.ca_path().display().to_string()),
            ("TLS_CLIENT_AUTH".into(), client_auth.into()),
        ]
    }
}

/// An HTTPS client trusting `ca`, presenting `identity` (cert, key) if given.
fn https_client(ca: &Path, identity: Option<(PathBuf, PathBuf)>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca file") {
        roots.add(c.expect("ca pem")).expect("add ca");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert).expect("cert").collect::<Result<Vec<_>, _>>().expect("cert pem");
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).expect("key")).expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder().tls_backend_preconfigured(config).timeout(Duration::from_secs(30)).build().expect("client")
}

fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

// Three nodes, one shard of three replicas, mutual TLS: a write at one node is
// replicated to the others over HTTPS (each node presents its certificate to
// its peers), and the client reads it back everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutual_tls_cluster_replicates() {
    let pki = Pki::new("cluster CA");
    let env = pki.node_env("required");
    let client = https_client(&pki.ca_path(), Some(pki.issue("client", &["client"])));
    let c = Cluster::start_with_client(3, 3, 3, &refs(&env), client).await;
    let empty = json!({});
    let a = c.put(0, "k", json!("over tls"), &empty).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    for i in 1..3 {
        let seen = wait_until(Duration::from_secs(10), || async {
            let a = c.get(i, "k", &json!({})).await;
            a.status == StatusCode::OK && a.value() == Some(&json!("over tls"))
        })
        .await;
        assert!(seen, "node {i} never received the write over TLS");
    }
    assert_eq!(c.get_json(2, "/kv-store/key-count").await.body["key-count"], json!(1));
}

// A TLS node speaks nothing but TLS: plain HTTP gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_tls_node_fails() {
    let pki = Pki::new("cluster CA");
    let env = pki.node_env("none");
    let c = Cluster::start_with_client(1, 1, 1, &refs(&env), https_client(&pki.ca_path(), None)).await;
    assert_eq!(c.get_json(0, "/health").await.status, StatusCode::OK, "HTTPS without a client certificate is fine");
    let plain = common::client().get(format!("http://{}/health", c.addr(0))).send().await;
    assert!(plain.is_err(), "plain HTTP answered: {:?}", plain.map(|r| r.status()));
}

// TLS_CLIENT_AUTH=required: no certificate, or one from another CA, is
// refused in the handshake; nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_must_chain_to_tls_ca() {
    let pki = Pki::new("cluster CA");
    let env = pki.node_env("required");
    let c = Cluster::start_with_client(1, 1, 1, &refs(&env), https_client(&pki.ca_path(), Some(pki.issue("client", &["client"])))).await;
    let url = c.nodes[0].url("/kv-store/keys/x");
    let body = json!({"value": "intruder", "causal-context": {}});

    let anonymous = https_client(&pki.ca_path(), None).put(&url).json(&body).send().await;
    assert!(anonymous.is_err(), "no client certificate: {:?}", anonymous.map(|r| r.status()));

    let other = Pki::new("another CA");
    let stranger = https_client(&pki.ca_path(), Some(other.issue("stranger", &["stranger"]))).put(&url).json(&body).send().await;
    assert!(stranger.is_err(), "a certificate of another CA: {:?}", stranger.map(|r| r.status()));

    let a = c.get(0, "x", &json!({})).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "a refused caller wrote: {}", a.body);
    assert_eq!(c.get_json(0, "/kv-store/key-count").await.body["key-count"], json!(0));
}

// The Rust client and the CLI against a mutual-TLS cluster with an admin
// token: key requests work with the CA and a client certificate; a view
// change needs the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_and_cli_speak_mutual_tls_and_send_the_admin_token() {
    use causalkv::client::{Client, ClientTls, Error};
    let pki = Pki::new("cluster CA");
    let mut env = pki.node_env("required");
    env.push(("ADMIN_TOKEN".into(), "let-me-in".into()));
    let (cert, key) = pki.issue("client", &["client"]);
    let http = https_client(&pki.ca_path(), Some((cert.clone(), key.clone())));
    let c = Cluster::start_with_client(2, 2, 2, &refs(&env), http).await;
    let tls = ClientTls { ca: pki.ca_path(), identity: Some((cert.clone(), key.clone())) };
    let url = format!("https://{}", c.addr(0));
    let client = Client::builder([url.as_str()]).tls(tls.clone()).build().expect("client");
    let session = client.session();
    assert!(session.put("t", &json!({"over": "tls"})).await.expect("put").created);
    assert_eq!(session.get::<serde_json::Value>("t").await.expect("get"), Some(json!({"over": "tls"})));
    let view: Vec<String> = (0..2).map(|i| c.addr(i).to_string()).collect();
    match client.view_change(&view, Some(1)).await {
        Err(Error::Unauthorized { status: 401, .. }) => {}
        other => panic!("a view change without the token: {other:?}"),
    }
    let admin = Client::builder([url.as_str()]).tls(tls).admin_token("let-me-in").build().expect("client");
    admin.view_change(&view, Some(1)).await.expect("a view change with the token");
    assert_eq!(admin.shards().await.expect("shards").len(), 2);

    let out = std::process::Command::new(common::BIN)
        .args(["get", "t", "--nodes", &url, "--tls-ca"])
        .arg(pki.ca_path())
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .output()
        .expect("run the CLI");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"over":"tls"}"#);
    let no_cert = std::process::Command::new(common::BIN)
        .args(["get", "t", "--retry-for", "0.2", "--nodes", &url, "--tls-ca"])
        .arg(pki.ca_path())
        .output()
        .expect("run the CLI");
    assert_eq!(no_cert.status.code(), Some(3), "without a client certificate no node answers");
}

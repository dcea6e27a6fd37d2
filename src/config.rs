//! Node configuration: flags that also read the environment variables of
//! API.md, validated into a [`Config`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::gossip::mycelium::{DEFAULT_API, DEFAULT_TOPIC, MyceliumConfig};
use crate::shard::{View, normalise_address};
use crate::store::DurabilityMode;
use crate::tls::TlsSettings;

/// Longest accepted `CAUSAL_WAIT_MS`: a request must never hang for minutes.
const MAX_CAUSAL_WAIT_MS: u64 = 60_000;
/// Largest accepted `MAX_VALUE_BYTES` (bodies are held in memory).
const MAX_VALUE_LIMIT: usize = 64 * 1024 * 1024;
/// Largest accepted `MAX_CLOCK_SKEW_MS` (one day): beyond, the guard would
/// let a forged timestamp win last-writer-wins for that long.
const MAX_CLOCK_SKEW_LIMIT_MS: u64 = 24 * 3600 * 1000;
/// Longest accepted `HEADER_READ_TIMEOUT_MS` / `IDLE_TIMEOUT_MS`.
const MAX_CONNECTION_TIMEOUT_MS: u64 = 3_600_000;

#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// This node's host:port as it appears in VIEW.
    #[arg(long, env = "ADDRESS", default_value = "127.0.0.1:13800")]
    pub address: String,
    /// TCP port to listen on (default: the port of ADDRESS).
    #[arg(long, env = "PORT")]
    pub port: Option<u16>,
    /// IP (or ip:port) to listen on. Default: loopback when ADDRESS is a
    /// loopback address or `localhost`, else every interface.
    #[arg(long, env = "BIND_ADDR")]
    pub bind_addr: Option<String>,
    /// Most client connections served at once; more are refused at once
    /// (default: 4096, lowered to fit the open-file limit).
    #[arg(long, env = "MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Longest time a client may take to send a request's headers, from its
    /// first byte.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// Longest time a connection may stay open waiting for a request.
    #[arg(long, env = "IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// This node's certificate chain (PEM): with TLS_KEY, the node serves
    /// HTTPS only and reaches peers over HTTPS.
    #[arg(long, env = "TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of TLS_CERT (PEM).
    #[arg(long, env = "TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The CA certificates (PEM) that peers' and clients' certificates must
    /// chain to.
    #[arg(long, env = "TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// `required`: every caller must present a certificate signed by TLS_CA
    /// (mutual TLS); `none`: no client certificate is asked for.
    #[arg(long, env = "TLS_CLIENT_AUTH", default_value = "none")]
    pub tls_client_auth: String,
    /// Serve on this inherited, already listening socket (a file descriptor
    /// the parent bound) instead of binding: a test harness or a socket
    /// manager holds the port from the start, so nothing can take it.
    #[arg(long, env = "LISTEN_FD")]
    pub listen_fd: Option<i32>,
    /// Once listening, write the address the node listens on (`ip:port`) to
    /// this file: with PORT=0 it is the port the system chose.
    #[arg(long, env = "PORT_FILE")]
    pub port_file: Option<PathBuf>,
    /// Comma-separated node addresses, in order (default: ADDRESS alone).
    #[arg(long, env = "VIEW")]
    pub view: Option<String>,
    /// Replicas per shard.
    #[arg(long, env = "REPL_FACTOR", default_value_t = 1)]
    pub repl_factor: usize,
    /// sled directory (default: `./data/<address>`).
    #[arg(long, env = "DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// How long a read or write waits for its causal dependencies.
    #[arg(long, env = "CAUSAL_WAIT_MS", default_value_t = 1000)]
    pub causal_wait_ms: u64,
    /// Longest key, in characters.
    #[arg(long, env = "MAX_KEY_LENGTH", default_value_t = 50)]
    pub max_key_length: usize,
    /// Largest value, in bytes of its JSON text.
    #[arg(long, env = "MAX_VALUE_BYTES", default_value_t = 1024 * 1024)]
    pub max_value_bytes: usize,
    /// Remote records whose HLC is more than this far (ms) ahead of this
    /// node's clock are refused (logged, counted in
    /// causalkv_clock_skew_rejected_total).
    #[arg(long, env = "MAX_CLOCK_SKEW_MS", default_value_t = crate::store::DEFAULT_MAX_CLOCK_SKEW.as_millis() as u64)]
    pub max_clock_skew_ms: u64,
    /// fsync (acknowledge after a group-commit flush) or async.
    #[arg(long, env = "DURABILITY", default_value = "fsync")]
    pub durability: String,
    /// Shared secret authenticating internal traffic (HMAC-SHA256). Prefer
    /// CLUSTER_KEY_FILE: a flag's value is visible to every user in `ps`.
    #[arg(long, env = "CLUSTER_KEY", hide_env_values = true)]
    pub cluster_key: Option<String>,
    /// File holding CLUSTER_KEY (surrounding whitespace ignored).
    #[arg(long, env = "CLUSTER_KEY_FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// Bearer token required by view-change and join (default: CLUSTER_KEY).
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding ADMIN_TOKEN (surrounding whitespace ignored).
    #[arg(long, env = "ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Enables the test-only fault switches (/internal/faults).
    #[arg(long, env = "CAUSALKV_FAULTS", action = clap::ArgAction::SetTrue, value_parser = clap::builder::FalseyValueParser::new())]
    pub faults: bool,
    /// How replicas gossip: `http` (the `/internal` endpoints) or `mycelium`
    /// (the local Mycelium daemon's message API).
    #[arg(long, env = "GOSSIP_TRANSPORT", default_value = "http")]
    pub gossip_transport: String,
    /// The local Mycelium daemon's API (with GOSSIP_TRANSPORT=mycelium).
    #[arg(long, env = "MYCELIUM_API", default_value = DEFAULT_API)]
    pub mycelium_api: String,
    /// The cluster's Mycelium message topic (one per cluster).
    #[arg(long, env = "MYCELIUM_TOPIC", default_value = DEFAULT_TOPIC)]
    pub mycelium_topic: String,
    /// `node=overlay-ip-or-public-key,...`: the Mycelium identity of each
    /// VIEW node whose host is not an overlay address.
    #[arg(long, env = "MYCELIUM_PEERS")]
    pub mycelium_peers: Option<String>,
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Canonical form of ADDRESS (as it appears in the view).
    pub address: String,
    pub port: u16,
    /// IP to listen on (BIND_ADDR, else loopback for a loopback ADDRESS,
    /// else every interface).
    pub bind_ip: IpAddr,
    pub view: View,
    pub data_dir: PathBuf,
    pub causal_wait: Duration,
    pub max_key_length: usize,
    pub max_value_bytes: usize,
    pub max_clock_skew: Duration,
    pub durability: DurabilityMode,
    pub faults: bool,
    pub cluster_key: Option<String>,
    /// Bearer token of the admin endpoints, when set (see [`Config::admin_token`]).
    pub admin_token_setting: Option<String>,
    /// Set when gossip goes over Mycelium (`GOSSIP_TRANSPORT=mycelium`).
    pub mycelium: Option<MyceliumConfig>,
    /// Connection limits of the HTTP server.
    pub server: ServerLimits,
    /// Set when TLS_CERT and TLS_KEY are.
    pub tls: Option<TlsSettings>,
    /// See [`NodeArgs::listen_fd`].
    pub listen_fd: Option<i32>,
    /// See [`NodeArgs::port_file`].
    pub port_file: Option<PathBuf>,
}

/// Connection limits of the HTTP server (`crate::server`).
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// MAX_CONNECTIONS as given; the server lowers the default to fit the
    /// open-file limit.
    pub max_connections: Option<usize>,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Config {
    pub fn from_args(args: &NodeArgs) -> Result<Config, String> {
        let address = normalise_address(&args.address).map_err(|e| format!("ADDRESS: {e}"))?;
        let default_port = address.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(13800);
        let mut port = args.port.unwrap_or(default_port);
        let bind_ip = match args.bind_addr.as_deref().map(str::trim).filter(|b| !b.is_empty()) {
            Some(text) => {
                let (ip, bind_port) = parse_bind_addr(text)?;
                port = bind_port.unwrap_or(port);
                ip
            }
            None => default_bind_ip(&address),
        };
        let view_text = args.view.clone().unwrap_or_else(|| address.clone());
        if port == 0 && (args.listen_fd.is_some() || normalise_list(&view_text) != [address.clone()]) {
            // The port is the node's name in the view: the system may choose
            // it only for a node that is its whole view.
            return Err("PORT must be between 1 and 65535 (0, a port the system chooses, only for a node whose VIEW is itself)".into());
        }
        if args.max_connections == Some(0) {
            return Err("MAX_CONNECTIONS must be at least 1".into());
        }
        for (name, ms) in [("HEADER_READ_TIMEOUT_MS", args.header_read_timeout_ms), ("IDLE_TIMEOUT_MS", args.idle_timeout_ms)] {
            if ms == 0 || ms > MAX_CONNECTION_TIMEOUT_MS {
                return Err(format!("{name} must be between 1 and {MAX_CONNECTION_TIMEOUT_MS}"));
            }
        }
        let view = View::parse(&view_text, args.repl_factor, 0).map_err(|e| format!("VIEW/REPL_FACTOR: {e}"))?;
        if args.causal_wait_ms > MAX_CAUSAL_WAIT_MS {
            return Err(format!("CAUSAL_WAIT_MS must be at most {MAX_CAUSAL_WAIT_MS}"));
        }
        if args.max_key_length == 0 {
            return Err("MAX_KEY_LENGTH must be at least 1".into());
        }
        if args.max_value_bytes == 0 || args.max_value_bytes > MAX_VALUE_LIMIT {
            return Err(format!("MAX_VALUE_BYTES must be between 1 and {MAX_VALUE_LIMIT}"));
        }
        if args.max_clock_skew_ms == 0 || args.max_clock_skew_ms > MAX_CLOCK_SKEW_LIMIT_MS {
            return Err(format!("MAX_CLOCK_SKEW_MS must be between 1 and {MAX_CLOCK_SKEW_LIMIT_MS}"));
        }
        let durability = args.durability.parse::<DurabilityMode>()?;
        let mycelium = match args.gossip_transport.trim().to_ascii_lowercase().as_str() {
            "http" => None,
            "mycelium" => {
                Some(MyceliumConfig::parse(&args.mycelium_api, &args.mycelium_topic, args.mycelium_peers.as_deref(), &view.nodes)?)
            }
            other => return Err(format!("GOSSIP_TRANSPORT must be http or mycelium, not {other:?}")),
        };
        let tls = tls_settings(args)?;
        let data_dir = args.data_dir.clone().unwrap_or_else(|| PathBuf::from("data").join(address.replace([':', '[', ']'], "_")));
        Ok(Config {
            address,
            port,
            bind_ip,
            view,
            data_dir,
            causal_wait: Duration::from_millis(args.causal_wait_ms),
            max_key_length: args.max_key_length,
            max_value_bytes: args.max_value_bytes,
            max_clock_skew: Duration::from_millis(args.max_clock_skew_ms),
            durability,
            faults: args.faults,
            cluster_key: secret("CLUSTER_KEY", args.cluster_key.as_deref(), args.cluster_key_file.as_deref())?,
            admin_token_setting: secret("ADMIN_TOKEN", args.admin_token.as_deref(), args.admin_token_file.as_deref())?,
            mycelium,
            server: ServerLimits {
                max_connections: args.max_connections,
                header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
                idle_timeout: Duration::from_millis(args.idle_timeout_ms),
            },
            tls,
            listen_fd: args.listen_fd,
            port_file: args.port_file.clone(),
        })
    }

    /// The bearer token view-change and join require: ADMIN_TOKEN, else
    /// CLUSTER_KEY; None leaves them open (local development).
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token_setting.as_deref().or(self.cluster_key.as_deref())
    }

    /// This configuration once the system chose the port (PORT=0): the
    /// address and the one-node view name the real port.
    pub fn with_port(mut self, port: u16) -> Result<Config, String> {
        if self.port == port {
            return Ok(self);
        }
        let host = self.address.rsplit_once(':').map_or(self.address.as_str(), |(h, _)| h);
        self.address = format!("{host}:{port}");
        self.port = port;
        self.view = View::parse(&self.address, self.view.repl_factor, self.view.epoch).map_err(|e| e.to_string())?;
        Ok(self)
    }

    /// Address to listen on: `bind_ip` and PORT.
    pub fn bind_addr(&self) -> SocketAddr {
        (self.bind_ip, self.port).into()
    }
}

fn tls_settings(args: &NodeArgs) -> Result<Option<TlsSettings>, String> {
    let client_auth_required = match args.tls_client_auth.trim().to_ascii_lowercase().as_str() {
        "none" | "" => false,
        "required" => true,
        other => return Err(format!("TLS_CLIENT_AUTH must be none or required, not {other:?}")),
    };
    match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        (None, None, _) if client_auth_required => Err("TLS_CLIENT_AUTH=required needs TLS_CERT, TLS_KEY and TLS_CA".into()),
        (None, None, _) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => {
            Ok(Some(TlsSettings { cert: cert.clone(), key: key.clone(), ca: ca.clone(), client_auth_required }))
        }
        (Some(_), Some(_), None) => Err("TLS_CA is needed with TLS_CERT and TLS_KEY (peers are verified against it)".into()),
        _ => Err("TLS_CERT and TLS_KEY go together".into()),
    }
}

/// `BIND_ADDR`: an IP, or ip:port (IPv6 in brackets with a port).
fn parse_bind_addr(text: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(ip) = text.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Ok((ip, None));
    }
    text.parse::<SocketAddr>()
        .map(|a| (a.ip(), Some(a.port())))
        .map_err(|_| format!("BIND_ADDR must be an IP address or ip:port, not {text:?}"))
}

/// A node addressed at loopback is meant for this machine only: listening
/// on every interface would open it (and its admin endpoints) to the network.
fn default_bind_ip(address: &str) -> IpAddr {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => ip,
        Ok(IpAddr::V6(_)) => Ipv6Addr::UNSPECIFIED.into(),
        Ok(IpAddr::V4(_)) => Ipv4Addr::UNSPECIFIED.into(),
        Err(_) if host.eq_ignore_ascii_case("localhost") => Ipv4Addr::LOCALHOST.into(),
        Err(_) => Ipv4Addr::UNSPECIFIED.into(),
    }
}

/// A secret given directly or in a file (not both); empty means unset.
fn secret(name: &str, value: Option<&str>, file: Option<&std::path::Path>) -> Result<Option<String>, String> {
    let from_file = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{name}_FILE: cannot read {}: {e}", path.display()))?;
            Some(text.trim().to_owned())
        }
        None => None,
    };
    let value = value.map(str::to_owned).filter(|v| !v.is_empty());
    match (value, from_file) {
        (Some(_), Some(_)) => Err(format!("set {name} or {name}_FILE, not both")),
        (Some(v), None) => Ok(Some(v)),
        (None, Some(v)) if v.is_empty() => Err(format!("{name}_FILE: the file is empty")),
        (None, f) => Ok(f),
    }
}

/// The nodes of a VIEW text, normalised (for comparisons).
fn normalise_list(view: &str) -> Vec<String> {
    view.split(',').map(str::trim).filter(|n| !n.is_empty()).map(|n| normalise_address(n).unwrap_or_else(|_| n.to_owned())).collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        node: NodeArgs,
    }

    fn config(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("causalkv").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        Config::from_args(&cli.node)
    }

    #[test]
    fn ipv6_view_addresses_parse_bind_and_print() {
        let c =
            config(&["--address", "[4a0:0:0::1]:13800", "--view", "[4a0::1]:13800, [4A0::2]:13800,[4a0::3]:13801", "--repl-factor", "1"])
                .unwrap();
        assert_eq!(c.address, "[4a0::1]:13800", "printed compressed, in brackets");
        assert_eq!(c.view.nodes, vec!["[4a0::1]:13800", "[4a0::2]:13800", "[4a0::3]:13801"]);
        assert_eq!(c.bind_addr(), "[::]:13800".parse().unwrap(), "IPv6 nodes bind every IPv6 interface");
        assert_eq!(c.data_dir, PathBuf::from("data").join("_4a0__1__13800"));
        let map = crate::shard::ShardMap::new(c.view.clone(), &c.address);
        assert_eq!(map.my_shard(), Some(1));
        assert_eq!(map.replicas(2), ["[4a0::2]:13800"]);
        // The canonical text parses back to itself (VIEW round trip).
        let again = View::parse(&c.view.nodes.join(","), 1, 0).unwrap();
        assert_eq!(again.nodes, c.view.nodes);
        assert!(config(&["--address", "4a0::1:13800"]).is_err(), "IPv6 without brackets is ambiguous");
        assert!(config(&["--address", "[4a0::1]"]).is_err(), "a port is required");
        let v4 = config(&["--address", "10.1.2.3:13801"]).unwrap();
        assert_eq!(v4.bind_addr(), "0.0.0.0:13801".parse().unwrap());
    }

    #[test]
    fn secrets_come_from_the_environment_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "  s3cret\n").unwrap();
        let key_arg = key.to_str().unwrap();
        let c = config(&["--cluster-key-file", key_arg]).unwrap();
        assert_eq!(c.cluster_key.as_deref(), Some("s3cret"));
        assert_eq!(c.admin_token(), Some("s3cret"), "the cluster key is the admin token by default");
        let c = config(&["--cluster-key-file", key_arg, "--admin-token", "adm"]).unwrap();
        assert_eq!((c.cluster_key.as_deref(), c.admin_token()), (Some("s3cret"), Some("adm")));
        let c = config(&["--admin-token-file", key_arg]).unwrap();
        assert_eq!((c.cluster_key.as_deref(), c.admin_token()), (None, Some("s3cret")));
        assert_eq!(config(&[]).unwrap().admin_token(), None, "open without either");
        assert!(config(&["--cluster-key", "a", "--cluster-key-file", key_arg]).unwrap_err().contains("not both"));
        let err = config(&["--admin-token-file", "/nonexistent/token"]).unwrap_err();
        assert!(err.starts_with("ADMIN_TOKEN_FILE"), "{err}");
        std::fs::write(&key, "\n").unwrap();
        assert!(config(&["--cluster-key-file", key_arg]).unwrap_err().contains("empty"));
    }

    #[test]
    fn max_clock_skew_setting() {
        assert_eq!(config(&[]).unwrap().max_clock_skew, Duration::from_secs(60));
        assert_eq!(config(&["--max-clock-skew-ms", "5000"]).unwrap().max_clock_skew, Duration::from_secs(5));
        for bad in ["0", "86400001", "-1", "soon"] {
            assert!(config(&["--max-clock-skew-ms", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_addresses_listen_on_loopback_unless_bind_addr_says_otherwise() {
        let bind = |args: &[&str]| config(args).unwrap().bind_addr().to_string();
        assert_eq!(bind(&["--address", "127.0.0.1:13801"]), "127.0.0.1:13801");
        assert_eq!(bind(&["--address", "127.3.0.9:13801"]), "127.3.0.9:13801");
        assert_eq!(bind(&["--address", "[::1]:13801"]), "[::1]:13801");
        assert_eq!(bind(&["--address", "localhost:13801"]), "127.0.0.1:13801");
        assert_eq!(bind(&["--address", "node1:13800"]), "0.0.0.0:13800", "a DNS name: every interface");
        assert_eq!(bind(&["--address", "127.0.0.1:13801", "--bind-addr", "0.0.0.0"]), "0.0.0.0:13801");
        assert_eq!(bind(&["--address", "127.0.0.1:13801", "--bind-addr", "10.0.0.5:9000"]), "10.0.0.5:9000");
        assert_eq!(bind(&["--address", "127.0.0.1:13801", "--bind-addr", "::"]), "[::]:13801");
        assert_eq!(bind(&["--address", "127.0.0.1:13801", "--bind-addr", "[::1]:9000"]), "[::1]:9000");
        assert_eq!(bind(&["--address", "127.0.0.1:13801", "--port", "9001"]), "127.0.0.1:9001");
        let err = config(&["--bind-addr", "example.org"]).unwrap_err();
        assert!(err.starts_with("BIND_ADDR"), "{err}");
    }

    #[test]
    fn tls_settings_go_together() {
        assert!(config(&[]).unwrap().tls.is_none());
        let t = config(&["--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-ca", "ca.pem", "--tls-client-auth", "required"]).unwrap();
        let t = t.tls.unwrap();
        assert!(t.client_auth_required);
        assert_eq!(t.ca, PathBuf::from("ca.pem"));
        assert!(config(&["--tls-cert", "c.pem"]).unwrap_err().contains("go together"));
        assert!(config(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap_err().starts_with("TLS_CA"));
        assert!(config(&["--tls-client-auth", "required"]).unwrap_err().starts_with("TLS_CLIENT_AUTH"));
        assert!(config(&["--tls-client-auth", "maybe"]).unwrap_err().starts_with("TLS_CLIENT_AUTH"));
    }

    #[test]
    fn connection_limits() {
        let c = config(&[]).unwrap();
        assert_eq!(c.server.max_connections, None);
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
        assert!(config(&["--max-connections", "0"]).unwrap_err().starts_with("MAX_CONNECTIONS"));
        assert!(config(&["--header-read-timeout-ms", "0"]).unwrap_err().starts_with("HEADER_READ_TIMEOUT_MS"));
        assert!(config(&["--idle-timeout-ms", "3600001"]).unwrap_err().starts_with("IDLE_TIMEOUT_MS"));
    }

    #[test]
    fn gossip_transport_settings() {
        assert!(config(&[]).unwrap().mycelium.is_none(), "http by default");
        let c = config(&["--gossip-transport", "mycelium", "--address", "[4a0::1]:1", "--view", "[4a0::1]:1,[4a0::2]:1"]).unwrap();
        let m = c.mycelium.unwrap();
        assert_eq!(m.api, "http://127.0.0.1:8989");
        assert_eq!(m.topic, "causalkv");
        let err = config(&["--gossip-transport", "carrier-pigeon"]).unwrap_err();
        assert!(err.starts_with("GOSSIP_TRANSPORT"), "{err}");
        let err = config(&["--gossip-transport", "mycelium", "--view", "127.0.0.1:13800,127.0.0.1:13801"]).unwrap_err();
        assert!(err.contains("no Mycelium identity for VIEW node 127.0.0.1:13800"), "{err}");
        let c = config(&[
            "--gossip-transport",
            "mycelium",
            "--view",
            "127.0.0.1:13800,127.0.0.1:13801",
            "--mycelium-peers",
            "127.0.0.1:13800=4a0::1,127.0.0.1:13801=4a0::2",
            "--mycelium-api",
            "http://127.0.0.1:9001",
            "--mycelium-topic",
            "prod-kv",
        ])
        .unwrap();
        let m = c.mycelium.unwrap();
        assert_eq!((m.api.as_str(), m.topic.as_str()), ("http://127.0.0.1:9001", "prod-kv"));
    }
}

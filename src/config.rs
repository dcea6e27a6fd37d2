//! Node configuration: flags that also read the environment variables of
//! API.md, validated into a [`Config`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::shard::{View, normalise_address};
use crate::store::DurabilityMode;

/// Longest accepted `CAUSAL_WAIT_MS`: a request must never hang for minutes.
const MAX_CAUSAL_WAIT_MS: u64 = 60_000;
/// Largest accepted `MAX_VALUE_BYTES` (bodies are held in memory).
const MAX_VALUE_LIMIT: usize = 64 * 1024 * 1024;

#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// This node's host:port as it appears in VIEW.
    #[arg(long, env = "ADDRESS", default_value = "127.0.0.1:13800")]
    pub address: String,
    /// TCP port to bind on all interfaces (default: the port of ADDRESS).
    #[arg(long, env = "PORT")]
    pub port: Option<u16>,
    /// Comma-separated node addresses, in order (default: ADDRESS alone).
    #[arg(long, env = "VIEW")]
    pub view: Option<String>,
    /// Replicas per shard.
    #[arg(long, env = "REPL_FACTOR", default_value_t = 1)]
    pub repl_factor: usize,
    /// sled directory (default: ./data/<address>).
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
    /// fsync (acknowledge after a group-commit flush) or async.
    #[arg(long, env = "DURABILITY", default_value = "fsync")]
    pub durability: String,
    /// Shared secret authenticating internal traffic (HMAC-SHA256). Without
    /// it, internal requests are accepted only from the view's addresses.
    #[arg(long, env = "CLUSTER_KEY", hide_env_values = true)]
    pub cluster_key: Option<String>,
    /// Enables the test-only fault switches (/internal/faults).
    #[arg(long, env = "CAUSALKV_FAULTS", action = clap::ArgAction::SetTrue, value_parser = clap::builder::FalseyValueParser::new())]
    pub faults: bool,
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Canonical form of ADDRESS (as it appears in the view).
    pub address: String,
    pub port: u16,
    pub view: View,
    pub data_dir: PathBuf,
    pub causal_wait: Duration,
    pub max_key_length: usize,
    pub max_value_bytes: usize,
    pub durability: DurabilityMode,
    pub faults: bool,
    pub cluster_key: Option<String>,
}

impl Config {
    pub fn from_args(args: &NodeArgs) -> Result<Config, String> {
        let address = normalise_address(&args.address).map_err(|e| format!("ADDRESS: {e}"))?;
        let default_port = address.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(13800);
        let port = args.port.unwrap_or(default_port);
        if port == 0 {
            return Err("PORT must be between 1 and 65535".into());
        }
        let view_text = args.view.clone().unwrap_or_else(|| address.clone());
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
        let durability = args.durability.parse::<DurabilityMode>()?;
        let data_dir = args.data_dir.clone().unwrap_or_else(|| PathBuf::from("data").join(address.replace([':', '[', ']'], "_")));
        Ok(Config {
            address,
            port,
            view,
            data_dir,
            causal_wait: Duration::from_millis(args.causal_wait_ms),
            max_key_length: args.max_key_length,
            max_value_bytes: args.max_value_bytes,
            durability,
            faults: args.faults,
            cluster_key: args.cluster_key.clone().filter(|k| !k.is_empty()),
        })
    }

    /// Address to bind: all interfaces, IPv6 when ADDRESS is IPv6.
    pub fn bind_addr(&self) -> std::net::SocketAddr {
        let ip: std::net::IpAddr =
            if self.address.starts_with('[') { std::net::Ipv6Addr::UNSPECIFIED.into() } else { std::net::Ipv4Addr::UNSPECIFIED.into() };
        (ip, self.port).into()
    }
}

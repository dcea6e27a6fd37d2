//! Mycelium identities of nodes and the transport's settings
//! (`MYCELIUM_API`, `MYCELIUM_TOPIC`, `MYCELIUM_PEERS`).
//!
//! A node's identity is the overlay address (in `400::/7`) or the 64-hex
//! public key of the Mycelium daemon it sends and receives through. By
//! default it is the host part of the node's VIEW address, when that is an
//! overlay address; `MYCELIUM_PEERS` names it explicitly otherwise (nodes on
//! IPv4, or names). Every node of the cluster must use the same map.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde_json::{Value, json};

use crate::shard::normalise_address;

/// The local daemon's API when `MYCELIUM_API` is not set.
pub const DEFAULT_API: &str = "http://127.0.0.1:8989";
/// The topic when `MYCELIUM_TOPIC` is not set (one topic per cluster: give
/// clusters that share daemons different topics).
pub const DEFAULT_TOPIC: &str = "causalkv";
/// Mycelium refuses longer topics.
pub const MAX_TOPIC_BYTES: usize = 255;

/// Who a Mycelium message goes to or came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// An overlay address (in `400::/7`).
    Ip(Ipv6Addr),
    /// A public key, 64 lowercase hex digits.
    Pk(String),
}

/// True for Mycelium overlay addresses (`400::/7`).
pub fn is_overlay(ip: &Ipv6Addr) -> bool {
    ip.octets()[0] & 0xfe == 0x04
}

impl FromStr for Identity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Identity::Pk(s.to_ascii_lowercase()));
        }
        let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
        match bare.parse::<Ipv6Addr>() {
            Ok(ip) if is_overlay(&ip) => Ok(Identity::Ip(ip)),
            Ok(ip) => Err(format!("{ip} is not a Mycelium overlay address (400::/7)")),
            Err(_) => Err(format!("{s:?} is neither a Mycelium overlay IPv6 address (400::/7) nor a 64-hex public key")),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Ip(ip) => write!(f, "{ip}"),
            Identity::Pk(pk) => write!(f, "pk:{pk}"),
        }
    }
}

impl Identity {
    /// The identity a VIEW address implies: its host, when that is an
    /// overlay address.
    pub fn of_address(addr: &str) -> Option<Identity> {
        let sock: SocketAddr = addr.parse().ok()?;
        match sock.ip() {
            std::net::IpAddr::V6(ip) if is_overlay(&ip) => Some(Identity::Ip(ip)),
            _ => None,
        }
    }

    /// Whether a received message's `srcIp`/`srcPk` is this identity.
    pub fn matches(&self, src_ip: Option<&Ipv6Addr>, src_pk: Option<&str>) -> bool {
        match self {
            Identity::Ip(ip) => src_ip == Some(ip),
            Identity::Pk(pk) => src_pk.is_some_and(|s| s.eq_ignore_ascii_case(pk)),
        }
    }

    /// The `dst` object of a send.
    pub fn dst(&self) -> Value {
        match self {
            Identity::Ip(ip) => json!({"ip": ip.to_string()}),
            Identity::Pk(pk) => json!({"pk": pk}),
        }
    }
}

/// Validated settings of the Mycelium transport.
#[derive(Clone, Debug)]
pub struct MyceliumConfig {
    /// Base URL of the local daemon's API, without a trailing slash.
    pub api: String,
    /// The cluster's topic (raw bytes; base64 on the wire).
    pub topic: String,
    /// Explicit identities by VIEW address (canonical form).
    pub peers: BTreeMap<String, Identity>,
}

impl MyceliumConfig {
    /// Parses the settings and checks that every node of `view` has an
    /// identity and that no two share one. Errors name the setting.
    pub fn parse(api: &str, topic: &str, peers: Option<&str>, view: &[String]) -> Result<Self, String> {
        let url = reqwest::Url::parse(api.trim()).map_err(|e| format!("MYCELIUM_API {api:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(format!("MYCELIUM_API {api:?}: expected http://host:port of the local Mycelium daemon"));
        }
        let api = url.as_str().trim_end_matches('/').to_owned();
        if topic.is_empty() || topic.len() > MAX_TOPIC_BYTES {
            return Err(format!("MYCELIUM_TOPIC must be 1 to {MAX_TOPIC_BYTES} bytes"));
        }
        let mut map = BTreeMap::new();
        for entry in peers.unwrap_or("").split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (node, id) =
                entry.split_once('=').ok_or_else(|| format!("MYCELIUM_PEERS: {entry:?} is not node=overlay-ip-or-public-key"))?;
            let node = normalise_address(node).map_err(|e| format!("MYCELIUM_PEERS: {e}"))?;
            let id: Identity = id.parse().map_err(|e| format!("MYCELIUM_PEERS: {node}: {e}"))?;
            if map.insert(node.clone(), id).is_some() {
                return Err(format!("MYCELIUM_PEERS: {node} is listed twice"));
            }
        }
        let cfg = MyceliumConfig { api, topic: topic.to_owned(), peers: map };
        let mut seen: BTreeMap<Identity, &str> = BTreeMap::new();
        for node in view {
            let id = cfg.identity_of(node).ok_or_else(|| {
                format!(
                    "MYCELIUM_PEERS: no Mycelium identity for VIEW node {node} (its host is not an overlay address in 400::/7); \
                     add {node}=<overlay IPv6 or 64-hex public key>"
                )
            })?;
            if let Some(other) = seen.insert(id.clone(), node) {
                return Err(format!("MYCELIUM_PEERS: {other} and {node} have the same Mycelium identity {id} (one daemon per node)"));
            }
        }
        Ok(cfg)
    }

    /// The identity of a node: the explicit one, else its overlay address.
    pub fn identity_of(&self, node: &str) -> Option<Identity> {
        self.peers.get(node).cloned().or_else(|| Identity::of_address(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlay_range_is_400_slash_7() {
        for ok in ["400::1", "4a0::2", "5ff:ffff::1", "45e:1234::abcd"] {
            assert!(is_overlay(&ok.parse().unwrap()), "{ok}");
        }
        for no in ["::1", "3ff::1", "600::1", "fe80::1", "2001:db8::1"] {
            assert!(!is_overlay(&no.parse().unwrap()), "{no}");
        }
    }

    #[test]
    fn identities_parse() {
        let pk = "AB".repeat(32);
        assert_eq!(pk.parse::<Identity>().unwrap(), Identity::Pk("ab".repeat(32)));
        assert_eq!("4a0::1".parse::<Identity>().unwrap(), Identity::Ip("4a0::1".parse().unwrap()));
        assert_eq!("[4a0:0::1]".parse::<Identity>().unwrap(), Identity::Ip("4a0::1".parse().unwrap()));
        for bad in ["", "::1", "10.0.0.1", "abc", &"ab".repeat(31), &"zz".repeat(32)] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
        let id = Identity::Pk("ab".repeat(32));
        assert!(id.matches(None, Some(&"AB".repeat(32))));
        assert!(!id.matches(Some(&"4a0::1".parse().unwrap()), None));
        assert_eq!(Identity::Ip("4a0::1".parse().unwrap()).dst(), json!({"ip": "4a0::1"}));
    }

    #[test]
    fn overlay_view_addresses_need_no_map() {
        let view = nodes(&["[4a0::1]:13800", "[4a0::2]:13800"]);
        let cfg = MyceliumConfig::parse(DEFAULT_API, DEFAULT_TOPIC, None, &view).unwrap();
        assert_eq!(cfg.identity_of("[4a0::2]:13800"), Some(Identity::Ip("4a0::2".parse().unwrap())));
        assert_eq!(cfg.api, "http://127.0.0.1:8989");
        assert_eq!(cfg.identity_of("[::1]:13800"), None);
    }

    #[test]
    fn peers_map_names_identities() {
        let view = nodes(&["127.0.0.1:1", "127.0.0.1:2"]);
        let pk = "cd".repeat(32);
        let cfg =
            MyceliumConfig::parse("http://[::1]:9000/", "t", Some(&format!(" 127.0.0.1:1 = 4a0::1 , 127.0.0.1:2={pk}")), &view).unwrap();
        assert_eq!(cfg.api, "http://[::1]:9000");
        assert_eq!(cfg.identity_of("127.0.0.1:1"), Some(Identity::Ip("4a0::1".parse().unwrap())));
        assert_eq!(cfg.identity_of("127.0.0.1:2"), Some(Identity::Pk(pk)));
        // The map wins over the address.
        let cfg = MyceliumConfig::parse(DEFAULT_API, "t", Some("[4a0::1]:1=4b0::9"), &nodes(&["[4a0::1]:1"])).unwrap();
        assert_eq!(cfg.identity_of("[4a0::1]:1"), Some(Identity::Ip("4b0::9".parse().unwrap())));
    }

    #[test]
    fn misconfiguration_is_one_clear_error() {
        let view = nodes(&["127.0.0.1:1", "127.0.0.1:2"]);
        let err = MyceliumConfig::parse(DEFAULT_API, "t", Some("127.0.0.1:1=4a0::1"), &view).unwrap_err();
        assert!(err.contains("no Mycelium identity for VIEW node 127.0.0.1:2"), "{err}");
        let err = MyceliumConfig::parse(DEFAULT_API, "t", Some("127.0.0.1:1=4a0::1,127.0.0.1:2=4a0::1"), &view).unwrap_err();
        assert!(err.contains("same Mycelium identity"), "{err}");
        assert!(MyceliumConfig::parse(DEFAULT_API, "t", Some("127.0.0.1:1=::1"), &view).unwrap_err().contains("400::/7"));
        assert!(MyceliumConfig::parse(DEFAULT_API, "t", Some("127.0.0.1:1"), &view).unwrap_err().contains("node="));
        assert!(MyceliumConfig::parse(DEFAULT_API, "t", Some("127.0.0.1:1=4a0::1,127.0.0.1:1=4a0::2"), &view).is_err());
        assert!(MyceliumConfig::parse("ftp://x", "t", None, &[]).unwrap_err().starts_with("MYCELIUM_API"));
        assert!(MyceliumConfig::parse("not a url", "t", None, &[]).unwrap_err().starts_with("MYCELIUM_API"));
        assert!(MyceliumConfig::parse(DEFAULT_API, "", None, &[]).unwrap_err().starts_with("MYCELIUM_TOPIC"));
        assert!(MyceliumConfig::parse(DEFAULT_API, &"t".repeat(256), None, &[]).unwrap_err().starts_with("MYCELIUM_TOPIC"));
    }
}

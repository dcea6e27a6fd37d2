pub mod causal;
pub mod shard;
pub mod store;
pub mod faults;
pub mod gossip;
pub mod metrics;
pub mod api;
pub mod config;
pub mod node;

pub use config::{Config, NodeArgs};
pub use node::{Node, NodeHandle};

pub mod api;
pub mod causal;
pub mod check;
pub mod config;
pub mod faults;
pub mod gossip;
pub mod metrics;
pub mod node;
pub mod server;
pub mod shard;
pub mod sim;
pub mod store;
pub mod time;
pub mod tls;
pub mod viewchange;

pub use config::{Config, NodeArgs};
pub use node::Node;
pub use server::NodeHandle;

pub mod causal;
pub mod shard;
pub mod store;

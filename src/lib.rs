pub mod causal;
pub mod shard;

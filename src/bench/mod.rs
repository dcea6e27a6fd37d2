//! The load generator behind `causalkv-bench` (used only by that binary,
//! through `#[path]`; not part of the library).

pub mod buf;
pub mod ceiling;
pub mod features;
pub mod http;
pub mod keyspace;
pub mod load;
pub mod probe;
pub mod procstat;
pub mod promtext;
pub mod resp;
pub mod route;
pub mod session;
pub mod stats;
pub mod visibility;

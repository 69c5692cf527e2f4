//! ringkv server: an etcd-v3-compatible key-value server, thread-per-core.
//!
//! See docs/architecture.md for the cores and the path of a request.

pub mod apply;
pub mod auth;
pub mod client;
pub mod config;
pub mod etcd_error;
pub mod fatal;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod grpc;
#[cfg(test)]
mod layers;
pub mod listener;
mod log_limit;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod peer;
pub mod placement;
pub mod server;
#[cfg(feature = "sim")]
pub mod sim;
pub mod snapshot_read;
pub mod status;
pub mod store;
pub mod tls;
pub mod version;
pub mod watch;

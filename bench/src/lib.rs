//! ringkv-bench: throughput and latency of any etcd v3 endpoint (ringkv or
//! etcd), and ringkv against etcd side by side on one machine (`compare`).
//!
//! Layers, top down: `cli` (flags) -> `compare` (server processes, rounds,
//! ratio table) -> `runner` (connections, request loops, pacing, stopping;
//! `placement`: which thread they run on) ->
//! `workload` (what one op is) -> `sample` (per-second samples) -> `report`
//! (histograms, summaries).

pub mod channel;
pub mod cli;
pub mod compare;
pub mod connect;
pub mod errors;
pub mod keys;
pub mod pacing;
pub mod placement;
pub mod progress;
pub mod report;
pub mod runner;
pub mod sample;
pub mod server_cpu;
pub mod workload;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad flags.
    #[error("{0}")]
    Usage(String),
    #[error("cannot connect to {endpoint}: {error}")]
    Connect { endpoint: String, error: String },
    /// The untimed setup before a run failed.
    #[error("{0}")]
    Prepare(String),
    /// A server `compare` started failed to start or serve.
    #[error("{0}")]
    Server(String),
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Plot(#[from] compare::plot::PlotError),
    #[error("{0}")]
    Internal(String),
}

/// Ctrl-C: the first asks the run to stop and report what it measured, the
/// second exits at once.
pub mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    static REQUESTED: AtomicBool = AtomicBool::new(false);

    pub fn requested() -> bool {
        REQUESTED.load(Ordering::Relaxed)
    }

    /// Listens for Ctrl-C on `runtime`.
    pub fn install(runtime: &tokio::runtime::Runtime) {
        runtime.spawn(async {
            loop {
                if tokio::signal::ctrl_c().await.is_err() {
                    return;
                }
                if REQUESTED.swap(true, Ordering::Relaxed) {
                    std::process::exit(130);
                }
                eprintln!("\ninterrupted: finishing requests in flight (Ctrl-C again to quit now)");
            }
        });
    }
}

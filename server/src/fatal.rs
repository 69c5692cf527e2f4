//! Stopping the process on a storage or invariant failure: the one way out
//! for what a retry cannot mend (an fsync error, corruption, a broken
//! invariant). Nothing a client or peer sends may lead here.

/// Stops the process: the store can no longer promise durability or correctness.
/// Recovery from the WAL on restart is the only way forward (fsyncgate: never retry).
pub fn fatal(message: &str) -> ! {
    tracing::error!("fatal: {message}");
    eprintln!("ringkv: fatal: {message}");
    std::process::exit(2);
}

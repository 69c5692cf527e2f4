//! Test-only fault injection, compiled in only with the `fault-injection`
//! feature (which `cargo test` turns on; a shipped binary has none of it):
//! the fault suite's slow disk (`server/tests/faults.rs`).

use std::path::PathBuf;
use std::time::Duration;

/// With this variable naming a file, every WAL write first waits as many
/// milliseconds as the file holds (none while it is absent).
const DISK_DELAY_ENV: &str = "RINGKV_FAULT_DISK_DELAY_FILE";

/// The file a slow disk's delay is read from before each WAL write.
pub struct DiskDelay {
    file: PathBuf,
}

impl DiskDelay {
    /// The hook, if the environment sets it.
    pub fn from_env() -> Option<DiskDelay> {
        let file = PathBuf::from(std::env::var_os(DISK_DELAY_ENV)?);
        tracing::warn!(file = %file.display(), "fault injection: WAL writes wait the delay this file holds");
        Some(DiskDelay { file })
    }

    /// The delay the file holds now, if any.
    pub fn current(&self) -> Option<Duration> {
        let millis = std::fs::read_to_string(&self.file).ok()?.trim().parse().ok()?;
        Some(Duration::from_millis(millis))
    }
}

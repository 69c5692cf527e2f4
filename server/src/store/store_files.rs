//! A member's page-store files behind a seam: snapshots received from the
//! leader, and the store one of them replaces. The store core installs
//! through it at the one moment that is safe (after the snapshot's WAL record
//! is durable); the data directory is one side, a simulation's memory the other.

use std::path::{Path, PathBuf};

use ringkv_datadir::layout::{self, SNAP_DIR, STORE_FILE};
use ringkv_engine::mvcc::{Mvcc, MvccError};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("installing snapshot {path}: {source}")]
    Replace { path: PathBuf, source: std::io::Error },
    #[error("opening the installed snapshot: {0}")]
    Open(#[from] MvccError),
}

pub trait StoreFiles {
    /// Makes the snapshot received for raft index `index` the page store,
    /// durably, and opens it.
    fn install_received(&mut self, index: u64) -> Result<Mvcc, InstallError>;
    /// Removes a received snapshot raft did not take.
    fn discard_received(&mut self, path: &Path);
    /// Where a Maintenance.Snapshot spools its etcd-format copy: on the data
    /// directory's file system, sized for the store, not in a tmpfs.
    fn spool_dir(&self) -> PathBuf;
}

/// The page store and `snap/` of a data directory on disk.
pub struct DataDirFiles {
    pub data_dir: PathBuf,
}

impl StoreFiles for DataDirFiles {
    fn install_received(&mut self, index: u64) -> Result<Mvcc, InstallError> {
        let snap_dir = self.data_dir.join(SNAP_DIR);
        let received = layout::received_path(&snap_dir, index);
        let store_path = self.data_dir.join(STORE_FILE);
        layout::replace_store(&received, &store_path).map_err(|source| InstallError::Replace {
            path: received.clone(),
            source,
        })?;
        let mvcc = Mvcc::open(&store_path)?;
        remove_older_snapshots(&snap_dir, index);
        Ok(mvcc)
    }

    fn discard_received(&mut self, path: &Path) {
        if let Err(error) = std::fs::remove_file(path) {
            tracing::warn!(%error, path = %path.display(), "cannot remove an unused snapshot");
        }
    }

    fn spool_dir(&self) -> PathBuf {
        self.data_dir.join(SNAP_DIR)
    }
}

/// Removes received snapshots up to `index` (the installed one was renamed).
fn remove_older_snapshots(snap_dir: &Path, index: u64) {
    let Ok(entries) = std::fs::read_dir(snap_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(older) = entry.file_name().to_str().and_then(layout::received_index) else {
            continue;
        };
        if older <= index {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

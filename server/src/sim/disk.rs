//! A member's disk in the simulation: the engine's simulated WAL directory and
//! page file, and the snapshots received from the leader. It outlives the
//! member's crashes, which lose, keep or tear what was never synced.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use ringkv_datadir::wal::{self, Identity};
use ringkv_engine::mvcc::{Mvcc, MvccError};
use ringkv_engine::page::sim::SimPageIo;
use ringkv_engine::wal::sim::SimDir;
use ringkv_engine::wal::{Recovered, Wal, WalError, WalOptions};

use crate::store::bootstrap::{BootstrapError, MemberStorage};
use crate::store::store_files::{InstallError, StoreFiles};

/// WAL segments in the simulation: small, so segments roll and are released.
const SIM_SEGMENT_BYTES: u64 = 128 * 1024;

/// A member's disk; clones share it.
#[derive(Clone, Default)]
pub struct SimDisk {
    pub wal: SimDir,
    wal_created: Rc<Cell<bool>>,
    page: Rc<RefCell<Arc<SimPageIo>>>,
    /// Durable snapshots received from the leader, by raft index.
    received: Rc<RefCell<BTreeMap<u64, Vec<u8>>>>,
}

impl SimDisk {
    pub fn wal_options() -> WalOptions {
        WalOptions {
            segment_bytes: SIM_SEGMENT_BYTES,
        }
    }

    /// The page file as it is now (an install replaces it).
    pub fn page(&self) -> Arc<SimPageIo> {
        Arc::clone(&self.page.borrow())
    }

    /// A power cut: each unsynced write of the WAL and the page file is kept,
    /// lost or torn, as `seed` chooses.
    pub fn crash(&self, seed: u64) {
        self.wal.crash(seed);
        self.page().crash(seed.rotate_left(17));
    }

    /// A snapshot for raft index `index`, received whole and durable.
    pub fn receive(&self, index: u64, bytes: Vec<u8>) -> PathBuf {
        self.received.borrow_mut().insert(index, bytes);
        received_path(index)
    }

    fn install(&self, index: u64) -> bool {
        let Some(bytes) = self.received.borrow_mut().remove(&index) else {
            return false;
        };
        *self.page.borrow_mut() = SimPageIo::with_durable(bytes);
        self.received.borrow_mut().retain(|&older, _| older > index);
        true
    }
}

fn received_path(index: u64) -> PathBuf {
    PathBuf::from(format!("sim/snap/{index}"))
}

impl MemberStorage for SimDisk {
    type WalDir = SimDir;

    fn prepare(&self) -> Result<(), BootstrapError> {
        Ok(())
    }

    fn store_path(&self) -> PathBuf {
        PathBuf::from("sim/store.db")
    }

    fn open_store(&self) -> Result<Mvcc, MvccError> {
        Mvcc::open_with(self.page())
    }

    fn wal_path(&self) -> PathBuf {
        PathBuf::from("sim/wal")
    }

    fn wal_exists(&self) -> bool {
        self.wal_created.get()
    }

    async fn open_wal(&self) -> Result<(Wal<SimDir>, Recovered), WalError> {
        Wal::open_in(self.wal.clone(), SimDisk::wal_options()).await
    }

    async fn create_wal(&self, identity: Identity, voters: &[u64]) -> Result<(Wal<SimDir>, Recovered), WalError> {
        let created = wal::create_in(self.wal.clone(), SimDisk::wal_options(), identity, voters).await?;
        self.wal_created.set(true);
        Ok(created)
    }

    fn finish_interrupted_install(&self, index: u64) -> Result<(), String> {
        self.install(index);
        Ok(())
    }

    fn clear_received(&self) -> Result<(), BootstrapError> {
        self.received.borrow_mut().clear();
        Ok(())
    }
}

impl StoreFiles for SimDisk {
    fn install_received(&mut self, index: u64) -> Result<Mvcc, InstallError> {
        if !self.install(index) {
            return Err(InstallError::Replace {
                path: received_path(index),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        Ok(Mvcc::open_with(self.page())?)
    }

    fn discard_received(&mut self, path: &Path) {
        let index = path.file_name().and_then(|name| name.to_str()?.parse::<u64>().ok());
        if let Some(index) = index {
            self.received.borrow_mut().remove(&index);
        }
    }

    fn spool_dir(&self) -> PathBuf {
        std::env::temp_dir()
    }
}

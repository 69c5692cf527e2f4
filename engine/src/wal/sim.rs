//! Test support: an in-memory WAL directory that can fail and crash.
//!
//! Each file keeps its durable bytes and the writes made since its last sync.
//! [`SimDir::crash`] throws away what was never synced: every unsynced block is
//! kept, lost, or torn (each of its 512-byte sectors kept or lost), chosen by a
//! seed. Sectors are the unit a device writes whole (docs/wal-format.md, the
//! tail rule): a crash never leaves part of one. Directory operations (create,
//! rename, remove) are durable at once, as the real implementation syncs the
//! directory after each.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::io::{WalDir, WalFile};
use super::record::{BLOCK_BYTES, SECTOR_BYTES};

#[derive(Clone, Default)]
struct FileState {
    durable: Vec<u8>,
    /// (offset, bytes) written since the last sync, in order.
    unsynced: Vec<(u64, Vec<u8>)>,
}

impl FileState {
    fn current(&self) -> Vec<u8> {
        let mut bytes = self.durable.clone();
        for (offset, data) in &self.unsynced {
            overwrite(&mut bytes, *offset, data);
        }
        bytes
    }
}

fn overwrite(bytes: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[offset as usize..end].copy_from_slice(data);
}

/// Faults armed for the next operations.
#[derive(Default)]
struct Faults {
    fail_next_write: bool,
    short_next_write: bool,
    fail_next_sync: bool,
    die_at_next_sync: bool,
    /// `create_prewritten` fails once the directory holds this many files.
    files_max: Option<usize>,
    /// Every `create_prewritten` fails with "no space".
    disk_full: bool,
}

#[derive(Default)]
struct Shared {
    files: BTreeMap<String, Rc<RefCell<FileState>>>,
    faults: Faults,
    syncs: u64,
    /// Every write so far: file name, offset, bytes.
    writes: Vec<(String, u64, usize)>,
}

/// An in-memory directory; clones share the same files.
#[derive(Clone, Default)]
pub struct SimDir {
    shared: Rc<RefCell<Shared>>,
}

impl SimDir {
    pub fn new() -> SimDir {
        SimDir::default()
    }

    /// The next write fails with an I/O error.
    pub fn fail_next_write(&self) {
        self.shared.borrow_mut().faults.fail_next_write = true;
    }

    /// The next write writes only its first half (in whole blocks) and says so.
    pub fn short_next_write(&self) {
        self.shared.borrow_mut().faults.short_next_write = true;
    }

    /// The next fdatasync fails (and, as on Linux, the unsynced data is gone).
    pub fn fail_next_sync(&self) {
        self.shared.borrow_mut().faults.fail_next_sync = true;
    }

    /// The process "dies" at the next fdatasync: it fails, and the unsynced
    /// writes stay pending for [`SimDir::crash`] to decide their fate.
    pub fn die_at_next_sync(&self) {
        self.shared.borrow_mut().faults.die_at_next_sync = true;
    }

    /// `create_prewritten` fails with "no space" once the directory holds `files_max`
    /// files: a full disk, and a bound on tests whose failure mode is "roll forever".
    pub fn limit_files(&self, files_max: usize) {
        self.shared.borrow_mut().faults.files_max = Some(files_max);
    }

    /// While `full`, every `create_prewritten` fails with ENOSPC's kind and
    /// leaves nothing behind (as the real one removes its temporary file);
    /// writes into existing files still work, as into allocated blocks.
    pub fn set_disk_full(&self, full: bool) {
        self.shared.borrow_mut().faults.disk_full = full;
    }

    /// fdatasync calls so far.
    pub fn syncs(&self) -> u64 {
        self.shared.borrow().syncs
    }

    /// Loses, keeps or tears each unsynced block, as a power cut might: a torn
    /// block keeps some of its sectors.
    pub fn crash(&self, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut fates = BTreeMap::new();
        self.crash_keeping(|name, sector_offset| {
            let block = (name.to_string(), sector_offset / BLOCK_BYTES as u64);
            let fate = *fates.entry(block).or_insert_with(|| rng.gen_range(0..3));
            match fate {
                0 => false,
                1 => true,
                _ => rng.gen_bool(0.5),
            }
        });
    }

    /// A crash with chosen fates: an unsynced sector reaches the disk if
    /// `keep(file name, sector offset)`, else the disk keeps its old bytes.
    /// Sectors are offered in file-name order, then in write order.
    pub fn crash_keeping(&self, mut keep: impl FnMut(&str, u64) -> bool) {
        let shared = self.shared.borrow();
        for (name, file) in &shared.files {
            let mut file = file.borrow_mut();
            let unsynced = std::mem::take(&mut file.unsynced);
            for (offset, data) in unsynced {
                for (i, sector) in data.chunks(SECTOR_BYTES).enumerate() {
                    let at = offset + (i * SECTOR_BYTES) as u64;
                    if keep(name, at) {
                        overwrite(&mut file.durable, at, sector);
                    }
                }
            }
        }
    }

    /// An independent copy of the directory, durable and unsynced bytes alike,
    /// with no fault armed: to try several fates of one crash.
    pub fn fork(&self) -> SimDir {
        let shared = self.shared.borrow();
        let files = shared
            .files
            .iter()
            .map(|(name, file)| (name.clone(), Rc::new(RefCell::new(file.borrow().clone()))))
            .collect();
        SimDir {
            shared: Rc::new(RefCell::new(Shared {
                files,
                faults: Faults::default(),
                syncs: shared.syncs,
                writes: shared.writes.clone(),
            })),
        }
    }

    /// Every write so far (file name, offset, bytes), oldest first: where each
    /// frame went.
    pub fn writes(&self) -> Vec<(String, u64, usize)> {
        self.shared.borrow().writes.clone()
    }

    /// Replaces durable bytes of a file (a misdirected write, a bad sector).
    pub fn overwrite_durable(&self, name: &str, offset: u64, bytes: &[u8]) {
        let shared = self.shared.borrow();
        let mut file = shared.files[name].borrow_mut();
        assert!(file.unsynced.is_empty(), "damage durable data only");
        assert!(offset as usize + bytes.len() <= file.durable.len());
        overwrite(&mut file.durable, offset, bytes);
    }

    /// Cuts a file to `len` bytes.
    pub fn truncate(&self, name: &str, len: u64) {
        let shared = self.shared.borrow();
        let mut file = shared.files[name].borrow_mut();
        assert!(file.unsynced.is_empty(), "damage durable data only");
        file.durable.truncate(len as usize);
    }

    /// Flips the bits of `mask` in one byte of a file's durable contents (a
    /// bad disk sector); flipping them again undoes it.
    pub fn flip(&self, name: &str, offset: u64, mask: u8) {
        let shared = self.shared.borrow();
        let mut file = shared.files[name].borrow_mut();
        assert!(file.unsynced.is_empty(), "damage durable data only");
        assert_ne!(mask, 0, "a flip changes the byte");
        file.durable[offset as usize] ^= mask;
    }

    /// A copy of a file's durable bytes.
    pub fn durable_bytes(&self, name: &str) -> Vec<u8> {
        self.shared.borrow().files[name].borrow().durable.clone()
    }
}

pub struct SimFile {
    name: String,
    state: Rc<RefCell<FileState>>,
    dir: SimDir,
}

impl WalFile for SimFile {
    async fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<usize> {
        let mut shared = self.dir.shared.borrow_mut();
        if std::mem::take(&mut shared.faults.fail_next_write) {
            return Err(io::Error::other("injected write error"));
        }
        let len = if std::mem::take(&mut shared.faults.short_next_write) {
            (data.len() / 2) / BLOCK_BYTES * BLOCK_BYTES
        } else {
            data.len()
        };
        shared.writes.push((self.name.clone(), offset, len));
        self.state.borrow_mut().unsynced.push((offset, data[..len].to_vec()));
        Ok(len)
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let bytes = self.state.borrow().current();
        let start = (offset as usize).min(bytes.len());
        let end = (offset as usize + len).min(bytes.len());
        Ok(bytes[start..end].to_vec())
    }

    async fn sync(&self) -> io::Result<()> {
        let mut shared = self.dir.shared.borrow_mut();
        shared.syncs += 1;
        let mut state = self.state.borrow_mut();
        if std::mem::take(&mut shared.faults.die_at_next_sync) {
            return Err(io::Error::other("injected crash before fsync"));
        }
        if std::mem::take(&mut shared.faults.fail_next_sync) {
            // fsyncgate: the kernel drops the dirty pages and reports once.
            state.unsynced.clear();
            return Err(io::Error::other("injected fsync error"));
        }
        let unsynced = std::mem::take(&mut state.unsynced);
        for (offset, data) in unsynced {
            overwrite(&mut state.durable, offset, &data);
        }
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.state.borrow().current().len() as u64)
    }
}

impl WalDir for SimDir {
    type File = SimFile;

    async fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.shared.borrow().files.keys().cloned().collect())
    }

    async fn create_prewritten(&self, name: &str, len: u64) -> io::Result<SimFile> {
        let shared = self.shared.borrow();
        if shared.files.contains_key(name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, name.to_string()));
        }
        if shared.faults.disk_full || shared.faults.files_max.is_some_and(|max| shared.files.len() >= max) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "injected full disk"));
        }
        drop(shared);
        let state = Rc::new(RefCell::new(FileState {
            durable: vec![0; len as usize],
            unsynced: Vec::new(),
        }));
        self.shared
            .borrow_mut()
            .files
            .insert(name.to_string(), Rc::clone(&state));
        Ok(SimFile {
            name: name.to_string(),
            state,
            dir: self.clone(),
        })
    }

    async fn open(&self, name: &str) -> io::Result<SimFile> {
        let state = self.shared.borrow().files.get(name).cloned();
        let state = state.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))?;
        Ok(SimFile {
            name: name.to_string(),
            state,
            dir: self.clone(),
        })
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut shared = self.shared.borrow_mut();
        let file = shared
            .files
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, from.to_string()))?;
        shared.files.insert(to.to_string(), file);
        Ok(())
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        self.shared.borrow_mut().files.remove(name);
        Ok(())
    }

    fn display_path(&self, name: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(name)
    }
}

//! The data directory as a whole: the names ringkv keeps in it, the check that
//! refuses a directory holding anything else (an etcd member's data above all),
//! the lock that keeps a second process out of it, and the one way a page store
//! is replaced by another (a snapshot from the leader, at install).
//!
//! ```text
//! <data-dir>/
//!   ringkv.lock    held (flock, exclusive) by the running member; empty
//!   wal/           the WAL (wal.creating/ while it is first made)
//!   store.db       the page store
//!   snap/          raft snapshots arriving from the leader: <from>.part while
//!                  arriving, snapshot-<index>.db once durable, until installed;
//!                  Maintenance.Snapshot's spools (unnamed, O_TMPFILE)
//! ```

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The page store's file.
pub const STORE_FILE: &str = "store.db";
/// The WAL's directory.
pub const WAL_DIR: &str = "wal";
/// Where raft snapshots from the leader arrive.
pub const SNAP_DIR: &str = "snap";
/// The file whose lock says a process uses the directory.
pub const LOCK_FILE: &str = "ringkv.lock";
/// What the WAL is built in before it becomes `wal/` (`Wal::create`).
const WAL_STAGING_DIR: &str = "wal.creating";
/// What an etcd member keeps its WAL and bbolt file under.
const ETCD_MEMBER_DIR: &str = "member";
/// What mkfs leaves at the root of a file system: a data directory may be one.
const LOST_AND_FOUND: &str = "lost+found";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "{dir} holds an etcd member's data ({ETCD_MEMBER_DIR}/): ringkv does not run on etcd's files, and \
         starting here would serve an empty cluster beside them. To move the data to ringkv with every \
         revision and lease: take a snapshot from the running etcd (`etcdctl snapshot save FILE`), then \
         `ringkvutl snapshot restore FILE --data-dir NEW-DIR` and start ringkv on NEW-DIR"
    )]
    Etcd { dir: PathBuf },
    #[error(
        "{dir} is not a ringkv data directory: it holds {found}. ringkv starts only in a new or empty \
         directory or one it made ({STORE_FILE}, {WAL_DIR}/, {SNAP_DIR}/)"
    )]
    Foreign { dir: PathBuf, found: String },
    #[error(
        "{dir} is in use: another process holds the lock on {LOCK_FILE} (a second ringkv on the same --data-dir?)"
    )]
    InUse { dir: PathBuf },
    #[error("data directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// True if `dir` holds no member yet (no WAL): flags that only matter at
/// creation (`--initial-cluster-state`) apply.
pub fn is_new(dir: &Path) -> bool {
    !ringkv_engine::wal::Wal::exists(&dir.join(WAL_DIR))
}

/// Where a snapshot from member `from` is written while it arrives, in `snap_dir`.
pub fn receiving_path(snap_dir: &Path, from: u64) -> PathBuf {
    snap_dir.join(format!("{from:016x}.part"))
}

/// Where a complete snapshot for raft index `index` waits to be installed.
pub fn received_path(snap_dir: &Path, index: u64) -> PathBuf {
    snap_dir.join(format!("snapshot-{index:016x}.db"))
}

/// The raft index of a complete snapshot file named by [`received_path`].
pub fn received_index(file_name: &str) -> Option<u64> {
    let hex = file_name.strip_prefix("snapshot-")?.strip_suffix(".db")?;
    u64::from_str_radix(hex, 16).ok()
}

/// Renames a received snapshot over the page store `store`, durably (the
/// directory is synced, so the rename survives a crash).
pub fn replace_store(snapshot: &Path, store: &Path) -> std::io::Result<()> {
    std::fs::rename(snapshot, store)?;
    let dir = store.parent().expect("the store file is in the data directory");
    File::open(dir)?.sync_all()
}

/// The lock on a data directory; the directory is this process's while it lives
/// (the kernel releases it when the process ends, however it ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Makes `dir` this process's: refuses it if it holds anything ringkv did not
/// put there, creates it if needed, and takes its lock (never waiting for it).
pub fn claim(dir: &Path) -> Result<DataDirLock, DataDirError> {
    check_layout(dir)?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    lock(&file, libc::LOCK_EX).map_err(|error| match error.raw_os_error() {
        Some(libc::EWOULDBLOCK) => DataDirError::InUse { dir: dir.to_path_buf() },
        _ => DataDirError::Io { path, source: error },
    })?;
    Ok(DataDirLock { _file: file })
}

/// Fails if a process holds `dir`'s lock (a stopped member's directory can be
/// read by the offline tools). A directory that was never used has no lock file.
pub fn check_stopped(dir: &Path) -> Result<(), DataDirError> {
    let path = dir.join(LOCK_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(DataDirError::Io { path, source: error }),
    };
    lock(&file, libc::LOCK_SH).map_err(|error| match error.raw_os_error() {
        Some(libc::EWOULDBLOCK) => DataDirError::InUse { dir: dir.to_path_buf() },
        _ => DataDirError::Io { path, source: error },
    })
}

/// flock without waiting. flock, not fcntl locks: it belongs to the open file,
/// so no other descriptor of this process can release it by closing.
fn lock(file: &File, operation: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock on an open descriptor we own; no memory is passed.
    let result = unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Only ringkv's own names, or nothing at all; a missing directory is new.
fn check_layout(dir: &Path) -> Result<(), DataDirError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(DataDirError::Io {
                path: dir.to_path_buf(),
                source: error,
            })
        }
    };
    let mut foreign = Vec::new();
    for entry in entries {
        let name = entry.map_err(io(dir))?.file_name();
        let name = name.to_string_lossy().into_owned();
        if name == ETCD_MEMBER_DIR {
            return Err(DataDirError::Etcd { dir: dir.to_path_buf() });
        }
        let own = [
            STORE_FILE,
            WAL_DIR,
            WAL_STAGING_DIR,
            SNAP_DIR,
            LOCK_FILE,
            LOST_AND_FOUND,
        ];
        if !own.contains(&name.as_str()) {
            foreign.push(name);
        }
    }
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    Err(DataDirError::Foreign {
        dir: dir.to_path_buf(),
        found: foreign.join(", "),
    })
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_file_names_round_trip() {
        let path = received_path(Path::new("/d/snap"), 0x1234);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(received_index(name), Some(0x1234));
        assert_eq!(received_index("00000000000000ab.part"), None);
        assert_eq!(received_index("snapshot-zz.db"), None);
    }

    #[test]
    fn a_new_or_empty_directory_is_claimed_and_locked() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("new");
        let lock = claim(&dir).unwrap();
        assert!(dir.join(LOCK_FILE).exists());
        assert!(matches!(claim(&dir), Err(DataDirError::InUse { .. })));
        assert!(matches!(check_stopped(&dir), Err(DataDirError::InUse { .. })));
        drop(lock);
        check_stopped(&dir).unwrap();
        let _again = claim(&dir).unwrap();
    }

    #[test]
    fn ringkvs_own_layout_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(WAL_DIR)).unwrap();
        std::fs::create_dir(dir.path().join(SNAP_DIR)).unwrap();
        std::fs::create_dir(dir.path().join(LOST_AND_FOUND)).unwrap();
        std::fs::write(dir.path().join(STORE_FILE), b"").unwrap();
        claim(dir.path()).unwrap();
    }

    #[test]
    fn an_etcd_member_directory_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("member/wal")).unwrap();
        let error = claim(dir.path()).unwrap_err();
        assert!(matches!(error, DataDirError::Etcd { .. }), "{error}");
        assert!(error.to_string().contains("ringkvutl snapshot restore"), "{error}");
        assert!(
            !dir.path().join(LOCK_FILE).exists(),
            "nothing is created in etcd's directory"
        );
    }

    #[test]
    fn anything_else_is_refused_naming_what_was_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        std::fs::create_dir(dir.path().join("backup")).unwrap();
        let error = claim(dir.path()).unwrap_err();
        assert!(error.to_string().contains("it holds backup, notes.txt"), "{error}");
    }
}

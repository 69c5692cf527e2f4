//! The page file's I/O seam. [`FilePageIo`] is the real one (pwrite, fdatasync,
//! fallocate, mmap for reads); `super::sim` keeps pages in memory and can fail and
//! crash.
//!
//! Commits write from a blocking thread while the store core reads, so an
//! implementation is shared (`Send + Sync`) and takes `&self` everywhere.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

pub trait PageIo: Send + Sync + 'static {
    /// File length in bytes.
    fn size(&self) -> io::Result<u64>;
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// fdatasync: everything written before is durable when this returns.
    fn sync(&self) -> io::Result<()>;
    /// Makes the file at least `len` bytes, with its blocks allocated. On
    /// failure the file keeps its length (a full disk gets back what a partial
    /// allocation took).
    fn grow(&self, len: u64) -> io::Result<()>;
    /// Cuts the file to `len` bytes (after defragmentation).
    fn truncate(&self, len: u64) -> io::Result<()>;
    /// Reads `buf.len()` bytes at `offset` (a reader off the store core).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// A read-only view of the whole file as it is now (written data included,
    /// durable or not, as the page cache shows it).
    fn map(&self) -> io::Result<Mapping>;
}

/// Bytes of the page file, readable without copying.
pub enum Mapping {
    /// An empty file cannot be mapped.
    Empty,
    File(memmap2::Mmap),
    /// A snapshot of a simulated file.
    Memory(Arc<[u8]>),
}

impl Deref for Mapping {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Mapping::Empty => &[],
            Mapping::File(map) => map,
            Mapping::Memory(bytes) => bytes,
        }
    }
}

/// The page file on disk.
pub struct FilePageIo {
    file: File,
}

impl FilePageIo {
    /// Opens `path`, creating it (and making its directory entry durable) if needed.
    pub fn open(path: &Path) -> io::Result<FilePageIo> {
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if !existed {
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            File::open(parent)?.sync_all()?;
        }
        Ok(FilePageIo { file })
    }
}

impl PageIo for FilePageIo {
    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn grow(&self, len: u64) -> io::Result<()> {
        let current = self.size()?;
        if len <= current {
            return Ok(());
        }
        let offset = libc::off_t::try_from(current).map_err(io::Error::other)?;
        let extra = libc::off_t::try_from(len - current).map_err(io::Error::other)?;
        // SAFETY: fallocate on an owned, open descriptor; no memory is passed.
        let result = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, offset, extra) };
        if result == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EOPNOTSUPP) {
            // Some file systems cannot preallocate; a sparse extension still works.
            return self.file.set_len(len);
        }
        // A fallocate that ran out of room may have allocated, and extended the
        // file by, part of the range. Nothing is written there yet: cut it off.
        if let Err(undo) = self.file.set_len(current) {
            return Err(io::Error::other(format!(
                "{error}; then cutting the file back to {current} bytes failed: {undo}"
            )));
        }
        Err(error)
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn map(&self) -> io::Result<Mapping> {
        if self.size()? == 0 {
            return Ok(Mapping::Empty);
        }
        // SAFETY: the file is only ever written by this process, through `write_at`,
        // and only at pages no reader can reach (see page::freelist). It is cut
        // short only past the last page any state uses (trimmed free pages), so
        // no read through an older, longer mapping touches the missing part.
        let map = unsafe { memmap2::MmapOptions::new().map(&self.file)? };
        Ok(Mapping::File(map))
    }
}

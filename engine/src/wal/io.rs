//! The WAL's I/O seam: a directory of segment files. [`DmaDir`] is the real one
//! (O_DIRECT; segments prepared through glommio's io_uring, appends written and
//! synced with plain syscalls, see [`DmaSegment`]); `super::sim` is an
//! in-memory one with faults.
//!
//! Single-threaded by design (glommio executors), hence `async fn` in traits
//! without `Send` bounds.
#![allow(async_fn_in_trait)]

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{Directory, DmaBuffer, DmaFile, OpenOptions};

use super::record::BLOCK_BYTES;

/// Bytes zero-filled per write while pre-writing a segment.
const PREWRITE_CHUNK_BYTES: usize = 1024 * 1024;
/// Bytes per O_DIRECT read while recovering (a segment is read whole when the
/// scan reaches it).
const READ_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// One segment file. Offsets and lengths are multiples of the block size.
pub trait WalFile {
    /// Writes `data` at `offset`; returns the bytes written (may be short).
    async fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<usize>;
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// fdatasync: everything written before is durable when this returns.
    async fn sync(&self) -> io::Result<()>;
    async fn size(&self) -> io::Result<u64>;
}

/// The directory holding the segments.
pub trait WalDir {
    type File: WalFile;
    /// File names in the directory.
    async fn list(&self) -> io::Result<Vec<String>>;
    /// A new file `name` of `len` bytes, allocated and written with zeros and
    /// synced, then atomically given its name (never visible half-prepared).
    /// Fails with `AlreadyExists` if `name` exists: a segment is never replaced.
    async fn create_prewritten(&self, name: &str, len: u64) -> io::Result<Self::File>;
    async fn open(&self, name: &str) -> io::Result<Self::File>;
    /// Renames and syncs the directory.
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes and syncs the directory.
    async fn remove(&self, name: &str) -> io::Result<()>;
    /// How to name file `name` in an error message.
    fn display_path(&self, name: &str) -> PathBuf;
}

/// Segment files on disk, written with O_DIRECT.
#[derive(Clone)]
pub struct DmaDir {
    path: PathBuf,
}

impl DmaDir {
    pub fn new(path: &Path) -> DmaDir {
        DmaDir {
            path: path.to_path_buf(),
        }
    }

    async fn sync_dir(&self) -> io::Result<()> {
        sync_directory(&self.path).await
    }
}

/// fsync of a directory, so that names created, renamed or removed in it are
/// durable. glommio fails to open a relative directory path: make it absolute.
pub async fn sync_directory(path: &Path) -> io::Result<()> {
    let dir = Directory::open(std::path::absolute(path)?).await?;
    dir.sync().await?;
    dir.close().await?;
    Ok(())
}

/// fsync of the directory holding `path`, so that `path`'s own name (created or
/// renamed) is durable.
pub async fn sync_parent_directory(path: &Path) -> io::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sync_directory(parent).await
}

impl WalDir for DmaDir {
    type File = DmaSegment;

    async fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    async fn create_prewritten(&self, name: &str, len: u64) -> io::Result<DmaSegment> {
        assert_eq!(len % BLOCK_BYTES as u64, 0);
        // The WAL is the only writer of its directory: checking first is enough.
        if std::fs::symlink_metadata(self.path.join(name)).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("segment {name} exists"),
            ));
        }
        let temp = self.path.join(format!("{name}.tmp"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .dma_open(&temp)
            .await?;
        if let Err(error) = prewrite(&file, len).await {
            // Nothing refers to the temporary file: give its blocks back now (a
            // full disk needs them), not at the next open.
            let _ = file.close().await;
            let _ = std::fs::remove_file(&temp);
            return Err(error);
        }
        let path = self.path.join(name);
        // Past the rename the segment has its name, and a retry would find it
        // taken: a failure from here on is never "no space" (see `is_no_space`).
        let named = |source: io::Error| {
            io::Error::other(NamingError {
                name: name.to_string(),
                source,
            })
        };
        glommio::io::rename(&temp, &path).await.map_err(|e| named(e.into()))?;
        self.sync_dir().await.map_err(named)?;
        DmaSegment::new(file, path)
    }

    async fn open(&self, name: &str) -> io::Result<DmaSegment> {
        let path = self.path.join(name);
        let file = OpenOptions::new().read(true).write(true).dma_open(&path).await?;
        DmaSegment::new(file, path)
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        glommio::io::rename(self.path.join(from), self.path.join(to)).await?;
        self.sync_dir().await
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        glommio::io::remove(self.path.join(name)).await?;
        self.sync_dir().await
    }

    fn display_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

/// A prepared segment that could not take its name (see `create_prewritten`).
#[derive(Debug, thiserror::Error)]
#[error("naming segment {name}: {source}")]
struct NamingError {
    name: String,
    source: io::Error,
}

/// Allocates `len` bytes to a new file, writes zeros over all of them and
/// syncs. An fdatasync after writing into never-written blocks costs metadata
/// journaling; into written blocks it is only the data.
async fn prewrite(file: &DmaFile, len: u64) -> io::Result<()> {
    file.pre_allocate(len, false).await?;
    // One buffer of zeros for every chunk: zeroing a fresh one per MiB was a
    // few percent of a busy store core's time.
    let zeros = Rc::new(zeroed_buffer(file, PREWRITE_CHUNK_BYTES.min(len as usize)));
    let mut offset = 0;
    while offset < len {
        let chunk = PREWRITE_CHUNK_BYTES.min((len - offset) as usize);
        let written = if chunk == zeros.len() {
            file.write_rc_at(Rc::clone(&zeros), offset).await?
        } else {
            file.write_at(zeroed_buffer(file, chunk), offset).await?
        };
        if written != chunk {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write while pre-writing",
            ));
        }
        offset += chunk as u64;
    }
    file.fdatasync().await?;
    Ok(())
}

fn zeroed_buffer(file: &DmaFile, len: usize) -> DmaBuffer {
    let mut buffer = file.alloc_dma_buffer(len);
    buffer.as_bytes_mut().fill(0);
    buffer
}

/// One segment file.
///
/// Appends are written and synced with plain blocking `pwrite` and `fdatasync`
/// on the store core, not through io_uring. io_uring cannot issue an fdatasync
/// without blocking, so it hands each one to a kernel worker thread (io-wq),
/// and waking that worker, then the parked executor, cost more than the store
/// core gains by not waiting: a lone client's puts got faster this way, and
/// loaded runs stayed the same (measured: docs/benchmarks.md, "Measurements
/// behind the engine's code"). Proposals that
/// arrive meanwhile wait in raft's log for the next batch, as they would while
/// an io_uring write was in flight. The write still returns before the
/// fdatasync is issued, so the two stay ordered.
pub struct DmaSegment {
    /// glommio's handle: the segment's preparation, and DMA-aligned buffers.
    file: DmaFile,
    /// The same file opened with O_DIRECT for the appends' syscalls.
    appender: File,
    path: PathBuf,
}

impl DmaSegment {
    fn new(file: DmaFile, path: PathBuf) -> io::Result<DmaSegment> {
        let appender = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)?;
        Ok(DmaSegment { file, appender, path })
    }
}

impl WalFile for DmaSegment {
    async fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<usize> {
        assert_eq!(offset % BLOCK_BYTES as u64, 0, "O_DIRECT writes are block aligned");
        assert_eq!(data.len() % BLOCK_BYTES, 0, "O_DIRECT writes are whole blocks");
        let mut buffer = self.file.alloc_dma_buffer(data.len());
        buffer.as_bytes_mut().copy_from_slice(data);
        loop {
            match self.appender.write_at(buffer.as_bytes(), offset) {
                // A signal arrived before anything was written: nothing happened.
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                result => return result,
            }
        }
    }

    /// Reads only happen while recovering, before anything is served, so plain
    /// blocking preads are fine; glommio's O_DIRECT reads fail on some kernels
    /// (EOPNOTSUPP through io_uring). They are O_DIRECT reads of
    /// `READ_CHUNK_BYTES` of the blocks around the range: segments are only
    /// ever written with O_DIRECT, so the page cache holds none of them, and a
    /// buffered read of a whole segment went at the pace of the kernel's
    /// readahead (a restart spent seconds reading two segments; docs/benchmarks.md).
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let block = BLOCK_BYTES as u64;
        let start = offset / block * block;
        let end = (offset + len as u64).div_ceil(block) * block;
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&self.path)?;
        let mut buffer = self.file.alloc_dma_buffer(READ_CHUNK_BYTES.min((end - start) as usize));
        let mut bytes = Vec::with_capacity((end - start) as usize);
        let mut at = start;
        while at < end {
            let chunk = &mut buffer.as_bytes_mut()[..READ_CHUNK_BYTES.min((end - at) as usize)];
            // Whole blocks inside the file: only its end can make a read short.
            reader.read_exact_at(chunk, at)?;
            bytes.extend_from_slice(chunk);
            at += chunk.len() as u64;
        }
        bytes.drain(..(offset - start) as usize);
        bytes.truncate(len);
        Ok(bytes)
    }

    /// std repeats the call only on EINTR (a signal, not an I/O failure); any
    /// other error is returned once and poisons the WAL, never retried.
    async fn sync(&self) -> io::Result<()> {
        self.appender.sync_data()
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.file.file_size().await?)
    }
}

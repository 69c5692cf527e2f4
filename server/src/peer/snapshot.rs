//! Raft snapshots between members: the leader's page file at one durable
//! commit, streamed to a follower on a connection of its own, so a large file
//! never holds up the heartbeats and appends on the message connection.
//!
//! The sender reads the pinned commit off the executor
//! (`crate::snapshot_read`: page checksums verified on the way, a bad page
//! stops the server) and writes it as `SnapshotChunk` frames, each
//! checksummed, in order, then a `SnapshotEnd` with the raft message, the
//! length and the crc32 of the whole file. The receiver writes the chunks to
//! `snap/<from>.part` (one stream per member at a time, and only while the disk
//! keeps [`SNAPSHOT_DISK_RESERVE_BYTES`] free); at the end it checks length and
//! crc32 and the raft message (`screen::check_snapshot_message`), fsyncs the
//! file, opens it as a page store to check it holds that message's index (a
//! file that does not would stop the member when installed, and at every start
//! after), renames it to `snap/snapshot-<index>.db` (`layout::received_path`),
//! fsyncs the directory, hands the message to raft and only then writes one
//! [`frame::SNAPSHOT_ACK`] byte back. A receive that fails removes its file.
//! The file's writes, fsyncs and check run off the executor. The sender reports the outcome to raft
//! (`report_snapshot`) after that byte, or as a failure after any error: the
//! leader then waits for the follower's answer to the snapshot before sending
//! more, instead of racing a follower still writing the file.

use std::cell::RefCell;
use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncReadExt;
use prost::Message as _;
use raft::eraftpb::ConfState;
use raft::eraftpb::Message;
use ringkv_datadir::layout;
use ringkv_engine::mvcc::{Mvcc, SnapshotSource};
use ringkv_proto::ringkvpb::{Membership, SnapshotChunk, SnapshotEnd};

use super::frame::{self, Hello, PeerMessage};
use super::{connect, screen, PeerEvent, PeerStream, Report, Target};
use crate::snapshot_read;

/// Bytes of the page file per chunk frame (a whole number of pages).
const CHUNK_BYTES: usize = 1 << 20;
/// How long the sender waits for the receiver to make the file durable.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// Free bytes a snapshot being received must leave on its filesystem (the
/// data directory's): a stream that would leave less is refused, so a peer
/// cannot fill the disk under the WAL and the page store. Four WAL segments.
pub const SNAPSHOT_DISK_RESERVE_BYTES: u64 = 4 * ringkv_engine::wal::SEGMENT_BYTES_DEFAULT;

const _: () = assert!(CHUNK_BYTES.is_multiple_of(ringkv_engine::page::PAGE_BYTES));

/// Streams `source` to `hello.to` and reports how it went: `SnapshotSent`.
pub(super) async fn send(
    hello: Hello,
    targets: Vec<Target>,
    dial: Option<std::sync::Arc<rustls::ClientConfig>>,
    message: Message,
    source: SnapshotSource,
    report: Report,
) {
    let txid = source.txid();
    let index = message.get_snapshot().get_metadata().index;
    let delivered = match transfer(hello, &targets, dial.as_ref(), message, source).await {
        Ok(bytes) => {
            tracing::info!(to = format_args!("{:x}", hello.to), index, bytes, "snapshot sent");
            true
        }
        Err(error) => {
            tracing::warn!(to = format_args!("{:x}", hello.to), index, %error, "sending a snapshot failed");
            false
        }
    };
    report(PeerEvent::SnapshotSent {
        to: hello.to,
        txid,
        delivered,
    });
}

async fn transfer(
    hello: Hello,
    targets: &[Target],
    dial: Option<&std::sync::Arc<rustls::ClientConfig>>,
    message: Message,
    mut source: SnapshotSource,
) -> Result<u64, String> {
    let mut stream = connect(targets, dial, hello).await.map_err(|error| error.to_string())?;
    let total = source.total_bytes();
    let mut crc = crc32fast::Hasher::new();
    let mut offset = 0u64;
    let mut out = Vec::new();
    while offset < total {
        let (returned, read) = snapshot_read::read_chunk(source, CHUNK_BYTES).await;
        source = returned;
        let data = read.map_err(|error| format!("reading the page store: {error}"))?;
        assert!(!data.is_empty(), "a source yields bytes until its total");
        crc.update(&data);
        let len = data.len() as u64;
        out.clear();
        frame::push_message(&mut out, &PeerMessage::SnapshotChunk(SnapshotChunk { offset, data }));
        frame::write_all(&mut stream, &out).await.map_err(|e| e.to_string())?;
        offset += len;
    }
    assert_eq!(offset, total);
    let end = SnapshotEnd {
        message: message.encode_to_vec(),
        total_bytes: total,
        crc32: crc.finalize(),
    };
    out.clear();
    frame::push_message(&mut out, &PeerMessage::SnapshotEnd(end));
    frame::write_all(&mut stream, &out).await.map_err(|e| e.to_string())?;
    let mut ack = [0u8; 1];
    let acked = futures_lite::future::or(async { Some(stream.read_exact(&mut ack).await) }, async {
        glommio::timer::sleep(ACK_TIMEOUT).await;
        None
    })
    .await;
    match acked {
        Some(Ok(())) if ack[0] == frame::SNAPSHOT_ACK => Ok(total),
        Some(Ok(())) => Err(format!("unexpected acknowledgement byte {}", ack[0])),
        Some(Err(error)) => Err(format!("no acknowledgement: {error}")),
        None => Err(format!("no acknowledgement within {ACK_TIMEOUT:?}")),
    }
}

/// Why receiving a snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("member {0:x} is already sending one")]
    AlreadyReceiving(u64),
    #[error("chunk at offset {offset} where {expected} was expected")]
    OutOfOrder { offset: u64, expected: u64 },
    #[error("a chunk of {0} bytes, over {CHUNK_BYTES}")]
    ChunkTooLarge(usize),
    #[error("{available} bytes free on the disk, {needed} needed to keep {SNAPSHOT_DISK_RESERVE_BYTES} free")]
    DiskFull { available: u64, needed: u64 },
    #[error("{announced} bytes announced, {received} received")]
    Length { announced: u64, received: u64 },
    #[error("checksum mismatch")]
    Checksum,
    #[error("its raft message does not decode: {0}")]
    Message(prost::DecodeError),
    #[error("its raft message: {0}")]
    Screened(#[from] screen::Dropped),
    #[error("the file is not the page store at raft index {index}: {why}")]
    NotTheStore { index: u64, why: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The members whose snapshot is being received: one stream per member.
#[derive(Debug, Default)]
pub(crate) struct Receives(RefCell<HashSet<u64>>);

/// A snapshot being received on one connection. Dropped unfinished, it
/// removes its file.
pub(crate) struct Receiving {
    file: std::fs::File,
    part: PathBuf,
    snap_dir: PathBuf,
    from: u64,
    receives: Rc<Receives>,
    next_offset: u64,
    crc: crc32fast::Hasher,
    finished: bool,
}

impl Receiving {
    /// Starts the file for a snapshot from `from`, replacing an unfinished one.
    pub(crate) fn start(snap_dir: &Path, from: u64, receives: &Rc<Receives>) -> Result<Receiving, ReceiveError> {
        if !receives.0.borrow_mut().insert(from) {
            return Err(ReceiveError::AlreadyReceiving(from));
        }
        let part = layout::receiving_path(snap_dir, from);
        let file = std::fs::File::create(&part).map_err(|source| {
            receives.0.borrow_mut().remove(&from);
            ReceiveError::Io {
                what: "creating",
                path: part.clone(),
                source,
            }
        })?;
        Ok(Receiving {
            file,
            part,
            snap_dir: snap_dir.to_path_buf(),
            from,
            receives: Rc::clone(receives),
            next_offset: 0,
            crc: crc32fast::Hasher::new(),
            finished: false,
        })
    }

    /// Writes one chunk; chunks must come in order without gaps, and leave the
    /// disk its reserve.
    pub(crate) async fn write(&mut self, chunk: SnapshotChunk) -> Result<(), ReceiveError> {
        if chunk.offset != self.next_offset {
            return Err(ReceiveError::OutOfOrder {
                offset: chunk.offset,
                expected: self.next_offset,
            });
        }
        if chunk.data.len() > CHUNK_BYTES {
            return Err(ReceiveError::ChunkTooLarge(chunk.data.len()));
        }
        let needed = chunk.data.len() as u64 + SNAPSHOT_DISK_RESERVE_BYTES;
        let available =
            available_bytes(&self.snap_dir).map_err(|source| self.io_error("measuring the disk of", source))?;
        if available < needed {
            return Err(ReceiveError::DiskFull { available, needed });
        }
        self.crc.update(&chunk.data);
        self.next_offset += chunk.data.len() as u64;
        let file = self
            .file
            .try_clone()
            .map_err(|source| self.io_error("writing", source))?;
        let written = glommio::executor()
            .spawn_blocking(move || file.write_all_at(&chunk.data, chunk.offset))
            .await;
        written.map_err(|source| self.io_error("writing", source))
    }

    /// Checks the end, the raft message (a MsgSnapshot from `from` to `to`) and
    /// the file, makes the file durable under its final name and returns the
    /// message and that name.
    pub(crate) async fn finish(
        mut self,
        end: SnapshotEnd,
        from: u64,
        to: u64,
    ) -> Result<(Message, PathBuf), ReceiveError> {
        if end.total_bytes != self.next_offset {
            return Err(ReceiveError::Length {
                announced: end.total_bytes,
                received: self.next_offset,
            });
        }
        if end.crc32 != self.crc.clone().finalize() {
            return Err(ReceiveError::Checksum);
        }
        let message = Message::decode(end.message.as_slice()).map_err(ReceiveError::Message)?;
        screen::check_snapshot_message(to, &message)?;
        if message.from != from {
            let misaddressed = screen::Dropped::Misaddressed {
                from: message.from,
                to: message.to,
            };
            return Err(misaddressed.into());
        }
        let index = message.get_snapshot().get_metadata().index;
        let path = layout::received_path(&self.snap_dir, index);
        let (part, done, dir) = (self.part.clone(), path.clone(), self.snap_dir.clone());
        let file = self
            .file
            .try_clone()
            .map_err(|source| self.io_error("saving", source))?;
        glommio::executor()
            .spawn_blocking(move || save(&file, &part, index, &done, &dir))
            .await?;
        self.finished = true;
        Ok((message, path))
    }

    fn io_error(&self, what: &'static str, source: std::io::Error) -> ReceiveError {
        ReceiveError::Io {
            what,
            path: self.part.clone(),
            source,
        }
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.receives.0.borrow_mut().remove(&self.from);
        if self.finished {
            return;
        }
        match std::fs::remove_file(&self.part) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(%error, path = %self.part.display(), "cannot remove an unfinished snapshot");
            }
            _ => {}
        }
    }
}

/// Makes the received file durable, checks it and gives it its final name.
fn save(file: &std::fs::File, part: &Path, index: u64, done: &Path, dir: &Path) -> Result<(), ReceiveError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ReceiveError::Io { what, path, source }
    };
    file.sync_all().map_err(io("syncing", part))?;
    // The file is a peer's: a page store that makes the engine panic rather
    // than return an error is refused like any other bad file.
    let checked = std::panic::catch_unwind(|| check_store(part, index));
    checked.unwrap_or_else(|_| {
        Err(ReceiveError::NotTheStore {
            index,
            why: "opening it panicked".to_string(),
        })
    })?;
    std::fs::rename(part, done).map_err(io("renaming", part))?;
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io("syncing", dir))
}

/// Checks that the page store at `path` holds raft index `index` and what
/// installing it reads: the membership, and the raft configuration if stored.
/// Opening it reads and verifies every page of the revision table.
fn check_store(path: &Path, index: u64) -> Result<(), ReceiveError> {
    let not_the_store = |why: String| ReceiveError::NotTheStore { index, why };
    let mvcc = Mvcc::open(path).map_err(|error| not_the_store(error.to_string()))?;
    if mvcc.applied_index() != index {
        return Err(not_the_store(format!("it holds index {}", mvcc.applied_index())));
    }
    let membership = mvcc
        .membership()
        .ok_or_else(|| not_the_store("no membership".to_string()))?;
    match Membership::decode(membership) {
        Ok(membership) if !membership.members.is_empty() => {}
        Ok(_) => return Err(not_the_store("a membership without members".to_string())),
        Err(error) => return Err(not_the_store(format!("the membership: {error}"))),
    }
    if let Some(conf_state) = mvcc.conf_state() {
        ConfState::decode(conf_state).map_err(|error| not_the_store(format!("the raft configuration: {error}")))?;
    }
    Ok(())
}

/// Bytes an unprivileged process may still write on `dir`'s filesystem.
fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `stats` is a statvfs for it to fill.
    if unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs succeeded, so it filled `stats`.
    let stats = unsafe { stats.assume_init() };
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Acknowledges a received snapshot to its sender.
pub(super) async fn acknowledge(stream: &mut PeerStream) -> Result<(), String> {
    frame::write_all(stream, &[frame::SNAPSHOT_ACK])
        .await
        .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    /// A page store at `path` holding raft index `index`, with a membership.
    fn store(path: &Path, index: u64, membership: bool) {
        let mut mvcc = Mvcc::open(path).unwrap();
        mvcc.set_applied_index(index);
        if membership {
            let member = ringkv_proto::ringkvpb::Member {
                id: 1,
                ..Default::default()
            };
            let record = Membership {
                members: vec![member],
                ..Default::default()
            };
            mvcc.set_membership(record.encode_to_vec());
        }
        mvcc.commit().unwrap();
    }

    #[test]
    fn a_received_file_must_be_the_store_its_message_names() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.db");
        store(&good, 7, true);
        assert!(check_store(&good, 7).is_ok());
        assert!(matches!(check_store(&good, 8), Err(ReceiveError::NotTheStore { .. })));
        let bare = dir.path().join("bare.db");
        store(&bare, 7, false);
        assert!(matches!(check_store(&bare, 7), Err(ReceiveError::NotTheStore { .. })));
        let garbage = dir.path().join("garbage.db");
        let bytes: Vec<u8> = (0..3 * ringkv_engine::page::PAGE_BYTES)
            .map(|i| (i * 7 + 3) as u8)
            .collect();
        std::fs::write(&garbage, bytes).unwrap();
        assert!(matches!(
            check_store(&garbage, 7),
            Err(ReceiveError::NotTheStore { .. })
        ));
    }

    #[test]
    fn one_stream_per_member_whose_chunks_come_in_order_and_whose_file_goes_if_it_fails() {
        let dir = tempfile::tempdir().unwrap();
        let receives = Rc::new(Receives::default());
        let mut first = Receiving::start(dir.path(), 2, &receives).unwrap();
        assert!(matches!(
            Receiving::start(dir.path(), 2, &receives),
            Err(ReceiveError::AlreadyReceiving(2))
        ));
        let other = Receiving::start(dir.path(), 3, &receives).unwrap();
        let late = SnapshotChunk {
            offset: 4096,
            data: vec![1; 4096],
        };
        assert!(matches!(
            block_on(first.write(late)),
            Err(ReceiveError::OutOfOrder { .. })
        ));
        let huge = SnapshotChunk {
            offset: 0,
            data: vec![1; CHUNK_BYTES + 1],
        };
        assert!(matches!(
            block_on(first.write(huge)),
            Err(ReceiveError::ChunkTooLarge(_))
        ));
        let part = first.part.clone();
        assert!(part.exists());
        drop(first);
        assert!(!part.exists(), "an unfinished snapshot's file is removed");
        assert!(Receiving::start(dir.path(), 2, &receives).is_ok());
        drop(other);
    }

    #[test]
    fn the_disk_the_snapshots_go_to_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_bytes(dir.path()).unwrap() > 0);
        assert!(available_bytes(&dir.path().join("missing")).is_err());
    }
}

//! Raft snapshots between members: the leader's page file at one durable
//! commit, streamed to a follower on a connection of its own, so a large file
//! never holds up the heartbeats and appends on the message connection.
//!
//! The sender reads the pinned commit off the executor
//! (`store::snapshot_read`: page checksums verified on the way, a bad page
//! stops the server) and writes it as `SnapshotChunk` frames, each
//! checksummed, in order, then a `SnapshotEnd` with the raft message, the
//! length and the crc32 of the whole file. The receiver writes the chunks to
//! `snap/<from>.part`; at the end it checks length and crc32, fsyncs the file,
//! renames it to `snap/snapshot-<index>.db` (see [`received_path`]), fsyncs the
//! directory, hands the message to raft and only then writes one
//! [`frame::SNAPSHOT_ACK`] byte back. The sender reports the outcome to raft
//! (`report_snapshot`) after that byte, or as a failure after any error: the
//! leader then waits for the follower's answer to the snapshot before sending
//! more, instead of racing a follower still writing the file.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;
use prost::Message as _;
use raft::eraftpb::Message;
use ringkv_engine::mvcc::SnapshotSource;
use ringkv_proto::ringkvpb::{SnapshotChunk, SnapshotEnd};

use super::frame::{self, Hello, PeerMessage};
use super::{connect, PeerEvent, Report};
use crate::store::snapshot_read;

/// Bytes of the page file per chunk frame (a whole number of pages).
const CHUNK_BYTES: usize = 1 << 20;
/// How long the sender waits for the receiver to make the file durable.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

const _: () = assert!(CHUNK_BYTES.is_multiple_of(ringkv_engine::page::PAGE_BYTES));

/// Where a complete snapshot for raft index `index` waits to be installed.
pub fn received_path(snap_dir: &Path, index: u64) -> PathBuf {
    snap_dir.join(format!("snapshot-{index:016x}.db"))
}

/// The raft index of a complete snapshot file named by [`received_path`].
pub fn received_index(file_name: &str) -> Option<u64> {
    let hex = file_name.strip_prefix("snapshot-")?.strip_suffix(".db")?;
    u64::from_str_radix(hex, 16).ok()
}

/// Streams `source` to `hello.to` and reports how it went: `SnapshotSent`.
pub(super) async fn send(hello: Hello, addrs: Vec<String>, message: Message, source: SnapshotSource, report: Report) {
    let txid = source.txid();
    let index = message.get_snapshot().get_metadata().index;
    let delivered = match transfer(hello, &addrs, message, source).await {
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

async fn transfer(hello: Hello, addrs: &[String], message: Message, mut source: SnapshotSource) -> Result<u64, String> {
    let mut stream = connect(addrs, hello).await.ok_or("cannot connect")?;
    let total = source.total_bytes();
    let mut crc = crc32fast::Hasher::new();
    let mut offset = 0u64;
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    while offset < total {
        let (returned, read) = snapshot_read::read_chunk(source, CHUNK_BYTES).await;
        source = returned;
        let data = read.map_err(|error| format!("reading the page store: {error}"))?;
        assert!(!data.is_empty(), "a source yields bytes until its total");
        crc.update(&data);
        let len = data.len() as u64;
        out.clear();
        frame::push_message(
            &mut out,
            &mut scratch,
            &PeerMessage::SnapshotChunk(SnapshotChunk { offset, data }),
        );
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
    frame::push_message(&mut out, &mut scratch, &PeerMessage::SnapshotEnd(end));
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

/// A snapshot being received on one connection.
pub(super) struct Receiving {
    file: std::fs::File,
    part: PathBuf,
    next_offset: u64,
    crc: crc32fast::Hasher,
}

impl Receiving {
    /// Starts the file for a snapshot from `from`, replacing an unfinished one.
    pub(super) fn start(snap_dir: &Path, from: u64) -> Result<Receiving, String> {
        let part = snap_dir.join(format!("{from:016x}.part"));
        let file = std::fs::File::create(&part).map_err(|error| format!("creating {}: {error}", part.display()))?;
        Ok(Receiving {
            file,
            part,
            next_offset: 0,
            crc: crc32fast::Hasher::new(),
        })
    }

    /// Writes one chunk; chunks must come in order without gaps.
    pub(super) async fn write(&mut self, chunk: SnapshotChunk) -> Result<(), String> {
        if chunk.offset != self.next_offset {
            return Err(format!(
                "snapshot chunk at offset {} where {} was expected",
                chunk.offset, self.next_offset
            ));
        }
        self.crc.update(&chunk.data);
        self.next_offset += chunk.data.len() as u64;
        let file = self.file.try_clone().map_err(|error| error.to_string())?;
        glommio::executor()
            .spawn_blocking(move || file.write_all_at(&chunk.data, chunk.offset))
            .await
            .map_err(|error| format!("writing a snapshot chunk: {error}"))
    }

    /// Checks the end, makes the file durable under its final name and returns
    /// the raft message it belongs to and that name.
    pub(super) async fn finish(self, end: SnapshotEnd, snap_dir: &Path) -> Result<(Message, PathBuf), String> {
        if end.total_bytes != self.next_offset {
            return Err(format!(
                "snapshot of {} bytes announced, {} received",
                end.total_bytes, self.next_offset
            ));
        }
        if end.crc32 != self.crc.finalize() {
            return Err("snapshot checksum mismatch".to_string());
        }
        let message = Message::decode(end.message.as_slice()).map_err(|error| error.to_string())?;
        let index = message.get_snapshot().get_metadata().index;
        let path = received_path(snap_dir, index);
        let (part, file, dir) = (self.part, self.file, snap_dir.to_path_buf());
        let done = path.clone();
        glommio::executor()
            .spawn_blocking(move || -> std::io::Result<()> {
                file.sync_all()?;
                std::fs::rename(&part, &done)?;
                std::fs::File::open(&dir)?.sync_all()
            })
            .await
            .map_err(|error| format!("saving the snapshot: {error}"))?;
        Ok((message, path))
    }
}

/// Acknowledges a received snapshot to its sender.
pub(super) async fn acknowledge(stream: &mut TcpStream) -> Result<(), String> {
    frame::write_all(stream, &[frame::SNAPSHOT_ACK])
        .await
        .map_err(|error| error.to_string())
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
}

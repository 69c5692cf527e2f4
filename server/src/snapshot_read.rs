//! Reading a pinned page-store commit (`SnapshotSource`) off the executor, for
//! a follower behind the leader's log (`peer::snapshot`): raft snapshots
//! between members are the page file as it is. (Maintenance.Snapshot writes
//! etcd's format instead: `client::snapshot`.)

use ringkv_engine::mvcc::{PageError, SnapshotSource};

use crate::fatal::fatal;

/// The next at most `max_bytes` (a whole number of pages) of the copy, read on
/// a blocking thread; the source comes back for the next call. A page that
/// fails its checksum is corruption: the server stops, as the store core would
/// on reading it. An I/O error fails only the caller's stream.
pub async fn read_chunk(mut source: SnapshotSource, max_bytes: usize) -> (SnapshotSource, Result<Vec<u8>, PageError>) {
    let (source, read) = glommio::executor()
        .spawn_blocking(move || {
            let mut buf = vec![0; max_bytes];
            let read = source.read(&mut buf).map(|n| {
                buf.truncate(n);
                buf
            });
            (source, read)
        })
        .await;
    if let Err(error @ PageError::Corrupt { .. }) = &read {
        fatal(&format!("reading a snapshot: {error}"));
    }
    (source, read)
}

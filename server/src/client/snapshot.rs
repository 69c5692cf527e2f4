//! Maintenance.Snapshot on a client core, in etcd's format: the store core
//! pins a durable commit (see `store::core::space`) and hands it over; this
//! core writes it on a blocking thread as etcd 3.5's backend file (bbolt,
//! `ringkv_etcdfile::export`) into an unnamed spool file in the data
//! directory, releases the pin, then streams the spool in etcd's 32 KiB blobs
//! with `remaining_bytes`, and sends the sha256 of everything sent as a last
//! blob of 32 bytes, as etcd does (`etcdctl snapshot restore` checks it). So
//! `etcdctl snapshot status` and `restore`, and etcdutl, read what ringkv
//! streams, and memory stays bounded whatever the store's size. Raft snapshots
//! between members keep the page-file format (`peer::snapshot`).

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use ringkv_engine::mvcc::{MvccError, PageError, SnapshotView};
use ringkv_etcdfile::export::{export, ExportError, ExportInfo};
use ringkv_proto::etcdserverpb as pb;
use sha2::{Digest, Sha256};

use super::store_client::StoreClient;
use crate::fatal::fatal;
use crate::grpc::{self, Code, RequestStream, ResponseSink, Status};
use crate::store::messages::{CallAuth, ClientSnapshot, Request, Response};

/// etcd's `snapshotSendBufferSize`: bytes of the copy per message.
const BLOB_BYTES: usize = 32 * 1024;
/// Bytes read from the spool per trip to the blocking thread.
const READ_BYTES: usize = 1 << 20;
/// The storage version etcd 3.5 sends with each message.
const STORAGE_VERSION: &str = "3.5.0";

const _: () = assert!(READ_BYTES.is_multiple_of(BLOB_BYTES));

pub async fn serve(
    store: &Rc<StoreClient>,
    mut requests: RequestStream,
    mut responses: ResponseSink,
    auth: CallAuth,
) -> Result<(), Status> {
    match requests.next().await {
        Some(request) => {
            let _: pb::SnapshotRequest = grpc::decode(request?)?;
        }
        None => return Err(Status::new(Code::Internal, "grpc: the client sent no request")),
    }
    // A learner serves Snapshot too (etcd's stream interceptor lets it
    // through); with auth on, only to root.
    let snapshot = match store
        .call_rpc_as(Request::Snapshot, false, auth)
        .await
        .map_err(Status::from)?
    {
        Response::Snapshot(snapshot) => *snapshot,
        other => unreachable!("Snapshot is answered in kind, not with {other:?}"),
    };
    let pin = Pin {
        store: Rc::clone(store),
        txid: snapshot.source.txid(),
    };
    // A task of its own holds the pin until the blocking thread is done with
    // the pages, also when the client goes away and this call is dropped
    // (the thread cannot be stopped: released early, its pages could be
    // rewritten under it). Once the copy is in the spool, the commit need not
    // stay pinned while it streams.
    let (sender, receiver) = futures_channel::oneshot::channel();
    glommio::spawn_local(async move {
        let spooled = spool(snapshot).await;
        drop(pin);
        let _ = sender.send(spooled);
    })
    .detach();
    let (spool, len) = receiver
        .await
        .map_err(|_| Status::new(Code::Internal, "the snapshot's writer went away"))??;
    stream(spool, len, &mut responses).await
}

/// Writes the pinned commit into a new unnamed file in etcd's format, on a
/// blocking thread; returns the file and its length.
async fn spool(snapshot: ClientSnapshot) -> Result<(Arc<File>, u64), Status> {
    let info = ExportInfo {
        term: snapshot.term,
        cluster_version: crate::version::cluster_version().to_string(),
    };
    let written = glommio::executor()
        .spawn_blocking(move || -> Result<(File, u64), ExportError> {
            let spool = open_spool(&snapshot.spool_dir)?;
            let view = SnapshotView::open(&snapshot.source)?;
            let spool = export(&view, spool, &info)?;
            let len = spool.metadata()?.len();
            Ok((spool, len))
        })
        .await;
    match written {
        Ok((spool, len)) => Ok((Arc::new(spool), len)),
        Err(ExportError::Store(MvccError::Storage(error @ PageError::Corrupt { .. }))) => {
            fatal(&format!("reading a snapshot: {error}"))
        }
        Err(ExportError::Store(error @ MvccError::Corrupt(_))) => fatal(&format!("reading a snapshot: {error}")),
        Err(error) => Err(Status::new(
            Code::Internal,
            format!("writing the snapshot failed: {error}"),
        )),
    }
}

/// A file in `dir` without a name (O_TMPFILE): the kernel frees it when it
/// is closed, however the process ends.
fn open_spool(dir: &Path) -> std::io::Result<File> {
    std::fs::create_dir_all(dir)?;
    File::options()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
}

async fn stream(spool: Arc<File>, len: u64, responses: &mut ResponseSink) -> Result<(), Status> {
    let mut sent = 0u64;
    let mut digest = Sha256::new();
    while sent < len {
        let want = (len - sent).min(READ_BYTES as u64) as usize;
        let file = Arc::clone(&spool);
        let chunk = glommio::executor()
            .spawn_blocking(move || {
                let mut buf = vec![0; want];
                file.read_exact_at(&mut buf, sent).map(|()| buf)
            })
            .await
            .map_err(|error| Status::new(Code::Internal, format!("reading the snapshot failed: {error}")))?;
        for blob in chunk.chunks(BLOB_BYTES) {
            digest.update(blob);
            sent += blob.len() as u64;
            let message = pb::SnapshotResponse {
                header: None,
                remaining_bytes: len - sent,
                blob: blob.to_vec(),
                version: STORAGE_VERSION.to_string(),
            };
            responses.send(grpc::encode(&message)).await?;
        }
    }
    let trailer = pb::SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: digest.finalize().to_vec(),
        version: STORAGE_VERSION.to_string(),
    };
    responses.send(grpc::encode(&trailer)).await
}

/// Holds the store core's pin on the copy; dropping it releases the pin.
struct Pin {
    store: Rc<StoreClient>,
    txid: u64,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let (store, txid) = (Rc::clone(&self.store), self.txid);
        glommio::spawn_local(async move {
            // Only fails when the store core is gone, and the pin with it.
            let _ = store.call(Request::SnapshotRelease(txid)).await;
        })
        .detach();
    }
}

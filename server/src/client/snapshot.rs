//! Maintenance.Snapshot on a client core: the store core pins a durable commit
//! (see `store::core::space`) and hands over its `SnapshotSource`; this core
//! reads the copy on a blocking thread, streams it in etcd's 32 KiB blobs with
//! `remaining_bytes`, then sends the sha256 of everything sent as a last blob of
//! 32 bytes, as etcd does (`etcdctl snapshot restore` checks it). The pin is
//! released when the stream ends, however it ends.

use std::rc::Rc;

use ringkv_engine::mvcc::SnapshotSource;
use ringkv_proto::etcdserverpb as pb;
use sha2::{Digest, Sha256};

use super::store_client::StoreClient;
use crate::grpc::{self, Code, RequestStream, ResponseSink, Status};
use crate::snapshot_read;
use crate::store::messages::{CallAuth, Request, Response};

/// etcd's `snapshotSendBufferSize`: bytes of the copy per message.
const BLOB_BYTES: usize = 32 * 1024;
/// Bytes read from the page file per trip to the blocking thread.
const READ_BYTES: usize = 1 << 20;
/// The storage version etcd 3.5 sends with each message.
const STORAGE_VERSION: &str = "3.5.0";

const _: () =
    assert!(READ_BYTES.is_multiple_of(BLOB_BYTES) && READ_BYTES.is_multiple_of(ringkv_engine::page::PAGE_BYTES));

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
    let source = match store
        .call_rpc_as(Request::Snapshot, false, auth)
        .await
        .map_err(Status::from)?
    {
        Response::Snapshot(source) => source,
        other => unreachable!("Snapshot is answered in kind, not with {other:?}"),
    };
    let pin = Pin {
        store: Rc::clone(store),
        txid: source.txid(),
    };
    let result = stream(*source, &mut responses).await;
    drop(pin);
    result
}

async fn stream(mut source: SnapshotSource, responses: &mut ResponseSink) -> Result<(), Status> {
    let total = source.total_bytes();
    let mut sent = 0u64;
    let mut digest = Sha256::new();
    while sent < total {
        let (returned, read) = snapshot_read::read_chunk(source, READ_BYTES).await;
        source = returned;
        let chunk =
            read.map_err(|error| Status::new(Code::Internal, format!("reading the snapshot failed: {error}")))?;
        assert!(!chunk.is_empty(), "the copy has {} more bytes", total - sent);
        for blob in chunk.chunks(BLOB_BYTES) {
            digest.update(blob);
            sent += blob.len() as u64;
            let message = pb::SnapshotResponse {
                header: None,
                remaining_bytes: total - sent,
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

/// Holds the store core's pin on the copy; dropping it releases the pin, also
/// when the client goes away mid-stream and the call's future is dropped.
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

//! Untimed bulk requests before (and after) a measured run: writing a key space,
//! creating objects, granting and revoking leases.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::channel::Channel;
use ringkv_proto::etcdserverpb::PutRequest;
use tonic::Status;

use super::kv_client;
use crate::keys::KeySpace;
use crate::progress::ProgressMode;
use crate::BenchError;

/// Requests in flight while populating, spread over the run's connections.
pub const POPULATE_IN_FLIGHT: usize = 64;

/// Puts every key of `keys` with `value`, stopping at the first failure.
pub async fn populate(
    channels: &[Channel],
    keys: KeySpace,
    value: Arc<Vec<u8>>,
    progress: ProgressMode,
) -> Result<(), BenchError> {
    progress.note(&format!(
        "populating {} keys of {} B values (not measured)",
        crate::report::fmt_count(keys.size()),
        value.len()
    ));
    for_each_index(channels, keys.size(), move |index, channel| {
        let request = PutRequest {
            key: keys.key(index),
            value: value.to_vec(),
            ..Default::default()
        };
        async move { kv_client(channel).put(request).await.map(|_| ()) }
    })
    .await
    .map_err(|(index, status)| {
        BenchError::Prepare(format!(
            "populating key {index}: {:?}: {}",
            status.code(),
            status.message()
        ))
    })
}

/// Runs `op(index, channel)` for every index in `0..count`, POPULATE_IN_FLIGHT at
/// a time spread over `channels`; stops at the first failure and returns it
/// with its index.
// tonic::Status is large; it is the error type of every call on this path anyway.
#[allow(clippy::result_large_err)]
pub async fn for_each_index<F, Fut>(channels: &[Channel], count: u64, op: F) -> Result<(), (u64, Status)>
where
    F: Fn(u64, Channel) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send,
{
    assert!(!channels.is_empty(), "a run has at least one connection");
    let next = Arc::new(AtomicU64::new(0));
    let op = Arc::new(op);
    let workers: Vec<_> = (0..POPULATE_IN_FLIGHT)
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            let next = Arc::clone(&next);
            let op = Arc::clone(&op);
            tokio::spawn(async move {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= count {
                        return Ok(());
                    }
                    if let Err(status) = op(index, channel.clone()).await {
                        // Make the other workers stop too.
                        next.store(u64::MAX / 2, Ordering::Relaxed);
                        return Err((index, status));
                    }
                }
            })
        })
        .collect();
    let mut result = Ok(());
    for worker in workers {
        let outcome = worker
            .await
            .unwrap_or_else(|error| Err((0, Status::internal(format!("a worker failed: {error}")))));
        if result.is_ok() {
            result = outcome;
        }
    }
    result
}

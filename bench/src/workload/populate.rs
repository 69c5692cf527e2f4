//! Writing a key space before a measured run (untimed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ringkv_proto::etcdserverpb::PutRequest;
use tonic::transport::Channel;

use super::kv_client;
use crate::keys::KeySpace;
use crate::progress::ProgressMode;
use crate::BenchError;

/// Puts in flight while populating, spread over the run's connections.
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
    let next = Arc::new(AtomicU64::new(0));
    let writers = (0..POPULATE_IN_FLIGHT).map(|i| {
        let mut kv = kv_client(channels[i % channels.len()].clone());
        let next = Arc::clone(&next);
        let value = Arc::clone(&value);
        tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= keys.size() {
                    return Ok(());
                }
                let request = PutRequest {
                    key: keys.key(index),
                    value: value.to_vec(),
                    ..Default::default()
                };
                if let Err(status) = kv.put(request).await {
                    // Make the other writers stop too.
                    next.store(u64::MAX / 2, Ordering::Relaxed);
                    return Err(BenchError::Prepare(format!(
                        "populating key {index}: {:?}: {}",
                        status.code(),
                        status.message()
                    )));
                }
            }
        })
    });
    let writers: Vec<_> = writers.collect();
    let mut result = Ok(());
    for writer in writers {
        let outcome = writer.await.map_err(|e| BenchError::Internal(e.to_string()))?;
        if result.is_ok() {
            result = outcome;
        }
    }
    result
}

//! The hostile-input suite: whatever a client or a peer sends, the member
//! answers or drops it and keeps serving everyone else, loses no acknowledged
//! write, and restarts cleanly (docs/threat-model.md). One module per way in;
//! every test asserts that the members still serve another client afterwards.
//!
//! Every wait is bounded by [`WAIT`] or the support module's own bounds.

mod client;
mod disk_full;
mod peer;
mod poison;
mod start;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ringkv_proto::etcdserverpb as pb;

use crate::support;

/// The longest any single step of these tests may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// A fresh client puts a key no one else uses and reads it back from
/// `endpoint`: the member still serves other clients.
pub async fn assert_serves(endpoint: &str) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let key = format!("still-serving/{}", NEXT.fetch_add(1, Ordering::Relaxed)).into_bytes();
    let work = async {
        let mut client = support::kv_client(endpoint).await;
        let put = pb::PutRequest {
            key: key.clone(),
            value: b"yes".to_vec(),
            ..Default::default()
        };
        client.put(put).await.expect("a second client's put works");
        let get = pb::RangeRequest {
            key: key.clone(),
            ..Default::default()
        };
        client
            .range(get)
            .await
            .expect("a second client's get works")
            .into_inner()
    };
    let response = tokio::time::timeout(WAIT, work)
        .await
        .unwrap_or_else(|_| panic!("{endpoint} stopped serving other clients"));
    assert_eq!(response.kvs.len(), 1);
    assert_eq!(response.kvs[0].value, b"yes");
}

/// The value of `key` read linearizably from `endpoint`, or None.
pub async fn value_at(endpoint: &str, key: &str) -> Option<Vec<u8>> {
    tokio::time::timeout(WAIT, support::get(endpoint, key))
        .await
        .unwrap_or_else(|_| panic!("{endpoint} did not answer a get"))
}

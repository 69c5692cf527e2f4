//! Crash test: a real `ringkv` under concurrent writes is killed with SIGKILL at
//! random moments and restarted, many rounds. After every restart:
//! - every acknowledged write is present, at the revision it was acknowledged with;
//! - revisions have no gaps and no reuse: each write creates a new key, so the keys'
//!   mod revisions are exactly 2..=current revision.
//!
//! Every other round commits the page store every 5 ms instead of every 100 ms, so
//! kills also land in the middle of page-store commits and WAL segment releases.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_proto::etcdserverpb as pb;

use crate::support;

const ROUNDS: usize = 30;
const WRITERS: usize = 8;
const PREFIX: &[u8] = b"w/";

/// Key -> the revision its put was acknowledged with.
type Acknowledged = Arc<Mutex<BTreeMap<Vec<u8>, i64>>>;

async fn write_until_failure(endpoint: String, writer: usize, round: usize, acked: Acknowledged) {
    // The server may already be gone: then this writer has nothing to do.
    let Some(mut client) = support::kv_client_once(&endpoint).await else {
        return;
    };
    for seq in 0u64.. {
        let key = format!("w/{round:03}/{writer:02}/{seq:08}").into_bytes();
        // Some values span several WAL blocks.
        let value = vec![b'v'; if seq % 17 == 0 { 9000 } else { 100 }];
        let request = pb::PutRequest {
            key: key.clone(),
            value,
            ..Default::default()
        };
        match client.put(request).await {
            Ok(response) => {
                let revision = response.into_inner().header.expect("a header").revision;
                acked.lock().unwrap().insert(key, revision);
            }
            // Killed: this write is indeterminate, and so is everything after.
            Err(_) => return,
        }
    }
}

/// Checks durability and revision continuity; returns the current revision.
async fn verify(endpoint: &str, acked: &BTreeMap<Vec<u8>, i64>) -> i64 {
    let mut client = support::kv_client(endpoint).await;
    let response = client
        .range(pb::RangeRequest {
            key: PREFIX.to_vec(),
            range_end: b"w0".to_vec(),
            keys_only: true,
            ..Default::default()
        })
        .await
        .expect("range after restart")
        .into_inner();
    let current = response.header.expect("a header").revision;
    let present: BTreeMap<Vec<u8>, i64> = response
        .kvs
        .into_iter()
        .map(|kv| {
            assert_eq!(kv.version, 1, "every key is written once");
            (kv.key, kv.mod_revision)
        })
        .collect();
    for (key, revision) in acked {
        assert_eq!(
            present.get(key),
            Some(revision),
            "acknowledged write {} lost or moved",
            String::from_utf8_lossy(key)
        );
    }
    let mut revisions: Vec<i64> = present.values().copied().collect();
    revisions.sort_unstable();
    let expected: Vec<i64> = (2..=current).collect();
    assert_eq!(revisions, expected, "revisions 2..={current} each used exactly once");
    current
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_at_any_moment() {
    let data_dir = tempfile::tempdir().unwrap();
    let acked: Acknowledged = Arc::default();
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut last_revision = 1;
    for round in 0..ROUNDS {
        let interval = if round % 2 == 0 { "100ms" } else { "5ms" };
        let server = support::Ringkv::start(data_dir.path(), &["--backend-batch-interval", interval]);
        let snapshot = acked.lock().unwrap().clone();
        let revision = verify(&server.endpoint(), &snapshot).await;
        assert!(revision >= last_revision, "revision went back after a restart");
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                tokio::spawn(write_until_failure(
                    server.endpoint(),
                    writer,
                    round,
                    Arc::clone(&acked),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..600))).await;
        server.kill();
        for writer in writers {
            tokio::time::timeout(Duration::from_secs(60), writer)
                .await
                .expect("a writer stops once the server is gone")
                .unwrap();
        }
        last_revision = revision;
    }
    let server = support::Ringkv::start(data_dir.path(), &[]);
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > ROUNDS * WRITERS,
        "the rounds acknowledged writes ({})",
        acked.len()
    );
    verify(&server.endpoint(), &acked).await;
}

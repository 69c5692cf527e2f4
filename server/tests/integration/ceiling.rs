//! `ringkv-ceiling`, the do-nothing endpoint `ringkv-bench ceiling` measures
//! against: it answers KV calls at once, with revisions that go up per write,
//! and everything else with UNIMPLEMENTED.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::etcdserverpb::lease_client::LeaseClient;

use crate::support::{channel, free_port, kv_client_once, put_request, KillOnDrop};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ceiling_answers_kv_calls_and_nothing_else() {
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_ringkv-ceiling"))
        .args(["--listen-client-urls", &endpoint])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ringkv-ceiling starts");
    let _guard = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut kv = loop {
        if let Some(kv) = kv_client_once(&endpoint).await {
            break kv;
        }
        assert!(Instant::now() < deadline, "ringkv-ceiling did not listen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut revisions = Vec::new();
    for key in ["a", "b"] {
        let put = kv.put(put_request(key, "v")).await.expect("put").into_inner();
        revisions.push(put.header.unwrap().revision);
    }
    let (first, second) = (revisions[0], revisions[1]);
    assert!(second > first, "writes advance the revision ({first}, {second})");
    let range = kv
        .range(pb::RangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert!(range.kvs.is_empty(), "nothing is stored");
    let mut leases = LeaseClient::new(channel(&endpoint).await);
    let status = leases
        .lease_grant(pb::LeaseGrantRequest { ttl: 10, id: 0 })
        .await
        .expect_err("not served");
    assert_eq!(status.code(), tonic::Code::Unimplemented);
}

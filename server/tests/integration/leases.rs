//! Leases against real `ringkv` processes: grant, attach, keep alive, time to
//! live, revoke, expiry, and a restart. TTLs are etcd's minimum (2 s) where expiry
//! matters; every wait is bounded, and timing is only asserted as "eventually,
//! within a bound".

use std::time::{Duration, Instant};

use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::lease_client::LeaseClient;
use tonic::transport::Channel;

use crate::support::{self, Ringkv};

/// Longest wait for an expired lease's keys to disappear: TTL 2 s, plus the
/// expiry check and the revoke's trip through raft, with a wide margin.
const EXPIRY_BOUND: Duration = Duration::from_secs(15);

async fn clients(endpoint: &str) -> (KvClient<Channel>, LeaseClient<Channel>) {
    let kv = support::kv_client(endpoint).await;
    let channel = Channel::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    (kv, LeaseClient::new(channel))
}

async fn grant(lease: &mut LeaseClient<Channel>, id: i64, ttl: i64) -> pb::LeaseGrantResponse {
    lease
        .lease_grant(pb::LeaseGrantRequest { ttl, id })
        .await
        .unwrap()
        .into_inner()
}

async fn put(kv: &mut KvClient<Channel>, key: &str, lease: i64) -> Result<i64, tonic::Status> {
    let request = pb::PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        lease,
        ..Default::default()
    };
    Ok(kv.put(request).await?.into_inner().header.unwrap().revision)
}

async fn time_to_live(lease: &mut LeaseClient<Channel>, id: i64) -> pb::LeaseTimeToLiveResponse {
    lease
        .lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys: true })
        .await
        .unwrap()
        .into_inner()
}

/// The keys under `prefix` and the store's current revision.
async fn keys(kv: &mut KvClient<Channel>, prefix: &str) -> (Vec<String>, i64) {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let response = kv
        .range(pb::RangeRequest {
            key: prefix.into(),
            range_end: end,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let keys = response
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect();
    (keys, response.header.unwrap().revision)
}

/// Waits (bounded) until no key under `prefix` is left; returns the revision then.
async fn await_keys_gone(kv: &mut KvClient<Channel>, prefix: &str) -> i64 {
    let deadline = Instant::now() + EXPIRY_BOUND;
    loop {
        let (left, revision) = keys(kv, prefix).await;
        if left.is_empty() {
            return revision;
        }
        assert!(Instant::now() < deadline, "keys {left:?} outlived their lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn key_names(response: &pb::LeaseTimeToLiveResponse) -> Vec<String> {
    let mut names: Vec<String> = response
        .keys
        .iter()
        .map(|key| String::from_utf8(key.clone()).unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_attach_and_revoke_in_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(dir.path(), &[]);
    let (mut kv, mut lease) = clients(&ringkv.endpoint()).await;

    let granted = grant(&mut lease, 0x1234, 1).await;
    assert_eq!(
        (granted.id, granted.ttl),
        (0x1234, 2),
        "TTLs are raised to etcd's minimum of 2 s"
    );
    let chosen = grant(&mut lease, 0, 60).await;
    assert!(chosen.id > 0, "server-chosen ids are positive: {}", chosen.id);
    let duplicate = lease.lease_grant(pb::LeaseGrantRequest { ttl: 5, id: 0x1234 }).await;
    assert_eq!(duplicate.unwrap_err().message(), "etcdserver: lease already exists");
    let too_long = lease
        .lease_grant(pb::LeaseGrantRequest {
            ttl: 9_000_000_001,
            id: 7,
        })
        .await;
    assert_eq!(too_long.unwrap_err().message(), "etcdserver: too large lease TTL");

    put(&mut kv, "l/a", chosen.id).await.unwrap();
    put(&mut kv, "l/b", chosen.id).await.unwrap();
    put(&mut kv, "l/moved", 0x1234).await.unwrap();
    put(&mut kv, "l/moved", chosen.id).await.unwrap();
    put(&mut kv, "l/detached", chosen.id).await.unwrap();
    put(&mut kv, "l/detached", 0).await.unwrap();
    put(&mut kv, "l/deleted", chosen.id).await.unwrap();
    kv.delete_range(pb::DeleteRangeRequest {
        key: b"l/deleted".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let in_txn = pb::TxnRequest {
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: b"l/txn".to_vec(),
                lease: chosen.id,
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    kv.txn(in_txn).await.unwrap();
    let kept = pb::PutRequest {
        key: b"l/txn".to_vec(),
        value: b"new".to_vec(),
        ignore_lease: true,
        ..Default::default()
    };
    kv.put(kept).await.unwrap();
    let unknown = put(&mut kv, "l/x", 999).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert_eq!(unknown.message(), "etcdserver: requested lease not found");

    let ttl = time_to_live(&mut lease, chosen.id).await;
    assert_eq!(key_names(&ttl), ["l/a", "l/b", "l/moved", "l/txn"]);
    assert_eq!(ttl.granted_ttl, 60);
    assert!((55..=60).contains(&ttl.ttl), "remaining {}", ttl.ttl);
    assert!(key_names(&time_to_live(&mut lease, 0x1234).await).is_empty());

    let listed = lease
        .lease_leases(pb::LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<i64> = listed.leases.iter().map(|status| status.id).collect();
    ids.sort();
    let mut expected = vec![0x1234, chosen.id];
    expected.sort();
    assert_eq!(ids, expected);

    let (_, before) = keys(&mut kv, "l/").await;
    let revoked = lease
        .lease_revoke(pb::LeaseRevokeRequest { id: chosen.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        revoked.header.unwrap().revision,
        before + 1,
        "one revision for all its keys"
    );
    assert_eq!(keys(&mut kv, "l/").await.0, ["l/detached"]);
    let again = lease.lease_revoke(pb::LeaseRevokeRequest { id: chosen.id }).await;
    assert_eq!(again.unwrap_err().message(), "etcdserver: requested lease not found");
    assert_eq!(time_to_live(&mut lease, chosen.id).await.ttl, -1);
    let empty = lease
        .lease_revoke(pb::LeaseRevokeRequest { id: 0x1234 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        empty.header.unwrap().revision,
        before + 1,
        "revoking no keys uses no revision"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_renews_and_answers_unknown_leases_with_ttl_zero() {
    let dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(dir.path(), &[]);
    let (mut kv, mut lease) = clients(&ringkv.endpoint()).await;
    let id = grant(&mut lease, 0, 2).await.id;
    put(&mut kv, "k/alive", id).await.unwrap();

    let (requests, receiver) = tokio::sync::mpsc::channel(4);
    let stream = futures_lite::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|request| (request, receiver))
    });
    let mut responses = lease.lease_keep_alive(stream).await.unwrap().into_inner();
    // Renew every 500 ms for three TTLs: the key must outlive them all.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        requests.send(pb::LeaseKeepAliveRequest { id }).await.unwrap();
        let response = responses.message().await.unwrap().expect("one answer per request");
        assert_eq!((response.id, response.ttl), (id, 2));
        assert!(response.header.unwrap().revision > 1);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(keys(&mut kv, "k/").await.0, ["k/alive"]);

    requests.send(pb::LeaseKeepAliveRequest { id: 4242 }).await.unwrap();
    let unknown = responses.message().await.unwrap().unwrap();
    assert_eq!((unknown.id, unknown.ttl), (4242, 0));

    // Stop renewing: the lease expires and its key goes.
    drop(requests);
    assert!(responses.message().await.unwrap().is_none(), "the stream ends cleanly");
    await_keys_gone(&mut kv, "k/").await;
    assert_eq!(time_to_live(&mut lease, id).await.ttl, -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_deletes_all_its_keys_in_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(dir.path(), &[]);
    let (mut kv, mut lease) = clients(&ringkv.endpoint()).await;
    let id = grant(&mut lease, 0, 2).await.id;
    let mut last = 0;
    for key in ["e/1", "e/2", "e/3"] {
        last = put(&mut kv, key, id).await.unwrap();
    }
    let gone_at = await_keys_gone(&mut kv, "e/").await;
    assert_eq!(
        gone_at,
        last + 1,
        "the expiry revoke deleted three keys in one revision"
    );
    let listed = lease
        .lease_leases(pb::LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.leases.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_leases_and_attachments_and_renews_their_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(dir.path(), &[]);
    let (mut kv, mut lease) = clients(&ringkv.endpoint()).await;
    let long = grant(&mut lease, 0x10, 60).await.id;
    let short = grant(&mut lease, 0x20, 2).await.id;
    put(&mut kv, "r/long", long).await.unwrap();
    put(&mut kv, "r/short", short).await.unwrap();
    // Let a page-store commit happen for some of it; the rest comes from the WAL.
    tokio::time::sleep(Duration::from_millis(300)).await;
    put(&mut kv, "r/long2", long).await.unwrap();
    ringkv.kill();

    let ringkv = Ringkv::start(dir.path(), &[]);
    let (mut kv, mut lease) = clients(&ringkv.endpoint()).await;
    let ttl = time_to_live(&mut lease, long).await;
    assert_eq!(key_names(&ttl), ["r/long", "r/long2"]);
    assert_eq!(ttl.granted_ttl, 60);
    // etcd: a new leader gives every lease its full TTL plus an election timeout.
    assert!((55..=61).contains(&ttl.ttl), "remaining {} after a restart", ttl.ttl);
    await_keys_gone(&mut kv, "r/short").await;
    assert_eq!(keys(&mut kv, "r/").await.0, ["r/long", "r/long2"]);

    // The revoke of the expired lease is durable too.
    ringkv.kill();
    let ringkv = Ringkv::start(dir.path(), &[]);
    let (mut kv, mut lease) = clients(&ringkv.endpoint()).await;
    assert_eq!(time_to_live(&mut lease, short).await.ttl, -1);
    assert_eq!(keys(&mut kv, "r/").await.0, ["r/long", "r/long2"]);
}

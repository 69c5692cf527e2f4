//! etcd's Lock and Election services (v3lockpb, v3electionpb): side by side
//! with etcd 3.4, the same calls get the same answers; and ringkv's alone,
//! under contention, lease expiry, a member kill and leader changes.

use std::time::Duration;

use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::etcdserverpb::lease_client::LeaseClient;
use ringkv_proto::v3electionpb::election_client::ElectionClient;
use ringkv_proto::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ResignRequest,
};
use ringkv_proto::v3lockpb::lock_client::LockClient;
use ringkv_proto::v3lockpb::{LockRequest, UnlockRequest};
use tonic::transport::Channel;

use crate::support;

/// How long a call that must wait for a lock is given before its deadline.
const BLOCKED_CALL_DEADLINE: Duration = Duration::from_millis(400);
/// How long a cleanup after a call gave up may take to show.
const CLEANUP_WAIT: Duration = Duration::from_secs(5);

/// A call's answer or error as comparable text: revisions stay (both servers
/// start at revision 1 and get the same writes), the header's cluster id,
/// member id and raft term go (each server has its own).
///
/// A call whose deadline passes answers in one of three ways, by which side
/// notices first: the client's own timer (CANCELLED "Timeout expired"), the
/// gRPC server's (DEADLINE_EXCEEDED), or etcd's handler returning its
/// context's error (UNKNOWN "context deadline exceeded"). All are "deadline".
fn text<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> String {
    use tonic::Code;
    match result {
        Ok(response) => strip_header_ids(&format!("{:?}", response.into_inner())),
        Err(status) => match (status.code(), status.message()) {
            (Code::Cancelled, "Timeout expired")
            | (Code::DeadlineExceeded, _)
            | (Code::Unknown, "context deadline exceeded") => "error: deadline".to_string(),
            (code, message) => format!("error {code:?} {message:?}"),
        },
    }
}

/// `ResponseHeader { cluster_id: .., member_id: .., revision: R, raft_term: .. }`
/// becomes `ResponseHeader { revision: R }`.
fn strip_header_ids(debug: &str) -> String {
    let mut out = String::new();
    let mut rest = debug;
    while let Some(start) = rest.find("ResponseHeader {") {
        out.push_str(&rest[..start]);
        let end = start + rest[start..].find('}').expect("a header closes");
        let header = &rest[start..end];
        let revision = header
            .split(", ")
            .find_map(|field| field.trim().strip_prefix("revision: "))
            .expect("a header has a revision");
        out.push_str(&format!("ResponseHeader {{ revision: {revision} "));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

async fn grant(channel: &Channel, id: i64, ttl: i64) {
    LeaseClient::new(channel.clone())
        .lease_grant(pb::LeaseGrantRequest { ttl, id })
        .await
        .expect("lease grant");
}

async fn keys_under(channel: &Channel, prefix: &str) -> Vec<String> {
    let response = pb::kv_client::KvClient::new(channel.clone())
        .range(pb::RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: support::prefix_end(prefix.as_bytes()),
            keys_only: true,
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    response
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

/// Waits (bounded) until the keys under `prefix` are `expected`; answers them.
async fn keys_become(channel: &Channel, prefix: &str, expected: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + CLEANUP_WAIT;
    loop {
        let keys = keys_under(channel, prefix).await;
        if keys == expected || tokio::time::Instant::now() > deadline {
            return format!("keys under {prefix}: {keys:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Adds an answer (printed too: with --nocapture, a failing comparison's
/// steps can be followed).
fn note(out: &mut Vec<String>, answer: String) {
    println!("{answer}");
    out.push(answer);
}

fn lock_request(name: &str, lease: i64) -> LockRequest {
    LockRequest {
        name: name.as_bytes().to_vec(),
        lease,
    }
}

fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

/// The lock calls' answers on `endpoint`.
async fn lock_answers(endpoint: &str) -> Vec<String> {
    let channel = support::channel(endpoint).await;
    let mut lock = LockClient::new(channel.clone());
    for id in [0x1000, 0x2000, 0x3000] {
        grant(&channel, id, 30).await;
    }
    let mut out = Vec::new();
    note(&mut out, text(lock.lock(lock_request("lk", 0x1000)).await));
    // The same lease again: the same key, still held.
    note(&mut out, text(lock.lock(lock_request("lk", 0x1000)).await));
    // Another lease waits; its deadline passes; its key is removed.
    note(
        &mut out,
        text(
            lock.lock(with_deadline(lock_request("lk", 0x2000), BLOCKED_CALL_DEADLINE))
                .await,
        ),
    );
    note(&mut out, keys_become(&channel, "lk/", &["lk/1000"]).await);
    // Another waits and its client goes away: its key is removed too.
    let gone = {
        let mut lock = lock.clone();
        tokio::spawn(async move { lock.lock(lock_request("lk", 0x2000)).await })
    };
    note(&mut out, keys_become(&channel, "lk/", &["lk/1000", "lk/2000"]).await);
    gone.abort();
    note(&mut out, keys_become(&channel, "lk/", &["lk/1000"]).await);
    note(&mut out, text(lock.lock(lock_request("lk", 0x9999)).await));
    note(&mut out, text(lock.lock(lock_request("", 0x3000)).await));
    // A waiter gets the lock once the holder unlocks.
    let waiter = {
        let mut lock = lock.clone();
        tokio::spawn(async move { text(lock.lock(lock_request("lk", 0x2000)).await) })
    };
    note(&mut out, keys_become(&channel, "lk/", &["lk/1000", "lk/2000"]).await);
    note(
        &mut out,
        text(
            lock.unlock(UnlockRequest {
                key: b"lk/1000".to_vec(),
            })
            .await,
        ),
    );
    note(&mut out, waiter.await.unwrap());
    // A waiter gets the lock once the holder's lease is revoked.
    let waiter = {
        let mut lock = lock.clone();
        tokio::spawn(async move { text(lock.lock(lock_request("lk", 0x3000)).await) })
    };
    note(&mut out, keys_become(&channel, "lk/", &["lk/2000", "lk/3000"]).await);
    LeaseClient::new(channel.clone())
        .lease_revoke(pb::LeaseRevokeRequest { id: 0x2000 })
        .await
        .expect("revoke");
    note(&mut out, waiter.await.unwrap());
    note(
        &mut out,
        text(
            lock.unlock(UnlockRequest {
                key: b"nothing".to_vec(),
            })
            .await,
        ),
    );
    note(&mut out, text(lock.unlock(UnlockRequest { key: Vec::new() }).await));
    // Lease 0: a new lease of 60 s (its id differs between servers).
    let response = lock
        .lock(lock_request("fresh", 0))
        .await
        .expect("lock with lease 0")
        .into_inner();
    let key = String::from_utf8(response.key).unwrap();
    let lease = i64::from_str_radix(key.strip_prefix("fresh/").expect("under the name"), 16).unwrap();
    let ttl = LeaseClient::new(channel.clone())
        .lease_time_to_live(pb::LeaseTimeToLiveRequest { id: lease, keys: true })
        .await
        .expect("time to live")
        .into_inner();
    note(
        &mut out,
        format!("lease 0: granted {} s, keys {:?}", ttl.granted_ttl, ttl.keys.len()),
    );
    out
}

fn campaign_request(name: &str, lease: i64, value: &str) -> CampaignRequest {
    CampaignRequest {
        name: name.as_bytes().to_vec(),
        lease,
        value: value.as_bytes().to_vec(),
    }
}

fn leader_request(name: &str) -> LeaderRequest {
    LeaderRequest {
        name: name.as_bytes().to_vec(),
    }
}

/// The election calls' answers on `endpoint`.
async fn election_answers(endpoint: &str) -> Vec<String> {
    let channel = support::channel(endpoint).await;
    let mut election = ElectionClient::new(channel.clone());
    for id in [0x1000, 0x2000, 0x3000] {
        grant(&channel, id, 30).await;
    }
    let mut out = Vec::new();
    note(&mut out, text(election.leader(leader_request("el")).await));
    let campaign = election
        .campaign(campaign_request("el", 0x1000, "v1"))
        .await
        .expect("campaign")
        .into_inner();
    note(&mut out, strip_header_ids(&format!("{campaign:?}")));
    let leader = campaign.leader.expect("a leader key");
    note(&mut out, text(election.leader(leader_request("el")).await));
    let proclaim = |leader: &LeaderKey, value: &str| ProclaimRequest {
        leader: Some(leader.clone()),
        value: value.as_bytes().to_vec(),
    };
    note(&mut out, text(election.proclaim(proclaim(&leader, "v2")).await));
    note(&mut out, text(election.leader(leader_request("el")).await));
    let stale = LeaderKey {
        rev: leader.rev + 100,
        ..leader.clone()
    };
    note(&mut out, text(election.proclaim(proclaim(&stale, "no")).await));
    note(
        &mut out,
        text(
            election
                .proclaim(ProclaimRequest {
                    leader: None,
                    value: b"no".to_vec(),
                })
                .await,
        ),
    );
    note(&mut out, text(election.resign(ResignRequest { leader: None }).await));
    note(
        &mut out,
        text(election.resign(ResignRequest { leader: Some(stale) }).await),
    );
    // The same lease campaigns again with another value: proclaimed at once.
    note(
        &mut out,
        text(election.campaign(campaign_request("el", 0x1000, "v3")).await),
    );
    note(&mut out, text(election.leader(leader_request("el")).await));
    // Another campaigner waits; its deadline passes; its key is resigned.
    note(
        &mut out,
        text(
            election
                .campaign(with_deadline(
                    campaign_request("el", 0x2000, "w"),
                    BLOCKED_CALL_DEADLINE,
                ))
                .await,
        ),
    );
    note(&mut out, keys_become(&channel, "el/", &["el/1000"]).await);
    // Another waits and its client goes away: its key is resigned too.
    let gone = {
        let mut election = election.clone();
        tokio::spawn(async move { election.campaign(campaign_request("el", 0x2000, "w")).await })
    };
    note(&mut out, keys_become(&channel, "el/", &["el/1000", "el/2000"]).await);
    gone.abort();
    note(&mut out, keys_become(&channel, "el/", &["el/1000"]).await);
    note(
        &mut out,
        text(election.campaign(campaign_request("el", 0x9999, "x")).await),
    );
    // Observe: the leader's value, its changes, then the next leader's.
    let mut observe = election
        .observe(leader_request("el"))
        .await
        .expect("observe")
        .into_inner();
    note(&mut out, observed(&mut observe).await);
    note(&mut out, text(election.proclaim(proclaim(&leader, "v4")).await));
    note(&mut out, observed(&mut observe).await);
    let waiter = {
        let mut election = election.clone();
        tokio::spawn(async move { text(election.campaign(campaign_request("el", 0x3000, "next")).await) })
    };
    note(&mut out, keys_become(&channel, "el/", &["el/1000", "el/3000"]).await);
    note(
        &mut out,
        text(
            election
                .resign(ResignRequest {
                    leader: Some(leader.clone()),
                })
                .await,
        ),
    );
    note(&mut out, waiter.await.unwrap());
    note(&mut out, observed(&mut observe).await);
    note(&mut out, text(election.leader(leader_request("el")).await));
    LeaseClient::new(channel.clone())
        .lease_revoke(pb::LeaseRevokeRequest { id: 0x3000 })
        .await
        .expect("revoke");
    note(&mut out, text(election.leader(leader_request("el")).await));
    // Observe with no leader yet: the first campaigner's value. (grpc-go
    // sends the response headers with the first message, so the call is
    // awaited beside the campaign.)
    let empty = {
        let mut election = election.clone();
        tokio::spawn(async move {
            let mut stream = election.observe(leader_request("later")).await?.into_inner();
            Ok::<_, tonic::Status>(observed(&mut stream).await)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    note(
        &mut out,
        text(election.campaign(campaign_request("later", 0x1000, "first")).await),
    );
    note(&mut out, empty.await.unwrap().expect("observe"));
    out
}

/// The next message of an Observe stream, as text.
async fn observed(stream: &mut tonic::Streaming<LeaderResponse>) -> String {
    match tokio::time::timeout(support::WATCH_RESPONSE_TIMEOUT, stream.message()).await {
        Ok(Ok(Some(response))) => strip_header_ids(&format!("observed {response:?}")),
        other => format!("observe ended: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_calls_answer_as_etcd() {
    let etcd = support::Etcd::start();
    let data_dir = tempfile::tempdir().unwrap();
    let ringkv = support::Ringkv::start(data_dir.path(), &[]);
    let from_etcd = lock_answers(&etcd.endpoint()).await;
    let from_ringkv = lock_answers(&ringkv.endpoint()).await;
    assert_eq!(from_ringkv, from_etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_calls_answer_as_etcd() {
    let etcd = support::Etcd::start();
    let data_dir = tempfile::tempdir().unwrap();
    let ringkv = support::Ringkv::start(data_dir.path(), &[]);
    let from_etcd = election_answers(&etcd.endpoint()).await;
    let from_ringkv = election_answers(&ringkv.endpoint()).await;
    assert_eq!(from_ringkv, from_etcd);
}

/// The deadline of every call in the tests below: long enough for any wait
/// they expect to end, so a call that hangs fails the test instead.
const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// Lockers in the contention tests, and rounds of each.
const LOCKERS: usize = 4;
const ROUNDS: usize = 8;
/// The TTL of a lease a test lets expire: the shortest a member grants.
const SHORT_TTL_SECONDS: i64 = 2;

/// A channel with no timeout of its own: every call sets its deadline.
async fn connect(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connects")
}

async fn read_counter(channel: &Channel) -> u64 {
    let response = pb::kv_client::KvClient::new(channel.clone())
        .range(with_deadline(
            pb::RangeRequest {
                key: b"counter".to_vec(),
                ..Default::default()
            },
            CALL_DEADLINE,
        ))
        .await
        .expect("read the counter")
        .into_inner();
    let value = response.kvs.first().map_or(b"0".to_vec(), |kv| kv.value.clone());
    String::from_utf8(value).unwrap().parse().unwrap()
}

/// `rounds` times: take the lock, read the counter, pause (so a second holder
/// would read the same value), write it plus one, unlock.
async fn increment_under_lock(endpoint: String, lease: i64, rounds: usize) {
    let channel = connect(&endpoint).await;
    let mut lock = LockClient::new(channel.clone());
    let mut kv = pb::kv_client::KvClient::new(channel.clone());
    for _ in 0..rounds {
        let key = lock
            .lock(with_deadline(lock_request("counter-lock", lease), CALL_DEADLINE))
            .await
            .expect("lock")
            .into_inner()
            .key;
        let value = read_counter(&channel).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let put = support::put_request("counter", &(value + 1).to_string());
        kv.put(with_deadline(put, CALL_DEADLINE))
            .await
            .expect("write the counter");
        lock.unlock(with_deadline(UnlockRequest { key }, CALL_DEADLINE))
            .await
            .expect("unlock");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contending_lockers_lose_no_update() {
    let data_dir = tempfile::tempdir().unwrap();
    let ringkv = support::Ringkv::start(data_dir.path(), &[]);
    let channel = connect(&ringkv.endpoint()).await;
    let mut lockers = Vec::new();
    for locker in 0..LOCKERS {
        let lease = 0x100 + locker as i64;
        grant(&channel, lease, 60).await;
        lockers.push(tokio::spawn(increment_under_lock(ringkv.endpoint(), lease, ROUNDS)));
    }
    for locker in lockers {
        locker.await.expect("the locker finished");
    }
    assert_eq!(read_counter(&channel).await, (LOCKERS * ROUNDS) as u64);
    assert_eq!(keys_under(&channel, "counter-lock/").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_releases_its_lock_and_fails_its_wait() {
    let data_dir = tempfile::tempdir().unwrap();
    let ringkv = support::Ringkv::start(data_dir.path(), &[]);
    let channel = connect(&ringkv.endpoint()).await;
    let mut lock = LockClient::new(channel.clone());
    let (holder, waiter, expiring_waiter) = (0xa1, 0xb1, 0xc1);
    grant(&channel, holder, SHORT_TTL_SECONDS).await;
    grant(&channel, waiter, 60).await;
    lock.lock(with_deadline(lock_request("lk", holder), CALL_DEADLINE))
        .await
        .expect("the holder locks");
    // Nobody unlocks: the holder's lease expiring hands the lock on.
    let taken = lock
        .lock(with_deadline(lock_request("lk", waiter), CALL_DEADLINE))
        .await
        .expect("the waiter locks once the holder's lease expired")
        .into_inner();
    assert_eq!(taken.key, b"lk/b1");
    assert_eq!(keys_under(&channel, "lk/").await, ["lk/b1"]);
    // A waiter whose own lease expires while it waits is told, once the
    // holder unlocks, instead of being answered as the holder.
    grant(&channel, expiring_waiter, SHORT_TTL_SECONDS).await;
    let late = {
        let mut lock = lock.clone();
        tokio::spawn(async move {
            lock.lock(with_deadline(lock_request("lk", expiring_waiter), CALL_DEADLINE))
                .await
        })
    };
    assert_eq!(
        keys_become(&channel, "lk/", &["lk/b1"]).await,
        "keys under lk/: [\"lk/b1\"]"
    );
    tokio::time::sleep(Duration::from_secs(SHORT_TTL_SECONDS as u64 + 1)).await;
    lock.unlock(with_deadline(UnlockRequest { key: taken.key }, CALL_DEADLINE))
        .await
        .expect("unlock");
    let status = late
        .await
        .unwrap()
        .expect_err("the expired waiter does not get the lock");
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::Unknown, "mutex: session is expired")
    );
}

/// Retries `unlock` of `key` on `endpoint` until it succeeds (the cluster may
/// be electing a leader), for at most `CALL_DEADLINE`.
async fn unlock_eventually(endpoint: &str, key: Vec<u8>) {
    let deadline = tokio::time::Instant::now() + CALL_DEADLINE;
    let mut lock = LockClient::new(connect(endpoint).await);
    loop {
        let request = with_deadline(UnlockRequest { key: key.clone() }, Duration::from_secs(3));
        match lock.unlock(request).await {
            Ok(_) => return,
            Err(status) => assert!(
                tokio::time::Instant::now() < deadline,
                "unlock kept failing: {status:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locks_hold_across_a_member_kill() {
    let mut cluster = support::cluster::Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader().await;
    let survivors: Vec<usize> = (0..3).filter(|&index| index != leader).collect();
    let (a, b) = (survivors[0], survivors[1]);
    let channel_b = connect(&cluster.endpoint(b)).await;
    let (holder, waiter) = (0xd1, 0xe1);
    grant(&channel_b, holder, 60).await;
    grant(&channel_b, waiter, 60).await;
    // The holder locks through the member that is killed; a waiter waits on another.
    let mut through_leader = LockClient::new(connect(&cluster.endpoint(leader)).await);
    let held = through_leader
        .lock(with_deadline(lock_request("m", holder), CALL_DEADLINE))
        .await
        .expect("the holder locks")
        .into_inner();
    let waiting = {
        let endpoint = cluster.endpoint(a);
        tokio::spawn(async move {
            let mut lock = LockClient::new(connect(&endpoint).await);
            lock.lock(with_deadline(lock_request("m", waiter), CALL_DEADLINE)).await
        })
    };
    assert_eq!(
        keys_become(&channel_b, "m/", &["m/d1", "m/e1"]).await,
        "keys under m/: [\"m/d1\", \"m/e1\"]"
    );
    cluster.kill(leader);
    cluster.wait_for_leader().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the waiter got the lock while it was held");
    unlock_eventually(&cluster.endpoint(b), held.key).await;
    let taken = waiting.await.unwrap().expect("the waiter locks").into_inner();
    assert_eq!(taken.key, b"m/e1");
    unlock_eventually(&cluster.endpoint(a), taken.key).await;
    // Contention through both survivors: still no lost update.
    let mut lockers = Vec::new();
    for locker in 0..LOCKERS {
        let lease = 0x200 + locker as i64;
        grant(&channel_b, lease, 60).await;
        let endpoint = cluster.endpoint(survivors[locker % 2]);
        lockers.push(tokio::spawn(increment_under_lock(endpoint, lease, ROUNDS / 2)));
    }
    for locker in lockers {
        locker.await.expect("the locker finished");
    }
    assert_eq!(read_counter(&channel_b).await, (LOCKERS * (ROUNDS / 2)) as u64);
}

/// The next Observe message's value and mod revision.
async fn observed_value(stream: &mut tonic::Streaming<LeaderResponse>) -> (String, i64) {
    let response = tokio::time::timeout(CALL_DEADLINE, stream.message())
        .await
        .expect("an Observe message in time")
        .expect("the stream is open")
        .expect("a message");
    let kv = response.kv.expect("a key-value");
    (String::from_utf8(kv.value).unwrap(), kv.mod_revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_sees_every_leader_change_in_order() {
    const CAMPAIGNERS: i64 = 4;
    let data_dir = tempfile::tempdir().unwrap();
    let ringkv = support::Ringkv::start(data_dir.path(), &[]);
    let channel = connect(&ringkv.endpoint()).await;
    let mut election = ElectionClient::new(channel.clone());
    for campaigner in 1..=CAMPAIGNERS {
        grant(&channel, campaigner, 60).await;
    }
    let mut observe = election
        .observe(with_deadline(leader_request("obs"), CALL_DEADLINE * 4))
        .await
        .expect("observe")
        .into_inner();
    let campaigner_client = election.clone();
    let campaign = |campaigner: i64| {
        let mut election = campaigner_client.clone();
        let request = campaign_request("obs", campaigner, &format!("elected {campaigner}"));
        tokio::spawn(async move { election.campaign(with_deadline(request, CALL_DEADLINE)).await })
    };
    let mut leader = campaign(1)
        .await
        .unwrap()
        .expect("campaign")
        .into_inner()
        .leader
        .unwrap();
    let mut seen = vec![observed_value(&mut observe).await];
    let mut expected = vec!["elected 1".to_string()];
    for campaigner in 1..=CAMPAIGNERS {
        let value = format!("proclaimed {campaigner}");
        let request = ProclaimRequest {
            leader: Some(leader.clone()),
            value: value.clone().into_bytes(),
        };
        election
            .proclaim(with_deadline(request, CALL_DEADLINE))
            .await
            .expect("proclaim");
        expected.push(value);
        seen.push(observed_value(&mut observe).await);
        let next = (campaigner < CAMPAIGNERS).then(|| campaign(campaigner + 1));
        if next.is_some() {
            // One hex digit each: in key order.
            let keys = [format!("obs/{campaigner:x}"), format!("obs/{:x}", campaigner + 1)];
            keys_become(&channel, "obs/", &[keys[0].as_str(), keys[1].as_str()]).await;
        }
        let resign = ResignRequest {
            leader: Some(leader.clone()),
        };
        election
            .resign(with_deadline(resign, CALL_DEADLINE))
            .await
            .expect("resign");
        if let Some(next) = next {
            leader = next.await.unwrap().expect("campaign").into_inner().leader.unwrap();
            expected.push(format!("elected {}", campaigner + 1));
            seen.push(observed_value(&mut observe).await);
        }
    }
    let values: Vec<&String> = seen.iter().map(|(value, _)| value).collect();
    assert_eq!(values, expected.iter().collect::<Vec<_>>());
    assert!(
        seen.windows(2).all(|pair| pair[0].1 < pair[1].1),
        "mod revisions rise: {seen:?}"
    );
    let quiet = tokio::time::timeout(Duration::from_millis(300), observe.message()).await;
    assert!(quiet.is_err(), "nothing after the last leader resigned: {quiet:?}");
}

/// A put of `value` at `counter` only while `lock_key` still has create
/// revision `lock_revision` (clientv3's `Mutex.IsOwner` guard); whether it
/// was made.
async fn guarded_put(channel: &Channel, lock_key: &[u8], lock_revision: i64, value: u64) -> bool {
    let txn = pb::TxnRequest {
        compare: vec![pb::Compare {
            result: pb::compare::CompareResult::Equal as i32,
            target: pb::compare::CompareTarget::Create as i32,
            key: lock_key.to_vec(),
            target_union: Some(pb::compare::TargetUnion::CreateRevision(lock_revision)),
            range_end: Vec::new(),
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(support::put_request(
                "counter",
                &value.to_string(),
            ))),
        }],
        failure: Vec::new(),
    };
    pb::kv_client::KvClient::new(channel.clone())
        .txn(with_deadline(txn, CALL_DEADLINE))
        .await
        .expect("txn")
        .into_inner()
        .succeeded
}

/// The create revision of `key`.
async fn create_revision(channel: &Channel, key: &[u8]) -> i64 {
    let response = pb::kv_client::KvClient::new(channel.clone())
        .range(with_deadline(
            pb::RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            },
            CALL_DEADLINE,
        ))
        .await
        .expect("range")
        .into_inner();
    response.kvs.first().expect("the lock key exists").create_revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_lease_expires_loses_the_lock_and_its_guarded_write() {
    let data_dir = tempfile::tempdir().unwrap();
    let ringkv = support::Ringkv::start(data_dir.path(), &[]);
    let channel = connect(&ringkv.endpoint()).await;
    let mut lock = LockClient::new(channel.clone());
    let (stalled, next) = (0xf1, 0xf2);
    grant(&channel, stalled, SHORT_TTL_SECONDS).await;
    grant(&channel, next, 60).await;
    let held = lock
        .lock(with_deadline(lock_request("fenced", stalled), CALL_DEADLINE))
        .await
        .expect("lock")
        .into_inner()
        .key;
    let held_revision = create_revision(&channel, &held).await;
    let before = read_counter(&channel).await;
    // The holder stalls past its lease; the next locker gets the lock meanwhile
    // and makes its guarded write.
    let taken = lock
        .lock(with_deadline(lock_request("fenced", next), CALL_DEADLINE))
        .await
        .expect("the next locker gets the lock once the stalled lease expired")
        .into_inner()
        .key;
    let taken_revision = create_revision(&channel, &taken).await;
    assert!(guarded_put(&channel, &taken, taken_revision, before + 1).await);
    // The stalled holder wakes up: its write, guarded by its lock key, is refused.
    assert!(!guarded_put(&channel, &held, held_revision, before + 1).await);
    assert_eq!(read_counter(&channel).await, before + 1);
}

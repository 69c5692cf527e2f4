//! etcd's auth end to end: the same etcdctl command lines (with `--user`) and
//! the same gRPC calls, per user, against real etcd 3.4 and ringkv, compared
//! byte for byte; the checks etcd 3.4.45 added over 3.4.23 (ringkv makes
//! them) asserted on ringkv alone; the auth state on 3 members across restart,
//! kill -9 and a raft snapshot; simple tokens expiring; JWT tokens; a
//! certificate's common name as the user; users, roles and passwords through
//! etcd-format snapshots, etcd to ringkv and back.

use std::time::{Duration, Instant};

use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::etcdserverpb::auth_client::AuthClient;
use ringkv_proto::etcdserverpb::cluster_client::ClusterClient;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::lease_client::LeaseClient;
use ringkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use tonic::transport::Channel;

use crate::etcd_data::etcd_restore;
use crate::snapshot_defrag::restore_into;
use crate::support::cluster::Cluster;
use crate::support::{self, Etcd, EtcdctlRun as Run, Ringkv};
use crate::tls::{client_flags, etcdctl as tls_etcdctl, path, Ca};

/// One etcdctl run ([`support::etcdctl_run`]), the endpoint (which differs
/// between the servers) written `ENDPOINT`.
fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Run {
    let run = support::etcdctl_run(endpoint, "10s", args, stdin);
    Run {
        status: run.status,
        stdout: run.stdout.replace(endpoint, "ENDPOINT"),
        stderr: run.stderr.replace(endpoint, "ENDPOINT"),
    }
}

const ROOT: &str = "root:rootpw";
const ALICE: &str = "alice:alicepw";

/// Root with role root; alice with role `r`: read-write on prefix `a/`,
/// read on key `b`. Auth off until `auth enable`.
fn setup_commands() -> Vec<Vec<&'static str>> {
    vec![
        vec!["user", "add", ROOT],
        vec!["role", "add", "root"],
        vec!["user", "grant-role", "root", "root"],
        vec!["user", "add", ALICE],
        vec!["role", "add", "r"],
        vec!["role", "grant-permission", "r", "readwrite", "a/", "--prefix"],
        vec!["role", "grant-permission", "r", "read", "b"],
        vec!["user", "grant-role", "alice", "r"],
    ]
}

/// The etcdctl matrix: setup, then every command as nobody, alice and root.
fn scenario() -> Vec<(Vec<&'static str>, Option<&'static str>)> {
    let mut commands: Vec<(Vec<&str>, Option<&str>)> = setup_commands().into_iter().map(|c| (c, None)).collect();
    let rest: Vec<(&[&str], Option<&str>)> = vec![
        (&["role", "get", "r"], None),
        (&["user", "get", "alice"], None),
        (&["user", "list"], None),
        (&["role", "list"], None),
        (&["auth", "enable"], None),
        (&["get", "foo"], None),
        (&["put", "foo", "bar"], None),
        (&["--user", ROOT, "put", "foo", "bar"], None),
        (&["--user", ALICE, "put", "a/x", "1"], None),
        (&["--user", ALICE, "get", "a/x"], None),
        (&["--user", ALICE, "get", "a/", "--prefix"], None),
        (&["--user", ALICE, "get", "a", "--prefix"], None),
        (&["--user", ALICE, "get", "b"], None),
        (&["--user", ALICE, "put", "b", "1"], None),
        (&["--user", ALICE, "get", "foo"], None),
        (&["--user", ALICE, "put", "a/y", "2", "--prev-kv"], None),
        (&["--user", ALICE, "del", "a/x"], None),
        (&["--user", ALICE, "del", "foo"], None),
        (&["--user", ALICE, "del", "a/", "--prefix", "--prev-kv"], None),
        (&["--user", ALICE, "txn"], Some("\nput a/z 3\n\n")),
        (
            &["--user", ALICE, "txn"],
            Some("value(\"foo\") = \"bar\"\n\nput a/z 3\n\n"),
        ),
        (&["--user", ALICE, "txn"], Some("\nput foo 2\n\n")),
        (&["--user", ALICE, "txn"], Some("\nget b\n\nget foo\n\n")),
        (&["--user", "alice:wrong", "get", "a/x"], None),
        (&["--user", "bob:x", "get", "a/x"], None),
        (&["--user", ALICE, "user", "list"], None),
        (&["--user", ALICE, "role", "list"], None),
        (&["--user", ALICE, "user", "get", "alice"], None),
        (&["--user", ALICE, "user", "get", "root"], None),
        (&["--user", ALICE, "role", "get", "r"], None),
        (&["--user", ALICE, "role", "get", "root"], None),
        (&["--user", ALICE, "user", "add", "eve:pw"], None),
        (&["--user", ALICE, "auth", "disable"], None),
        (&["--user", ALICE, "defrag"], None),
        (&["--user", ROOT, "user", "delete", "root"], None),
        (&["--user", ROOT, "role", "delete", "root"], None),
        (&["--user", ROOT, "user", "revoke-role", "root", "root"], None),
        (&["--user", ROOT, "role", "revoke-permission", "r", "nope"], None),
        (&["--user", ROOT, "user", "revoke-role", "alice", "nope"], None),
        (&["--user", ROOT, "user", "add", "alice:x"], None),
        (&["--user", ROOT, "role", "add", "r"], None),
        (&["--user", ROOT, "role", "add", ""], None),
        (&["--user", ROOT, "user", "grant-role", "alice", "nope"], None),
        (&["--user", ROOT, "user", "grant-role", "nobody", "r"], None),
        (&["--user", ROOT, "user", "get", "nobody"], None),
        (&["--user", ROOT, "role", "get", "nope"], None),
        (
            &["--user", ROOT, "role", "grant-permission", "r", "write", "c", "d"],
            None,
        ),
        (
            &[
                "--user",
                ROOT,
                "role",
                "grant-permission",
                "r",
                "readwrite",
                "",
                "--from-key",
            ],
            None,
        ),
        (&["--user", ROOT, "role", "get", "r"], None),
        (&["--user", ALICE, "get", "zzz"], None),
        (
            &["--user", ROOT, "role", "revoke-permission", "r", "", "--from-key"],
            None,
        ),
        (&["--user", ALICE, "get", "zzz"], None),
        (
            &["--user", ROOT, "role", "revoke-permission", "r", "a/", "--prefix"],
            None,
        ),
        (&["--user", ALICE, "get", "a/", "--prefix"], None),
        (
            &["--user", ROOT, "user", "passwd", "alice", "--interactive=false"],
            Some("newpw\n"),
        ),
        (&["--user", ALICE, "get", "b"], None),
        (&["--user", "alice:newpw", "get", "b"], None),
        (&["--user", ROOT, "user", "revoke-role", "alice", "r"], None),
        (&["--user", "alice:newpw", "get", "b"], None),
        (&["--user", ROOT, "role", "delete", "r"], None),
        (&["--user", ROOT, "user", "delete", "alice"], None),
        (&["--user", "alice:newpw", "get", "b"], None),
        (&["--user", ROOT, "get", "", "--prefix"], None),
        (&["--user", ROOT, "auth", "disable"], None),
        (&["get", "foo"], None),
        (&["auth", "disable"], None),
        (&["--user", ROOT, "get", "foo"], None),
    ];
    commands.extend(rest.into_iter().map(|(args, input)| (args.to_vec(), input)));
    commands
}

#[test]
fn etcdctl_user_role_and_auth_commands_answer_as_etcd_does() {
    let etcd = support::Etcd::start();
    let data_dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(data_dir.path(), &[]);
    let mut runs = Vec::new();
    for (args, input) in scenario() {
        let expected = etcdctl(&etcd.endpoint(), &args, input);
        let actual = etcdctl(&ringkv.endpoint(), &args, input);
        assert_eq!(actual, expected, "etcdctl {args:?}: ringkv (left) vs etcd (right)");
        runs.push((args, actual));
    }
    // The answers themselves, so a bug both shared would show.
    let output = |wanted: &[&str]| &runs.iter().find(|(args, _)| args.as_slice() == wanted).expect("ran").1;
    assert_eq!(output(&["get", "foo"]).stderr, "Error: etcdserver: user name is empty");
    assert_eq!(
        output(&["--user", ALICE, "get", "foo"]).stderr,
        "Error: etcdserver: permission denied"
    );
    assert_eq!(output(&["--user", ALICE, "get", "a/x"]).stdout, "a/x\n1\n");
    assert_eq!(
        output(&["--user", "alice:wrong", "get", "a/x"]).stderr,
        "Error: etcdserver: authentication failed, invalid user ID or password"
    );
    assert_eq!(
        output(&["--user", ROOT, "user", "delete", "root"]).stderr,
        "Error: etcdserver: invalid auth management"
    );
    assert_eq!(
        output(&["--user", ROOT, "auth", "disable"]).stdout,
        "Authentication Disabled\n"
    );
}

/// A gRPC call's answer as compared: the code and message of an error, or
/// that it succeeded.
fn outcome<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Result<(), (tonic::Code, String)> {
    result
        .map(|_| ())
        .map_err(|status| (status.code(), status.message().to_string()))
}

/// `message` with the `token` metadata clientv3 sends.
fn as_user<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("token", token.parse().unwrap());
    }
    request
}

async fn login(channel: &Channel, name: &str, password: &str) -> String {
    AuthClient::new(channel.clone())
        .authenticate(pb::AuthenticateRequest {
            name: name.to_string(),
            password: password.to_string(),
        })
        .await
        .expect("authenticates")
        .into_inner()
        .token
}

/// Sets up root and alice and enables auth (`set_up_users`), then logs both
/// in: their tokens, alice's first.
async fn set_up_and_log_in(endpoint: &str) -> (String, String) {
    set_up_users(endpoint);
    let channel = support::channel(endpoint).await;
    let alice = login(&channel, "alice", "alicepw").await;
    let root = login(&channel, "root", "rootpw").await;
    (alice, root)
}

/// Sets up root and alice (as `setup_commands`) and enables auth.
fn set_up_users(endpoint: &str) {
    for args in setup_commands() {
        let run = etcdctl(endpoint, &args, None);
        assert_eq!(run.status, 0, "{args:?}: {run:?}");
    }
    let run = etcdctl(endpoint, &["auth", "enable"], None);
    assert_eq!(run.status, 0, "{run:?}");
}

fn range(key: &str, range_end: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.as_bytes().to_vec(),
        range_end: range_end.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn txn_put(compare_key: &str, put_key: &str) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: vec![pb::Compare {
            key: compare_key.as_bytes().to_vec(),
            target: pb::compare::CompareTarget::Version as i32,
            result: pb::compare::CompareResult::Equal as i32,
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(support::put_request(put_key, "v"))),
        }],
        failure: Vec::new(),
    }
}

/// Every call of the matrix, as `token`'s user, against one server.
async fn matrix(endpoint: &str, token: Option<&str>) -> Vec<(String, Result<(), (tonic::Code, String)>)> {
    let channel = support::channel(endpoint).await;
    let mut kv = KvClient::new(channel.clone());
    let mut maintenance = MaintenanceClient::new(channel.clone());
    let mut out = Vec::new();
    let mut record = |name: &str, result| out.push((name.to_string(), result));
    for (name, request) in [
        ("range a/x", range("a/x", "")),
        ("range a/ prefix", range("a/", "a0")),
        ("range a prefix", range("a", "b")),
        ("range b", range("b", "")),
        ("range foo", range("foo", "")),
        ("range all", range("\0", "\0")),
        (
            "range a/x serializable",
            pb::RangeRequest {
                serializable: true,
                ..range("a/x", "")
            },
        ),
    ] {
        record(name, outcome(kv.range(as_user(request, token)).await));
    }
    record(
        "put a/x",
        outcome(kv.put(as_user(support::put_request("a/x", "1"), token)).await),
    );
    record(
        "put b",
        outcome(kv.put(as_user(support::put_request("b", "1"), token)).await),
    );
    let prev_kv = pb::PutRequest {
        prev_kv: true,
        ..support::put_request("a/x", "2")
    };
    record("put a/x prev_kv", outcome(kv.put(as_user(prev_kv, token)).await));
    let delete = pb::DeleteRangeRequest {
        key: b"a/".to_vec(),
        range_end: b"a0".to_vec(),
        prev_kv: true,
    };
    record(
        "delete a/ prefix",
        outcome(kv.delete_range(as_user(delete, token)).await),
    );
    record(
        "txn compare a/ put a/",
        outcome(kv.txn(as_user(txn_put("a/q", "a/q"), token)).await),
    );
    record(
        "txn compare foo put a/",
        outcome(kv.txn(as_user(txn_put("foo", "a/q"), token)).await),
    );
    record(
        "txn compare a/ put foo",
        outcome(kv.txn(as_user(txn_put("a/q", "foo"), token)).await),
    );
    record(
        "hash",
        outcome(maintenance.hash(as_user(pb::HashRequest {}, token)).await),
    );
    record(
        "hash kv",
        outcome(
            maintenance
                .hash_kv(as_user(pb::HashKvRequest { revision: 0 }, token))
                .await,
        ),
    );
    record(
        "defragment",
        outcome(maintenance.defragment(as_user(pb::DefragmentRequest {}, token)).await),
    );
    for (name, key, range_end) in [("watch a/", "a/", "a0"), ("watch foo", "foo", "")] {
        record(name, watch_created(endpoint, token, key, range_end).await);
    }
    out
}

/// Creates a watch as `token`'s user: Ok if it was created, else etcd's
/// cancel reason (with code Cancelled standing for "created and canceled").
async fn watch_created(
    endpoint: &str,
    token: Option<&str>,
    key: &str,
    range_end: &str,
) -> Result<(), (tonic::Code, String)> {
    let channel = support::channel(endpoint).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: key.as_bytes().to_vec(),
            range_end: range_end.as_bytes().to_vec(),
            ..Default::default()
        })),
    };
    tx.send(create).await.unwrap();
    let request = as_user(tokio_stream::wrappers::ReceiverStream::new(rx), token);
    let mut client = ringkv_proto::etcdserverpb::watch_client::WatchClient::new(channel);
    let mut stream = match client.watch(request).await {
        Ok(stream) => stream.into_inner(),
        Err(status) => return Err((status.code(), status.message().to_string())),
    };
    let response = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a watch answers its create")
        .map_err(|status| (status.code(), status.message().to_string()))?
        .expect("a response");
    assert!(response.created, "{response:?}");
    if response.canceled {
        return Err((tonic::Code::Cancelled, response.cancel_reason));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_users_grpc_calls_are_allowed_or_refused_as_etcd_answers_them() {
    let etcd = support::Etcd::start();
    let data_dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(data_dir.path(), &[]);
    let mut answers = Vec::new();
    for endpoint in [etcd.endpoint(), ringkv.endpoint()] {
        let (alice, root) = set_up_and_log_in(&endpoint).await;
        let mut per_user = Vec::new();
        for (user, token) in [
            ("nobody", None),
            ("alice", Some(alice.as_str())),
            ("root", Some(root.as_str())),
            ("a forged token", Some("forged.7")),
        ] {
            per_user.push((user, matrix(&endpoint, token).await));
        }
        answers.push(per_user);
    }
    let (etcd_answers, ringkv_answers) = (&answers[0], &answers[1]);
    for ((user, expected), (_, actual)) in etcd_answers.iter().zip(ringkv_answers) {
        for ((call, expected), (_, actual)) in expected.iter().zip(actual) {
            assert_eq!(actual, expected, "{user}: {call}: ringkv (left) vs etcd (right)");
        }
    }
    // Some answers spelled out.
    let answer = |user: &str, call: &str| {
        let (_, calls) = ringkv_answers.iter().find(|(name, _)| *name == user).unwrap();
        calls.iter().find(|(name, _)| name == call).unwrap().1.clone()
    };
    let denied = Err((
        tonic::Code::PermissionDenied,
        "etcdserver: permission denied".to_string(),
    ));
    assert_eq!(answer("alice", "range a/x"), Ok(()));
    assert_eq!(answer("alice", "range foo"), denied);
    assert_eq!(answer("alice", "txn compare foo put a/"), denied);
    assert_eq!(answer("root", "range all"), Ok(()));
    assert_eq!(
        answer("nobody", "put a/x"),
        Err((
            tonic::Code::InvalidArgument,
            "etcdserver: user name is empty".to_string()
        ))
    );
    assert_eq!(
        answer("a forged token", "range a/x"),
        Err((
            tonic::Code::Unauthenticated,
            "etcdserver: invalid auth token".to_string()
        ))
    );
    assert_eq!(
        answer("alice", "watch foo"),
        Err((
            tonic::Code::Cancelled,
            "rpc error: code = PermissionDenied desc = etcdserver: permission denied".to_string()
        ))
    );
}

/// What etcd 3.4.45 (and 3.5) check and 3.4.23, the oracle here, does not:
/// ringkv answers as the newer releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checks_etcd_added_after_3_4_23_are_made() {
    let data_dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(data_dir.path(), &[]);
    let endpoint = ringkv.endpoint();
    set_up_users(&endpoint);
    let channel = support::channel(&endpoint).await;
    let alice = login(&channel, "alice", "alicepw").await;
    let root = login(&channel, "root", "rootpw").await;
    let user_empty = Err((
        tonic::Code::InvalidArgument,
        "etcdserver: user name is empty".to_string(),
    ));
    let denied = Err((
        tonic::Code::PermissionDenied,
        "etcdserver: permission denied".to_string(),
    ));
    let mut kv = KvClient::new(channel.clone());
    let mut leases = LeaseClient::new(channel.clone());
    let mut cluster = ClusterClient::new(channel.clone());
    let mut maintenance = MaintenanceClient::new(channel.clone());

    // Compact is root's.
    let compact = pb::CompactionRequest {
        revision: 1,
        physical: false,
    };
    assert_eq!(
        outcome(kv.compact(as_user(compact.clone(), Some(&alice))).await),
        denied
    );
    assert_eq!(outcome(kv.compact(as_user(compact, Some(&root))).await), Ok(()));
    // Some user is needed for membership, leases and alarms.
    assert_eq!(
        outcome(
            cluster
                .member_list(as_user(pb::MemberListRequest::default(), None))
                .await
        ),
        user_empty
    );
    assert_eq!(
        outcome(
            leases
                .lease_grant(as_user(pb::LeaseGrantRequest { ttl: 60, id: 0 }, None))
                .await
        ),
        user_empty
    );
    let alarm_list = pb::AlarmRequest::default();
    assert_eq!(
        outcome(maintenance.alarm(as_user(alarm_list.clone(), None)).await),
        user_empty
    );
    assert_eq!(
        outcome(maintenance.alarm(as_user(alarm_list, Some(&alice))).await),
        Ok(())
    );
    assert_eq!(
        outcome(
            maintenance
                .move_leader(as_user(pb::MoveLeaderRequest { target_id: 1 }, Some(&alice)))
                .await
        ),
        denied
    );
    // A nested txn is checked as deep as it goes.
    let nested = pb::TxnRequest {
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestTxn(txn_put("a/q", "foo"))),
        }],
        ..Default::default()
    };
    assert_eq!(outcome(kv.txn(as_user(nested, Some(&alice))).await), denied);
    // A lease attached to a key alice may not write: she may neither revoke
    // it, attach to it, nor list its keys.
    let lease = leases
        .lease_grant(as_user(pb::LeaseGrantRequest { ttl: 60, id: 0 }, Some(&root)))
        .await
        .unwrap()
        .into_inner()
        .id;
    let leased = pb::PutRequest {
        lease,
        ..support::put_request("foo", "x")
    };
    kv.put(as_user(leased, Some(&root))).await.unwrap();
    let attach = pb::PutRequest {
        lease,
        ..support::put_request("a/leased", "x")
    };
    assert_eq!(outcome(kv.put(as_user(attach, Some(&alice))).await), denied);
    let keys = pb::LeaseTimeToLiveRequest { id: lease, keys: true };
    assert_eq!(
        outcome(leases.lease_time_to_live(as_user(keys, Some(&alice))).await),
        denied
    );
    assert_eq!(
        outcome(
            leases
                .lease_leases(as_user(pb::LeaseLeasesRequest {}, Some(&alice)))
                .await
        ),
        denied
    );
    assert_eq!(
        outcome(
            leases
                .lease_revoke(as_user(pb::LeaseRevokeRequest { id: lease }, Some(&alice)))
                .await
        ),
        denied
    );
    assert_eq!(
        outcome(
            leases
                .lease_revoke(as_user(pb::LeaseRevokeRequest { id: lease }, Some(&root)))
                .await
        ),
        Ok(())
    );
    // Status needs some user (3.5; 3.4.45 wants root).
    assert_eq!(
        outcome(maintenance.status(as_user(pb::StatusRequest {}, None)).await),
        user_empty
    );
    assert_eq!(
        outcome(maintenance.status(as_user(pb::StatusRequest {}, Some(&alice))).await),
        Ok(())
    );
    // AuthStatus (etcd 3.5's) needs no user.
    let status = AuthClient::new(channel)
        .auth_status(pb::AuthStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.enabled);
    assert!(status.auth_revision > 1);
}

/// Waits until `check` holds on `endpoint`, or panics after 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// alice can log in at `endpoint` and read `a/x` there, and not `foo`.
async fn alice_reads_as_granted(endpoint: &str) -> bool {
    let Some(channel) = tonic::transport::Channel::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .ok()
    else {
        return false;
    };
    let Ok(response) = AuthClient::new(channel.clone())
        .authenticate(pb::AuthenticateRequest {
            name: "alice".to_string(),
            password: "alicepw".to_string(),
        })
        .await
    else {
        return false;
    };
    let token = response.into_inner().token;
    let mut kv = KvClient::new(channel);
    let serializable = |key: &str| pb::RangeRequest {
        serializable: true,
        ..range(key, "")
    };
    let allowed = kv.range(as_user(serializable("a/x"), Some(&token))).await.is_ok();
    let refused = kv
        .range(as_user(serializable("foo"), Some(&token)))
        .await
        .is_err_and(|status| status.code() == tonic::Code::PermissionDenied);
    allowed && refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_state_reaches_every_member_and_outlives_restarts_kills_and_snapshots() {
    let mut cluster = Cluster::start(3, &["--snapshot-count", "20"]);
    let leader = cluster.wait_for_leader().await;
    set_up_users(&cluster.endpoint(leader));
    for member in 0..3 {
        let endpoint = cluster.endpoint(member);
        eventually(&format!("member {member} applies the auth state"), || {
            alice_reads_as_granted(&endpoint)
        })
        .await;
    }
    // A follower misses the rest (and more than its peers keep in their
    // logs): it catches up from a raft snapshot that must carry the change.
    let follower = (leader + 1) % 3;
    cluster.kill(follower);
    let run = etcdctl(
        &cluster.endpoint(leader),
        &["--user", ROOT, "role", "revoke-permission", "r", "b"],
        None,
    );
    assert_eq!(run.status, 0, "{run:?}");
    let run = etcdctl(
        &cluster.endpoint(leader),
        &["--user", ROOT, "user", "add", "carol:pw"],
        None,
    );
    assert_eq!(run.status, 0, "{run:?}");
    let channel = support::channel(&cluster.endpoint(leader)).await;
    let root = login(&channel, "root", "rootpw").await;
    let mut kv = KvClient::new(channel);
    for i in 0..200 {
        kv.put(as_user(support::put_request(&format!("a/{i}"), "v"), Some(&root)))
            .await
            .expect("put");
    }
    // The leader's page-store commits (every 100 ms) release its log behind them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_members(&[follower]);
    assert!(cluster.metric(follower, "etcd_network_snapshot_receive_success") >= 1);
    let lists_carol = |endpoint: String| async move {
        let run = etcdctl(&endpoint, &["--user", ROOT, "user", "list"], None);
        run.stdout == "alice\ncarol\nroot\n"
    };
    eventually("the follower learnt carol from the snapshot", || {
        lists_carol(cluster.endpoint(follower))
    })
    .await;
    // Every member killed and restarted: the state is read back from each
    // page store and WAL.
    for member in 0..3 {
        cluster.kill(member);
    }
    cluster.start_members(&[0, 1, 2]);
    for member in 0..3 {
        let endpoint = cluster.endpoint(member);
        eventually(&format!("member {member} kept the auth state"), || {
            lists_carol(endpoint.clone())
        })
        .await;
        let run = etcdctl(&endpoint, &["--user", ALICE, "get", "b"], None);
        assert_eq!(run.stderr, "Error: etcdserver: permission denied", "member {member}");
        let run = etcdctl(&endpoint, &["get", "a/1"], None);
        assert_eq!(run.stderr, "Error: etcdserver: user name is empty", "member {member}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simple_token_lives_its_ttl_past_its_last_use_and_a_new_login_works() {
    let data_dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(data_dir.path(), &["--auth-token-ttl", "2"]);
    set_up_users(&ringkv.endpoint());
    let channel = support::channel(&ringkv.endpoint()).await;
    let mut kv = KvClient::new(channel.clone());
    let token = login(&channel, "alice", "alicepw").await;
    // Used every second, it stays alive past its TTL.
    for _ in 0..4 {
        kv.range(as_user(range("a/x", ""), Some(&token)))
            .await
            .expect("a live token");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let expired = kv.range(as_user(range("a/x", ""), Some(&token))).await.unwrap_err();
    assert_eq!(
        (expired.code(), expired.message()),
        (tonic::Code::Unauthenticated, "etcdserver: invalid auth token")
    );
    // clientv3 logs in again on this error; the new token works.
    let renewed = login(&channel, "alice", "alicepw").await;
    assert_ne!(renewed, token);
    kv.range(as_user(range("a/x", ""), Some(&renewed)))
        .await
        .expect("the new token");
    // etcdctl (clientv3) does the whole dance itself.
    let run = etcdctl(&ringkv.endpoint(), &["--user", ALICE, "put", "a/x", "1"], None);
    assert_eq!((run.status, run.stdout.as_str()), (0, "OK\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_carry_their_user_and_an_auth_change_makes_them_old() {
    let dir = tempfile::tempdir().unwrap();
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let private = dir.path().join("jwt.key");
    let public = dir.path().join("jwt.pub");
    std::fs::write(&private, pair.serialize_pem()).unwrap();
    std::fs::write(&public, pair.public_key_pem()).unwrap();
    let option = format!(
        "jwt,pub-key={},priv-key={},sign-method=ES256,ttl=10m",
        path(&public),
        path(&private)
    );
    let data_dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(data_dir.path(), &["--auth-token", &option]);
    set_up_users(&ringkv.endpoint());
    let channel = support::channel(&ringkv.endpoint()).await;
    let token = login(&channel, "alice", "alicepw").await;
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let mut kv = KvClient::new(channel.clone());
    kv.range(as_user(range("a/x", ""), Some(&token)))
        .await
        .expect("alice's JWT");
    let denied = kv.range(as_user(range("foo", ""), Some(&token))).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let forged = format!("{token}x");
    let refused = kv.range(as_user(range("a/x", ""), Some(&forged))).await.unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (tonic::Code::Unauthenticated, "etcdserver: invalid auth token")
    );
    // A token carries the auth revision it was signed at: after a change,
    // etcd's "revision of auth store is old", and clientv3 logs in again.
    let run = etcdctl(&ringkv.endpoint(), &["--user", ROOT, "role", "add", "other"], None);
    assert_eq!(run.status, 0, "{run:?}");
    let old = kv.range(as_user(range("a/x", ""), Some(&token))).await.unwrap_err();
    assert_eq!(
        (old.code(), old.message()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: revision of auth store is old"
        )
    );
    let run = etcdctl(&ringkv.endpoint(), &["--user", ALICE, "get", "a/x"], None);
    assert_eq!(run.status, 0, "{run:?}");
}

#[test]
fn a_verified_client_certificate_runs_as_its_common_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let server = ca.issue("server", "server");
    let root = ca.issue("root", "root");
    let alice = ca.issue("alice", "alice");
    let client_url = format!("https://127.0.0.1:{}", support::free_port());
    let data_dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = vec![
        "--listen-client-urls".to_string(),
        client_url.clone(),
        "--advertise-client-urls".to_string(),
        client_url.clone(),
        format!("--cert-file={}", path(&server.cert)),
        format!("--key-file={}", path(&server.key)),
        format!("--trusted-ca-file={}", path(&ca.cert_path)),
        "--client-cert-auth=true".to_string(),
    ];
    let _ringkv = Ringkv::spawn(data_dir.path(), &args).ready();
    let as_root = client_flags(&ca.cert_path, Some(&root));
    let as_alice = client_flags(&ca.cert_path, Some(&alice));
    for command in setup_commands() {
        let (ok, text) = tls_etcdctl(&client_url, &as_root, &command);
        assert!(ok, "{command:?}: {text}");
    }
    let (ok, text) = tls_etcdctl(&client_url, &as_root, &["auth", "enable"]);
    assert!(ok, "{text}");
    // No token: the certificate's common name is the user.
    assert_eq!(
        tls_etcdctl(&client_url, &as_alice, &["put", "a/x", "1"]),
        (true, "OK".to_string())
    );
    assert_eq!(
        tls_etcdctl(&client_url, &as_alice, &["put", "foo", "1"]),
        (false, "Error: etcdserver: permission denied".to_string())
    );
    assert_eq!(
        tls_etcdctl(&client_url, &as_root, &["put", "foo", "1"]),
        (true, "OK".to_string())
    );
    // A token wins over the certificate.
    let mut with_user = as_root.clone();
    with_user.push(format!("--user={ALICE}"));
    assert_eq!(
        tls_etcdctl(&client_url, &with_user, &["get", "foo"]),
        (false, "Error: etcdserver: permission denied".to_string())
    );
}

/// Users, roles and their permissions as `etcdctl` lists them, as root.
fn auth_listing(endpoint: &str) -> Vec<String> {
    let commands: [&[&str]; 5] = [
        &["auth", "status"],
        &["user", "list"],
        &["role", "list"],
        &["user", "get", "alice"],
        &["role", "get", "r"],
    ];
    commands
        .iter()
        .map(|args| {
            let mut with_root = vec!["--user", ROOT];
            with_root.extend_from_slice(args);
            let run = etcdctl(endpoint, &with_root, None);
            assert_eq!(run.status, 0, "{args:?}: {run:?}");
            run.stdout
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_travels_in_etcd_snapshots_both_ways_with_every_password() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start();
    set_up_users(&etcd.endpoint());
    let save = |endpoint: &str, to: &std::path::Path| {
        let run = etcdctl(
            endpoint,
            &["--user", ROOT, "snapshot", "save", to.to_str().unwrap()],
            None,
        );
        assert_eq!(run.status, 0, "{run:?}");
    };
    let from_etcd = dir.path().join("etcd.db");
    save(&etcd.endpoint(), &from_etcd);

    // etcd's file into ringkv: passwords (bcrypt hashes) and grants as etcd had them.
    let ringkv_dir = dir.path().join("ringkv");
    restore_into(&from_etcd, &ringkv_dir).expect("an etcd snapshot with auth restores");
    let ringkv = Ringkv::start(&ringkv_dir, &[]);
    assert_eq!(auth_listing(&ringkv.endpoint()), auth_listing(&etcd.endpoint()));
    assert!(alice_reads_as_granted(&ringkv.endpoint()).await);
    let run = etcdctl(&ringkv.endpoint(), &["get", "a/1"], None);
    assert_eq!(run.stderr, "Error: etcdserver: user name is empty", "auth stays on");

    // And back: ringkv's file into etcd.
    let from_ringkv = dir.path().join("ringkv.db");
    save(&ringkv.endpoint(), &from_ringkv);
    let etcd_dir = dir.path().join("etcd-restored");
    etcd_restore(&from_ringkv, &etcd_dir);
    let etcd_again = Etcd::start_with(&["--data-dir", etcd_dir.to_str().unwrap()]);
    assert_eq!(auth_listing(&etcd_again.endpoint()), auth_listing(&etcd.endpoint()));
    assert!(alice_reads_as_granted(&etcd_again.endpoint()).await);
}

/// The Lock and Election services' calls as `token`'s user: their keys are
/// written and read as the caller, as etcd's services do through its
/// in-process client with the caller's context.
async fn lock_and_election_outcomes(endpoint: &str, user: &str, token: Option<&str>) -> Vec<(String, String)> {
    use ringkv_proto::v3electionpb::election_client::ElectionClient;
    use ringkv_proto::v3electionpb::{CampaignRequest, LeaderRequest};
    use ringkv_proto::v3lockpb::lock_client::LockClient;
    use ringkv_proto::v3lockpb::{LockRequest, UnlockRequest};

    let channel = support::channel(endpoint).await;
    let mut lock = LockClient::new(channel.clone());
    let mut election = ElectionClient::new(channel);
    fn deadline<T>(mut request: tonic::Request<T>) -> tonic::Request<T> {
        request.set_timeout(Duration::from_secs(5));
        request
    }
    let mut out = Vec::new();
    for name in ["a/lock", "foo"] {
        let locked = lock
            .lock(deadline(as_user(
                LockRequest {
                    name: name.into(),
                    lease: 0,
                },
                token,
            )))
            .await;
        let key = locked.as_ref().ok().map(|response| response.get_ref().key.clone());
        out.push((format!("lock {name}"), format!("{:?}", outcome(locked))));
        if let Some(key) = key {
            let unlocked = lock.unlock(deadline(as_user(UnlockRequest { key }, token))).await;
            out.push((format!("unlock {name}"), format!("{:?}", outcome(unlocked))));
        }
    }
    // An election of its own for each user: a second campaign would wait.
    for name in [format!("a/election-{user}"), "foo".to_string()] {
        let campaign = CampaignRequest {
            name: name.clone().into_bytes(),
            lease: 0,
            value: b"v".to_vec(),
        };
        let campaigned = election.campaign(deadline(as_user(campaign, token))).await;
        out.push((format!("campaign {name}"), format!("{:?}", outcome(campaigned))));
        let leader = election
            .leader(deadline(as_user(
                LeaderRequest {
                    name: name.clone().into_bytes(),
                },
                token,
            )))
            .await;
        out.push((format!("leader {name}"), format!("{:?}", outcome(leader))));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_calls_are_checked_as_their_caller_as_etcd_checks_them() {
    let etcd = Etcd::start();
    let data_dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(data_dir.path(), &[]);
    let mut answers = Vec::new();
    for endpoint in [etcd.endpoint(), ringkv.endpoint()] {
        let (alice, root) = set_up_and_log_in(&endpoint).await;
        let mut per_user = Vec::new();
        for (user, token) in [("alice", Some(alice.as_str())), ("root", Some(root.as_str()))] {
            per_user.push((user, lock_and_election_outcomes(&endpoint, user, token).await));
        }
        answers.push(per_user);
    }
    assert_eq!(answers[1], answers[0], "ringkv (left) vs etcd (right)");
    let alice = &answers[1][0].1;
    assert!(
        alice.contains(&("lock a/lock".to_string(), "Ok(())".to_string())),
        "{alice:?}"
    );
    assert!(
        alice
            .iter()
            .any(|(call, answer)| call == "lock foo" && answer.contains("permission denied")),
        "{alice:?}"
    );
}

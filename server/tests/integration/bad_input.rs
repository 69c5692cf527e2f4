//! Bad input: requests that are too large, too many txn ops, revisions out of
//! range, garbage bytes on the port, malformed gRPC frames, unknown methods and
//! deadlines. Each gets the answer real etcd gives (where etcd defines one), and
//! after each a second client's put and get still work.
//!
//! Every wait is bounded by [`WAIT`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use h2::client::{ResponseFuture, SendRequest};
use h2::SendStream;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::etcdserverpb::auth_client::AuthClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use pb::request_op::Request as Op;

use crate::support;

/// The longest any single step of these tests may take.
const WAIT: Duration = Duration::from_secs(10);
/// etcd's `--max-request-bytes` default.
const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// etcd's gRPC max receive size: `--max-request-bytes` + 512 KiB.
const MAX_RECV_MESSAGE_BYTES: usize = MAX_REQUEST_BYTES + 512 * 1024;
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A unary call's outcome as a client sees it: OK, or code and message.
#[derive(Debug, PartialEq)]
enum Answer {
    Ok,
    Error { code: tonic::Code, message: String },
}

fn answer<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Answer {
    match result {
        Ok(_) => Answer::Ok,
        Err(status) => Answer::Error {
            code: status.code(),
            message: status.message().to_string(),
        },
    }
}

fn error(code: tonic::Code, message: &str) -> Answer {
    Answer::Error {
        code,
        message: message.to_string(),
    }
}

/// A fresh client puts a key no one else uses and reads it back.
async fn assert_serves(endpoint: &str) {
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

fn put(key: &str, value: Vec<u8>) -> pb::PutRequest {
    pb::PutRequest {
        key: key.as_bytes().to_vec(),
        value,
        ..Default::default()
    }
}

struct Both {
    etcd: support::Etcd,
    ringkv: support::Ringkv,
    _data_dir: tempfile::TempDir,
}

impl Both {
    fn start() -> Both {
        let etcd = support::Etcd::start();
        let data_dir = tempfile::tempdir().unwrap();
        let ringkv = support::Ringkv::start(data_dir.path(), &[]);
        Both {
            etcd,
            ringkv,
            _data_dir: data_dir,
        }
    }

    /// Both servers still serve other clients (each gets the same put, so their
    /// revisions stay in step).
    async fn assert_serve(&self) {
        assert_serves(&self.etcd.endpoint()).await;
        assert_serves(&self.ringkv.endpoint()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_puts_get_etcds_errors_and_others_are_still_served() {
    let both = Both::start();
    let mut etcd = support::kv_client(&both.etcd.endpoint()).await;
    let mut ringkv = support::kv_client(&both.ringkv.endpoint()).await;

    // Over --max-request-bytes but within the gRPC limit: etcd's own check.
    let just_over = put("big", vec![b'x'; MAX_REQUEST_BYTES + 1024]);
    let expected = answer(etcd.put(just_over.clone()).await);
    assert_eq!(
        expected,
        error(tonic::Code::InvalidArgument, "etcdserver: request is too large")
    );
    assert_eq!(answer(ringkv.put(just_over).await), expected);
    both.assert_serve().await;

    // Over the gRPC max receive size: grpc-go refuses the message itself.
    let two_mib = put("big", vec![b'x'; 2 * 1024 * 1024]);
    let length = two_mib.encoded_len();
    let expected = answer(etcd.put(two_mib.clone()).await);
    assert_eq!(
        expected,
        error(
            tonic::Code::ResourceExhausted,
            &format!("grpc: received message larger than max ({length} vs. {MAX_RECV_MESSAGE_BYTES})")
        )
    );
    assert_eq!(answer(ringkv.put(two_mib).await), expected);
    both.assert_serve().await;

    // The client that sent them is fine too.
    let small = put("small", b"v".to_vec());
    assert_eq!(answer(ringkv.put(small).await), Answer::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_with_129_ops_is_too_many_operations_and_128_are_fine() {
    let both = Both::start();
    let mut etcd = support::kv_client(&both.etcd.endpoint()).await;
    let mut ringkv = support::kv_client(&both.ringkv.endpoint()).await;
    let txn = |ops: usize| pb::TxnRequest {
        success: (0..ops)
            .map(|i| pb::RequestOp {
                request: Some(Op::RequestPut(put(&format!("txn/{i}"), b"v".to_vec()))),
            })
            .collect(),
        ..Default::default()
    };

    let expected = answer(etcd.txn(txn(129)).await);
    assert_eq!(
        expected,
        error(
            tonic::Code::InvalidArgument,
            "etcdserver: too many operations in txn request"
        )
    );
    assert_eq!(answer(ringkv.txn(txn(129)).await), expected);
    both.assert_serve().await;

    let etcd_revision = etcd.txn(txn(128)).await.unwrap().into_inner().header.unwrap().revision;
    let ringkv_revision = ringkv
        .txn(txn(128))
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    assert_eq!(ringkv_revision, etcd_revision, "128 puts are one revision");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_at_future_and_compacted_revisions_get_etcds_errors() {
    let both = Both::start();
    let mut etcd = support::kv_client(&both.etcd.endpoint()).await;
    let mut ringkv = support::kv_client(&both.ringkv.endpoint()).await;
    // Revisions 2..=6.
    for i in 0..5 {
        let request = put("k", format!("v{i}").into_bytes());
        etcd.put(request.clone()).await.unwrap();
        ringkv.put(request).await.unwrap();
    }
    let compaction = pb::CompactionRequest {
        revision: 4,
        physical: true,
    };
    etcd.compact(compaction.clone()).await.unwrap();
    ringkv.compact(compaction).await.unwrap();

    let range_at = |revision: i64, serializable: bool| pb::RangeRequest {
        key: b"k".to_vec(),
        revision,
        serializable,
        ..Default::default()
    };
    let values = |result: Result<tonic::Response<pb::RangeResponse>, tonic::Status>| {
        result
            .map(|r| r.into_inner().kvs)
            .map_err(|s| (s.code(), s.message().to_string()))
    };
    const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
    const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";
    // Each case is worked out against the current revision, which every
    // `assert_serve` moves on.
    // (case, revision read given the current one, value or error expected)
    type Case = (&'static str, fn(i64) -> i64, Result<&'static str, &'static str>);
    let cases: [Case; 6] = [
        ("below the compaction", |_| 3, Err(COMPACTED)),
        ("far below the compaction", |_| 1, Err(COMPACTED)),
        ("at the compaction", |_| 4, Ok("v2")),
        ("the current revision", |current| current, Ok("v4")),
        ("the next revision", |current| current + 1, Err(FUTURE)),
        ("far in the future", |current| current + 1000, Err(FUTURE)),
    ];
    for (name, revision, outcome) in cases {
        for serializable in [false, true] {
            let current = etcd
                .range(range_at(0, false))
                .await
                .unwrap()
                .into_inner()
                .header
                .unwrap()
                .revision;
            let request = range_at(revision(current), serializable);
            let expected = values(etcd.range(request.clone()).await);
            match (&expected, outcome) {
                (Ok(kvs), Ok(value)) => assert_eq!(kvs[0].value, value.as_bytes()),
                (Err((code, message)), Err(wanted)) => {
                    assert_eq!(*code, tonic::Code::OutOfRange);
                    assert_eq!(message, wanted);
                }
                _ => panic!("etcd at {name}: {expected:?}"),
            }
            assert_eq!(values(ringkv.range(request).await), expected, "{name}");
        }
        both.assert_serve().await;
    }
}

/// Reads from `stream` until the server closes it (or resets it); false if it is
/// still open after [`WAIT`]. Returns what was read.
async fn read_until_closed(stream: &mut TcpStream) -> (bool, Vec<u8>) {
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => return (false, seen),
            Ok(Ok(0)) | Ok(Err(_)) => return (true, seen),
            Ok(Ok(read)) => seen.extend_from_slice(&buffer[..read]),
        }
    }
}

/// The types of the HTTP/2 frames in `bytes` (a server's side of a connection).
fn http2_frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let length = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + length).min(bytes.len())..];
    }
    types
}

const GOAWAY: u8 = 0x7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_client_port_closes_that_connection_only() {
    let both = Both::start();
    let mut rng = StdRng::seed_from_u64(7);
    let random: Vec<u8> = (0..4096).map(|_| rng.gen()).collect();
    for (name, addr) in [("etcd", both.etcd.addr), ("ringkv", both.ringkv.addr)] {
        // Random bytes, the client still listening: closed (perhaps after a 400).
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&random).await.unwrap();
        let (closed, _) = read_until_closed(&mut stream).await;
        assert!(closed, "{name}: random bytes leave the connection open");

        // A truncated HTTP/2 preface, then the client's end of the connection.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&HTTP2_PREFACE[..16]).await.unwrap();
        stream.shutdown().await.unwrap();
        let (closed, _) = read_until_closed(&mut stream).await;
        assert!(closed, "{name}: a truncated preface leaves the connection open");

        // The preface, then frames that make no sense: GOAWAY and closed.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(HTTP2_PREFACE).await.unwrap();
        stream.write_all(&random).await.unwrap();
        let (closed, seen) = read_until_closed(&mut stream).await;
        assert!(closed, "{name}: garbage frames leave the connection open");
        // etcd just closes; ringkv also says why.
        assert!(
            name == "etcd" || http2_frame_types(&seen).contains(&GOAWAY),
            "{name}: no GOAWAY for garbage frames, got frames {:?}",
            http2_frame_types(&seen)
        );
    }
    both.assert_serve().await;
}

/// A gRPC call's outcome as seen on the wire.
#[derive(Debug, PartialEq)]
struct Outcome {
    /// `grpc-status`, or how the stream failed.
    status: String,
    /// The response's content type, if it got that far.
    content_type: String,
    message: String,
    /// Response messages, without their 5-byte prefixes.
    messages: Vec<Bytes>,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.status == "0"
    }
}

/// An HTTP/2 connection used as a raw gRPC client.
async fn h2_connect(addr: SocketAddr) -> SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Request headers (gRPC metadata) beyond the ones every call carries.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// A call whose request body is still open.
struct Call {
    response: ResponseFuture,
    body: SendStream<Bytes>,
}

async fn start_call(client: &SendRequest<Bytes>, path: &str, headers: Headers<'_>) -> Call {
    let mut request = http::Request::post(format!("http://127.0.0.1{path}")).header("te", "trailers");
    if !headers.iter().any(|(name, _)| *name == "content-type") {
        request = request.header("content-type", "application/grpc");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut client = tokio::time::timeout(WAIT, client.clone().ready())
        .await
        .expect("connection ready in time")
        .expect("connection usable");
    let (response, body) = client.send_request(request.body(()).unwrap(), false).unwrap();
    Call { response, body }
}

impl Call {
    /// Sends request bytes. The server may have answered and closed the stream
    /// already (an unknown method needs no message): then the bytes go nowhere.
    fn send(&mut self, bytes: &[u8], end_of_stream: bool) {
        let _ = self.body.send_data(Bytes::copy_from_slice(bytes), end_of_stream);
    }

    async fn outcome(self) -> Outcome {
        let Call { response, body } = self;
        let outcome = tokio::time::timeout(WAIT, read_outcome(response))
            .await
            .expect("the call is answered in time");
        drop(body);
        outcome
    }
}

async fn read_outcome(response: ResponseFuture) -> Outcome {
    let failed = |error: h2::Error| Outcome {
        status: format!("stream failed: {error}"),
        content_type: String::new(),
        message: String::new(),
        messages: Vec::new(),
    };
    let response = match response.await {
        Ok(response) => response,
        Err(error) => return failed(error),
    };
    let (parts, mut body) = response.into_parts();
    let content_type = parts
        .headers
        .get("content-type")
        .map(|value| percent_decode(value.as_bytes()))
        .unwrap_or_default();
    if parts.headers.contains_key("grpc-status") {
        return status_outcome(content_type, &parts.headers, Vec::new());
    }
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(chunk) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            Err(error) => return failed(error),
        }
    }
    let trailers = match body.trailers().await {
        Ok(trailers) => trailers.unwrap_or_default(),
        Err(error) => return failed(error),
    };
    status_outcome(content_type, &trailers, split_messages(&data))
}

fn status_outcome(content_type: String, headers: &http::HeaderMap, messages: Vec<Bytes>) -> Outcome {
    let text = |name: &str| {
        headers
            .get(name)
            .map(|value| percent_decode(value.as_bytes()))
            .unwrap_or_default()
    };
    Outcome {
        status: text("grpc-status"),
        content_type,
        message: text("grpc-message"),
        messages,
    }
}

fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn split_messages(mut data: &[u8]) -> Vec<Bytes> {
    let mut messages = Vec::new();
    while data.len() >= 5 {
        let length = (&data[1..5]).get_u32() as usize;
        let end = (5 + length).min(data.len());
        messages.push(Bytes::copy_from_slice(&data[5..end]));
        data = &data[end..];
    }
    messages
}

/// A message with its gRPC prefix.
fn framed(message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

async fn unary(client: &SendRequest<Bytes>, path: &str, headers: Headers<'_>, body: &[u8]) -> Outcome {
    let mut call = start_call(client, path, headers).await;
    call.send(body, true);
    call.outcome().await
}

/// A response whose header carries a raft term.
trait Headed: Message + Default {
    fn header(&mut self) -> &mut Option<pb::ResponseHeader>;
}

impl Headed for pb::PutResponse {
    fn header(&mut self) -> &mut Option<pb::ResponseHeader> {
        &mut self.header
    }
}

impl Headed for pb::RangeResponse {
    fn header(&mut self) -> &mut Option<pb::ResponseHeader> {
        &mut self.header
    }
}

/// An outcome with the raft term (which legitimately differs) zeroed in its
/// response messages of type `M`.
fn without_raft_term_in<M: Headed>(mut outcome: Outcome) -> Outcome {
    for message in &mut outcome.messages {
        let mut response = M::decode(message.clone()).expect("a response message");
        if let Some(header) = response.header() {
            header.raft_term = 0;
        }
        *message = response.encode_to_vec().into();
    }
    outcome
}

fn without_raft_term(outcome: Outcome) -> Outcome {
    without_raft_term_in::<pb::PutResponse>(outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_grpc_frame_fails_only_its_own_stream() {
    let both = Both::start();
    let valid_put = framed(&put("frames", b"ok".to_vec()));
    let gzip: Headers = &[("grpc-encoding", "gzip")];
    let snappy: Headers = &[("grpc-encoding", "snappy")];
    let identity: Headers = &[("grpc-encoding", "identity")];
    let cases: Vec<(&str, Headers, Vec<u8>)> = vec![
        ("no message at all", &[], vec![]),
        ("half a prefix", &[], vec![0, 0, 0]),
        (
            "a prefix promising more than comes",
            &[],
            [&[0, 0, 0, 0, 100][..], &[0x0a; 10]].concat(),
        ),
        ("the compressed flag without an encoding", &[], vec![1, 0, 0, 0, 0]),
        ("the compressed flag with identity", identity, vec![1, 0, 0, 0, 0]),
        ("the compressed flag, truncated", &[], vec![1, 0, 0, 0, 9, 1]),
        ("an unknown payload format", &[], vec![2, 0, 0, 0, 0]),
        ("gzip, uncompressed", gzip, valid_put.clone()),
        ("gzip, compressed garbage", gzip, vec![1, 0, 0, 0, 2, 1, 2]),
        ("snappy, uncompressed", snappy, valid_put.clone()),
        ("snappy, compressed", snappy, vec![1, 0, 0, 0, 2, 1, 2]),
        ("identity, uncompressed", identity, valid_put.clone()),
        ("an empty message", &[], vec![0, 0, 0, 0, 0]),
        ("two messages", &[], [valid_put.clone(), valid_put.clone()].concat()),
    ];
    let etcd = h2_connect(both.etcd.addr).await;
    let ringkv = h2_connect(both.ringkv.addr).await;
    let mut differences = Vec::new();
    for (name, headers, body) in &cases {
        let expected = without_raft_term(unary(&etcd, "/etcdserverpb.KV/Put", headers, body).await);
        let actual = without_raft_term(unary(&ringkv, "/etcdserverpb.KV/Put", headers, body).await);
        if actual != expected {
            differences.push(format!("{name}:\n  ringkv {actual:?}\n  etcd   {expected:?}"));
        }
    }
    assert!(
        differences.is_empty(),
        "ringkv differs from etcd:\n{}",
        differences.join("\n")
    );
    // Not protobuf (field number 0 is invalid): the same code; the decoder's own
    // words after the prefix differ (Go's generated code vs prost).
    let not_protobuf = [0, 0, 0, 0, 3, 0, 0, 0];
    let expected = unary(&etcd, "/etcdserverpb.KV/Put", &[], &not_protobuf).await;
    let actual = unary(&ringkv, "/etcdserverpb.KV/Put", &[], &not_protobuf).await;
    assert_eq!(expected.status, "13", "etcd: {expected:?}");
    assert_eq!(actual.status, expected.status, "{actual:?}");
    let prefix = "grpc: error unmarshalling request: ";
    assert!(
        expected.message.starts_with(prefix) && actual.message.starts_with(prefix),
        "{actual:?}"
    );
    drop(etcd);

    // On one connection: a stream stays open with half a message while other
    // streams are served; then it ends short and fails alone.
    let mut truncated = start_call(&ringkv, "/etcdserverpb.KV/Put", &[]).await;
    truncated.send(&[0, 0, 0, 0, 100], false);
    truncated.send(&[0x0a; 10], false);
    let garbage = unary(&ringkv, "/etcdserverpb.KV/Put", &[], &not_protobuf).await;
    assert_eq!(garbage.status, "13");
    let valid = unary(&ringkv, "/etcdserverpb.KV/Put", &[], &valid_put).await;
    assert!(valid.ok(), "a put next to a malformed stream: {valid:?}");
    truncated.send(&[], true);
    assert!(!truncated.outcome().await.ok());
    let get = pb::RangeRequest {
        key: b"frames".to_vec(),
        ..Default::default()
    };
    let read = unary(&ringkv, "/etcdserverpb.KV/Range", &[], &framed(&get)).await;
    assert!(read.ok(), "a read after the malformed streams: {read:?}");
    let response = pb::RangeResponse::decode(read.messages[0].clone()).unwrap();
    assert_eq!(response.kvs[0].value, b"ok");
    both.assert_serve().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_services_and_methods_are_unimplemented() {
    let both = Both::start();
    let empty_message = [0u8, 0, 0, 0, 0];
    let etcd = h2_connect(both.etcd.addr).await;
    let ringkv = h2_connect(both.ringkv.addr).await;
    for path in [
        "/foo.Bar/Baz",
        "/etcdserverpb.KV/Nope",
        "/etcdserverpb.Watchers/Watch",
        "/etcdserverpb.KV/",
        "/etcdserverpb.KV/Range/x",
        "/a/b/c",
    ] {
        let expected = unary(&etcd, path, &[], &empty_message).await;
        assert_eq!(expected.status, "12", "etcd {path}: {expected:?}");
        assert_eq!(unary(&ringkv, path, &[], &empty_message).await, expected, "{path}");
    }
    // No service/method split at all: etcd 3.4's grpc-go answers RESOURCE_EXHAUSTED,
    // a bug fixed in grpc-go 1.39 (grpc/grpc-go#4464, so etcd 3.5) to UNIMPLEMENTED.
    for path in ["/nothing", "/"] {
        let expected = unary(&etcd, path, &[], &empty_message).await;
        assert_eq!(expected.status, "8", "etcd {path}: {expected:?}");
        let actual = unary(&ringkv, path, &[], &empty_message).await;
        assert_eq!(actual.status, "12", "{path}: {actual:?}");
        assert_eq!(actual.message, expected.message, "{path}");
    }

    // AuthStatus is etcd 3.5's (3.4 does not know it); ringkv serves it.
    let channel = tonic::transport::Channel::from_shared(both.ringkv.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = AuthClient::new(channel)
        .auth_status(pb::AuthStatusRequest {})
        .await
        .expect("AuthStatus is served")
        .into_inner();
    assert_eq!((status.enabled, status.auth_revision), (false, 1));
    both.assert_serve().await;
}

/// DEADLINE_EXCEEDED (4). etcd 3.4's grpc-go reports a deadline that its
/// handler (rather than grpc-go itself) ran into as UNKNOWN (2); newer grpc-go
/// says 4 for both, and so does ringkv.
fn missed_its_deadline(server: &str, outcome: &Outcome) -> bool {
    outcome.message == "context deadline exceeded"
        && (outcome.status == "4" || server == "etcd" && outcome.status == "2")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_honoured() {
    let both = Both::start();
    let get = framed(&pb::RangeRequest {
        key: b"k".to_vec(),
        ..Default::default()
    });
    for (name, addr) in [("etcd", both.etcd.addr), ("ringkv", both.ringkv.addr)] {
        let client = h2_connect(addr).await;
        // A linearizable read with a 1 ns budget: answered either way, never stuck.
        let tiny = unary(&client, "/etcdserverpb.KV/Range", &[("grpc-timeout", "1n")], &get).await;
        assert!(
            tiny.ok() || missed_its_deadline(name, &tiny),
            "{name}: a 1 ns read answered {tiny:?}"
        );

        // A request whose message never completes: the deadline ends it.
        let started = Instant::now();
        let mut stalled = start_call(&client, "/etcdserverpb.KV/Put", &[("grpc-timeout", "300m")]).await;
        stalled.send(&[0, 0, 0, 0, 50], false);
        let stalled = stalled.outcome().await;
        assert_eq!(stalled.status, "4", "{name}: {stalled:?}");
        assert!(started.elapsed() >= Duration::from_millis(250), "{name}: too early");

        // A deadline thousands of years away is no deadline.
        let far = unary(
            &client,
            "/etcdserverpb.KV/Range",
            &[("grpc-timeout", "99999999H")],
            &get,
        )
        .await;
        assert!(far.ok(), "{name}: {far:?}");

        // A negative timeout has passed already.
        let negative = unary(&client, "/etcdserverpb.KV/Range", &[("grpc-timeout", "-1S")], &get).await;
        assert!(missed_its_deadline(name, &negative), "{name}: {negative:?}");
    }

    // A malformed timeout: grpc-go resets the stream (PROTOCOL_ERROR).
    let etcd = h2_connect(both.etcd.addr).await;
    let ringkv = h2_connect(both.ringkv.addr).await;
    for malformed in ["abc", "1.5S", "123456789S", "1x", "S"] {
        let headers = [("grpc-timeout", malformed)];
        let expected = unary(&etcd, "/etcdserverpb.KV/Range", &headers, &get).await;
        assert!(
            expected.status.contains("protocol error"),
            "etcd {malformed:?}: {expected:?}"
        );
        let actual = unary(&ringkv, "/etcdserverpb.KV/Range", &headers, &get).await;
        assert_eq!(actual, expected, "{malformed:?}");
    }
    both.assert_serve().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_types_are_grpcs_or_the_stream_is_http() {
    let both = Both::start();
    let get = framed(&pb::RangeRequest {
        key: b"k".to_vec(),
        ..Default::default()
    });
    let etcd = h2_connect(both.etcd.addr).await;
    let ringkv = h2_connect(both.ringkv.addr).await;
    for content_type in ["application/grpc+proto", "application/grpc;charset=utf-8"] {
        let headers = [("content-type", content_type)];
        let expected =
            without_raft_term_in::<pb::RangeResponse>(unary(&etcd, "/etcdserverpb.KV/Range", &headers, &get).await);
        let actual =
            without_raft_term_in::<pb::RangeResponse>(unary(&ringkv, "/etcdserverpb.KV/Range", &headers, &get).await);
        assert_eq!(actual, expected, "{content_type}: ringkv (left) vs etcd (right)");
    }
    // A stream that is no gRPC call: etcd's plain port resets it (its every
    // HTTP/2 stream goes to grpc-go); ringkv's answers it as HTTP, as etcd's
    // TLS port does (here Go's 404: the path is no HTTP endpoint).
    for content_type in ["application/json", "application/grpcx"] {
        let headers = [("content-type", content_type)];
        let refused = unary(&etcd, "/etcdserverpb.KV/Range", &headers, &get).await;
        assert!(
            refused.status.contains("protocol error"),
            "etcd {content_type}: {refused:?}"
        );
        let answered = unary(&ringkv, "/etcdserverpb.KV/Range", &headers, &get).await;
        assert_eq!(
            (answered.status.as_str(), answered.content_type.as_str()),
            ("", "text/plain; charset=utf-8"),
            "ringkv {content_type}: {answered:?}"
        );
    }
    both.assert_serve().await;
}

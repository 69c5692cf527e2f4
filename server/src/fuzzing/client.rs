//! Client-port targets. `grpc_request`: a method path and the DATA bytes of
//! one call, through the gRPC message framing, the decoding of that method's
//! request and etcd's checks, as `EtcdService` runs them. `client_port`:
//! arbitrary bytes on a client-port connection, through the first-bytes
//! sniffing to HTTP/1.1 or to HTTP/2 and the gRPC layer (a service that
//! decodes and checks as `EtcdService` does, then answers at once).

use std::rc::Rc;

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite};
use prost::Message;
use ringkv_proto::etcdserverpb as pb;

use crate::client::auth_service;
use crate::client::etcd_service::{self, Method, ETCD_SERVICES};
use crate::client::lease_service::{self, LeaseMethod};
use crate::client::watch;
use crate::client::{election_service, health, lock_service};
use crate::config::MAX_TXN_OPS_DEFAULT;
use crate::grpc::{
    self, CallContext, Charge, Encoded, GrpcService, MessageDecoder, MethodKind, RequestStream, ResponseSink, Status,
};
use crate::net::{self, ConnectionLimits, HttpHandler, HttpRequest, HttpResponse};
use ringkv_engine::fuzzing::run;

/// Paths a call may name: every method of etcd's API, then some that are not.
fn method_paths() -> Vec<String> {
    let mut paths: Vec<String> = ETCD_SERVICES
        .iter()
        .flat_map(|(service, methods)| methods.iter().map(move |method| format!("/{service}/{method}")))
        .collect();
    paths.extend(["/etcdserverpb.KV/Nope", "/nothing", "/foo.Bar/Baz"].map(String::from));
    paths
}

/// The largest request message the client port takes by default.
fn max_message_bytes() -> usize {
    ConnectionLimits::default().http2.max_recv_message_bytes
}

/// Input: a method index (into [`method_paths`]), the size of the DATA
/// chunks the bytes arrive in (0: one chunk), then the call's DATA bytes.
pub fn grpc_request(data: &[u8]) {
    let [method, chunk_bytes, body @ ..] = data else {
        return;
    };
    let paths = method_paths();
    let Ok(method) = etcd_service::route(&paths[usize::from(*method) % paths.len()]) else {
        return;
    };
    let chunk_bytes = if *chunk_bytes == 0 {
        body.len().max(1)
    } else {
        usize::from(*chunk_bytes)
    };
    let mut decoder = MessageDecoder::new(max_message_bytes(), Charge::unbounded());
    for chunk in body.chunks(chunk_bytes) {
        if decoder.push(Bytes::copy_from_slice(chunk)).is_err() {
            return;
        }
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => {
                    let _ = request(method, message);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = decoder.finish();
}

/// One request message of `method`, decoded and checked as the service does.
fn request(method: Method, message: Bytes) -> Result<(), Status> {
    match method {
        Method::Unary(unary) => {
            etcd_service::unary_request(unary, message, MAX_TXN_OPS_DEFAULT)?;
        }
        Method::Lease(LeaseMethod::KeepAlive) => {
            let _: pb::LeaseKeepAliveRequest = grpc::decode(message)?;
        }
        Method::Lease(lease) => {
            lease_service::unary_request(lease, message)?;
        }
        Method::Watch => {
            let request: pb::WatchRequest = grpc::decode(message)?;
            let _ = watch::command(1, request, &Default::default());
        }
        Method::Snapshot => {
            let _: pb::SnapshotRequest = grpc::decode(message)?;
        }
        Method::Health(_) => {
            health::decode(message)?;
        }
        Method::Auth(auth) => {
            auth_service::decode(auth, message)?;
        }
        Method::Lock(lock) => lock_service::decode(lock, message)?,
        Method::Election(election) => election_service::decode(election, message)?,
    }
    Ok(())
}

/// The etcd API as far as the client core goes: route, decode, check, then an
/// empty answer instead of a trip to the store core.
struct DecodingService;

impl GrpcService for DecodingService {
    fn method_kind(&self, path: &str) -> Result<MethodKind, Status> {
        etcd_service::route(path).map(Method::kind)
    }

    async fn unary(&self, path: &str, message: Bytes, _ctx: CallContext) -> Result<Encoded, Status> {
        request(etcd_service::route(path)?, message)?;
        Ok(grpc::encode(&pb::ResponseHeader::default()))
    }

    async fn streaming(
        &self,
        path: &str,
        mut requests: RequestStream,
        mut responses: ResponseSink,
        _ctx: CallContext,
    ) -> Result<(), Status> {
        let method = etcd_service::route(path)?;
        while let Some(message) = requests.next().await {
            request(method, message?)?;
            responses.send(grpc::encode(&pb::ResponseHeader::default())).await?;
        }
        Ok(())
    }
}

struct OkHandler;

impl HttpHandler for OkHandler {
    async fn handle(&self, request: HttpRequest) -> HttpResponse {
        HttpResponse::text(200, &format!("{} {}\n", request.method, request.path))
    }
}

/// A connection whose client sends `input`, `chunk_bytes` at most per read,
/// then waits a little (so calls can answer) and closes; what the server
/// writes is kept.
struct Connection {
    input: Vec<u8>,
    at: usize,
    chunk_bytes: usize,
    /// Reads at the end of the input that wait before the close.
    waits: usize,
    output: Rc<std::cell::RefCell<Vec<u8>>>,
}

/// Reads at the end of a connection's input that wait before it closes.
const WAITS_BEFORE_CLOSE: usize = 32;

impl AsyncRead for Connection {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.at == this.input.len() && this.waits > 0 {
            this.waits -= 1;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        let n = (this.input.len() - this.at).min(buf.len()).min(this.chunk_bytes);
        buf[..n].copy_from_slice(&this.input[this.at..this.at + n]);
        this.at += n;
        std::task::Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.output.borrow_mut().extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Passes of the executor after the connection ends, for the calls it
/// started to see the connection gone and finish.
const WIND_DOWN_YIELDS: usize = 16;

/// Input: the most bytes a read returns (0: 4096), then what the client
/// sends. The connection must end without a panic once the input does.
pub fn client_port(data: &[u8]) {
    let Some((&chunk_bytes, input)) = data.split_first() else {
        return;
    };
    serve(chunk_bytes, input);
}

/// What the server answers to `input`.
fn serve(chunk_bytes: u8, input: &[u8]) -> Vec<u8> {
    let output = Rc::default();
    let connection = Connection {
        input: input.to_vec(),
        at: 0,
        chunk_bytes: if chunk_bytes == 0 {
            4096
        } else {
            usize::from(chunk_bytes)
        },
        waits: WAITS_BEFORE_CLOSE,
        output: Rc::clone(&output),
    };
    let limits = ConnectionLimits::default();
    let http2_limits = Rc::new(limits.http2.clone());
    run(async move {
        net::serve_connection(
            connection,
            Rc::new(DecodingService),
            Rc::new(OkHandler),
            Rc::new(limits),
            http2_limits,
            None,
        )
        .await;
        for _ in 0..WIND_DOWN_YIELDS {
            futures_lite::future::yield_now().await;
        }
    });
    output.take()
}

/// One gRPC message framed for the wire.
fn framed<M: Message>(message: &M) -> Vec<u8> {
    grpc::encode(message)
        .into_frame()
        .expect("a seed fits a frame")
        .to_vec()
}

fn put(key: &str, value: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

/// A Txn with a compare, a put, a range, and a nested txn with a delete.
fn txn() -> pb::TxnRequest {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let nested = pb::TxnRequest {
        compare: Vec::new(),
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: b"old/".to_vec(),
                range_end: b"old0".to_vec(),
                prev_kv: true,
            })),
        }],
        failure: vec![put("b", "2")],
    };
    pb::TxnRequest {
        compare: vec![pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: b"a".to_vec(),
            range_end: Vec::new(),
            target_union: Some(TargetUnion::Version(0)),
        }],
        success: vec![
            put("a", "1"),
            pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(range())),
            },
            pb::RequestOp {
                request: Some(pb::request_op::Request::RequestTxn(nested)),
            },
        ],
        failure: vec![put("c", "3")],
    }
}

fn range() -> pb::RangeRequest {
    pb::RangeRequest {
        key: b"k".to_vec(),
        range_end: b"l".to_vec(),
        limit: 10,
        revision: 3,
        sort_order: 1,
        sort_target: 2,
        keys_only: true,
        ..Default::default()
    }
}

/// Seeds: `(path, messages)` as a grpc_request input.
fn call(path: &str, chunk_bytes: u8, messages: &[Vec<u8>]) -> Vec<u8> {
    let index = method_paths()
        .iter()
        .position(|known| known == path)
        .unwrap_or_else(|| panic!("{path} is a known path"));
    [
        vec![u8::try_from(index).expect("few methods"), chunk_bytes],
        messages.concat(),
    ]
    .concat()
}

pub(super) fn grpc_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let watch_create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: b"k".to_vec(),
            range_end: b"\0".to_vec(),
            start_revision: 5,
            progress_notify: true,
            filters: vec![1],
            prev_kv: true,
            watch_id: 7,
            fragment: true,
        })),
    };
    let watch_cancel = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CancelRequest(pb::WatchCancelRequest {
            watch_id: 7,
        })),
    };
    let member_add = pb::MemberAddRequest {
        peer_ur_ls: vec!["http://127.0.0.1:2380".to_string()],
        is_learner: true,
    };
    vec![
        (
            "put",
            call(
                "/etcdserverpb.KV/Put",
                0,
                &[framed(&pb::PutRequest {
                    key: b"greeting".to_vec(),
                    value: b"hello".to_vec(),
                    lease: 7,
                    prev_kv: true,
                    ..Default::default()
                })],
            ),
        ),
        ("range", call("/etcdserverpb.KV/Range", 0, &[framed(&range())])),
        ("txn-in-chunks", call("/etcdserverpb.KV/Txn", 7, &[framed(&txn())])),
        (
            "watch-create-cancel",
            call(
                "/etcdserverpb.Watch/Watch",
                0,
                &[framed(&watch_create), framed(&watch_cancel)],
            ),
        ),
        (
            "member-add",
            call("/etcdserverpb.Cluster/MemberAdd", 0, &[framed(&member_add)]),
        ),
        (
            "lease-grant",
            call(
                "/etcdserverpb.Lease/LeaseGrant",
                0,
                &[framed(&pb::LeaseGrantRequest { ttl: 60, id: 0 })],
            ),
        ),
        (
            "lock",
            call(
                "/v3lockpb.Lock/Lock",
                0,
                &[framed(&ringkv_proto::v3lockpb::LockRequest {
                    name: b"my-lock".to_vec(),
                    lease: 7,
                })],
            ),
        ),
        (
            "proclaim",
            call(
                "/v3electionpb.Election/Proclaim",
                0,
                &[framed(&ringkv_proto::v3electionpb::ProclaimRequest {
                    leader: Some(ringkv_proto::v3electionpb::LeaderKey {
                        name: b"my-election".to_vec(),
                        key: b"my-election/7".to_vec(),
                        rev: 5,
                        lease: 7,
                    }),
                    value: b"me".to_vec(),
                })],
            ),
        ),
    ]
}

/// An HTTP/2 client's first bytes: the preface, an empty SETTINGS frame.
const HTTP2_START: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// One HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a small frame").to_be_bytes();
    [&len[1..], &[kind, flags], &stream.to_be_bytes(), payload].concat()
}

/// A gRPC call on stream 1.
fn h2_call(path: &str, message: &[u8]) -> Vec<u8> {
    let headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-timeout", "5S"),
    ];
    h2_request(&headers, message)
}

/// A request on stream 1: HEADERS (literal header fields, no indexing, new
/// names), then one DATA frame ending the stream.
fn h2_request(headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    for &(name, value) in headers {
        block.push(0);
        block.push(u8::try_from(name.len()).expect("a short name"));
        block.extend_from_slice(name.as_bytes());
        block.push(u8::try_from(value.len()).expect("a short value"));
        block.extend_from_slice(value.as_bytes());
    }
    const HEADERS: u8 = 1;
    const DATA: u8 = 0;
    const END_HEADERS: u8 = 4;
    const END_STREAM: u8 = 1;
    [
        h2_frame(HEADERS, END_HEADERS, 1, &block),
        h2_frame(DATA, END_STREAM, 1, body),
    ]
    .concat()
}

pub(super) fn client_port_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let put = framed(&pb::PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    });
    let grpc_put = [HTTP2_START, &h2_call("/etcdserverpb.KV/Put", &put)].concat();
    let grpc_txn = [HTTP2_START, &h2_call("/etcdserverpb.KV/Txn", &framed(&txn()))].concat();
    // The JSON gateway over HTTP/2: a stream that is no gRPC call.
    let gateway_headers = [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", "/v3/kv/range"),
        (":authority", "localhost"),
        ("content-type", "application/json"),
    ];
    let gateway = [HTTP2_START, &h2_request(&gateway_headers, br#"{"key":"Zm9v"}"#)].concat();
    vec![
        ("http1-health", [&[0][..], b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n"].concat()),
        (
            "http1-keep-alive",
            [
                &[5][..],
                b"GET /version HTTP/1.1\r\n\r\nPOST /x?y=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.0\r\n\r\n",
            ]
            .concat(),
        ),
        ("grpc-put", [&[0][..], &grpc_put].concat()),
        ("grpc-txn-in-small-reads", [&[9][..], &grpc_txn].concat()),
        ("http2-gateway-post", [&[0][..], &gateway].concat()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The HTTP/2 frames in `bytes`: (type, stream).
    fn h2_frames(mut bytes: &[u8]) -> Vec<(u8, u32)> {
        let mut frames = Vec::new();
        while bytes.len() >= 9 {
            let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let stream = u32::from_be_bytes(bytes[5..9].try_into().unwrap()) & 0x7fff_ffff;
            frames.push((bytes[3], stream));
            bytes = &bytes[(9 + len).min(bytes.len())..];
        }
        frames
    }

    #[test]
    fn the_client_port_seeds_are_answered() {
        for (name, seed) in client_port_seeds() {
            let output = serve(seed[0], &seed[1..]);
            if name.starts_with("http1") {
                let text = String::from_utf8(output).unwrap();
                assert!(text.starts_with("HTTP/1.1 200 OK"), "{name}: {text}");
            } else {
                const DATA: u8 = 0;
                let frames = h2_frames(&output);
                assert!(frames.contains(&(DATA, 1)), "{name}: no DATA answer in {frames:?}");
            }
        }
    }

    #[test]
    fn the_grpc_seeds_name_served_methods_and_pass_the_checks() {
        for (name, seed) in grpc_seeds() {
            let method = etcd_service::route(&method_paths()[usize::from(seed[0])]).unwrap();
            let mut decoder = MessageDecoder::new(max_message_bytes(), Charge::unbounded());
            decoder.push(Bytes::copy_from_slice(&seed[2..])).unwrap();
            let message = decoder.next_message().unwrap().unwrap();
            request(method, message).unwrap_or_else(|status| panic!("{name}: {status:?}"));
        }
    }
}

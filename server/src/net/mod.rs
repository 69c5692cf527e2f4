//! The client port: one TCP listener serving HTTP/2 (gRPC) and HTTP/1.1,
//! told apart by the first bytes a client sends; on an https port, the same
//! once a TLS handshake is done (`tls`). HTTP requests (the JSON gateway,
//! /health, ...) go to one `HttpHandler` over either protocol: HTTP/1.1
//! (`http1`), or an HTTP/2 stream that is no gRPC call (`http2`).

mod coalesced;
mod http1;
mod http2;
mod prefixed;

pub use http1::{Chunks, HttpHandler, HttpRequest, HttpResponse};

mod tls;

use std::rc::Rc;
use std::time::Duration;

use futures_lite::{future, AsyncRead, AsyncReadExt, AsyncWrite};
use glommio::net::TcpListener;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use bytes::Bytes;

use crate::grpc::{
    self, CallContext, ConnectionBudget, Encoded, GrpcService, Http2Limits, HttpStream, RequestStream, ResponseSink,
    CONNECTION_REQUEST_BYTES_MAX,
};
use crate::listener::accept;
use crate::status::Status;
use coalesced::Coalesced;
use prefixed::Prefixed;
pub use tls::TlsPort;

/// What every HTTP/2 client sends first (RFC 9113 section 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// etcd's port answers every HTTP response, over either protocol, with its
/// CORS handler's headers (`--cors` defaults to `*`); named as Go writes
/// them on HTTP/1.1 (HTTP/2 sends names in lower case).
const CORS_HEADERS: [(&str, &str); 3] = [
    ("Access-Control-Allow-Headers", "accept, content-type, authorization"),
    ("Access-Control-Allow-Methods", "POST, GET, OPTIONS, PUT, DELETE"),
    ("Access-Control-Allow-Origin", "*"),
];

/// Limits for every connection on the client port.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub http2: Http2Limits,
    /// Largest HTTP/1.1 request head accepted.
    pub http1_head_bytes_max: usize,
    /// Largest HTTP request body accepted (the JSON gateway's requests),
    /// over HTTP/1.1 or on an HTTP/2 stream that is no gRPC call; a larger one
    /// is answered 413 (on HTTP/1.1 the connection then closes).
    pub http1_body_bytes_max: usize,
    /// A connection that has not said which protocol it speaks by then is closed.
    pub first_bytes_timeout: Duration,
    /// An idle HTTP/1.1 keep-alive connection is closed after this.
    pub http1_idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            http2: Http2Limits {
                // etcd's gRPC server: --max-request-bytes (1.5 MiB) + 512 KiB.
                max_recv_message_bytes: 2 * 1024 * 1024,
                // etcd's --max-concurrent-streams default (math.MaxUint32).
                max_concurrent_streams: u32::MAX,
                connection_request_bytes_max: CONNECTION_REQUEST_BYTES_MAX,
                // Large windows: a window, not the network, should never be the limit.
                initial_stream_window_bytes: 1024 * 1024,
                initial_connection_window_bytes: 16 * 1024 * 1024,
                max_header_list_bytes: 64 * 1024,
            },
            http1_head_bytes_max: 16 * 1024,
            http1_body_bytes_max: 4 * 1024 * 1024,
            first_bytes_timeout: Duration::from_secs(10),
            http1_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Accepts connections until the listener fails, each served by its own task;
/// with `tls`, each after its TLS handshake.
pub async fn serve_client_port<S: GrpcService, H: HttpHandler>(
    listener: TcpListener,
    grpc: Rc<S>,
    http: Rc<H>,
    limits: ConnectionLimits,
    tls: Option<TlsPort>,
) {
    let limits = Rc::new(limits);
    let http2_limits = Rc::new(limits.http2.clone());
    let tls = tls.map(Rc::new);
    loop {
        let stream = accept(&listener).await;
        let (grpc, http) = (Rc::clone(&grpc), Rc::clone(&http));
        let (limits, http2_limits) = (Rc::clone(&limits), Rc::clone(&http2_limits));
        let Some(tls) = &tls else {
            glommio::spawn_local(serve_connection(stream, grpc, http, limits, http2_limits, None)).detach();
            continue;
        };
        let Some(handshake) = tls.handshake(&stream) else {
            continue;
        };
        glommio::spawn_local(async move {
            let Some(accepted) = handshake.finish(stream).await else {
                return;
            };
            let common_name = accepted.common_name.map(Rc::from);
            serve_connection(accepted.stream, grpc, http, limits, http2_limits, common_name).await;
        })
        .detach();
    }
}

/// Accepts connections that speak HTTP/1.1 only (`--listen-metrics-urls`);
/// with `tls`, each after its TLS handshake.
pub async fn serve_http_port<H: HttpHandler>(
    listener: TcpListener,
    http: Rc<H>,
    limits: ConnectionLimits,
    tls: Option<TlsPort>,
) {
    let limits = Rc::new(limits);
    let tls = tls.map(Rc::new);
    loop {
        let stream = accept(&listener).await;
        let (http, limits) = (Rc::clone(&http), Rc::clone(&limits));
        let Some(tls) = &tls else {
            glommio::spawn_local(async move { http1::serve(stream, &*http, &limits).await }).detach();
            continue;
        };
        let Some(handshake) = tls.handshake(&stream) else {
            continue;
        };
        glommio::spawn_local(async move {
            if let Some(accepted) = handshake.finish(stream).await {
                http1::serve(accepted.stream, &*http, &limits).await;
            }
        })
        .detach();
    }
}

enum Protocol {
    Http2,
    Http1,
}

/// Serves one client-port connection: HTTP/2 (gRPC) or HTTP/1.1, by its
/// first bytes. Any byte stream (the fuzz targets use one in memory);
/// `client_common_name` is its verified client certificate's.
pub(crate) async fn serve_connection<T, S, H>(
    mut stream: T,
    grpc: Rc<S>,
    http: Rc<H>,
    limits: Rc<ConnectionLimits>,
    http2_limits: Rc<Http2Limits>,
    client_common_name: Option<Rc<str>>,
) where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
    S: GrpcService,
    H: HttpHandler,
{
    let sniffed = future::or(async { Some(sniff(&mut stream).await) }, async {
        glommio::timer::sleep(limits.first_bytes_timeout).await;
        None
    })
    .await;
    let Some(Some((protocol, first_bytes))) = sniffed else {
        return;
    };
    let stream = Prefixed::new(first_bytes, stream);
    match protocol {
        Protocol::Http2 => {
            let service = Rc::new(WithHttp { grpc, http, limits });
            grpc::serve_connection(
                Coalesced::new(stream.compat()),
                service,
                http2_limits,
                client_common_name,
            )
            .await;
        }
        Protocol::Http1 => http1::serve(stream, &*http, &limits).await,
    }
}

/// gRPC, and the HTTP handler for the HTTP/2 streams that are no gRPC call.
struct WithHttp<S, H> {
    grpc: Rc<S>,
    http: Rc<H>,
    limits: Rc<ConnectionLimits>,
}

impl<S: GrpcService, H: HttpHandler> GrpcService for WithHttp<S, H> {
    fn method_kind(&self, path: &str) -> Result<grpc::MethodKind, Status> {
        self.grpc.method_kind(path)
    }

    async fn unary(&self, path: &str, request: Bytes, ctx: CallContext) -> Result<Encoded, Status> {
        self.grpc.unary(path, request, ctx).await
    }

    async fn streaming(
        &self,
        path: &str,
        requests: RequestStream,
        responses: ResponseSink,
        ctx: CallContext,
    ) -> Result<(), Status> {
        self.grpc.streaming(path, requests, responses, ctx).await
    }

    async fn http_stream(&self, stream: HttpStream, budget: ConnectionBudget) {
        http2::serve_stream(stream, budget, &*self.http, &self.limits).await;
    }
}

/// Reads until the bytes either are the HTTP/2 preface or cannot be; anything not
/// HTTP/2 is handed to the HTTP/1.1 parser (which closes on garbage).
async fn sniff<T: AsyncRead + Unpin>(stream: &mut T) -> Option<(Protocol, Vec<u8>)> {
    let mut seen = Vec::with_capacity(HTTP2_PREFACE.len());
    let mut buffer = [0u8; 64];
    while seen.len() < HTTP2_PREFACE.len() {
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 {
            return None;
        }
        seen.extend_from_slice(&buffer[..read]);
        let compared = seen.len().min(HTTP2_PREFACE.len());
        if seen[..compared] != HTTP2_PREFACE[..compared] {
            return Some((Protocol::Http1, seen));
        }
    }
    Some((Protocol::Http2, seen))
}

//! ringkv's thin gRPC layer over `h2`: message framing, status trailers,
//! deadlines, and a service trait the etcd API implements.
//!
//! Why not tonic: the server runs on glommio executors (no tokio runtime), and
//! owning the framing lets us batch, avoid copies and shape errors exactly as etcd
//! clients expect.

mod budget;
mod frame;
mod server;
mod status;
mod stream;
mod timeout;

pub use budget::{Charge, ConnectionBudget, CALL_OVERHEAD_BYTES, CONNECTION_REQUEST_BYTES_MAX};
pub use frame::{Encoded, MessageDecoder, PREFIX_BYTES};
pub(crate) use server::header_list_bytes;
pub use server::{serve_connection, Http2Limits};
pub use status::go_quoted;

/// A call's answer other than OK: what every handler returns (see `crate::status`).
pub use crate::status::{Code, Status};
pub use stream::{RequestStream, ResponseSink};

use bytes::Bytes;
use std::rc::Rc;

/// How a method streams, as declared in its `.proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    Unary,
    ServerStreaming,
    ClientStreaming,
    BidiStreaming,
}

/// What a handler knows about its call.
#[derive(Debug)]
pub struct CallContext {
    /// From `grpc-timeout`; the layer also enforces it.
    pub deadline: Option<std::time::Instant>,
    /// Request headers (gRPC metadata), e.g. `hasleader`, `token`.
    pub metadata: http::HeaderMap,
    /// The common name of the client certificate the connection's TLS
    /// handshake verified, if any: etcd's user name for the call when auth is
    /// on and the call carries no token.
    pub client_common_name: Option<Rc<str>>,
}

/// A set of gRPC methods served on one executor.
#[allow(async_fn_in_trait)] // single-threaded executors: no Send bound wanted
pub trait GrpcService: 'static {
    /// The kind of the method at `path` (`/package.Service/Method`), or the status
    /// to answer (UNIMPLEMENTED for unknown services and methods).
    fn method_kind(&self, path: &str) -> Result<MethodKind, Status>;

    /// Handles a unary call: one request message in, one response out.
    async fn unary(&self, path: &str, request: Bytes, ctx: CallContext) -> Result<Encoded, Status>;

    /// Handles a streaming call of any streaming kind.
    async fn streaming(
        &self,
        path: &str,
        requests: RequestStream,
        responses: ResponseSink,
        ctx: CallContext,
    ) -> Result<(), Status>;

    /// A stream that is no gRPC call (its content type is not gRPC's): over
    /// TLS, ALPN gives HTTP/2 to every client that offers it (curl, Go's HTTP
    /// client), and etcd's port serves such streams as HTTP (the JSON gateway,
    /// /health, /metrics, /version) as over HTTP/1.1. `budget` is the
    /// connection's, for what the stream holds. The default resets the
    /// stream, as grpc-go does.
    async fn http_stream(&self, stream: HttpStream, _budget: ConnectionBudget) {
        let HttpStream { mut respond, .. } = stream;
        respond.send_reset(h2::Reason::PROTOCOL_ERROR);
    }
}

/// An HTTP/2 stream that is no gRPC call, handed over whole.
pub struct HttpStream {
    pub request: http::Request<h2::RecvStream>,
    pub respond: h2::server::SendResponse<Bytes>,
}

/// Decodes a request message; a malformed one is grpc-go's INTERNAL error.
pub fn decode<M: prost::Message + Default>(bytes: Bytes) -> Result<M, Status> {
    M::decode(bytes).map_err(|error| Status::new(Code::Internal, format!("grpc: error unmarshalling request: {error}")))
}

/// Encodes a response message, framed for the wire.
pub fn encode<M: prost::Message>(message: &M) -> Encoded {
    Encoded::new(message)
}

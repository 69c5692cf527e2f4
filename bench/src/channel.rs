//! `Channel`: tonic's generated clients over one bare HTTP/2 connection (the
//! `h2` crate), without tonic's transport.
//!
//! ringkv-bench shares the machine with the servers it measures, so every
//! CPU-second it spends per call is one the servers do not get. Through
//! tonic's `Channel` a call crosses a tower buffer task and hyper's dispatch
//! task before it reaches h2, each a channel send and a wake (on a multi-thread
//! runtime often on the other CPU); here the calling task opens its stream on
//! h2 itself and only h2's connection task runs besides it. The cost per call,
//! against tonic's and an independent client's, is in docs/benchmarks.md.
//!
//! A connection is not reopened when it fails: its calls fail from then on
//! and are counted as errors, as any run against a server that went away is.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::body::BoxBody;
use tonic::codegen::http::uri::{Authority, PathAndQuery, Scheme};
use tonic::codegen::http::{self, HeaderMap, Request, Response, Uri};
use tonic::codegen::{Body, BoxFuture, Bytes, Service, StdError};
use tonic::Status;

/// Each stream's receive window: a response up to this size needs no window
/// update before it is whole (hyper's client default, which tonic used).
const STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// The connection's receive window: several such responses in flight at once.
const CONNECTION_WINDOW_BYTES: u32 = 5 * 1024 * 1024;

/// One HTTP/2 connection; clones share it, each with its own stream slot.
#[derive(Clone)]
pub struct Channel {
    send: SendRequest<Bytes>,
    origin: Arc<(Scheme, Authority)>,
    /// A call with no response headers after this long fails with
    /// DEADLINE_EXCEEDED (its stream is reset).
    timeout: Duration,
}

impl Channel {
    /// The HTTP/2 handshake on `io` (a connected TCP or TLS stream to `origin`);
    /// the connection is driven by a task spawned on the current runtime.
    pub async fn handshake<T>(
        io: T,
        scheme: Scheme,
        authority: Authority,
        timeout: Duration,
    ) -> Result<Channel, h2::Error>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .handshake(io)
            .await?;
        // Its end (the server closed, or every clone was dropped) shows in the
        // calls: each fails with the connection's error.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Channel {
            send,
            origin: Arc::new((scheme, authority)),
            timeout,
        })
    }

    /// `request`'s path on this channel's scheme and host, as HTTP/2's
    /// `:scheme` and `:authority` need (tonic's clients give the path alone).
    fn absolute(&self, uri: Uri) -> Result<Uri, http::Error> {
        let (scheme, authority) = &*self.origin;
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query(path)
            .build()
    }
}

impl Service<Request<BoxBody>> for Channel {
    type Response = Response<ResponseBody>;
    type Error = StdError;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.send.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<BoxBody>) -> Self::Future {
        let (mut head, body) = request.into_parts();
        let opened = self
            .absolute(std::mem::take(&mut head.uri))
            .map_err(StdError::from)
            .and_then(|uri| {
                head.uri = uri;
                self.send
                    .send_request(Request::from_parts(head, ()), false)
                    .map_err(StdError::from)
            });
        let timeout = self.timeout;
        Box::pin(async move {
            let (response, stream) = opened?;
            send_body(body, stream).await?;
            let response = tokio::time::timeout(timeout, response)
                .await
                .map_err(|_| Status::deadline_exceeded("Timeout expired"))??;
            Ok(response.map(ResponseBody))
        })
    }
}

/// Sends what `body` has ready now, ending the stream with its last part when
/// the body has ended (a unary request); a body still open (a client stream,
/// as Watch's) is sent on by a task of its own as it produces more.
async fn send_body(mut body: BoxBody, mut stream: SendStream<Bytes>) -> Result<(), StdError> {
    let mut held: Option<Bytes> = None;
    loop {
        match poll_now(|cx| Pin::new(&mut body).poll_data(cx)).await {
            Poll::Ready(Some(data)) => {
                if let Some(data) = held.replace(data?) {
                    stream.send_data(data, false)?;
                }
            }
            Poll::Ready(None) => {
                let trailers = body.trailers().await;
                return finish(&mut stream, held, trailers);
            }
            Poll::Pending => {
                if let Some(data) = held.take() {
                    stream.send_data(data, false)?;
                }
                tokio::spawn(async move {
                    // A failure here (the server reset the stream, the
                    // connection closed) reaches the caller through the
                    // response; the rest of the body has nowhere to go.
                    let _ = stream_rest(body, stream).await;
                });
                return Ok(());
            }
        }
    }
}

/// The rest of an open body, each part sent as it comes (the server may be
/// waiting for it to answer); the end goes out on its own.
async fn stream_rest(mut body: BoxBody, mut stream: SendStream<Bytes>) -> Result<(), StdError> {
    while let Some(data) = body.data().await {
        stream.send_data(data?, false)?;
    }
    let trailers = body.trailers().await;
    finish(&mut stream, None, trailers)
}

/// Ends the stream: with the last data part, or with the trailers after it.
fn finish(
    stream: &mut SendStream<Bytes>,
    last: Option<Bytes>,
    trailers: Result<Option<HeaderMap>, Status>,
) -> Result<(), StdError> {
    match trailers? {
        Some(trailers) => {
            if let Some(data) = last {
                stream.send_data(data, false)?;
            }
            stream.send_trailers(trailers)?;
        }
        None => stream.send_data(last.unwrap_or_default(), true)?,
    }
    Ok(())
}

/// Polls once: what `poll` gives now, without waiting.
fn poll_now<T>(mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>) -> impl Future<Output = Poll<T>> {
    std::future::poll_fn(move |cx| Poll::Ready(poll(cx)))
}

/// An I/O stream h2 is told takes no vectored writes (the default of tokio's
/// `AsyncWrite`, and what a TLS stream through `tokio_util`'s compat says).
///
/// On a stream that does, h2 keeps every DATA frame of 256 bytes or more out
/// of its write buffer, to hand it to `writev` beside the buffer, and flushes
/// before it buffers anything more: one write per request once a request's
/// body is 256 bytes (a put of a 256-byte value is a 274-byte frame), however
/// many requests a pass of its connection task has queued. Without vectored
/// writes h2 copies frames under 1 KiB into the buffer, and a pass's requests
/// go out together. (ringkv's server hands h2 such a stream too.)
pub struct Unvectored<T>(pub T);

impl<T: AsyncRead + Unpin> AsyncRead for Unvectored<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Unvectored<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A response's body: the stream's data as it arrives, then its trailers
/// (gRPC's status). Received bytes are given back to the flow-control window
/// as they are handed on.
pub struct ResponseBody(RecvStream);

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_data(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, h2::Error>>> {
        let data = ready!(self.0.poll_data(cx));
        if let Some(Ok(data)) = &data {
            self.0.flow_control().release_capacity(data.len())?;
        }
        Poll::Ready(data)
    }

    fn poll_trailers(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Option<HeaderMap>, h2::Error>> {
        self.0.poll_trailers(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use ringkv_proto::etcdserverpb::kv_client::KvClient;
    use ringkv_proto::etcdserverpb::lease_client::LeaseClient;
    use ringkv_proto::etcdserverpb::{
        LeaseKeepAliveRequest, LeaseKeepAliveResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
        ResponseHeader,
    };
    use ringkv_proto::mvccpb::KeyValue;
    use tokio::io::DuplexStream;
    use tonic::Code;

    /// A bound on every test's wait: a stalled stream fails the test, not CI.
    const TEST_WAIT: Duration = Duration::from_secs(20);

    /// A client `Channel` and the server end of its connection (the h2
    /// server's connection is driven by a task of its own once the test has
    /// taken the first request).
    async fn pair(timeout: Duration) -> (Channel, h2::server::Connection<DuplexStream, Bytes>) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(h2::server::handshake(server_io));
        let authority = Authority::from_static("127.0.0.1:2379");
        let channel = Channel::handshake(client_io, Scheme::HTTP, authority, timeout)
            .await
            .unwrap();
        (channel, server.await.unwrap().unwrap())
    }

    /// The first request on `server`, its connection then driven in the background.
    async fn first_request(
        mut server: h2::server::Connection<DuplexStream, Bytes>,
    ) -> (Request<RecvStream>, h2::server::SendResponse<Bytes>) {
        let (request, respond) = server.accept().await.unwrap().unwrap();
        tokio::spawn(async move { while server.accept().await.is_some() {} });
        (request, respond)
    }

    /// A gRPC message frame: flag 0, four-byte big-endian length, the message.
    fn framed(message: &impl Message) -> Bytes {
        let body = message.encode_to_vec();
        let mut frame = vec![0];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        frame.into()
    }

    /// The next whole gRPC message from `body` (which may split it anywhere).
    async fn next_message<M: Message + Default>(body: &mut RecvStream, pending: &mut Vec<u8>) -> Option<M> {
        loop {
            if pending.len() >= 5 {
                let len = u32::from_be_bytes(pending[1..5].try_into().unwrap()) as usize;
                if pending.len() >= 5 + len {
                    let message = M::decode(&pending[5..5 + len]).unwrap();
                    pending.drain(..5 + len);
                    return Some(message);
                }
            }
            let data = body.data().await?.unwrap();
            body.flow_control().release_capacity(data.len()).unwrap();
            pending.extend_from_slice(&data);
        }
    }

    fn grpc_head() -> Response<()> {
        Response::builder()
            .header("content-type", "application/grpc")
            .body(())
            .unwrap()
    }

    fn grpc_status(code: Code, message: &str) -> HeaderMap {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", (code as i32).to_string().parse().unwrap());
        if !message.is_empty() {
            trailers.insert("grpc-message", message.parse().unwrap());
        }
        trailers
    }

    #[tokio::test]
    async fn a_unary_call_goes_to_the_origins_path_ends_with_its_body_and_gets_the_reply() {
        let (channel, server) = pair(TEST_WAIT).await;
        let served = tokio::spawn(async move {
            let (request, mut respond) = first_request(server).await;
            let (head, mut body) = request.into_parts();
            let put: PutRequest = next_message(&mut body, &mut Vec::new()).await.unwrap();
            assert!(body.is_end_stream(), "the request's last frame ends its stream");
            let mut stream = respond.send_response(grpc_head(), false).unwrap();
            let reply = PutResponse {
                header: Some(ResponseHeader {
                    revision: 7,
                    ..Default::default()
                }),
                prev_kv: None,
            };
            stream.send_data(framed(&reply), false).unwrap();
            stream.send_trailers(grpc_status(Code::Ok, "")).unwrap();
            (head.uri.to_string(), head.headers, put)
        });
        let request = PutRequest {
            key: b"key".to_vec(),
            value: vec![b'v'; 300],
            ..Default::default()
        };
        let reply = tokio::time::timeout(TEST_WAIT, KvClient::new(channel).put(request.clone()))
            .await
            .unwrap()
            .unwrap()
            .into_inner();
        assert_eq!(reply.header.unwrap().revision, 7);
        let (uri, headers, put) = served.await.unwrap();
        assert_eq!(uri, "http://127.0.0.1:2379/etcdserverpb.KV/Put");
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["te"], "trailers");
        assert_eq!(put, request);
    }

    #[tokio::test]
    async fn a_servers_error_status_reaches_the_caller() {
        let (channel, server) = pair(TEST_WAIT).await;
        tokio::spawn(async move {
            let (_request, mut respond) = first_request(server).await;
            let mut head = grpc_head();
            head.headers_mut()
                .extend(grpc_status(Code::InvalidArgument, "etcdserver: key is not provided"));
            respond.send_response(head, true).unwrap();
        });
        let status = tokio::time::timeout(TEST_WAIT, KvClient::new(channel).put(PutRequest::default()))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "etcdserver: key is not provided");
    }

    #[tokio::test]
    async fn a_reply_larger_than_the_receive_windows_arrives_whole() {
        let (channel, server) = pair(TEST_WAIT).await;
        let value = vec![b'x'; 3 * CONNECTION_WINDOW_BYTES as usize];
        let kv = KeyValue {
            key: b"big".to_vec(),
            value: value.clone(),
            ..Default::default()
        };
        tokio::spawn(async move {
            let (_request, mut respond) = first_request(server).await;
            let mut stream = respond.send_response(grpc_head(), false).unwrap();
            let reply = RangeResponse {
                kvs: vec![kv],
                count: 1,
                ..Default::default()
            };
            // h2 holds what the window does not admit and sends it as the
            // client gives the window back.
            stream.send_data(framed(&reply), false).unwrap();
            stream.send_trailers(grpc_status(Code::Ok, "")).unwrap();
        });
        let mut kv = KvClient::new(channel).max_decoding_message_size(4 * CONNECTION_WINDOW_BYTES as usize);
        let reply = tokio::time::timeout(TEST_WAIT, kv.range(RangeRequest::default()))
            .await
            .expect("the window was given back as the reply was read")
            .unwrap()
            .into_inner();
        assert_eq!(reply.kvs[0].value, value);
    }

    #[tokio::test]
    async fn each_message_of_a_client_stream_is_sent_as_it_comes() {
        let (channel, server) = pair(TEST_WAIT).await;
        tokio::spawn(async move {
            let (request, mut respond) = first_request(server).await;
            let mut body = request.into_body();
            let mut stream = respond.send_response(grpc_head(), false).unwrap();
            let mut pending = Vec::new();
            // Each keepalive is answered before the client sends the next:
            // a message held back until the one after it would stall here.
            while let Some(keepalive) = next_message::<LeaseKeepAliveRequest>(&mut body, &mut pending).await {
                let reply = LeaseKeepAliveResponse {
                    header: None,
                    id: keepalive.id,
                    ttl: 60,
                };
                stream.send_data(framed(&reply), false).unwrap();
            }
            stream.send_trailers(grpc_status(Code::Ok, "")).unwrap();
        });
        let (requests, outgoing) = tokio::sync::mpsc::channel(1);
        requests.send(LeaseKeepAliveRequest { id: 1 }).await.unwrap();
        let mut lease = LeaseClient::new(channel);
        let call = lease.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(outgoing));
        let mut responses = tokio::time::timeout(TEST_WAIT, call)
            .await
            .unwrap()
            .unwrap()
            .into_inner();
        for id in 1..=3 {
            let reply = tokio::time::timeout(TEST_WAIT, responses.message())
                .await
                .expect("each keepalive is answered before the next is sent")
                .unwrap()
                .unwrap();
            assert_eq!(reply.id, id);
            requests.send(LeaseKeepAliveRequest { id: id + 1 }).await.unwrap();
        }
        drop(requests);
        let last = tokio::time::timeout(TEST_WAIT, responses.message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(last.map(|reply| reply.id), Some(4));
        let end = tokio::time::timeout(TEST_WAIT, responses.message())
            .await
            .unwrap()
            .unwrap();
        assert!(end.is_none(), "the stream ends once the client's does");
    }

    #[tokio::test]
    async fn a_call_without_response_headers_in_time_is_deadline_exceeded() {
        let (channel, server) = pair(Duration::from_millis(100)).await;
        let held = tokio::spawn(async move {
            let (request, respond) = first_request(server).await;
            // Held, never answered, until the test ends.
            std::future::pending::<()>().await;
            drop((request, respond));
        });
        let status = tokio::time::timeout(TEST_WAIT, KvClient::new(channel).put(PutRequest::default()))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        held.abort();
    }
}

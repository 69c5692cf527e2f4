//! One HTTP/2 connection: accept streams, run each call as a local task, answer
//! with gRPC framing and status trailers. A bad stream fails alone; the
//! connection and its other streams carry on.

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{Encoded, MessageDecoder};
use super::status::{Code, Status};
use super::stream::{RequestStream, ResponseSink};
use super::{timeout, CallContext, GrpcService, MethodKind};

/// HTTP/2 settings and limits for one connection.
#[derive(Debug, Clone)]
pub struct Http2Limits {
    pub max_recv_message_bytes: usize,
    pub max_concurrent_streams: u32,
    pub initial_stream_window_bytes: u32,
    pub initial_connection_window_bytes: u32,
    pub max_header_list_bytes: u32,
}

/// Serves gRPC on an established HTTP/2 byte stream until the client goes away.
pub async fn serve_connection<S, T>(io: T, service: Rc<S>, limits: Rc<Http2Limits>)
where
    S: GrpcService,
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let handshake = h2::server::Builder::new()
        .initial_window_size(limits.initial_stream_window_bytes)
        .initial_connection_window_size(limits.initial_connection_window_bytes)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_bytes)
        .handshake::<_, Bytes>(io)
        .await;
    let mut connection = match handshake {
        Ok(connection) => connection,
        Err(error) => {
            tracing::debug!(%error, "HTTP/2 handshake failed");
            return;
        }
    };
    // Accepting also drives the connection: every stream's I/O progresses here.
    while let Some(accepted) = connection.accept().await {
        let (request, respond) = match accepted {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "HTTP/2 connection ended");
                return;
            }
        };
        let service = Rc::clone(&service);
        let limits = Rc::clone(&limits);
        glommio::spawn_local(serve_stream(request, respond, service, limits)).detach();
    }
}

async fn serve_stream<S: GrpcService>(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    service: Rc<S>,
    limits: Rc<Http2Limits>,
) {
    let (parts, body) = request.into_parts();
    if parts.method != http::Method::POST {
        send_http_error(&mut respond, StatusCode::METHOD_NOT_ALLOWED);
        return;
    }
    if !is_grpc_content_type(parts.headers.get(http::header::CONTENT_TYPE)) {
        send_http_error(&mut respond, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        return;
    }
    let path = parts.uri.path().to_string();
    let kind = match service.method_kind(&path) {
        Ok(kind) => kind,
        Err(status) => {
            send_status_only(&mut respond, &status);
            return;
        }
    };
    let timeout = parts
        .headers
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(timeout::parse);
    let ctx = CallContext {
        deadline: timeout.map(|timeout| Instant::now() + timeout),
        metadata: parts.headers,
    };
    match kind {
        MethodKind::Unary => {
            serve_unary(&path, body, respond, &*service, ctx, timeout, &limits).await;
        }
        MethodKind::ServerStreaming | MethodKind::ClientStreaming | MethodKind::BidiStreaming => {
            serve_streaming(&path, body, respond, &*service, ctx, timeout, &limits).await;
        }
    }
}

async fn serve_unary<S: GrpcService>(
    path: &str,
    body: RecvStream,
    mut respond: SendResponse<Bytes>,
    service: &S,
    ctx: CallContext,
    timeout: Option<Duration>,
    limits: &Http2Limits,
) {
    let call = async {
        let request = read_one_message(body, limits.max_recv_message_bytes).await?;
        service.unary(path, request, ctx).await
    };
    // The call is dropped (cancelled) if the client resets the stream or its
    // deadline passes first.
    let outcome = race_call(call, &mut respond, timeout).await;
    match outcome {
        Some(Ok(message)) => send_message(&mut respond, message),
        Some(Err(status)) => send_status_only(&mut respond, &status),
        None => {}
    }
}

async fn serve_streaming<S: GrpcService>(
    path: &str,
    body: RecvStream,
    mut respond: SendResponse<Bytes>,
    service: &S,
    ctx: CallContext,
    timeout: Option<Duration>,
    limits: &Http2Limits,
) {
    let stream = match respond.send_response(grpc_response_head(), false) {
        Ok(stream) => Rc::new(RefCell::new(stream)),
        Err(_) => return,
    };
    let requests = RequestStream::new(body, limits.max_recv_message_bytes);
    let call = service.streaming(path, requests, ResponseSink::new(Rc::clone(&stream)), ctx);
    let outcome = race_call(call, &mut respond, timeout).await;
    let trailers = match outcome {
        Some(Ok(())) => ok_trailers(),
        Some(Err(status)) => status_headers(&status),
        None => return,
    };
    let _ = stream.borrow_mut().send_trailers(trailers);
}

/// Runs `call` unless the client resets the stream (None) or the deadline passes
/// (DEADLINE_EXCEEDED).
async fn race_call<T>(
    call: impl std::future::Future<Output = Result<T, Status>>,
    respond: &mut SendResponse<Bytes>,
    timeout: Option<Duration>,
) -> Option<Result<T, Status>> {
    let call = async { Some(call.await) };
    let reset = async {
        let _ = poll_fn(|cx| respond.poll_reset(cx)).await;
        None
    };
    let deadline = async {
        match timeout {
            Some(timeout) => {
                glommio::timer::sleep(timeout).await;
                Some(Err(Status::new(Code::DeadlineExceeded, "context deadline exceeded")))
            }
            None => future::pending().await,
        }
    };
    future::or(call, future::or(reset, deadline)).await
}

/// Reads the single request message of a unary call.
async fn read_one_message(mut body: RecvStream, max_message_bytes: usize) -> Result<Bytes, Status> {
    let mut decoder = MessageDecoder::new(max_message_bytes);
    loop {
        if let Some(message) = decoder.next_message()? {
            return Ok(message);
        }
        match body.data().await {
            Some(Ok(chunk)) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                decoder.push(chunk);
            }
            Some(Err(error)) => return Err(Status::new(Code::Canceled, error.to_string())),
            None => {
                decoder.finish()?;
                return Err(Status::new(
                    Code::Internal,
                    "grpc: failed to receive the message: no request message",
                ));
            }
        }
    }
}

fn is_grpc_content_type(value: Option<&HeaderValue>) -> bool {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    match value.strip_prefix("application/grpc") {
        Some(rest) => rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'),
        None => false,
    }
}

fn grpc_response_head() -> Response<()> {
    let mut response = Response::new(());
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

fn ok_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers
}

fn status_headers(status: &Status) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(2);
    headers.insert("grpc-status", HeaderValue::from_static(status.code_text()));
    if let Ok(message) = HeaderValue::from_str(&status.encoded_message()) {
        headers.insert("grpc-message", message);
    }
    headers
}

/// Headers, the message, OK trailers: a unary success.
fn send_message(respond: &mut SendResponse<Bytes>, message: Encoded) {
    let Ok(mut stream) = respond.send_response(grpc_response_head(), false) else {
        return;
    };
    if stream.send_data(message.into_frame(), false).is_ok() {
        let _ = stream.send_trailers(ok_trailers());
    }
}

/// A trailers-only response: the status rides on the response headers.
fn send_status_only(respond: &mut SendResponse<Bytes>, status: &Status) {
    let mut response = grpc_response_head();
    response.headers_mut().extend(status_headers(status));
    let _ = respond.send_response(response, true);
}

fn send_http_error(respond: &mut SendResponse<Bytes>, code: StatusCode) {
    let mut response = Response::new(());
    *response.status_mut() = code;
    let _ = respond.send_response(response, true);
}

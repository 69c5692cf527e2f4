//! One HTTP/2 connection: accept streams, run each call as a local task, answer
//! with gRPC framing and status trailers. A bad stream fails alone; the
//! connection and its other streams carry on.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::budget::{Charge, ConnectionBudget, CALL_OVERHEAD_BYTES};
use super::frame::{Encoded, MessageDecoder};
use super::status::go_quoted;
use super::stream::{RequestStream, ResponseSink};
use super::{timeout, CallContext, GrpcService, HttpStream, MethodKind};
use crate::metrics::grpc::CallCount;
use crate::status::{Code, Status};

/// HTTP/2 settings and limits for one connection.
#[derive(Debug, Clone)]
pub struct Http2Limits {
    pub max_recv_message_bytes: usize,
    /// `--max-concurrent-streams`: h2 refuses streams past it (REFUSED_STREAM).
    pub max_concurrent_streams: u32,
    /// What the calls of one connection may hold (see `budget`).
    pub connection_request_bytes_max: usize,
    pub initial_stream_window_bytes: u32,
    pub initial_connection_window_bytes: u32,
    pub max_header_list_bytes: u32,
}

/// Serves gRPC on an established HTTP/2 byte stream until the client goes away.
/// `client_common_name`: the verified client certificate's, on a TLS port.
pub async fn serve_connection<S, T>(io: T, service: Rc<S>, limits: Rc<Http2Limits>, client_common_name: Option<Rc<str>>)
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
    let budget = ConnectionBudget::new(limits.connection_request_bytes_max);
    // Accepting also drives the connection: every stream's I/O progresses here.
    while let Some(accepted) = connection.accept().await {
        let (request, respond) = match accepted {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "HTTP/2 connection ended");
                return;
            }
        };
        // The checks on a call's headers need no waiting: a stream they
        // answer gets no task, and each kind of call gets a task of its own
        // type, as small as that kind needs (glommio moves a task's future
        // into a fresh allocation, and boxes it again from 2 KiB on).
        match admit(request, respond, &*service, &budget, client_common_name.clone()) {
            Admitted::Answered => {}
            Admitted::Http(stream) => {
                let service = Rc::clone(&service);
                let budget = budget.clone();
                glommio::spawn_local(async move { service.http_stream(stream, budget).await }).detach();
            }
            Admitted::Unary(call) => {
                glommio::spawn_local(serve_unary(call, Rc::clone(&service), Rc::clone(&limits))).detach();
            }
            Admitted::Streaming(call) => {
                glommio::spawn_local(serve_streaming(call, Rc::clone(&service), Rc::clone(&limits))).detach();
            }
        }
    }
}

/// A header list's size as HTTP/2 counts it (RFC 9113 section 6.5.2).
pub(crate) fn header_list_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

/// What the checks on a new stream's headers made of it.
enum Admitted {
    /// Answered (an error, a reset) without running anything.
    Answered,
    /// No gRPC call, by its content type: HTTP, handed to the service.
    Http(HttpStream),
    /// A unary gRPC call to run.
    Unary(Call),
    /// A streaming gRPC call (of any streaming kind) to run.
    Streaming(Call),
}

/// A gRPC call whose headers passed every check.
struct Call {
    path: String,
    body: RecvStream,
    respond: Responder,
    ctx: CallContext,
    /// The timeout the client asked for, if its deadline could be represented.
    timeout: Option<Duration>,
    /// What the call's headers hold of the connection's budget, until it ends.
    headers_charge: Charge,
    /// What its request messages will hold.
    charge: Charge,
}

/// Checks a new stream's headers, answering those that fail (as grpc-go
/// does); no await, so a refused call costs no task.
fn admit<S: GrpcService>(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    service: &S,
    budget: &ConnectionBudget,
    client_common_name: Option<Rc<str>>,
) -> Admitted {
    // What is no gRPC call, by its content type, is HTTP (etcd's port routes
    // by the same test): the JSON gateway, /health, /metrics, /version.
    let Some(subtype) = grpc_content_subtype(request.headers().get(http::header::CONTENT_TYPE)) else {
        return Admitted::Http(HttpStream { request, respond });
    };
    let (parts, body) = request.into_parts();
    if parts.method != http::Method::POST {
        send_http_error(&mut respond, StatusCode::METHOD_NOT_ALLOWED);
        return Admitted::Answered;
    }
    // grpc-go resets a stream whose timeout it cannot read (PROTOCOL_ERROR).
    let timeout = match parts.headers.get("grpc-timeout") {
        None => None,
        Some(value) => match value.to_str().ok().and_then(timeout::parse) {
            Some(timeout) => Some(timeout),
            None => {
                respond.send_reset(h2::Reason::PROTOCOL_ERROR);
                return Admitted::Answered;
            }
        },
    };
    let mut respond = Responder {
        respond,
        content_type: response_content_type(subtype),
    };
    // Held until the call ends: its headers stay in its context.
    let headers_charge = match budget.charge(CALL_OVERHEAD_BYTES + header_list_bytes(&parts.headers)) {
        Ok(charge) => charge,
        Err(status) => {
            respond.send_status_only(&status);
            return Admitted::Answered;
        }
    };
    let path = parts.uri.path().to_string();
    let kind = match service.method_kind(&path) {
        Ok(kind) => kind,
        Err(status) => {
            respond.send_status_only(&status);
            return Admitted::Answered;
        }
    };
    if let Err(status) = check_encoding(parts.headers.get("grpc-encoding")) {
        respond.send_status_only(&status);
        return Admitted::Answered;
    }
    let ctx = CallContext {
        // A deadline too far to represent is no deadline.
        deadline: timeout.and_then(|timeout| Instant::now().checked_add(timeout)),
        metadata: parts.headers,
        client_common_name,
    };
    let call = Call {
        path,
        body,
        respond,
        timeout: ctx.deadline.and(timeout),
        ctx,
        headers_charge,
        charge: budget.charge(0).expect("nothing to charge"),
    };
    match kind {
        MethodKind::Unary => Admitted::Unary(call),
        MethodKind::ServerStreaming | MethodKind::ClientStreaming | MethodKind::BidiStreaming => {
            Admitted::Streaming(call)
        }
    }
}

/// Runs a unary call: one request message in, one answer out.
fn serve_unary<S: GrpcService>(call: Call, service: Rc<S>, limits: Rc<Http2Limits>) -> impl Future<Output = ()> {
    // Taken apart before the future is made, so that it holds each part once.
    let Call {
        path,
        body,
        mut respond,
        ctx,
        timeout,
        headers_charge,
        charge,
    } = call;
    async move {
        // Counted once its message is read, as grpc-go's interceptors see a call.
        let count = RefCell::new(None);
        let call = async {
            let (request, charge) = read_one_message(body, limits.max_recv_message_bytes, charge).await?;
            let started = CallCount::start(&path);
            if let Some(started) = &started {
                started.received();
            }
            *count.borrow_mut() = started;
            // Boxed: the service's future is large (every method's state), and
            // inline it would be copied whole each time this call's future moves
            // into the next (race_call, the spawned task): a few KiB per request.
            let answer = Box::pin(service.unary(&path, request, ctx)).await;
            // Counted until answered: a call waiting for the store core holds it.
            drop(charge);
            answer
        };
        // The call is dropped (cancelled) if the client resets the stream or its
        // deadline passes first.
        let reset = async {
            let _ = poll_fn(|cx| respond.respond.poll_reset(cx)).await;
        };
        let outcome = race_call(call, reset, timeout).await;
        if let Some(count) = count.into_inner() {
            if matches!(outcome, Some(Ok(_))) {
                count.sent();
            }
            count.handled(handled_code(&outcome));
        }
        match outcome {
            Some(Ok(message)) => respond.send_message(message),
            Some(Err(status)) => respond.send_status_only(&status),
            None => {}
        }
        drop(headers_charge);
    }
}

/// Runs a streaming call of any kind.
fn serve_streaming<S: GrpcService>(call: Call, service: Rc<S>, limits: Rc<Http2Limits>) -> impl Future<Output = ()> {
    let Call {
        path,
        body,
        mut respond,
        ctx,
        timeout,
        headers_charge,
        charge,
    } = call;
    async move {
        let stream = match respond.respond.send_response(respond.head(), false) {
            Ok(stream) => Rc::new(RefCell::new(stream)),
            Err(_) => return,
        };
        let count = CallCount::start(&path).map(Rc::new);
        let requests = RequestStream::new(body, limits.max_recv_message_bytes, charge, count.clone());
        let responses = ResponseSink::new(Rc::clone(&stream), count.clone());
        let call = service.streaming(&path, requests, responses, ctx);
        // Once the response headers are out, a reset shows on the send stream (h2
        // refuses `SendResponse::poll_reset` then).
        let reset = async {
            let _ = poll_fn(|cx| stream.borrow_mut().poll_reset(cx)).await;
        };
        let outcome = race_call(call, reset, timeout).await;
        if let Some(count) = count {
            count.handled(handled_code(&outcome));
        }
        let trailers = match outcome {
            Some(Ok(())) => ok_trailers(),
            Some(Err(status)) => status_headers(&status),
            None => return,
        };
        let _ = stream.borrow_mut().send_trailers(trailers);
        drop(headers_charge);
    }
}

/// The code a call ended with, for /metrics: a call the client reset ends
/// canceled, as grpc-go's handler sees its context.
fn handled_code<T>(outcome: &Option<Result<T, Status>>) -> usize {
    match outcome {
        Some(Ok(_)) => Code::Ok as usize,
        Some(Err(status)) => status.code as usize,
        None => Code::Canceled as usize,
    }
}

/// Runs `call` unless the client resets the stream (`reset` finishes: None) or
/// the deadline passes (DEADLINE_EXCEEDED).
/// A plain function: as an async fn its future would keep `call` twice.
fn race_call<T>(
    call: impl Future<Output = Result<T, Status>>,
    reset: impl Future<Output = ()>,
    timeout: Option<Duration>,
) -> impl Future<Output = Option<Result<T, Status>>> {
    let call = async move { Some(call.await) };
    let reset = async move {
        reset.await;
        None
    };
    let deadline = async move {
        match timeout {
            Some(timeout) => {
                glommio::timer::sleep(timeout).await;
                Some(Err(Status::new(Code::DeadlineExceeded, "context deadline exceeded")))
            }
            None => future::pending().await,
        }
    };
    future::or(call, future::or(reset, deadline))
}

/// Reads the single request message of a unary call; it stays charged to
/// the connection while the returned charge lives.
async fn read_one_message(
    mut body: RecvStream,
    max_message_bytes: usize,
    charge: Charge,
) -> Result<(Bytes, Charge), Status> {
    let mut decoder = MessageDecoder::new(max_message_bytes, charge);
    loop {
        if let Some(message) = decoder.next_message()? {
            let mut charge = decoder.into_charge();
            // The decoder held these bytes a moment ago: they fit.
            charge.set(message.len()).expect("the message was charged");
            return Ok((message, charge));
        }
        match body.data().await {
            Some(Ok(chunk)) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                decoder.push(chunk)?;
            }
            Some(Err(error)) => return Err(Status::new(Code::Canceled, error.to_string())),
            None => {
                decoder.finish()?;
                // grpc-go's `io.EOF` before any message, reaching the client as UNKNOWN.
                return Err(Status::new(Code::Unknown, "EOF"));
            }
        }
    }
}

/// ringkv installs no decompressor: a request in any encoding but identity is
/// refused before its message is read, in grpc-go's words.
fn check_encoding(value: Option<&HeaderValue>) -> Result<(), Status> {
    let encoding = value.map_or(&b""[..], HeaderValue::as_bytes);
    if encoding.is_empty() || encoding == b"identity" {
        return Ok(());
    }
    Err(Status::new(
        Code::Unimplemented,
        format!(
            "grpc: Decompressor is not installed for grpc-encoding {}",
            go_quoted(encoding)
        ),
    ))
}

/// The part of a gRPC content type after `application/grpc` and its `+` or `;`
/// (empty for plain `application/grpc`); None if the type is not gRPC.
fn grpc_content_subtype(value: Option<&HeaderValue>) -> Option<String> {
    let rest = value?.to_str().ok()?.strip_prefix("application/grpc")?;
    match rest.as_bytes().first() {
        None => Some(String::new()),
        Some(b'+' | b';') => Some(rest[1..].to_string()),
        Some(_) => None,
    }
}

/// grpc-go answers with the request's subtype: `application/grpc+proto` for
/// `application/grpc+proto`, plain `application/grpc` for plain.
fn response_content_type(subtype: String) -> HeaderValue {
    if subtype.is_empty() {
        return HeaderValue::from_static("application/grpc");
    }
    HeaderValue::from_str(&format!("application/grpc+{subtype}")).expect("built from a valid header value")
}

/// The response half of one stream, with the content type to answer with.
struct Responder {
    respond: SendResponse<Bytes>,
    content_type: HeaderValue,
}

impl Responder {
    fn head(&self) -> Response<()> {
        let mut response = Response::new(());
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, self.content_type.clone());
        response
    }

    /// Headers, the message, OK trailers: a unary success (or the status of
    /// a message too large to send).
    fn send_message(&mut self, message: Encoded) {
        let frame = match message.into_frame() {
            Ok(frame) => frame,
            Err(status) => return self.send_status_only(&status),
        };
        let Ok(mut stream) = self.respond.send_response(self.head(), false) else {
            return;
        };
        if stream.send_data(frame, false).is_ok() {
            let _ = stream.send_trailers(ok_trailers());
        }
    }

    /// A trailers-only response: the status rides on the response headers.
    fn send_status_only(&mut self, status: &Status) {
        let mut response = self.head();
        response.headers_mut().extend(status_headers(status));
        let _ = self.respond.send_response(response, true);
    }
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

fn send_http_error(respond: &mut SendResponse<Bytes>, code: StatusCode) {
    let mut response = Response::new(());
    *response.status_mut() = code;
    let _ = respond.send_response(response, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_or_no_encoding_is_accepted() {
        assert!(check_encoding(None).is_ok());
        assert!(check_encoding(Some(&HeaderValue::from_static("identity"))).is_ok());
    }

    #[test]
    fn other_encodings_are_unimplemented_in_grpc_gos_words() {
        let status = check_encoding(Some(&HeaderValue::from_static("gzip"))).unwrap_err();
        assert_eq!(status.code, Code::Unimplemented);
        assert_eq!(
            status.message,
            "grpc: Decompressor is not installed for grpc-encoding \"gzip\""
        );
    }
}

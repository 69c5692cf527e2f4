//! HTTP on an HTTP/2 connection, for the streams that are no gRPC call: the
//! request read with its body bounded as HTTP/1.1's is (and charged to the
//! connection's budget, as a gRPC call's request is), handed to the same
//! `HttpHandler` as HTTP/1.1's, and its response written as HEADERS and DATA
//! frames, a streamed one (the gateway's watch) chunk by chunk within the
//! client's flow-control window.

use std::future::poll_fn;

use bytes::Bytes;
use futures_lite::future;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderName, HeaderValue, Response, StatusCode};

use super::{Chunks, ConnectionLimits, HttpHandler, HttpRequest, HttpResponse, CORS_HEADERS};
use crate::grpc::{header_list_bytes, Charge, ConnectionBudget, HttpStream, CALL_OVERHEAD_BYTES};

/// Serves one stream: reads the request, answers it, and ends the stream;
/// a client that resets the stream first cancels the handler.
pub(super) async fn serve_stream<H: HttpHandler>(
    stream: HttpStream,
    budget: ConnectionBudget,
    handler: &H,
    limits: &ConnectionLimits,
) {
    let HttpStream { request, mut respond } = stream;
    let (parts, mut body) = request.into_parts();
    let max = limits.http1_body_bytes_max;
    // Held until the stream ends: what it read stays counted while it is answered.
    let (read, _charge) = match read_body(&parts.headers, &mut body, max, &budget).await {
        Ok(read) => read,
        Err(refused) => {
            if let Some(answer) = refused.answer() {
                send_whole(respond, answer).await;
                discard(&mut body, max).await;
            }
            return;
        }
    };
    let request = HttpRequest {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        body: read,
        authorization: parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string),
    };
    // A call waiting for the store core (a lock, say) ends when its client resets.
    let reset = async {
        let _ = poll_fn(|cx| respond.poll_reset(cx)).await;
        None
    };
    let handled = future::or(async { Some(handler.handle(request).await) }, reset).await;
    if let Some(response) = handled {
        send(respond, response).await;
    }
}

/// Why a request's body was not read whole.
enum Refused {
    /// Past `http1_body_bytes_max`.
    TooLarge,
    /// Past the connection's budget, with the budget's message.
    Exhausted(String),
    /// The client reset the stream or the connection ended.
    Gone,
}

impl Refused {
    /// The answer, if anyone is left to read it: 413 as on HTTP/1.1; 429
    /// (grpc-gateway's status for RESOURCE_EXHAUSTED, what a gRPC call past
    /// the budget gets).
    fn answer(self) -> Option<HttpResponse> {
        match self {
            Refused::TooLarge => Some(HttpResponse::text(413, "Request Entity Too Large\n")),
            Refused::Exhausted(message) => Some(HttpResponse::text(429, &format!("{message}\n"))),
            Refused::Gone => None,
        }
    }
}

/// The request body, at most `max` bytes (by its declared length, then by
/// what comes), with its charge: the stream's headers and overhead, then
/// each chunk as it arrives. Its window is handed back at once, as a gRPC
/// call's is.
async fn read_body(
    headers: &http::HeaderMap,
    body: &mut RecvStream,
    max: usize,
    budget: &ConnectionBudget,
) -> Result<(Vec<u8>, Charge), Refused> {
    let held = CALL_OVERHEAD_BYTES + header_list_bytes(headers);
    let mut charge = budget
        .charge(held)
        .map_err(|status| Refused::Exhausted(status.message))?;
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|declared| declared > max) {
        return Err(Refused::TooLarge);
    }
    let mut read = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|_| Refused::Gone)?;
        if read.len() + chunk.len() > max {
            return Err(Refused::TooLarge);
        }
        charge
            .set(held + read.len() + chunk.len())
            .map_err(|status| Refused::Exhausted(status.message))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        read.extend_from_slice(&chunk);
    }
    Ok((read, charge))
}

/// After an answer that did not wait for the whole body (413, 429), the
/// rest of the body read and dropped, at most `max` bytes: a client that
/// reads its answer only once it has sent its body (curl) gets it. Past
/// that, the stream is reset (NO_ERROR, RFC 9113 section 8.1) when `body`
/// drops, which some clients (curl 7.88, the h2 crate's) take as an error
/// instead of the answer.
async fn discard(body: &mut RecvStream, max: usize) {
    let mut discarded = 0;
    while discarded < max {
        let Some(Ok(chunk)) = body.data().await else {
            return;
        };
        discarded += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
}

/// The response's HEADERS: its status, etcd's CORS headers, its content
/// type, and the body's length when it is whole (`length`).
fn head(response: &HttpResponse, length: Option<usize>) -> Response<()> {
    let mut head = Response::new(());
    *head.status_mut() = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = head.headers_mut();
    for (name, value) in CORS_HEADERS {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("a valid header name");
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(response.content_type),
    );
    if let Some(length) = length {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    head
}

async fn send(respond: SendResponse<Bytes>, mut response: HttpResponse) {
    match response.chunks.take() {
        None => send_whole(respond, response).await,
        Some(chunks) => send_chunks(respond, &response, chunks).await,
    }
}

async fn send_whole(mut respond: SendResponse<Bytes>, response: HttpResponse) {
    let empty = response.body.is_empty();
    let Ok(mut stream) = respond.send_response(head(&response, Some(response.body.len())), empty) else {
        return;
    };
    if !empty {
        let _ = send_data(&mut stream, Bytes::from(response.body), true).await;
    }
}

/// Writes each chunk as it comes, until the sender is done (then the stream
/// ends) or the client resets the stream (then dropping `chunks` ends the
/// call that fills them).
async fn send_chunks(mut respond: SendResponse<Bytes>, response: &HttpResponse, chunks: Chunks) {
    let Ok(mut stream) = respond.send_response(head(response, None), false) else {
        return;
    };
    loop {
        let next = future::or(async { Some(chunks.0.recv().await) }, async {
            let _ = poll_fn(|cx| stream.poll_reset(cx)).await;
            None
        })
        .await;
        match next {
            None => return,
            Some(None) => {
                let _ = send_data(&mut stream, Bytes::new(), true).await;
                return;
            }
            Some(Some(chunk)) if chunk.is_empty() => {}
            Some(Some(chunk)) => {
                if send_data(&mut stream, Bytes::from(chunk), false).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Sends `data`, waiting for the client's window as it goes, so a slow
/// reader holds the sender back instead of making h2 buffer without bound.
async fn send_data(stream: &mut SendStream<Bytes>, mut data: Bytes, end: bool) -> Result<(), h2::Error> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let granted = match poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(granted) => granted?,
            None => return Err(h2::Error::from(h2::Reason::CANCEL)),
        };
        let chunk = data.split_to(granted.min(data.len()));
        if !chunk.is_empty() {
            stream.send_data(chunk, false)?;
        }
    }
    if end {
        stream.send_data(Bytes::new(), true)?;
    }
    Ok(())
}

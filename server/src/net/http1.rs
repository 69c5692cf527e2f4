//! Minimal HTTP/1.1 on the client port, for /version, /health, /metrics and
//! the JSON gateway: keep-alive, one request at a time, bodies of a known
//! length, responses whole or (the gateway's streams) chunked.

use std::time::Duration;

use futures_lite::{future, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::LocalReceiver;

use super::{ConnectionLimits, CORS_HEADERS};

/// The parts of a request the handlers look at.
#[derive(Debug)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    /// The request's body (a POST's; bounded by `http1_body_bytes_max`).
    pub body: Vec<u8>,
    /// The `Authorization` header: an etcd auth token, as the gateway's
    /// clients send it.
    pub authorization: Option<String>,
}

impl HttpRequest {
    /// A GET of `path` with no body.
    pub fn get(path: &str, query: &str) -> HttpRequest {
        HttpRequest {
            method: "GET".to_string(),
            path: path.to_string(),
            query: query.to_string(),
            body: Vec::new(),
            authorization: None,
        }
    }
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Some: the body comes from here instead, each item one chunk
    /// (`Transfer-Encoding: chunked`), until the sender is dropped; the
    /// connection closes after it.
    pub chunks: Option<Chunks>,
}

/// A streamed body's chunks (the JSON gateway's streams).
pub struct Chunks(pub LocalReceiver<Vec<u8>>);

impl std::fmt::Debug for Chunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Chunks")
    }
}

impl HttpResponse {
    pub fn json(status: u16, body: String) -> HttpResponse {
        HttpResponse {
            status,
            content_type: "application/json",
            body: body.into_bytes(),
            chunks: None,
        }
    }

    pub fn text(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            chunks: None,
        }
    }
}

#[allow(async_fn_in_trait)] // single-threaded executors: no Send bound wanted
pub trait HttpHandler: 'static {
    async fn handle(&self, request: HttpRequest) -> HttpResponse;
}

/// Serves requests until the client closes, errs, idles out or asks to close.
pub async fn serve<S, H>(mut stream: S, handler: &H, limits: &ConnectionLimits)
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: HttpHandler,
{
    let mut buffered: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let head = read_head(&mut stream, &mut buffered, limits.http1_head_bytes_max);
        let Some(Some(head_len)) = with_timeout(limits.http1_idle_timeout, head).await else {
            return;
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(_)) = parsed.parse(&buffered[..head_len]) else {
            let _ = write_response(&mut stream, HttpResponse::text(400, "bad request\n"), true).await;
            return;
        };
        let close = parsed.version == Some(0) || wants_close(parsed.headers);
        if header(parsed.headers, "transfer-encoding").is_some() {
            // A chunked request body: none of etcd's clients sends one.
            let response = HttpResponse::text(411, "Length Required\n");
            let _ = write_response(&mut stream, response, true).await;
            return;
        }
        let body_len = content_length(parsed.headers);
        if body_len > limits.http1_body_bytes_max {
            let response = HttpResponse::text(413, "Request Entity Too Large\n");
            let _ = write_response(&mut stream, response, true).await;
            return;
        }
        let authorization = header(parsed.headers, "authorization")
            .and_then(|value| std::str::from_utf8(value).ok())
            .map(str::to_string);
        let (path, query) = match parsed.path.unwrap_or("/").split_once('?') {
            Some((path, query)) => (path.to_string(), query.to_string()),
            None => (parsed.path.unwrap_or("/").to_string(), String::new()),
        };
        let method = parsed.method.unwrap_or("").to_string();
        buffered.drain(..head_len);
        let Some(body) = read_body(&mut stream, &mut buffered, body_len).await else {
            return;
        };
        let request = HttpRequest {
            method,
            path,
            query,
            body,
            authorization,
        };
        let mut response = handler.handle(request).await;
        if let Some(chunks) = response.chunks.take() {
            stream_response(stream, response, chunks).await;
            return;
        }
        if write_response(&mut stream, response, close).await.is_err() || close {
            return;
        }
    }
}

async fn with_timeout<T>(timeout: Duration, work: impl std::future::Future<Output = T>) -> Option<T> {
    future::or(async { Some(work.await) }, async {
        glommio::timer::sleep(timeout).await;
        None
    })
    .await
}

/// Reads until `buffered` holds a complete head, or bytes that cannot start one
/// (the caller answers those with a 400 at once instead of waiting for more);
/// returns their length, or None on EOF, error or an oversized head.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S, buffered: &mut Vec<u8>, max: usize) -> Option<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(end + 4);
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        if !buffered.is_empty() && httparse::Request::new(&mut headers).parse(buffered).is_err() {
            return Some(buffered.len());
        }
        if buffered.len() > max {
            return None;
        }
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffered.extend_from_slice(&chunk[..read]);
    }
}

/// The body of `length` bytes, from what is buffered and then the stream;
/// None if the client went away first.
async fn read_body<S: AsyncRead + Unpin>(stream: &mut S, buffered: &mut Vec<u8>, length: usize) -> Option<Vec<u8>> {
    let from_buffer = length.min(buffered.len());
    let mut body: Vec<u8> = buffered.drain(..from_buffer).collect();
    let mut chunk = [0u8; 4096];
    while body.len() < length {
        let wanted = (length - body.len()).min(chunk.len());
        match stream.read(&mut chunk[..wanted]).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => body.extend_from_slice(&chunk[..read]),
        }
    }
    Some(body)
}

fn header<'a>(headers: &'a [httparse::Header<'_>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn wants_close(headers: &[httparse::Header<'_>]) -> bool {
    header(headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"))
}

fn content_length(headers: &[httparse::Header<'_>]) -> usize {
    header(headers, "content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The status line and the headers every response has.
fn head(response: &HttpResponse) -> String {
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Request Entity Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", response.status);
    for (name, value) in CORS_HEADERS {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Type: {}\r\n", response.content_type));
    head
}

async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    response: HttpResponse,
    close: bool,
) -> std::io::Result<()> {
    let mut out = head(&response);
    out.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&response.body);
    stream.write_all(&out).await?;
    stream.flush().await
}

/// Writes a streamed response chunk by chunk as they come, until the sender
/// is done or the client goes away (a read that ends or fails, raced with
/// the writes: a stream with nothing to send would otherwise never notice);
/// the connection then closes.
async fn stream_response<S>(stream: S, response: HttpResponse, chunks: Chunks)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let write = async {
        let head = format!(
            "{}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            head(&response)
        );
        writer.write_all(head.as_bytes()).await?;
        writer.flush().await?;
        while let Some(chunk) = chunks.0.recv().await {
            if chunk.is_empty() {
                continue; // an empty chunk would end the body
            }
            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
            framed.extend_from_slice(&chunk);
            framed.extend_from_slice(b"\r\n");
            writer.write_all(&framed).await?;
            writer.flush().await?;
        }
        writer.write_all(b"0\r\n\r\n").await?;
        writer.flush().await
    };
    let gone = async {
        let mut discard = [0u8; 1024];
        while matches!(reader.read(&mut discard).await, Ok(read) if read > 0) {}
        Ok(())
    };
    let _: std::io::Result<()> = future::or(write, gone).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::io::Cursor;

    struct Echo;

    impl HttpHandler for Echo {
        async fn handle(&self, request: HttpRequest) -> HttpResponse {
            HttpResponse::text(200, &format!("{} {} {}", request.method, request.path, request.query))
        }
    }

    /// In-memory duplex: reads from `input`, collects writes.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl AsyncRead for Duplex {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.input).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Duplex {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.output.extend_from_slice(buf);
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

    fn run(input: &[u8]) -> String {
        let mut duplex = Duplex {
            input: Cursor::new(input.to_vec()),
            output: Vec::new(),
        };
        glommio::LocalExecutor::default().run(async {
            serve(&mut duplex, &Echo, &ConnectionLimits::default()).await;
        });
        String::from_utf8(duplex.output).unwrap()
    }

    #[test]
    fn keep_alive_serves_requests_in_turn() {
        let out = run(b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
        assert!(out.contains("GET /a x=1"));
        assert!(out.contains("POST /b "));
        assert!(out.ends_with("GET /c "), "{out}");
    }

    #[test]
    fn garbage_gets_a_400_without_waiting_for_the_end_of_a_head() {
        // No "\r\n\r\n" ever comes: waiting for one would wait for the client
        // to give up (here: for EOF, which would end the connection silently).
        let out = run(b"\x16\x03\x01\x02\x00");
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    }

    #[test]
    fn garbage_gets_a_400_and_the_connection_ends() {
        let out = run(b"\x16\x03\x01garbage\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        assert_eq!(out.matches("HTTP/1.1").count(), 1);
    }
}

//! Minimal HTTP/1.1 on the client port, for /version, /health and /metrics:
//! keep-alive, one request at a time, request bodies ignored.

use std::time::Duration;

use futures_lite::{future, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::ConnectionLimits;

/// The parts of a request the handlers look at.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub query: String,
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(status: u16, body: String) -> HttpResponse {
        HttpResponse {
            status,
            content_type: "application/json",
            body: body.into_bytes(),
        }
    }

    pub fn text(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
        }
    }
}

#[allow(async_fn_in_trait)] // single-threaded executors: no Send bound wanted
pub trait HttpHandler: 'static {
    async fn handle(&self, request: HttpRequest) -> HttpResponse;
}

/// Bytes of request body skipped per request at most; a larger body closes the connection.
const BODY_BYTES_MAX: usize = 64 * 1024;

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
            let _ = write_response(&mut stream, &HttpResponse::text(400, "bad request\n"), true).await;
            return;
        };
        let close = parsed.version == Some(0) || wants_close(parsed.headers);
        let body_len = content_length(parsed.headers);
        let (path, query) = match parsed.path.unwrap_or("/").split_once('?') {
            Some((path, query)) => (path.to_string(), query.to_string()),
            None => (parsed.path.unwrap_or("/").to_string(), String::new()),
        };
        let request = HttpRequest {
            method: parsed.method.unwrap_or("").to_string(),
            path,
            query,
        };
        buffered.drain(..head_len);
        if body_len > BODY_BYTES_MAX || !skip_body(&mut stream, &mut buffered, body_len).await {
            return;
        }
        let response = handler.handle(request).await;
        if write_response(&mut stream, &response, close).await.is_err() || close {
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

async fn skip_body<S: AsyncRead + Unpin>(stream: &mut S, buffered: &mut Vec<u8>, mut remaining: usize) -> bool {
    let from_buffer = remaining.min(buffered.len());
    buffered.drain(..from_buffer);
    remaining -= from_buffer;
    let mut chunk = [0u8; 4096];
    while remaining > 0 {
        match stream.read(&mut chunk[..remaining.min(4096)]).await {
            Ok(0) | Err(_) => return false,
            Ok(read) => remaining -= read,
        }
    }
    true
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

async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    response: &HttpResponse,
    close: bool,
) -> std::io::Result<()> {
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        response.status,
        response.content_type,
        response.body.len()
    )
    .into_bytes();
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&response.body);
    stream.write_all(&out).await?;
    stream.flush().await
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

//! etcd's JSON gateway side by side with etcd 3.4: the same POSTs to both,
//! the answers compared as JSON with the header's cluster id, member id and
//! raft term left out (the two clusters differ there, and only there). Over
//! HTTP/1.1 (curl's shape: a JSON body of known length), over TLS where ALPN
//! gives HTTP/2 (curl over https), and over h2c with prior knowledge, which
//! etcd's plain port does not serve (its every HTTP/2 stream is gRPC) and
//! ringkv does: compared with etcd's HTTP/1.1 answers. Then the gateway's
//! bounds over HTTP/2: the body size, the connection's budget, and the
//! count of request messages in a stream's body.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use crate::support::Etcd;
use crate::support::{free_port, KillOnDrop, Ringkv, START_TIMEOUT};
use crate::tls::{path, Ca};

/// The longest a curl may take; every test's calls end well before.
const CURL_SECONDS_MAX: &str = "30";

/// How a test's requests reach a server.
#[derive(Clone, Copy)]
enum Transport<'a> {
    /// HTTP/1.1 by hand, on a plain port.
    Http1(SocketAddr),
    /// curl with HTTP/2 prior knowledge (h2c), on a plain port.
    H2c(SocketAddr),
    /// curl over TLS trusting the CA at this path: ALPN gives HTTP/2.
    Tls(SocketAddr, &'a Path),
}

/// A POST of `body` to `path`: the status and the whole body.
fn post(to: Transport<'_>, path: &str, body: &str) -> (u16, String) {
    match to {
        Transport::Http1(addr) => {
            let (status, lines) = post_stream_http1(addr, path, body, usize::MAX);
            (status, lines.concat())
        }
        _ => request(to, "POST", path, Some(body.as_bytes())),
    }
}

/// `method` on `path` with `body` (None: no body), by curl (HTTP/2, checked:
/// `%{http_version}`) or by hand (HTTP/1.1): the status and the body.
fn request(to: Transport<'_>, method: &str, path: &str, body: Option<&[u8]>) -> (u16, String) {
    let (addr, flags) = match to {
        Transport::Http1(addr) => return request_http1(addr, method, path),
        Transport::H2c(addr) => (addr, vec!["--http2-prior-knowledge".to_string()]),
        Transport::Tls(addr, ca) => (addr, cacert(ca)),
    };
    let output = curl(&flags, addr, path)
        .args(["-X", method, "-o", "-", "-w", "\n%{http_code} %{http_version}"])
        .args(body.map(|_| ["--data-binary", "@-"]).into_iter().flatten())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            let mut stdin = child.stdin.take().expect("piped");
            stdin.write_all(body.unwrap_or_default())?;
            drop(stdin);
            child.wait_with_output()
        })
        .expect("curl runs");
    let text = String::from_utf8(output.stdout).expect("UTF-8 answers");
    let (body, trailer) = text.rsplit_once('\n').expect("curl's -w line");
    let (status, version) = trailer.split_once(' ').expect("code and version");
    assert_eq!(version, "2", "{method} {path}: HTTP/{version}, not HTTP/2 ({body})");
    (status.parse().expect("a status code"), body.to_string())
}

/// curl's flags to trust the CA at `ca`.
fn cacert(ca: &Path) -> Vec<String> {
    vec!["--cacert".to_string(), path(ca).to_string()]
}

/// curl to `path` on `addr` with `flags`: https with a CA, http otherwise.
fn curl(flags: &[String], addr: SocketAddr, path: &str) -> Command {
    let scheme = if flags.iter().any(|flag| flag == "--cacert") {
        "https"
    } else {
        "http"
    };
    let mut command = Command::new("curl");
    command
        .args([
            "-sS",
            "--max-time",
            CURL_SECONDS_MAX,
            "-H",
            "content-type: application/json",
        ])
        .args(flags)
        .arg(format!("{scheme}://{addr}{path}"));
    command
}

/// A POST, answered whole or with a stream: the status and the body's first
/// `lines` lines.
fn post_stream(to: Transport<'_>, path: &str, body: &str, lines: usize) -> (u16, Vec<String>) {
    let (addr, flags) = match to {
        Transport::Http1(addr) => return post_stream_http1(addr, path, body, lines),
        Transport::H2c(addr) => (addr, vec!["--http2-prior-knowledge".to_string()]),
        Transport::Tls(addr, ca) => (addr, cacert(ca)),
    };
    let dir = tempfile::tempdir().unwrap();
    let head_path = dir.path().join("head");
    let mut child = KillOnDrop(
        curl(&flags, addr, path)
            .args(["-N", "-D", self::path(&head_path), "--data-binary", "@-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("curl runs"),
    );
    let mut stdin = child.0.stdin.take().expect("piped");
    stdin.write_all(body.as_bytes()).expect("curl reads its body");
    drop(stdin);
    let mut reader = BufReader::new(child.0.stdout.take().expect("piped"));
    let mut read = Vec::new();
    while read.len() < lines {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("curl's output") == 0 {
            break;
        }
        read.push(line.trim_end().to_string());
    }
    drop(child);
    let head = std::fs::read_to_string(&head_path).expect("curl wrote the head");
    let status_line = head.lines().next().expect("a status line");
    let status = status_line
        .strip_prefix("HTTP/2 ")
        .unwrap_or_else(|| panic!("not HTTP/2: {status_line}"));
    (status.trim().parse().expect("a status code"), read)
}

/// `method` on `path` over HTTP/1.1, no body: the status and the body.
fn request_http1(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().expect("a status code");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A POST over HTTP/1.1: the status and the body's first `lines` lines (a
/// chunked body is read chunk by chunk, up to its end).
fn post_stream_http1(addr: SocketAddr, path: &str, body: &str, lines: usize) -> (u16, Vec<String>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line[9..12].parse().expect("a status code");
    let mut length = None;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        if header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.trim().parse::<usize>().unwrap());
            }
        }
    }
    let mut text = String::new();
    if let Some(length) = length {
        let mut whole = vec![0u8; length];
        reader.read_exact(&mut whole).unwrap();
        text = String::from_utf8(whole).unwrap();
    } else {
        while text.lines().count() < lines {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
            if size == 0 {
                break;
            }
            let mut chunk = vec![0u8; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            text.push_str(std::str::from_utf8(&chunk[..size]).unwrap());
        }
    }
    (status, text.lines().take(lines).map(str::to_string).collect())
}

/// The answer with what differs between two clusters taken out.
fn comparable(body: &str) -> Value {
    let mut value: Value = serde_json::from_str(body).unwrap_or_else(|error| panic!("JSON ({error}): {body}"));
    strip_headers(&mut value);
    value
}

fn strip_headers(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(header)) = map.get_mut("header") {
                for field in ["cluster_id", "member_id", "raft_term"] {
                    header.remove(field);
                }
            }
            map.values_mut().for_each(strip_headers);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_headers),
        _ => {}
    }
}

/// (path, body): a history of unary calls, each answered alike by both.
const UNARY_CALLS: &[(&str, &str)] = &[
    ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
    ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmF6","prev_kv":true}"#),
    ("/v3beta/kv/range", r#"{"key":"Zm9v"}"#),
    ("/v3/kv/range", r#"{"key":"AA==","range_end":"AA==","count_only":true}"#),
    ("/v3/kv/range", r#"{"key":"Zm9v","revision":"100"}"#),
    ("/v3/kv/range", r#"{"keys":["Zm9v"]}"#),
    ("/v3/kv/range", ""),
    (
        "/v3/kv/txn",
        r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VALUE","value":"YmF6"}],"success":[{"request_put":{"key":"Zm9v","value":"cXV4"}}],"failure":[{"request_range":{"key":"Zm9v"}}]}"#,
    ),
    ("/v3/kv/deleterange", r#"{"key":"Zm9v","prev_kv":true}"#),
    ("/v3/lease/grant", r#"{"ID":"4242","TTL":"60"}"#),
    ("/v3/kv/put", r#"{"key":"bGVhc2Vk","value":"eA==","lease":"4242"}"#),
    ("/v3/lease/timetolive", r#"{"ID":"4242","keys":true}"#),
    ("/v3/kv/lease/leases", "{}"),
    ("/v3/lease/revoke", r#"{"ID":"4242"}"#),
    ("/v3/lease/revoke", r#"{"ID":"4242"}"#),
    ("/v3/kv/compaction", r#"{"revision":"3"}"#),
    ("/v3/kv/range", r#"{"key":"Zm9v","revision":"2"}"#),
    ("/v3/maintenance/alarm", r#"{"action":"GET"}"#),
    ("/v3/lease/grant", r#"{"ID":"99","TTL":"60"}"#),
    ("/v3/lock/lock", r#"{"name":"bXlsb2Nr","lease":"99"}"#),
    ("/v3/lock/unlock", r#"{"key":"bXlsb2NrLzYz"}"#),
    (
        "/v3/election/campaign",
        r#"{"name":"ZWxlY3Rpb24=","lease":"99","value":"djE="}"#,
    ),
    ("/v3/election/leader", r#"{"name":"ZWxlY3Rpb24="}"#),
    ("/v3/election/leader", r#"{"name":"bm9ib2R5"}"#),
];

/// Every call of `UNARY_CALLS` in turn, answered the same by `ringkv` and
/// `etcd` (each fresh, or with the same history).
fn unary_calls_answer_alike(ringkv: Transport<'_>, etcd: Transport<'_>) {
    for (path, body) in UNARY_CALLS {
        let (ringkv_status, ringkv_body) = post(ringkv, path, body);
        let (etcd_status, etcd_body) = post(etcd, path, body);
        assert_eq!(
            ringkv_status, etcd_status,
            "{path} {body}: {ringkv_body} vs {etcd_body}"
        );
        assert_eq!(comparable(&ringkv_body), comparable(&etcd_body), "{path} {body}");
    }
    // What both answer the same way, though not byte for byte: a body that is
    // no JSON (the parser's message differs), the member list (the members differ).
    let (ringkv_status, ringkv_body) = post(ringkv, "/v3/kv/range", "{bad");
    let (etcd_status, etcd_body) = post(etcd, "/v3/kv/range", "{bad");
    assert_eq!((ringkv_status, etcd_status), (400, 400));
    assert_eq!(comparable(&ringkv_body)["code"], comparable(&etcd_body)["code"]);
    let members = comparable(&post(ringkv, "/v3/cluster/member/list", "{}").1);
    assert_eq!(members["members"].as_array().map(Vec::len), Some(1), "{members}");
}

/// Go's net/http and grpc-gateway's own answers, the same from both.
fn plain_answers_alike(ringkv: Transport<'_>, etcd: Transport<'_>) {
    for (method, path) in [
        ("GET", "/v3/kv/range"),
        ("POST", "/v3/kv/nothing"),
        ("POST", "/v3alpha/kv/range"),
        ("GET", "/nothing"),
    ] {
        let answer = |to| request(to, method, path, None);
        assert_eq!(answer(ringkv), answer(etcd), "{method} {path}");
    }
}

/// Watch and keepalive streams, answered line by line alike.
fn streams_answer_alike(ringkv: Transport<'_>, etcd: Transport<'_>) {
    for to in [ringkv, etcd] {
        post(to, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#);
        post(to, "/v3/lease/grant", r#"{"ID":"7","TTL":"60"}"#);
    }
    // (path, body, lines read): a progress request is answered at once on
    // etcd, before or after the watch's catch-up events; the lines are
    // compared in any order.
    let streams = [
        (
            "/v3/watch",
            r#"{"create_request":{"key":"Zm9v","start_revision":"1"}}"#,
            2,
        ),
        (
            "/v3/watch",
            r#"{"create_request":{"key":"Zm9v","start_revision":"1"}} {"progress_request":{}}"#,
            3,
        ),
        ("/v3/lease/keepalive", r#"{"ID":"7"}"#, 1),
        // An error before the first message: the status is the error's.
        ("/v3/watch", "{bad", 1),
    ];
    for (path, body, lines) in streams {
        let (ringkv_status, ringkv_lines) = post_stream(ringkv, path, body, lines);
        let (etcd_status, etcd_lines) = post_stream(etcd, path, body, lines);
        assert_eq!(ringkv_status, etcd_status, "{path} {body}");
        let sorted = |lines: Vec<String>| {
            let mut lines: Vec<String> = lines
                .iter()
                .map(|line| {
                    let mut value = comparable(line);
                    // serde's message for a body that is no JSON, not Go's.
                    value
                        .as_object_mut()
                        .map(|error| error.remove("error").and(error.remove("message")));
                    value.to_string()
                })
                .collect();
            lines.sort();
            lines
        };
        assert_eq!(sorted(ringkv_lines), sorted(etcd_lines), "{path} {body}");
    }
}

#[test]
fn unary_calls_answer_as_etcds_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(&dir.path().join("ringkv"), &[]);
    let etcd = Etcd::start();
    unary_calls_answer_alike(Transport::Http1(ringkv.addr), Transport::Http1(etcd.addr));
    plain_answers_alike(Transport::Http1(ringkv.addr), Transport::Http1(etcd.addr));
}

#[test]
fn watch_and_keep_alive_stream_as_etcds_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(&dir.path().join("ringkv"), &[]);
    let etcd = Etcd::start();
    streams_answer_alike(Transport::Http1(ringkv.addr), Transport::Http1(etcd.addr));
}

#[test]
fn over_h2c_the_gateway_answers_as_etcds_does_over_http1() {
    let dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(&dir.path().join("ringkv"), &[]);
    let etcd = Etcd::start();
    // etcd's plain port takes every HTTP/2 stream for gRPC and resets one
    // that is not; ringkv's answers it as HTTP, as etcd's TLS port does.
    let refused = curl(&["--http2-prior-knowledge".to_string()], etcd.addr, "/v3/kv/range")
        .args(["--data-binary", "{}"])
        .output()
        .expect("curl runs");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("PROTOCOL_ERROR"),
        "etcd answered h2c JSON: {stderr}"
    );
    streams_answer_alike(Transport::H2c(ringkv.addr), Transport::Http1(etcd.addr));
    unary_calls_answer_alike(Transport::H2c(ringkv.addr), Transport::Http1(etcd.addr));
    plain_answers_alike(Transport::H2c(ringkv.addr), Transport::Http1(etcd.addr));
}

/// An etcd serving clients over TLS with `pair`, killed when dropped.
struct TlsEtcd {
    _process: KillOnDrop,
    addr: SocketAddr,
    _data_dir: tempfile::TempDir,
}

impl TlsEtcd {
    fn start(pair: &crate::tls::Pair) -> TlsEtcd {
        let data_dir = tempfile::tempdir().unwrap();
        let (client_port, peer_port) = (free_port(), free_port());
        let client_url = format!("https://127.0.0.1:{client_port}");
        let process = KillOnDrop(
            Command::new("etcd")
                .arg(format!("--data-dir={}", path(data_dir.path())))
                .arg(format!("--listen-client-urls={client_url}"))
                .arg(format!("--advertise-client-urls={client_url}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
                .arg(format!("--cert-file={}", path(&pair.cert)))
                .arg(format!("--key-file={}", path(&pair.key)))
                .args(["--log-level", "error"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("etcd is installed (Debian package etcd-server)"),
        );
        TlsEtcd {
            _process: process,
            addr: format!("127.0.0.1:{client_port}").parse().unwrap(),
            _data_dir: data_dir,
        }
    }
}

/// The headers a client of etcd's port reads beside the body: the CORS
/// headers and the content type, as `name: value` lines in lower case.
/// (etcd's TLS gateway also sends `grpc-metadata-*` headers, its own gRPC
/// response's headers passed through; ringkv calls no gRPC server to have any.)
fn client_headers(ca: &Path, addr: SocketAddr, path: &str) -> Vec<String> {
    let output = curl(&cacert(ca), addr, path)
        .args(["-D", "-", "-o", "/dev/null", "--data-binary", r#"{"key":"Zm9v"}"#])
        .output()
        .expect("curl runs");
    let head = String::from_utf8(output.stdout).unwrap().to_lowercase();
    assert!(head.starts_with("http/2 200"), "{path}: {head}");
    let mut lines: Vec<String> = head
        .lines()
        .filter(|line| line.starts_with("access-control-") || line.starts_with("content-type:"))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[test]
fn over_tls_alpn_gives_http2_and_the_gateway_answers_as_etcds() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let server = ca.issue("server", "server");
    let url = format!("https://127.0.0.1:{}", free_port());
    let args = [
        format!("--listen-client-urls={url}"),
        format!("--advertise-client-urls={url}"),
        format!("--cert-file={}", path(&server.cert)),
        format!("--key-file={}", path(&server.key)),
    ];
    let ringkv = Ringkv::spawn(&dir.path().join("ringkv"), &args).ready();
    let etcd = TlsEtcd::start(&server);
    let (ringkv_to, etcd_to) = (
        Transport::Tls(ringkv.addr, &ca.cert_path),
        Transport::Tls(etcd.addr, &ca.cert_path),
    );
    // etcd elects itself a moment after it listens.
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    let etcd_serves = || {
        let output = curl(&cacert(&ca.cert_path), etcd.addr, "/health")
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .output()
            .expect("curl runs");
        output.stdout == b"200"
    };
    while !etcd_serves() {
        assert!(std::time::Instant::now() < deadline, "etcd never served over TLS");
        std::thread::sleep(Duration::from_millis(100));
    }
    streams_answer_alike(ringkv_to, etcd_to);
    unary_calls_answer_alike(ringkv_to, etcd_to);
    plain_answers_alike(ringkv_to, etcd_to);
    assert_eq!(
        client_headers(&ca.cert_path, ringkv.addr, "/v3/kv/range"),
        client_headers(&ca.cert_path, etcd.addr, "/v3/kv/range")
    );
    // etcd's HTTP endpoints over HTTP/2 as well (their bodies differ: ringkv's
    // /health has etcd 3.5's "reason", /version names ringkv's own).
    for path in ["/health", "/version", "/metrics"] {
        let ringkv_status = request(ringkv_to, "GET", path, None).0;
        assert_eq!(ringkv_status, request(etcd_to, "GET", path, None).0, "{path}");
        assert_eq!(ringkv_status, 200, "{path}");
    }
}

/// A raw HTTP/2 connection (h2c) to `addr`, driven in the background.
async fn h2_connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connects");
    let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send.ready().await.expect("the connection takes streams")
}

/// A JSON POST to `path` on `client`, its body still open; with the
/// content length `declared`, if any.
async fn h2_open(
    client: &h2::client::SendRequest<Bytes>,
    path: &str,
    declared: Option<usize>,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let mut request = http::Request::post(format!("http://127.0.0.1{path}")).header("content-type", "application/json");
    if let Some(length) = declared {
        request = request.header("content-length", length);
    }
    let mut client = client.clone().ready().await.expect("the connection takes streams");
    client
        .send_request(request.body(()).unwrap(), false)
        .expect("a stream opens")
}

/// The status and body of a response.
async fn h2_answer(response: h2::client::ResponseFuture) -> (u16, String) {
    let response = tokio::time::timeout(H2_WAIT, response)
        .await
        .expect("answered in time")
        .expect("answered, not reset");
    h2_read(response).await
}

/// The status and body of a response that came.
async fn h2_read(response: http::Response<h2::RecvStream>) -> (u16, String) {
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = tokio::time::timeout(H2_WAIT, body.data())
        .await
        .expect("a body in time")
    {
        text.extend_from_slice(&chunk.expect("the body arrives"));
    }
    (status, String::from_utf8(text).unwrap())
}

/// The longest an HTTP/2 answer may take.
const H2_WAIT: Duration = Duration::from_secs(30);

/// The largest gateway body at the default `--max-request-bytes` (1.5 MiB in
/// base64, and 512 KiB for the JSON around it).
const BODY_BYTES_MAX: usize = 1536 * 1024 / 3 * 4 + 512 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_bodies_over_http2_are_bounded_as_over_http1() {
    let dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(&dir.path().join("ringkv"), &[]);
    let too_large = (413, "Request Entity Too Large\n".to_string());
    // HTTP/1.1: refused by its Content-Length, before a byte of the body.
    let mut stream = TcpStream::connect(ringkv.addr).unwrap();
    write!(
        stream,
        "POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        BODY_BYTES_MAX + 1
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // HTTP/2: the same by the declared length, and by the bytes that come
    // when none is declared; the connection serves on.
    let client = h2_connect(ringkv.addr).await;
    let (response, _body) = h2_open(&client, "/v3/kv/range", Some(BODY_BYTES_MAX + 1)).await;
    assert_eq!(h2_answer(response).await, too_large, "by its content-length");
    let (response, mut body) = h2_open(&client, "/v3/kv/range", None).await;
    let _ = body.send_data(Bytes::from(vec![b' '; BODY_BYTES_MAX + 1]), true);
    assert_eq!(h2_answer(response).await, too_large, "by its bytes");
    let (response, mut body) = h2_open(&client, "/v3/kv/range", None).await;
    body.send_data(Bytes::from(vec![b' '; BODY_BYTES_MAX]), true).unwrap();
    assert_eq!(
        h2_answer(response).await.0,
        400,
        "the largest body is read (no key: 400)"
    );
    let (response, mut body) = h2_open(&client, "/v3/kv/put", None).await;
    body.send_data(Bytes::from_static(br#"{"key":"Zm9v","value":"YmFy"}"#), true)
        .unwrap();
    assert_eq!(h2_answer(response).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_bodies_partly_sent_past_the_connection_budget_fail_alone() {
    // 40 streams each sending 2 MiB of a body it never ends: 80 MiB held for
    // one connection, past its 64 MiB (what gRPC calls' requests are held to).
    const STREAMS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(&dir.path().join("ringkv"), &[]);
    let client = h2_connect(ringkv.addr).await;
    let mut held = Vec::new();
    for _ in 0..STREAMS {
        let (response, mut body) = h2_open(&client, "/v3/kv/range", None).await;
        body.send_data(Bytes::from(vec![b' '; 2 * 1024 * 1024]), false).unwrap();
        held.push((response, body));
    }
    // Those past the budget are answered at once; the others wait for the
    // rest of their bodies. None is reset.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut waiting = Vec::new();
    for (mut response, body) in held {
        match tokio::time::timeout_at(deadline, &mut response).await {
            Err(_) => waiting.push((response, body)),
            Ok(answer) => {
                let answer = h2_read(answer.expect("answered, not reset")).await;
                let message = "ringkv: the calls of this connection would hold more than 67108864 bytes\n";
                assert_eq!(answer, (429, message.to_string()));
            }
        }
    }
    // At most 31 bodies of 2 MiB (and each stream's own count) fit; streams
    // interleave, so more may be refused part way.
    assert!((16..=31).contains(&waiting.len()), "{} fit 64 MiB", waiting.len());
    // Those that fit are read whole once they end (spaces: no key, 400).
    for (response, mut body) in waiting {
        body.send_data(Bytes::new(), true).unwrap();
        assert_eq!(h2_answer(response).await.0, 400);
    }
    let (response, mut body) = h2_open(&client, "/v3/kv/put", None).await;
    body.send_data(Bytes::from_static(br#"{"key":"Zm9v","value":"YmFy"}"#), true)
        .unwrap();
    assert_eq!(h2_answer(response).await.0, 200, "the connection serves on");
}

#[test]
fn a_gateway_stream_body_holds_at_most_1024_request_messages() {
    let dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(&dir.path().join("ringkv"), &[]);
    post(
        Transport::Http1(ringkv.addr),
        "/v3/lease/grant",
        r#"{"ID":"7","TTL":"60"}"#,
    );
    let refused = (
        400,
        vec![
            r#"{"error":"ringkv: a gateway stream's body holds more than 1024 request messages","message":"ringkv: a gateway stream's body holds more than 1024 request messages","code":3}"#
                .to_string(),
        ],
    );
    for to in [Transport::Http1(ringkv.addr), Transport::H2c(ringkv.addr)] {
        let keepalives = |count: usize| r#"{"ID":"7"}"#.repeat(count);
        let (status, first) = post_stream(to, "/v3/lease/keepalive", &keepalives(1024), 1);
        assert_eq!(status, 200);
        assert_eq!(comparable(&first[0])["result"]["TTL"], "60", "{first:?}");
        assert_eq!(post_stream(to, "/v3/lease/keepalive", &keepalives(1025), 1), refused);
        // A body of the largest size holds about a million: refused as soon
        // as the count is passed, nothing handled.
        let tiny = "{}".repeat(1_000_000);
        let started = std::time::Instant::now();
        assert_eq!(post_stream(to, "/v3/watch", &tiny, 1), refused);
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }
    let (status, _) = post(Transport::Http1(ringkv.addr), "/v3/kv/range", r#"{"key":"Zm9v"}"#);
    assert_eq!(status, 200, "the member serves on");
}

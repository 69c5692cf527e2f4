//! etcd's JSON gateway side by side with etcd 3.4: the same POSTs (curl's
//! shape: HTTP/1.1, a JSON body of known length) to both, the answers
//! compared as JSON with the header's cluster id, member id and raft term
//! left out (the two clusters differ there, and only there).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::support::{Etcd, Ringkv};

/// A POST of `body` to `path`: the status and the whole body (the server
/// closes after it).
fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let (status, lines) = post_stream(addr, path, body, usize::MAX);
    (status, lines.concat())
}

/// A POST, answered whole or with a stream: the status and the body's first
/// `lines` lines (a chunked body is read chunk by chunk, up to its end).
fn post_stream(addr: SocketAddr, path: &str, body: &str, lines: usize) -> (u16, Vec<String>) {
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

#[test]
fn unary_calls_answer_as_etcds_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(&dir.path().join("ringkv"), &[]);
    let etcd = Etcd::start();
    // (path, body): the same history on both, each answer compared.
    let calls = [
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
    for (path, body) in calls {
        let (ringkv_status, ringkv_body) = post(ringkv.addr, path, body);
        let (etcd_status, etcd_body) = post(etcd.addr, path, body);
        assert_eq!(
            ringkv_status, etcd_status,
            "{path} {body}: {ringkv_body} vs {etcd_body}"
        );
        assert_eq!(comparable(&ringkv_body), comparable(&etcd_body), "{path} {body}");
    }
    // What both answer the same way, though not byte for byte: a body that is
    // no JSON (the parser's message differs), the member list (the members differ).
    let (ringkv_status, ringkv_body) = post(ringkv.addr, "/v3/kv/range", "{bad");
    let (etcd_status, etcd_body) = post(etcd.addr, "/v3/kv/range", "{bad");
    assert_eq!((ringkv_status, etcd_status), (400, 400));
    assert_eq!(comparable(&ringkv_body)["code"], comparable(&etcd_body)["code"]);
    let members = comparable(&post(ringkv.addr, "/v3/cluster/member/list", "{}").1);
    assert_eq!(members["members"].as_array().map(Vec::len), Some(1), "{members}");
    // Go's net/http and grpc-gateway's own answers.
    for (method, path) in [
        ("GET", "/v3/kv/range"),
        ("POST", "/v3/kv/nothing"),
        ("POST", "/v3alpha/kv/range"),
    ] {
        let answer = |addr: SocketAddr| {
            let mut stream = TcpStream::connect(addr).expect("connect");
            write!(
                stream,
                "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            let status = response[9..12].to_string();
            let body = response
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.to_string())
                .unwrap_or_default();
            (status, body)
        };
        assert_eq!(answer(ringkv.addr), answer(etcd.addr), "{method} {path}");
    }
}

#[test]
fn watch_and_keep_alive_stream_as_etcds_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(&dir.path().join("ringkv"), &[]);
    let etcd = Etcd::start();
    for addr in [ringkv.addr, etcd.addr] {
        post(addr, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#);
        post(addr, "/v3/lease/grant", r#"{"ID":"7","TTL":"60"}"#);
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
    ];
    for (path, body, lines) in streams {
        let (ringkv_status, ringkv_lines) = post_stream(ringkv.addr, path, body, lines);
        let (etcd_status, etcd_lines) = post_stream(etcd.addr, path, body, lines);
        assert_eq!(ringkv_status, etcd_status, "{path} {body}");
        let sorted = |lines: Vec<String>| {
            let mut lines: Vec<String> = lines.iter().map(|line| comparable(line).to_string()).collect();
            lines.sort();
            lines
        };
        assert_eq!(sorted(ringkv_lines), sorted(etcd_lines), "{path} {body}");
    }
}

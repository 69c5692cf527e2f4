//! The client port: too many streams, requests that claim more than they
//! send, responses too large to send, and reads too large to serve in one go.

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use ringkv_proto::etcdserverpb as pb;
use tokio::net::TcpStream;

use crate::support::cluster::Cluster;
use crate::support::{get, kv_client, put_request, Etcd, Ringkv};

/// A raw HTTP/2 connection to `addr`, driven in the background.
async fn h2_connect(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.expect("connects");
    let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send.ready().await.expect("the connection takes streams")
}

/// The headers of a unary KV.Range call.
fn range_call(addr: std::net::SocketAddr) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/etcdserverpb.KV/Range"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// How a call opened by `open_streams` stood at the end of its wait.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Still waiting for its request.
    Waiting,
    /// Answered with this grpc-status (and grpc-message).
    Answered(String, String),
    Reset(h2::Reason),
}

/// Calls opened by `open_streams`, kept open: dropping them resets their
/// streams (and h2 answers a flood of resets by closing the connection).
type Held = Vec<(h2::client::ResponseFuture, h2::SendStream<Bytes>)>;

/// Opens `streams` calls on one connection, each sending `first` and then
/// nothing more, and returns how each stood within `wait`.
async fn open_streams(
    addr: std::net::SocketAddr,
    streams: usize,
    first: Bytes,
    wait: Duration,
) -> (h2::client::SendRequest<Bytes>, Vec<Outcome>, Held) {
    let mut send = h2_connect(addr).await;
    let mut held = Vec::new();
    for _ in 0..streams {
        send = send.ready().await.expect("the connection takes streams");
        let (response, mut body) = send.send_request(range_call(addr), false).expect("a stream opens");
        if !first.is_empty() {
            body.send_data(first.clone(), false).expect("data goes out");
        }
        held.push((response, body));
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut outcomes = Vec::new();
    for (response, _) in &mut held {
        let outcome = match tokio::time::timeout_at(deadline, response).await {
            Err(_) => Outcome::Waiting,
            Ok(Ok(response)) => {
                let header = |name: &str| {
                    let value = response.headers().get(name).map(|value| value.to_str().unwrap());
                    value.unwrap_or_default().to_string()
                };
                Outcome::Answered(header("grpc-status"), header("grpc-message"))
            }
            Ok(Err(error)) => Outcome::Reset(error.reason().expect("a stream error has a reason")),
        };
        outcomes.push(outcome);
    }
    (send, outcomes, held)
}

/// HTTP/2 by hand, for what the h2 client will not do: open more streams
/// than the server allows. Frame layout: RFC 9113 section 4.1.
mod raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const DATA: u8 = 0x0;
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const ACK: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// HPACK literal header fields without indexing, no Huffman coding.
    fn header_block(authority: &str) -> Vec<u8> {
        let fields = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/etcdserverpb.KV/Range"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ];
        let mut block = Vec::new();
        for (name, value) in fields {
            block.push(0);
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        block
    }

    async fn read_frame(tcp: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
        let mut head = [0u8; 9];
        tcp.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        tcp.read_exact(&mut payload).await.ok()?;
        Some((head[3], head[4], stream, payload))
    }

    /// Opens `streams` calls (headers only, no body) once the server's
    /// settings are acknowledged, and returns the streams it reset within
    /// `wait`, with their error codes.
    pub async fn reset_streams(addr: std::net::SocketAddr, streams: u32, wait: std::time::Duration) -> Vec<(u32, u32)> {
        let mut tcp = TcpStream::connect(addr).await.expect("connects");
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        // The server's limit applies once its settings are acknowledged.
        loop {
            let (kind, flags, _, _) = read_frame(&mut tcp).await.expect("the server's settings");
            if kind == SETTINGS && flags & ACK == 0 {
                break;
            }
        }
        tcp.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
        let block = header_block(&addr.to_string());
        for index in 0..streams {
            tcp.write_all(&frame(HEADERS, END_HEADERS, 2 * index + 1, &block))
                .await
                .unwrap();
        }
        let _ = DATA;
        let mut resets = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some((kind, _, stream, payload))) = tokio::time::timeout_at(deadline, read_frame(&mut tcp)).await {
            if kind == RST_STREAM {
                let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
                resets.push((stream, code));
            }
        }
        resets
    }
}

/// Sends a whole (empty) Range request on `send` and waits for its answer.
async fn answered_range(
    send: h2::client::SendRequest<Bytes>,
    addr: std::net::SocketAddr,
) -> h2::client::SendRequest<Bytes> {
    let mut send = send.ready().await.expect("the connection takes streams");
    let (response, mut body) = send.send_request(range_call(addr), false).expect("a stream opens");
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("data goes out");
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("answered in time")
        .expect("answered");
    assert_eq!(response.status(), 200);
    send
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_max_concurrent_streams_are_refused_as_etcd_refuses_them() {
    const STREAMS_MAX: u32 = 4;
    /// HTTP/2's REFUSED_STREAM error code.
    const REFUSED_STREAM: u32 = 0x7;
    let dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(dir.path(), &["--max-concurrent-streams", &STREAMS_MAX.to_string()]);
    let etcd = Etcd::start_with(&["--max-concurrent-streams", &STREAMS_MAX.to_string()]);
    for addr in [ringkv.addr, etcd.addr] {
        let resets = raw::reset_streams(addr, 3 * STREAMS_MAX, Duration::from_secs(2)).await;
        // The first STREAMS_MAX wait for their requests; every later one is refused.
        let expected: Vec<(u32, u32)> = (STREAMS_MAX..3 * STREAMS_MAX)
            .map(|index| (2 * index + 1, REFUSED_STREAM))
            .collect();
        assert_eq!(resets, expected, "{addr}");
    }
    super::assert_serves(&ringkv.endpoint()).await;
}

/// Resident and virtual memory of process `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process runs");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmSize:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_claiming_2_mib_on_many_streams_reserve_nothing() {
    const STREAMS: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(dir.path(), &[]);
    let before = memory_kib(ringkv.pid());
    // The largest message the member accepts (--max-request-bytes + 512 KiB),
    // claimed and never sent: 4 GiB over all the streams if reserved.
    let claim = Bytes::from_static(&[0, 0, 0x20, 0, 0]);
    let (connection, outcomes, held) = open_streams(ringkv.addr, STREAMS, claim, Duration::from_millis(1)).await;
    assert!(
        outcomes.iter().all(|outcome| *outcome == Outcome::Waiting),
        "every call waits for its message"
    );
    // A call after them on the same connection: once it is answered, the
    // member has taken in every frame before it.
    let connection = answered_range(connection, ringkv.addr).await;
    let after = memory_kib(ringkv.pid());
    let grown_mib = |(rss, size): (u64, u64)| {
        (
            (rss.saturating_sub(before.0)) / 1024,
            (size.saturating_sub(before.1)) / 1024,
        )
    };
    let (rss_mib, size_mib) = grown_mib(after);
    assert!(after.0 > 0);
    assert!(
        rss_mib < 64 && size_mib < 1024,
        "grew by {rss_mib} MiB resident, {size_mib} MiB virtual"
    );
    super::assert_serves(&ringkv.endpoint()).await;
    drop((connection, held));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partly_sent_requests_past_the_connection_budget_fail_alone() {
    // 40 calls each sending 2 MiB - 1 of a 2 MiB message: 80 MiB held for one
    // connection, past its 64 MiB.
    const STREAMS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(dir.path(), &[]);
    let claimed = 2 * 1024 * 1024;
    let mut partial = vec![0u8, 0, 0x20, 0, 0];
    partial.resize(5 + claimed - 1, b'x');
    let (rss_before, _) = memory_kib(ringkv.pid());
    let (connection, outcomes, held) =
        open_streams(ringkv.addr, STREAMS, Bytes::from(partial), Duration::from_secs(20)).await;
    // The calls that fit wait for the rest of their message; those past the
    // budget are answered at once, and none is reset.
    let refused = Outcome::Answered(
        "8".to_string(),
        "ringkv: the calls of this connection would hold more than 67108864 bytes".to_string(),
    );
    let waiting = outcomes.iter().filter(|outcome| **outcome == Outcome::Waiting).count();
    let answered = outcomes.iter().filter(|outcome| **outcome == refused).count();
    assert_eq!(waiting + answered, STREAMS, "{outcomes:?}");
    // At most 31 whole messages (2 MiB + 5 bytes each, plus each call's own
    // count) fit; streams interleave, so more may be refused part way.
    assert!((16..=31).contains(&waiting), "{waiting} calls fit 64 MiB: {outcomes:?}");
    let (rss_after, _) = memory_kib(ringkv.pid());
    let grown_mib = rss_after.saturating_sub(rss_before) / 1024;
    // The budget plus h2's 16 MiB window, and what the allocator keeps of
    // buffers that grew (doubling) or were given back.
    assert!(grown_mib < 256, "grew by {grown_mib} MiB resident");
    super::assert_serves(&ringkv.endpoint()).await;
    drop((connection, held));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_the_limit_is_grpc_gos_resource_exhausted_and_the_member_keeps_serving() {
    const LIMIT: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(dir.path(), &["--test-response-bytes-max", &LIMIT.to_string()]);
    let endpoint = ringkv.endpoint();
    let mut kv = kv_client(&endpoint).await;
    let value = "v".repeat(10_000);
    for key in 0..20 {
        kv.put(put_request(&format!("big/{key:02}"), &value)).await.unwrap();
    }
    let all = pb::RangeRequest {
        key: b"big/".to_vec(),
        range_end: b"big0".to_vec(),
        ..Default::default()
    };
    // What the member would send: the key-values read one page at a time,
    // under the header of the answer (the same revision and term).
    let mut kvs = Vec::new();
    let mut header = None;
    for key in 0..20 {
        let page = kv
            .range(pb::RangeRequest {
                key: format!("big/{key:02}").into_bytes(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        header = page.header;
        kvs.extend(page.kvs);
    }
    let whole = pb::RangeResponse {
        header,
        kvs,
        more: false,
        count: 20,
    };
    let expected = format!(
        "grpc: trying to send message larger than max ({} vs. {LIMIT})",
        whole.encoded_len()
    );
    let status = kv.range(all.clone()).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::ResourceExhausted, &expected[..])
    );
    // A read-only txn holding it is refused the same way.
    let txn = pb::TxnRequest {
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(all.clone())),
        }],
        ..Default::default()
    };
    let status = kv.txn(txn).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status
        .message()
        .starts_with("grpc: trying to send message larger than max ("));
    // Under the limit it is answered, and nothing acknowledged was lost.
    let page = kv
        .range(pb::RangeRequest { limit: 5, ..all })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((page.kvs.len(), page.count, page.more), (5, 20, true));
    super::assert_serves(&endpoint).await;
}

/// Loads `keys` keys of a few bytes into the cluster in transactions of
/// `per_txn` puts, from `loaders` clients at once. A transaction refused for
/// want of a leader (an election under load) is sent again, a bounded number
/// of times.
async fn load(endpoint: &str, keys: usize, per_txn: usize, loaders: usize) {
    let mut tasks = Vec::new();
    for loader in 0..loaders {
        let endpoint = endpoint.to_string();
        tasks.push(tokio::spawn(async move {
            let mut kv = kv_client(&endpoint).await;
            for first in (loader * per_txn..keys).step_by(loaders * per_txn) {
                let success: Vec<pb::RequestOp> = (first..(first + per_txn).min(keys))
                    .map(|key| pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestPut(put_request(
                            &format!("k{key:07}"),
                            "v",
                        ))),
                    })
                    .collect();
                let txn = pb::TxnRequest {
                    success,
                    ..Default::default()
                };
                let mut tries = 0;
                while let Err(status) = kv.txn(txn.clone()).await {
                    tries += 1;
                    assert!(
                        status.code() == tonic::Code::Unavailable && tries < 20,
                        "a load txn is refused: {status:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("a loader finishes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_range_over_many_keys_keeps_the_leader_and_lets_puts_through() {
    // Served in one go, this Range (every key read and decoded to find the
    // last) holds the store core for about a second on this machine: over
    // twice the longest election timeout.
    const KEYS: usize = 1_000_000;
    let cluster = Cluster::start(
        3,
        &[
            "--heartbeat-interval",
            "25",
            "--election-timeout",
            "250",
            "--max-txn-ops",
            "2000",
        ],
    );
    let endpoint = cluster.endpoint(cluster.wait_for_leader().await);
    load(&endpoint, KEYS, 2_000, 4).await;
    // Followers apply the load after acknowledging it; while they do, they
    // are slow to acknowledge anything else.
    wait_applied(&cluster).await;
    let leader = cluster.wait_for_leader().await;
    let endpoint = cluster.endpoint(leader);
    // And they write the loaded pages out: puts are slow until that is done.
    wait_for_quick_puts(&endpoint).await;
    let terms_before = terms(&cluster).await;
    let changes_before = leader_changes(&cluster);

    let range_endpoint = endpoint.clone();
    let range = tokio::spawn(async move {
        let mut kv = kv_client(&range_endpoint).await;
        let started = Instant::now();
        // A small answer, so that it arrives as soon as the member is done.
        let response = kv
            .range(pb::RangeRequest {
                key: b"k".to_vec(),
                range_end: b"l".to_vec(),
                limit: 1,
                sort_order: pb::range_request::SortOrder::Descend as i32,
                serializable: true,
                ..Default::default()
            })
            .await
            .expect("the range is answered")
            .into_inner();
        (started, Instant::now(), response)
    });
    // Puts on another connection meanwhile.
    let mut kv = kv_client(&endpoint).await;
    let mut puts = Vec::new();
    while !range.is_finished() {
        let sent = Instant::now();
        kv.put(put_request("during", &format!("{}", puts.len())))
            .await
            .expect("a put during the range is answered");
        puts.push((sent, Instant::now()));
    }
    let (started, answered, response) = range.await.unwrap();
    let last = format!("k{:07}", KEYS - 1).into_bytes();
    assert_eq!(response.count, KEYS as i64);
    assert_eq!(response.kvs.iter().map(|kv| &kv.key).collect::<Vec<_>>(), [&last]);
    let inside = puts
        .iter()
        .filter(|(sent, acked)| *sent > started && *acked < answered)
        .count();
    assert!(
        inside >= 3,
        "{inside} puts were sent and answered while the range ran for {:?}: {:?}",
        answered - started,
        puts.iter()
            .map(|(sent, acked)| (sent.saturating_duration_since(started), *acked - *sent))
            .collect::<Vec<_>>()
    );
    eprintln!(
        "{inside} puts answered during the range ({:?}); slowest {:?}",
        answered - started,
        puts.iter().map(|(sent, acked)| *acked - *sent).max()
    );
    assert_eq!(terms(&cluster).await, terms_before, "no election");
    assert_eq!(leader_changes(&cluster), changes_before, "leader changes seen");
    assert_eq!(cluster.wait_for_leader().await, leader);
    assert_eq!(
        get(&endpoint, "during").await,
        Some(format!("{}", puts.len() - 1).into_bytes()),
        "the last acknowledged put"
    );
    super::assert_serves(&endpoint).await;
}

/// Waits (bounded) until every member has applied everything in its log.
async fn wait_applied(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut behind = Vec::new();
        for index in 0..cluster.members.len() {
            let status = cluster.status(index).await;
            if status
                .as_ref()
                .is_none_or(|status| status.raft_applied_index < status.raft_index)
            {
                behind.push((
                    index,
                    status.map(|status| (status.raft_applied_index, status.raft_index)),
                ));
            }
        }
        if behind.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "members still applying: {behind:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) until ten puts in a row are each answered within 50 ms.
async fn wait_for_quick_puts(endpoint: &str) {
    let mut kv = kv_client(endpoint).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quick = 0;
    while quick < 10 {
        assert!(Instant::now() < deadline, "puts stay slow");
        let sent = Instant::now();
        kv.put(put_request("warm-up", "v")).await.expect("a put is answered");
        quick = if sent.elapsed() < Duration::from_millis(50) {
            quick + 1
        } else {
            0
        };
    }
}

/// Every member's count of leader changes it saw.
fn leader_changes(cluster: &Cluster) -> Vec<u64> {
    (0..cluster.members.len())
        .map(|index| cluster.metric(index, "etcd_server_leader_changes_seen_total"))
        .collect()
}

/// Every member's raft term, from Status.
async fn terms(cluster: &Cluster) -> Vec<u64> {
    let mut terms = Vec::new();
    for index in 0..cluster.members.len() {
        let status = cluster.status(index).await.expect("the member answers Status");
        terms.push(status.raft_term);
    }
    terms
}

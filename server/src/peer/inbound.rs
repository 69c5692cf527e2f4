//! The peer port's inbound side: accepting connections, admitting them
//! (`admission`), reading each one's frames within their limits and timeouts,
//! and handing what they carry to the store core; membership queries are
//! answered here, HashKV queries with the store core's answer (`hash_kv`),
//! snapshot streams received (`snapshot`).

use std::cell::{Cell, RefCell};
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;
use futures_lite::io::BufReader;
use glommio::net::TcpStream;
use raft::eraftpb::MessageType;
use ringkv_proto::ringkvpb::{HashKvQuery, Membership, SnapshotChunk, SnapshotEnd};

use super::admission::{self, Admission, Refusal};
use super::frame::{self, FrameError, Hello, PeerMessage, FRAME_PAYLOAD_MAX};
use super::traffic::Traffic;
use super::{hash_kv, query, snapshot, within, PeerDrops, PeerEvent, PeerStream, PeerTls, Report};
use crate::config::Listen;
use crate::listener::{self, BindError};
use crate::log_limit::LogLimit;
use crate::tls::{self, MaybeTls};

/// A connection that has not introduced itself by then is closed (on an
/// https port, its TLS handshake included).
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// An introduced connection that sends nothing for this long is closed: its
/// peer is gone (etcd's `ConnReadTimeout`). Leaders send heartbeats every
/// `--heartbeat-interval` (100 ms by default) and every sender sends a
/// keepalive after KEEPALIVE_INTERVAL of quiet, so a live link is never quiet
/// for more than about a second.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Once its header is read, a frame's payload must arrive within this long
/// plus its length at FRAME_BYTES_PER_SECOND_MIN: a peer dribbling bytes
/// cannot hold a connection and its buffer for ever. A full 64 MiB frame gets
/// 69 s; a 1 MiB append or snapshot chunk, 6 s.
const FRAME_TIMEOUT_MIN: Duration = Duration::from_secs(5);
const FRAME_BYTES_PER_SECOND_MIN: u64 = 1024 * 1024;
/// What one read from a peer's connection may take in: a leader's appends
/// come as many small frames, and read unbuffered each cost two syscalls
/// (header, payload) on the store core.
const RECEIVE_BUFFER_BYTES: usize = 64 * 1024;
/// A payload buffer grown past this by one large frame is given back after it.
const PAYLOAD_KEPT_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How long writing a membership query's answer may take.
const QUERY_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a frame of `length` bytes may take to arrive once its header has.
fn frame_timeout(length: usize) -> Duration {
    FRAME_TIMEOUT_MIN + Duration::from_secs(length as u64 / FRAME_BYTES_PER_SECOND_MIN)
}

/// Who this member is to its peers and what every accepted connection's task
/// shares: where received snapshots go, what membership queries are answered
/// with, the HashKV queries waiting for the store core, who may connect, and
/// what was dropped.
pub(super) struct Local {
    member_id: u64,
    cluster_id: u64,
    snap_dir: PathBuf,
    pub(super) membership: RefCell<Membership>,
    pub(super) admission: Rc<Admission>,
    snapshots: Rc<snapshot::Receives>,
    pub(super) hash_kv: hash_kv::Waiting,
    pub(super) drops: Cell<PeerDrops>,
    /// Bytes sent and received, and failed sends, by peer.
    pub(super) traffic: Rc<Traffic>,
    /// Warnings about closed connections, at a bounded rate.
    rejected_warnings: LogLimit,
    pub(super) tls: PeerTls,
}

impl Local {
    pub(super) fn new(member_id: u64, cluster_id: u64, snap_dir: PathBuf, tls: PeerTls) -> Local {
        Local {
            tls,
            member_id,
            cluster_id,
            snap_dir,
            membership: RefCell::default(),
            admission: Rc::new(Admission::new(member_id)),
            snapshots: Rc::default(),
            hash_kv: hash_kv::Waiting::default(),
            drops: Cell::default(),
            traffic: Rc::default(),
            rejected_warnings: LogLimit::default(),
        }
    }

    pub(super) fn count(&self, change: impl FnOnce(&mut PeerDrops)) {
        let mut drops = self.drops.get();
        change(&mut drops);
        self.drops.set(drops);
    }

    /// Counts a connection closed by this member, and warns about it.
    fn reject(&self, peer: impl Display, why: impl Display) {
        self.count(|drops| drops.connections_rejected += 1);
        if let Some(held_back) = self.rejected_warnings.allow() {
            tracing::warn!(%peer, held_back, "peer connection closed: {why}");
        }
    }
}

/// Accepts peer connections on `listen` until the process ends.
pub(super) fn listen(listen: Listen, local: Rc<Local>, report: Report) -> Result<SocketAddr, BindError> {
    let addr = listen.addr;
    let acceptor = match (listen.tls, &local.tls.accept) {
        (false, _) => None,
        (true, Some(config)) => Some(Rc::new(futures_rustls::TlsAcceptor::from(Arc::clone(config)))),
        (true, None) => unreachable!("config refuses an https peer URL without a certificate"),
    };
    let socket = listener::listen(addr)?;
    let bound = socket.local_addr().map_err(|source| BindError {
        addr,
        source: source.into(),
    })?;
    glommio::spawn_local(async move {
        loop {
            let stream = listener::accept(&socket).await;
            let Some(connection) = local.admission.open() else {
                let peer = remote(&stream);
                local.reject(
                    peer,
                    format_args!("over {} connections", admission::PEER_CONNECTIONS_MAX),
                );
                continue;
            };
            let served = serve_peer(stream, acceptor.clone(), Rc::clone(&local), Rc::clone(&report));
            glommio::spawn_local(async move {
                served.await;
                drop(connection);
            })
            .detach();
        }
    })
    .detach();
    Ok(bound)
}

/// The address a connection comes from, for warnings.
fn remote(stream: &TcpStream) -> String {
    stream
        .peer_addr()
        .map_or_else(|_| "unknown".to_string(), |addr| addr.to_string())
}

/// Reads one peer's messages until the connection ends, or answers a
/// membership query.
async fn serve_peer(
    stream: TcpStream,
    acceptor: Option<Rc<futures_rustls::TlsAcceptor>>,
    local: Rc<Local>,
    report: Report,
) {
    let Some((mut stream, hello)) = introduction(stream, acceptor.as_deref(), &local).await else {
        return;
    };
    if hello == Hello::QUERY {
        let answer = PeerMessage::Membership(local.membership.borrow().clone());
        if within(QUERY_ANSWER_TIMEOUT, query::answer(&mut stream, &answer))
            .await
            .is_none()
        {
            local.reject(
                remote(stream.get_ref()),
                "a membership query's answer was not read in time",
            );
        }
        return;
    }
    if hello.cluster_id != local.cluster_id || hello.to != local.member_id {
        let why = format_args!(
            "a hello from {:x} to {:x} in cluster {:x}, meant for another cluster or member",
            hello.from, hello.to, hello.cluster_id
        );
        local.reject(remote(stream.get_ref()), why);
        return;
    }
    let admitted = local.admission.admit(hello.from);
    let _counted = match admitted {
        Ok(counted) => counted,
        Err(refusal) => {
            if matches!(refusal, Refusal::Unknown(_)) {
                vouch(&local);
            }
            local.reject(
                remote(stream.get_ref()),
                format_args!("a hello from {:x}: {refusal}", hello.from),
            );
            return;
        }
    };
    let receiver = Receiver {
        hello,
        local,
        report,
        payload: Vec::new(),
        receiving: None,
    };
    receiver.run(stream).await;
}

/// The connection's TLS handshake if its port is https (the peer CA's
/// certificate required under `--peer-client-cert-auth`: a connection without
/// one ends here, before any frame is read), then its hello; both within
/// HELLO_TIMEOUT (or until a newer connection takes its place, see
/// `admission`). None if the connection is closed.
async fn introduction(
    stream: TcpStream,
    acceptor: Option<&futures_rustls::TlsAcceptor>,
    local: &Local,
) -> Option<(PeerStream, Hello)> {
    let peer = remote(&stream);
    let handshake = local.admission.handshake();
    let closed = async {
        let _ = handshake.closed.recv().await;
        Some(Err(format!(
            "no hello before {} newer connections",
            admission::HANDSHAKES_MAX
        )))
    };
    let read = async {
        let introduced = async {
            let mut stream = match acceptor {
                None => MaybeTls::Plain(stream),
                Some(acceptor) => {
                    let accepted = tls::accept(acceptor, stream)
                        .await
                        .map_err(|error| format!("TLS handshake: {error}"))?;
                    MaybeTls::Tls(Box::new(accepted.stream.into()))
                }
            };
            let hello = frame::read_hello(&mut stream)
                .await
                .map_err(|error| error.to_string())?;
            Ok((stream, hello))
        };
        within(HELLO_TIMEOUT, introduced).await
    };
    let introduced = future::or(read, closed).await;
    drop(handshake);
    match introduced {
        Some(Ok(introduced)) => Some(introduced),
        Some(Err(why)) => {
            local.reject(peer, format_args!("before its hello: {why}"));
            None
        }
        None => {
            local.reject(peer, format_args!("no hello within {HELLO_TIMEOUT:?}"));
            None
        }
    }
}

/// A hello from a member id this member does not know: it may be a member
/// added since this member's applied index (this member fell behind, and the
/// new member may lead now). Asks the members it knows, at most once per
/// `admission::VOUCH_INTERVAL`, which ids are members; the unknown one is let
/// in when it connects again, if one of them lists it, and answered (see
/// `PeerTransport::send_to`).
fn vouch(local: &Rc<Local>) {
    let Some(urls) = local.admission.vouch_due() else {
        return;
    };
    let admission = Rc::clone(&local.admission);
    let dial = local.tls.dial.clone();
    glommio::spawn_local(async move {
        for url in urls {
            match query::ask_async(&url, dial.as_ref()).await {
                Ok(membership) => {
                    let members = membership
                        .members
                        .into_iter()
                        .map(|member| (member.id, member.peer_urls));
                    admission.set_vouched(members, &membership.removed_ids);
                    return;
                }
                Err(error) => tracing::debug!(%url, %error, "membership query failed"),
            }
        }
    })
    .detach();
}

/// One introduced peer connection: reads its frames and hands them on.
struct Receiver {
    hello: Hello,
    local: Rc<Local>,
    report: Report,
    payload: Vec<u8>,
    receiving: Option<snapshot::Receiving>,
}

/// Why a connection's frames stop.
enum Stop {
    /// The peer closed it, the store core is gone, or the exchange is over.
    Done,
    /// This member closes it.
    Reject(String),
}

impl From<FrameError> for Stop {
    fn from(error: FrameError) -> Stop {
        Stop::Reject(error.to_string())
    }
}

impl From<snapshot::ReceiveError> for Stop {
    fn from(error: snapshot::ReceiveError) -> Stop {
        Stop::Reject(format!("receiving a snapshot: {error}"))
    }
}

impl Receiver {
    async fn run(mut self, stream: PeerStream) {
        let mut stream = BufReader::with_capacity(RECEIVE_BUFFER_BYTES, stream);
        let stop = loop {
            let next = match self.next(&mut stream).await {
                Ok(message) => message,
                Err(stop) => break stop,
            };
            // Removed since its hello: it may no longer speak.
            if let Err(refusal) = self.local.admission.may_speak(self.hello.from) {
                break Stop::Reject(refusal.to_string());
            }
            if let Err(stop) = self.handle(next, &mut stream).await {
                break stop;
            }
        };
        if let Stop::Reject(why) = stop {
            let from = format_args!("from {:x}: {why}", self.hello.from);
            self.local.reject(remote(stream.get_ref().get_ref()), from);
        }
    }

    /// The next frame: its header within IDLE_TIMEOUT, its payload within
    /// `frame_timeout` of its length.
    async fn next(&mut self, stream: &mut BufReader<PeerStream>) -> Result<PeerMessage, Stop> {
        let header = match within(IDLE_TIMEOUT, frame::read_header(stream, FRAME_PAYLOAD_MAX)).await {
            None => return Err(Stop::Reject(format!("silent for {IDLE_TIMEOUT:?}"))),
            Some(Err(FrameError::Closed)) => return Err(Stop::Done),
            Some(header) => header?,
        };
        let limit = frame_timeout(header.length);
        match within(limit, frame::read_payload(stream, header, &mut self.payload)).await {
            None => {
                let why = format!("a frame of {} bytes took over {limit:?}", header.length);
                return Err(Stop::Reject(why));
            }
            Some(read) => read?,
        }
        self.local
            .traffic
            .received(self.hello.from, frame::HEADER_BYTES + header.length);
        let message = frame::decode_message(&self.payload);
        if self.payload.capacity() > PAYLOAD_KEPT_BYTES_MAX {
            self.payload = Vec::new();
        }
        Ok(message?)
    }

    /// Answers (a HashKV, a snapshot's acknowledgement) are written to the
    /// connection itself, past the buffer that only reads.
    async fn handle(&mut self, message: PeerMessage, stream: &mut BufReader<PeerStream>) -> Result<(), Stop> {
        let from = self.hello.from;
        let event = match message {
            PeerMessage::Raft(message) if message.msg_type == MessageType::MsgSnapshot as i32 => {
                // A snapshot reaches raft only with its file, on a stream.
                return Err(Stop::Reject("a MsgSnapshot outside a snapshot stream".to_string()));
            }
            PeerMessage::Raft(message) if message.from == from && message.to == self.local.member_id => {
                PeerEvent::Received(Box::new(message))
            }
            PeerMessage::Raft(message) => {
                let why = format!("a message from {:x} to {:x}", message.from, message.to);
                return Err(Stop::Reject(why));
            }
            PeerMessage::LeaseForward(forward) => PeerEvent::LeaseForward { from, forward },
            PeerMessage::LeaseForwardReply(reply) => PeerEvent::LeaseForwardReply(reply),
            PeerMessage::PromoteCheck(check) => PeerEvent::PromoteCheck { from, check },
            PeerMessage::SnapshotChunk(chunk) => return self.receive_chunk(chunk).await,
            PeerMessage::SnapshotEnd(end) => return self.finish_snapshot(end, stream.get_mut()).await,
            PeerMessage::HashKvQuery(query) => return self.answer_hash_kv(query, stream.get_mut()).await,
            PeerMessage::Membership(_) => return Err(Stop::Reject("an unasked membership frame".to_string())),
            PeerMessage::HashKvAnswer(_) => return Err(Stop::Reject("an unasked HashKV answer".to_string())),
            PeerMessage::Keepalive => return Ok(()),
        };
        if (self.report)(event) {
            Ok(())
        } else {
            Err(Stop::Done)
        }
    }

    /// Hands a HashKV query to the store core and writes its answer; the
    /// connection ends either way.
    async fn answer_hash_kv(&mut self, query: HashKvQuery, stream: &mut PeerStream) -> Result<(), Stop> {
        let Some((number, answered)) = self.local.hash_kv.register() else {
            let why = format!("over {} HashKV queries at once", hash_kv::HASH_KV_QUERIES_MAX);
            return Err(Stop::Reject(why));
        };
        let asked = PeerEvent::HashKvAsked {
            query: number,
            from: self.hello.from,
            revision: query.revision,
        };
        if !(self.report)(asked) {
            self.local.hash_kv.forget(number);
            return Err(Stop::Done);
        }
        let answer = within(hash_kv::ANSWER_TIMEOUT, answered.recv()).await;
        self.local.hash_kv.forget(number);
        let Some(Some(answer)) = answer else {
            let why = format!("no HashKV from the store core within {:?}", hash_kv::ANSWER_TIMEOUT);
            return Err(Stop::Reject(why));
        };
        let mut out = Vec::new();
        frame::push_message(&mut out, &PeerMessage::HashKvAnswer(answer));
        match within(hash_kv::ANSWER_TIMEOUT, frame::write_all(stream, &out)).await {
            Some(Ok(())) => Err(Stop::Done),
            Some(Err(error)) => {
                tracing::debug!(%error, "HashKV query: the asker left before the answer");
                Err(Stop::Done)
            }
            None => Err(Stop::Reject("a HashKV answer was not read in time".to_string())),
        }
    }

    async fn receive_chunk(&mut self, chunk: SnapshotChunk) -> Result<(), Stop> {
        let receiving = match &mut self.receiving {
            Some(receiving) => receiving,
            None if chunk.offset == 0 => {
                let started = snapshot::Receiving::start(&self.local.snap_dir, self.hello.from, &self.local.snapshots);
                self.receiving.insert(started?)
            }
            None => return Err(Stop::Reject(format!("a snapshot starting at offset {}", chunk.offset))),
        };
        receiving.write(chunk).await?;
        Ok(())
    }

    /// Makes the snapshot durable, hands its message to raft and acknowledges
    /// it; the stream ends either way.
    async fn finish_snapshot(&mut self, end: SnapshotEnd, stream: &mut PeerStream) -> Result<(), Stop> {
        let Some(file) = self.receiving.take() else {
            return Err(Stop::Reject("a snapshot end without a snapshot".to_string()));
        };
        let (message, path) = file.finish(end, self.hello.from, self.local.member_id).await?;
        tracing::info!(
            from = format_args!("{:x}", self.hello.from),
            index = message.get_snapshot().get_metadata().index,
            "snapshot received"
        );
        let event = PeerEvent::SnapshotReceived {
            message: Box::new(message),
            path,
        };
        if !(self.report)(event) {
            return Err(Stop::Done);
        }
        // Raft has the message: the sender may report it delivered.
        if let Err(error) = snapshot::acknowledge(stream).await {
            tracing::info!(%error, "acknowledging a snapshot failed");
        }
        Err(Stop::Done)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream as StdTcpStream;
    use std::time::Instant;

    use super::super::KEEPALIVE_INTERVAL;
    use super::*;

    const ME: u64 = 1;
    const PEER: u64 = 2;
    const CLUSTER: u64 = 9;

    /// Serves a peer port on 127.0.0.1 for member ME, which knows `known`;
    /// runs `client` against it (blocking, off the executor) and returns what
    /// the member dropped meanwhile.
    fn serve(known: impl IntoIterator<Item = u64>, client: impl FnOnce(SocketAddr) + Send + 'static) -> PeerDrops {
        glommio::LocalExecutor::default().run(async move {
            let dir = tempfile::tempdir().unwrap();
            let local = Rc::new(Local::new(ME, CLUSTER, dir.path().to_path_buf(), PeerTls::default()));
            local
                .admission
                .set_known(known.into_iter().map(|id| (id, Vec::new())).collect());
            let report: Report = Rc::new(|_| true);
            let plain = Listen {
                addr: "127.0.0.1:0".parse().unwrap(),
                tls: false,
            };
            let addr = listen(plain, Rc::clone(&local), report).unwrap();
            // On a thread of its own, watched with a timer: an executor with
            // nothing else to wait for sleeps through a blocking task's end.
            let client = std::thread::spawn(move || client(addr));
            while !client.is_finished() {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            if let Err(panic) = client.join() {
                std::panic::resume_unwind(panic);
            }
            local.drops.get()
        })
    }

    fn connect(addr: SocketAddr, from: Option<u64>) -> StdTcpStream {
        let mut stream = StdTcpStream::connect(addr).unwrap();
        if let Some(from) = from {
            let mut hello = Vec::new();
            frame::push_hello(
                &mut hello,
                Hello {
                    cluster_id: CLUSTER,
                    from,
                    to: ME,
                },
            );
            stream.write_all(&hello).unwrap();
        }
        stream
    }

    /// How long until the member closes `stream` (it never writes to it), at
    /// most `limit`; None if it is still open then.
    fn closed_within(stream: &mut StdTcpStream, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        stream.set_read_timeout(Some(limit)).unwrap();
        match stream.read(&mut [0; 1]) {
            Ok(0) => Some(start.elapsed()),
            Ok(_) => panic!("the member wrote to a peer connection"),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => Some(start.elapsed()),
            Err(_) => None,
        }
    }

    #[test]
    fn a_sender_dribbling_a_frame_is_closed_when_the_frame_is_due() {
        let drops = serve([PEER], |addr| {
            let mut stream = connect(addr, Some(PEER));
            // A frame of 1,000 bytes, sent a byte every 200 ms.
            stream.write_all(&1000u32.to_be_bytes()).unwrap();
            stream.write_all(&[0; 4]).unwrap();
            let mut dribbling = stream.try_clone().unwrap();
            std::thread::spawn(move || {
                while dribbling.write_all(&[0]).is_ok() {
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
            let closed = closed_within(&mut stream, 3 * FRAME_TIMEOUT_MIN).expect("closed");
            assert!(closed >= FRAME_TIMEOUT_MIN - Duration::from_millis(500), "{closed:?}");
            assert!(closed < FRAME_TIMEOUT_MIN + Duration::from_secs(3), "{closed:?}");
        });
        assert_eq!(drops.connections_rejected, 1);
    }

    #[test]
    fn a_connection_kept_alive_stays_and_a_silent_one_is_closed() {
        let drops = serve([PEER], |addr| {
            let mut stream = connect(addr, Some(PEER));
            let mut keepalive = Vec::new();
            frame::push_message(&mut keepalive, &PeerMessage::Keepalive);
            for _ in 0..(IDLE_TIMEOUT + Duration::from_secs(2)).as_secs() {
                stream.write_all(&keepalive).unwrap();
                assert_eq!(closed_within(&mut stream, KEEPALIVE_INTERVAL), None);
            }
            // The last keepalive went out a KEEPALIVE_INTERVAL ago.
            let closed = closed_within(&mut stream, 3 * IDLE_TIMEOUT).expect("closed once silent");
            let silent_for = closed + KEEPALIVE_INTERVAL;
            assert!(
                silent_for >= IDLE_TIMEOUT - Duration::from_millis(500),
                "{silent_for:?}"
            );
            // Nor may one that never says hello stay.
            let mut silent = connect(addr, None);
            let closed = closed_within(&mut silent, 3 * HELLO_TIMEOUT).expect("closed without a hello");
            assert!(closed >= HELLO_TIMEOUT - Duration::from_millis(500), "{closed:?}");
        });
        assert_eq!(drops.connections_rejected, 2);
    }

    #[test]
    fn a_hello_from_a_non_member_is_refused_at_once() {
        let drops = serve([PEER], |addr| {
            let mut member = connect(addr, Some(PEER));
            let mut stranger = connect(addr, Some(3));
            let mut itself = connect(addr, Some(ME));
            assert!(closed_within(&mut stranger, Duration::from_secs(2)).is_some());
            assert!(closed_within(&mut itself, Duration::from_secs(2)).is_some());
            assert_eq!(closed_within(&mut member, Duration::from_millis(500)), None);
        });
        assert_eq!(drops.connections_rejected, 2);
    }

    #[test]
    fn over_the_connection_limit_a_new_connection_is_closed_at_once() {
        let members: Vec<u64> = (2..).take(admission::PEER_CONNECTIONS_MAX).collect();
        let drops = serve(members.clone(), move |addr| {
            // In bursts smaller than the handshakes that may wait at once.
            let mut open = Vec::new();
            for burst in members.chunks(admission::HANDSHAKES_MAX / 2) {
                open.extend(burst.iter().map(|id| connect(addr, Some(*id))));
                std::thread::sleep(Duration::from_millis(50));
            }
            for stream in open.iter_mut().step_by(16) {
                assert_eq!(closed_within(stream, Duration::from_millis(100)), None);
            }
            let mut over = connect(addr, Some(members[0]));
            assert!(closed_within(&mut over, Duration::from_secs(2)).is_some());
            drop(open.pop());
            std::thread::sleep(Duration::from_millis(200));
            let mut again = connect(addr, Some(members[0]));
            assert_eq!(closed_within(&mut again, Duration::from_millis(500)), None);
        });
        assert_eq!(drops.connections_rejected, 1);
    }

    #[test]
    fn silent_connections_cannot_keep_a_peer_out() {
        let drops = serve([PEER], |addr| {
            let mut silent: Vec<StdTcpStream> = (0..3 * admission::HANDSHAKES_MAX)
                .map(|_| connect(addr, None))
                .collect();
            std::thread::sleep(Duration::from_millis(200));
            let mut peer = connect(addr, Some(PEER));
            assert_eq!(closed_within(&mut peer, Duration::from_millis(500)), None);
            let oldest = &mut silent[0];
            assert!(closed_within(oldest, Duration::from_millis(500)).is_some());
        });
        assert!(drops.connections_rejected >= 2 * admission::HANDSHAKES_MAX as u64);
    }
}

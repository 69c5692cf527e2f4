//! The peer transport: raft messages between members, on the store core.
//!
//! Each member keeps one outgoing TCP connection per peer, owned by that peer's
//! sender task, and accepts the peers' connections on `--listen-peer-urls`.
//! Messages only flow one way on a connection, so a member's messages to a peer
//! are ordered, as raft-rs prefers (it tolerates loss and reordering, never
//! corruption: frames are checksummed, see [`frame`]).
//!
//! - **Batching**: a sender writes everything queued for its peer in one write.
//! - **Backpressure**: each peer's queue is bounded; a message that does not fit
//!   is dropped and raft is told the peer is unreachable, so it stops
//!   pipelining appends and probes instead (raft resends what was lost).
//! - **Reconnect**: a failed connect or write drops the queued messages, reports
//!   the peer unreachable and retries with exponential backoff.
//! - **Snapshots** go on a connection of their own, see [`snapshot`].
//! - **Membership queries**: the peer port also answers a connection that says
//!   the all-zero hello with the applied membership (see [`frame`] and
//!   [`query`]), which is how a joining member learns its id.
//! - **HashKV queries**: a member's connection whose one frame asks for the
//!   HashKV at a revision is answered with the store core's HashKV (etcd's
//!   corruption checks, see [`hash_kv`]).
//! - **TLS**: a listen URL that is `https` serves TLS, with the peer CA's
//!   client certificates required under `--peer-client-cert-auth` (checked in
//!   the handshake, before the hello); a peer URL that is `https` is dialed
//!   with TLS, presenting this member's peer certificate. Snapshot streams,
//!   membership and HashKV queries go the same way.
//! - **Keepalives**: a sender with nothing to send for [`KEEPALIVE_INTERVAL`]
//!   sends a keepalive frame, so a link that carries no raft traffic (one
//!   follower to another) stays open under the receiver's idle timeout.
//!
//! Whatever reaches the peer port, the member drops what it cannot use and goes
//! on serving everyone else ([`inbound`]): connections are limited in number,
//! in waiting time and per member ([`admission`]); frames are bounded in size
//! and in time; a raft message is screened before raft steps it ([`screen`]);
//! a snapshot stream is bounded by the disk and checked before raft sees it.
//! Everything dropped is counted for /metrics and warned about at a bounded
//! rate ([`crate::log_limit`]).

mod admission;
pub(crate) mod frame;
pub mod hash_kv;
mod inbound;
pub mod query;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod raft_fixture;
pub(crate) mod screen;
pub(crate) mod snapshot;
mod traffic;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use raft::eraftpb::Message;

pub use frame::{Hello, PeerMessage};
pub use hash_kv::{PeerHash, PeerHashKv};
use inbound::Local;
use ringkv_engine::mvcc::SnapshotSource;
use ringkv_proto::ringkvpb::{HashKvAnswer, LeaseForward, LeaseForwardReply, Membership, PromoteCheck};

use crate::config::Listen;
use crate::metrics::PeerTraffic;
use crate::tls::{self, MaybeTls};

/// A connection between members: TCP, under TLS when the URL is https.
pub(crate) type PeerStream = MaybeTls<TcpStream>;

/// Where the peer port listens and how peer connections are protected.
#[derive(Debug, Clone, Default)]
pub struct PeerNetwork {
    /// `--listen-peer-urls`.
    pub listen: Vec<Listen>,
    pub tls: PeerTls,
}

/// The peer side's TLS, built at start from `--peer-*` (`tls::Side`).
#[derive(Debug, Clone, Default)]
pub struct PeerTls {
    /// Serves the https listen URLs.
    pub accept: Option<Arc<rustls::ServerConfig>>,
    /// Dials the https peer URLs.
    pub dial: Option<Arc<rustls::ClientConfig>>,
}

/// Messages queued for one peer before more are dropped.
const PEER_QUEUE_MESSAGES: usize = 4096;
/// Bytes gathered into one write before it is sent.
const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A sender with nothing to send for this long sends a keepalive (etcd's
/// stream writer: every `ConnReadTimeout / 3`).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// What the transport tells the store core.
#[derive(Debug)]
pub enum PeerEvent {
    /// A message from a peer, addressed to this member.
    Received(Box<Message>),
    /// Messages to this peer were lost (raft's `report_unreachable`).
    Unreachable(u64),
    /// The connection to `peer` is up, since `at` (etcd's `ActiveSince`).
    /// `link` tells one sender task from the next, which replaces it when
    /// the peer's URLs change: only the same link's `Disconnected` undoes it.
    Connected { peer: u64, link: u64, at: Instant },
    /// The connection `link` to `peer` is down.
    Disconnected { peer: u64, link: u64 },
    /// A message for peer `to` that could not be queued: the peer is not
    /// known, or its queue is full.
    Undelivered { to: u64, message: PeerMessage },
    /// A follower forwards a lease call to this member as the leader.
    LeaseForward { from: u64, forward: LeaseForward },
    /// The leader's answer to a lease call this member forwarded.
    LeaseForwardReply(LeaseForwardReply),
    /// A snapshot stream to `to` ended; `delivered` once the peer holds the
    /// file. The commit `txid` it was read from may be unpinned.
    SnapshotSent { to: u64, txid: u64, delivered: bool },
    /// A snapshot from a peer is durable at `path`; `message` is its MsgSnapshot.
    SnapshotReceived { message: Box<Message>, path: PathBuf },
    /// A follower asks this member, as the leader, whether a learner may be
    /// promoted; or the leader's answer to this member's question.
    PromoteCheck { from: u64, check: PromoteCheck },
    /// Peer `from` asks for this member's HashKV at `revision` (a corruption
    /// check); the answer goes to [`PeerTransport::answer_hash_kv`] with `query`.
    HashKvAsked { query: u64, from: u64, revision: i64 },
    /// What the peers answered this member's corruption check `check`
    /// ([`PeerTransport::ask_hash_kvs`]), one answer per peer asked.
    HashKvAnswers { check: u64, answers: Vec<PeerHashKv> },
}

/// Where the transport reports; false once the store core is gone.
pub type Report = Rc<dyn Fn(PeerEvent) -> bool>;

/// One peer's sender task, as the transport holds it.
struct Peer {
    urls: Vec<String>,
    queue: LocalSender<PeerMessage>,
}

/// One member's peer side: a sender task per peer, and the listeners.
pub struct PeerTransport {
    member_id: u64,
    cluster_id: u64,
    report: Report,
    peers: HashMap<u64, Peer>,
    /// `--listen-peer-urls`; listened on once there is a peer (see `listen`).
    listen: Vec<Listen>,
    listening: bool,
    /// What every accepted connection's task shares.
    local: Rc<Local>,
    /// Sender tasks started so far: the next one's link number.
    links_started: u64,
}

/// What the peer side dropped, for /metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerDrops {
    /// Connections the peer port closed: over a limit, silent past a timeout,
    /// a bad frame, or a hello it refused.
    pub connections_rejected: u64,
}

impl PeerTransport {
    pub fn new(
        member_id: u64,
        cluster_id: u64,
        report: Report,
        network: PeerNetwork,
        snap_dir: PathBuf,
    ) -> PeerTransport {
        PeerTransport {
            member_id,
            cluster_id,
            report,
            peers: HashMap::new(),
            listen: network.listen,
            listening: false,
            local: Rc::new(Local::new(member_id, cluster_id, snap_dir, network.tls)),
            links_started: 0,
        }
    }

    /// Listens on `--listen-peer-urls` (once); returns the bound addresses.
    /// A member alone has no one to hear from, so the port stays free until it
    /// has a peer (many one-member servers share a machine in tests and
    /// benchmarks): `set_peers` calls this when the first peer comes.
    pub fn listen(&mut self) -> Result<Vec<SocketAddr>, String> {
        if self.listening {
            return Ok(Vec::new());
        }
        let mut bound = Vec::with_capacity(self.listen.len());
        for listen in &self.listen {
            let listening = inbound::listen(*listen, Rc::clone(&self.local), Rc::clone(&self.report))
                .map_err(|error| format!("cannot listen for peers: {error}"))?;
            let scheme = if listen.tls { "https" } else { "http" };
            tracing::info!("listening for peers on {scheme}://{listening}");
            bound.push(listening);
        }
        self.listening = true;
        Ok(bound)
    }

    /// The membership that membership queries are answered with from now on;
    /// its removed ids may no longer connect.
    pub fn set_membership(&mut self, membership: Membership) {
        self.local
            .admission
            .set_removed(membership.removed_ids.iter().copied().collect());
        *self.local.membership.borrow_mut() = membership;
    }

    /// What the peer side dropped so far.
    pub fn drops(&self) -> PeerDrops {
        self.local.drops.get()
    }

    /// Bytes and failed sends so far, by peer.
    pub fn traffic(&self) -> Vec<PeerTraffic> {
        self.local.traffic.snapshot()
    }

    /// Makes the senders match `peers` (id and peer URLs, this member excluded):
    /// new peers (or new URLs) get a sender task, removed ones lose theirs.
    pub fn set_peers(&mut self, peers: &[(u64, Vec<String>)]) {
        assert!(
            peers.iter().all(|(id, _)| *id != self.member_id),
            "no sender to oneself"
        );
        if !peers.is_empty() && !self.listening {
            if let Err(error) = self.listen() {
                tracing::error!(%error, "peers cannot reach this member");
            }
        }
        self.peers
            .retain(|id, peer| peers.iter().any(|(other, urls)| other == id && *urls == peer.urls));
        for (id, urls) in peers {
            if !self.peers.contains_key(id) {
                self.add_peer(*id, urls.clone());
            }
        }
        self.local.traffic.retain(|id| self.peers.contains_key(&id));
        let known = self.peers.iter().map(|(id, peer)| (*id, peer.urls.clone())).collect();
        self.local.admission.set_known(known);
    }

    /// Starts a sender task for peer `id` at `urls`.
    fn add_peer(&mut self, id: u64, urls: Vec<String>) {
        let (queue, receiver) = local_channel::new_bounded(PEER_QUEUE_MESSAGES);
        let hello = Hello {
            cluster_id: self.cluster_id,
            from: self.member_id,
            to: id,
        };
        let targets = urls.iter().filter_map(|url| Target::parse(url)).collect();
        let sender = Sender {
            hello,
            targets,
            dial: self.local.tls.dial.clone(),
            queue: receiver,
            report: Rc::clone(&self.report),
            traffic: Rc::clone(&self.local.traffic),
            link: self.links_started,
        };
        self.links_started += 1;
        glommio::spawn_local(sender.run()).detach();
        let peer = Peer { urls, queue };
        self.peers.insert(id, peer);
    }

    /// Queues each raft message for its peer; see the module doc for what is dropped.
    pub fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            let to = message.to;
            self.send_to(to, PeerMessage::Raft(message));
        }
    }

    /// Queues `message` for peer `to`; false if it was dropped.
    pub fn send_to(&mut self, to: u64, message: PeerMessage) -> bool {
        if !self.peers.contains_key(&to) {
            // A member this one does not know yet but its peers vouch for
            // (see `admission`): this member fell behind, and `to` may lead
            // now. It goes at the next `set_peers`, and comes back if needed.
            if let Some(urls) = self.local.admission.vouched_urls(to) {
                tracing::info!(
                    peer = format_args!("{to:x}"),
                    ?urls,
                    "answering a member vouched for by peers"
                );
                self.add_peer(to, urls);
            }
        }
        let Some(Peer { queue, .. }) = self.peers.get(&to) else {
            tracing::debug!(to = format_args!("{to:x}"), "message to an unknown peer dropped");
            return false;
        };
        if queue.try_send(message).is_err() {
            self.local.traffic.failed(to, 1);
            (self.report)(PeerEvent::Unreachable(to));
            return false;
        }
        true
    }
}

impl PeerTransport {
    /// Asks each of `peers` (id, peer URLs) for its HashKV at `revision`, each
    /// within `timeout`; the answers come back as `PeerEvent::HashKvAnswers`
    /// with `check`.
    pub fn ask_hash_kvs(&self, check: u64, revision: i64, peers: Vec<(u64, Vec<String>)>, timeout: Duration) {
        let (cluster_id, from) = (self.cluster_id, self.member_id);
        let dial = self.local.tls.dial.clone();
        let report = Rc::clone(&self.report);
        glommio::spawn_local(async move {
            let answers = hash_kv::ask_all(cluster_id, from, peers, dial, revision, timeout).await;
            report(PeerEvent::HashKvAnswers { check, answers });
        })
        .detach();
    }

    /// The store core's answer to the HashKV query `query` (see
    /// `PeerEvent::HashKvAsked`); dropped if the asker is gone.
    pub fn answer_hash_kv(&self, query: u64, answer: HashKvAnswer) {
        self.local.hash_kv.answer(query, answer);
    }

    /// Streams the commit `source` holds to peer `to` (see [`snapshot`]), with
    /// `message` (its MsgSnapshot) at the end. Gives the source back if the peer
    /// is unknown.
    pub fn send_snapshot(&self, to: u64, message: Message, source: SnapshotSource) -> Result<(), SnapshotSource> {
        let Some(Peer { urls, .. }) = self.peers.get(&to) else {
            return Err(source);
        };
        let hello = Hello {
            cluster_id: self.cluster_id,
            from: self.member_id,
            to,
        };
        let targets = urls.iter().filter_map(|url| Target::parse(url)).collect();
        let dial = self.local.tls.dial.clone();
        glommio::spawn_local(snapshot::send(
            hello,
            targets,
            dial,
            message,
            source,
            Rc::clone(&self.report),
        ))
        .detach();
        Ok(())
    }
}

/// A peer URL as it is dialed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// `host:port`, for connecting.
    addr: String,
    /// The host, as the peer's certificate must name it.
    host: String,
    /// `https`: the connection speaks TLS.
    tls: bool,
}

impl Target {
    /// `http://host:port` or `https://host:port`.
    fn parse(url: &str) -> Option<Target> {
        let parsed = url::Url::parse(url).ok()?;
        let host = parsed.host_str()?;
        Some(Target {
            addr: format!("{host}:{}", parsed.port()?),
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            tls: match parsed.scheme() {
                "http" => false,
                "https" => true,
                _ => return None,
            },
        })
    }
}

/// One peer's sender task: what it connects to and sends.
struct Sender {
    hello: Hello,
    targets: Vec<Target>,
    dial: Option<Arc<rustls::ClientConfig>>,
    queue: LocalReceiver<PeerMessage>,
    report: Report,
    traffic: Rc<traffic::Traffic>,
    link: u64,
}

impl Sender {
    /// Sends until the peer is removed; reports when the connection is up.
    async fn run(self) {
        let Sender {
            hello,
            targets,
            dial,
            queue,
            report,
            traffic,
            link,
        } = self;
        let mut state = LinkState {
            peer: hello.to,
            link,
            report: Rc::clone(&report),
            up: false,
        };
        let link = Link {
            hello,
            targets: &targets,
            dial: dial.as_ref(),
            traffic: &traffic,
        };
        run_sender(link, queue, report, &mut state).await;
        state.down();
    }
}

/// Whether a sender's connection is up, as the store core was told.
struct LinkState {
    peer: u64,
    link: u64,
    report: Report,
    up: bool,
}

impl LinkState {
    fn up(&mut self) {
        self.up = true;
        let (peer, link) = (self.peer, self.link);
        (self.report)(PeerEvent::Connected {
            peer,
            link,
            at: Instant::now(),
        });
    }

    fn down(&mut self) {
        if std::mem::take(&mut self.up) {
            let (peer, link) = (self.peer, self.link);
            (self.report)(PeerEvent::Disconnected { peer, link });
        }
    }
}

/// What a sender connects with, and where it counts what it sends.
struct Link<'a> {
    hello: Hello,
    targets: &'a [Target],
    dial: Option<&'a Arc<rustls::ClientConfig>>,
    traffic: &'a traffic::Traffic,
}

async fn run_sender(sender: Link<'_>, queue: LocalReceiver<PeerMessage>, report: Report, link: &mut LinkState) {
    let Link {
        hello,
        targets,
        dial,
        traffic,
    } = sender;
    let mut backoff = BACKOFF_MIN;
    let mut out = Vec::new();
    let mut failures = 0u64;
    loop {
        let mut stream = match connect(targets, dial, hello).await {
            Ok(stream) => stream,
            Err(error) => {
                link.down();
                failures += 1;
                // A peer that is down is logged once, then every 60th attempt.
                if failures % 60 == 1 {
                    tracing::warn!(peer = format_args!("{:x}", hello.to), %error, "cannot reach peer");
                }
                if !drop_queued(&queue, &report, hello.to, traffic).await {
                    return;
                }
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(peer = format_args!("{:x}", hello.to), "peer reachable again");
        }
        failures = 0;
        backoff = BACKOFF_MIN;
        link.up();
        out.clear();
        loop {
            // Wait for one message, then take whatever else is queued; with
            // nothing to send, keep the link alive.
            let first = within(KEEPALIVE_INTERVAL, queue.recv()).await;
            let first = match first {
                Some(Some(message)) => message,
                Some(None) => return, // the peer was removed
                None => PeerMessage::Keepalive,
            };
            let mut batched = usize::from(!matches!(first, PeerMessage::Keepalive));
            frame::push_message(&mut out, &first);
            // The peer's removal closes the queue: what was queued before still
            // goes out (the last append to a removed member, see `members`).
            let mut removed = false;
            while out.len() < BATCH_BYTES_MAX {
                match future::poll_once(queue.recv()).await {
                    Some(Some(message)) => {
                        batched += 1;
                        frame::push_message(&mut out, &message);
                    }
                    Some(None) => {
                        removed = true;
                        break;
                    }
                    None => break,
                }
            }
            let written = frame::write_all(&mut stream, &out).await;
            match written {
                Ok(()) => traffic.sent(hello.to, out.len()),
                Err(_) => traffic.failed(hello.to, batched),
            }
            if written.is_ok() && removed {
                return;
            }
            if let Err(error) = written {
                link.down();
                tracing::info!(peer = format_args!("{:x}", hello.to), %error, "peer connection lost");
                if !report(PeerEvent::Unreachable(hello.to)) {
                    return;
                }
                break;
            }
            out.clear();
        }
    }
}

/// A connection to the first of `targets` that takes one (TLS for an https
/// URL), introduced with `hello` at once: the receiver closes a connection
/// that stays silent past its hello timeout, and a peer may have nothing to say
/// for a long time (a follower speaks only when spoken to). A hello that
/// cannot be written is a failed connect. The error says why the last
/// address failed.
async fn connect(
    targets: &[Target],
    dial: Option<&Arc<rustls::ClientConfig>>,
    hello: Hello,
) -> Result<PeerStream, ConnectError> {
    let mut introduction = Vec::new();
    frame::push_hello(&mut introduction, hello);
    let mut last = ConnectError::NoAddress;
    for target in targets {
        for resolved in resolve(&target.addr).await {
            let stream = match TcpStream::connect_timeout(resolved, CONNECT_TIMEOUT).await {
                Ok(stream) => stream,
                Err(error) => {
                    last = ConnectError::Tcp(resolved, error.to_string());
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let mut stream = match (target.tls, dial) {
                (false, _) => MaybeTls::Plain(stream),
                (true, None) => {
                    last = ConnectError::NoTls;
                    continue;
                }
                (true, Some(config)) => {
                    let connector = futures_rustls::TlsConnector::from(Arc::clone(config));
                    match tls::connect(&connector, &target.host, stream).await {
                        Ok(stream) => MaybeTls::Tls(Box::new(stream.into())),
                        Err(error) => {
                            last = ConnectError::Handshake(resolved, error);
                            continue;
                        }
                    }
                }
            };
            match frame::write_all(&mut stream, &introduction).await {
                Ok(()) => return Ok(stream),
                Err(error) => last = ConnectError::Hello(resolved, error.to_string()),
            }
        }
    }
    Err(last)
}

/// Why no connection to a peer could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no address to connect to")]
    NoAddress,
    #[error("connecting to {0}: {1}")]
    Tcp(SocketAddr, String),
    #[error("an https peer URL, but no peer TLS is configured")]
    NoTls,
    #[error("TLS handshake with {0}: {1}")]
    Handshake(SocketAddr, tls::HandshakeError),
    #[error("writing the hello to {0}: {1}")]
    Hello(SocketAddr, String),
}

/// `host:port` → its addresses. Name lookups block, so they run off the store
/// core (an IP address resolves without a lookup); a name that does not resolve
/// is a failed connect.
async fn resolve(addr: &str) -> Vec<SocketAddr> {
    if let Ok(ip) = addr.parse::<SocketAddr>() {
        return vec![ip];
    }
    let addr = addr.to_string();
    glommio::executor()
        .spawn_blocking(move || {
            use std::net::ToSocketAddrs;
            match addr.to_socket_addrs() {
                Ok(resolved) => resolved.collect(),
                Err(error) => {
                    tracing::debug!(%addr, %error, "peer address does not resolve");
                    Vec::new()
                }
            }
        })
        .await
}

/// Drops what waits for an unreachable peer, counting it and telling raft.
/// False: store core gone.
async fn drop_queued(
    queue: &LocalReceiver<PeerMessage>,
    report: &Report,
    peer: u64,
    traffic: &traffic::Traffic,
) -> bool {
    let mut dropped = 0;
    while let Some(Some(_)) = future::poll_once(queue.recv()).await {
        dropped += 1;
    }
    if dropped > 0 {
        traffic.failed(peer, dropped);
    }
    dropped == 0 || report(PeerEvent::Unreachable(peer))
}

/// Waits for `work` at most `limit`; None if the time ran out first.
async fn within<T>(limit: Duration, work: impl Future<Output = T>) -> Option<T> {
    future::or(async { Some(work.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

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
//! - **Screening**: a raft message from a peer is checked before raft steps it
//!   ([`screen`]): what would make raft-rs panic is dropped, counted for
//!   /metrics and warned about at a bounded rate ([`log_limit`]).

mod frame;
mod log_limit;
pub mod query;
mod screen;
mod snapshot;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use raft::eraftpb::Message;

pub use frame::{Hello, PeerMessage};
use log_limit::LogLimit;
use ringkv_engine::mvcc::SnapshotSource;
use ringkv_proto::ringkvpb::{LeaseForward, LeaseForwardReply, Membership, PromoteCheck};
pub use snapshot::{received_index, received_path};

/// Messages queued for one peer before more are dropped.
const PEER_QUEUE_MESSAGES: usize = 4096;
/// Bytes gathered into one write before it is sent.
const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A connection that has not introduced itself by then is closed.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// What the transport tells the store core.
#[derive(Debug)]
pub enum PeerEvent {
    /// A message from a peer, addressed to this member.
    Received(Box<Message>),
    /// Messages to this peer were lost (raft's `report_unreachable`).
    Unreachable(u64),
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
}

/// Where the transport reports; false once the store core is gone.
pub type Report = Rc<dyn Fn(PeerEvent) -> bool>;

/// Since when the connection to a peer has been up; None while it is down.
type ActiveSince = Rc<Cell<Option<Instant>>>;

/// One peer's sender task, as the transport holds it.
struct Peer {
    urls: Vec<String>,
    queue: LocalSender<PeerMessage>,
    active_since: ActiveSince,
}

/// One member's peer side: a sender task per peer, and the listeners.
pub struct PeerTransport {
    member_id: u64,
    cluster_id: u64,
    report: Report,
    peers: HashMap<u64, Peer>,
    /// `--listen-peer-urls`; listened on once there is a peer (see `listen`).
    listen_addrs: Vec<SocketAddr>,
    listening: bool,
    /// Where snapshots this member receives go.
    snap_dir: PathBuf,
    /// What membership queries are answered with.
    membership: Rc<RefCell<Membership>>,
    drops: Cell<PeerDrops>,
    screen_warnings: LogLimit,
}

/// What the peer side dropped, for /metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerDrops {
    /// Raft messages from peers that the screen dropped.
    pub raft_messages_dropped: u64,
}

impl PeerTransport {
    pub fn new(
        member_id: u64,
        cluster_id: u64,
        report: Report,
        listen_addrs: Vec<SocketAddr>,
        snap_dir: PathBuf,
    ) -> PeerTransport {
        PeerTransport {
            member_id,
            cluster_id,
            report,
            peers: HashMap::new(),
            listen_addrs,
            listening: false,
            snap_dir,
            membership: Rc::default(),
            drops: Cell::default(),
            screen_warnings: LogLimit::default(),
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
        let mut bound = Vec::with_capacity(self.listen_addrs.len());
        for addr in &self.listen_addrs {
            let local = Local {
                member_id: self.member_id,
                cluster_id: self.cluster_id,
                snap_dir: self.snap_dir.clone(),
                membership: Rc::clone(&self.membership),
            };
            let listening = listen(*addr, local, Rc::clone(&self.report))
                .map_err(|error| format!("cannot listen for peers: {error}"))?;
            tracing::info!("listening for peers on http://{listening}");
            bound.push(listening);
        }
        self.listening = true;
        Ok(bound)
    }

    /// The membership that membership queries are answered with from now on.
    pub fn set_membership(&mut self, membership: Membership) {
        *self.membership.borrow_mut() = membership;
    }

    /// Whether `message`, received from a peer, may be stepped into `raft`
    /// ([`screen`]); a message dropped is counted and warned about.
    pub fn admits<S: raft::Storage>(&self, raft: &raft::Raft<S>, message: &Message) -> bool {
        let Err(dropped) = screen::check(raft, message) else {
            return true;
        };
        let mut drops = self.drops.get();
        drops.raft_messages_dropped += 1;
        self.drops.set(drops);
        if let Some(held_back) = self.screen_warnings.allow() {
            tracing::warn!(
                from = format_args!("{:x}", message.from),
                %dropped,
                held_back,
                "raft message from a peer dropped: stepping it could stop this member"
            );
        }
        false
    }

    /// What the peer side dropped so far.
    pub fn drops(&self) -> PeerDrops {
        self.drops.get()
    }

    /// Since when the connection to `peer` has been up (etcd's `ActiveSince`);
    /// None if it is down or `peer` is unknown.
    pub fn active_since(&self, peer: u64) -> Option<Instant> {
        self.peers.get(&peer).and_then(|peer| peer.active_since.get())
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
            if self.peers.contains_key(id) {
                continue;
            }
            let (queue, receiver) = local_channel::new_bounded(PEER_QUEUE_MESSAGES);
            let hello = Hello {
                cluster_id: self.cluster_id,
                from: self.member_id,
                to: *id,
            };
            let addrs = urls.iter().filter_map(|url| peer_addr(url)).collect();
            let active_since = ActiveSince::default();
            let sender = Sender {
                hello,
                addrs,
                queue: receiver,
                report: Rc::clone(&self.report),
                active_since: Rc::clone(&active_since),
            };
            glommio::spawn_local(sender.run()).detach();
            let peer = Peer {
                urls: urls.clone(),
                queue,
                active_since,
            };
            self.peers.insert(*id, peer);
        }
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
        let Some(Peer { queue, .. }) = self.peers.get(&to) else {
            tracing::debug!(to = format_args!("{to:x}"), "message to an unknown peer dropped");
            return false;
        };
        if queue.try_send(message).is_err() {
            (self.report)(PeerEvent::Unreachable(to));
            return false;
        }
        true
    }
}

impl PeerTransport {
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
        let addrs = urls.iter().filter_map(|url| peer_addr(url)).collect();
        glommio::spawn_local(snapshot::send(hello, addrs, message, source, Rc::clone(&self.report))).detach();
        Ok(())
    }
}

/// `http://host:port` → host:port, for connecting.
fn peer_addr(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    Some(format!("{}:{}", parsed.host_str()?, parsed.port()?))
}

/// One peer's sender task: what it connects to and sends.
struct Sender {
    hello: Hello,
    addrs: Vec<String>,
    queue: LocalReceiver<PeerMessage>,
    report: Report,
    active_since: ActiveSince,
}

impl Sender {
    /// Sends until the peer is removed; notes when the connection is up.
    async fn run(self) {
        let Sender {
            hello,
            addrs,
            queue,
            report,
            active_since,
        } = self;
        run_sender(hello, addrs, queue, report, &active_since).await;
        active_since.set(None);
    }
}

async fn run_sender(
    hello: Hello,
    addrs: Vec<String>,
    queue: LocalReceiver<PeerMessage>,
    report: Report,
    active_since: &Cell<Option<Instant>>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    let mut failures = 0u64;
    loop {
        let Some(mut stream) = connect(&addrs, hello).await else {
            active_since.set(None);
            failures += 1;
            // A peer that is down is logged once, then every 60th attempt.
            if failures % 60 == 1 {
                tracing::warn!(peer = format_args!("{:x}", hello.to), ?addrs, "cannot reach peer");
            }
            if !drop_queued(&queue, &report, hello.to).await {
                return;
            }
            glommio::timer::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        };
        if failures > 0 {
            tracing::info!(peer = format_args!("{:x}", hello.to), "peer reachable again");
        }
        failures = 0;
        backoff = BACKOFF_MIN;
        active_since.set(Some(Instant::now()));
        out.clear();
        loop {
            // Wait for one message, then take whatever else is queued.
            let Some(first) = queue.recv().await else {
                return; // the peer was removed
            };
            frame::push_message(&mut out, &mut scratch, &first);
            // The peer's removal closes the queue: what was queued before still
            // goes out (the last append to a removed member, see `members`).
            let mut removed = false;
            while out.len() < BATCH_BYTES_MAX {
                match future::poll_once(queue.recv()).await {
                    Some(Some(message)) => frame::push_message(&mut out, &mut scratch, &message),
                    Some(None) => {
                        removed = true;
                        break;
                    }
                    None => break,
                }
            }
            let written = frame::write_all(&mut stream, &out).await;
            if written.is_ok() && removed {
                return;
            }
            if let Err(error) = written {
                active_since.set(None);
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

/// A connection to the first of `addrs` that takes one, introduced with
/// `hello` at once: the receiver closes a connection that stays silent past its
/// hello timeout, and a peer may have nothing to say for a long time (a
/// follower speaks only when spoken to). A hello that cannot be written is a
/// failed connect.
async fn connect(addrs: &[String], hello: Hello) -> Option<TcpStream> {
    let mut introduction = Vec::new();
    frame::push_hello(&mut introduction, hello);
    for addr in addrs {
        for resolved in resolve(addr).await {
            let Ok(mut stream) = TcpStream::connect_timeout(resolved, CONNECT_TIMEOUT).await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            if frame::write_all(&mut stream, &introduction).await.is_ok() {
                return Some(stream);
            }
        }
    }
    None
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

/// Drops what waits for an unreachable peer, telling raft. False: store core gone.
async fn drop_queued(queue: &LocalReceiver<PeerMessage>, report: &Report, peer: u64) -> bool {
    let mut dropped = false;
    while let Some(Some(_)) = future::poll_once(queue.recv()).await {
        dropped = true;
    }
    !dropped || report(PeerEvent::Unreachable(peer))
}

/// Who this member is to its peers, where snapshots it receives go, and what
/// membership queries are answered with.
#[derive(Clone)]
pub struct Local {
    pub member_id: u64,
    pub cluster_id: u64,
    pub snap_dir: PathBuf,
    pub membership: Rc<RefCell<Membership>>,
}

/// Accepts peer connections on `addr` until the process ends.
fn listen(addr: SocketAddr, local: Local, report: Report) -> Result<SocketAddr, crate::net::BindError> {
    let listener = crate::net::listen(addr)?;
    let bound = listener.local_addr().map_err(|source| crate::net::BindError {
        addr,
        source: source.into(),
    })?;
    let local = Rc::new(local);
    glommio::spawn_local(async move {
        loop {
            let stream = crate::net::accept(&listener).await;
            glommio::spawn_local(serve_peer(stream, Rc::clone(&local), Rc::clone(&report))).detach();
        }
    })
    .detach();
    Ok(bound)
}

/// Reads one peer's messages until the connection ends, or answers a
/// membership query.
async fn serve_peer(mut stream: TcpStream, local: Rc<Local>, report: Report) {
    let (member_id, cluster_id) = (local.member_id, local.cluster_id);
    let hello = future::or(async { Some(frame::read_hello(&mut stream).await) }, async {
        glommio::timer::sleep(HELLO_TIMEOUT).await;
        None
    })
    .await;
    let hello = match hello {
        Some(Ok(hello)) => hello,
        Some(Err(error)) => {
            tracing::info!(%error, "peer connection closed before it said hello");
            return;
        }
        None => {
            tracing::info!("peer connection closed: no hello within {HELLO_TIMEOUT:?}");
            return;
        }
    };
    if hello == Hello::QUERY {
        let answer = PeerMessage::Membership(local.membership.borrow().clone());
        query::answer(&mut stream, &answer).await;
        return;
    }
    if hello.cluster_id != cluster_id || hello.to != member_id {
        tracing::warn!(
            from = format_args!("{:x}", hello.from),
            cluster = format_args!("{:x}", hello.cluster_id),
            to = format_args!("{:x}", hello.to),
            "refusing a peer connection meant for another cluster or member"
        );
        return;
    }
    let mut payload = Vec::new();
    let mut receiving: Option<snapshot::Receiving> = None;
    loop {
        let event = match frame::read_message(&mut stream, &mut payload).await {
            Ok(PeerMessage::Raft(message)) if message.from == hello.from && message.to == member_id => {
                PeerEvent::Received(Box::new(message))
            }
            Ok(PeerMessage::Raft(message)) => {
                tracing::warn!(
                    from = message.from,
                    to = message.to,
                    "misaddressed peer message; closing"
                );
                return;
            }
            Ok(PeerMessage::LeaseForward(forward)) => PeerEvent::LeaseForward {
                from: hello.from,
                forward,
            },
            Ok(PeerMessage::LeaseForwardReply(reply)) => PeerEvent::LeaseForwardReply(reply),
            Ok(PeerMessage::SnapshotChunk(chunk)) => {
                let result = match &mut receiving {
                    Some(file) => file.write(chunk).await,
                    None if chunk.offset == 0 => match snapshot::Receiving::start(&local.snap_dir, hello.from) {
                        Ok(file) => receiving.insert(file).write(chunk).await,
                        Err(error) => Err(error),
                    },
                    None => Err(format!("snapshot starts at offset {}", chunk.offset)),
                };
                if let Err(error) = result {
                    tracing::warn!(from = format_args!("{:x}", hello.from), %error, "receiving a snapshot failed");
                    return;
                }
                continue;
            }
            Ok(PeerMessage::SnapshotEnd(end)) => {
                let Some(file) = receiving.take() else {
                    tracing::warn!(
                        from = format_args!("{:x}", hello.from),
                        "snapshot end without a snapshot"
                    );
                    return;
                };
                match file.finish(end, &local.snap_dir).await {
                    Ok((message, path))
                        if message.from == hello.from
                            && screen::check_snapshot_message(member_id, &message).is_ok() =>
                    {
                        tracing::info!(
                            from = format_args!("{:x}", hello.from),
                            index = message.get_snapshot().get_metadata().index,
                            "snapshot received"
                        );
                        let event = PeerEvent::SnapshotReceived {
                            message: Box::new(message),
                            path,
                        };
                        if !report(event) {
                            return;
                        }
                        // Raft has the message: the sender may report it delivered.
                        if let Err(error) = snapshot::acknowledge(&mut stream).await {
                            tracing::info!(%error, "acknowledging a snapshot failed");
                        }
                        return;
                    }
                    Ok(_) => {
                        tracing::warn!(
                            from = format_args!("{:x}", hello.from),
                            "misaddressed or malformed snapshot message; dropped"
                        );
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(from = format_args!("{:x}", hello.from), %error, "receiving a snapshot failed");
                        return;
                    }
                }
            }
            Ok(PeerMessage::PromoteCheck(check)) => PeerEvent::PromoteCheck {
                from: hello.from,
                check,
            },
            Ok(PeerMessage::Membership(_)) => {
                tracing::warn!(
                    from = format_args!("{:x}", hello.from),
                    "unasked membership frame; closing"
                );
                return;
            }
            Err(frame::FrameError::Closed) => return,
            Err(error) => {
                tracing::warn!(from = format_args!("{:x}", hello.from), %error, "bad peer frame; closing");
                return;
            }
        };
        if !report(event) {
            return;
        }
    }
}

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

mod frame;
mod snapshot;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use raft::eraftpb::Message;

pub use frame::{Hello, PeerMessage};
use ringkv_engine::mvcc::SnapshotSource;
use ringkv_proto::ringkvpb::{LeaseForward, LeaseForwardReply};
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
}

/// Where the transport reports; false once the store core is gone.
pub type Report = Rc<dyn Fn(PeerEvent) -> bool>;

/// One member's outgoing side: a sender task per peer.
pub struct PeerTransport {
    member_id: u64,
    cluster_id: u64,
    report: Report,
    /// Peer id → (its peer URLs, its sender task's queue).
    peers: HashMap<u64, (Vec<String>, LocalSender<PeerMessage>)>,
}

impl PeerTransport {
    pub fn new(member_id: u64, cluster_id: u64, report: Report) -> PeerTransport {
        PeerTransport {
            member_id,
            cluster_id,
            report,
            peers: HashMap::new(),
        }
    }

    /// Makes the senders match `peers` (id and peer URLs, this member excluded):
    /// new peers get a sender task, removed ones lose theirs.
    pub fn set_peers(&mut self, peers: &[(u64, Vec<String>)]) {
        assert!(
            peers.iter().all(|(id, _)| *id != self.member_id),
            "no sender to oneself"
        );
        self.peers
            .retain(|id, (urls, _)| peers.iter().any(|(peer, peer_urls)| peer == id && peer_urls == urls));
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
            glommio::spawn_local(run_sender(hello, addrs, receiver, Rc::clone(&self.report))).detach();
            self.peers.insert(*id, (urls.clone(), queue));
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
        let Some((_, queue)) = self.peers.get(&to) else {
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
        let Some((urls, _)) = self.peers.get(&to) else {
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

async fn run_sender(hello: Hello, addrs: Vec<String>, queue: LocalReceiver<PeerMessage>, report: Report) {
    let mut backoff = BACKOFF_MIN;
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    let mut failures = 0u64;
    loop {
        let Some(mut stream) = connect(&addrs, hello).await else {
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
        out.clear();
        loop {
            // Wait for one message, then take whatever else is queued.
            let Some(first) = queue.recv().await else {
                return; // the peer was removed
            };
            frame::push_message(&mut out, &mut scratch, &first);
            while out.len() < BATCH_BYTES_MAX {
                match future::poll_once(queue.recv()).await {
                    Some(Some(message)) => frame::push_message(&mut out, &mut scratch, &message),
                    Some(None) => return,
                    None => break,
                }
            }
            if let Err(error) = frame::write_all(&mut stream, &out).await {
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

/// Who this member is to its peers, and where snapshots it receives go.
#[derive(Clone)]
pub struct Local {
    pub member_id: u64,
    pub cluster_id: u64,
    pub snap_dir: PathBuf,
}

/// Accepts peer connections on `addr` until the process ends.
pub fn listen(addr: SocketAddr, local: Local, report: Report) -> std::io::Result<SocketAddr> {
    let listener = crate::net::listen(addr)?;
    let bound = listener.local_addr()?;
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

/// Reads one peer's messages until the connection ends.
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
                    Ok((message, path)) if message.from == hello.from && message.to == member_id => {
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
                            "misaddressed snapshot; dropped"
                        );
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(from = format_args!("{:x}", hello.from), %error, "receiving a snapshot failed");
                        return;
                    }
                }
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

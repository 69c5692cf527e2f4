//! HashKV queries on the peer port, for etcd's corruption checks: a member
//! asks another for its HashKV at a revision (etcd asks a peer's
//! `/members/hashkv`) on a connection of its own, introduced by its ordinary
//! hello (so only a member may ask: each query costs the member asked a pass
//! over its history), with one kind-9 frame. The member asked hands the query
//! to its store core, which hashes where Maintenance.HashKV is hashed, writes
//! the one kind-10 answer and closes the connection.
//!
//! What a peer answers, or fails to, is the asker's to judge
//! (`store::corruption`); here it is only read, bounded in size
//! ([`frame::HASH_KV_ANSWER_PAYLOAD_MAX`]) and in time, and whatever does not
//! read as an answer is a failed query, never an error of the member.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use ringkv_engine::mvcc::KvHash;
use ringkv_proto::ringkvpb::{HashKvAnswer, HashKvQuery, HashKvRefusal};

use super::frame::{self, FrameError, Hello, PeerMessage, HASH_KV_ANSWER_PAYLOAD_MAX};
use super::{connect, within, ConnectError, Target};

/// HashKV queries one member's peer port holds at once while its store core
/// hashes; one more is closed unanswered. A cluster's checks ask each member
/// at most once at a time per asker (a leader's periodic check, a starting
/// member's check).
pub const HASH_KV_QUERIES_MAX: usize = 8;

/// How long a query waits for the store core's answer, and then for the
/// answer to be written. Hashing a large history takes the store core
/// seconds; the asker waits etcd's request timeout (7 s by default) and
/// closes the connection.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What one peer answered when asked for its HashKV.
#[derive(Debug)]
pub enum PeerHash {
    /// Its HashKV at the revision asked.
    Hashed(KvHash),
    /// The revision is compacted on the peer (etcd's ErrCompacted).
    Compacted,
    /// The peer has not reached the revision (etcd's ErrFutureRev).
    FutureRevision,
    /// No answer: unreachable, too slow, or nothing that reads as one.
    Failed(AskError),
}

/// One peer's answer, and who it is.
#[derive(Debug)]
pub struct PeerHashKv {
    pub id: u64,
    pub urls: Vec<String>,
    pub answer: PeerHash,
}

/// Why a peer gave no HashKV.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("sending the query: {0}")]
    Send(FrameError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("reading the answer: {0}")]
    Answer(FrameError),
    #[error("answered with a frame that is no HashKV answer")]
    Unexpected,
    #[error("answered with an unknown refusal {0}")]
    UnknownRefusal(i32),
}

/// The answer to a query that was hashed.
pub fn hashed(hash: KvHash) -> HashKvAnswer {
    HashKvAnswer {
        hash: hash.hash,
        compact_revision: hash.compact_revision,
        hash_revision: hash.hash_revision,
        refusal: HashKvRefusal::HashKvAnswered as i32,
    }
}

/// The answer to a query that could not be hashed.
pub fn refused(refusal: HashKvRefusal) -> HashKvAnswer {
    HashKvAnswer {
        refusal: refusal as i32,
        ..HashKvAnswer::default()
    }
}

/// What an answer says.
pub fn peer_hash(answer: &HashKvAnswer) -> PeerHash {
    match HashKvRefusal::from_i32(answer.refusal) {
        Some(HashKvRefusal::HashKvAnswered) => PeerHash::Hashed(KvHash {
            hash: answer.hash,
            compact_revision: answer.compact_revision,
            hash_revision: answer.hash_revision,
        }),
        Some(HashKvRefusal::HashKvCompacted) => PeerHash::Compacted,
        Some(HashKvRefusal::HashKvFutureRevision) => PeerHash::FutureRevision,
        None => PeerHash::Failed(AskError::UnknownRefusal(answer.refusal)),
    }
}

/// Asks every one of `peers` (id, peer URLs) at once for its HashKV at
/// `revision`, as member `from` of cluster `cluster_id`; each answer within
/// `timeout` (etcd's request timeout), or it failed. A peer without peer URLs
/// is not asked, as etcd skips it.
pub async fn ask_all(
    cluster_id: u64,
    from: u64,
    peers: Vec<(u64, Vec<String>)>,
    dial: Option<Arc<rustls::ClientConfig>>,
    revision: i64,
    timeout: Duration,
) -> Vec<PeerHashKv> {
    let asks: Vec<_> = peers
        .into_iter()
        .filter(|(_, urls)| !urls.is_empty())
        .map(|(id, urls)| {
            let hello = Hello {
                cluster_id,
                from,
                to: id,
            };
            let dial = dial.clone();
            glommio::spawn_local(async move {
                let answer = ask(hello, &urls, dial.as_ref(), revision, timeout).await;
                PeerHashKv { id, urls, answer }
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(asks.len());
    for asked in asks {
        answers.push(asked.await);
    }
    answers
}

/// One peer's HashKV at `revision`, asked at the first of `urls` that takes
/// the connection.
async fn ask(
    hello: Hello,
    urls: &[String],
    dial: Option<&Arc<rustls::ClientConfig>>,
    revision: i64,
    timeout: Duration,
) -> PeerHash {
    match within(timeout, exchange(hello, urls, dial, revision)).await {
        Some(Ok(answer)) => peer_hash(&answer),
        Some(Err(error)) => PeerHash::Failed(error),
        None => PeerHash::Failed(AskError::Timeout(timeout)),
    }
}

async fn exchange(
    hello: Hello,
    urls: &[String],
    dial: Option<&Arc<rustls::ClientConfig>>,
    revision: i64,
) -> Result<HashKvAnswer, AskError> {
    let targets: Vec<Target> = urls.iter().filter_map(|url| Target::parse(url)).collect();
    let mut stream = connect(&targets, dial, hello).await?;
    let mut query = Vec::new();
    frame::push_message(&mut query, &PeerMessage::HashKvQuery(HashKvQuery { revision }));
    frame::write_all(&mut stream, &query).await.map_err(AskError::Send)?;
    let answer = frame::read_answer(&mut stream, HASH_KV_ANSWER_PAYLOAD_MAX)
        .await
        .map_err(AskError::Answer)?;
    match answer {
        PeerMessage::HashKvAnswer(answer) => Ok(answer),
        _ => Err(AskError::Unexpected),
    }
}

/// The HashKV queries waiting for the store core's answer, by number.
#[derive(Default)]
pub(super) struct Waiting {
    next: Cell<u64>,
    queries: RefCell<HashMap<u64, LocalSender<HashKvAnswer>>>,
}

impl Waiting {
    /// A number for a new query and where its answer will arrive; None when
    /// [`HASH_KV_QUERIES_MAX`] wait already.
    pub(super) fn register(&self) -> Option<(u64, LocalReceiver<HashKvAnswer>)> {
        let mut queries = self.queries.borrow_mut();
        if queries.len() >= HASH_KV_QUERIES_MAX {
            return None;
        }
        let number = self.next.get();
        self.next.set(number + 1);
        let (sender, receiver) = local_channel::new_bounded(1);
        queries.insert(number, sender);
        Some((number, receiver))
    }

    /// Hands `answer` to query `number`; dropped if it waits no more.
    pub(super) fn answer(&self, number: u64, answer: HashKvAnswer) {
        if let Some(sender) = self.queries.borrow_mut().remove(&number) {
            let _ = sender.try_send(answer);
        }
    }

    /// Query `number` waits no more.
    pub(super) fn forget(&self, number: u64) {
        self.queries.borrow_mut().remove(&number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_back_as_what_they_say() {
        let hash = KvHash {
            hash: 7,
            compact_revision: -1,
            hash_revision: 12,
        };
        assert!(matches!(peer_hash(&hashed(hash)), PeerHash::Hashed(read) if read == hash));
        let compacted = refused(HashKvRefusal::HashKvCompacted);
        assert!(matches!(peer_hash(&compacted), PeerHash::Compacted));
        let future = refused(HashKvRefusal::HashKvFutureRevision);
        assert!(matches!(peer_hash(&future), PeerHash::FutureRevision));
        let unknown = HashKvAnswer {
            refusal: 99,
            ..hashed(hash)
        };
        assert!(matches!(
            peer_hash(&unknown),
            PeerHash::Failed(AskError::UnknownRefusal(99))
        ));
    }

    /// What a fake peer sends back after reading a query.
    enum Reply {
        Answer(HashKvAnswer),
        Bytes(Vec<u8>),
        Nothing,
    }

    /// Asks a fake peer on 127.0.0.1 that reads the hello and the query,
    /// sends `reply` and keeps the connection open until the asker leaves.
    fn ask_fake_peer(reply: Reply) -> PeerHash {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let peer = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            for _ in 0..2 {
                let mut header = [0; 8];
                stream.read_exact(&mut header).unwrap();
                let length = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
                stream.read_exact(&mut vec![0; length]).unwrap();
            }
            let mut out = Vec::new();
            match reply {
                Reply::Answer(answer) => frame::push_message(&mut out, &PeerMessage::HashKvAnswer(answer)),
                Reply::Bytes(bytes) => out = bytes,
                Reply::Nothing => {}
            }
            stream.write_all(&out).unwrap();
            let _ = stream.read(&mut [0; 1]);
        });
        let hello = Hello {
            cluster_id: 9,
            from: 1,
            to: 2,
        };
        let timeout = Duration::from_millis(500);
        let answer = glommio::LocalExecutor::default().run(ask(hello, &[url], None, 5, timeout));
        peer.join().unwrap();
        answer
    }

    #[test]
    fn a_peer_answering_garbage_too_much_another_frame_or_nothing_gave_no_hash() {
        let hash = KvHash {
            hash: 3,
            compact_revision: -1,
            hash_revision: 5,
        };
        assert!(matches!(ask_fake_peer(Reply::Answer(hashed(hash))), PeerHash::Hashed(read) if read == hash));
        let mut garbage = Vec::new();
        frame::push_frame(&mut garbage, &[10, 0xff, 0xff]);
        assert!(matches!(
            ask_fake_peer(Reply::Bytes(garbage)),
            PeerHash::Failed(AskError::Answer(FrameError::Decode(_)))
        ));
        let mut long = Vec::new();
        frame::push_frame(&mut long, &vec![0; HASH_KV_ANSWER_PAYLOAD_MAX + 1]);
        assert!(matches!(
            ask_fake_peer(Reply::Bytes(long)),
            PeerHash::Failed(AskError::Answer(FrameError::TooLong(_)))
        ));
        let mut bad_checksum = Vec::new();
        frame::push_message(&mut bad_checksum, &PeerMessage::HashKvAnswer(hashed(hash)));
        *bad_checksum.last_mut().unwrap() ^= 1;
        assert!(matches!(
            ask_fake_peer(Reply::Bytes(bad_checksum)),
            PeerHash::Failed(AskError::Answer(FrameError::Checksum))
        ));
        let mut keepalive = Vec::new();
        frame::push_message(&mut keepalive, &PeerMessage::Keepalive);
        assert!(matches!(
            ask_fake_peer(Reply::Bytes(keepalive)),
            PeerHash::Failed(AskError::Unexpected)
        ));
        assert!(matches!(
            ask_fake_peer(Reply::Nothing),
            PeerHash::Failed(AskError::Timeout(_))
        ));
    }

    #[test]
    fn a_peer_that_cannot_be_reached_gave_no_hash() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let answers = glommio::LocalExecutor::default().run(ask_all(
            9,
            1,
            vec![(2, vec![url]), (3, Vec::new())],
            None,
            5,
            Duration::from_millis(500),
        ));
        assert_eq!(answers.len(), 1, "a peer without URLs is not asked, as etcd skips it");
        assert!(matches!(answers[0].answer, PeerHash::Failed(AskError::Connect(_))));
    }

    #[test]
    fn at_most_so_many_queries_wait_and_an_answer_reaches_its_own() {
        glommio::LocalExecutor::default().run(async {
            let waiting = Waiting::default();
            let mut registered: Vec<_> = (0..HASH_KV_QUERIES_MAX)
                .map(|_| waiting.register().expect("room"))
                .collect();
            assert!(waiting.register().is_none(), "one more is refused");
            let (number, receiver) = registered.remove(3);
            waiting.answer(number, refused(HashKvRefusal::HashKvCompacted));
            let answer = receiver.recv().await.expect("answered");
            assert_eq!(answer.refusal, HashKvRefusal::HashKvCompacted as i32);
            assert!(waiting.register().is_some(), "an answered query leaves room");
            let (gone, _) = registered.remove(0);
            waiting.forget(gone);
            waiting.answer(gone, refused(HashKvRefusal::HashKvCompacted));
            assert!(waiting.register().is_some());
        });
    }
}

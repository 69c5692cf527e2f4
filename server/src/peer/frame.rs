//! The peer wire format: length-prefixed, checksummed frames.
//!
//! ```text
//! frame  = length: u32 BE | crc32: u32 BE | payload (length bytes)
//! ```
//! `crc32` (crc32fast, IEEE) covers the payload. The first frame on a connection
//! is a [`Hello`] (24 bytes); every later frame is one [`PeerMessage`]: a kind
//! byte, then the prost encoding of a raft `Message` (kind 1), a
//! `ringkvpb.LeaseForward` (kind 2), a `ringkvpb.LeaseForwardReply` (kind 3), a
//! `ringkvpb.SnapshotChunk` (kind 4), a `ringkvpb.SnapshotEnd` (kind 5), a
//! `ringkvpb.Membership` (kind 6, the answer to a membership query), a
//! `ringkvpb.PromoteCheck` (kind 7, a follower's MemberPromote asking the leader,
//! and its answer), a keepalive (kind 8, nothing after the kind byte: a sender
//! with nothing to say sends one so the receiver's idle timeout tells a quiet
//! link from a dead one), a `ringkvpb.HashKvQuery` (kind 9) or a
//! `ringkvpb.HashKvAnswer` (kind 10). Kinds 4 and 5 travel on a connection of
//! their own, one snapshot per connection, answered by one [`SNAPSHOT_ACK`]
//! byte once the receiver holds the file.
//!
//! A membership query is a connection whose hello is all zeros ([`Hello::QUERY`]):
//! the member answers with one kind-6 frame holding its applied membership and
//! closes it. A member joining a running cluster asks it for its id.
//!
//! A HashKV query (etcd's corruption checks, see `hash_kv`) is a connection
//! of its own too, introduced by a member's ordinary hello: its one frame is a
//! kind-9 query, answered with one kind-10 frame (at most
//! [`HASH_KV_ANSWER_PAYLOAD_MAX`] bytes), then closed.
//! A frame that is too long, fails its checksum or does not decode closes the
//! connection: the sender reconnects and raft resends what was lost. Before the
//! hello a frame may be at most [`HELLO_PAYLOAD_MAX`] long, after it
//! [`FRAME_PAYLOAD_MAX`]; either way the payload buffer grows only as bytes
//! arrive (read [`READ_CHUNK_BYTES`] at a time), so a claimed length costs
//! nothing until the bytes come.

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use prost::Message as _;
use raft::eraftpb::Message;
use ringkv_proto::ringkvpb::{
    HashKvAnswer, HashKvQuery, LeaseForward, LeaseForwardReply, Membership, PromoteCheck, SnapshotChunk, SnapshotEnd,
};

const KIND_RAFT: u8 = 1;
const KIND_LEASE_FORWARD: u8 = 2;
const KIND_LEASE_FORWARD_REPLY: u8 = 3;
const KIND_SNAPSHOT_CHUNK: u8 = 4;
const KIND_SNAPSHOT_END: u8 = 5;
/// The byte a snapshot's receiver writes back once the file is durable and its
/// message is with raft.
pub const SNAPSHOT_ACK: u8 = 1;
const KIND_MEMBERSHIP: u8 = 6;
const KIND_PROMOTE_CHECK: u8 = 7;
const KIND_KEEPALIVE: u8 = 8;
const KIND_HASH_KV_QUERY: u8 = 9;
const KIND_HASH_KV_ANSWER: u8 = 10;

/// What one frame after the hello carries.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerMessage {
    Raft(Message),
    LeaseForward(LeaseForward),
    LeaseForwardReply(LeaseForwardReply),
    SnapshotChunk(SnapshotChunk),
    SnapshotEnd(SnapshotEnd),
    Membership(Membership),
    PromoteCheck(PromoteCheck),
    /// Nothing: the link is alive.
    Keepalive,
    HashKvQuery(HashKvQuery),
    HashKvAnswer(HashKvAnswer),
}

/// Frame header: length then checksum.
pub(crate) const HEADER_BYTES: usize = 8;
/// Largest payload accepted. Appends carry at most the raft message size limit
/// (1 MiB of entries) plus one entry, and an entry is at most a client request
/// (--max-request-bytes, 1.5 MiB by default) plus its envelope.
pub const FRAME_PAYLOAD_MAX: usize = 64 * 1024 * 1024;
/// Largest frame read before the peer said who it is. The hello is 24 bytes;
/// the room above is for a hello that grows, never for anything else.
pub const HELLO_PAYLOAD_MAX: usize = 4 * 1024;
/// A payload is read this much at a time, its buffer grown only by what came.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Largest answer to a membership query read: a membership of a thousand
/// members with long URLs is a few hundred KiB.
pub const ANSWER_PAYLOAD_MAX: usize = 1024 * 1024;
/// Largest answer to a HashKV query read: the answer is four varints (at most
/// 40 bytes with its kind byte); the rest is room for fields added later.
pub const HASH_KV_ANSWER_PAYLOAD_MAX: usize = 256;

/// Who is calling whom, in which cluster: the first frame of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub cluster_id: u64,
    pub from: u64,
    pub to: u64,
}

impl Hello {
    const BYTES: usize = 24;

    /// The hello of a membership query (no cluster, no member yet).
    pub const QUERY: Hello = Hello {
        cluster_id: 0,
        from: 0,
        to: 0,
    };

    fn encode(self) -> [u8; Hello::BYTES] {
        let mut bytes = [0u8; Hello::BYTES];
        bytes[..8].copy_from_slice(&self.cluster_id.to_be_bytes());
        bytes[8..16].copy_from_slice(&self.from.to_be_bytes());
        bytes[16..].copy_from_slice(&self.to.to_be_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Option<Hello> {
        if bytes.len() != Hello::BYTES {
            return None;
        }
        let word = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Some(Hello {
            cluster_id: word(0),
            from: word(8),
            to: word(16),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("frame checksum mismatch")]
    Checksum,
    #[error("frame does not decode: {0}")]
    Decode(String),
    #[error("connection closed")]
    Closed,
    #[error("connection closed in the middle of a frame")]
    Truncated,
}

/// A frame's header: how long its payload is and the checksum it must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub length: usize,
    checksum: u32,
}

/// Appends one frame holding `payload` to `out`.
pub(crate) fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    let start = begin_frame(out);
    out.extend_from_slice(payload);
    end_frame(out, start);
}

/// Appends the hello as the first frame of a connection.
pub fn push_hello(out: &mut Vec<u8>, hello: Hello) {
    push_frame(out, &hello.encode());
}

/// Appends `message` as one frame, encoded in place.
pub fn push_message(out: &mut Vec<u8>, message: &PeerMessage) {
    let start = begin_frame(out);
    let encoded = match message {
        PeerMessage::Raft(raft) => {
            out.push(KIND_RAFT);
            raft.encode(out)
        }
        PeerMessage::LeaseForward(forward) => {
            out.push(KIND_LEASE_FORWARD);
            forward.encode(out)
        }
        PeerMessage::LeaseForwardReply(reply) => {
            out.push(KIND_LEASE_FORWARD_REPLY);
            reply.encode(out)
        }
        PeerMessage::SnapshotChunk(chunk) => {
            out.push(KIND_SNAPSHOT_CHUNK);
            chunk.encode(out)
        }
        PeerMessage::SnapshotEnd(end) => {
            out.push(KIND_SNAPSHOT_END);
            end.encode(out)
        }
        PeerMessage::Membership(membership) => {
            out.push(KIND_MEMBERSHIP);
            membership.encode(out)
        }
        PeerMessage::PromoteCheck(check) => {
            out.push(KIND_PROMOTE_CHECK);
            check.encode(out)
        }
        PeerMessage::Keepalive => {
            out.push(KIND_KEEPALIVE);
            Ok(())
        }
        PeerMessage::HashKvQuery(query) => {
            out.push(KIND_HASH_KV_QUERY);
            query.encode(out)
        }
        PeerMessage::HashKvAnswer(answer) => {
            out.push(KIND_HASH_KV_ANSWER);
            answer.encode(out)
        }
    };
    encoded.expect("a Vec grows as needed");
    end_frame(out, start);
}

/// Leaves room for a frame's header at the end of `out`; where it starts.
fn begin_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    start
}

/// Fills in the header of the frame begun at `start`, whose payload is the rest of `out`.
fn end_frame(out: &mut [u8], start: usize) {
    let (header, payload) = out[start..].split_at_mut(HEADER_BYTES);
    assert!(
        payload.len() <= FRAME_PAYLOAD_MAX,
        "a frame we send must be one we accept"
    );
    header[..4].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    header[4..].copy_from_slice(&crc32fast::hash(payload).to_be_bytes());
}

/// Reads one frame's header; a length over `payload_max` is refused before any
/// of the payload is read. A clean close before a frame starts is `Closed`.
pub async fn read_header<R: AsyncReadExt + Unpin>(reader: &mut R, payload_max: usize) -> Result<Header, FrameError> {
    let mut header = [0u8; HEADER_BYTES];
    let first = reader.read(&mut header).await?;
    if first == 0 {
        return Err(FrameError::Closed);
    }
    read_exactly(reader, &mut header[first..]).await?;
    let length = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let checksum = u32::from_be_bytes(header[4..].try_into().expect("4 bytes"));
    if length > payload_max {
        return Err(FrameError::TooLong(length));
    }
    Ok(Header { length, checksum })
}

/// Reads the payload `header` announced into `payload` (its old contents are
/// dropped), [`READ_CHUNK_BYTES`] at a time, and checks its checksum.
pub async fn read_payload<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    header: Header,
    payload: &mut Vec<u8>,
) -> Result<(), FrameError> {
    payload.clear();
    while payload.len() < header.length {
        let start = payload.len();
        let chunk = (header.length - start).min(READ_CHUNK_BYTES);
        payload.resize(start + chunk, 0);
        let read = reader.read(&mut payload[start..]).await;
        let read = read.inspect_err(|_| payload.truncate(start))?;
        payload.truncate(start + read);
        if read == 0 {
            return Err(FrameError::Truncated);
        }
    }
    if crc32fast::hash(payload) != header.checksum {
        return Err(FrameError::Checksum);
    }
    Ok(())
}

/// `read_exact`, with an early close told apart from other I/O errors.
async fn read_exactly<R: AsyncReadExt + Unpin>(reader: &mut R, buf: &mut [u8]) -> Result<(), FrameError> {
    reader.read_exact(buf).await.map_err(|error| match error.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(error),
    })
}

/// Reads one frame's payload (at most `payload_max` bytes) into `payload`.
async fn read_frame<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    payload: &mut Vec<u8>,
    payload_max: usize,
) -> Result<(), FrameError> {
    let header = read_header(reader, payload_max).await?;
    read_payload(reader, header, payload).await
}

/// Reads the hello that opens a connection (at most [`HELLO_PAYLOAD_MAX`] bytes).
pub async fn read_hello<R: AsyncReadExt + Unpin>(reader: &mut R) -> Result<Hello, FrameError> {
    let mut payload = Vec::new();
    read_frame(reader, &mut payload, HELLO_PAYLOAD_MAX).await?;
    decode_hello(&payload)
}

pub fn decode_hello(payload: &[u8]) -> Result<Hello, FrameError> {
    Hello::decode(payload).ok_or_else(|| FrameError::Decode(format!("hello of {} bytes", payload.len())))
}

/// Reads the one frame that answers a query: at most `payload_max` bytes
/// ([`ANSWER_PAYLOAD_MAX`] for a membership, [`HASH_KV_ANSWER_PAYLOAD_MAX`]
/// for a HashKV).
pub async fn read_answer<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    payload_max: usize,
) -> Result<PeerMessage, FrameError> {
    let mut payload = Vec::new();
    read_frame(reader, &mut payload, payload_max).await?;
    decode_message(&payload)
}

/// Decodes the payload of a frame after the hello.
pub fn decode_message(payload: &[u8]) -> Result<PeerMessage, FrameError> {
    let decode_error = |error: prost::DecodeError| FrameError::Decode(error.to_string());
    match payload.split_first() {
        Some((&KIND_RAFT, body)) => Message::decode(body).map(PeerMessage::Raft).map_err(decode_error),
        Some((&KIND_LEASE_FORWARD, body)) => LeaseForward::decode(body)
            .map(PeerMessage::LeaseForward)
            .map_err(decode_error),
        Some((&KIND_LEASE_FORWARD_REPLY, body)) => LeaseForwardReply::decode(body)
            .map(PeerMessage::LeaseForwardReply)
            .map_err(decode_error),
        Some((&KIND_SNAPSHOT_CHUNK, body)) => SnapshotChunk::decode(body)
            .map(PeerMessage::SnapshotChunk)
            .map_err(decode_error),
        Some((&KIND_SNAPSHOT_END, body)) => SnapshotEnd::decode(body)
            .map(PeerMessage::SnapshotEnd)
            .map_err(decode_error),
        Some((&KIND_MEMBERSHIP, body)) => Membership::decode(body)
            .map(PeerMessage::Membership)
            .map_err(decode_error),
        Some((&KIND_PROMOTE_CHECK, body)) => PromoteCheck::decode(body)
            .map(PeerMessage::PromoteCheck)
            .map_err(decode_error),
        Some((&KIND_HASH_KV_QUERY, body)) => HashKvQuery::decode(body)
            .map(PeerMessage::HashKvQuery)
            .map_err(decode_error),
        Some((&KIND_HASH_KV_ANSWER, body)) => HashKvAnswer::decode(body)
            .map(PeerMessage::HashKvAnswer)
            .map_err(decode_error),
        Some((&KIND_KEEPALIVE, [])) => Ok(PeerMessage::Keepalive),
        Some((&KIND_KEEPALIVE, body)) => Err(FrameError::Decode(format!("keepalive with {} bytes", body.len()))),
        Some((kind, _)) => Err(FrameError::Decode(format!("unknown frame kind {kind}"))),
        None => Err(FrameError::Decode("empty frame".to_string())),
    }
}

pub async fn write_all<W: AsyncWriteExt + Unpin>(writer: &mut W, bytes: &[u8]) -> Result<(), FrameError> {
    writer.write_all(bytes).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{self, block_on};
    use futures_lite::io::Cursor;
    use raft::eraftpb::{Entry, MessageType};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Reads one frame after the hello and decodes it.
    async fn read_message<R: AsyncReadExt + Unpin>(
        reader: &mut R,
        payload: &mut Vec<u8>,
    ) -> Result<PeerMessage, FrameError> {
        read_frame(reader, payload, FRAME_PAYLOAD_MAX).await?;
        decode_message(payload)
    }

    #[test]
    fn frames_round_trip_and_a_flipped_bit_is_caught() {
        let message = PeerMessage::Raft(Message {
            msg_type: MessageType::MsgAppend as i32,
            to: 2,
            from: 1,
            entries: vec![Entry {
                index: 7,
                term: 3,
                data: b"payload".to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let forward = PeerMessage::LeaseForward(LeaseForward {
            request_id: 5,
            request: Some(ringkv_proto::ringkvpb::lease_forward::Request::KeepAlive(
                ringkv_proto::etcdserverpb::LeaseKeepAliveRequest { id: 77 },
            )),
        });
        let hello = Hello {
            cluster_id: 9,
            from: 1,
            to: 2,
        };
        let mut wire = Vec::new();
        push_hello(&mut wire, hello);
        push_message(&mut wire, &forward);
        let chunk = PeerMessage::SnapshotChunk(SnapshotChunk {
            offset: 4096,
            data: vec![7; 4096],
        });
        let end = PeerMessage::SnapshotEnd(SnapshotEnd {
            message: vec![1, 2, 3],
            total_bytes: 8192,
            crc32: 99,
        });
        push_message(&mut wire, &chunk);
        push_message(&mut wire, &end);
        push_message(&mut wire, &message);
        let mut reader = Cursor::new(wire.clone());
        assert_eq!(block_on(read_hello(&mut reader)).unwrap(), hello);
        let mut payload = Vec::new();
        assert_eq!(block_on(read_message(&mut reader, &mut payload)).unwrap(), forward);
        assert_eq!(block_on(read_message(&mut reader, &mut payload)).unwrap(), chunk);
        assert_eq!(block_on(read_message(&mut reader, &mut payload)).unwrap(), end);
        assert_eq!(block_on(read_message(&mut reader, &mut payload)).unwrap(), message);
        assert!(matches!(
            block_on(read_message(&mut reader, &mut payload)),
            Err(FrameError::Closed)
        ));

        let last = wire.len() - 1;
        wire[last] ^= 1;
        let mut reader = Cursor::new(wire);
        block_on(read_hello(&mut reader)).unwrap();
        for _ in 0..3 {
            block_on(read_message(&mut reader, &mut payload)).unwrap();
        }
        assert!(matches!(
            block_on(read_message(&mut reader, &mut payload)),
            Err(FrameError::Checksum)
        ));
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading_it() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&(FRAME_PAYLOAD_MAX as u32 + 1).to_be_bytes());
        wire.extend_from_slice(&[0; 4]);
        let mut payload = Vec::new();
        let result = block_on(read_message(&mut Cursor::new(wire), &mut payload));
        assert!(matches!(result, Err(FrameError::TooLong(_))));
    }

    fn header(length: usize) -> Vec<u8> {
        let mut wire = (length as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(&[0; 4]);
        wire
    }

    #[test]
    fn before_the_hello_a_frame_of_a_few_kib_is_refused_unread() {
        let mut wire = header(HELLO_PAYLOAD_MAX + 1);
        wire.extend(vec![0; HELLO_PAYLOAD_MAX + 1]);
        let result = block_on(read_hello(&mut Cursor::new(wire)));
        assert!(matches!(result, Err(FrameError::TooLong(length)) if length == HELLO_PAYLOAD_MAX + 1));
        let mut oversized_hello = Vec::new();
        push_frame(&mut oversized_hello, &[0; 25]);
        let result = block_on(read_hello(&mut Cursor::new(oversized_hello)));
        assert!(matches!(result, Err(FrameError::Decode(_))));
    }

    /// Yields `bytes`, then waits for ever: a peer that claimed more than it sent.
    struct Stalled(Cursor<Vec<u8>>);

    impl futures_lite::AsyncRead for Stalled {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
            match Pin::new(&mut self.0).poll_read(cx, buf) {
                Poll::Ready(Ok(0)) => Poll::Pending,
                other => other,
            }
        }
    }

    #[test]
    fn a_claimed_huge_length_costs_only_the_bytes_that_came() {
        let mut sent = header(FRAME_PAYLOAD_MAX);
        sent.extend(vec![7; 1000]);
        let mut reader = Stalled(Cursor::new(sent));
        let mut payload = Vec::new();
        let announced = block_on(read_header(&mut reader, FRAME_PAYLOAD_MAX)).unwrap();
        assert_eq!(announced.length, FRAME_PAYLOAD_MAX);
        let waiting = block_on(future::poll_once(read_payload(&mut reader, announced, &mut payload)));
        assert!(waiting.is_none(), "still waiting for the rest");
        assert!(
            payload.capacity() <= 2 * READ_CHUNK_BYTES,
            "{} bytes reserved",
            payload.capacity()
        );

        // And when the peer leaves, the frame is refused with what came.
        let mut sent = header(FRAME_PAYLOAD_MAX);
        sent.extend(vec![7; 3 * READ_CHUNK_BYTES + 5]);
        let mut payload = Vec::new();
        let result = block_on(read_message(&mut Cursor::new(sent), &mut payload));
        assert!(matches!(result, Err(FrameError::Truncated)));
        assert!(
            payload.capacity() <= 8 * READ_CHUNK_BYTES,
            "{} bytes reserved",
            payload.capacity()
        );
    }

    #[test]
    fn hash_kv_queries_and_answers_round_trip_and_a_long_answer_is_refused_unread() {
        let query = PeerMessage::HashKvQuery(HashKvQuery { revision: 41 });
        let answer = PeerMessage::HashKvAnswer(HashKvAnswer {
            hash: u32::MAX,
            compact_revision: -1,
            hash_revision: i64::MAX,
            refusal: 0,
        });
        let mut wire = Vec::new();
        push_message(&mut wire, &query);
        push_message(&mut wire, &answer);
        let mut reader = Cursor::new(wire);
        let mut payload = Vec::new();
        assert_eq!(block_on(read_message(&mut reader, &mut payload)).unwrap(), query);
        let read = block_on(read_answer(&mut reader, HASH_KV_ANSWER_PAYLOAD_MAX));
        assert_eq!(read.unwrap(), answer, "the largest answer fits its limit");
        let mut long = header(HASH_KV_ANSWER_PAYLOAD_MAX + 1);
        long.extend(vec![0; HASH_KV_ANSWER_PAYLOAD_MAX + 1]);
        let read = block_on(read_answer(&mut Cursor::new(long), HASH_KV_ANSWER_PAYLOAD_MAX));
        assert!(matches!(read, Err(FrameError::TooLong(_))));
    }

    #[test]
    fn keepalives_round_trip_and_carry_nothing() {
        let mut wire = Vec::new();
        push_message(&mut wire, &PeerMessage::Keepalive);
        let mut payload = Vec::new();
        let read = block_on(read_message(&mut Cursor::new(wire), &mut payload));
        assert_eq!(read.unwrap(), PeerMessage::Keepalive);
        assert!(matches!(
            decode_message(&[KIND_KEEPALIVE, 0]),
            Err(FrameError::Decode(_))
        ));
    }
}

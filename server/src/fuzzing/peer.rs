//! Peer-port targets. `peer_frames`: a connection's bytes through the hello
//! and frame reader; every message read encodes back to itself, and what a
//! member makes of a membership answer and a snapshot's end is decoded too.
//! `peer_snapshot`: a snapshot stream (chunks, then its end) through the
//! receiver as the peer port drives it, then what installing the received
//! file decodes first (the store, its applied index and membership).

use std::rc::Rc;

use futures_lite::future::block_on;
use futures_lite::io::{AsyncReadExt, Cursor};
use prost::Message as _;
use raft::eraftpb::{ConfState, Message, MessageType, Snapshot, SnapshotMetadata};
use ringkv_engine::fuzzing::{larger_page_file, run};
use ringkv_engine::mvcc::Mvcc;
use ringkv_proto::ringkvpb::{self, SnapshotChunk, SnapshotEnd};

use super::scratch_dir;
use crate::peer::frame::{self, FrameError, Hello, PeerMessage, FRAME_PAYLOAD_MAX};
use crate::peer::snapshot::{Receives, Receiving};
use crate::store::membership::Membership;

/// Flag bit of the first input byte: the rest is payloads, each a u16 LE
/// length and that many bytes, sent as frames with a valid header and
/// checksum (else the rest is the connection's bytes as they are).
const FRAMED: u8 = 1;
/// Messages read from one connection at most.
const MESSAGES_MAX: usize = 64;

/// Input: a flag byte, then the connection's bytes (see [`FRAMED`]).
pub fn peer_frames(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let wire = if flags & FRAMED != 0 {
        frames(rest)
    } else {
        rest.to_vec()
    };
    let mut reader = Cursor::new(wire);
    let Ok(hello) = block_on(frame::read_hello(&mut reader)) else {
        return;
    };
    let mut encoded = Vec::new();
    frame::push_hello(&mut encoded, hello);
    assert_eq!(block_on(frame::read_hello(&mut Cursor::new(encoded))).ok(), Some(hello));
    let mut payload = Vec::new();
    for _ in 0..MESSAGES_MAX {
        match block_on(read_message(&mut reader, &mut payload)) {
            Ok(message) => received(message),
            Err(FrameError::Closed | FrameError::Io(_)) => return,
            Err(_) => continue,
        }
    }
}

/// One frame read and decoded as the peer port reads one (`peer::inbound`).
async fn read_message<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    payload: &mut Vec<u8>,
) -> Result<PeerMessage, FrameError> {
    let header = frame::read_header(reader, FRAME_PAYLOAD_MAX).await?;
    frame::read_payload(reader, header, payload).await?;
    frame::decode_message(payload)
}

/// What a member does with a message first: decode what it carries; and the
/// message must encode to a frame that reads back as itself.
fn received(message: PeerMessage) {
    match &message {
        PeerMessage::Membership(membership) => {
            let _ = Membership::from_pb(membership.clone());
        }
        PeerMessage::SnapshotEnd(end) => {
            let _ = Message::decode(end.message.as_slice());
        }
        _ => {}
    }
    let mut wire = Vec::new();
    frame::push_message(&mut wire, &message);
    let read = block_on(read_message(&mut Cursor::new(wire), &mut Vec::new()));
    assert_eq!(read.ok(), Some(message), "a message read encodes back to itself");
}

/// Payloads as frames: `[u16 LE length, payload]...`, each given a valid
/// frame header.
fn frames(mut rest: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let (payload, after) = rest[2..].split_at(len.min(rest.len() - 2));
        frame::push_frame(&mut wire, payload);
        rest = after;
    }
    wire
}

/// Flag bit of `peer_snapshot`'s first byte: a snapshot end is given the
/// length and crc32 of the chunks before it, so the fuzzer's file reaches the
/// store decoding behind the checksum.
const FIX_END: u8 = 2;
/// The member the snapshot comes from.
const FROM: u64 = 2;
/// The member receiving it.
const TO: u64 = 1;

/// Input: a flag byte, then payloads as in [`FRAMED`] (the flag is implied):
/// the frames after the hello of a snapshot connection.
pub fn peer_snapshot(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let wire = frames(rest);
    let snap_dir = scratch_dir().join("snap");
    let _ = std::fs::remove_dir_all(&snap_dir);
    std::fs::create_dir_all(&snap_dir).expect("a snapshot directory");
    run(async move {
        let mut reader = Cursor::new(wire);
        let mut payload = Vec::new();
        let receives = Rc::new(Receives::default());
        let mut receiving: Option<Receiving> = None;
        let (mut total, mut crc) = (0u64, crc32fast::Hasher::new());
        for _ in 0..MESSAGES_MAX {
            let Ok(message) = read_message(&mut reader, &mut payload).await else {
                return;
            };
            match message {
                // As `peer::serve_peer` drives the receiver.
                PeerMessage::SnapshotChunk(chunk) => {
                    total += chunk.data.len() as u64;
                    crc.update(&chunk.data);
                    let written = match &mut receiving {
                        Some(file) => file.write(chunk).await,
                        None if chunk.offset == 0 => match Receiving::start(&snap_dir, FROM, &receives) {
                            Ok(file) => receiving.insert(file).write(chunk).await,
                            Err(error) => Err(error),
                        },
                        None => return,
                    };
                    if written.is_err() {
                        return;
                    }
                }
                PeerMessage::SnapshotEnd(mut end) => {
                    let Some(file) = receiving.take() else {
                        return;
                    };
                    if flags & FIX_END != 0 {
                        end.total_bytes = total;
                        end.crc32 = crc.clone().finalize();
                    }
                    if let Ok((message, path)) = file.finish(end, FROM, TO).await {
                        install(&message, &path);
                    }
                    return;
                }
                _ => return,
            }
        }
    });
}

/// What installing a received snapshot reads before anything else.
/// The receiver checked the file before keeping it, so installing it must
/// find what it reads first.
fn install(message: &Message, path: &std::path::Path) {
    let mvcc = Mvcc::open(path).expect("a kept snapshot opens");
    assert_eq!(mvcc.applied_index(), message.get_snapshot().get_metadata().index);
    let membership = mvcc.membership().expect("a kept snapshot has a membership");
    Membership::decode(membership).expect("a kept snapshot's membership decodes");
}

/// Frames as payloads in the [`FRAMED`] format.
fn payloads(messages: &[PeerMessage], hello: Option<Hello>) -> Vec<u8> {
    let mut wire = Vec::new();
    if let Some(hello) = hello {
        frame::push_hello(&mut wire, hello);
    }
    for message in messages {
        frame::push_message(&mut wire, message);
    }
    // Back from frames to payloads: each frame is length, crc32, payload.
    let mut out = Vec::new();
    let mut rest = wire.as_slice();
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        out.extend_from_slice(&u16::try_from(len).expect("a small frame").to_le_bytes());
        out.extend_from_slice(&rest[8..8 + len]);
        rest = &rest[8 + len..];
    }
    out
}

/// A membership of one member, as a query answer carries it and a page file
/// stores it.
pub(super) fn membership() -> ringkvpb::Membership {
    let member = ringkvpb::Member {
        id: 0x1234,
        name: "m0".to_string(),
        peer_urls: vec!["http://127.0.0.1:2380".to_string()],
        client_urls: vec!["http://127.0.0.1:2379".to_string()],
        is_learner: false,
    };
    ringkvpb::Membership {
        cluster_id: 9,
        initial_members: vec![member.clone()],
        members: vec![member],
        removed_ids: vec![7],
    }
}

/// A MsgSnapshot from `FROM` for raft index `index`.
fn snapshot_message(index: u64) -> Message {
    Message {
        msg_type: MessageType::MsgSnapshot as i32,
        to: TO,
        from: FROM,
        term: 2,
        snapshot: Some(Snapshot {
            data: Vec::new(),
            metadata: Some(SnapshotMetadata {
                index,
                term: 2,
                conf_state: Some(ConfState {
                    voters: vec![TO],
                    ..Default::default()
                }),
            }),
        }),
        ..Default::default()
    }
}

pub(super) fn frame_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let hello = Hello {
        cluster_id: 9,
        from: 2,
        to: 1,
    };
    let heartbeat = PeerMessage::Raft(Message {
        msg_type: MessageType::MsgHeartbeat as i32,
        to: 1,
        from: 2,
        term: 3,
        commit: 10,
        ..Default::default()
    });
    let append = PeerMessage::Raft(Message {
        msg_type: MessageType::MsgAppend as i32,
        to: 1,
        from: 2,
        term: 3,
        log_term: 3,
        index: 10,
        commit: 10,
        entries: vec![raft::eraftpb::Entry {
            term: 3,
            index: 11,
            data: b"entry".to_vec(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let forward = PeerMessage::LeaseForward(ringkvpb::LeaseForward {
        request_id: 5,
        request: Some(ringkvpb::lease_forward::Request::KeepAlive(
            ringkv_proto::etcdserverpb::LeaseKeepAliveRequest { id: 77 },
        )),
    });
    let promote = PeerMessage::PromoteCheck(ringkvpb::PromoteCheck {
        request_id: 1,
        member_id: 0x1234,
        answered: true,
        verdict: 2,
    });
    let hash_kv_query = PeerMessage::HashKvQuery(ringkvpb::HashKvQuery { revision: 12 });
    let hash_kv_answer = PeerMessage::HashKvAnswer(ringkvpb::HashKvAnswer {
        hash: 0xdead_beef,
        compact_revision: -1,
        hash_revision: 12,
        refusal: 0,
    });
    let mut raw = Vec::new();
    frame::push_hello(&mut raw, hello);
    frame::push_message(&mut raw, &heartbeat);
    vec![
        ("hello-heartbeat-raw", [&[0][..], &raw].concat()),
        (
            "hello-append-forward-promote",
            [vec![FRAMED], payloads(&[append, forward, promote], Some(hello))].concat(),
        ),
        (
            "hello-hash-kv-query-answer",
            [vec![FRAMED], payloads(&[hash_kv_query, hash_kv_answer], Some(hello))].concat(),
        ),
        (
            "query-answer",
            [
                vec![FRAMED],
                payloads(&[PeerMessage::Membership(membership())], Some(Hello::QUERY)),
            ]
            .concat(),
        ),
    ]
}

/// A real page file streamed in two chunks, then its end.
pub(super) fn snapshot_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let file = larger_page_file(membership().encode_to_vec());
    let half = file.len() / 2 / 4096 * 4096;
    let chunks: Vec<PeerMessage> = [(0, &file[..half]), (half, &file[half..])]
        .into_iter()
        .map(|(offset, data)| {
            PeerMessage::SnapshotChunk(SnapshotChunk {
                offset: offset as u64,
                data: data.to_vec(),
            })
        })
        .collect();
    let end = PeerMessage::SnapshotEnd(SnapshotEnd {
        message: snapshot_message(42).encode_to_vec(),
        total_bytes: file.len() as u64,
        crc32: crc32fast::hash(&file),
    });
    vec![(
        "two-chunks-and-end",
        [vec![0], payloads(&[chunks, vec![end]].concat(), None)].concat(),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_seed_is_received_and_opens_at_its_index() {
        let (_, seed) = &snapshot_seeds()[0];
        peer_snapshot(seed);
        let received = ringkv_datadir::layout::received_path(&scratch_dir().join("snap"), 42);
        let mvcc = Mvcc::open(&received).expect("the received file opens");
        assert_eq!(mvcc.applied_index(), 42);
    }

    #[test]
    fn the_frame_seeds_read_back_as_what_they_were_made_of() {
        for (name, seed) in frame_seeds() {
            let wire = if seed[0] & FRAMED != 0 {
                frames(&seed[1..])
            } else {
                seed[1..].to_vec()
            };
            let mut reader = Cursor::new(wire);
            block_on(frame::read_hello(&mut reader)).unwrap_or_else(|error| panic!("{name}: {error}"));
            block_on(read_message(&mut reader, &mut Vec::new())).unwrap_or_else(|error| panic!("{name}: {error}"));
        }
    }
}

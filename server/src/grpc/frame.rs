//! gRPC message framing: a 1-byte compressed flag, a 4-byte big-endian length,
//! then the message. Decoding is incremental over HTTP/2 DATA frames.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::status::{Code, Status};

/// Bytes before every gRPC message: compressed flag and length.
pub const PREFIX_BYTES: usize = 5;

/// Splits a stream of DATA chunks into gRPC messages.
pub struct MessageDecoder {
    buffered: BytesMut,
    max_message_bytes: usize,
}

impl MessageDecoder {
    pub fn new(max_message_bytes: usize) -> MessageDecoder {
        MessageDecoder {
            buffered: BytesMut::new(),
            max_message_bytes,
        }
    }

    /// Adds a DATA chunk.
    pub fn push(&mut self, chunk: Bytes) {
        self.buffered.extend_from_slice(&chunk);
    }

    /// The next complete message, if one is buffered. A message in a single chunk
    /// is split off without copying it again.
    ///
    /// Checks in grpc-go's order (`recvMsg`, then `checkRecvPayload`): the length
    /// as soon as the prefix is here, the payload format once the whole message
    /// is. No compressor is installed, so a compressed message is refused (an
    /// encoding other than identity was refused with the request headers).
    pub fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buffered.len() < PREFIX_BYTES {
            return Ok(None);
        }
        let format = self.buffered[0];
        let length =
            u32::from_be_bytes([self.buffered[1], self.buffered[2], self.buffered[3], self.buffered[4]]) as usize;
        if length > self.max_message_bytes {
            return Err(Status::new(
                Code::ResourceExhausted,
                format!(
                    "grpc: received message larger than max ({length} vs. {})",
                    self.max_message_bytes
                ),
            ));
        }
        if self.buffered.len() < PREFIX_BYTES + length {
            self.buffered.reserve(PREFIX_BYTES + length - self.buffered.len());
            return Ok(None);
        }
        match format {
            0 => {}
            1 => {
                return Err(Status::new(
                    Code::Internal,
                    "grpc: compressed flag set with identity or empty encoding",
                ))
            }
            other => {
                return Err(Status::new(
                    Code::Internal,
                    format!("grpc: received unexpected payload format {other}"),
                ))
            }
        }
        self.buffered.advance(PREFIX_BYTES);
        Ok(Some(self.buffered.split_to(length).freeze()))
    }

    /// The stream ended: leftover bytes are a truncated message (grpc-go's
    /// `io.ErrUnexpectedEOF`, which reaches the client as UNKNOWN).
    pub fn finish(&self) -> Result<(), Status> {
        if self.buffered.is_empty() {
            return Ok(());
        }
        Err(Status::new(Code::Unknown, "unexpected EOF"))
    }
}

/// A response message with room reserved for its gRPC prefix, so framing it
/// costs no copy.
pub struct Encoded(BytesMut);

impl Encoded {
    pub fn new<M: prost::Message>(message: &M) -> Encoded {
        let length = message.encoded_len();
        let mut buffer = BytesMut::with_capacity(PREFIX_BYTES + length);
        buffer.put_u8(0);
        buffer.put_u32(u32::try_from(length).expect("a message fits a gRPC frame"));
        message
            .encode(&mut buffer)
            .expect("the buffer holds the encoded length");
        assert_eq!(buffer.len(), PREFIX_BYTES + length);
        Encoded(buffer)
    }

    /// Frames a message already encoded in parts (e.g. a response head plus
    /// events encoded once and shared by many responses).
    pub fn from_parts(parts: &[&[u8]]) -> Encoded {
        let length: usize = parts.iter().map(|part| part.len()).sum();
        let mut buffer = BytesMut::with_capacity(PREFIX_BYTES + length);
        buffer.put_u8(0);
        buffer.put_u32(u32::try_from(length).expect("a message fits a gRPC frame"));
        for part in parts {
            buffer.put_slice(part);
        }
        Encoded(buffer)
    }

    /// Frames a message written after `PREFIX_BYTES` of room at the front of
    /// `buffer` (e.g. assembled on another core), without copying it.
    pub fn from_prefixed(mut buffer: BytesMut) -> Encoded {
        assert!(buffer.len() >= PREFIX_BYTES, "room for the prefix");
        let length = u32::try_from(buffer.len() - PREFIX_BYTES).expect("a message fits a gRPC frame");
        buffer[0] = 0;
        buffer[1..PREFIX_BYTES].copy_from_slice(&length.to_be_bytes());
        Encoded(buffer)
    }

    /// The framed bytes: prefix and message.
    pub fn into_frame(self) -> Bytes {
        self.0.freeze()
    }

    /// The message without its prefix.
    pub fn message(&self) -> &[u8] {
        &self.0[PREFIX_BYTES..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(message: &[u8]) -> Bytes {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out.into()
    }

    #[test]
    fn messages_split_across_chunks_are_reassembled() {
        let mut decoder = MessageDecoder::new(100);
        let framed = frame(b"hello");
        decoder.push(framed.slice(..3));
        assert_eq!(decoder.next_message().unwrap(), None);
        decoder.push(framed.slice(3..));
        assert_eq!(decoder.next_message().unwrap(), Some(Bytes::from_static(b"hello")));
        assert!(decoder.finish().is_ok());
    }

    #[test]
    fn several_messages_in_one_chunk_come_out_in_order() {
        let mut decoder = MessageDecoder::new(100);
        decoder.push([frame(b"a"), frame(b""), frame(b"bc")].concat().into());
        assert_eq!(decoder.next_message().unwrap().unwrap(), "a");
        assert_eq!(decoder.next_message().unwrap().unwrap(), "");
        assert_eq!(decoder.next_message().unwrap().unwrap(), "bc");
        assert_eq!(decoder.next_message().unwrap(), None);
    }

    #[test]
    fn oversized_messages_are_refused_before_buffering() {
        let mut decoder = MessageDecoder::new(4);
        decoder.push(Bytes::from_static(&[0, 0, 0, 0, 5]));
        let status = decoder.next_message().unwrap_err();
        assert_eq!(status.code, Code::ResourceExhausted);
        assert_eq!(status.message, "grpc: received message larger than max (5 vs. 4)");
    }

    #[test]
    fn a_truncated_message_fails_at_the_end_as_grpc_go_does() {
        for cut in [3, 6] {
            let mut decoder = MessageDecoder::new(100);
            decoder.push(frame(b"hello").slice(..cut));
            assert_eq!(decoder.next_message().unwrap(), None);
            let status = decoder.finish().unwrap_err();
            assert_eq!(
                (status.code, status.message.as_str()),
                (Code::Unknown, "unexpected EOF")
            );
        }
    }

    #[test]
    fn compressed_messages_are_refused_once_complete() {
        let mut decoder = MessageDecoder::new(100);
        decoder.push(Bytes::from_static(&[1, 0, 0, 0, 2, 7]));
        assert_eq!(decoder.next_message().unwrap(), None, "waits for the whole message");
        decoder.push(Bytes::from_static(&[7]));
        let status = decoder.next_message().unwrap_err();
        assert_eq!(status.code, Code::Internal);
        assert_eq!(
            status.message,
            "grpc: compressed flag set with identity or empty encoding"
        );
    }

    #[test]
    fn unknown_payload_formats_are_internal_errors() {
        let mut decoder = MessageDecoder::new(100);
        decoder.push(Bytes::from_static(&[2, 0, 0, 0, 0]));
        let status = decoder.next_message().unwrap_err();
        assert_eq!(status.code, Code::Internal);
        assert_eq!(status.message, "grpc: received unexpected payload format 2");
    }

    #[test]
    fn the_length_is_checked_before_the_payload_format() {
        let mut decoder = MessageDecoder::new(4);
        decoder.push(Bytes::from_static(&[1, 0, 0, 0, 5]));
        assert_eq!(decoder.next_message().unwrap_err().code, Code::ResourceExhausted);
    }

    #[test]
    fn a_prefixed_message_is_framed_in_place() {
        let mut buffer = BytesMut::from(&[9u8; PREFIX_BYTES][..]);
        buffer.put_slice(b"hello");
        let encoded = Encoded::from_prefixed(buffer);
        assert_eq!(encoded.message(), b"hello");
        assert_eq!(encoded.into_frame(), frame(b"hello"));
    }

    #[test]
    fn encoded_messages_carry_their_prefix() {
        let encoded = Encoded::new(&ringkv_proto::etcdserverpb::CompactionRequest {
            revision: 3,
            physical: false,
        });
        assert_eq!(encoded.message(), &[8, 3]);
        assert_eq!(encoded.into_frame(), Bytes::from_static(&[0, 0, 0, 0, 2, 8, 3]));
    }
}

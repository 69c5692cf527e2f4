//! gRPC message framing: a 1-byte compressed flag, a 4-byte big-endian length,
//! then the message. Decoding is incremental over HTTP/2 DATA frames.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::budget::Charge;
use crate::status::{response_too_large, Code, Status, RESPONSE_BYTES_MAX};

/// Bytes before every gRPC message: compressed flag and length.
pub const PREFIX_BYTES: usize = 5;

/// Splits a stream of DATA chunks into gRPC messages.
///
/// The buffer grows only as bytes arrive, never by the length a prefix claims,
/// and what it holds is charged to its connection's budget (see `budget`).
pub struct MessageDecoder {
    buffered: BytesMut,
    max_message_bytes: usize,
    charge: Charge,
}

impl MessageDecoder {
    pub fn new(max_message_bytes: usize, charge: Charge) -> MessageDecoder {
        MessageDecoder {
            buffered: BytesMut::new(),
            max_message_bytes,
            charge,
        }
    }

    /// Adds a DATA chunk; refused if the connection's streams would buffer
    /// more than its budget.
    pub fn push(&mut self, chunk: Bytes) -> Result<(), Status> {
        self.charge.set(self.buffered.len() + chunk.len())?;
        self.buffered.extend_from_slice(&chunk);
        Ok(())
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
        let message = self.buffered.split_to(length).freeze();
        // The message is the handler's now: only what is left stays charged.
        self.charge.lower(self.buffered.len());
        Ok(Some(message))
    }

    /// The charge of the bytes still buffered, for the caller to keep.
    pub fn into_charge(self) -> Charge {
        self.charge
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
/// costs no copy; or, for a message over `RESPONSE_BYTES_MAX`, the status to
/// answer instead (nothing of it is built).
pub struct Encoded(Result<BytesMut, Status>);

impl Encoded {
    pub fn new<M: prost::Message>(message: &M) -> Encoded {
        let length = message.encoded_len();
        if length > RESPONSE_BYTES_MAX {
            return Encoded(Err(response_too_large(length, RESPONSE_BYTES_MAX)));
        }
        let mut buffer = BytesMut::with_capacity(PREFIX_BYTES + length);
        buffer.put_u8(0);
        buffer.put_u32(prefix_length(length));
        message
            .encode(&mut buffer)
            .expect("the buffer holds the encoded length");
        assert_eq!(buffer.len(), PREFIX_BYTES + length);
        Encoded(Ok(buffer))
    }

    /// Frames a message already encoded in parts (e.g. a response head plus
    /// events encoded once and shared by many responses).
    pub fn from_parts(parts: &[&[u8]]) -> Encoded {
        let length: usize = parts.iter().map(|part| part.len()).sum();
        if length > RESPONSE_BYTES_MAX {
            return Encoded(Err(response_too_large(length, RESPONSE_BYTES_MAX)));
        }
        let mut buffer = BytesMut::with_capacity(PREFIX_BYTES + length);
        buffer.put_u8(0);
        buffer.put_u32(prefix_length(length));
        for part in parts {
            buffer.put_slice(part);
        }
        Encoded(Ok(buffer))
    }

    /// Frames a message written after `PREFIX_BYTES` of room at the front of
    /// `buffer` (e.g. assembled on another core), without copying it. The
    /// builder keeps it within `RESPONSE_BYTES_MAX`.
    pub fn from_prefixed(mut buffer: BytesMut) -> Encoded {
        assert!(buffer.len() >= PREFIX_BYTES, "room for the prefix");
        let length = buffer.len() - PREFIX_BYTES;
        assert!(length <= RESPONSE_BYTES_MAX, "a message of {length} bytes was built");
        buffer[0] = 0;
        buffer[1..PREFIX_BYTES].copy_from_slice(&prefix_length(length).to_be_bytes());
        Encoded(Ok(buffer))
    }

    /// The framed bytes (prefix and message), or the status that answers a
    /// message too large to send.
    pub fn into_frame(self) -> Result<Bytes, Status> {
        self.0.map(BytesMut::freeze)
    }

    /// The message without its prefix.
    #[cfg(test)]
    pub fn message(&self) -> &[u8] {
        &self.0.as_ref().expect("a message within the limit")[PREFIX_BYTES..]
    }
}

/// The prefix's length field; `RESPONSE_BYTES_MAX` keeps every length in it.
fn prefix_length(length: usize) -> u32 {
    const _: () = assert!(RESPONSE_BYTES_MAX <= u32::MAX as usize);
    u32::try_from(length).expect("checked against RESPONSE_BYTES_MAX")
}

#[cfg(test)]
mod tests {
    use super::*;

    impl MessageDecoder {
        fn push_ok(&mut self, chunk: Bytes) {
            self.push(chunk).expect("within the budget");
        }
    }

    fn frame(message: &[u8]) -> Bytes {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out.into()
    }

    #[test]
    fn messages_split_across_chunks_are_reassembled() {
        let mut decoder = MessageDecoder::new(100, Charge::unbounded());
        let framed = frame(b"hello");
        decoder.push_ok(framed.slice(..3));
        assert_eq!(decoder.next_message().unwrap(), None);
        decoder.push_ok(framed.slice(3..));
        assert_eq!(decoder.next_message().unwrap(), Some(Bytes::from_static(b"hello")));
        assert!(decoder.finish().is_ok());
    }

    #[test]
    fn several_messages_in_one_chunk_come_out_in_order() {
        let mut decoder = MessageDecoder::new(100, Charge::unbounded());
        decoder.push_ok([frame(b"a"), frame(b""), frame(b"bc")].concat().into());
        assert_eq!(decoder.next_message().unwrap().unwrap(), "a");
        assert_eq!(decoder.next_message().unwrap().unwrap(), "");
        assert_eq!(decoder.next_message().unwrap().unwrap(), "bc");
        assert_eq!(decoder.next_message().unwrap(), None);
    }

    #[test]
    fn oversized_messages_are_refused_before_buffering() {
        let mut decoder = MessageDecoder::new(4, Charge::unbounded());
        decoder.push_ok(Bytes::from_static(&[0, 0, 0, 0, 5]));
        let status = decoder.next_message().unwrap_err();
        assert_eq!(status.code, Code::ResourceExhausted);
        assert_eq!(status.message, "grpc: received message larger than max (5 vs. 4)");
    }

    #[test]
    fn a_truncated_message_fails_at_the_end_as_grpc_go_does() {
        for cut in [3, 6] {
            let mut decoder = MessageDecoder::new(100, Charge::unbounded());
            decoder.push_ok(frame(b"hello").slice(..cut));
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
        let mut decoder = MessageDecoder::new(100, Charge::unbounded());
        decoder.push_ok(Bytes::from_static(&[1, 0, 0, 0, 2, 7]));
        assert_eq!(decoder.next_message().unwrap(), None, "waits for the whole message");
        decoder.push_ok(Bytes::from_static(&[7]));
        let status = decoder.next_message().unwrap_err();
        assert_eq!(status.code, Code::Internal);
        assert_eq!(
            status.message,
            "grpc: compressed flag set with identity or empty encoding"
        );
    }

    #[test]
    fn unknown_payload_formats_are_internal_errors() {
        let mut decoder = MessageDecoder::new(100, Charge::unbounded());
        decoder.push_ok(Bytes::from_static(&[2, 0, 0, 0, 0]));
        let status = decoder.next_message().unwrap_err();
        assert_eq!(status.code, Code::Internal);
        assert_eq!(status.message, "grpc: received unexpected payload format 2");
    }

    #[test]
    fn the_length_is_checked_before_the_payload_format() {
        let mut decoder = MessageDecoder::new(4, Charge::unbounded());
        decoder.push_ok(Bytes::from_static(&[1, 0, 0, 0, 5]));
        assert_eq!(decoder.next_message().unwrap_err().code, Code::ResourceExhausted);
    }

    #[test]
    fn a_prefixed_message_is_framed_in_place() {
        let mut buffer = BytesMut::from(&[9u8; PREFIX_BYTES][..]);
        buffer.put_slice(b"hello");
        let encoded = Encoded::from_prefixed(buffer);
        assert_eq!(encoded.message(), b"hello");
        assert_eq!(encoded.into_frame().unwrap(), frame(b"hello"));
    }

    #[test]
    fn encoded_messages_carry_their_prefix() {
        let encoded = Encoded::new(&ringkv_proto::etcdserverpb::CompactionRequest {
            revision: 3,
            physical: false,
        });
        assert_eq!(encoded.message(), &[8, 3]);
        assert_eq!(
            encoded.into_frame().unwrap(),
            Bytes::from_static(&[0, 0, 0, 0, 2, 8, 3])
        );
    }

    #[test]
    fn a_claimed_length_reserves_nothing_until_its_bytes_arrive() {
        let mut decoder = MessageDecoder::new(4 * 1024 * 1024, Charge::unbounded());
        decoder.push_ok(Bytes::from_static(&[0, 0, 0x20, 0, 0]));
        assert_eq!(decoder.next_message().unwrap(), None);
        assert!(
            decoder.buffered.capacity() < 1024,
            "a 2 MiB claim reserved {} bytes",
            decoder.buffered.capacity()
        );
    }

    #[test]
    fn a_message_over_the_send_limit_is_grpc_gos_error_and_is_not_built() {
        let encoded = Encoded::from_parts(&[&[], &[]]);
        assert_eq!(encoded.into_frame().unwrap(), Bytes::from_static(&[0, 0, 0, 0, 0]));
        let status = response_too_large(RESPONSE_BYTES_MAX + 1, RESPONSE_BYTES_MAX);
        assert_eq!(status.code, Code::ResourceExhausted);
        assert_eq!(
            status.message,
            "grpc: trying to send message larger than max (2147483648 vs. 2147483647)"
        );
    }

    /// A message whose encoding claims more than the limit: `Encoded::new`
    /// must answer the status from its length alone.
    #[derive(Debug)]
    struct Huge;

    impl prost::Message for Huge {
        fn encode_raw<B: BufMut>(&self, _: &mut B) {
            unreachable!("a message over the limit is never encoded")
        }
        fn merge_field<B: Buf>(
            &mut self,
            _: u32,
            _: prost::encoding::WireType,
            _: &mut B,
            _: prost::encoding::DecodeContext,
        ) -> Result<(), prost::DecodeError> {
            unreachable!("never decoded")
        }
        fn encoded_len(&self) -> usize {
            5 * 1024 * 1024 * 1024
        }
        fn clear(&mut self) {}
    }

    #[test]
    fn a_response_over_4_gib_answers_resource_exhausted_instead_of_aborting() {
        let status = Encoded::new(&Huge).into_frame().unwrap_err();
        assert_eq!(status.code, Code::ResourceExhausted);
        assert_eq!(
            status.message,
            "grpc: trying to send message larger than max (5368709120 vs. 2147483647)"
        );
    }
}

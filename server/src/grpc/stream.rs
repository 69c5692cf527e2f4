//! The two halves of a streaming call: decoded request messages in, framed
//! response messages out (respecting HTTP/2 flow control).

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;

use bytes::Bytes;
use h2::{RecvStream, SendStream};

use super::budget::Charge;
use super::frame::{Encoded, MessageDecoder};
use crate::status::{Code, Status};

/// Request messages of one call, decoded as DATA frames arrive.
pub struct RequestStream {
    body: RecvStream,
    decoder: MessageDecoder,
    ended: bool,
}

impl RequestStream {
    pub(super) fn new(body: RecvStream, max_message_bytes: usize, charge: Charge) -> RequestStream {
        RequestStream {
            body,
            decoder: MessageDecoder::new(max_message_bytes, charge),
            ended: false,
        }
    }

    /// The next request message; None once the client half-closed the stream.
    pub async fn next(&mut self) -> Option<Result<Bytes, Status>> {
        loop {
            match self.decoder.next_message() {
                Ok(Some(message)) => return Some(Ok(message)),
                Ok(None) => {}
                Err(status) => return Some(Err(status)),
            }
            if self.ended {
                return None;
            }
            match self.body.data().await {
                Some(Ok(chunk)) => {
                    // Return the window at once: the decoder owns the bytes now.
                    let _ = self.body.flow_control().release_capacity(chunk.len());
                    if let Err(status) = self.decoder.push(chunk) {
                        return Some(Err(status));
                    }
                }
                Some(Err(error)) => {
                    return Some(Err(Status::new(Code::Canceled, error.to_string())));
                }
                None => {
                    self.ended = true;
                    if let Err(status) = self.decoder.finish() {
                        return Some(Err(status));
                    }
                }
            }
        }
    }
}

/// Response messages of one call. The layer keeps a second handle on the stream
/// to send the status trailers once the handler returns.
pub struct ResponseSink {
    stream: Rc<RefCell<SendStream<Bytes>>>,
}

impl ResponseSink {
    pub(super) fn new(stream: Rc<RefCell<SendStream<Bytes>>>) -> ResponseSink {
        ResponseSink { stream }
    }

    /// Sends one message, waiting for flow-control window so a slow client
    /// cannot make the server buffer without bound.
    pub async fn send(&mut self, message: Encoded) -> Result<(), Status> {
        let mut frame = message.into_frame()?;
        while !frame.is_empty() {
            self.stream.borrow_mut().reserve_capacity(frame.len());
            let granted = poll_fn(|cx| self.stream.borrow_mut().poll_capacity(cx)).await;
            let granted = match granted {
                Some(Ok(granted)) => granted,
                Some(Err(error)) => return Err(Status::new(Code::Unavailable, error.to_string())),
                None => return Err(Status::new(Code::Unavailable, "the client went away")),
            };
            if granted == 0 {
                continue;
            }
            let chunk = frame.split_to(granted.min(frame.len()));
            self.stream
                .borrow_mut()
                .send_data(chunk, false)
                .map_err(|error| Status::new(Code::Unavailable, error.to_string()))?;
        }
        Ok(())
    }
}

//! The two halves of a streaming call: decoded request messages in, framed
//! response messages out (respecting HTTP/2 flow control). The JSON gateway
//! makes a call of its own: request messages it decoded, responses into a
//! bounded channel it reads from.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;

use bytes::Bytes;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use h2::{RecvStream, SendStream};

use super::budget::Charge;
use super::frame::{Encoded, MessageDecoder};
use crate::metrics::grpc::CallCount;
use crate::status::{Code, Status};

/// Request messages of one call, counted for /metrics if `count` is set.
pub struct RequestStream(Requests, Option<Rc<CallCount>>);

enum Requests {
    /// Decoded as DATA frames arrive.
    H2 {
        body: RecvStream,
        decoder: MessageDecoder,
        ended: bool,
    },
    /// Known when the call starts (the JSON gateway's).
    Given(VecDeque<Bytes>),
}

impl RequestStream {
    pub(super) fn new(
        body: RecvStream,
        max_message_bytes: usize,
        charge: Charge,
        count: Option<Rc<CallCount>>,
    ) -> RequestStream {
        let requests = Requests::H2 {
            body,
            decoder: MessageDecoder::new(max_message_bytes, charge),
            ended: false,
        };
        RequestStream(requests, count)
    }

    /// A call whose client sends `messages` and then half-closes.
    pub fn given(messages: Vec<Bytes>) -> RequestStream {
        RequestStream(Requests::Given(messages.into()), None)
    }

    /// The next request message; None once the client half-closed the stream.
    pub async fn next(&mut self) -> Option<Result<Bytes, Status>> {
        let (body, decoder, ended) = match &mut self.0 {
            Requests::H2 { body, decoder, ended } => (body, decoder, ended),
            Requests::Given(messages) => return messages.pop_front().map(Ok),
        };
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => {
                    if let Some(count) = &self.1 {
                        count.received();
                    }
                    return Some(Ok(message));
                }
                Ok(None) => {}
                Err(status) => return Some(Err(status)),
            }
            if *ended {
                return None;
            }
            match body.data().await {
                Some(Ok(chunk)) => {
                    // Return the window at once: the decoder owns the bytes now.
                    let _ = body.flow_control().release_capacity(chunk.len());
                    if let Err(status) = decoder.push(chunk) {
                        return Some(Err(status));
                    }
                }
                Some(Err(error)) => {
                    return Some(Err(Status::new(Code::Canceled, error.to_string())));
                }
                None => {
                    *ended = true;
                    if let Err(status) = decoder.finish() {
                        return Some(Err(status));
                    }
                }
            }
        }
    }
}

/// Response messages of one call, counted for /metrics if `count` is set.
pub struct ResponseSink(Responses, Option<Rc<CallCount>>);

enum Responses {
    /// The layer keeps a second handle on the stream to send the status
    /// trailers once the handler returns.
    H2(Rc<RefCell<SendStream<Bytes>>>),
    /// Framed messages for the JSON gateway, which writes them out.
    Channel(LocalSender<Bytes>),
}

impl ResponseSink {
    pub(super) fn new(stream: Rc<RefCell<SendStream<Bytes>>>, count: Option<Rc<CallCount>>) -> ResponseSink {
        ResponseSink(Responses::H2(stream), count)
    }

    /// A sink whose framed messages `receiver` gets, at most `bounded`
    /// waiting: the sender waits for room as for an HTTP/2 window.
    pub fn channel(bounded: usize) -> (ResponseSink, LocalReceiver<Bytes>) {
        let (sender, receiver) = local_channel::new_bounded(bounded);
        (ResponseSink(Responses::Channel(sender), None), receiver)
    }

    /// Sends one message, waiting for flow-control window (or channel room)
    /// so a slow client cannot make the server buffer without bound.
    pub async fn send(&mut self, message: Encoded) -> Result<(), Status> {
        let mut frame = message.into_frame()?;
        let stream = match &self.0 {
            Responses::H2(stream) => stream,
            Responses::Channel(sender) => {
                return sender
                    .send(frame)
                    .await
                    .map_err(|_| Status::new(Code::Unavailable, "the client went away"));
            }
        };
        while !frame.is_empty() {
            stream.borrow_mut().reserve_capacity(frame.len());
            let granted = poll_fn(|cx| stream.borrow_mut().poll_capacity(cx)).await;
            let granted = match granted {
                Some(Ok(granted)) => granted,
                Some(Err(error)) => return Err(Status::new(Code::Unavailable, error.to_string())),
                None => return Err(Status::new(Code::Unavailable, "the client went away")),
            };
            if granted == 0 {
                continue;
            }
            let chunk = frame.split_to(granted.min(frame.len()));
            stream
                .borrow_mut()
                .send_data(chunk, false)
                .map_err(|error| Status::new(Code::Unavailable, error.to_string()))?;
        }
        if let Some(count) = &self.1 {
            count.sent();
        }
        Ok(())
    }
}

//! Sending the watchers' notices to the client cores without ever waiting.
//!
//! The store core must not block on a client core, so pushes go out with
//! `try_send`; a push that does not fit waits here and is retried after the next
//! pass. What can wait here is bounded: every event notice counts against its
//! stream's window, and control notices are bounded by the commands a stream may
//! have in flight.

use std::collections::VecDeque;

use glommio::channels::shared_channel::ConnectedSender;
use ringkv_proto::etcdserverpb as pb;

use super::Watchers;
use crate::watch::WatchPush;

pub struct WatchOutlet {
    senders: Vec<ConnectedSender<WatchPush>>,
    waiting: Vec<VecDeque<WatchPush>>,
}

impl WatchOutlet {
    pub fn new(senders: Vec<ConnectedSender<WatchPush>>) -> WatchOutlet {
        let waiting = senders.iter().map(|_| VecDeque::new()).collect();
        WatchOutlet { senders, waiting }
    }

    pub fn client_cores(&self) -> usize {
        self.senders.len()
    }

    /// Moves every notice the watchers produced towards its client core.
    pub fn flush(&mut self, watchers: &mut Watchers, header: &pb::ResponseHeader) {
        for (client, sender) in self.senders.iter().enumerate() {
            let notices = watchers.take_outbox(client);
            let waiting = &mut self.waiting[client];
            if !notices.is_empty() {
                waiting.push_back(WatchPush {
                    header: header.clone(),
                    notices,
                });
            }
            while let Some(push) = waiting.pop_front() {
                match sender.try_send(push) {
                    Ok(()) => {}
                    Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(push))) => {
                        waiting.push_front(push);
                        break;
                    }
                    // The client core stopped: nobody is left to tell.
                    Err(_) => waiting.clear(),
                }
            }
        }
    }
}

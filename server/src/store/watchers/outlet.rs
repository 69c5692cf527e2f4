//! Sending the watchers' notices to the client cores without ever waiting.
//!
//! The store core must not block on a client core, so pushes go out with
//! `try_send`; a push that does not fit waits here and is retried after the next
//! pass. What can wait here is bounded: every event notice counts against its
//! stream's window, and control notices are bounded by the commands a stream may
//! have in flight.

use std::collections::VecDeque;

use glommio::channels::shared_channel::ConnectedSender;

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

    /// Queues a push for client core `client` (see `flush`).
    pub fn push(&mut self, client: usize, push: WatchPush) {
        self.waiting[client].push_back(push);
    }

    /// Moves what waits towards the client cores, as far as their channels take it.
    pub fn flush(&mut self) {
        for (sender, waiting) in self.senders.iter().zip(&mut self.waiting) {
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

//! What peers send the store core, beyond raft's own messages in the Ready
//! loop: the screen in front of raft, and ringkv's messages the transport
//! could not deliver.

use raft::eraftpb::Message as RaftMessage;

use super::{Awaited, StoreCore};
use crate::etcd_error::EtcdError;
use crate::peer::{screen, PeerMessage};

impl StoreCore {
    /// A message of this member's that the transport could not queue for
    /// peer `to`: a call waiting for its answer fails now. (Answers and raft
    /// messages need nothing: the asker times out, raft sends again.)
    pub(super) fn undelivered(&mut self, to: u64, message: PeerMessage) {
        tracing::debug!(to = format_args!("{to:x}"), "message to a peer not queued");
        let (request_id, asked): (u64, fn(&Awaited) -> bool) = match message {
            PeerMessage::LeaseForward(forward) => (forward.request_id, |awaited| *awaited == Awaited::LeaseAnswer),
            PeerMessage::PromoteCheck(check) if !check.answered => (check.request_id, |awaited| {
                matches!(awaited, Awaited::PromoteVerdict { .. })
            }),
            _ => return,
        };
        if let Some(waiting) = self.waiting.remove_if(request_id, asked) {
            self.reply(waiting.client, waiting.call_id, Err(EtcdError::NoLeader));
        }
    }

    /// Whether a raft message from a peer may be stepped: the screen drops
    /// what would stop raft-rs (see `peer::screen`).
    pub(super) fn screen_admits(&mut self, message: &RaftMessage) -> bool {
        let Err(dropped) = screen::check(&self.raw.raft, message) else {
            return true;
        };
        self.metrics.raft_messages_screened += 1;
        if let Some(held_back) = self.screened_warnings.allow() {
            tracing::warn!(
                from = format_args!("{:x}", message.from),
                %dropped,
                held_back,
                "raft message from a peer dropped: stepping it could stop this member"
            );
        }
        false
    }
}

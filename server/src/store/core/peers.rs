//! What peers send the store core, beyond raft's own messages in the Ready
//! loop: the screen in front of raft, and ringkv's messages the transport
//! could not deliver.

use raft::eraftpb::Message as RaftMessage;

use super::StoreCore;
use crate::peer::{screen, PeerMessage};
impl StoreCore {
    /// A message of this member's that the transport could not queue for
    /// peer `to`: a call waiting for its answer fails now. (Answers and raft
    /// messages need nothing: the asker times out, raft sends again.)
    pub(super) fn undelivered(&mut self, to: u64, message: PeerMessage) {
        tracing::debug!(to = format_args!("{to:x}"), "message to a peer not queued");
        match message {
            PeerMessage::LeaseForward(forward) => self.lease_forward_undelivered(forward.request_id),
            PeerMessage::PromoteCheck(check) if !check.answered => self.promote_check_undelivered(check.request_id),
            _ => {}
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

//! This member's membership changes on their way into raft, one at a time:
//! raft-rs takes one configuration change at a time (a leader silently turns
//! a second into an empty entry while the first is unapplied), so the others
//! wait here, in order, within their callers' request timeout (see `members`).

use std::collections::VecDeque;

use raft::eraftpb::ConfChangeV2;

/// Configuration changes waiting for this member's one in flight (a bound on
/// what callers can queue; the next one gets etcd's "too many requests").
pub(super) const CONF_CHANGES_QUEUED_MAX: usize = 64;

/// A configuration change waiting to be proposed; its caller waits under
/// `request_id`.
#[derive(Debug, PartialEq)]
pub(super) struct QueuedConfChange {
    pub request_id: u64,
    pub change: ConfChangeV2,
}

/// The queue is full.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct QueueFull;

#[derive(Default)]
pub(super) struct ConfChangeQueue {
    queued: VecDeque<QueuedConfChange>,
    /// The request id of the change proposed last; in flight while its
    /// caller still waits.
    proposed: Option<u64>,
}

impl ConfChangeQueue {
    pub fn push(&mut self, queued: QueuedConfChange) -> Result<(), QueueFull> {
        if self.queued.len() >= CONF_CHANGES_QUEUED_MAX {
            return Err(QueueFull);
        }
        self.queued.push_back(queued);
        Ok(())
    }

    /// The next change to propose, if one may go now: none of this member's
    /// is in flight, and raft has none pending (`raft_busy`). Changes whose
    /// caller stopped waiting (`still_waiting`) are dropped on the way.
    pub fn next(&mut self, still_waiting: impl Fn(u64) -> bool, raft_busy: bool) -> Option<QueuedConfChange> {
        while let Some(front) = self.queued.front() {
            if !still_waiting(front.request_id) {
                self.queued.pop_front(); // timed out while queued
                continue;
            }
            let in_flight = self.proposed.is_some_and(&still_waiting);
            if in_flight || raft_busy {
                return None;
            }
            return self.queued.pop_front();
        }
        None
    }

    /// The change `next` gave was taken by raft.
    pub fn proposed(&mut self, request_id: u64) {
        self.proposed = Some(request_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(request_id: u64) -> QueuedConfChange {
        QueuedConfChange {
            request_id,
            change: ConfChangeV2::default(),
        }
    }

    #[test]
    fn one_change_in_flight_at_a_time() {
        let mut queue = ConfChangeQueue::default();
        queue.push(queued(1)).unwrap();
        queue.push(queued(2)).unwrap();
        let waiting = |_: u64| true;
        assert_eq!(
            queue.next(waiting, true).map(|q| q.request_id),
            None,
            "raft has one pending"
        );
        let first = queue.next(waiting, false).expect("free to go");
        assert_eq!(first.request_id, 1);
        queue.proposed(1);
        assert_eq!(queue.next(waiting, false), None, "1 is in flight");
        let answered = |id: u64| id != 1;
        assert_eq!(queue.next(answered, false).map(|q| q.request_id), Some(2));
    }

    #[test]
    fn a_change_whose_caller_stopped_waiting_is_dropped() {
        let mut queue = ConfChangeQueue::default();
        queue.push(queued(1)).unwrap();
        queue.push(queued(2)).unwrap();
        let expired = |id: u64| id != 1;
        assert_eq!(queue.next(expired, false).map(|q| q.request_id), Some(2));
        assert_eq!(queue.next(expired, false), None);
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut queue = ConfChangeQueue::default();
        for id in 0..CONF_CHANGES_QUEUED_MAX as u64 {
            queue.push(queued(id)).unwrap();
        }
        assert_eq!(queue.push(queued(99)), Err(QueueFull));
    }
}

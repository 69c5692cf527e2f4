//! Publishing this member's attributes (name, client URLs) as etcd's
//! `publish` does, every start: proposed once there is a leader, again every
//! few ticks until one of this run's proposals is applied. Clients are let in
//! only then (etcd's `ReadyNotify`).

#[derive(Debug, Default)]
pub(super) struct Publication {
    published: bool,
    /// The tick of the last attempt.
    attempted_at: Option<u64>,
    /// Request ids of this run's proposals: only applying one of them shows
    /// this member has caught up (an entry of an earlier run holding the same
    /// attributes may be applied long before).
    proposed: Vec<u64>,
}

impl Publication {
    pub fn published(&self) -> bool {
        self.published
    }

    /// Whether to propose at tick `tick`: not published, and no attempt in
    /// the last `retry_ticks` (one in flight is enough; it may be lost with a
    /// leader change).
    pub fn due(&self, tick: u64, retry_ticks: u64) -> bool {
        !self.published
            && self
                .attempted_at
                .is_none_or(|attempted| tick >= attempted + retry_ticks)
    }

    /// An attempt at `tick`; `request_id` if raft took the proposal.
    pub fn attempted(&mut self, tick: u64, request_id: Option<u64>) {
        self.attempted_at = Some(tick);
        self.proposed.extend(request_id);
    }

    /// Entry `request_id` holding attributes was applied.
    pub fn applied(&mut self, request_id: u64) {
        if self.proposed.contains(&request_id) {
            self.published = true;
            self.proposed = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_is_retried_after_the_retry_ticks_until_one_is_applied() {
        let mut publication = Publication::default();
        assert!(publication.due(0, 5));
        publication.attempted(0, Some(11));
        assert!(!publication.due(4, 5));
        assert!(publication.due(5, 5));
        publication.attempted(5, None);
        publication.applied(99);
        assert!(!publication.published(), "an entry of an earlier run");
        publication.applied(11);
        assert!(publication.published());
        assert!(!publication.due(100, 5));
    }
}

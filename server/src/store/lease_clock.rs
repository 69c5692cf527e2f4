//! The leader's lease clock: when each lease expires, which expired leases are
//! due for a revoke proposal, and KeepAlives waiting for such a revoke.
//!
//! Leases themselves (ids, TTLs, attached keys) are stored state in MVCC and
//! change only by applying raft entries. Their deadlines are not: as in etcd's
//! lessor, only the leader keeps time. A follower never expires anything; a
//! member that becomes leader gives every lease its full TTL plus an election
//! timeout (etcd's `Promote(electionTimeout)` without LeaseCheckpoint), and so
//! does a restart, which starts as a follower. KeepAlive renewals change only the
//! deadline, on the leader, without raft.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

/// etcd's `expiredLeaseRetryInterval`: an expired lease whose revoke proposal was
/// not applied by then is proposed again.
pub const REVOKE_RETRY_INTERVAL: Duration = Duration::from_secs(3);
/// Revokes proposed per check (one check per 100 ms raft tick): etcd's
/// `leaseRevokeRate` of 1000 per second.
pub const EXPIRED_REVOKES_PER_CHECK_MAX: usize = 100;

/// Whose KeepAlive it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAliveFrom {
    /// A call of client core `client` on this member.
    Client { client: usize, call_id: u64 },
    /// A follower's call forwarded to this member (the leader).
    Peer { from: u64, request_id: u64 },
}

/// What a KeepAlive of an existing lease gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Renewed to its full TTL (seconds).
    Renewed(i64),
    /// Expired and being revoked: the answer waits for the revoke (etcd's
    /// `Renew` waits on `revokec`, then says the lease is gone): the revoke
    /// proposed may be lost with this leader, and the next one give the
    /// lease a new deadline.
    Expiring,
    /// Only the leader renews.
    NotLeader,
}

#[derive(Debug, Default)]
pub struct LeaseClock {
    leading: bool,
    deadline_of: HashMap<i64, Instant>,
    /// The same deadlines, soonest first.
    by_deadline: BTreeSet<(Instant, i64)>,
    /// Expired leases whose revoke was proposed and not yet applied.
    expiring: HashSet<i64>,
    /// KeepAlives waiting for an expiring lease's revoke to be applied.
    parked: HashMap<i64, Vec<KeepAliveFrom>>,
    /// Damage for the simulation's lease check to catch: every deadline
    /// comes this much early.
    #[cfg(feature = "sim")]
    early_by: Duration,
}

impl LeaseClock {
    pub fn is_leading(&self) -> bool {
        self.leading
    }

    /// This member became leader: every lease (id, ttl) lives `ttl + extend` from now.
    pub fn promote(&mut self, now: Instant, extend: Duration, leases: impl Iterator<Item = (i64, i64)>) {
        assert!(!self.leading, "promoted twice");
        assert!(self.deadline_of.is_empty() && self.expiring.is_empty() && self.parked.is_empty());
        self.leading = true;
        for (id, ttl) in leases {
            self.set_deadline(id, now + extend + seconds(ttl));
        }
    }

    /// This member stopped leading: no lease expires here any more. Returns the
    /// KeepAlives that were waiting, with their lease, in lease order (etcd
    /// answers them "not primary").
    pub fn demote(&mut self) -> Vec<(i64, KeepAliveFrom)> {
        self.leading = false;
        self.deadline_of.clear();
        self.by_deadline.clear();
        self.expiring.clear();
        let mut parked: Vec<(i64, Vec<KeepAliveFrom>)> = self.parked.drain().collect();
        parked.sort_unstable_by_key(|&(id, _)| id);
        parked
            .into_iter()
            .flat_map(|(id, waiting)| waiting.into_iter().map(move |from| (id, from)))
            .collect()
    }

    /// Lease `id` was granted (applied).
    pub fn granted(&mut self, now: Instant, id: i64, ttl: i64) {
        if self.leading {
            assert!(!self.deadline_of.contains_key(&id), "lease {id} granted twice");
            self.set_deadline(id, now + seconds(ttl));
        }
    }

    /// Lease `id` was revoked (applied). Returns the KeepAlives waiting for that.
    pub fn revoked(&mut self, id: i64) -> Vec<KeepAliveFrom> {
        if let Some(deadline) = self.deadline_of.remove(&id) {
            assert!(self.by_deadline.remove(&(deadline, id)));
        }
        self.expiring.remove(&id);
        self.parked.remove(&id).unwrap_or_default()
    }

    /// A KeepAlive of existing lease `id` whose TTL is `ttl`.
    pub fn renew(&mut self, now: Instant, id: i64, ttl: i64) -> Renewal {
        if !self.leading {
            return Renewal::NotLeader;
        }
        if self.expiring.contains(&id) || self.deadline_of.get(&id).is_some_and(|&deadline| deadline <= now) {
            return Renewal::Expiring;
        }
        self.set_deadline(id, now + seconds(ttl));
        Renewal::Renewed(ttl)
    }

    /// Makes a KeepAlive wait until lease `id`'s revoke is applied.
    pub fn park(&mut self, id: i64, keep_alive: KeepAliveFrom) {
        assert!(self.leading);
        self.parked.entry(id).or_default().push(keep_alive);
    }

    /// Whole seconds left of lease `id` (etcd truncates), 0 once expired; None
    /// unless leading.
    pub fn remaining_seconds(&self, now: Instant, id: i64) -> Option<i64> {
        if !self.leading {
            return None;
        }
        if self.expiring.contains(&id) {
            return Some(0);
        }
        let deadline = self.deadline_of.get(&id).expect("the leader times every lease");
        let left = deadline.saturating_duration_since(now).as_secs();
        Some(i64::try_from(left).expect("TTLs are at most 9e9 seconds"))
    }

    /// When lease `id` expires, if this member keeps time for it.
    pub fn deadline(&self, id: i64) -> Option<Instant> {
        self.deadline_of.get(&id).copied()
    }

    /// Expired leases to propose a revoke for now, at most `max`: each is due
    /// again after `REVOKE_RETRY_INTERVAL` if its revoke was not applied by then.
    pub fn due_for_revoke(&mut self, now: Instant, max: usize) -> Vec<i64> {
        if !self.leading {
            return Vec::new();
        }
        let due: Vec<i64> = self
            .by_deadline
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .take(max)
            .map(|&(_, id)| id)
            .collect();
        for &id in &due {
            self.expiring.insert(id);
            self.set_deadline(id, now + REVOKE_RETRY_INTERVAL);
        }
        due
    }

    /// Damage for the simulation's lease check to catch (its own test):
    /// every deadline set from now on comes `by` early.
    #[cfg(feature = "sim")]
    pub fn expire_early(&mut self, by: Duration) {
        self.early_by = by;
    }

    fn set_deadline(&mut self, id: i64, deadline: Instant) {
        #[cfg(feature = "sim")]
        let deadline = deadline.checked_sub(self.early_by).unwrap_or(deadline);
        if let Some(old) = self.deadline_of.insert(id, deadline) {
            assert!(self.by_deadline.remove(&(old, id)));
        }
        assert!(self.by_deadline.insert((deadline, id)));
        assert_eq!(self.deadline_of.len(), self.by_deadline.len());
    }
}

fn seconds(ttl: i64) -> Duration {
    assert!(ttl > 0, "stored TTLs are positive");
    Duration::from_secs(ttl.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARKED: KeepAliveFrom = KeepAliveFrom::Client { client: 0, call_id: 7 };

    fn leader(now: Instant) -> LeaseClock {
        let mut clock = LeaseClock::default();
        clock.promote(now, Duration::from_secs(1), std::iter::empty());
        clock
    }

    #[test]
    fn a_follower_never_expires_or_renews() {
        let now = Instant::now();
        let mut clock = LeaseClock::default();
        clock.granted(now, 1, 5);
        assert!(clock.due_for_revoke(now + Duration::from_secs(60), 10).is_empty());
        assert_eq!(clock.renew(now, 1, 5), Renewal::NotLeader);
        assert_eq!(clock.remaining_seconds(now, 1), None);
    }

    #[test]
    fn promotion_gives_full_ttl_plus_the_election_timeout() {
        let now = Instant::now();
        let mut clock = LeaseClock::default();
        clock.promote(now, Duration::from_secs(1), [(1, 5)].into_iter());
        assert_eq!(clock.remaining_seconds(now, 1), Some(6));
        assert!(clock.due_for_revoke(now + Duration::from_millis(5999), 10).is_empty());
        assert_eq!(clock.due_for_revoke(now + Duration::from_secs(6), 10), vec![1]);
    }

    #[test]
    fn a_renewal_moves_the_deadline() {
        let now = Instant::now();
        let mut clock = leader(now);
        clock.granted(now, 1, 2);
        let later = now + Duration::from_millis(1500);
        assert_eq!(clock.renew(later, 1, 2), Renewal::Renewed(2));
        assert!(clock.due_for_revoke(now + Duration::from_secs(3), 10).is_empty());
        assert_eq!(clock.due_for_revoke(later + Duration::from_secs(2), 10), vec![1]);
    }

    #[test]
    fn an_expired_lease_is_proposed_again_after_the_retry_interval() {
        let now = Instant::now();
        let mut clock = leader(now);
        clock.granted(now, 1, 2);
        let expired = now + Duration::from_secs(2);
        assert_eq!(clock.due_for_revoke(expired, 10), vec![1]);
        assert!(clock.due_for_revoke(expired + Duration::from_secs(1), 10).is_empty());
        assert_eq!(clock.due_for_revoke(expired + REVOKE_RETRY_INTERVAL, 10), vec![1]);
    }

    #[test]
    fn keep_alives_of_an_expiring_lease_wait_for_the_revoke() {
        let now = Instant::now();
        let mut clock = leader(now);
        clock.granted(now, 1, 2);
        let expired = now + Duration::from_secs(3);
        assert_eq!(clock.renew(expired, 1, 2), Renewal::Expiring);
        clock.park(1, PARKED);
        assert_eq!(clock.remaining_seconds(expired, 1), Some(0));
        assert_eq!(clock.revoked(1), vec![PARKED]);
        assert!(clock.due_for_revoke(expired + Duration::from_secs(60), 10).is_empty());
    }

    #[test]
    fn revokes_per_check_are_bounded() {
        let now = Instant::now();
        let mut clock = leader(now);
        for id in 1..=5 {
            clock.granted(now, id, 2);
        }
        let expired = now + Duration::from_secs(2);
        assert_eq!(clock.due_for_revoke(expired, 3).len(), 3);
        assert_eq!(clock.due_for_revoke(expired, 3).len(), 2);
    }

    #[test]
    fn demotion_releases_waiting_keep_alives() {
        let now = Instant::now();
        let mut clock = leader(now);
        clock.granted(now, 1, 2);
        clock.park(1, PARKED);
        assert_eq!(clock.demote(), vec![(1, PARKED)]);
        assert!(!clock.is_leading());
    }
}

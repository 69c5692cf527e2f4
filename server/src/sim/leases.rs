//! Leases in the simulation: what the clients were told (grants and
//! KeepAlives answered with a TTL, KeepAlives and revokes that found a lease
//! gone), what the members decided (the core's `LeaseAudit`: which member's
//! clock expired a lease, which entry removed it and when it was first
//! applied), and the checks over both after the run.
//!
//! The promise a lease makes: a client that asked at virtual time `s` for a
//! grant or KeepAlive answered with TTL `T` may count on the lease until `s + T`
//! (the ask, not the answer: the leader started the TTL somewhere in between,
//! and the answer's trip back is no member's to account for). So, by the clock
//! of the member that expired it, a lease is not expired before `T` has passed
//! since `s` on that same clock. Measured on the expiring leader's own clock,
//! a lease it renewed itself needs no slack for drift; one renewed by an
//! earlier leader relies on the `election timeout` the new leader adds to
//! every lease, which must cover how long the earlier one could still renew.

use std::collections::{BTreeMap, HashMap};

use rand::rngs::StdRng;
use rand::Rng;

use super::lincheck::{self, Op, Outcome};
use crate::store::core::LeaseAudit;

/// The client number lease ends carry in the linearizability history.
const LEASE_END_CLIENT: u32 = u32::MAX;

/// A lease the clients know of (its grant was answered).
#[derive(Debug, Clone, Copy)]
struct KnownLease {
    id: i64,
    /// The clients keep it alive until this virtual time (µs), then let it lapse.
    keep_until_us: u64,
}

/// A grant or KeepAlive answered with a TTL.
#[derive(Debug, Clone, Copy)]
struct Promise {
    lease: i64,
    invoke_us: u64,
    complete_us: u64,
    ttl_seconds: i64,
    /// The member the client called.
    member: usize,
}

/// What a client was told of a lease it asked a revoke or KeepAlive of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAnswer {
    /// A KeepAlive answered TTL 0: the lease is gone.
    KeepAliveGone,
    /// A revoke answered ok: this revoke removed the lease.
    Revoked,
    /// A revoke answered "lease not found".
    RevokeNotFound,
    /// No answer the client could rely on (an error, a timeout, a crash).
    Unknown,
}

#[derive(Debug, Clone, Copy)]
struct Answered {
    lease: i64,
    invoke_us: u64,
    complete_us: u64,
    answer: LeaseAnswer,
}

/// A member's clock expired a lease and it proposed the revoke.
#[derive(Debug, Clone, Copy)]
struct ExpiryProposal {
    lease: i64,
    member: usize,
    virtual_us: u64,
    /// The proposer's monotonic clock then (`MemberClock::local_us`).
    local_us: u64,
}

/// The entry that removed a lease, and when a member first applied it.
#[derive(Debug, Clone, Copy)]
struct Removal {
    entry_id: u64,
    first_applied_us: u64,
}

#[derive(Debug, Default)]
pub struct LeaseBook {
    known: Vec<KnownLease>,
    promises: Vec<Promise>,
    answered: Vec<Answered>,
    /// Invoke times of the clients' revokes, by lease.
    revoke_invokes: BTreeMap<i64, Vec<u64>>,
    /// Expiry revokes proposed, by entry id.
    expiry_proposals: HashMap<u64, ExpiryProposal>,
    removals: BTreeMap<i64, Removal>,
}

impl LeaseBook {
    /// A known lease to keep alive (None once the clients let all lapse).
    pub fn pick_kept(&self, rng: &mut StdRng, now_us: u64) -> Option<i64> {
        let kept: Vec<i64> = self
            .known
            .iter()
            .filter(|lease| lease.keep_until_us > now_us)
            .map(|lease| lease.id)
            .collect();
        (!kept.is_empty()).then(|| kept[rng.gen_range(0..kept.len())])
    }

    /// Any known lease, ended or not (a put with an ended lease must fail).
    pub fn pick_known(&self, rng: &mut StdRng) -> Option<i64> {
        (!self.known.is_empty()).then(|| self.known[rng.gen_range(0..self.known.len())].id)
    }

    /// Leases the clients still keep alive.
    pub fn kept_count(&self, now_us: u64) -> usize {
        self.known.iter().filter(|lease| lease.keep_until_us > now_us).count()
    }

    /// A grant answered: lease `lease` with `ttl_seconds`, kept alive until `keep_until_us`.
    pub fn granted(&mut self, lease: i64, ttl_seconds: i64, call: (usize, u64, u64), keep_until_us: u64) {
        self.known.push(KnownLease {
            id: lease,
            keep_until_us,
        });
        self.promised(lease, ttl_seconds, call);
    }

    /// A grant or KeepAlive of `lease`, made to member `call.0` over
    /// [`call.1`, `call.2`], answered with `ttl_seconds` (0: the lease is gone).
    pub fn promised(&mut self, lease: i64, ttl_seconds: i64, (member, invoke_us, complete_us): (usize, u64, u64)) {
        if ttl_seconds == 0 {
            return self.answered(lease, invoke_us, complete_us, LeaseAnswer::KeepAliveGone);
        }
        self.promises.push(Promise {
            lease,
            invoke_us,
            complete_us,
            ttl_seconds,
            member,
        });
    }

    /// A client invoked a revoke of `lease` at `invoke_us`.
    pub fn revoking(&mut self, lease: i64, invoke_us: u64) {
        self.revoke_invokes.entry(lease).or_default().push(invoke_us);
        // Nobody keeps a lease alive that a client revokes.
        for known in self.known.iter_mut().filter(|known| known.id == lease) {
            known.keep_until_us = 0;
        }
    }

    pub fn answered(&mut self, lease: i64, invoke_us: u64, complete_us: u64, answer: LeaseAnswer) {
        if answer != LeaseAnswer::Unknown {
            self.answered.push(Answered {
                lease,
                invoke_us,
                complete_us,
                answer,
            });
        }
    }

    /// What member `member` decided at virtual time `virtual_us`, its
    /// monotonic clock reading `local_us`. Errs if two entries removed one lease.
    pub fn audit(&mut self, member: usize, virtual_us: u64, local_us: u64, audit: LeaseAudit) -> Result<(), String> {
        match audit {
            LeaseAudit::ExpiryProposed { lease, entry_id } => {
                let proposal = ExpiryProposal {
                    lease,
                    member,
                    virtual_us,
                    local_us,
                };
                self.expiry_proposals.insert(entry_id, proposal);
            }
            LeaseAudit::RevokeApplied {
                lease,
                entry_id,
                removed: true,
            } => {
                if let Some(proposal) = self.expiry_proposals.get(&entry_id) {
                    assert_eq!(
                        proposal.lease, lease,
                        "entry {entry_id:x} revokes the lease it was proposed for"
                    );
                }
                let removal = self.removals.entry(lease).or_insert(Removal {
                    entry_id,
                    first_applied_us: virtual_us,
                });
                if removal.entry_id != entry_id {
                    return Err(format!(
                        "lease {lease:x} removed by entry {:x} and, on member {member}, by entry {entry_id:x}",
                        removal.entry_id
                    ));
                }
            }
            LeaseAudit::RevokeApplied { removed: false, .. } => {}
        }
        Ok(())
    }

    /// When the removal of `lease` began: its expiry proposal, or the first
    /// client revoke of it (one of them proposed the entry).
    fn removal_began_us(&self, lease: i64, removal: &Removal) -> Result<u64, String> {
        if let Some(proposal) = self.expiry_proposals.get(&removal.entry_id) {
            return Ok(proposal.virtual_us);
        }
        let first_revoke = self.revoke_invokes.get(&lease).and_then(|invokes| invokes.iter().min());
        first_revoke.copied().ok_or_else(|| {
            format!(
                "lease {lease:x} removed by entry {:x}, which no expiry and no client proposed",
                removal.entry_id
            )
        })
    }

    /// Each lease's end, as the linearizability history's `LeaseEnd`: it
    /// took effect between the proposal and the first apply of its entry.
    pub fn lease_ends(&self) -> Result<Vec<lincheck::Event>, String> {
        let mut ends = Vec::with_capacity(self.removals.len());
        for (&lease, removal) in &self.removals {
            let began_us = self.removal_began_us(lease, removal)?;
            ends.push(lincheck::Event {
                client: LEASE_END_CLIENT,
                op: Op::LeaseEnd { lease },
                invoke: began_us * 1000,
                complete: Some(removal.first_applied_us * 1000),
                outcome: Outcome::LeaseEnded,
            });
        }
        Ok(ends)
    }

    /// The checks: no lease expired early by its expiring leader's clock
    /// (`local_us(member, virtual_us)` reads a member's monotonic clock), and
    /// every answer that a lease was gone, or revoked, agrees with its removal.
    pub fn check(&self, local_us: impl Fn(usize, u64) -> u64) -> Result<(), String> {
        for promise in &self.promises {
            self.check_promise(promise, &local_us)?;
        }
        for answered in &self.answered {
            self.check_answer(answered)?;
        }
        Ok(())
    }

    fn check_promise(&self, promise: &Promise, local_us: &impl Fn(usize, u64) -> u64) -> Result<(), String> {
        let Some(removal) = self.removals.get(&promise.lease) else {
            return Ok(());
        };
        let Some(expiry) = self.expiry_proposals.get(&removal.entry_id) else {
            return Ok(()); // a client revoked it
        };
        let asked_us = i128::from(local_us(expiry.member, promise.invoke_us));
        let lived_us = i128::from(expiry.local_us) - asked_us;
        let promised_us = i128::from(promise.ttl_seconds) * 1_000_000;
        if lived_us >= promised_us {
            return Ok(());
        }
        Err(format!(
            "lease {:x} expired early: asked of member {} at {} µs and answered at {} µs with TTL {} s, \
             its revoke proposed by member {} at {} µs, when that member's clock had counted {} µs since the ask",
            promise.lease,
            promise.member,
            promise.invoke_us,
            promise.complete_us,
            promise.ttl_seconds,
            expiry.member,
            expiry.virtual_us,
            lived_us
        ))
    }

    /// Every expiry of `lease` proposed, (member, virtual µs), soonest first.
    fn expiries_proposed(&self, lease: i64) -> Vec<(usize, u64)> {
        let mut proposed: Vec<(usize, u64)> = self
            .expiry_proposals
            .values()
            .filter(|proposal| proposal.lease == lease)
            .map(|proposal| (proposal.member, proposal.virtual_us))
            .collect();
        proposed.sort_unstable_by_key(|&(_, at)| at);
        proposed
    }

    fn check_answer(&self, answered: &Answered) -> Result<(), String> {
        let lease = answered.lease;
        let removal = self.removals.get(&lease);
        match answered.answer {
            LeaseAnswer::KeepAliveGone | LeaseAnswer::RevokeNotFound => {
                let began_us = removal
                    .map(|removal| self.removal_began_us(lease, removal))
                    .transpose()?;
                if began_us.is_some_and(|began_us| began_us < answered.complete_us) {
                    return Ok(());
                }
                Err(format!(
                    "lease {lease:x} was answered gone ({:?}, over [{}, {}] µs) before anything revoked it \
                     (its removal began at {began_us:?} µs; expiries proposed (member, µs): {:?})",
                    answered.answer,
                    answered.invoke_us,
                    answered.complete_us,
                    self.expiries_proposed(lease)
                ))
            }
            LeaseAnswer::Revoked => match removal {
                Some(removal) if !self.expiry_proposals.contains_key(&removal.entry_id) => Ok(()),
                _ => Err(format!(
                    "a revoke of lease {lease:x} was answered ok over [{}, {}] µs, but {}",
                    answered.invoke_us,
                    answered.complete_us,
                    match removal {
                        Some(_) => "its expiry removed it",
                        None => "no entry removed it",
                    }
                )),
            },
            LeaseAnswer::Unknown => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND_US: u64 = 1_000_000;

    /// A book where member 1 granted lease 7 (TTL 2 s) asked at 1 s, and
    /// member 0 proposed its expiry at `expired_us` (entry 70).
    fn expired_at(expired_us: u64) -> LeaseBook {
        let mut book = LeaseBook::default();
        book.granted(7, 2, (1, SECOND_US, SECOND_US + 500), 0);
        let proposed = LeaseAudit::ExpiryProposed { lease: 7, entry_id: 70 };
        book.audit(0, expired_us, expired_us, proposed).unwrap();
        let applied = LeaseAudit::RevokeApplied {
            lease: 7,
            entry_id: 70,
            removed: true,
        };
        book.audit(2, expired_us + 100, 0, applied).unwrap();
        book
    }

    #[test]
    fn a_lease_expired_after_its_ttl_since_the_ask_passes() {
        let book = expired_at(3 * SECOND_US);
        assert_eq!(book.check(|_, virtual_us| virtual_us), Ok(()));
    }

    #[test]
    fn a_lease_expired_before_its_ttl_since_the_ask_fails() {
        let book = expired_at(3 * SECOND_US - 1);
        let error = book.check(|_, virtual_us| virtual_us).unwrap_err();
        assert!(error.contains("expired early"), "{error}");
    }

    #[test]
    fn the_ttl_is_measured_on_the_expiring_members_clock() {
        // Member 0's clock runs 1 % fast: by it, 2 s passed in 1.99 s.
        let book = expired_at(2_990_000);
        let fast = |member: usize, virtual_us: u64| {
            if member == 0 {
                virtual_us + virtual_us / 100
            } else {
                virtual_us
            }
        };
        let proposed_local = fast(0, 2_990_000);
        let mut book = book;
        book.expiry_proposals.get_mut(&70).unwrap().local_us = proposed_local;
        assert_eq!(book.check(fast), Ok(()));
    }

    #[test]
    fn a_keep_alive_answered_gone_before_any_revoke_fails() {
        let mut book = expired_at(3 * SECOND_US);
        book.answered(7, 2 * SECOND_US, 2 * SECOND_US + 10, LeaseAnswer::KeepAliveGone);
        let error = book.check(|_, virtual_us| virtual_us).unwrap_err();
        assert!(error.contains("answered gone"), "{error}");
        let mut book = expired_at(3 * SECOND_US);
        book.answered(7, 3 * SECOND_US, 3 * SECOND_US + 10, LeaseAnswer::KeepAliveGone);
        assert_eq!(book.check(|_, virtual_us| virtual_us), Ok(()));
    }

    #[test]
    fn a_revoke_answered_ok_for_an_expired_lease_fails() {
        let mut book = expired_at(3 * SECOND_US);
        book.revoking(7, 2 * SECOND_US);
        book.answered(7, 2 * SECOND_US, 4 * SECOND_US, LeaseAnswer::Revoked);
        assert!(book.check(|_, virtual_us| virtual_us).is_err());
    }

    #[test]
    fn two_entries_removing_one_lease_is_an_error() {
        let mut book = expired_at(3 * SECOND_US);
        let other = LeaseAudit::RevokeApplied {
            lease: 7,
            entry_id: 71,
            removed: true,
        };
        assert!(book.audit(1, 4 * SECOND_US, 0, other).is_err());
    }

    #[test]
    fn a_lease_end_spans_its_proposal_to_its_first_apply() {
        let book = expired_at(3 * SECOND_US);
        let ends = book.lease_ends().unwrap();
        assert_eq!(ends.len(), 1);
        assert_eq!(ends[0].invoke, 3 * SECOND_US * 1000);
        assert_eq!(ends[0].complete, Some((3 * SECOND_US + 100) * 1000));
    }
}

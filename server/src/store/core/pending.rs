//! Client calls waiting on something beyond the event that brought them (an
//! entry to be applied, a peer's answer, a new leader), by request id, each
//! with a deadline. One table and one expiry for every kind of wait; what a
//! wait is for, and the error it ends with, is the kind's (`K`).

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

/// A client call waiting, and for what.
#[derive(Debug, PartialEq, Eq)]
pub struct Waiting<K> {
    pub client: usize,
    pub call_id: u64,
    /// Answered with the kind's timeout error at this instant, if not before.
    pub deadline: Instant,
    pub kind: K,
}

/// The waiting calls. Invariant: `deadlines` holds exactly one
/// (deadline, request id) per call in `calls`.
#[derive(Debug)]
pub struct Pending<K> {
    calls: HashMap<u64, Waiting<K>>,
    deadlines: BTreeSet<(Instant, u64)>,
}

impl<K> Default for Pending<K> {
    fn default() -> Self {
        Pending {
            calls: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }
}

impl<K> Pending<K> {
    /// Registers a wait under `request_id`, which must be unique among the
    /// waiting (request ids come from one generator).
    pub fn insert(&mut self, request_id: u64, waiting: Waiting<K>) {
        self.deadlines.insert((waiting.deadline, request_id));
        let earlier = self.calls.insert(request_id, waiting);
        assert!(earlier.is_none(), "request ids are unique");
    }

    /// The wait under `request_id`, now answered (None: it expired, or it
    /// is another member's).
    pub fn remove(&mut self, request_id: u64) -> Option<Waiting<K>> {
        let waiting = self.calls.remove(&request_id)?;
        self.deadlines.remove(&(waiting.deadline, request_id));
        Some(waiting)
    }

    /// The wait under `request_id` if its kind is one `expected` takes: an
    /// answer names its wait by a request id that came back from a peer, and
    /// must not end a wait of another kind.
    pub fn remove_if(&mut self, request_id: u64, expected: impl FnOnce(&K) -> bool) -> Option<Waiting<K>> {
        if !expected(&self.calls.get(&request_id)?.kind) {
            return None;
        }
        self.remove(request_id)
    }

    pub fn contains(&self, request_id: u64) -> bool {
        self.calls.contains_key(&request_id)
    }

    /// How many waits are of a kind `count` picks.
    pub fn count(&self, mut counted: impl FnMut(&K) -> bool) -> usize {
        self.calls.values().filter(|waiting| counted(&waiting.kind)).count()
    }

    /// Removes and returns the waits whose deadline is at or before `now`,
    /// soonest first.
    pub fn take_expired(&mut self, now: Instant) -> Vec<(u64, Waiting<K>)> {
        let mut expired = Vec::new();
        while let Some(&(deadline, request_id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            let waiting = self.calls.remove(&request_id).expect("one deadline per call");
            expired.push((request_id, waiting));
        }
        expired
    }

    /// Removes and returns the waits whose kind `done` says are over, in
    /// deadline order.
    pub fn take_done(&mut self, mut done: impl FnMut(&K) -> bool) -> Vec<(u64, Waiting<K>)> {
        let over: Vec<(Instant, u64)> = self
            .deadlines
            .iter()
            .filter(|(_, request_id)| done(&self.calls[request_id].kind))
            .copied()
            .collect();
        over.into_iter()
            .map(|(_, request_id)| (request_id, self.remove(request_id).expect("listed above")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn waiting(base: Instant, deadline_ms: u64, kind: u8) -> Waiting<u8> {
        Waiting {
            client: 0,
            call_id: u64::from(kind),
            deadline: base + Duration::from_millis(deadline_ms),
            kind,
        }
    }

    #[test]
    fn an_answered_wait_does_not_expire() {
        let base = Instant::now();
        let mut pending = Pending::default();
        pending.insert(1, waiting(base, 10, 1));
        pending.insert(2, waiting(base, 20, 2));
        assert_eq!(pending.remove(1).map(|w| w.kind), Some(1));
        assert_eq!(pending.remove(1), None);
        assert_eq!(pending.remove_if(2, |kind| *kind == 1), None);
        assert!(pending.contains(2));
        let expired = pending.take_expired(base + Duration::from_millis(30));
        assert_eq!(expired.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![2]);
        assert!(!pending.contains(2));
    }

    #[test]
    fn waits_expire_at_their_deadline_soonest_first() {
        let base = Instant::now();
        let mut pending = Pending::default();
        pending.insert(7, waiting(base, 30, 7));
        pending.insert(5, waiting(base, 10, 5));
        pending.insert(6, waiting(base, 10, 6));
        assert!(pending.take_expired(base + Duration::from_millis(9)).is_empty());
        let expired = pending.take_expired(base + Duration::from_millis(10));
        assert_eq!(expired.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![5, 6]);
        assert_eq!(pending.count(|_| true), 1);
    }

    #[test]
    #[should_panic(expected = "request ids are unique")]
    fn a_request_id_waits_once() {
        let base = Instant::now();
        let mut pending = Pending::default();
        pending.insert(1, waiting(base, 10, 1));
        pending.insert(1, waiting(base, 20, 2));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert { id: u8, deadline_ms: u8, kind: u8 },
        Remove { id: u8 },
        Expire { now_ms: u8 },
        TakeKind { kind: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), any::<u8>(), 0u8..4).prop_map(|(id, deadline_ms, kind)| Op::Insert { id, deadline_ms, kind }),
            any::<u8>().prop_map(|id| Op::Remove { id }),
            any::<u8>().prop_map(|now_ms| Op::Expire { now_ms }),
            (0u8..4).prop_map(|kind| Op::TakeKind { kind }),
        ]
    }

    proptest! {
        /// Against a plain map of id → (deadline, kind): every wait leaves
        /// exactly once, by answer, expiry or being done, and expiry takes
        /// exactly those due.
        #[test]
        fn pending_matches_a_map_of_deadlines(ops in proptest::collection::vec(op(), 1..200)) {
            let base = Instant::now();
            let at = |ms: u8| base + Duration::from_millis(u64::from(ms));
            let mut pending = Pending::default();
            let mut model: HashMap<u64, (u8, u8)> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert { id, deadline_ms, kind } => {
                        if model.contains_key(&u64::from(id)) {
                            continue;
                        }
                        model.insert(u64::from(id), (deadline_ms, kind));
                        pending.insert(u64::from(id), waiting(base, u64::from(deadline_ms), kind));
                    }
                    Op::Remove { id } => {
                        let expected = model.remove(&u64::from(id)).map(|(_, kind)| kind);
                        prop_assert_eq!(pending.remove(u64::from(id)).map(|w| w.kind), expected);
                    }
                    Op::Expire { now_ms } => {
                        let mut due: Vec<(u8, u64)> = model
                            .iter()
                            .filter(|(_, (deadline, _))| *deadline <= now_ms)
                            .map(|(id, (deadline, _))| (*deadline, *id))
                            .collect();
                        due.sort_unstable();
                        model.retain(|_, (deadline, _)| *deadline > now_ms);
                        let expired: Vec<(u8, u64)> = pending
                            .take_expired(at(now_ms))
                            .into_iter()
                            .map(|(id, w)| (model_ms(base, w.deadline), id))
                            .collect();
                        prop_assert_eq!(expired, due);
                    }
                    Op::TakeKind { kind } => {
                        let mut done: Vec<u64> =
                            model.iter().filter(|(_, (_, k))| *k == kind).map(|(id, _)| *id).collect();
                        done.sort_unstable();
                        model.retain(|_, (_, k)| *k != kind);
                        let mut taken: Vec<u64> =
                            pending.take_done(|k| *k == kind).into_iter().map(|(id, _)| id).collect();
                        taken.sort_unstable();
                        prop_assert_eq!(taken, done);
                    }
                }
                prop_assert_eq!(pending.count(|_| true), model.len());
                prop_assert_eq!(pending.deadlines.len(), model.len());
            }
        }
    }

    fn model_ms(base: Instant, deadline: Instant) -> u8 {
        u8::try_from((deadline - base).as_millis()).expect("deadlines are within 255 ms")
    }
}

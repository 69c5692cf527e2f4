//! Linearizable reads, and the leader's lease renewals: batched onto raft
//! ReadIndex requests.
//!
//! Reads that arrive while no ReadIndex is outstanding form one batch and share
//! one ReadIndex round; when raft grants index `i`, the batch is answered as soon
//! as the applied index reaches `i` (so it sees every write acknowledged before the
//! read arrived). A KeepAlive on the leader waits in the same batches: a leader
//! renews a lease only once a quorum has confirmed, after the KeepAlive came,
//! that it still leads, and it has applied what was committed then.

use std::collections::{BTreeMap, VecDeque};

use ringkv_proto::etcdserverpb as pb;

use super::id_generator::IdGenerator;
use super::lease_clock::KeepAliveFrom;
use crate::auth::Caller;

/// A read waiting to be served from the applied state, and who asked (its
/// permissions are checked when it is served, as etcd checks them after the
/// ReadIndex).
#[derive(Debug)]
pub struct PendingRead {
    pub read: Read,
    pub caller: Caller,
}

#[derive(Debug)]
pub enum Read {
    Range(pb::RangeRequest),
    Txn(pb::TxnRequest),
}

impl PendingRead {
    pub fn range(request: pb::RangeRequest, caller: Caller) -> PendingRead {
        PendingRead {
            read: Read::Range(request),
            caller,
        }
    }

    pub fn txn(request: pb::TxnRequest, caller: Caller) -> PendingRead {
        PendingRead {
            read: Read::Txn(request),
            caller,
        }
    }
}

/// What waits for a ReadIndex.
#[derive(Debug)]
pub enum AwaitingReadIndex {
    /// Call `call_id` of client core `client`: a linearizable read.
    Read {
        client: usize,
        call_id: u64,
        read: PendingRead,
    },
    /// A KeepAlive of lease `lease`, on the leader.
    KeepAlive { from: KeepAliveFrom, lease: i64 },
}

pub type ReadBatch = Vec<AwaitingReadIndex>;

pub struct ReadQueue {
    /// Reads not yet covered by a ReadIndex request.
    unrequested: ReadBatch,
    /// Batches whose ReadIndex request is outstanding, by request context, with
    /// the tick they were asked at.
    requested: BTreeMap<i64, (u64, ReadBatch)>,
    /// Batches granted a read index, in grant order (indexes never decrease).
    granted: VecDeque<(u64, ReadBatch)>,
    /// Request contexts, as etcd's: the leader holds the requests of every
    /// member by context and raft-rs drops one whose context it already
    /// holds, so they carry the member (and its start time, for a restart).
    contexts: IdGenerator,
    /// KeepAlives waiting, wherever they are.
    keep_alives: usize,
    /// Requests asked again after a wait, and grants of requests asked again
    /// since (ignored): etcd's `etcd_server_slow_read_indexes_total` counts
    /// both, a read index that timed out and an out-of-date response.
    slow: u64,
}

impl ReadQueue {
    pub fn new(contexts: IdGenerator) -> ReadQueue {
        ReadQueue {
            unrequested: Vec::new(),
            requested: BTreeMap::new(),
            granted: VecDeque::new(),
            contexts,
            keep_alives: 0,
            slow: 0,
        }
    }

    pub fn enqueue(&mut self, waiting: AwaitingReadIndex) {
        if matches!(waiting, AwaitingReadIndex::KeepAlive { .. }) {
            self.keep_alives += 1;
        }
        self.unrequested.push(waiting);
    }

    /// How many reads and KeepAlives wait (a simulation failure's message).
    #[cfg(feature = "sim")]
    pub fn len(&self) -> usize {
        let batches = self
            .requested
            .values()
            .map(|(_, batch)| batch)
            .chain(self.granted.iter().map(|(_, batch)| batch));
        self.unrequested.len() + batches.map(Vec::len).sum::<usize>()
    }

    /// How many KeepAlives wait.
    pub fn keep_alives(&self) -> usize {
        self.keep_alives
    }

    /// The context for a new ReadIndex request, asked at `tick`, covering every
    /// unrequested read.
    pub fn take_unrequested(&mut self, tick: u64) -> Option<Vec<u8>> {
        if self.unrequested.is_empty() {
            return None;
        }
        let requested = &self.requested;
        let context = self.contexts.next(|id| requested.contains_key(&id));
        let batch = std::mem::take(&mut self.unrequested);
        assert!(self.requested.insert(context, (tick, batch)).is_none());
        Some(context.to_be_bytes().to_vec())
    }

    /// Raft granted `index` to the request with `context`.
    pub fn read_index_granted(&mut self, context: &[u8], index: u64) {
        let Ok(bytes) = <[u8; 8]>::try_from(context) else {
            return;
        };
        let Some((_, batch)) = self.requested.remove(&i64::from_be_bytes(bytes)) else {
            self.slow += 1;
            return;
        };
        // Grants from one leader come in order; across retries and leader
        // changes one may not. Serving a read at a later index is always
        // linearizable, so the queue stays ordered by raising it.
        let index = self.granted.back().map_or(index, |(last, _)| index.max(*last));
        self.granted.push_back((index, batch));
    }

    /// Requests asked again after a wait, and grants that came after their
    /// request was asked again, so far.
    pub fn slow_read_indexes(&self) -> u64 {
        self.slow
    }

    /// Outstanding requests were dropped (leadership changed): ask again.
    pub fn requeue_requested(&mut self) {
        self.requeue_asked_before(u64::MAX);
    }

    /// Requests asked before `tick` and not granted are asked again (and count
    /// as slow): raft drops a ReadIndex silently (a leader that has not
    /// committed in its term, a message lost between members, a context the
    /// leader already holds). A late grant of the old request is ignored.
    pub fn requeue_older_than(&mut self, tick: u64) {
        self.slow += self.requeue_asked_before(tick);
    }

    /// How many requests asked before `tick` went back to the unrequested.
    fn requeue_asked_before(&mut self, tick: u64) -> u64 {
        let stale: Vec<i64> = self
            .requested
            .iter()
            .filter(|(_, (asked, _))| *asked < tick)
            .map(|(context, _)| *context)
            .collect();
        for context in &stale {
            let (_, mut batch) = self.requested.remove(context).expect("listed above");
            self.unrequested.append(&mut batch);
        }
        stale.len() as u64
    }

    /// The next batch whose read index has been applied.
    pub fn take_applied(&mut self, applied_index: u64) -> Option<ReadBatch> {
        let batch = match self.granted.front() {
            Some((index, _)) if *index <= applied_index => self.granted.pop_front().map(|(_, batch)| batch)?,
            _ => return None,
        };
        let keep_alives = batch
            .iter()
            .filter(|waiting| matches!(waiting, AwaitingReadIndex::KeepAlive { .. }))
            .count();
        self.keep_alives -= keep_alives;
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> ReadQueue {
        ReadQueue::new(IdGenerator::new(0x8e9e05c52164694d, std::time::SystemTime::now()))
    }

    fn read(call_id: u64) -> AwaitingReadIndex {
        AwaitingReadIndex::Read {
            client: 0,
            call_id,
            read: PendingRead::range(pb::RangeRequest::default(), Caller::Server),
        }
    }

    fn call_id(waiting: &AwaitingReadIndex) -> u64 {
        match waiting {
            AwaitingReadIndex::Read { call_id, .. } => *call_id,
            AwaitingReadIndex::KeepAlive { .. } => unreachable!("reads only"),
        }
    }

    #[test]
    fn reads_arriving_together_share_one_read_index() {
        let mut queue = queue();
        queue.enqueue(read(1));
        queue.enqueue(read(2));
        let context = queue.take_unrequested(0).expect("a request for the batch");
        assert!(queue.take_unrequested(0).is_none());
        queue.read_index_granted(&context, 7);
        assert!(queue.take_applied(6).is_none(), "index 7 is not applied yet");
        let batch = queue.take_applied(7).expect("granted and applied");
        assert_eq!(batch.len(), 2);
    }

    #[test]
    fn members_started_together_never_ask_with_the_same_context() {
        let now = std::time::SystemTime::now();
        let mut members: Vec<ReadQueue> = [0x8e9e05c52164694d_u64, 0x91bc3c398fb3c146, 0xfd422379fda50e48]
            .into_iter()
            .map(|member| ReadQueue::new(IdGenerator::new(member, now)))
            .collect();
        let mut contexts = std::collections::BTreeSet::new();
        for round in 0..1000 {
            for member in &mut members {
                member.enqueue(read(round));
                let context = member.take_unrequested(round).unwrap();
                assert!(contexts.insert(context), "a context asked twice in round {round}");
            }
        }
    }

    #[test]
    fn dropped_requests_are_asked_again() {
        let mut queue = queue();
        queue.enqueue(read(9));
        let first = queue.take_unrequested(0).unwrap();
        queue.requeue_requested();
        let second = queue.take_unrequested(0).expect("asked again");
        assert_ne!(first, second);
        queue.read_index_granted(&first, 3);
        assert!(queue.take_applied(10).is_none(), "a stale grant answers nothing");
        assert_eq!(queue.slow_read_indexes(), 1, "counts as a slow read index");
        queue.read_index_granted(&second, 3);
        assert_eq!(queue.slow_read_indexes(), 1);
        assert_eq!(call_id(&queue.take_applied(3).unwrap()[0]), 9);
    }

    #[test]
    fn unanswered_requests_are_asked_again_after_a_while() {
        let mut queue = queue();
        queue.enqueue(read(1));
        let early = queue.take_unrequested(3).unwrap();
        queue.enqueue(read(2));
        let later = queue.take_unrequested(8).unwrap();
        queue.requeue_older_than(5);
        assert_eq!(queue.slow_read_indexes(), 1, "one request waited too long");
        let retry = queue
            .take_unrequested(9)
            .expect("the batch asked at tick 3 is asked again");
        assert!(queue.take_unrequested(9).is_none());
        queue.read_index_granted(&early, 4);
        queue.read_index_granted(&later, 6);
        queue.read_index_granted(&retry, 5);
        assert_eq!(call_id(&queue.take_applied(6).unwrap()[0]), 2);
        assert!(
            queue.take_applied(5).is_none(),
            "a grant below an earlier one waits for it"
        );
        assert_eq!(call_id(&queue.take_applied(6).unwrap()[0]), 1);
    }

    #[test]
    fn keep_alives_wait_with_the_reads_and_are_counted() {
        let mut queue = queue();
        let from = KeepAliveFrom::Peer { from: 2, request_id: 5 };
        queue.enqueue(AwaitingReadIndex::KeepAlive { from, lease: 7 });
        queue.enqueue(read(1));
        assert_eq!(queue.keep_alives(), 1);
        let context = queue.take_unrequested(0).unwrap();
        queue.requeue_requested();
        assert_eq!(queue.keep_alives(), 1, "still waiting after a retry");
        assert!(queue.take_applied(9).is_none(), "a stale grant answers nothing");
        let retry = queue.take_unrequested(1).unwrap();
        assert_ne!(context, retry);
        queue.read_index_granted(&retry, 4);
        assert_eq!(queue.take_applied(4).unwrap().len(), 2);
        assert_eq!(queue.keep_alives(), 0);
    }

    /// The raft-rs behaviour `StoreCore::issue_read_index` guards against: a
    /// ReadIndex asked before the leader committed an entry of its term is
    /// dropped without a trace, so a batch asked then would never be answered.
    #[test]
    fn raft_drops_a_read_index_asked_before_the_leaders_first_commit() {
        use raft::eraftpb::ConfState;
        use raft::storage::MemStorage;
        use raft::{Config, RawNode, StateRole};

        let storage = MemStorage::new_with_conf_state(ConfState::from((vec![1], vec![])));
        let config = Config {
            id: 1,
            election_tick: 10,
            heartbeat_tick: 1,
            ..Default::default()
        };
        let mut raw = RawNode::new(&config, storage, &crate::store::raft_logger::logger()).unwrap();
        raw.campaign().unwrap();
        assert_eq!(raw.raft.state, StateRole::Leader);
        assert!(!raw.raft.commit_to_current_term(), "the no-op is not committed yet");
        raw.read_index(b"early".to_vec());
        let ready = raw.ready();
        raw.mut_store().wl().append(ready.entries()).unwrap();
        if let Some(hard_state) = ready.hs() {
            raw.mut_store().wl().set_hardstate(hard_state.clone());
        }
        assert!(ready.read_states().is_empty());
        let light = raw.advance(ready);
        raw.advance_apply_to(light.commit_index().unwrap_or(raw.raft.raft_log.committed));
        assert!(raw.raft.commit_to_current_term());
        raw.read_index(b"late".to_vec());
        let ready = raw.ready();
        let granted: Vec<&[u8]> = ready.read_states().iter().map(|r| &r.request_ctx[..]).collect();
        assert_eq!(granted, [&b"late"[..]], "the early request is gone for good");
    }
}

//! Ranges, read-only Txns and HashKVs served in bounded steps on the store
//! core.
//!
//! The store core also runs raft: a read of a million keys in one go held it
//! for over a second, heartbeats stopped, and followers started elections.
//! So a read takes one step when it arrives (a small read is answered
//! there and then, as before) and, if that did not finish it, one more step
//! each time the core has handled the events that came meanwhile, resting a
//! moment between steps so the executor runs timers and I/O. Reads in
//! progress take turns. Each reads at the revision it began at: the engine
//! holds back the physical removal of a compaction above it (see
//! `ringkv_engine::mvcc::RangeCursor`), and writes after it are not seen.
//! A HashKV, asked by a client or a peer, hashes the history up to its
//! revision the same way (`ringkv_engine::mvcc::HashKvCursor`).

use std::cell::Cell;
use std::collections::VecDeque;
use std::time::Duration;

use ringkv_engine::mvcc::{HashKvCursor, Mvcc, StepBudget};
use ringkv_proto::etcdserverpb as pb;

use super::messages::Response;
use super::reads::{PendingRead, Read};
use crate::apply::{ApplyError, OpCounts, RangeAnswer, RangeBuild, TxnBuild};

/// What one step reads at most: about 5 ms of a Range of small key-values
/// (docs/architecture.md, "Path of a read"), a tenth of the heartbeat interval.
pub const READ_STEP: StepBudget = StepBudget {
    keys: 4096,
    bytes: 4 * 1024 * 1024,
};

/// What one step of a HashKV hashes at most. Hashing a revision costs far
/// less than answering it in a Range, so READ_STEP's count made a HashKV step
/// several times a lone put's own time, and the puts that waited for it took
/// their p99 from there (docs/benchmarks.md, "HashKV in steps"); a quarter of
/// it keeps a step near a put's time.
pub const HASH_KV_STEP: StepBudget = StepBudget {
    keys: 1024,
    bytes: 1024 * 1024,
};

/// The store core's pause after each step while reads are in progress: it
/// waits for the executor, which meanwhile reaps I/O and runs the other
/// tasks (timers with the raft tick, the WAL, the peer links). Back to back,
/// steps ran until glommio's 100 ms preemption timer, and every hop of a put
/// (client, WAL, followers) waited for it.
pub const READ_STEP_REST: Duration = Duration::from_micros(100);

enum Build {
    /// Boxed: a Range's build is far larger than a Txn's (which boxes its
    /// ranges in a Vec), and reads wait in a queue of these.
    Range(Box<RangeBuild>),
    /// With its request, whose branch taken is counted when it is done.
    Txn(TxnBuild, Box<pb::TxnRequest>),
    /// With the store's revision when it began: its header's, as etcd's.
    HashKv { cursor: HashKvCursor, revision: i64 },
}

impl Build {
    fn is_done(&self) -> bool {
        match self {
            Build::Range(build) => build.is_done(),
            Build::Txn(build, _) => build.is_done(),
            Build::HashKv { cursor, .. } => cursor.is_done(),
        }
    }

    fn step(&mut self, mvcc: &Mvcc) -> Result<(), ApplyError> {
        match self {
            Build::Range(build) => build.step(mvcc, READ_STEP),
            Build::Txn(build, _) => build.step(mvcc, READ_STEP),
            Build::HashKv { cursor, .. } => Ok(mvcc.hash_kv_step(cursor, HASH_KV_STEP)?),
        }
    }

    fn finish(self, mvcc: &Mvcc, header: &pb::ResponseHeader, ops: &mut OpCounts) -> Result<Response, ApplyError> {
        match self {
            Build::Range(build) => Ok(match build.finish(mvcc, Some(header))? {
                RangeAnswer::Encoded(response) => Response::RangeEncoded(response),
                RangeAnswer::Decoded(response) => Response::Range(response),
            }),
            Build::Txn(build, request) => {
                let response = build.finish(mvcc, Some(header))?;
                ops.txn(&request, &response);
                Ok(Response::Txn(response))
            }
            Build::HashKv { cursor, revision } => {
                let hashed = cursor.finish();
                Ok(Response::HashKv(pb::HashKvResponse {
                    header: Some(pb::ResponseHeader {
                        revision,
                        ..header.clone()
                    }),
                    hash: hashed.hash,
                    compact_revision: hashed.compact_revision,
                    hash_revision: hashed.hash_revision,
                }))
            }
        }
    }
}

/// Who waits for a stepped read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFor {
    /// Call `call_id` of client core `client`.
    Client { client: usize, call_id: u64 },
    /// Query `query` of peer `from`, asking for a HashKV.
    PeerHashKv { query: u64, from: u64 },
    /// The leader's periodic corruption check `check`, for its own HashKV.
    CorruptCheck { check: u64 },
}

/// What a stepped read reads.
#[derive(Debug)]
pub enum SteppedRead {
    Read(PendingRead),
    /// etcd's HashKV at this revision (0 or less: the current one).
    HashKv(i64),
}

/// A read in progress and who waits for it.
struct InProgress {
    reader: ReadFor,
    build: Build,
}

/// A finished read: who waits for it, and its answer.
pub type Answered = (ReadFor, Result<Response, ApplyError>);

/// The reads in progress on the store core.
pub struct SteppedReads {
    reads: VecDeque<InProgress>,
    /// The largest response message a read builds.
    response_bytes_max: usize,
    /// A step was taken since the store core last rested.
    rest_owed: Cell<bool>,
    /// What the reads answered did, as etcd's mvcc layer counts it.
    ops: OpCounts,
}

impl SteppedReads {
    pub fn new(response_bytes_max: usize) -> SteppedReads {
        SteppedReads {
            reads: VecDeque::new(),
            response_bytes_max,
            rest_owed: Cell::new(false),
            ops: OpCounts::default(),
        }
    }

    /// Begins `read` and takes its first step: its answer if that finished
    /// it, else None and it goes on in `step`. `header` is what the store core
    /// answers with (the response's size counts it).
    pub fn start(
        &mut self,
        mvcc: &Mvcc,
        header: &pb::ResponseHeader,
        reader: ReadFor,
        read: SteppedRead,
    ) -> Option<Result<Response, ApplyError>> {
        let started = match read {
            SteppedRead::Read(PendingRead {
                read: Read::Range(request),
                ..
            }) => {
                self.ops.range();
                RangeBuild::start(mvcc, request, true, self.response_bytes_max)
                    .map(|build| Build::Range(Box::new(build)))
            }
            SteppedRead::Read(PendingRead {
                read: Read::Txn(request),
                ..
            }) => TxnBuild::start(mvcc, &request, self.response_bytes_max)
                .map(|build| Build::Txn(build, Box::new(request))),
            SteppedRead::HashKv(revision) => mvcc
                .begin_hash_kv(revision)
                .map(|cursor| Build::HashKv {
                    cursor,
                    revision: mvcc.current_revision(),
                })
                .map_err(ApplyError::from),
        };
        let mut build = match started {
            Ok(build) => build,
            Err(error) => return Some(Err(error)),
        };
        match step_once(&mut build, mvcc) {
            Err(error) => Some(Err(error)),
            Ok(true) => Some(build.finish(mvcc, header, &mut self.ops)),
            Ok(false) => {
                self.reads.push_back(InProgress { reader, build });
                self.rest_owed.set(true);
                None
            }
        }
    }

    /// What the reads answered so far did.
    pub fn ops(&self) -> OpCounts {
        self.ops
    }

    /// True while a read is in progress.
    pub fn pending(&self) -> bool {
        !self.reads.is_empty()
    }

    /// The rest the store core takes before the next step: once after each
    /// step, however long the core's other work since took.
    pub fn rest(&self) -> Option<Duration> {
        self.rest_owed.replace(false).then_some(READ_STEP_REST)
    }

    /// One step of the read whose turn it is; its answer once it is finished.
    pub fn step(&mut self, mvcc: &Mvcc, header: &pb::ResponseHeader) -> Option<Answered> {
        let mut read = self.reads.pop_front()?;
        self.rest_owed.set(true);
        match step_once(&mut read.build, mvcc) {
            Err(error) => Some((read.reader, Err(error))),
            Ok(true) => Some((read.reader, read.build.finish(mvcc, header, &mut self.ops))),
            Ok(false) => {
                self.reads.push_back(read);
                None
            }
        }
    }
}

/// Takes one step (none if the read needs none); true if the read is done.
fn step_once(build: &mut Build, mvcc: &Mvcc) -> Result<bool, ApplyError> {
    if !build.is_done() {
        build.step(mvcc)?;
    }
    Ok(build.is_done())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_kv_longer_than_a_step_is_answered_after_steps_with_the_hash_of_when_it_began() {
        let dir = tempfile::tempdir().unwrap();
        let mut mvcc = Mvcc::open(&dir.path().join("store.db")).unwrap();
        let put = |mvcc: &mut Mvcc, key: String| {
            let mut txn = mvcc.write();
            txn.put(key.as_bytes(), b"v", 0).unwrap();
            txn.end();
        };
        for n in 0..HASH_KV_STEP.keys * 2 + 10 {
            put(&mut mvcc, format!("k{}", n % 100));
        }
        let whole = mvcc.hash_kv(0).unwrap();
        let began_at = mvcc.current_revision();
        let header = pb::ResponseHeader::default();
        let reader = ReadFor::PeerHashKv { query: 1, from: 2 };
        let mut reads = SteppedReads::new(1 << 20);
        assert!(
            reads.start(&mvcc, &header, reader, SteppedRead::HashKv(0)).is_none(),
            "more than one step"
        );
        put(&mut mvcc, "later".to_string());
        let mut steps = 1;
        let (answered_for, answer) = loop {
            steps += 1;
            if let Some(answered) = reads.step(&mvcc, &header) {
                break answered;
            }
        };
        assert_eq!(answered_for, reader);
        assert_eq!(steps, 3, "{} revisions a step", HASH_KV_STEP.keys);
        let Ok(Response::HashKv(response)) = answer else {
            panic!("a hash: {answer:?}");
        };
        assert_eq!(
            (response.hash, response.compact_revision, response.hash_revision),
            (whole.hash, whole.compact_revision, whole.hash_revision)
        );
        assert_eq!(
            response.header.unwrap().revision,
            began_at,
            "etcd's header: the revision then"
        );
        assert!(!reads.pending());
    }
}

//! Ranges and read-only Txns served in bounded steps on the store core.
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

use std::cell::Cell;
use std::collections::VecDeque;
use std::time::Duration;

use ringkv_engine::mvcc::{Mvcc, StepBudget};
use ringkv_proto::etcdserverpb as pb;

use super::messages::Response;
use super::reads::PendingRead;
use crate::apply::{ApplyError, RangeAnswer, RangeBuild, TxnBuild};

/// What one step reads at most: about 5 ms of a Range of small key-values
/// (docs/architecture.md, "Path of a read"), a tenth of the heartbeat interval.
pub const READ_STEP: StepBudget = StepBudget {
    keys: 4096,
    bytes: 4 * 1024 * 1024,
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
    Txn(TxnBuild),
}

impl Build {
    fn is_done(&self) -> bool {
        match self {
            Build::Range(build) => build.is_done(),
            Build::Txn(build) => build.is_done(),
        }
    }

    fn step(&mut self, mvcc: &Mvcc) -> Result<(), ApplyError> {
        match self {
            Build::Range(build) => build.step(mvcc, READ_STEP),
            Build::Txn(build) => build.step(mvcc, READ_STEP),
        }
    }

    fn finish(self, mvcc: &Mvcc, header: &pb::ResponseHeader) -> Result<Response, ApplyError> {
        match self {
            Build::Range(build) => Ok(match build.finish(mvcc, Some(header))? {
                RangeAnswer::Encoded(response) => Response::RangeEncoded(response),
                RangeAnswer::Decoded(response) => Response::Range(response),
            }),
            Build::Txn(build) => build.finish(mvcc, Some(header)).map(Response::Txn),
        }
    }
}

/// A read in progress and who waits for it.
struct InProgress {
    client: usize,
    call_id: u64,
    build: Build,
}

/// A finished read: (client core, call id, answer).
pub type Answered = (usize, u64, Result<Response, ApplyError>);

/// The reads in progress on the store core.
pub struct SteppedReads {
    reads: VecDeque<InProgress>,
    /// The largest response message a read builds.
    response_bytes_max: usize,
    /// A step was taken since the store core last rested.
    rest_owed: Cell<bool>,
}

impl SteppedReads {
    pub fn new(response_bytes_max: usize) -> SteppedReads {
        SteppedReads {
            reads: VecDeque::new(),
            response_bytes_max,
            rest_owed: Cell::new(false),
        }
    }

    /// Begins `read` and takes its first step: its answer if that finished
    /// it, else None and it goes on in `step`. `header` is what the store core
    /// answers with (the response's size counts it).
    pub fn start(
        &mut self,
        mvcc: &Mvcc,
        header: &pb::ResponseHeader,
        client: usize,
        call_id: u64,
        read: PendingRead,
    ) -> Option<Result<Response, ApplyError>> {
        let started = match read {
            PendingRead::Range(request) => RangeBuild::start(mvcc, request, true, self.response_bytes_max)
                .map(|build| Build::Range(Box::new(build))),
            PendingRead::Txn(request) => TxnBuild::start(mvcc, &request, self.response_bytes_max).map(Build::Txn),
        };
        let mut build = match started {
            Ok(build) => build,
            Err(error) => return Some(Err(error)),
        };
        match step_once(&mut build, mvcc) {
            Err(error) => Some(Err(error)),
            Ok(true) => Some(build.finish(mvcc, header)),
            Ok(false) => {
                self.reads.push_back(InProgress { client, call_id, build });
                self.rest_owed.set(true);
                None
            }
        }
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
            Err(error) => Some((read.client, read.call_id, Err(error))),
            Ok(true) => {
                let answer = read.build.finish(mvcc, header);
                Some((read.client, read.call_id, answer))
            }
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

//! What the store core's loop reacts to: client calls and watch commands,
//! timers, the WAL task's and page-store commits' completions, and the peer
//! transport's messages, all on one local channel (see `core`).

use std::time::Duration;

use ringkv_engine::mvcc::{CommittedPlan, PageError};
use ringkv_engine::wal::{Record, WalError};

use super::messages::Call;
use crate::peer::PeerEvent;
use crate::watch::WatchCommand;

/// Something the store core must react to.
pub enum Event {
    /// A call from client core `client`.
    Call { client: usize, call: Call },
    /// The heartbeat interval passed.
    Tick,
    /// The page-store commit interval passed.
    CommitDue,
    /// The WAL finished persisting Ready `ready`, taking `elapsed` (write + fdatasync).
    Persisted {
        ready: u64,
        result: Result<(), WalError>,
        elapsed: Duration,
    },
    /// The WAL had no room for `records`, the rest of Ready `ready` (those
    /// before them are durable); nothing of them was written.
    PersistNoSpace { ready: u64, records: Vec<Record> },
    /// The WAL's next segment found no room, or has room again.
    WalSpace { out_of_space: bool },
    /// The WAL finished releasing segments.
    Released(Result<(), WalError>),
    /// A page-store commit finished its writes and fsyncs, taking `elapsed`.
    Committed {
        result: Result<CommittedPlan, PageError>,
        elapsed: Duration,
    },
    /// A watch command from client core `client`.
    Watch { client: usize, command: WatchCommand },
    /// The `--watch-progress-notify-interval` passed.
    WatchProgressTick,
    /// The peer transport received a message or lost some.
    Peer(PeerEvent),
}

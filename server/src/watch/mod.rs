//! What client cores and the store core say to each other about watches.
//!
//! Watches do not fit the call/reply channels: one request (a create) leads to any
//! number of answers over time. So each client core has a second pair of channels:
//! [`WatchCommand`]s to the store core, and [`WatchPush`]es back. Every answer for a
//! stream (created, events, progress, canceled) travels on the one push channel in
//! the order the store core produced it, which is what keeps `created` ahead of a
//! watcher's first event and a progress notification behind the events it covers.
//! The path end to end is in docs/architecture.md ("Path of a watch event").

pub mod range_index;
pub mod span;

use bytes::Bytes;
use ringkv_proto::etcdserverpb as pb;

use crate::auth::CallAuth;

/// A watch stream, numbered by its client core (unique there, never reused).
pub type StreamId = u64;

/// A client core's request about one of its streams.
#[derive(Debug)]
pub enum WatchCommand {
    Create {
        stream: StreamId,
        request: pb::WatchCreateRequest,
        /// Who opened the stream: the store core checks the range may be read.
        auth: CallAuth,
    },
    Cancel {
        stream: StreamId,
        watch_id: i64,
    },
    /// etcd's WatchProgressRequest.
    Progress {
        stream: StreamId,
    },
    /// The client core wrote notices worth `credit_bytes` to the socket.
    Consumed {
        stream: StreamId,
        credit_bytes: usize,
    },
    /// The stream ended: its watchers go.
    Close {
        stream: StreamId,
    },
}

/// Notices for streams of one client core, in the order they must be written.
#[derive(Debug)]
pub struct WatchPush {
    /// Cluster id, member id and raft term; each notice sets its own revision.
    pub header: pb::ResponseHeader,
    pub notices: Vec<Notice>,
}

#[derive(Debug)]
pub struct Notice {
    pub stream: StreamId,
    /// What this notice counts against the stream's window; the client core hands
    /// it back in `Consumed` once written.
    pub credit_bytes: usize,
    /// Create, cancel and progress commands are each answered by exactly one
    /// notice with this set (maybe `Nothing`): that bounds commands in flight.
    pub answers_command: bool,
    pub body: NoticeBody,
}

#[derive(Debug, PartialEq)]
pub enum NoticeBody {
    /// The answer to a create: the new watch's id, or -1 and why it was refused.
    Created {
        watch_id: i64,
        revision: i64,
        cancel_reason: Option<&'static str>,
    },
    /// The answer to a cancel of an existing watch.
    Canceled { watch_id: i64, revision: i64 },
    /// Events of whole revisions, encoded `mvccpb.Event`s in revision order.
    Events {
        watch_id: i64,
        revision: i64,
        events: Vec<Bytes>,
        fragment: bool,
    },
    /// Everything up to `revision` was sent (watch_id -1: for every watcher).
    Progress { watch_id: i64, revision: i64 },
    /// The watcher needed compacted history and is gone.
    Compacted { watch_id: i64, compact_revision: i64 },
    /// A command etcd answers with nothing (cancel of an unknown id, ...).
    Nothing,
}

/// The `watch_id` etcd uses for "no watcher" and for stream-wide progress.
pub const INVALID_WATCH_ID: i64 = -1;

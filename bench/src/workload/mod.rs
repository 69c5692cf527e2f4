//! Workloads: what each request loop sends.
//!
//! A workload is a [`Workload`] (settings, untimed setup) that hands each request
//! loop a [`WorkloadClient`] (per-loop state, one op at a time). The runner owns
//! timing, pacing, stopping and recording, so a workload only says what one op
//! is. Adding one is a new file here with its flags and those two impls, plus a
//! variant in [`WorkloadSpec`]. Workloads with something running beside the
//! ops (watchers, leases to revoke) start it in `prepare` and wind it down in
//! `finish`, which also reports what it measured.

pub mod delete;
pub mod kube;
pub mod lease_keepalive;
pub mod populate;
pub mod put;
pub mod range;
pub mod txn_mixed;
pub mod txn_put;
pub mod watch_latency;
pub mod watchers;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::channel::Channel;
use clap::{Subcommand, ValueEnum};
use ringkv_proto::etcdserverpb::kv_client::KvClient;

use crate::connect::RESPONSE_BYTES_MAX;
use crate::progress::ProgressMode;
use crate::report::WatchSummary;
use crate::BenchError;

/// What a successful op was, for workloads that tell kinds apart (txn-put:
/// `success` or `conflict`); each kind gets its own count and latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome(pub Option<&'static str>);

impl Outcome {
    /// An op of the workload's only kind.
    pub const DONE: Outcome = Outcome(None);

    pub fn kind(kind: &'static str) -> Outcome {
        Outcome(Some(kind))
    }
}

pub type OpFuture<'a> = Pin<Box<dyn Future<Output = Result<Outcome, tonic::Status>> + Send + 'a>>;
pub type PrepareFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BenchError>> + Send + 'a>>;
pub type FinishFuture<'a> = Pin<Box<dyn Future<Output = Extras> + Send + 'a>>;

/// What a workload measured beside its ops, reported after them.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// What its watchers received (watch-latency, kube).
    pub watch: Option<WatchSummary>,
    /// Anything else worth a line in the report (lease revocation, list sizes).
    pub notes: Vec<String>,
}

/// A workload can do at most this many ops (delete: one per pre-populated key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpLimit {
    pub ops: u64,
    /// Said in the report when the run ends here rather than at --total/--duration.
    pub why: String,
}

pub trait Workload: Send + Sync {
    /// The subcommand name: `put`, `txn-put`...
    fn name(&self) -> &'static str;

    /// Its settings in one line, for the report.
    fn settings(&self) -> String;

    /// Every op writes, so throughput is reported as "writes/sec".
    fn writes(&self) -> bool;

    /// For a workload that mixes reads and writes: the outcome kinds of ops
    /// that wrote, reported together as "writes/sec" (kube).
    fn write_kinds(&self) -> &'static [&'static str] {
        &[]
    }

    fn op_limit(&self) -> Option<OpLimit> {
        None
    }

    /// Untimed setup before the measured run (writing the keys a read or delete
    /// workload needs). `channels` are the run's connections.
    fn prepare<'a>(&'a self, _channels: &'a [Channel], _progress: ProgressMode) -> PrepareFuture<'a> {
        Box::pin(async { Ok(()) })
    }

    /// The state of request loop number `index`, which sends on `channel`.
    fn client(&self, index: usize, channel: Channel) -> Box<dyn WorkloadClient>;

    /// Called once after the last op of a run that started at `start` (also
    /// after Ctrl-C): waits (bounded) for what is still on its way, stops what
    /// `prepare` started and says what it measured.
    fn finish<'a>(&'a self, _start: Instant, _progress: ProgressMode) -> FinishFuture<'a> {
        Box::pin(async { Extras::default() })
    }
}

pub trait WorkloadClient: Send {
    /// Sends op number `ticket` (numbered across all loops, from 0) and waits for
    /// its reply. The runner times it from `from`: the op's intended send time
    /// under --rate, else now. Workloads that time something else of the op
    /// (watch-latency: the events it causes) measure from `from` too.
    fn op(&mut self, ticket: u64, from: Instant) -> OpFuture<'_>;
}

/// The workload subcommands and their flags.
#[derive(Debug, Clone, Subcommand)]
pub enum WorkloadSpec {
    /// Put values of --val-size bytes under --key-space-size keys.
    Put(put::PutArgs),
    /// Range one key per request, or every key under --prefix (with --limit).
    ///
    /// The key space is written first (not measured) unless --no-populate.
    Range(range::RangeArgs),
    /// Compare-and-swap updates (kube-apiserver's GuaranteedUpdate).
    ///
    /// Each op is Txn(if mod_revision(key) == last seen then Put(key) else
    /// Range(key)); successes and conflicts are counted and timed separately.
    /// "Last seen" is shared by all clients and learned from every reply; before
    /// the run one keys-only list learns every key's revision (not measured).
    TxnPut(txn_put::TxnPutArgs),
    /// Txns that each either Range or Put (etcd's txn-mixed).
    ///
    /// --rw-ratio reads per write; a read ranges the whole keyspace with --limit.
    TxnMixed(txn_mixed::TxnMixedArgs),
    /// Delete pre-populated keys, each exactly once.
    ///
    /// The key space is written first (not measured); the run ends when every
    /// key is deleted, even before --total or --duration.
    Delete(delete::DeleteArgs),
    /// Put, and time each event's arrival at --watchers prefix watchers.
    ///
    /// Watchers (several per Watch stream) cover the key space and are created
    /// before the run. Each op is a Put; each event is matched to its Put by the
    /// revision the Put returned, and its latency runs from the Put's send
    /// (intended send under --rate) to the event's arrival: one sample per
    /// watcher per Put. The report gives Put latency and event latency apart,
    /// and checks that every watcher saw every Put exactly once.
    WatchLatency(watch_latency::WatchLatencyArgs),
    /// LeaseKeepAlive round trips over --leases leases.
    ///
    /// The leases are granted before the run (not measured); each client keeps
    /// one LeaseKeepAlive stream open and sends one keepalive at a time on it,
    /// cycling over the leases; an op is one request and its response. The
    /// leases are revoked at the end.
    LeaseKeepalive(lease_keepalive::LeaseKeepaliveArgs),
    /// kube-apiserver's storage traffic on /registry/pods/<ns>/<name> keys.
    ///
    /// --key-space-size objects are created first (not measured). Then each op
    /// is a paginated list (--kube-list-ratio of ops) or a write: 90% updates
    /// (Range, then CAS on mod_revision, retried once on conflict), 5% creates,
    /// 5% deletes (CAS). --watchers prefix watchers with prev_kv consume the
    /// events and check them; writes are also reported together as writes/sec.
    Kube(kube::KubeArgs),
}

impl WorkloadSpec {
    /// The workload; `request_timeout` bounds waits on streams (watch,
    /// keepalive), where the connection's per-request timeout does not apply.
    pub fn build(&self, request_timeout: Duration) -> Result<Arc<dyn Workload>, BenchError> {
        Ok(match self {
            WorkloadSpec::Put(args) => Arc::new(put::Put::new(args)?),
            WorkloadSpec::Range(args) => Arc::new(range::Range::new(args)?),
            WorkloadSpec::TxnPut(args) => Arc::new(txn_put::TxnPut::new(args)?),
            WorkloadSpec::TxnMixed(args) => Arc::new(txn_mixed::TxnMixed::new(args)?),
            WorkloadSpec::Delete(args) => Arc::new(delete::Delete::new(args)?),
            WorkloadSpec::WatchLatency(args) => Arc::new(watch_latency::WatchLatency::new(args, request_timeout)?),
            WorkloadSpec::LeaseKeepalive(args) => {
                Arc::new(lease_keepalive::LeaseKeepalive::new(args, request_timeout)?)
            }
            WorkloadSpec::Kube(args) => Arc::new(kube::Kube::new(args, request_timeout)?),
        })
    }
}

/// Read consistency, as etcd's benchmark spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable: the server confirms it is the leader first (etcd's ReadIndex).
    #[value(name = "l")]
    Linearizable,
    /// Serializable: served from the member's local state.
    #[value(name = "s")]
    Serializable,
}

impl Consistency {
    pub fn serializable(self) -> bool {
        self == Consistency::Serializable
    }

    pub fn name(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Serializable => "serializable",
        }
    }
}

/// A KV client on `channel` that accepts large responses.
pub fn kv_client(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX)
}

/// The key space of a workload's flags, or a usage error.
pub fn key_space(key_size: usize, size: u64, sequential: bool) -> Result<crate::keys::KeySpace, BenchError> {
    crate::keys::KeySpace::new(key_size, size, crate::keys::KeyOrder::from_sequential_flag(sequential))
        .map_err(BenchError::Usage)
}

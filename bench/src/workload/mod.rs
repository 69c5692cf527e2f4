//! Workloads: what each request loop sends.
//!
//! A workload is a [`Workload`] (settings, untimed setup) that hands each request
//! loop a [`WorkloadClient`] (per-loop state, one op at a time). The runner owns
//! timing, pacing, stopping and recording, so a workload only says what one op
//! is. Adding one (watch-latency, lease-keepalive, kube) is a new file here with
//! its flags and those two impls, plus a variant in [`WorkloadSpec`].

pub mod delete;
pub mod populate;
pub mod put;
pub mod range;
pub mod txn_mixed;
pub mod txn_put;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use clap::{Subcommand, ValueEnum};
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;

use crate::connect::RESPONSE_BYTES_MAX;
use crate::progress::ProgressMode;
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
}

pub trait WorkloadClient: Send {
    /// Sends op number `ticket` (numbered across all loops, from 0) and waits for
    /// its reply. The runner times it.
    fn op(&mut self, ticket: u64) -> OpFuture<'_>;
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
}

impl WorkloadSpec {
    pub fn build(&self) -> Result<Arc<dyn Workload>, BenchError> {
        Ok(match self {
            WorkloadSpec::Put(args) => Arc::new(put::Put::new(args)?),
            WorkloadSpec::Range(args) => Arc::new(range::Range::new(args)?),
            WorkloadSpec::TxnPut(args) => Arc::new(txn_put::TxnPut::new(args)?),
            WorkloadSpec::TxnMixed(args) => Arc::new(txn_mixed::TxnMixed::new(args)?),
            WorkloadSpec::Delete(args) => Arc::new(delete::Delete::new(args)?),
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

//! `txn-mixed`: like etcd's benchmark txn-mixed, each op is a one-op Txn that
//! either reads or writes: with probability rw/(1+rw) a Range over every key
//! (from "\0", so the whole keyspace) limited to --limit keys, else a Put of one
//! key. Reads and writes are counted and timed separately.

use std::sync::Arc;
use std::time::Instant;

use crate::channel::Channel;
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::{request_op, PutRequest, RangeRequest, RequestOp, TxnRequest};

use super::{key_space, kv_client, Consistency, OpFuture, Outcome, Workload, WorkloadClient};
use crate::keys::{self, KeySpace};
use crate::BenchError;

#[derive(Debug, Clone, Args)]
pub struct TxnMixedArgs {
    /// Key size in bytes (keys are zero-padded decimal numbers).
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Number of distinct keys written (etcd's benchmark defaults to 1).
    #[arg(long, default_value_t = 1000)]
    pub key_space_size: u64,
    /// Write keys in order (0, 1, 2, ...) instead of picking them at random.
    #[arg(long)]
    pub sequential_keys: bool,
    /// Linearizable (l) or serializable (s) reads.
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// Most keys one read returns.
    #[arg(long, default_value_t = 1000)]
    pub limit: i64,
    /// Reads per write (1: half the txns read).
    #[arg(long, default_value_t = 1.0)]
    pub rw_ratio: f64,
}

pub struct TxnMixed {
    keys: KeySpace,
    value: Arc<Vec<u8>>,
    consistency: Consistency,
    limit: i64,
    rw_ratio: f64,
}

impl TxnMixed {
    pub fn new(args: &TxnMixedArgs) -> Result<TxnMixed, BenchError> {
        if !args.rw_ratio.is_finite() || args.rw_ratio < 0.0 {
            return Err(BenchError::Usage("--rw-ratio must be a number >= 0".into()));
        }
        if args.limit < 0 {
            return Err(BenchError::Usage("--limit must not be negative".into()));
        }
        Ok(TxnMixed {
            keys: key_space(args.key_size, args.key_space_size, args.sequential_keys)?,
            value: Arc::new(keys::value(args.val_size)),
            consistency: args.consistency,
            limit: args.limit,
            rw_ratio: args.rw_ratio,
        })
    }
}

/// The chance that an op reads, for `rw_ratio` reads per write.
pub fn read_probability(rw_ratio: f64) -> f64 {
    rw_ratio / (1.0 + rw_ratio)
}

impl Workload for TxnMixed {
    fn name(&self) -> &'static str {
        "txn-mixed"
    }

    fn settings(&self) -> String {
        format!(
            "rw-ratio {}, {} reads of the whole keyspace with limit {}, {}, val-size {} B",
            self.rw_ratio,
            self.consistency.name(),
            self.limit,
            self.keys.describe(),
            self.value.len()
        )
    }

    fn writes(&self) -> bool {
        false
    }

    fn client(&self, index: usize, channel: Channel) -> Box<dyn WorkloadClient> {
        Box::new(TxnMixedClient {
            kv: kv_client(channel),
            keys: self.keys,
            value: Arc::clone(&self.value),
            read_probability: read_probability(self.rw_ratio),
            serializable: self.consistency.serializable(),
            limit: self.limit,
            rng: StdRng::seed_from_u64(index as u64),
        })
    }
}

struct TxnMixedClient {
    kv: KvClient<Channel>,
    keys: KeySpace,
    value: Arc<Vec<u8>>,
    read_probability: f64,
    serializable: bool,
    limit: i64,
    rng: StdRng,
}

impl TxnMixedClient {
    fn next_op(&mut self, ticket: u64) -> (request_op::Request, &'static str) {
        if self.rng.gen_bool(self.read_probability) {
            let read = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                limit: self.limit,
                serializable: self.serializable,
                ..Default::default()
            };
            (request_op::Request::RequestRange(read), "read")
        } else {
            let write = PutRequest {
                key: self.keys.key(self.keys.index(ticket, &mut self.rng)),
                value: self.value.to_vec(),
                ..Default::default()
            };
            (request_op::Request::RequestPut(write), "write")
        }
    }
}

impl WorkloadClient for TxnMixedClient {
    fn op(&mut self, ticket: u64, _from: Instant) -> OpFuture<'_> {
        let (op, kind) = self.next_op(ticket);
        let request = TxnRequest {
            compare: Vec::new(),
            success: vec![RequestOp { request: Some(op) }],
            failure: Vec::new(),
        };
        Box::pin(async move {
            self.kv.txn(request).await?;
            Ok(Outcome::kind(kind))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rw_ratio_is_reads_per_write() {
        assert_eq!(read_probability(1.0), 0.5);
        assert_eq!(read_probability(0.0), 0.0);
        assert_eq!(read_probability(4.0), 0.8);
    }
}

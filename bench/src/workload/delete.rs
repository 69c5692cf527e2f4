//! `delete`: DeleteRange of pre-populated keys. Before the run (untimed) every
//! key of the key space is written; the run then deletes each key exactly once,
//! in order or in a shuffled order, so every delete removes a key. The run ends
//! when the keys run out, even before --total or --duration.

use std::sync::Arc;
use std::time::Instant;

use crate::channel::Channel;
use clap::Args;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::DeleteRangeRequest;

use super::populate::populate;
use super::{key_space, kv_client, OpFuture, OpLimit, Outcome, PrepareFuture, Workload, WorkloadClient};
use crate::keys::{self, KeySpace};
use crate::progress::ProgressMode;
use crate::BenchError;

/// Seed of the shuffled delete order, fixed so runs are comparable.
const ORDER_SEED: u64 = 0x5eed;

#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    /// Key size in bytes (keys are zero-padded decimal numbers).
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes of the keys written before the run.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Number of keys written before the run: the most deletes a run can do.
    #[arg(long, default_value_t = 10_000)]
    pub key_space_size: u64,
    /// Delete keys in order (0, 1, 2, ...) instead of in a shuffled order.
    #[arg(long)]
    pub sequential_keys: bool,
}

pub struct Delete {
    keys: KeySpace,
    value: Arc<Vec<u8>>,
    order: Arc<Vec<u64>>,
}

impl Delete {
    pub fn new(args: &DeleteArgs) -> Result<Delete, BenchError> {
        let keys = key_space(args.key_size, args.key_space_size, args.sequential_keys)?;
        Ok(Delete {
            keys,
            value: Arc::new(keys::value(args.val_size)),
            order: Arc::new(keys.each_once(ORDER_SEED)),
        })
    }
}

impl Workload for Delete {
    fn name(&self) -> &'static str {
        "delete"
    }

    fn settings(&self) -> String {
        format!(
            "each pre-populated key deleted once, {}, val-size {} B",
            self.keys.describe(),
            self.value.len()
        )
    }

    fn writes(&self) -> bool {
        true
    }

    fn op_limit(&self) -> Option<OpLimit> {
        Some(OpLimit {
            ops: self.keys.size(),
            why: format!(
                "every pre-populated key is deleted (raise --key-space-size above {} for a longer run)",
                self.keys.size()
            ),
        })
    }

    fn prepare<'a>(&'a self, channels: &'a [Channel], progress: ProgressMode) -> PrepareFuture<'a> {
        Box::pin(populate(channels, self.keys, Arc::clone(&self.value), progress))
    }

    fn client(&self, _index: usize, channel: Channel) -> Box<dyn WorkloadClient> {
        Box::new(DeleteClient {
            kv: kv_client(channel),
            keys: self.keys,
            order: Arc::clone(&self.order),
        })
    }
}

struct DeleteClient {
    kv: KvClient<Channel>,
    keys: KeySpace,
    order: Arc<Vec<u64>>,
}

impl WorkloadClient for DeleteClient {
    fn op(&mut self, ticket: u64, _from: Instant) -> OpFuture<'_> {
        let request = DeleteRangeRequest {
            key: self.keys.key(self.order[ticket as usize]),
            ..Default::default()
        };
        Box::pin(async move {
            let response = self.kv.delete_range(request).await?.into_inner();
            Ok(if response.deleted == 1 {
                Outcome::kind("deleted")
            } else {
                Outcome::kind("not found")
            })
        })
    }
}

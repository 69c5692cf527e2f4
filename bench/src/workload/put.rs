//! `put`: Put requests of --val-size bytes over --key-space-size keys.

use std::sync::Arc;
use std::time::Instant;

use crate::channel::Channel;
use clap::Args;
use rand::rngs::StdRng;
use rand::SeedableRng;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::PutRequest;

use super::{key_space, kv_client, OpFuture, Outcome, Workload, WorkloadClient};
use crate::keys::{self, KeySpace};
use crate::BenchError;

#[derive(Debug, Clone, Args)]
pub struct PutArgs {
    /// Key size in bytes (keys are zero-padded decimal numbers).
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Number of distinct keys written (etcd's benchmark defaults to 1).
    #[arg(long, default_value_t = 100_000)]
    pub key_space_size: u64,
    /// Write keys in order (0, 1, 2, ...) instead of picking them at random.
    #[arg(long)]
    pub sequential_keys: bool,
}

pub struct Put {
    keys: KeySpace,
    value: Arc<Vec<u8>>,
}

impl Put {
    pub fn new(args: &PutArgs) -> Result<Put, BenchError> {
        Ok(Put {
            keys: key_space(args.key_size, args.key_space_size, args.sequential_keys)?,
            value: Arc::new(keys::value(args.val_size)),
        })
    }
}

impl Workload for Put {
    fn name(&self) -> &'static str {
        "put"
    }

    fn settings(&self) -> String {
        format!("{}, val-size {} B", self.keys.describe(), self.value.len())
    }

    fn writes(&self) -> bool {
        true
    }

    fn client(&self, index: usize, channel: Channel) -> Box<dyn WorkloadClient> {
        Box::new(PutClient {
            kv: kv_client(channel),
            keys: self.keys,
            value: Arc::clone(&self.value),
            rng: StdRng::seed_from_u64(index as u64),
        })
    }
}

struct PutClient {
    kv: KvClient<Channel>,
    keys: KeySpace,
    value: Arc<Vec<u8>>,
    rng: StdRng,
}

impl WorkloadClient for PutClient {
    fn op(&mut self, ticket: u64, _from: Instant) -> OpFuture<'_> {
        let request = PutRequest {
            key: self.keys.key(self.keys.index(ticket, &mut self.rng)),
            value: self.value.to_vec(),
            ..Default::default()
        };
        Box::pin(async move {
            self.kv.put(request).await?;
            Ok(Outcome::DONE)
        })
    }
}

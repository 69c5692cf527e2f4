//! `range`: Range one key per request (found or not found), or every key under
//! a prefix with a limit, linearizable or serializable. The key space is written
//! first (untimed) unless --no-populate.

use std::sync::Arc;
use std::time::Instant;

use crate::channel::Channel;
use clap::Args;
use rand::rngs::StdRng;
use rand::SeedableRng;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::RangeRequest;

use super::populate::populate;
use super::{key_space, kv_client, Consistency, OpFuture, Outcome, PrepareFuture, Workload, WorkloadClient};
use crate::keys::{self, KeySpace};
use crate::progress::ProgressMode;
use crate::BenchError;

#[derive(Debug, Clone, Args)]
pub struct RangeArgs {
    /// Key size in bytes (keys are zero-padded decimal numbers).
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes of the keys written before the run.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Number of keys written before the run and read from.
    #[arg(long, default_value_t = 1000)]
    pub key_space_size: u64,
    /// Read keys in order (0, 1, 2, ...) instead of picking them at random.
    #[arg(long)]
    pub sequential_keys: bool,
    /// Linearizable (l) or serializable (s) reads.
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// Each request ranges every key starting with PREFIX (e.g. `0000` for the
    /// first 10,000 keys of 8 bytes) instead of one key.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Most keys one request returns; 0 means no limit.
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Do not write the key space first: read whatever the server has.
    #[arg(long)]
    pub no_populate: bool,
}

pub struct Range {
    keys: KeySpace,
    value: Arc<Vec<u8>>,
    consistency: Consistency,
    prefix: Option<Vec<u8>>,
    limit: i64,
    populate: bool,
}

impl Range {
    pub fn new(args: &RangeArgs) -> Result<Range, BenchError> {
        if args.limit < 0 {
            return Err(BenchError::Usage("--limit must not be negative".into()));
        }
        Ok(Range {
            keys: key_space(args.key_size, args.key_space_size, args.sequential_keys)?,
            value: Arc::new(keys::value(args.val_size)),
            consistency: args.consistency,
            prefix: args.prefix.as_ref().map(|p| p.as_bytes().to_vec()),
            limit: args.limit,
            populate: !args.no_populate,
        })
    }
}

impl Workload for Range {
    fn name(&self) -> &'static str {
        "range"
    }

    fn settings(&self) -> String {
        let what = match &self.prefix {
            Some(prefix) => format!("prefix {:?}", String::from_utf8_lossy(prefix)),
            None => "one key per request".to_string(),
        };
        let limit = if self.limit > 0 {
            format!(", limit {}", self.limit)
        } else {
            String::new()
        };
        let populated = if self.populate { "populated" } else { "not populated" };
        format!(
            "{}, {what}{limit}, {}, val-size {} B, {populated}",
            self.consistency.name(),
            self.keys.describe(),
            self.value.len()
        )
    }

    fn writes(&self) -> bool {
        false
    }

    fn prepare<'a>(&'a self, channels: &'a [Channel], progress: ProgressMode) -> PrepareFuture<'a> {
        Box::pin(async move {
            if self.populate {
                populate(channels, self.keys, Arc::clone(&self.value), progress).await?;
            }
            Ok(())
        })
    }

    fn client(&self, index: usize, channel: Channel) -> Box<dyn WorkloadClient> {
        Box::new(RangeClient {
            kv: kv_client(channel),
            keys: self.keys,
            serializable: self.consistency.serializable(),
            prefix: self.prefix.clone(),
            limit: self.limit,
            rng: StdRng::seed_from_u64(index as u64),
        })
    }
}

struct RangeClient {
    kv: KvClient<Channel>,
    keys: KeySpace,
    serializable: bool,
    prefix: Option<Vec<u8>>,
    limit: i64,
    rng: StdRng,
}

impl WorkloadClient for RangeClient {
    fn op(&mut self, ticket: u64, _from: Instant) -> OpFuture<'_> {
        let (key, range_end) = match &self.prefix {
            Some(prefix) => (prefix.clone(), keys::prefix_end(prefix)),
            None => (self.keys.key(self.keys.index(ticket, &mut self.rng)), Vec::new()),
        };
        let single_key = range_end.is_empty();
        let request = RangeRequest {
            key,
            range_end,
            limit: self.limit,
            serializable: self.serializable,
            ..Default::default()
        };
        Box::pin(async move {
            let response = self.kv.range(request).await?.into_inner();
            Ok(match (single_key, response.kvs.is_empty()) {
                (false, _) => Outcome::DONE,
                (true, false) => Outcome::kind("found"),
                (true, true) => Outcome::kind("not found"),
            })
        })
    }
}

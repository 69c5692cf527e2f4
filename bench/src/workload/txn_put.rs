//! `txn-put`: compare-and-swap updates the way kube-apiserver's GuaranteedUpdate
//! does them.
//!
//! One op: `Txn(if mod_revision(key) == last seen then Put(key) else Range(key))`.
//! "Last seen" comes from a revision view shared by all request loops (as
//! kube-apiserver's watch cache is shared by its requests): every reply updates
//! it, a success with the txn's revision, a conflict with the revision the
//! failure Range returned, so the next attempt on that key uses the current one.
//! Conflicts happen when loops race on the same key, more often the smaller the
//! key space. Before the run (untimed), one paginated keys-only Range learns
//! every key's revision, like kube-apiserver's initial list; if a key is still
//! unknown when an op picks it, the op Ranges it first.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::channel::Channel;
use clap::Args;
use rand::rngs::StdRng;
use rand::SeedableRng;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::{
    compare, request_op, response_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse,
};
use tonic::Status;

use super::{key_space, kv_client, OpFuture, Outcome, PrepareFuture, Workload, WorkloadClient};
use crate::keys::{self, KeySpace};
use crate::progress::ProgressMode;
use crate::BenchError;

/// The revision view holds 8 bytes per key.
pub const KEY_SPACE_MAX: u64 = 10_000_000;
/// Keys per page of the initial list.
pub const LIST_PAGE_KEYS: i64 = 10_000;
/// A key whose revision the view does not know yet.
const UNKNOWN: i64 = -1;

#[derive(Debug, Clone, Args)]
pub struct TxnPutArgs {
    /// Key size in bytes (keys are zero-padded decimal numbers).
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Number of distinct keys updated (at most 10,000,000).
    #[arg(long, default_value_t = 10_000)]
    pub key_space_size: u64,
    /// Update keys in order (0, 1, 2, ...) instead of picking them at random.
    #[arg(long)]
    pub sequential_keys: bool,
}

/// The last mod_revision seen per key: 0 for a key that does not exist.
struct RevisionView {
    revisions: Vec<AtomicI64>,
}

impl RevisionView {
    fn new(keys: u64) -> RevisionView {
        RevisionView {
            revisions: (0..keys).map(|_| AtomicI64::new(UNKNOWN)).collect(),
        }
    }

    fn get(&self, index: u64) -> i64 {
        self.revisions[index as usize].load(Ordering::Relaxed)
    }

    /// Revisions only grow (this workload never deletes), so a late reply
    /// cannot move the view back.
    fn learn(&self, index: u64, revision: i64) {
        self.revisions[index as usize].fetch_max(revision, Ordering::Relaxed);
    }
}

pub struct TxnPut {
    keys: KeySpace,
    value: Arc<Vec<u8>>,
    view: Arc<RevisionView>,
}

impl TxnPut {
    pub fn new(args: &TxnPutArgs) -> Result<TxnPut, BenchError> {
        if args.key_space_size > KEY_SPACE_MAX {
            return Err(BenchError::Usage(format!(
                "txn-put: --key-space-size is at most {KEY_SPACE_MAX}"
            )));
        }
        let keys = key_space(args.key_size, args.key_space_size, args.sequential_keys)?;
        Ok(TxnPut {
            keys,
            value: Arc::new(keys::value(args.val_size)),
            view: Arc::new(RevisionView::new(keys.size())),
        })
    }

    /// Lists the key space (keys only, paginated) into the view; keys not
    /// listed do not exist: revision 0.
    async fn learn_revisions(&self, channel: Channel) -> Result<(), BenchError> {
        let mut kv = kv_client(channel);
        let (mut from, end) = self.keys.bounds();
        loop {
            let request = RangeRequest {
                key: from,
                range_end: end.clone(),
                limit: LIST_PAGE_KEYS,
                keys_only: true,
                ..Default::default()
            };
            let page = kv.range(request).await.map_err(|status| {
                BenchError::Prepare(format!("listing keys: {:?}: {}", status.code(), status.message()))
            })?;
            let page = page.into_inner();
            for kv in &page.kvs {
                if let Some(index) = self.keys.index_of(&kv.key) {
                    self.view.learn(index, kv.mod_revision);
                }
            }
            match page.kvs.last() {
                Some(last) if page.more => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => break,
            }
        }
        for index in 0..self.keys.size() {
            self.view.learn(index, 0);
        }
        Ok(())
    }
}

impl Workload for TxnPut {
    fn name(&self) -> &'static str {
        "txn-put"
    }

    fn settings(&self) -> String {
        format!("CAS update, {}, val-size {} B", self.keys.describe(), self.value.len())
    }

    fn writes(&self) -> bool {
        true
    }

    fn prepare<'a>(&'a self, channels: &'a [Channel], progress: ProgressMode) -> PrepareFuture<'a> {
        Box::pin(async move {
            progress.note("listing the key space's revisions (not measured)");
            self.learn_revisions(channels[0].clone()).await
        })
    }

    fn client(&self, index: usize, channel: Channel) -> Box<dyn WorkloadClient> {
        Box::new(TxnPutClient {
            kv: kv_client(channel),
            keys: self.keys,
            value: Arc::clone(&self.value),
            view: Arc::clone(&self.view),
            rng: StdRng::seed_from_u64(index as u64),
        })
    }
}

struct TxnPutClient {
    kv: KvClient<Channel>,
    keys: KeySpace,
    value: Arc<Vec<u8>>,
    view: Arc<RevisionView>,
    rng: StdRng,
}

impl WorkloadClient for TxnPutClient {
    fn op(&mut self, ticket: u64, _from: Instant) -> OpFuture<'_> {
        let index = self.keys.index(ticket, &mut self.rng);
        let key = self.keys.key(index);
        Box::pin(async move {
            let mut expected = self.view.get(index);
            if expected == UNKNOWN {
                let request = RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                };
                let response = self.kv.range(request).await?.into_inner();
                expected = response.kvs.first().map_or(0, |kv| kv.mod_revision);
                self.view.learn(index, expected);
            }
            let request = cas_put(key, expected, self.value.to_vec());
            let response = self.kv.txn(request).await?.into_inner();
            let (outcome, revision) = cas_outcome(&response)?;
            self.view.learn(index, revision);
            Ok(outcome)
        })
    }
}

/// `Txn(if mod_revision(key) == expected then Put(key, value) else Range(key))`.
pub fn cas_put(key: Vec<u8>, expected: i64, value: Vec<u8>) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: key.clone(),
            target_union: Some(compare::TargetUnion::ModRevision(expected)),
            range_end: Vec::new(),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.clone(),
                value,
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key,
                ..Default::default()
            })),
        }],
    }
}

/// Success or conflict, and the key's mod_revision now: on success the txn's
/// revision, on conflict what the failure Range read (0: the key is gone).
// tonic::Status is large; it is the error type of every call on this path anyway.
#[allow(clippy::result_large_err)]
pub fn cas_outcome(response: &TxnResponse) -> Result<(Outcome, i64), Status> {
    if response.succeeded {
        let revision = response
            .header
            .as_ref()
            .map(|header| header.revision)
            .ok_or_else(|| Status::internal("txn response without a header"))?;
        return Ok((Outcome::kind("success"), revision));
    }
    let range = response.responses.first().and_then(|op| match &op.response {
        Some(response_op::Response::ResponseRange(range)) => Some(range),
        _ => None,
    });
    let range = range.ok_or_else(|| Status::internal("failed txn without its Range response"))?;
    let revision = range.kvs.first().map_or(0, |kv| kv.mod_revision);
    Ok((Outcome::kind("conflict"), revision))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::etcdserverpb::{RangeResponse, ResponseHeader, ResponseOp};
    use ringkv_proto::mvccpb::KeyValue;

    #[test]
    fn cas_compares_mod_revision_and_reads_on_failure() {
        let txn = cas_put(b"k".to_vec(), 7, b"v".to_vec());
        assert_eq!(txn.compare.len(), 1);
        assert_eq!(txn.compare[0].target, compare::CompareTarget::Mod as i32);
        assert_eq!(txn.compare[0].result, compare::CompareResult::Equal as i32);
        assert_eq!(txn.compare[0].target_union, Some(compare::TargetUnion::ModRevision(7)));
        assert!(matches!(txn.success[0].request, Some(request_op::Request::RequestPut(ref p)) if p.key == b"k"));
        assert!(matches!(txn.failure[0].request, Some(request_op::Request::RequestRange(ref r)) if r.key == b"k"));
    }

    #[test]
    fn success_takes_the_txn_revision() {
        let response = TxnResponse {
            header: Some(ResponseHeader {
                revision: 42,
                ..Default::default()
            }),
            succeeded: true,
            responses: vec![],
        };
        assert_eq!(cas_outcome(&response).unwrap(), (Outcome::kind("success"), 42));
    }

    #[test]
    fn conflict_takes_the_revision_the_failure_range_read() {
        let range = |kvs: Vec<KeyValue>| TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded: false,
            responses: vec![ResponseOp {
                response: Some(response_op::Response::ResponseRange(RangeResponse {
                    kvs,
                    ..Default::default()
                })),
            }],
        };
        let current = KeyValue {
            key: b"k".to_vec(),
            mod_revision: 9,
            ..Default::default()
        };
        assert_eq!(
            cas_outcome(&range(vec![current])).unwrap(),
            (Outcome::kind("conflict"), 9)
        );
        assert_eq!(cas_outcome(&range(vec![])).unwrap(), (Outcome::kind("conflict"), 0));
    }

    #[test]
    fn the_view_never_moves_back() {
        let view = RevisionView::new(2);
        assert_eq!(view.get(0), UNKNOWN);
        view.learn(0, 10);
        view.learn(0, 5);
        assert_eq!(view.get(0), 10);
        view.learn(1, 0);
        assert_eq!(view.get(1), 0);
    }
}

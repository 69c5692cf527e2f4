//! One kube request loop: the requests kube-apiserver's storage layer sends
//! for an update (GuaranteedUpdate), a create, a delete and a paginated list.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::channel::Channel;
use rand::rngs::StdRng;
use rand::Rng;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::{request_op, DeleteRangeRequest, RangeRequest, RequestOp, TxnRequest};
use tonic::Status;

use super::list_page::{ListPages, ListedKey};
use super::objects::{object_key, Objects, PREFIX};
use crate::keys::prefix_end;
use crate::workload::txn_put::{cas_outcome, cas_put};
use crate::workload::{OpFuture, Outcome, WorkloadClient};

/// Keys per page of a list: kube-apiserver's reflectors ask for 500.
pub const LIST_PAGE_KEYS: i64 = 500;
/// Of the writes: updates, then creates; the rest are deletes.
pub const UPDATE_SHARE: f64 = 0.90;
pub const CREATE_SHARE: f64 = 0.05;

/// Outcome kinds of ops that wrote.
pub const WRITE_KINDS: &[&str] = &["update", "update retried", "create", "delete", "delete retried"];

/// What every loop shares: the objects, and what the writes and lists did.
#[derive(Debug)]
pub struct KubeState {
    pub objects: Objects,
    pub value: Vec<u8>,
    /// Writes that succeeded, and the highest revision one returned.
    pub writes_applied: AtomicU64,
    pub write_revision_max: AtomicI64,
    /// Writes that failed with an error: applied or not, nobody knows.
    pub writes_unknown: AtomicU64,
    pub lists: AtomicU64,
    pub list_pages: AtomicU64,
    pub list_keys: AtomicU64,
}

impl KubeState {
    pub fn new(objects: u64, value: Vec<u8>) -> KubeState {
        KubeState {
            objects: Objects::new(objects),
            value,
            writes_applied: AtomicU64::new(0),
            write_revision_max: AtomicI64::new(0),
            writes_unknown: AtomicU64::new(0),
            lists: AtomicU64::new(0),
            list_pages: AtomicU64::new(0),
            list_keys: AtomicU64::new(0),
        }
    }

    fn applied(&self, revision: i64) {
        self.writes_applied.fetch_add(1, Ordering::Relaxed);
        self.write_revision_max.fetch_max(revision, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    List,
    Update,
    Create,
    Delete,
}

pub struct KubeClient {
    pub kv: KvClient<Channel>,
    /// Range for list pages, decoded to what `check_page` reads.
    pub lists: ListPages,
    pub state: Arc<KubeState>,
    pub list_ratio: f64,
    pub rng: StdRng,
}

impl WorkloadClient for KubeClient {
    fn op(&mut self, _ticket: u64, _from: Instant) -> OpFuture<'_> {
        let op = self.pick_op();
        Box::pin(async move {
            let result = match op {
                Op::List => self.list().await,
                Op::Update => self.update().await,
                Op::Create => self.create().await,
                Op::Delete => self.delete().await,
            };
            if result.is_err() && op != Op::List {
                self.state.writes_unknown.fetch_add(1, Ordering::Relaxed);
            }
            result.map(Outcome::kind)
        })
    }
}

// tonic::Status is large; it is the error type of every call here anyway.
#[allow(clippy::result_large_err)]
impl KubeClient {
    fn pick_op(&mut self) -> Op {
        if self.rng.gen_bool(self.list_ratio) {
            return Op::List;
        }
        let write: f64 = self.rng.gen();
        if write < UPDATE_SHARE {
            Op::Update
        } else if write < UPDATE_SHARE + CREATE_SHARE {
            Op::Create
        } else {
            Op::Delete
        }
    }

    /// The object's mod_revision, None if it does not exist (a quorum read,
    /// as kube-apiserver's Get without a cached object).
    async fn mod_revision(&mut self, key: &[u8]) -> Result<Option<i64>, Status> {
        let request = RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        let response = self.kv.range(request).await?.into_inner();
        Ok(response.kvs.first().map(|kv| kv.mod_revision))
    }

    /// Sends `txn(revision)`, and once more with the revision a conflict read;
    /// the outcome is `kinds.0` (first try), `kinds.1` (after a conflict),
    /// `kinds.2` (two conflicts) or None if the object is gone.
    async fn cas_retried_once(
        &mut self,
        mut revision: i64,
        txn: impl Fn(i64) -> TxnRequest,
        kinds: (&'static str, &'static str, &'static str),
    ) -> Result<Option<&'static str>, Status> {
        for kind in [kinds.0, kinds.1] {
            let response = self.kv.txn(txn(revision)).await?.into_inner();
            let (_, now) = cas_outcome(&response)?;
            if response.succeeded {
                self.state.applied(now);
                return Ok(Some(kind));
            }
            if now == 0 {
                return Ok(None);
            }
            revision = now;
        }
        Ok(Some(kinds.2))
    }

    /// GuaranteedUpdate: read the object, then CAS it on that revision.
    async fn update(&mut self) -> Result<&'static str, Status> {
        let Some(index) = self.state.objects.pick(&mut self.rng) else {
            return self.create().await;
        };
        let key = object_key(index);
        let Some(revision) = self.mod_revision(&key).await? else {
            return Ok("update not found");
        };
        let value = self.state.value.clone();
        let put = |revision| cas_put(key.clone(), revision, value.clone());
        let outcome = self
            .cas_retried_once(revision, put, ("update", "update retried", "update conflict"))
            .await?;
        Ok(outcome.unwrap_or("update not found"))
    }

    /// Create: a Put only if the key has never been written (mod_revision 0).
    async fn create(&mut self) -> Result<&'static str, Status> {
        let Some(index) = self.state.objects.new_index() else {
            return Err(Status::resource_exhausted("kube: no object numbers left to create"));
        };
        let key = object_key(index);
        let response = self
            .kv
            .txn(cas_put(key, 0, self.state.value.clone()))
            .await?
            .into_inner();
        let (_, revision) = cas_outcome(&response)?;
        self.state.objects.add(index);
        if response.succeeded {
            self.state.applied(revision);
            Ok("create")
        } else {
            Ok("create exists")
        }
    }

    /// GuaranteedDelete: read the object, then delete it only at that revision.
    async fn delete(&mut self) -> Result<&'static str, Status> {
        let Some(index) = self.state.objects.claim(&mut self.rng) else {
            return Ok("delete not found");
        };
        let outcome = self.delete_object(index).await;
        match outcome {
            Ok("delete") | Ok("delete retried") | Ok("delete not found") => {}
            _ => self.state.objects.add(index),
        }
        outcome
    }

    async fn delete_object(&mut self, index: u64) -> Result<&'static str, Status> {
        let key = object_key(index);
        let Some(revision) = self.mod_revision(&key).await? else {
            return Ok("delete not found");
        };
        let delete = |revision| cas_delete(key.clone(), revision);
        let outcome = self
            .cas_retried_once(revision, delete, ("delete", "delete retried", "delete conflict"))
            .await?;
        Ok(outcome.unwrap_or("delete not found"))
    }

    /// Every object, LIST_PAGE_KEYS at a time, every page at the first page's
    /// revision (a quorum read), continuing after the last key returned.
    async fn list(&mut self) -> Result<&'static str, Status> {
        let end = prefix_end(PREFIX.as_bytes());
        let mut from = PREFIX.as_bytes().to_vec();
        let mut revision = 0;
        let (mut pages, mut keys) = (0u64, 0u64);
        loop {
            let request = RangeRequest {
                key: from,
                range_end: end.clone(),
                limit: LIST_PAGE_KEYS,
                revision,
                serializable: false,
                ..Default::default()
            };
            let page = self.lists.range(request).await?;
            if revision == 0 {
                revision = page.header.as_ref().map_or(0, |header| header.revision);
            }
            check_page(&page.kvs, revision, page.more)?;
            pages += 1;
            keys += page.kvs.len() as u64;
            match page.kvs.last() {
                Some(last) if page.more => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => break,
            }
        }
        self.state.lists.fetch_add(1, Ordering::Relaxed);
        self.state.list_pages.fetch_add(pages, Ordering::Relaxed);
        self.state.list_keys.fetch_add(keys, Ordering::Relaxed);
        Ok("list")
    }
}

/// A page of a list pinned at `revision` holds at most LIST_PAGE_KEYS keys, none
/// changed after `revision`, and is not empty if more follow.
#[allow(clippy::result_large_err)]
fn check_page(kvs: &[ListedKey], revision: i64, more: bool) -> Result<(), Status> {
    if kvs.len() > LIST_PAGE_KEYS as usize {
        return Err(Status::internal(format!(
            "a list page returned {} keys, above its limit {LIST_PAGE_KEYS}",
            kvs.len()
        )));
    }
    if let Some(kv) = kvs.iter().find(|kv| kv.mod_revision > revision) {
        return Err(Status::internal(format!(
            "a list page pinned at revision {revision} returned a key modified at {}",
            kv.mod_revision
        )));
    }
    if more && kvs.is_empty() {
        return Err(Status::internal("a list page said more follow but returned no keys"));
    }
    Ok(())
}

/// `Txn(if mod_revision(key) == expected then DeleteRange(key) else Range(key))`.
pub fn cas_delete(key: Vec<u8>, expected: i64) -> TxnRequest {
    let mut txn = cas_put(key.clone(), expected, Vec::new());
    txn.success = vec![RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key,
            ..Default::default()
        })),
    }];
    txn
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::etcdserverpb::compare;

    #[test]
    fn cas_delete_deletes_only_at_the_read_revision() {
        let txn = cas_delete(b"k".to_vec(), 7);
        assert_eq!(txn.compare[0].target, compare::CompareTarget::Mod as i32);
        assert_eq!(txn.compare[0].target_union, Some(compare::TargetUnion::ModRevision(7)));
        assert!(matches!(&txn.success[0].request, Some(request_op::Request::RequestDeleteRange(d)) if d.key == b"k"));
        assert!(matches!(&txn.failure[0].request, Some(request_op::Request::RequestRange(r)) if r.key == b"k"));
    }

    #[test]
    fn a_page_must_respect_its_pinned_revision_and_limit() {
        let kv = |mod_revision| ListedKey {
            mod_revision,
            ..Default::default()
        };
        assert!(check_page(&[kv(5), kv(9)], 9, true).is_ok());
        assert!(check_page(&[kv(5), kv(10)], 9, false).is_err());
        assert!(check_page(&[], 9, true).is_err());
        let too_many: Vec<ListedKey> = (0..=LIST_PAGE_KEYS).map(|_| kv(1)).collect();
        assert!(check_page(&too_many, 9, false).is_err());
    }
}

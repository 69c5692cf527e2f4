//! What the Lock and Election services share, as etcd builds both on
//! clientv3's `concurrency` package: a caller's lease (a new one for lease 0),
//! the key a lease owns under a name, the oldest or newest key under a name,
//! waiting until every key created before one's own is deleted, and undoing a
//! key when the caller gives up.
//!
//! The services run on a client core over the store core's KV, lease and
//! watch calls, as etcd's run over an in-process client. Every wait is a
//! future the gRPC layer drops at the caller's deadline or when the client
//! goes away; what a dropped wait leaves behind is undone by [`Undo`].
//!
//! Every call they make is the caller's, credentials and all ([`CallerKeys`]):
//! etcd's services hand the caller's context, token included, to their
//! in-process client, so with auth on the caller needs the permissions the
//! KV, lease and watch calls underneath need.

use std::cell::Cell;
use std::rc::Rc;

use prost::Message;
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::mvccpb;

use super::store_client::StoreClient;
use super::watch::{KeyWatch, KeyWatchUpdate, WatchRouter};
use crate::etcd_error::EtcdError;
use crate::grpc::{Code, Status};
use crate::store::messages::{CallAuth, Request, Response};

/// The TTL of the lease a call with lease 0 is given: etcd's session default
/// (`concurrency.defaultSessionTTL`). Nothing keeps it alive: as in etcd, the
/// key lives at most this long unless the caller keeps the lease alive.
pub const SESSION_TTL_SECONDS: i64 = 60;

/// Lock and Campaign calls waiting for earlier keys, and Observe streams, on
/// one client core at once: each holds a watcher on the store core. etcd has
/// no limit (a goroutine each). A call past it answers "too many requests".
pub const WAITERS_PER_CORE_MAX: usize = 16_384;

/// The services' handle on the store core and on this core's watches.
pub struct Keys {
    store: Rc<StoreClient>,
    watches: Rc<WatchRouter>,
    waiters: Waiters,
}

/// Counts the waiting calls of one client core against a maximum.
struct Waiters {
    waiting: Rc<Cell<usize>>,
    max: usize,
}

impl Waiters {
    fn new(max: usize) -> Waiters {
        Waiters {
            waiting: Rc::new(Cell::new(0)),
            max,
        }
    }

    /// A slot, or "too many requests" if all `max` are taken.
    fn take(&self) -> Result<WaiterSlot, Status> {
        let waiting = self.waiting.get();
        if waiting >= self.max {
            return Err(Status::from(EtcdError::TooManyRequests));
        }
        self.waiting.set(waiting + 1);
        Ok(WaiterSlot(Rc::clone(&self.waiting)))
    }
}

/// A waiting call's place in [`Waiters`], given back when dropped.
pub struct WaiterSlot(Rc<Cell<usize>>);

impl Drop for WaiterSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// An error of a call the service made, as etcd's services return it: the
/// in-process client's error is a plain Go error to grpc-go, so the caller
/// sees code UNKNOWN with etcd's message (clientv3 maps it back by the text).
pub fn inner(error: EtcdError) -> Status {
    Status::new(Code::Unknown, error.message())
}

/// `%x` of a Go int64 (a lease id), sign and all: `-1` is `-1`, not two's
/// complement.
pub fn go_hex(value: i64) -> String {
    if value < 0 {
        format!("-{:x}", value.unsigned_abs())
    } else {
        format!("{value:x}")
    }
}

/// The key `lease` owns under `prefix` (the name and a slash): etcd's
/// `fmt.Sprintf("%s%x", pfx, lease)`.
pub fn owned_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(go_hex(lease).as_bytes());
    key
}

/// `name` and a slash: where the keys of a lock or election live.
pub fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// etcd's prefix end (`clientv3.GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The range of the first (`Ascend`) or last (`Descend`) key created under
/// `prefix`: clientv3's `WithFirstCreate` / `WithLastCreate`.
pub fn by_create(prefix: &[u8], order: pb::range_request::SortOrder) -> pb::RangeRequest {
    pb::RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: order as i32,
        sort_target: pb::range_request::SortTarget::Create as i32,
        ..Default::default()
    }
}

pub fn get(key: &[u8]) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }
}

pub fn compare_create(key: &[u8], revision: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(pb::compare::TargetUnion::CreateRevision(revision)),
        range_end: Vec::new(),
    }
}

pub fn put_op(key: &[u8], value: &[u8], lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

pub fn range_op(range: pb::RangeRequest) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(range)),
    }
}

pub fn delete_op(key: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

/// The key-values of the `index`th answer of a txn, if it is a range.
pub fn txn_kvs(response: &pb::TxnResponse, index: usize) -> &[mvccpb::KeyValue] {
    match response.responses.get(index).and_then(|op| op.response.as_ref()) {
        Some(pb::response_op::Response::ResponseRange(range)) => &range.kvs,
        _ => &[],
    }
}

impl Keys {
    pub fn new(store: Rc<StoreClient>, watches: Rc<WatchRouter>) -> Keys {
        Keys {
            store,
            watches,
            waiters: Waiters::new(WAITERS_PER_CORE_MAX),
        }
    }

    /// The calls one client makes, checked as `auth` with auth on.
    pub fn as_caller(&self, auth: CallAuth) -> CallerKeys<'_> {
        CallerKeys { keys: self, auth }
    }
}

/// One call's view of [`Keys`]: every store call and watch made as its caller.
pub struct CallerKeys<'a> {
    keys: &'a Keys,
    auth: CallAuth,
}

impl CallerKeys<'_> {
    /// A waiter's slot, or "too many requests" past [`WAITERS_PER_CORE_MAX`].
    pub fn waiter_slot(&self) -> Result<WaiterSlot, Status> {
        self.keys.waiters.take()
    }

    /// A store call as the caller. Not `require_leader`: the service's
    /// interceptor checked that once for the whole call.
    async fn call(&self, request: Request) -> Result<Response, Status> {
        self.keys
            .store
            .call_rpc_as(request, false, self.auth.clone())
            .await
            .map_err(inner)
    }

    /// The lease a call's keys are put with: `lease`, or for 0 a new lease of
    /// [`SESSION_TTL_SECONDS`] (etcd's `concurrency.NewSession`). A lease that
    /// does not exist is not checked here: the put with it fails.
    pub async fn session_lease(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let request = pb::LeaseGrantRequest {
            ttl: SESSION_TTL_SECONDS,
            id: 0,
        };
        match self.call(Request::LeaseGrant(request)).await? {
            Response::LeaseGrant(response) => Ok(response.id),
            other => unreachable!("a lease grant is answered in kind, not with {other:?}"),
        }
    }

    pub async fn txn(&self, request: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
        match self.call(Request::Txn(request)).await? {
            Response::Txn(response) => Ok(response),
            other => unreachable!("a txn is answered in kind, not with {other:?}"),
        }
    }

    pub async fn range(&self, request: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        match self.call(Request::Range(request)).await? {
            Response::Range(response) => Ok(response),
            Response::RangeEncoded(encoded) => Ok(
                pb::RangeResponse::decode(encoded.into_prefixed(0)).expect("the store core encodes a RangeResponse")
            ),
            other => unreachable!("a range is answered in kind, not with {other:?}"),
        }
    }

    pub async fn delete(&self, request: pb::DeleteRangeRequest) -> Result<pb::DeleteRangeResponse, Status> {
        match self.call(Request::DeleteRange(request)).await? {
            Response::DeleteRange(response) => Ok(response),
            other => unreachable!("a delete is answered in kind, not with {other:?}"),
        }
    }

    /// A watch from `start_revision` on `key`, or on every key under it with
    /// `prefix`.
    pub async fn watch(&self, key: &[u8], prefix: bool, start_revision: i64) -> Result<KeyWatch, Status> {
        let request = pb::WatchCreateRequest {
            key: key.to_vec(),
            range_end: if prefix { prefix_end(key) } else { Vec::new() },
            start_revision,
            ..Default::default()
        };
        self.keys.watches.watch_keys(request, self.auth.clone()).await
    }

    /// Waits until no key under `prefix` was created at or before
    /// `max_create_revision` (etcd's `waitDeletes`): repeatedly the newest such
    /// key, then its deletion. Answers the header of the read that found none.
    pub async fn wait_deletes(&self, prefix: &[u8], max_create_revision: i64) -> Result<pb::ResponseHeader, Status> {
        loop {
            let request = pb::RangeRequest {
                max_create_revision,
                ..by_create(prefix, pb::range_request::SortOrder::Descend)
            };
            let response = self.range(request).await?;
            let Some(newest) = response.kvs.first() else {
                return Ok(response.header.unwrap_or_default());
            };
            let revision = response.header.map_or(0, |header| header.revision);
            self.wait_delete(&newest.key, revision).await?;
        }
    }

    /// Waits for a deletion of `key` at or after `revision` (etcd's `waitDelete`).
    async fn wait_delete(&self, key: &[u8], revision: i64) -> Result<(), Status> {
        let mut watch = self.watch(key, false, revision).await?;
        loop {
            match watch.next().await {
                KeyWatchUpdate::Events { events, .. } => {
                    if events
                        .iter()
                        .any(|event| event.r#type == mvccpb::event::EventType::Delete as i32)
                    {
                        return Ok(());
                    }
                }
                // etcd's text when its watch channel closes under a live call.
                KeyWatchUpdate::Ended => return Err(Status::new(Code::Unknown, "lost watcher waiting for delete")),
            }
        }
    }

    /// An undo for what a call leaves behind, to send if the call gives up.
    pub fn undo(&self, request: Request) -> Undo {
        Undo {
            store: Rc::clone(&self.keys.store),
            request: Some(request),
            auth: self.auth.clone(),
        }
    }
}

/// A write to send when a call gives up: on an error, or when the gRPC layer
/// drops the call (deadline passed, client gone). etcd does the same with its
/// client's own context (`m.Unlock(client.Ctx())`, `e.Resign(client.Ctx())`).
/// [`Undo::disarm`] once the call succeeded.
pub struct Undo {
    store: Rc<StoreClient>,
    request: Option<Request>,
    /// The caller's credentials: unlike etcd's undo (made with its server
    /// client's context, which auth refuses), this one can succeed.
    auth: CallAuth,
}

impl Undo {
    pub fn disarm(mut self) {
        self.request = None;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        let Some(request) = self.request.take() else {
            return;
        };
        let store = Rc::clone(&self.store);
        let auth = std::mem::take(&mut self.auth);
        glommio::spawn_local(async move {
            // Nobody waits for the answer: a failed undo leaves the key to its
            // lease, as in etcd.
            let _ = store.call_rpc_as(request, false, auth).await;
        })
        .detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_print_as_gos_hex() {
        assert_eq!(go_hex(0x694d_7a3f_1b2c_0001), "694d7a3f1b2c0001");
        assert_eq!(go_hex(0), "0");
        assert_eq!(go_hex(-1), "-1");
        assert_eq!(go_hex(i64::MIN), "-8000000000000000");
        assert_eq!(owned_key(b"lk/", 0x1000), b"lk/1000");
    }

    #[test]
    fn waiters_past_the_maximum_are_refused_until_one_ends() {
        let waiters = Waiters::new(2);
        let first = waiters.take().unwrap();
        let _second = waiters.take().unwrap();
        let refused = waiters.take().err().unwrap();
        assert_eq!(refused, Status::from(EtcdError::TooManyRequests));
        assert_eq!(refused.code, Code::ResourceExhausted);
        drop(first);
        assert!(waiters.take().is_ok());
    }

    #[test]
    fn a_prefix_ends_past_its_last_byte_below_ff() {
        assert_eq!(prefix_end(b"lk/"), b"lk0");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
        assert_eq!(prefix_of(b""), b"/");
    }
}

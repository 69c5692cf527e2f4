//! A client core's handle on the store core: send a call, await its reply.
//!
//! At most `capacity` calls are in flight per client core, the capacity of both
//! cross-core channels. A call holds its permit until the reply arrives (even if
//! the caller gave up), so the store core never finds a reply channel full.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use futures_channel::oneshot;
use glommio::sync::{Semaphore, StaticPermit};

use crate::etcd_error::EtcdError;
use crate::store::messages::{Call, CallAuth, Reply, Request, Response};

struct Pending {
    reply: oneshot::Sender<Result<Response, EtcdError>>,
    _permit: StaticPermit,
}

pub struct StoreClient {
    calls: flume::Sender<Call>,
    permits: Rc<Semaphore>,
    pending: RefCell<HashMap<u64, Pending>>,
    next_id: Cell<u64>,
}

impl StoreClient {
    /// `capacity` must not exceed either channel's capacity.
    pub fn new(calls: flume::Sender<Call>, capacity: usize) -> Rc<StoreClient> {
        assert!(capacity > 0);
        Rc::new(StoreClient {
            calls,
            permits: Rc::new(Semaphore::new(capacity as u64)),
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
        })
    }

    /// Sends `request` to the store core and waits for its answer.
    pub async fn call(&self, request: Request) -> Result<Response, EtcdError> {
        self.send(request, false, false, CallAuth::None).await
    }

    /// A client's etcd RPC (refused on a learner, as etcd refuses most); with
    /// `require_leader`, refused with "no leader" when the member knows of none
    /// (gRPC metadata `hasleader: true`).
    pub async fn call_rpc(&self, request: Request, require_leader: bool) -> Result<Response, EtcdError> {
        self.send(request, require_leader, true, CallAuth::None).await
    }

    /// `call_rpc` for a client that came as `auth` (with auth on, the store
    /// core checks what the user may do).
    pub async fn call_rpc_as(
        &self,
        request: Request,
        require_leader: bool,
        auth: CallAuth,
    ) -> Result<Response, EtcdError> {
        self.send(request, require_leader, true, auth).await
    }

    async fn send(
        &self,
        request: Request,
        require_leader: bool,
        client_rpc: bool,
        auth: CallAuth,
    ) -> Result<Response, EtcdError> {
        let permit = self
            .permits
            .acquire_static_permit(1)
            .await
            .map_err(|_| EtcdError::Stopped)?;
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (reply, answer) = oneshot::channel();
        let pending = Pending { reply, _permit: permit };
        assert!(self.pending.borrow_mut().insert(id, pending).is_none());
        if self
            .calls
            .try_send(Call {
                id,
                request,
                require_leader,
                client_rpc,
                auth,
            })
            .is_err()
        {
            // Closed (the store core stopped): permits guarantee it is never full.
            self.pending.borrow_mut().remove(&id);
            return Err(EtcdError::Stopped);
        }
        answer.await.unwrap_or(Err(EtcdError::Stopped))
    }

    /// Delivers replies to waiting calls until the store core goes away.
    pub async fn pump_replies(self: Rc<Self>, replies: flume::Receiver<Reply>) {
        while let Ok(reply) = replies.recv_async().await {
            let pending = self.pending.borrow_mut().remove(&reply.id);
            let pending = pending.expect("every reply answers a pending call");
            // The caller may have given up (deadline, cancel): nothing to do then.
            let _ = pending.reply.send(reply.result);
        }
        // The store core is gone: fail everything still waiting.
        self.pending.borrow_mut().clear();
        self.permits.close();
    }
}

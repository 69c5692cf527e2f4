//! etcd's `monitorLeader` on a client core: streams opened with gRPC metadata
//! `hasleader: true` (clientv3's `WithRequireLeader`; kube-apiserver's watches)
//! end with "no leader" once this member has seen no leader for
//! [`NO_LEADER_TIMEOUTS`] election timeouts in a row. Reconnecting a stream
//! costs more than refusing a call, so etcd waits that long before ending them;
//! a client then reconnects to a member that has a leader.
//!
//! The monitor asks the store core for Status once per election timeout, and
//! only once the first such stream opened on this core.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use futures_channel::oneshot;

use super::store_client::StoreClient;
use crate::store::messages::{Request, Response};

/// etcd's `maxNoLeaderCnt`.
pub const NO_LEADER_TIMEOUTS: u32 = 3;

pub struct LeaderMonitor {
    store: Rc<StoreClient>,
    election_timeout: Duration,
    /// One per open stream that requires a leader; fired to end it.
    streams: RefCell<Vec<oneshot::Sender<()>>>,
    started: Cell<bool>,
}

impl LeaderMonitor {
    pub fn new(store: Rc<StoreClient>, election_timeout: Duration) -> Rc<LeaderMonitor> {
        Rc::new(LeaderMonitor {
            store,
            election_timeout,
            streams: RefCell::new(Vec::new()),
            started: Cell::new(false),
        })
    }

    /// True if the store core knows a leader now.
    pub async fn has_leader(&self) -> bool {
        match self.store.call(Request::Status).await {
            Ok(Response::Status(status)) => status.leader != 0,
            Ok(other) => unreachable!("Status is answered in kind, not with {other:?}"),
            Err(_) => false,
        }
    }

    /// Registers a stream; completes once the leader has been gone too long.
    pub async fn lost(self: &Rc<Self>) {
        if !self.started.replace(true) {
            glommio::spawn_local(Rc::clone(self).run()).detach();
        }
        let (fire, fired) = oneshot::channel();
        self.streams.borrow_mut().push(fire);
        if fired.await.is_err() {
            // The monitor never drops a stream's sender without firing it.
            std::future::pending::<()>().await;
        }
    }

    async fn run(self: Rc<Self>) {
        let mut leaderless = 0u32;
        loop {
            glommio::timer::sleep(self.election_timeout).await;
            // Streams that ended on their own.
            self.streams.borrow_mut().retain(|stream| !stream.is_canceled());
            leaderless = if self.has_leader().await { 0 } else { leaderless + 1 };
            if leaderless >= NO_LEADER_TIMEOUTS {
                let streams = std::mem::take(&mut *self.streams.borrow_mut());
                if !streams.is_empty() {
                    tracing::warn!(
                        streams = streams.len(),
                        "no leader for {NO_LEADER_TIMEOUTS} election timeouts: ending streams that require one"
                    );
                }
                for stream in streams {
                    let _ = stream.send(());
                }
            }
        }
    }
}

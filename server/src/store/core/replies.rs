//! Answers to client calls: an apply outcome becomes what the client sees
//! (storage failures stop the server), and the outermost header gets the
//! cluster id, member id, raft term and revision as etcd's gRPC layer fills them.

use ringkv_proto::etcdserverpb as pb;

use super::super::messages::{Reply, Response};
use super::{Effect, StoreCore};
use crate::apply::ApplyError;
use crate::etcd_error::EtcdError;
use crate::fatal::fatal;

impl StoreCore {
    /// Turns an apply outcome into what the client sees; storage failures stop the server.
    pub(super) fn client_result(&self, result: Result<Response, ApplyError>) -> Result<Response, EtcdError> {
        match result {
            Ok(response) => Ok(response),
            Err(ApplyError::Client(error)) => Err(error),
            Err(ApplyError::Fatal(error)) => fatal(&format!("store failure: {error}")),
            Err(ApplyError::PartlyWritten(error)) => fatal(&format!(
                "a txn failed ({error}) after writing part of its changes, which cannot be undone"
            )),
        }
    }

    pub(super) fn reply(&mut self, client: usize, call_id: u64, result: Result<Response, EtcdError>) {
        let result = result.map(|mut response| {
            self.fill_header(&mut response);
            response
        });
        let reply = Reply { id: call_id, result };
        self.outbox.push(Effect::Reply { client, reply });
    }

    /// Cluster id, member id and raft term go on the outermost header only, as
    /// etcd's gRPC layer fills them.
    pub(super) fn fill_header(&self, response: &mut Response) {
        // etcd's Cluster service fills no revision (`ClusterServer.header`).
        let no_revision = matches!(
            response,
            Response::MemberList(_)
                | Response::MemberAdd(_)
                | Response::MemberRemove(_)
                | Response::MemberUpdate(_)
                | Response::MemberPromote(_)
        );
        let header = match response {
            Response::Range(r) => &mut r.header,
            Response::RangeEncoded(r) => &mut r.header,
            Response::Put(r) => &mut r.header,
            Response::DeleteRange(r) => &mut r.header,
            Response::Txn(r) => &mut r.header,
            Response::Compact(r) => &mut r.header,
            Response::LeaseGrant(r) => &mut r.header,
            Response::LeaseRevoke(r) => &mut r.header,
            Response::LeaseKeepAlive(r) => &mut r.header,
            Response::LeaseTimeToLive(r) => &mut r.header,
            Response::LeaseLeases(r) => &mut r.header,
            Response::Status(r) => &mut r.header,
            Response::MemberList(r) => &mut r.header,
            Response::MemberAdd(r) => &mut r.header,
            Response::MemberRemove(r) => &mut r.header,
            Response::MemberUpdate(r) => &mut r.header,
            Response::MemberPromote(r) => &mut r.header,
            Response::Hash(r) => &mut r.header,
            Response::HashKv(r) => &mut r.header,
            Response::MoveLeader(r) => &mut r.header,
            Response::Defragment(r) => &mut r.header,
            Response::Auth(r) => match r.header_mut() {
                Some(header) => header,
                None => return,
            },
            // etcd's Alarm answers with no header at all (`etcdctl alarm
            // list -w json` prints `{}`).
            Response::Alarm(_) | Response::Metrics(_) | Response::Snapshot(_) | Response::SnapshotReleased => return,
        };
        let header = header.get_or_insert_with(Default::default);
        header.cluster_id = self.settings.cluster_id;
        header.member_id = self.settings.member_id;
        header.raft_term = self.raw.raft.term;
        if header.revision == 0 && !no_revision {
            header.revision = self.mvcc.current_revision();
        }
    }

    /// The header a reply goes out with, less its revision (see `fill_header`).
    pub(super) fn outer_header(&self) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.settings.cluster_id,
            member_id: self.settings.member_id,
            raft_term: self.raw.raft.term,
            revision: 0,
        }
    }
}

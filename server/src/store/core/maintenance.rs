//! The store core's maintenance side: Status, MemberList, alarms and the space
//! quota, Hash and HashKV, MoveLeader, and the metrics snapshot. Each answer is
//! built from state the store core owns; alarm changes go through raft like writes.

use prost::Message;
use raft::StateRole;
use ringkv_engine::mvcc::Alarm;
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::ringkvpb::raft_request;

use super::StoreCore;
use crate::apply::ApplyError;
use crate::etcd_error::EtcdError;
use crate::metrics::{MetricsSnapshot, MvccOps};
use crate::store::messages::{Request, Response};
use crate::version::ETCD_COMPATIBLE_VERSION;

/// etcd's `kvOverhead`: bytes a put is assumed to cost beyond its encoded size.
const PUT_OVERHEAD_BYTES: u64 = 256;

/// etcd's quota cost of a LeaseGrant (`leaseOverhead`).
const LEASE_GRANT_COST_BYTES: u64 = 64;

/// What a LeaseGrant may add to the store, as etcd's quota counts it.
pub fn lease_grant_cost() -> u64 {
    LEASE_GRANT_COST_BYTES
}

/// What a Put may add to the store, as etcd's quota counts it.
pub fn put_cost(put: &pb::PutRequest) -> u64 {
    PUT_OVERHEAD_BYTES + put.encoded_len() as u64
}

/// etcd's `costTxn`: the larger of the two branches' top-level puts. Nested txns
/// and other ops cost nothing, so a txn without puts is never refused.
pub fn txn_cost(txn: &pb::TxnRequest) -> u64 {
    let branch = |ops: &[pb::RequestOp]| -> u64 {
        ops.iter()
            .filter_map(|op| match &op.request {
                Some(pb::request_op::Request::RequestPut(put)) => Some(put_cost(put)),
                _ => None,
            })
            .sum()
    };
    branch(&txn.success).max(branch(&txn.failure))
}

/// What etcd's appliers refuse while alarms are raised: with CORRUPT (its
/// corrupt applier, which wraps the capped one, so it answers first) writes,
/// compactions, lease grants and revokes; with NOSPACE (its capped applier)
/// puts, txns with puts and lease grants. Reads never reach the applier, nor
/// do alarm changes and member attributes.
fn refused_under(request: &raft_request::Request, corrupt: bool, nospace: bool) -> Option<EtcdError> {
    use raft_request::Request::{Compaction, DeleteRange, LeaseGrant, LeaseRevoke, Put, Txn};
    let corrupt_refuses = matches!(
        request,
        Put(_) | DeleteRange(_) | Txn(_) | Compaction(_) | LeaseGrant(_) | LeaseRevoke(_)
    );
    if corrupt && corrupt_refuses {
        return Some(EtcdError::Corrupt);
    }
    let nospace_refuses = match request {
        Put(_) | LeaseGrant(_) => true,
        Txn(txn) => txn_cost(txn) > 0,
        _ => false,
    };
    (nospace && nospace_refuses).then_some(EtcdError::NoSpace)
}

/// etcd's text form of an alarm (gogo-protobuf's compact text), as Status
/// lists it: a field at its zero value is left out (CORRUPT's member 0).
fn alarm_text(alarm: Alarm) -> String {
    let mut text = String::new();
    if alarm.member_id != 0 {
        text.push_str(&format!("memberID:{} ", alarm.member_id));
    }
    if alarm.kind != pb::AlarmType::None as i32 {
        text.push_str(&format!("alarm:{} ", alarm_name(alarm.kind)));
    }
    text
}

fn alarm_name(kind: i32) -> &'static str {
    pb::AlarmType::from_i32(kind).map_or("UNKNOWN", |kind| kind.as_str_name())
}

fn alarm_member(alarm: Alarm) -> pb::AlarmMember {
    pb::AlarmMember {
        member_id: alarm.member_id,
        alarm: alarm.kind,
    }
}

impl StoreCore {
    /// True if an alarm of `kind` is raised on any member.
    fn alarm_raised(&self, kind: pb::AlarmType) -> bool {
        self.mvcc.alarms().any(|alarm| alarm.kind == kind as i32)
    }

    /// The error `request` is refused with when applied while an alarm is
    /// raised (see [`refused_under`]). Deterministic: alarms are applied state.
    pub(super) fn alarm_refusal(&self, request: &raft_request::Request) -> Option<EtcdError> {
        refused_under(
            request,
            self.alarm_raised(pb::AlarmType::Corrupt),
            self.alarm_raised(pb::AlarmType::Nospace),
        )
    }

    /// Checked before proposing a write costing `cost` bytes: with no room on
    /// this member's disk (see `disk_full`), or over the quota, the NOSPACE
    /// alarm is raised (through raft) and the write refused. True: go on.
    pub(super) fn check_quota(&mut self, client: usize, call_id: u64, cost: u64) -> bool {
        if cost == 0 {
            return true;
        }
        if !self.check_room(client, call_id) {
            return false;
        }
        let Some(quota) = self.settings.quota_backend_bytes else {
            return true;
        };
        if self.mvcc.allocated_bytes() + cost < quota {
            return true;
        }
        if !self.alarm_raised(pb::AlarmType::Nospace) {
            tracing::warn!(
                quota_bytes = quota,
                used_bytes = self.mvcc.allocated_bytes(),
                "database space exceeded: raising the NOSPACE alarm"
            );
        }
        self.raise_nospace();
        self.reply(client, call_id, Err(EtcdError::NoSpace));
        false
    }

    /// `--auto-compaction-*`: while leading, proposes a Compact when one is due,
    /// as etcd's compactor does through the normal Compact path. Nobody waits
    /// for it; a failed proposal is tried at the next due time.
    pub(super) fn auto_compact(&mut self) {
        if self.raw.raft.state != StateRole::Leader {
            return;
        }
        let current = self.mvcc.current_revision();
        let Some(revision) = self.auto_compactor.due(self.now, current) else {
            return;
        };
        tracing::info!(revision, current, "auto-compaction: compacting");
        let compact = pb::CompactionRequest {
            revision,
            physical: false,
        };
        if let Err(error) = self.propose_entry(raft_request::Request::Compaction(compact)) {
            self.metrics.proposals_failed += 1;
            tracing::warn!(revision, %error, "auto-compaction: the compaction could not be proposed");
        }
    }

    /// Applies an alarm change as etcd's applier does: ACTIVATE answers the alarm
    /// (new or already active); DEACTIVATE answers it only if it was active.
    pub(super) fn apply_alarm(&mut self, request: &pb::AlarmRequest) -> pb::AlarmResponse {
        let alarm = Alarm {
            member_id: request.member_id,
            kind: request.alarm,
        };
        let mut alarms = Vec::new();
        match pb::alarm_request::AlarmAction::from_i32(request.action) {
            Some(pb::alarm_request::AlarmAction::Activate) if request.alarm != pb::AlarmType::None as i32 => {
                if self.mvcc.activate_alarm(alarm) {
                    tracing::warn!(
                        member_id = format_args!("{:x}", alarm.member_id),
                        alarm = alarm_name(alarm.kind),
                        "alarm raised"
                    );
                }
                alarms.push(alarm_member(alarm));
            }
            Some(pb::alarm_request::AlarmAction::Deactivate) => {
                let was_active = self.mvcc.deactivate_alarm(alarm);
                if was_active {
                    tracing::info!(
                        member_id = format_args!("{:x}", alarm.member_id),
                        alarm = alarm_name(alarm.kind),
                        "alarm cleared"
                    );
                    alarms.push(alarm_member(alarm));
                }
            }
            _ => {}
        }
        // Alarms are stored with the data: make the change durable soon.
        self.commits.note_change();
        pb::AlarmResponse { header: None, alarms }
    }

    /// Answers a request that reads the store core's state without raft.
    pub(super) fn maintenance_query(&mut self, request: Request) -> Result<Response, EtcdError> {
        Ok(match request {
            Request::Status => Response::Status(self.status()),
            Request::MemberList => Response::MemberList(self.member_list()),
            Request::Alarm(request) => {
                let alarms = self
                    .mvcc
                    .alarms()
                    .filter(|alarm| request.alarm == pb::AlarmType::None as i32 || alarm.kind == request.alarm)
                    .map(alarm_member)
                    .collect();
                Response::Alarm(pb::AlarmResponse { header: None, alarms })
            }
            Request::Hash => {
                let hash = self
                    .mvcc
                    .hash_all()
                    .map_err(|error| self.storage_failure(error.into()))?;
                Response::Hash(pb::HashResponse { header: None, hash })
            }
            Request::Metrics => Response::Metrics(Box::new(self.metrics_snapshot())),
            other => unreachable!("not a maintenance query: {other:?}"),
        })
    }

    /// A client error passes through; a storage failure stops the server.
    fn storage_failure(&self, error: ApplyError) -> EtcdError {
        match error {
            ApplyError::Client(error) => error,
            ApplyError::Fatal(error) => super::fatal(&format!("store failure: {error}")),
            ApplyError::PartlyWritten(error) => super::fatal(&format!("store failure: {error}")),
        }
    }

    fn status(&self) -> pb::StatusResponse {
        let leader = self.raw.raft.leader_id;
        let mut errors = Vec::new();
        if leader == raft::INVALID_ID {
            errors.push(EtcdError::NoLeader.message().to_string());
        }
        errors.extend(self.mvcc.alarms().map(alarm_text));
        pb::StatusResponse {
            header: None,
            version: ETCD_COMPATIBLE_VERSION.to_string(),
            db_size: self.mvcc.allocated_bytes() as i64,
            leader,
            raft_index: self.raw.raft.raft_log.committed,
            raft_term: self.raw.raft.term,
            raft_applied_index: self.mvcc.applied_index(),
            errors,
            db_size_in_use: self.mvcc.in_use_bytes() as i64,
            is_learner: self
                .membership
                .member(self.settings.member_id)
                .is_some_and(|member| member.is_learner),
            storage_version: String::new(),
            db_size_quota: self.settings.quota_backend_bytes.map_or(0, |quota| quota as i64),
            downgrade_info: None,
        }
    }

    /// Applied writes' and answered reads' operations, together.
    fn mvcc_ops(&self) -> MvccOps {
        let (writes, reads) = (self.metrics.ops, self.stepped_reads.ops());
        MvccOps {
            ranges: writes.ranges + reads.ranges,
            puts: writes.puts + reads.puts,
            deletes: writes.deletes + reads.deletes,
            txns: writes.txns + reads.txns,
        }
    }

    fn metrics_snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            has_leader: self.raw.raft.leader_id != raft::INVALID_ID,
            is_leader: self.raw.raft.state == StateRole::Leader,
            leader_changes: self.metrics.leader_changes,
            proposals_committed: self.raw.raft.raft_log.committed,
            proposals_applied: self.mvcc.applied_index(),
            proposals_pending: self.proposals_pending() as u64,
            proposals_failed: self.metrics.proposals_failed,
            entries_skipped: self.metrics.entries_skipped,
            snapshots_sent: self.metrics.snapshots_sent,
            snapshots_send_failed: self.metrics.snapshots_send_failed,
            snapshots_received: self.metrics.snapshots_received,
            // The peer port's own count: the shell fills it in (the core
            // does not see the peer port).
            peer_connections_rejected: 0,
            peer_raft_messages_dropped: self.metrics.raft_messages_screened,
            db_total_bytes: self.mvcc.allocated_bytes(),
            db_in_use_bytes: self.mvcc.in_use_bytes(),
            quota_backend_bytes: self.settings.quota_backend_bytes.map_or(0, |quota| quota as i64),
            current_revision: self.mvcc.current_revision(),
            compact_revision: self.mvcc.compact_revision(),
            keys: self.mvcc.live_key_count() as u64,
            mvcc_ops: self.mvcc_ops(),
            slow_applies: self.metrics.slow_applies,
            slow_read_indexes: self.reads.slow_read_indexes(),
            heartbeat_send_failures: self.metrics.peer_timing.send_failures(),
            peer_round_trips: self.metrics.peer_timing.round_trips(),
            peer_traffic: Vec::new(),
            wal_fsync: self.metrics.wal_fsync.clone(),
            backend_commit: self.metrics.backend_commit.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(key: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_txn_costs_its_larger_branch_of_top_level_puts() {
        let range = pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest::default())),
        };
        let reads_only = pb::TxnRequest {
            success: vec![range.clone()],
            failure: vec![range],
            ..Default::default()
        };
        assert_eq!(
            txn_cost(&reads_only),
            0,
            "a txn without puts is never refused for space"
        );
        let writes = pb::TxnRequest {
            success: vec![put_op("a")],
            failure: vec![put_op("b"), put_op("c")],
            ..Default::default()
        };
        assert_eq!(txn_cost(&writes), 2 * (PUT_OVERHEAD_BYTES + 3));
    }

    #[test]
    fn alarms_refuse_what_etcds_appliers_refuse_corrupt_first() {
        use raft_request::Request;
        let delete = Request::DeleteRange(pb::DeleteRangeRequest::default());
        let put = Request::Put(pb::PutRequest::default());
        let txn_put = Request::Txn(pb::TxnRequest {
            success: vec![put_op("a")],
            ..Default::default()
        });
        let txn_delete = Request::Txn(pb::TxnRequest::default());
        let compact = Request::Compaction(pb::CompactionRequest::default());
        let grant = Request::LeaseGrant(pb::LeaseGrantRequest::default());
        let revoke = Request::LeaseRevoke(pb::LeaseRevokeRequest::default());
        let alarm = Request::Alarm(pb::AlarmRequest::default());
        let update = Request::MemberUpdate(pb::MemberUpdateRequest::default());
        let all = [
            &put,
            &delete,
            &txn_put,
            &txn_delete,
            &compact,
            &grant,
            &revoke,
            &alarm,
            &update,
        ];
        for request in all {
            assert_eq!(refused_under(request, false, false), None, "{request:?}");
        }
        let corrupt: Vec<_> = all.iter().map(|request| refused_under(request, true, false)).collect();
        let c = Some(EtcdError::Corrupt);
        assert_eq!(corrupt, [c, c, c, c, c, c, c, None, None]);
        let nospace: Vec<_> = all.iter().map(|request| refused_under(request, false, true)).collect();
        let n = Some(EtcdError::NoSpace);
        assert_eq!(nospace, [n, None, n, None, None, n, None, None, None]);
        let both: Vec<_> = all.iter().map(|request| refused_under(request, true, true)).collect();
        assert_eq!(both, corrupt);
    }

    #[test]
    fn alarms_read_as_etcd_prints_them() {
        let alarm = Alarm {
            member_id: 10276657743932975437,
            kind: pb::AlarmType::Nospace as i32,
        };
        assert_eq!(alarm_text(alarm), "memberID:10276657743932975437 alarm:NOSPACE ");
        // etcd 3.4's Status of a cluster with the CORRUPT alarm, which is member 0's.
        let corrupt = Alarm {
            member_id: 0,
            kind: pb::AlarmType::Corrupt as i32,
        };
        assert_eq!(alarm_text(corrupt), "alarm:CORRUPT ");
    }
}

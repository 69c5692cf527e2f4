//! The store core on a full disk: what found no room waits and is tried again,
//! writes are refused with etcd's NoSpace, and the NOSPACE alarm is raised
//! through raft, the same alarm the quota raises (see `maintenance`).
//!
//! Three things can find no room, each before anything was written:
//! - the WAL's next segment, prepared in the background once half of the
//!   active one is used: the WAL task reports it (`WalSpace`) while the active
//!   segment still has room, so the alarm entry can still be persisted;
//! - a Ready's append that needs that segment: the WAL wrote the records that
//!   fitted and hands back the rest (`PersistNoSpace`), which are kept here and
//!   sent again, so they are written once, in order. Raft has advanced past
//!   that Ready (`advance_append_async`); it only learns the Ready is durable
//!   when the rest is. Meanwhile the Ready loop waits (it takes the next Ready
//!   only when the WAL is idle), so this member sends nothing a durable log
//!   would have to back: like a very slow disk;
//! - a page-store commit that must grow the file: the commit stays sealed
//!   and is executed again; the WAL keeps every entry applied meanwhile (it
//!   releases only what a durable commit holds).
//!
//! Room coming back ends the refusals this member makes on its own, not the
//! alarm: as with etcd's NOSPACE, writes stay refused until an operator
//! disarms it (`etcdctl alarm disarm`).

use std::time::{Duration, Instant};

use ringkv_engine::mvcc::PageError;
use ringkv_engine::wal::Record;
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::ringkvpb::raft_request;

use super::Effect;
use super::StoreCore;
use crate::etcd_error::EtcdError;
use crate::store::wal_io::WalJob;

/// How often what found no room is tried again: the WAL append that waits for
/// a segment, the WAL's next segment, the page-store commit that must grow the
/// file. On a full disk each try fails at its fallocate, which costs little.
pub const NO_SPACE_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// What waits for room on this member.
#[derive(Default)]
pub(super) struct DiskFull {
    /// The WAL's next segment found no room (and none was recycled since).
    wal_out_of_space: bool,
    /// The Ready being persisted is waiting for room: from its first
    /// `PersistNoSpace` until its `Persisted`.
    wal_stuck: bool,
    /// The records of that Ready not yet written; None while they are being
    /// written again.
    unwritten: Option<(u64, Vec<Record>)>,
    /// The page-store commit in flight found no room to grow the file: from
    /// then until it is durable.
    commit_stalled: bool,
    /// Its plan is back and waits to be executed again.
    commit_retry_due: bool,
    /// The next try; set while anything waits.
    retry_at: Option<Instant>,
    /// When this member last proposed its NOSPACE alarm; proposed again if
    /// not applied within the request timeout.
    alarm_proposed_at: Option<Instant>,
}

impl DiskFull {
    /// This member has no room for more data now: refuse what would add some.
    pub(super) fn is_full(&self) -> bool {
        self.wal_out_of_space || self.wal_stuck || self.commit_stalled
    }

    /// The WAL cannot persist anything now: nothing new is proposed here.
    pub(super) fn wal_stuck(&self) -> bool {
        self.wal_stuck
    }
}

impl StoreCore {
    /// The WAL's next segment has (not) found room.
    pub(super) fn wal_space_changed(&mut self, out_of_space: bool) {
        self.disk_full.wal_out_of_space = out_of_space;
        if out_of_space {
            tracing::warn!(
                retry = ?NO_SPACE_RETRY_INTERVAL,
                "no space for the next WAL segment: raising NOSPACE; writes are refused"
            );
            self.found_no_space();
        } else {
            tracing::info!("the WAL's next segment is ready again");
            // The append waiting for it can go now.
            self.persist_unwritten();
        }
    }

    /// The WAL had no room for `records`, the rest of Ready `ready`.
    pub(super) fn persist_found_no_space(&mut self, ready: u64, records: Vec<Record>) {
        assert_eq!(self.persisting, Some(ready), "the WAL persists Readies in order");
        assert!(!records.is_empty(), "a Ready that needed no room was persisted");
        if !self.disk_full.wal_stuck {
            tracing::warn!(
                ready,
                records = records.len(),
                retry = ?NO_SPACE_RETRY_INTERVAL,
                "no space to persist a raft Ready: it waits; only serializable reads are served"
            );
        }
        self.disk_full.wal_stuck = true;
        assert!(self.disk_full.unwritten.is_none(), "one Ready is persisted at a time");
        self.disk_full.unwritten = Some((ready, records));
        self.found_no_space();
    }

    /// The Ready that waited for room is durable.
    pub(super) fn persisted_after_no_space(&mut self) {
        if std::mem::take(&mut self.disk_full.wal_stuck) {
            tracing::info!("the WAL persists again");
        }
    }

    /// A page-store commit found no room to grow the file; it is kept sealed.
    pub(super) fn commit_found_no_space(&mut self, error: &PageError) {
        if !self.disk_full.commit_stalled {
            tracing::warn!(
                %error,
                retry = ?NO_SPACE_RETRY_INTERVAL,
                "page-store commit waits for room: raising NOSPACE; writes are refused"
            );
        }
        self.disk_full.commit_stalled = true;
        self.disk_full.commit_retry_due = true;
        self.found_no_space();
    }

    /// The commit that waited for room is durable.
    pub(super) fn committed_after_no_space(&mut self) {
        if std::mem::take(&mut self.disk_full.commit_stalled) {
            tracing::info!("the page store commits again");
        }
    }

    fn found_no_space(&mut self) {
        self.disk_full
            .retry_at
            .get_or_insert_with(|| self.now + NO_SPACE_RETRY_INTERVAL);
        self.raise_nospace();
    }

    /// Checked on every tick: tries again what waits for room, and raises the
    /// alarm again if it has still not been applied.
    pub(super) fn retry_for_space(&mut self) {
        let Some(retry_at) = self.disk_full.retry_at else {
            return;
        };
        if self.now < retry_at {
            return;
        }
        if !self.disk_full.is_full() {
            // The room came back since: nothing to try, nor to raise.
            self.disk_full.retry_at = None;
            return;
        }
        if self.disk_full.wal_stuck {
            // The roll that failed makes the segment itself.
            self.persist_unwritten();
        } else if self.disk_full.wal_out_of_space {
            self.outbox.push(Effect::Wal(WalJob::RetrySpare));
        }
        if std::mem::take(&mut self.disk_full.commit_retry_due) {
            let plan = self.mvcc.retry_commit();
            self.outbox.push(Effect::Commit(plan));
        }
        self.raise_nospace();
        self.disk_full.retry_at = Some(self.now + NO_SPACE_RETRY_INTERVAL);
    }

    /// Sends the records the WAL had no room for again, if they wait.
    fn persist_unwritten(&mut self) {
        if let Some((ready, records)) = self.disk_full.unwritten.take() {
            self.outbox.push(Effect::Wal(WalJob::Persist { ready, records }));
        }
    }

    /// Refuses a write that would need room this member does not have:
    /// etcd's NoSpace, and the NOSPACE alarm raised if it is not. True: go on.
    pub(super) fn check_room(&mut self, client: usize, call_id: u64) -> bool {
        if !self.disk_full.is_full() {
            return true;
        }
        self.raise_nospace();
        self.reply(client, call_id, Err(EtcdError::NoSpace));
        false
    }

    /// Proposes this member's NOSPACE alarm unless it is active or was
    /// proposed within the request timeout. With no leader to take it, it is
    /// proposed again on a later retry (or write). While the WAL is stuck a
    /// proposal goes nowhere until it persists again (the Ready loop waits),
    /// so one is enough.
    pub(super) fn raise_nospace(&mut self) {
        let me = self.settings.member_id;
        let active = self
            .mvcc
            .alarms()
            .any(|alarm| alarm.member_id == me && alarm.kind == pb::AlarmType::Nospace as i32);
        let pending = self.disk_full.alarm_proposed_at.is_some_and(|at| {
            self.disk_full.wal_stuck || self.now.saturating_duration_since(at) < self.settings.request_timeout
        });
        if active || pending {
            return;
        }
        let alarm = pb::AlarmRequest {
            action: pb::alarm_request::AlarmAction::Activate as i32,
            member_id: me,
            alarm: pb::AlarmType::Nospace as i32,
        };
        // Also with the WAL stuck: on a cluster the others commit it, and here
        // it is persisted once there is room. No waiter: whoever asked for the
        // write that found no room hears NoSpace now.
        match self.propose_to_raft(raft_request::Request::Alarm(alarm)) {
            Ok(_) => self.disk_full.alarm_proposed_at = Some(self.now),
            Err(_) => self.metrics.proposals_failed += 1,
        }
    }
}

//! The store core: one task that owns raft, MVCC and (through the WAL task) the
//! WAL, and drives raft-rs's Ready loop.
//!
//! Everything that happens to the store is an [`Event`] on one local channel:
//! client calls, raft ticks, WAL completions, page-store commit completions. Between
//! events the loop runs [`StoreCore::drive`]: hand the next Ready to the WAL (only
//! when the WAL is idle: that is the group commit), apply committed entries, answer
//! reads whose ReadIndex has been applied, and start page-store commits.

mod leases;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::rc::Rc;

use glommio::channels::local_channel::LocalSender;
use glommio::channels::shared_channel::ConnectedSender;
use prost::Message;
use raft::eraftpb::{ConfChangeV2, ConfState, Entry, EntryType, Message as RaftMessage};
use raft::{RawNode, StateRole};
use ringkv_datadir::wal;
use ringkv_engine::mvcc::{CommitPlan, CommittedPlan, Mvcc, MvccError, PageError};
use ringkv_engine::wal::{Record, WalError};
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::ringkvpb::raft_request;

use super::auto_compaction::AutoCompactor;
use super::entry;
use super::event::Event;
use super::id_generator::IdGenerator;
use super::lease_clock::LeaseClock;
use super::membership::Membership;
use super::messages::{Call, Reply, Request, Response};
use super::raft_log::RaftLog;
use super::reads::{PendingRead, ReadQueue};
use super::stepped_read::SteppedReads;
use super::wal_io::WalJob;
use super::watchers::{WatchOutlet, Watchers};
use crate::apply::{self, ApplyError, WriteView};
use crate::config::auto_compaction::AutoCompactionPolicy;
use crate::etcd_error::EtcdError;
use crate::fatal::fatal;
use crate::metrics::Histogram;
use crate::peer::{PeerEvent, PeerTransport};

mod cluster;
mod disk_full;
mod maintenance;
mod members;
mod snapshots;
mod space;
use disk_full::DiskFull;
use space::{DefragJob, SnapshotWait};

/// A compaction step compacts at most this many keys of the index, or removes
/// at most this many revisions: about half a millisecond, the longest a write
/// can wait on one step. (Half etcd's `--compaction-batch-limit` default: at
/// 1000 the p99 of puts during a compaction was a step higher.)
pub const COMPACTION_BATCH_REVISIONS: usize = 500;
/// The store core's rest after each compaction step: the next starts no
/// sooner, so a compaction of millions of revisions takes about a fifth of
/// the core and writes meanwhile find it free (etcd sleeps 10 ms between its
/// batches of 1000). Events do not cut the rest short: under load an event
/// comes every few hundred microseconds. Measured with puts at 2,000/s during
/// a compaction of 1M revisions on a 2-CPU machine: with no rest, p99 9x the
/// quiet one; with 2 ms after steps of 500, 1.8x, and the compaction takes
/// 12 s (etcd 3.4: about 30 s).
pub const COMPACTION_STEP_REST: Duration = Duration::from_millis(2);

/// Identity and limits the store core answers with.
pub struct StoreSettings {
    pub member_id: u64,
    pub cluster_id: u64,
    pub max_request_bytes: usize,
    /// The largest response message a read builds (see `stepped_read`).
    pub response_bytes_max: usize,
    pub backend_batch_limit: usize,
    pub backend_batch_interval: Duration,
    /// etcd's minimum lease TTL: ⌈1.5 × election timeout⌉ seconds.
    pub min_lease_ttl_seconds: i64,
    /// How much longer than their TTL leases live after this member becomes leader.
    pub election_timeout: Duration,
    /// This member as MemberList reports it.
    pub member: MemberInfo,
    /// `--quota-backend-bytes`; None: no quota.
    pub quota_backend_bytes: Option<u64>,
    pub auto_compaction: AutoCompactionPolicy,
    /// A proposal not applied by then is answered with etcd's timeout error.
    pub request_timeout: Duration,
    /// Applied entries kept in the raft log for lagging followers (`--snapshot-count`).
    pub catch_up_entries: u64,
    /// Raft ticks before something raft may have dropped silently is asked
    /// again: a ReadIndex (the leader had not committed in its term yet, or the
    /// message was lost) and the publishing of this member's attributes.
    pub retry_ticks: u64,
    /// A member joining a running cluster: the members (id, peer URLs) it
    /// joined, talked to until it has caught up (see `membership_changed`).
    pub join_peers: Vec<(u64, Vec<String>)>,
    /// The data directory: a snapshot from the leader replaces its page store.
    pub data_dir: PathBuf,
}

/// The parts of a member that its configuration gives.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// Counters the store core keeps for `/metrics` (see `crate::metrics`).
struct CoreMetrics {
    snapshots_sent: u64,
    snapshots_send_failed: u64,
    snapshots_received: u64,
    leader: u64,
    leader_changes: u64,
    proposals_failed: u64,
    /// Entries not applied because of what they hold (`skip_entry`).
    entries_skipped: u64,
    wal_fsync: Histogram,
    backend_commit: Histogram,
}

/// Who waits for the result of a proposed write.
struct Waiter {
    client: usize,
    call_id: u64,
    /// Compact with `physical`: answered after the removal is durable.
    physical_compaction: bool,
}

/// etcd's request timeout: 5 s plus two election timeouts.
pub fn request_timeout(election_timeout: Duration) -> Duration {
    Duration::from_secs(5) + 2 * election_timeout
}

/// A MoveLeader call waiting for its target to lead.
struct LeaderTransfer {
    client: usize,
    call_id: u64,
    target: u64,
    deadline: Instant,
}

/// A page-store commit in flight: the applied index it makes durable.
struct CommitInFlight {
    applied_index: u64,
    /// The raft configuration as of `applied_index`: applying goes on while the
    /// commit runs, and may change it.
    conf_state: ConfState,
}

pub struct StoreCore {
    settings: StoreSettings,
    raw: RawNode<RaftLog>,
    mvcc: Mvcc,
    events: Rc<LocalSender<Event>>,
    wal_jobs: LocalSender<WalJob>,
    replies: Vec<ConnectedSender<Reply>>,
    /// The Ready being persisted by the WAL task, if any.
    persisting: Option<u64>,
    /// Messages raft may send only once that Ready is durable (votes, append
    /// acknowledgements: the Ready contract's `persisted_messages`).
    persisted_messages: Vec<RaftMessage>,
    transport: PeerTransport,
    membership: Membership,
    /// Clients are let in once this is applied: every entry this member knew to
    /// be committed when it started (see `caught_up`).
    boot_applied_target: u64,
    waiters: HashMap<u64, Waiter>,
    /// (deadline, request id) of proposals, in proposal order; see `expire_proposals`.
    proposal_deadlines: VecDeque<(Instant, u64)>,
    /// When the leader last changed: a proposal that times out after a change
    /// of leader gets etcd's "possibly due to previous leader failure".
    leader_changed_since: Instant,
    /// This member's name and client URLs are applied in the membership.
    attributes_published: bool,
    /// The tick of the last attempt to publish them.
    publish_attempted_at: Option<u64>,
    /// Request ids of this run's publish proposals: only applying one of them
    /// shows this member has caught up (an entry of an earlier run holding the
    /// same attributes may be applied long before).
    publish_ids: Vec<u64>,
    leader_transfers: Vec<LeaderTransfer>,
    /// Membership changes waiting to be proposed, and the request id of this
    /// member's one in flight (see `members`).
    conf_changes_queued: VecDeque<members::QueuedConfChange>,
    conf_change_in_flight: Option<u64>,
    /// When this member applied its own removal; it stops soon after.
    removed_at: Option<Instant>,
    join_peers: Vec<(u64, Vec<String>)>,
    /// Lease calls forwarded to the leader, by request id.
    lease_forwards: HashMap<u64, leases::ForwardedLeaseCall>,
    /// MemberPromote calls waiting for the leader's verdict, by request id.
    promote_checks: HashMap<u64, members::AskedLeaderToPromote>,
    ticks: u64,
    reads: ReadQueue,
    /// Reads too large for one step, going on between events.
    stepped_reads: SteppedReads,
    commit: Option<CommitInFlight>,
    applied_since_commit: usize,
    last_commit: Instant,
    /// The applied index the last durable page-store commit holds.
    durable_applied_index: u64,
    /// A defragmentation in progress.
    defrag: Option<DefragJob>,
    /// Snapshot calls waiting for a commit.
    snapshot_waits: Vec<SnapshotWait>,
    /// Physical compactions finished in the writer view, waiting to be durable.
    physical_waiters_pending: Vec<Waiter>,
    /// Physical compactions whose removal is in the commit now in flight.
    physical_waiters_committing: Vec<Waiter>,
    /// Physical compactions still removing revisions.
    physical_waiters_running: Vec<Waiter>,
    /// No compaction step before this (COMPACTION_STEP_REST after the last).
    compaction_rest_until: Option<Instant>,
    /// MsgSnapshots waiting for a moment between page-store commits.
    snapshots_due: Vec<RaftMessage>,
    /// Peer → the pinned commit a snapshot is streaming to it from.
    snapshots_sending: HashMap<u64, u64>,
    /// Commits pinned in the page store (Snapshot calls, snapshot sends).
    pinned: Vec<u64>,
    /// What waits for room on a full disk.
    disk_full: DiskFull,
    /// Pins taken in a page store that an installed snapshot replaced.
    orphaned_pins: Vec<u64>,
    /// A snapshot from the leader whose WAL record is being persisted.
    installing: Option<snapshots::Install>,
    lease_clock: LeaseClock,
    lease_ids: IdGenerator,
    request_ids: IdGenerator,
    auto_compactor: AutoCompactor,
    metrics: CoreMetrics,
    watchers: Watchers,
    watch_outlet: WatchOutlet,
}

impl StoreCore {
    #[allow(clippy::too_many_arguments)] // each is one owned piece of the core
    pub fn new(
        settings: StoreSettings,
        raw: RawNode<RaftLog>,
        mvcc: Mvcc,
        membership: Membership,
        transport: PeerTransport,
        events: Rc<LocalSender<Event>>,
        wal_jobs: LocalSender<WalJob>,
        replies: Vec<ConnectedSender<Reply>>,
        watch_outlet: WatchOutlet,
    ) -> StoreCore {
        // What was known committed at start. With peers, entries past the
        // stored commit index may be replaced by the next leader; a sole
        // voter's commit index was raised to what its log holds (see
        // `bootstrap::sole_voter_commit`), which it can apply without writing
        // anything first: also on a full disk.
        let boot_applied_target = raw.raft.raft_log.committed;
        let lease_ids = IdGenerator::new(settings.member_id);
        let request_ids = IdGenerator::new(settings.member_id);
        let auto_compactor = AutoCompactor::new(settings.auto_compaction, Instant::now());
        // Watchers are fed the changes each applied entry made.
        let mut mvcc = mvcc;
        mvcc.capture_changes();
        // Raft re-applies what the WAL holds past this after the start.
        let durable_applied_index = mvcc.applied_index();
        // The page store as opened is durable: a lagging follower can be sent
        // it before this member's first commit.
        let mut raw = raw;
        let store = raw.mut_store();
        if let Some(term) = store.term_of(durable_applied_index) {
            let conf_state = store.conf_state().clone();
            store.set_snapshot_point(durable_applied_index, term, conf_state);
        }
        let watchers = Watchers::new(watch_outlet.client_cores());
        let join_peers = settings.join_peers.clone();
        let stepped_reads = SteppedReads::new(settings.response_bytes_max);
        let mut core = StoreCore {
            settings,
            raw,
            mvcc,
            events,
            wal_jobs,
            replies,
            persisting: None,
            persisted_messages: Vec::new(),
            transport,
            membership,
            boot_applied_target,
            waiters: HashMap::new(),
            proposal_deadlines: VecDeque::new(),
            leader_changed_since: Instant::now(),
            attributes_published: false,
            publish_attempted_at: None,
            publish_ids: Vec::new(),
            leader_transfers: Vec::new(),
            conf_changes_queued: VecDeque::new(),
            conf_change_in_flight: None,
            removed_at: None,
            join_peers,
            lease_forwards: HashMap::new(),
            promote_checks: HashMap::new(),
            ticks: 0,
            reads: ReadQueue::default(),
            stepped_reads,
            commit: None,
            applied_since_commit: 0,
            last_commit: Instant::now(),
            durable_applied_index,
            defrag: None,
            snapshot_waits: Vec::new(),
            physical_waiters_pending: Vec::new(),
            physical_waiters_committing: Vec::new(),
            physical_waiters_running: Vec::new(),
            compaction_rest_until: None,
            snapshots_due: Vec::new(),
            snapshots_sending: HashMap::new(),
            pinned: Vec::new(),
            disk_full: DiskFull::default(),
            orphaned_pins: Vec::new(),
            installing: None,
            lease_clock: LeaseClock::default(),
            lease_ids,
            request_ids,
            auto_compactor,
            metrics: CoreMetrics {
                snapshots_sent: 0,
                snapshots_send_failed: 0,
                snapshots_received: 0,
                leader: 0,
                leader_changes: 0,
                proposals_failed: 0,
                entries_skipped: 0,
                wal_fsync: Histogram::etcd_disk(),
                backend_commit: Histogram::etcd_disk(),
            },
            watchers,
            watch_outlet,
        };
        core.membership_changed();
        core
    }

    /// Handles one event; the caller runs [`StoreCore::drive`] after a batch of them.
    pub fn handle(&mut self, event: Event) {
        match event {
            Event::Call { client, call } => self.handle_call(client, call),
            Event::Tick => {
                self.stop_if_removed();
                self.ticks += 1;
                self.raw.tick();
                self.revoke_expired_leases();
                self.auto_compact();
                self.expire_proposals();
                self.expire_lease_forwards();
                self.expire_promote_checks();
                self.reads
                    .requeue_older_than(self.ticks.saturating_sub(self.settings.retry_ticks));
                self.retry_for_space();
            }
            Event::Peer(PeerEvent::Received(message)) if !self.transport.admits(&self.raw.raft, &message) => {}
            Event::Peer(PeerEvent::Received(message)) => {
                // Errors are messages raft does not take from this peer (unknown
                // or removed): nothing to do but drop them.
                if let Err(error) = self.raw.step(*message) {
                    tracing::debug!(%error, "peer message not stepped");
                }
            }
            Event::Peer(PeerEvent::Unreachable(peer)) => self.raw.report_unreachable(peer),
            Event::Peer(PeerEvent::LeaseForward { from, forward }) => self.answer_lease_forward(from, forward),
            Event::Peer(PeerEvent::LeaseForwardReply(reply)) => self.finish_lease_forward(reply),
            Event::Peer(PeerEvent::PromoteCheck { from, check }) => self.promote_check(from, check),
            Event::Peer(PeerEvent::SnapshotSent { to, txid, delivered }) => self.snapshot_sent(to, txid, delivered),
            Event::Peer(PeerEvent::SnapshotReceived { message, path }) => self.snapshot_received(*message, &path),
            Event::CommitDue => self.maybe_commit(true),
            Event::Persisted { ready, result, elapsed } => {
                if let Err(error) = result {
                    fatal(&format!("WAL write failed: {error}"));
                }
                self.metrics.wal_fsync.observe(elapsed);
                assert_eq!(self.persisting.take(), Some(ready), "WAL persists Readies in order");
                self.persisted_after_no_space();
                self.raw.on_persist_ready(ready);
                if let Some(install) = self.installing.take() {
                    self.finish_install(install);
                }
                let messages = std::mem::take(&mut self.persisted_messages);
                self.send_messages(messages);
            }
            Event::PersistNoSpace { ready, records } => self.persist_found_no_space(ready, records),
            Event::WalSpace { out_of_space } => self.wal_space_changed(out_of_space),
            Event::Released(result) => match result {
                Ok(()) => {}
                // Nothing was released; the next release covers these segments.
                Err(error @ WalError::NoSpace { .. }) => tracing::debug!(%error, "WAL release deferred"),
                Err(error) => fatal(&format!("WAL segment release failed: {error}")),
            },
            Event::Committed { result, elapsed } => {
                self.metrics.backend_commit.observe(elapsed);
                self.finish_commit(result);
            }
            Event::Watch { client, command } => self.watchers.handle(client, command, &self.mvcc),
            Event::WatchProgressTick => self.watchers.progress_tick(&self.mvcc),
        }
    }

    /// Moves everything forward that the events made possible.
    pub fn drive(&mut self) {
        self.publish_attributes();
        self.propose_queued_conf_changes();
        if !self.join_peers.is_empty() && self.caught_up() {
            // Joined: the applied membership names every peer from now on.
            self.join_peers.clear();
            self.membership_changed();
        }
        // Each pass may make more ready (e.g. applying unblocks reads, persisting
        // commits entries); stop when raft has nothing or the WAL is busy.
        loop {
            self.issue_read_index();
            if self.persisting.is_some() || !self.raw.has_ready() {
                break;
            }
            // A snapshot replaces the page store: not under a running commit.
            if self.commit.is_some() && self.raw.raft.raft_log.unstable().snapshot.is_some() {
                break;
            }
            self.process_ready();
        }
        self.answer_applied_reads();
        if !self.leader_transfers.is_empty() {
            self.settle_leader_transfers();
        }
        self.serve_snapshots();
        self.start_snapshot_sends();
        self.maybe_commit(false);
        self.drive_watchers();
    }

    /// One bounded catch-up pass for lagging watchers, then every notice out.
    fn drive_watchers(&mut self) {
        if self.watchers.has_catch_up_work() {
            self.watchers.catch_up(&self.mvcc);
        }
        self.watchers.send_deferred_progress(&self.mvcc);
        let header = pb::ResponseHeader {
            cluster_id: self.settings.cluster_id,
            member_id: self.settings.member_id,
            raft_term: self.raw.raft.term,
            revision: 0,
        };
        self.watch_outlet.flush(&mut self.watchers, &header);
    }

    /// True once every entry known committed at start has been applied again,
    /// and this member's attributes with them (see `publish_attributes`).
    pub fn caught_up(&self) -> bool {
        self.mvcc.applied_index() >= self.boot_applied_target && self.attributes_published
    }

    /// Clients may be let in: caught up, or, on a disk too full to persist the
    /// publish entry, every entry this member knew committed at start applied
    /// again (it serves what it holds, serializable reads, until there is room).
    pub fn ready_to_serve(&self) -> bool {
        self.caught_up() || (self.disk_full.wal_stuck() && self.mvcc.applied_index() >= self.boot_applied_target)
    }

    /// True while physical compaction has revisions left to remove, or a
    /// read is in progress.
    pub fn has_background_work(&self) -> bool {
        self.mvcc.compaction_pending() || self.watchers.has_catch_up_work() || self.stepped_reads.pending()
    }

    /// How much longer background work rests; None: a step may run now.
    pub fn background_rest(&self) -> Option<Duration> {
        if self.stepped_reads.pending() {
            return self.stepped_reads.rest();
        }
        let rest = self.compaction_rest_until?.checked_duration_since(Instant::now())?;
        (self.mvcc.compaction_pending() && !rest.is_zero()).then_some(rest)
    }

    /// One bounded step of a read in progress, or else of the running compaction.
    pub fn background_step(&mut self) {
        if self.stepped_reads.pending() {
            let header = self.outer_header();
            if let Some((client, call_id, result)) = self.stepped_reads.step(&self.mvcc, &header) {
                let result = self.client_result(result);
                self.reply(client, call_id, result);
            }
            return;
        }
        if !self.mvcc.compaction_pending() {
            return; // only watchers to catch up: `drive` does that
        }
        let done = self
            .mvcc
            .compact_step(COMPACTION_BATCH_REVISIONS)
            .unwrap_or_else(|error| fatal(&format!("compaction failed: {error}")));
        self.compaction_rest_until = Some(Instant::now() + COMPACTION_STEP_REST);
        if done {
            self.physical_waiters_pending.append(&mut self.physical_waiters_running);
        }
    }

    fn handle_call(&mut self, client: usize, call: Call) {
        if self.removed_at.is_some() {
            self.reply(client, call.id, Err(EtcdError::Stopped));
            return;
        }
        if call.client_rpc && !self.serves_client_rpc(&call.request) {
            self.reply(client, call.id, Err(EtcdError::NotSupportedForLearner));
            return;
        }
        if call.require_leader && self.raw.raft.leader_id == raft::INVALID_ID {
            self.reply(client, call.id, Err(EtcdError::NoLeader));
            return;
        }
        match call.request {
            Request::Range(range) => {
                let serializable = range.serializable;
                self.read(client, call.id, PendingRead::range(range), serializable);
            }
            Request::Txn(txn) if apply::is_read_only(&txn) => {
                let serializable = apply::is_serializable(&txn);
                self.read(client, call.id, PendingRead::txn(txn), serializable);
            }
            Request::Put(put) => {
                let cost = maintenance::put_cost(&put);
                if self.check_quota(client, call.id, cost) {
                    self.propose(client, call.id, raft_request::Request::Put(put));
                }
            }
            Request::DeleteRange(delete) => self.propose(client, call.id, raft_request::Request::DeleteRange(delete)),
            Request::Txn(txn) => {
                let cost = maintenance::txn_cost(&txn);
                if self.check_quota(client, call.id, cost) {
                    self.propose(client, call.id, raft_request::Request::Txn(txn));
                }
            }
            Request::Compact(compact) => self.propose(client, call.id, raft_request::Request::Compaction(compact)),
            Request::LeaseGrant(grant) => {
                if self.check_quota(client, call.id, maintenance::lease_grant_cost()) {
                    self.grant_lease(client, call.id, grant);
                }
            }
            Request::LeaseRevoke(revoke) => self.propose(client, call.id, raft_request::Request::LeaseRevoke(revoke)),
            Request::LeaseKeepAlive(keep_alive) => self.keep_lease_alive(client, call.id, keep_alive),
            Request::LeaseTimeToLive(request) => self.lease_time_to_live_call(client, call.id, request),
            Request::LeaseLeases(_) => {
                let response = self.lease_list();
                self.reply(client, call.id, Ok(Response::LeaseLeases(response)));
            }
            Request::Alarm(alarm) if alarm.action != pb::alarm_request::AlarmAction::Get as i32 => {
                self.propose(client, call.id, raft_request::Request::Alarm(alarm));
            }
            Request::Defragment => self.defragment(client, call.id),
            Request::MoveLeader(request) => self.move_leader(client, call.id, &request),
            Request::MemberAdd(request) => self.member_add(client, call.id, request),
            Request::MemberRemove(request) => self.member_remove(client, call.id, &request),
            Request::MemberUpdate(request) => self.member_update(client, call.id, request),
            Request::MemberPromote(request) => self.member_promote(client, call.id, &request),
            Request::Snapshot => self.snapshot(client, call.id),
            Request::SnapshotRelease(txid) => {
                let response = self.release_snapshot(txid);
                self.reply(client, call.id, Ok(response));
            }
            query => {
                let result = self.maintenance_query(query);
                self.reply(client, call.id, result);
            }
        }
    }

    fn read(&mut self, client: usize, call_id: u64, read: PendingRead, serializable: bool) {
        if !serializable && self.disk_full.wal_stuck() {
            // Its ReadIndex would come with a Ready, which waits for the WAL.
            self.reply(client, call_id, Err(EtcdError::NoSpace));
            return;
        }
        if serializable {
            self.serve_read(client, call_id, read);
        } else {
            self.reads.enqueue(client, call_id, read);
        }
    }

    fn propose(&mut self, client: usize, call_id: u64, request: raft_request::Request) {
        let physical_compaction = matches!(&request, raft_request::Request::Compaction(c) if c.physical);
        let waiter = Waiter {
            client,
            call_id,
            physical_compaction,
        };
        self.propose_for(waiter, request);
    }

    /// Proposes `request` to raft; returns the id its result will carry.
    /// Refused while the WAL has no room to persist it.
    fn propose_entry(&mut self, request: raft_request::Request) -> Result<u64, EtcdError> {
        if self.disk_full.wal_stuck() {
            return Err(EtcdError::NoSpace);
        }
        self.propose_to_raft(request)
    }

    /// `propose_entry` without the room check (the NOSPACE alarm itself).
    fn propose_to_raft(&mut self, request: raft_request::Request) -> Result<u64, EtcdError> {
        let id = self.request_ids.next(|_| false) as u64;
        let data = entry::encode(id, request);
        // etcd checks the size of the proposal, not of the gRPC message.
        if data.len() > self.settings.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        // Dropped: no leader to take it (only possible mid-election).
        self.raw.propose(Vec::new(), data).map_err(|_| EtcdError::NoLeader)?;
        self.proposal_deadlines
            .push_back((Instant::now() + self.settings.request_timeout, id));
        Ok(id)
    }

    fn issue_read_index(&mut self) {
        // raft-rs silently drops a ReadIndex until the leader has committed an
        // entry of its own term (its no-op after an election): asked earlier, the
        // batch would wait forever. Keep it unrequested; the commit of that entry
        // comes with a Ready, and the next `drive` asks then.
        // A follower's ReadIndex goes to the leader (raft-rs drops it when there is
        // none known); the leader may drop it too, so unanswered ones are retried.
        if self.raw.raft.leader_id == raft::INVALID_ID {
            return;
        }
        if self.raw.raft.state == StateRole::Leader && !self.raw.raft.commit_to_current_term() {
            return;
        }
        if let Some(context) = self.reads.take_unrequested(self.ticks) {
            self.raw.read_index(context);
        }
    }

    /// Takes the next Ready: persist (WAL task), then apply and answer.
    fn process_ready(&mut self) {
        let mut ready = self.raw.ready();
        // Sent now, before this Ready is durable: a leader's appends go out while
        // its own WAL write runs (raft counts its own vote only once persisted).
        if !ready.messages().is_empty() {
            let messages = ready.take_messages();
            self.send_messages(messages);
        }
        if let Some(soft_state) = ready.ss() {
            if soft_state.leader_id != self.metrics.leader {
                if soft_state.leader_id != raft::INVALID_ID {
                    self.metrics.leader_changes += 1;
                }
                self.leader_changed_since = Instant::now();
                // ReadIndex requests in flight to the old leader are lost: ask again.
                self.reads.requeue_requested();
            }
            self.metrics.leader = soft_state.leader_id;
            self.lease_leadership_changed(soft_state.raft_state == StateRole::Leader);
            if soft_state.raft_state == StateRole::Leader {
                self.auto_compactor.restart(Instant::now());
            }
        }

        let mut records = Vec::with_capacity(ready.entries().len() + 2);
        let installed = (!ready.snapshot().is_empty()).then(|| ready.snapshot().get_metadata().clone());
        if let Some(metadata) = installed {
            assert!(ready.must_sync(), "a snapshot is persisted");
            let conf_state = metadata.get_conf_state();
            records.push(Record::Snapshot(wal::snapshot_record(
                metadata.index,
                metadata.term,
                conf_state,
            )));
            // The log starts over at the snapshot, before this Ready's entries.
            self.begin_install(metadata);
        }
        self.raw.mut_store().append(ready.entries());
        records.extend(ready.entries().iter().map(wal::entry_record));
        if let Some(hard_state) = ready.hs() {
            self.raw.mut_store().set_hard_state(hard_state.clone());
            records.push(wal::hard_state_record(hard_state));
        }
        // A Ready whose only change is the commit index need not be synced: the
        // commit index is re-derived at recovery (see `bootstrap`).
        let must_persist = ready.must_sync() || !ready.entries().is_empty();
        let number = ready.number();
        let persisted_messages = ready.take_persisted_messages();
        let committed = ready.take_committed_entries();
        for read_state in ready.take_read_states() {
            self.reads.read_index_granted(&read_state.request_ctx, read_state.index);
        }
        self.raw.advance_append_async(ready);
        if must_persist {
            self.persisting = Some(number);
            assert!(
                self.persisted_messages.is_empty(),
                "sent when the last Ready was durable"
            );
            self.persisted_messages = persisted_messages;
            let job = WalJob::Persist { ready: number, records };
            if self.wal_jobs.try_send(job).is_err() {
                fatal("the WAL task stopped");
            }
        } else {
            self.raw.on_persist_ready(number);
            self.send_messages(persisted_messages);
        }
        match &mut self.installing {
            // Applied on the new store, once it is installed.
            Some(install) => install.committed = committed,
            None => self.apply_committed(committed),
        }
    }

    fn apply_committed(&mut self, entries: Vec<Entry>) {
        let Some(last) = entries.last() else {
            return;
        };
        let last_index = last.index;
        for entry in entries {
            assert_eq!(entry.index, self.mvcc.applied_index() + 1, "entries apply in order");
            self.apply_entry(&entry);
            self.mvcc.set_applied_index(entry.index);
            self.applied_since_commit += 1;
        }
        let changes = self.mvcc.take_changes();
        self.watchers.publish(&changes, &self.mvcc);
        self.raw.advance_apply_to(last_index);
    }

    fn apply_entry(&mut self, entry: &Entry) {
        match entry.get_entry_type() {
            EntryType::EntryNormal if entry.data.is_empty() => {
                // A new leader's empty entry: nothing to apply.
            }
            EntryType::EntryNormal => match entry::decode(&entry.data) {
                Ok((id, request)) => self.apply_request(id, request),
                Err(skipped) => {
                    self.skip_entry(entry.index, &skipped);
                    if let Some((id, error)) = skipped.answer() {
                        self.answer_applied(id, Err(error));
                    }
                }
            },
            EntryType::EntryConfChange => {
                // Only ConfChangeV2 entries are proposed (see `members`): this
                // one came from elsewhere, and raft's configuration stays.
                self.skip_entry(entry.index, &"a v1 conf change");
            }
            EntryType::EntryConfChangeV2 => match ConfChangeV2::decode(entry.data.as_slice()) {
                Ok(change) => self.apply_conf_change(entry.index, change),
                Err(error) => self.skip_entry(entry.index, &format!("conf change does not decode: {error}")),
            },
        }
    }

    /// An entry whose content cannot be applied is skipped, the same way on
    /// every member: it changes nothing. It can only have come from a peer
    /// (a forged proposal), since the client core refuses such requests before
    /// they are proposed; the member goes on serving.
    fn skip_entry(&mut self, index: u64, why: &dyn std::fmt::Display) {
        tracing::warn!(index, "raft entry skipped: {why}");
        self.metrics.entries_skipped += 1;
    }

    fn apply_request(&mut self, id: u64, body: raft_request::Request) {
        let result = match body {
            raft_request::Request::Put(_) | raft_request::Request::Txn(_) | raft_request::Request::LeaseGrant(_)
                if self.writes_refused(&body) =>
            {
                Err(ApplyError::Client(EtcdError::NoSpace))
            }
            raft_request::Request::Put(put) => self.write(|view| {
                apply::check_put_lease(view, &put)?;
                apply::put(view, &put).map(Response::Put)
            }),
            raft_request::Request::DeleteRange(delete) => {
                self.write(|view| apply::delete_range(view, &delete).map(Response::DeleteRange))
            }
            raft_request::Request::Txn(txn) => apply::txn(&mut self.mvcc, &txn).map(Response::Txn),
            raft_request::Request::Compaction(compact) => {
                apply::compact(&mut self.mvcc, &compact).map(Response::Compact)
            }
            raft_request::Request::LeaseGrant(grant) => self.apply_lease_grant(&grant),
            raft_request::Request::LeaseRevoke(revoke) => self.apply_lease_revoke(&revoke),
            raft_request::Request::Alarm(alarm) => Ok(Response::Alarm(self.apply_alarm(&alarm))),
            raft_request::Request::MemberAttributes(attributes) => {
                self.apply_member_attributes(id, &attributes);
                return; // proposed by the member itself, with no client waiting
            }
            raft_request::Request::MemberUpdate(update) => self.apply_member_update(update),
        };
        let result = self.client_result(result);
        self.answer_applied(id, result);
    }

    /// Answers the call waiting for entry `id`, if it is this member's.
    fn answer_applied(&mut self, id: u64, result: Result<Response, EtcdError>) {
        let Some(waiter) = self.waiters.remove(&id) else {
            return;
        };
        if waiter.physical_compaction && result.is_ok() {
            self.wait_for_physical_compaction(waiter, result);
            return;
        }
        self.reply(waiter.client, waiter.call_id, result);
    }

    /// Runs `body` in one write transaction (one revision if it writes anything).
    fn write(
        &mut self,
        body: impl FnOnce(&mut WriteView<'_>) -> Result<Response, ApplyError>,
    ) -> Result<Response, ApplyError> {
        let mut view = WriteView::new(self.mvcc.write());
        let result = body(&mut view);
        view.end();
        result
    }

    fn wait_for_physical_compaction(&mut self, waiter: Waiter, result: Result<Response, EtcdError>) {
        // The response is rebuilt when the wait ends (the revision is unchanged by
        // compaction); only success waits.
        assert!(result.is_ok());
        if self.mvcc.compaction_pending() {
            self.physical_waiters_running.push(waiter);
        } else {
            self.physical_waiters_pending.push(waiter);
        }
    }

    /// Serves a read from the applied state: at once if one step finishes
    /// it, else in steps between events (`background_step`).
    fn serve_read(&mut self, client: usize, call_id: u64, read: PendingRead) {
        let header = self.outer_header();
        if let Some(result) = self.stepped_reads.start(&self.mvcc, &header, client, call_id, read) {
            let result = self.client_result(result);
            self.reply(client, call_id, result);
        }
    }

    /// The header a reply goes out with, less its revision (see `fill_header`).
    fn outer_header(&self) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.settings.cluster_id,
            member_id: self.settings.member_id,
            raft_term: self.raw.raft.term,
            revision: 0,
        }
    }

    fn answer_applied_reads(&mut self) {
        let applied = self.mvcc.applied_index();
        while let Some(batch) = self.reads.take_applied(applied) {
            for (client, call_id, read) in batch {
                self.serve_read(client, call_id, read);
            }
        }
    }

    /// Starts a page-store commit when enough was applied or enough time passed.
    /// Snapshot and Defragment need commits now, applied writes or not.
    fn maybe_commit(&mut self, interval_elapsed: bool) {
        if self.commit.is_some() || self.snapshot_pending() {
            return;
        }
        let forced = self.space_needs_commit();
        if !forced && self.applied_since_commit == 0 && self.physical_waiters_pending.is_empty() {
            return;
        }
        let due = forced
            || interval_elapsed
            || self.applied_since_commit >= self.settings.backend_batch_limit
            || self.last_commit.elapsed() >= self.settings.backend_batch_interval;
        if !due {
            return;
        }
        self.space_before_commit();
        let applied_index = self.mvcc.applied_index();
        let plan = self
            .mvcc
            .begin_commit()
            .unwrap_or_else(|error| fatal(&format!("page-store commit failed: {error}")));
        let conf_state = self.raw.store().conf_state().clone();
        self.commit = Some(CommitInFlight {
            applied_index,
            conf_state,
        });
        self.applied_since_commit = 0;
        self.last_commit = Instant::now();
        self.physical_waiters_committing
            .append(&mut self.physical_waiters_pending);
        self.execute_commit(plan);
    }

    /// Runs a commit's writes and fsyncs on a blocking thread; `Committed` reports them.
    fn execute_commit(&self, plan: CommitPlan) {
        let events = Rc::clone(&self.events);
        glommio::spawn_local(async move {
            let (result, elapsed) = glommio::executor()
                .spawn_blocking(move || {
                    let started = Instant::now();
                    let result = plan.execute();
                    (result, started.elapsed())
                })
                .await;
            // The store core outlives this task; a closed channel means shutdown.
            let _ = events.try_send(Event::Committed { result, elapsed });
        })
        .detach();
    }

    fn finish_commit(&mut self, result: Result<CommittedPlan, PageError>) {
        match self.mvcc.finish_commit(result) {
            Ok(()) => self.committed_after_no_space(),
            // Nothing was written: the commit stays in flight, and is retried.
            Err(MvccError::Storage(error @ PageError::NoSpace { .. })) => {
                self.commit_found_no_space(&error);
                return;
            }
            Err(error) => fatal(&format!("page-store commit failed: {error}")),
        }
        let committed = self.commit.take().expect("a commit was in flight");
        self.durable_applied_index = committed.applied_index;
        self.space_after_commit();
        // The page store now holds every entry up to `applied_index`: the WAL and
        // the in-memory raft log can let go of them.
        // Followers and learners that lag catch up from the entries kept behind
        // that point; a member alone keeps none.
        let keep = if !self.membership.peers_of(self.settings.member_id).is_empty() {
            self.settings.catch_up_entries
        } else {
            0
        };
        let store = self.raw.mut_store();
        let durable_term = store
            .term_of(committed.applied_index)
            .expect("the log keeps what the page store has not made durable");
        store.set_snapshot_point(committed.applied_index, durable_term, committed.conf_state.clone());
        let index = committed
            .applied_index
            .saturating_sub(keep)
            .max(store.compacted_index());
        if index > store.compacted_index() {
            let term = store.term_of(index).expect("applied entries are in the log");
            let snapshot = wal::snapshot_record(index, term, &committed.conf_state);
            store.compact_to(index);
            if self.wal_jobs.try_send(WalJob::Release(snapshot)).is_err() {
                fatal("the WAL task stopped");
            }
        }
        for waiter in std::mem::take(&mut self.physical_waiters_committing) {
            let response = pb::CompactionResponse {
                header: apply::revision_header(self.mvcc.current_revision()),
            };
            self.reply(waiter.client, waiter.call_id, Ok(Response::Compact(response)));
        }
    }

    /// Turns an apply outcome into what the client sees; storage failures stop the server.
    fn client_result(&self, result: Result<Response, ApplyError>) -> Result<Response, EtcdError> {
        match result {
            Ok(response) => Ok(response),
            Err(ApplyError::Client(error)) => Err(error),
            Err(ApplyError::Fatal(error)) => fatal(&format!("store failure: {error}")),
            Err(ApplyError::PartlyWritten(error)) => fatal(&format!(
                "a txn failed ({error}) after writing part of its changes, which cannot be undone"
            )),
        }
    }

    fn reply(&self, client: usize, call_id: u64, result: Result<Response, EtcdError>) {
        let result = result.map(|mut response| {
            self.fill_header(&mut response);
            response
        });
        // Client cores admit at most as many calls as their reply channel holds,
        // so this never finds the channel full.
        if self.replies[client].try_send(Reply { id: call_id, result }).is_err() {
            tracing::warn!(client, "reply channel closed; dropping a reply");
        }
    }

    /// Cluster id, member id and raft term go on the outermost header only, as
    /// etcd's gRPC layer fills them.
    fn fill_header(&self, response: &mut Response) {
        // etcd's Cluster service fills no revision (`ClusterServer.header`).
        let cluster_call = matches!(
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
            Response::Alarm(r) => &mut r.header,
            Response::Hash(r) => &mut r.header,
            Response::HashKv(r) => &mut r.header,
            Response::MoveLeader(r) => &mut r.header,
            Response::Defragment(r) => &mut r.header,
            Response::Metrics(_) | Response::Snapshot(_) | Response::SnapshotReleased => return,
        };
        let header = header.get_or_insert_with(Default::default);
        header.cluster_id = self.settings.cluster_id;
        header.member_id = self.settings.member_id;
        header.raft_term = self.raw.raft.term;
        if header.revision == 0 && !cluster_call {
            header.revision = self.mvcc.current_revision();
        }
    }
}

/// Removes and returns the calls waiting on another member (by request id)
/// whose deadline has passed.
fn take_expired<T>(calls: &mut HashMap<u64, T>, deadline: impl Fn(&T) -> Instant) -> Vec<T> {
    let now = Instant::now();
    let expired: Vec<u64> = calls
        .iter()
        .filter(|(_, call)| deadline(call) <= now)
        .map(|(id, _)| *id)
        .collect();
    expired
        .into_iter()
        .map(|id| calls.remove(&id).expect("listed above"))
        .collect()
}

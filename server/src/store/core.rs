//! The store core: one task that owns raft, MVCC and (through the WAL task) the
//! WAL, and drives raft-rs's Ready loop.
//!
//! Everything that happens to the store is an [`Event`] on one local channel:
//! client calls, raft ticks, WAL completions, page-store commit completions. Between
//! events the loop runs [`StoreCore::drive`]: hand the next Ready to the WAL (only
//! when the WAL is idle: that is the group commit), apply committed entries, answer
//! reads whose ReadIndex has been applied, and start page-store commits.

mod auth;
mod background;
mod calls;
mod cluster;
mod commit_pipeline;
mod commits;
mod conf_changes;
mod corrupt_check;
mod disk_full;
mod leases;
mod maintenance;
mod members;
mod peer_timing;
mod peers;
mod pending;
mod publication;
mod replies;
mod settings;
mod snapshot_flow;
mod snapshots;
mod space;
mod waits;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use prost::Message;
use raft::eraftpb::{ConfChangeV2, Entry, EntryType, Message as RaftMessage};
use raft::{RawNode, StateRole};
use ringkv_datadir::wal;
use ringkv_engine::mvcc::Mvcc;
use ringkv_engine::wal::{Record, WalError};
use ringkv_proto::ringkvpb::raft_request;

use super::auto_compaction::AutoCompactor;
use super::entry::{self, Decoded};
use super::event::Event;
use super::id_generator::IdGenerator;
use super::lease_clock::LeaseClock;
use super::membership::Membership;
use super::messages::{Request, Response};
use super::outbox::{Effect, Outbox};
use super::raft_log::RaftLog;
use super::reads::ReadQueue;
use super::stepped_read::SteppedReads;
use super::store_files::StoreFiles;
use super::wal_io::WalJob;
use super::watchers::Watchers;
use crate::apply::{self, ApplyError, OpCounts, WriteView};
use crate::auth::{AuthInfo, AuthState, SimpleTokens};
use crate::etcd_error::EtcdError;
use crate::fatal::fatal;
use crate::log_limit::LogLimit;
use crate::metrics::Histogram;
use crate::peer::PeerEvent;
use crate::watch::WatchPush;
use commit_pipeline::CommitPipeline;
use conf_changes::ConfChangeQueue;
use corrupt_check::PeriodicCheck;
use disk_full::DiskFull;
#[cfg(feature = "sim")]
pub use leases::LeaseAudit;
pub use members::HEALTH_INTERVAL;
use peer_timing::PeerTiming;
use pending::Pending;
use publication::Publication;
pub use settings::{request_timeout, MemberInfo, StoreSettings};
use snapshot_flow::{Install, PinnedIn, SnapshotFlow};
use space::{DefragJob, SnapshotWait};
use waits::Awaited;

/// An apply slower than this counts in `etcd_server_slow_apply_total` (etcd's
/// `--experimental-warning-apply-duration`, 100 ms).
const SLOW_APPLY: Duration = Duration::from_millis(100);

/// Counters the store core keeps for `/metrics` (see `crate::metrics`).
struct CoreMetrics {
    snapshots_sent: u64,
    snapshots_send_failed: u64,
    snapshots_received: u64,
    leader: u64,
    leader_changes: u64,
    proposals_failed: u64,
    /// Raft messages from peers the screen dropped.
    raft_messages_screened: u64,
    /// Entries not applied because of what they hold (`skip_entry`).
    entries_skipped: u64,
    /// What applied writes did, as etcd's mvcc layer counts it.
    ops: OpCounts,
    /// Requests whose apply took longer than SLOW_APPLY.
    slow_applies: u64,
    /// Heartbeat round trips and late heartbeats, by peer.
    peer_timing: PeerTiming,
    wal_fsync: Histogram,
    backend_commit: Histogram,
}

/// A Compact with `physical` whose entry is applied: answered once the
/// removal is durable.
struct Waiter {
    client: usize,
    call_id: u64,
}

pub struct StoreCore {
    settings: StoreSettings,
    raw: RawNode<RaftLog>,
    mvcc: Mvcc,
    /// The page-store files: a snapshot from the leader replaces the store.
    files: Box<dyn StoreFiles>,
    /// What this event asks of the world (see `outbox`).
    outbox: Outbox,
    /// The time of the event being handled: every decision in one event sees
    /// the same instant, and a simulation chooses it.
    now: Instant,
    /// The wall-clock time at an instant of `now`'s clock (member ids are
    /// made from it).
    wall_clock: (Instant, SystemTime),
    /// The Ready being persisted by the WAL task, if any.
    persisting: Option<u64>,
    /// Messages raft may send only once that Ready is durable (votes, append
    /// acknowledgements: the Ready contract's `persisted_messages`).
    persisted_messages: Vec<RaftMessage>,
    /// Since when each peer's connection has been up (etcd's `ActiveSince`),
    /// and over which of the transport's links.
    peers_active_since: HashMap<u64, (u64, Instant)>,
    /// Raft messages from peers the screen dropped, warned about at a bounded rate.
    screened_warnings: LogLimit,
    membership: Membership,
    /// Clients are let in once this is applied: every entry this member knew to
    /// be committed when it started (see `caught_up`).
    boot_applied_target: u64,
    /// Client calls waiting on proposals, the leader and peers (see `waits`).
    waiting: Pending<Awaited>,
    /// When the leader last changed: a proposal that times out after a change
    /// of leader gets etcd's "possibly due to previous leader failure".
    leader_changed_since: Instant,
    /// Publishing this member's name and client URLs (see `publication`).
    publication: Publication,
    /// This member's membership changes on their way into raft.
    conf_changes: ConfChangeQueue,
    /// When this member applied its own removal; it stops soon after.
    removed_at: Option<Instant>,
    join_peers: Vec<(u64, Vec<String>)>,
    ticks: u64,
    reads: ReadQueue,
    /// Reads too large for one step, going on between events.
    stepped_reads: SteppedReads,
    commits: CommitPipeline,
    /// A defragmentation in progress.
    defrag: Option<DefragJob>,
    /// Snapshot calls waiting for a commit.
    snapshot_waits: Vec<SnapshotWait>,
    /// No compaction step before this (COMPACTION_STEP_REST after the last).
    compaction_rest_until: Option<Instant>,
    /// Snapshots sent, pinned and installed (see `snapshots`).
    snapshot_flow: SnapshotFlow,
    /// What waits for room on a full disk.
    disk_full: DiskFull,
    lease_clock: LeaseClock,
    /// The lease decisions the simulation checks (see `LeaseAudit`).
    #[cfg(feature = "sim")]
    lease_audit: Vec<LeaseAudit>,
    lease_ids: IdGenerator,
    request_ids: IdGenerator,
    auto_compactor: AutoCompactor,
    /// The leader's periodic corruption check (`--experimental-corrupt-check-time`).
    corrupt_check: PeriodicCheck,
    metrics: CoreMetrics,
    watchers: Watchers,
    /// etcd's auth state as applied (stored in MVCC's `mauth` record).
    auth: AuthState,
    /// The simple tokens this member gave or learnt from applied entries.
    tokens: SimpleTokens,
}

impl StoreCore {
    #[allow(clippy::too_many_arguments)] // each is one owned piece of the core
    pub fn new(
        settings: StoreSettings,
        raw: RawNode<RaftLog>,
        mvcc: Mvcc,
        membership: Membership,
        files: Box<dyn StoreFiles>,
        client_cores: usize,
        now: Instant,
        wall_clock_now: SystemTime,
    ) -> StoreCore {
        // What was known committed at start. With peers, entries past the
        // stored commit index may be replaced by the next leader; a sole
        // voter's commit index was raised to what its log holds (see
        // `bootstrap::sole_voter_commit`), which it can apply without writing
        // anything first: also on a full disk.
        let boot_applied_target = raw.raft.raft_log.committed;
        let lease_ids = IdGenerator::new(settings.member_id, wall_clock_now);
        let request_ids = IdGenerator::new(settings.member_id, wall_clock_now);
        let read_contexts = IdGenerator::new(settings.member_id, wall_clock_now);
        let auto_compactor = AutoCompactor::new(settings.auto_compaction, now);
        let corrupt_check = PeriodicCheck::new(settings.corrupt_check_interval, now);
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
        // One tick is the heartbeat interval's share of the election timeout.
        let heartbeat_interval =
            settings.election_timeout * raw.raft.heartbeat_timeout() as u32 / raw.raft.election_timeout().max(1) as u32;
        let watchers = Watchers::new(client_cores);
        let auth = Self::stored_auth(&mvcc);
        let tokens = SimpleTokens::new(settings.simple_token_ttl);
        let join_peers = settings.join_peers.clone();
        let stepped_reads = SteppedReads::new(settings.response_bytes_max);
        let commits = CommitPipeline::new(
            durable_applied_index,
            now,
            settings.backend_batch_limit,
            settings.backend_batch_interval,
        );
        let mut core = StoreCore {
            settings,
            raw,
            mvcc,
            files,
            outbox: Outbox::default(),
            now,
            wall_clock: (now, wall_clock_now),
            persisting: None,
            persisted_messages: Vec::new(),
            peers_active_since: HashMap::new(),
            screened_warnings: LogLimit::default(),
            membership,
            boot_applied_target,
            waiting: Pending::default(),
            leader_changed_since: now,
            publication: Publication::default(),
            conf_changes: ConfChangeQueue::default(),
            removed_at: None,
            join_peers,
            ticks: 0,
            reads: ReadQueue::new(read_contexts),
            stepped_reads,
            commits,
            defrag: None,
            snapshot_waits: Vec::new(),
            compaction_rest_until: None,
            snapshot_flow: SnapshotFlow::default(),
            disk_full: DiskFull::default(),
            lease_clock: LeaseClock::default(),
            #[cfg(feature = "sim")]
            lease_audit: Vec::new(),
            lease_ids,
            request_ids,
            auto_compactor,
            corrupt_check,
            metrics: CoreMetrics {
                snapshots_sent: 0,
                snapshots_send_failed: 0,
                snapshots_received: 0,
                leader: 0,
                leader_changes: 0,
                proposals_failed: 0,
                raft_messages_screened: 0,
                entries_skipped: 0,
                ops: OpCounts::default(),
                slow_applies: 0,
                peer_timing: PeerTiming::new(heartbeat_interval),
                wal_fsync: Histogram::etcd_disk(),
                backend_commit: Histogram::etcd_disk(),
            },
            watchers,
            auth,
            tokens,
        };
        core.membership_changed();
        core
    }

    /// Handles one event that happened at `now`; the caller runs
    /// [`StoreCore::drive`] after a batch of them, and carries out the effects
    /// ([`StoreCore::take_effects`]).
    pub fn handle(&mut self, now: Instant, event: Event) {
        self.now = now;
        match event {
            Event::Call { client, call } => self.handle_call(client, call),
            Event::Tick => {
                self.stop_if_removed();
                self.ticks += 1;
                self.raw.tick();
                self.revoke_expired_leases();
                self.auto_compact();
                self.corrupt_check_tick();
                self.expire_waits();
                if self.ticks.is_multiple_of(auth::TOKEN_SWEEP_TICKS) {
                    self.tokens.expire(now);
                }
                self.reads
                    .requeue_older_than(self.ticks.saturating_sub(self.settings.retry_ticks));
                self.retry_for_space();
            }
            Event::Peer(PeerEvent::Received(message)) if !self.screen_admits(&message) => {}
            Event::Peer(PeerEvent::Received(message)) => {
                self.metrics.peer_timing.received(self.now, &message);
                // Errors are messages raft does not take from this peer (unknown
                // or removed): nothing to do but drop them.
                if let Err(error) = self.raw.step(*message) {
                    tracing::debug!(%error, "peer message not stepped");
                }
            }
            Event::Peer(PeerEvent::Unreachable(peer)) => self.raw.report_unreachable(peer),
            Event::Peer(PeerEvent::Connected { peer, link, at }) => {
                self.peers_active_since.insert(peer, (link, at));
            }
            Event::Peer(PeerEvent::Disconnected { peer, link }) => {
                if self.peers_active_since.get(&peer).is_some_and(|&(up, _)| up == link) {
                    self.peers_active_since.remove(&peer);
                }
            }
            Event::Peer(PeerEvent::Undelivered { to, message }) => self.undelivered(to, message),
            Event::Peer(PeerEvent::LeaseForward { from, forward }) => self.answer_lease_forward(from, forward),
            Event::Peer(PeerEvent::LeaseForwardReply(reply)) => self.finish_lease_forward(reply),
            Event::Peer(PeerEvent::PromoteCheck { from, check }) => self.promote_check(from, check),
            Event::Peer(PeerEvent::SnapshotSent { to, txid, delivered }) => self.snapshot_sent(to, txid, delivered),
            Event::Peer(PeerEvent::SnapshotReceived { message, path }) => self.snapshot_received(*message, &path),
            Event::Peer(PeerEvent::HashKvAsked { query, from, revision }) => self.hash_kv_asked(query, from, revision),
            Event::Peer(PeerEvent::HashKvAnswers { check, answers }) => self.corrupt_check_answered(check, answers),
            Event::CommitDue => self.maybe_commit(true),
            Event::Persisted { ready, result, elapsed } => {
                if let Err(error) = result {
                    fatal(&format!("WAL write failed: {error}"));
                }
                self.metrics.wal_fsync.observe(elapsed);
                assert_eq!(self.persisting.take(), Some(ready), "WAL persists Readies in order");
                self.persisted_after_no_space();
                self.raw.on_persist_ready(ready);
                if let Some(install) = self.snapshot_flow.take_install() {
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
            Event::Watch { client, command } => self.watch_command(client, command),
            Event::WatchProgressTick => self.watchers.progress_tick(&self.mvcc),
        }
    }

    /// The simulation's randomness for raft's election timeout, which raft-rs
    /// draws from its thread's own generator (no seed reaches it): whenever
    /// the election clock is at zero, `pick(ticks)` chooses the timeout as
    /// ticks + a number below ticks, raft's own range.
    #[cfg(feature = "sim")]
    pub fn choose_election_timeout(&mut self, pick: impl FnOnce(usize) -> usize) {
        let raft = &mut self.raw.raft;
        if raft.election_elapsed == 0 {
            let ticks = raft.election_timeout();
            raft.set_randomized_election_timeout(ticks + pick(ticks));
        }
    }

    /// Damage for the simulation's checks to catch (their own test): a write
    /// to this member's store that raft never saw.
    #[cfg(feature = "sim")]
    pub fn write_behind_raft(&mut self, key: &[u8], value: &[u8]) {
        let mut write = self.mvcc.write();
        write.put(key, value, 0).expect("a put to the simulated store");
        write.end();
    }

    /// The lease decisions since the last call (the simulation's lease check).
    #[cfg(feature = "sim")]
    pub fn take_lease_audit(&mut self) -> Vec<LeaseAudit> {
        std::mem::take(&mut self.lease_audit)
    }

    /// `etcd_server_slow_read_indexes_total` (the simulation's report).
    #[cfg(feature = "sim")]
    pub fn slow_read_indexes(&self) -> u64 {
        self.reads.slow_read_indexes()
    }

    /// The applied index and the number of leases: the simulation's final
    /// checks wait until every member shows the same index and no lease.
    #[cfg(feature = "sim")]
    pub fn applied_and_leases(&self) -> (u64, usize) {
        (self.mvcc.applied_index(), self.mvcc.leases().len())
    }

    /// Where this member's raft stands, for a simulation failure's message.
    #[cfg(feature = "sim")]
    pub fn raft_status(&self) -> String {
        let raft = &self.raw.raft;
        format!(
            "{:?} of term {}, leader {:x}, committed {}, applied {}, {} reads waiting, tick {}",
            raft.state,
            raft.term,
            raft.leader_id,
            raft.raft_log.committed,
            self.mvcc.applied_index(),
            self.reads.len(),
            self.ticks,
        )
    }

    /// Damage for the simulation's lease check to catch (its own test): this
    /// member, leading, expires every lease `by` early.
    #[cfg(feature = "sim")]
    pub fn expire_leases_early(&mut self, by: std::time::Duration) {
        self.lease_clock.expire_early(by);
    }

    /// What the events and drives so far ask of the world, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        self.outbox.take()
    }

    /// Moves everything forward that the events made possible, at `now`.
    pub fn drive(&mut self, now: Instant) {
        self.now = now;
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
            if self.commits.in_flight() && self.raw.raft.raft_log.unstable().snapshot.is_some() {
                break;
            }
            self.process_ready();
        }
        self.answer_applied_reads();
        self.finish_corrupt_check();
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
        let header = self.outer_header();
        for client in 0..self.watchers.client_cores() {
            let notices = self.watchers.take_outbox(client);
            if !notices.is_empty() {
                let push = WatchPush {
                    header: header.clone(),
                    notices,
                };
                self.outbox.push(Effect::WatchPush { client, push });
            }
        }
    }

    /// True once every entry known committed at start has been applied again,
    /// and this member's attributes with them (see `publish_attributes`).
    pub fn caught_up(&self) -> bool {
        self.mvcc.applied_index() >= self.boot_applied_target && self.publication.published()
    }

    /// Clients may be let in: caught up, or, on a disk too full to persist the
    /// publish entry, every entry this member knew committed at start applied
    /// again (it serves what it holds, serializable reads, until there is room).
    pub fn ready_to_serve(&self) -> bool {
        self.caught_up() || (self.disk_full.wal_stuck() && self.mvcc.applied_index() >= self.boot_applied_target)
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
                self.leader_changed_since = self.now;
                // ReadIndex requests in flight to the old leader are lost: ask again.
                self.reads.requeue_requested();
                self.settle_leader_transfers();
            }
            self.metrics.leader = soft_state.leader_id;
            self.metrics.peer_timing.leadership_changed();
            self.lease_leadership_changed(soft_state.raft_state == StateRole::Leader);
            if soft_state.raft_state == StateRole::Leader {
                self.auto_compactor.restart(self.now);
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
            self.outbox
                .push(Effect::Wal(WalJob::Persist { ready: number, records }));
        } else {
            self.raw.on_persist_ready(number);
            self.send_messages(persisted_messages);
        }
        // While a snapshot installs, they are applied on the new store.
        if let Some(committed) = self.snapshot_flow.hold_back(committed) {
            self.apply_committed(committed);
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
            self.commits.note_change();
        }
        let changes = self.mvcc.take_changes();
        self.watchers.publish(&changes, &self.mvcc);
        self.raw.advance_apply_to(last_index);
    }

    fn apply_entry(&mut self, entry: &Entry) {
        match entry.get_entry_type() {
            EntryType::EntryNormal if entry.data.is_empty() => {
                // A new leader's empty entry: nothing to apply but what it
                // tells of the leader (see `empty_entry_applied`).
                self.empty_entry_applied(entry.term);
            }
            EntryType::EntryNormal => match entry::decode(&entry.data) {
                Ok(decoded) => self.apply_request(entry.index, decoded),
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

    fn apply_request(&mut self, index: u64, decoded: Decoded) {
        let Decoded {
            id,
            auth,
            request: body,
        } = decoded;
        if let Some(refusal) = self.alarm_refusal(&body) {
            self.answer_applied(id, Err(refusal));
            return;
        }
        let user = auth.map(|header| AuthInfo {
            username: header.username,
            revision: header.revision,
        });
        if let Err(refusal) = self.check_applied(user.as_ref(), &body) {
            self.answer_applied(id, Err(refusal));
            return;
        }
        let started = Instant::now();
        let result = match body {
            raft_request::Request::Put(put) => {
                let result = self.write(|view| {
                    apply::check_put_lease(view, &put)?;
                    apply::put(view, &put).map(Response::Put)
                });
                if result.is_ok() {
                    self.metrics.ops.put(&put);
                }
                result
            }
            raft_request::Request::DeleteRange(delete) => {
                let result = self.write(|view| apply::delete_range(view, &delete).map(Response::DeleteRange));
                if result.is_ok() {
                    self.metrics.ops.delete(&delete);
                }
                result
            }
            raft_request::Request::Txn(txn) => {
                let result = apply::txn(&mut self.mvcc, &txn);
                if let Ok(response) = &result {
                    self.metrics.ops.txn(&txn, response);
                }
                result.map(Response::Txn)
            }
            raft_request::Request::Compaction(compact) => {
                apply::compact(&mut self.mvcc, &compact).map(Response::Compact)
            }
            raft_request::Request::LeaseGrant(grant) => self.apply_lease_grant(&grant),
            raft_request::Request::LeaseRevoke(revoke) => self.apply_lease_revoke(id, &revoke),
            raft_request::Request::Alarm(alarm) => Ok(Response::Alarm(self.apply_alarm(&alarm))),
            raft_request::Request::MemberAttributes(attributes) => {
                self.apply_member_attributes(id, &attributes);
                return; // proposed by the member itself, with no client waiting
            }
            raft_request::Request::MemberUpdate(update) => self.apply_member_update(update),
            raft_request::Request::Auth(request) => self.apply_auth(index, request).map_err(ApplyError::Client),
        };
        if started.elapsed() > SLOW_APPLY {
            self.metrics.slow_applies += 1;
        }
        let result = self.client_result(result);
        self.answer_applied(id, result);
    }

    /// Answers the call waiting for entry `id`, if it is this member's.
    fn answer_applied(&mut self, id: u64, result: Result<Response, EtcdError>) {
        let Some(waiting) = self.waiting.remove_if(id, Awaited::is_entry) else {
            return;
        };
        let waiter = Waiter {
            client: waiting.client,
            call_id: waiting.call_id,
        };
        if waiting.kind
            == (Awaited::Entry {
                physical_compaction: true,
            })
            && result.is_ok()
        {
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
}

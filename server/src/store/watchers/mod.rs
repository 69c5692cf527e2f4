//! The store core's watchers: who watches what, from which revision, and what each
//! stream may still be sent.
//!
//! A watcher is *synced* when every event up to the current revision was handed to
//! its stream: new changes go straight to it ([`Watchers::publish`]). Otherwise it
//! is *unsynced* and catches up by reading history from the MVCC store in bounded
//! passes ([`Watchers::catch_up`]), then joins the synced group. This is etcd's
//! watchableStore design. A slow client never stalls writes or other watchers: its
//! stream has a byte window ([`STREAM_WINDOW_BYTES`]); when the window is full its
//! watchers fall back to unsynced, which costs one revision number each until the
//! client reads again.
//!
//! Notices are appended to a per-client-core outbox in the order they must reach
//! the client; the store core flushes the outbox after every pass.

mod events;
mod group;
mod outlet;

pub use outlet::WatchOutlet;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ringkv_engine::mvcc::{Change, ChangeKind, Mvcc, MvccError};
use ringkv_proto::etcdserverpb as pb;

use self::events::EventCache;
use self::group::{WatcherGroup, WatcherId};
use crate::fatal::fatal;
use crate::watch::span::WatchSpan;
use crate::watch::{Notice, NoticeBody, StreamId, WatchCommand, INVALID_WATCH_ID};

/// Bytes of notices a stream may have sent but not yet written to its socket.
/// Bounds the memory a client that does not read can hold on the client core.
/// One batch may exceed it when the window is empty, so a revision bigger than the
/// window is still delivered whole.
pub const STREAM_WINDOW_BYTES: usize = 4 << 20;
/// Unsynced watchers looked at per catch-up pass (etcd's maxWatchersPerSync).
pub const CATCH_UP_WATCHERS_PER_PASS: usize = 512;
/// Changes read from history per catch-up pass, rounded up to a whole revision
/// (etcd batches 1000 revisions per watcher; changes bound the read itself).
pub const CATCH_UP_CHANGES_PER_PASS: usize = 1000;
/// What a notice costs in the window besides its events: the response header and
/// fields, rounded up.
const NOTICE_OVERHEAD_BYTES: usize = 64;
/// etcd's `ErrWatcherDuplicateID` text.
pub const DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// A create request's watch_id that asks the server to choose (clientv3.AutoWatchID).
const AUTO_WATCH_ID: i64 = 0;

/// A stream: the client core it lives on and its number there.
type StreamKey = (usize, StreamId);

#[derive(Debug, Clone, Copy, Default)]
struct WatchOptions {
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
}

impl WatchOptions {
    fn from_request(request: &pb::WatchCreateRequest) -> WatchOptions {
        use pb::watch_create_request::FilterType;
        WatchOptions {
            no_put: request.filters.contains(&(FilterType::Noput as i32)),
            no_delete: request.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: request.prev_kv,
            fragment: request.fragment,
            progress_notify: request.progress_notify,
        }
    }

    fn wants(&self, kind: ChangeKind) -> bool {
        match kind {
            ChangeKind::Put => !self.no_put,
            ChangeKind::Delete => !self.no_delete,
        }
    }
}

struct Watcher {
    stream: StreamKey,
    watch_id: i64,
    span: WatchSpan,
    /// The first revision asked for (current + 1 for "now"), etcd's startRev:
    /// progress is only reported once the store reached it.
    start_revision: i64,
    /// Every event below this was handed to the stream (or matched nothing).
    next_revision: i64,
    synced: bool,
    options: WatchOptions,
    /// No events were sent since the last progress tick.
    quiet: bool,
}

#[derive(Default)]
struct Stream {
    /// watch_id -> watcher, for cancel, close and stream-wide progress.
    watchers: BTreeMap<i64, WatcherId>,
    next_auto_id: i64,
    in_flight_bytes: usize,
}

impl Stream {
    fn has_window(&self) -> bool {
        self.in_flight_bytes < STREAM_WINDOW_BYTES
    }
}

pub struct Watchers {
    watchers: HashMap<WatcherId, Watcher>,
    streams: HashMap<StreamKey, Stream>,
    synced: WatcherGroup,
    unsynced: BTreeSet<WatcherId>,
    /// Streams owed a stream-wide progress notification once all their watchers
    /// are synced (etcd 3.5.13's deferred progress).
    progress_deferred: BTreeSet<StreamKey>,
    /// False when the last catch-up pass could do nothing; set again when
    /// something changes that could let it (a window opens, a watcher falls back).
    catch_up_may_progress: bool,
    next_watcher: WatcherId,
    /// Notices per client core, in send order.
    outbox: Vec<Vec<Notice>>,
}

impl Watchers {
    pub fn new(client_cores: usize) -> Watchers {
        Watchers {
            watchers: HashMap::new(),
            streams: HashMap::new(),
            synced: WatcherGroup::default(),
            unsynced: BTreeSet::new(),
            progress_deferred: BTreeSet::new(),
            catch_up_may_progress: false,
            next_watcher: 1,
            outbox: (0..client_cores).map(|_| Vec::new()).collect(),
        }
    }

    pub fn handle(&mut self, client: usize, command: WatchCommand, mvcc: &Mvcc) {
        if let WatchCommand::Create { stream, .. }
        | WatchCommand::Cancel { stream, .. }
        | WatchCommand::Progress { stream } = &command
        {
            self.streams.entry((client, *stream)).or_default();
        }
        match command {
            WatchCommand::Create { stream, request, .. } => self.create((client, stream), &request, mvcc),
            WatchCommand::Cancel { stream, watch_id } => self.cancel((client, stream), watch_id, mvcc),
            WatchCommand::Progress { stream } => self.progress_all((client, stream), mvcc),
            WatchCommand::Consumed { stream, credit_bytes } => {
                if let Some(stream) = self.streams.get_mut(&(client, stream)) {
                    assert!(stream.in_flight_bytes >= credit_bytes, "credit comes back once");
                    stream.in_flight_bytes -= credit_bytes;
                    self.catch_up_may_progress = true;
                }
            }
            WatchCommand::Close { stream } => self.close((client, stream)),
        }
    }

    /// The store was replaced by a snapshot from the leader: its history may
    /// differ in what it kept, so every watcher reads on from history, from
    /// the revision after the last one it was handed (`old_revision` for the
    /// synced ones). Those whose next revision is compacted in the new store
    /// are canceled by the next catch-up pass, as etcd does after a restore.
    pub fn store_replaced(&mut self, old_revision: i64) {
        for (&id, watcher) in &mut self.watchers {
            if watcher.synced {
                watcher.synced = false;
                watcher.next_revision = watcher.next_revision.max(old_revision + 1);
                self.synced.remove(id, &watcher.span);
                self.unsynced.insert(id);
            }
        }
        self.catch_up_may_progress = true;
    }

    /// How many client cores the notices are for.
    pub fn client_cores(&self) -> usize {
        self.outbox.len()
    }

    /// The notices for client core `client` since the last call.
    pub fn take_outbox(&mut self, client: usize) -> Vec<Notice> {
        std::mem::take(&mut self.outbox[client])
    }

    pub fn has_catch_up_work(&self) -> bool {
        self.catch_up_may_progress && !self.unsynced.is_empty()
    }

    /// Refuses a watch before it is created (etcd's answer to one the user
    /// may not read): created and canceled at once, with `reason`.
    pub fn refuse_create(&mut self, client: usize, stream: StreamId, reason: &'static str, mvcc: &Mvcc) {
        let key = (client, stream);
        self.streams.entry(key).or_default();
        let body = NoticeBody::Created {
            watch_id: INVALID_WATCH_ID,
            revision: mvcc.current_revision(),
            cancel_reason: Some(reason),
        };
        self.notify(key, body, true);
    }

    fn create(&mut self, key: StreamKey, request: &pb::WatchCreateRequest, mvcc: &Mvcc) {
        let current = mvcc.current_revision();
        let stream = self.streams.entry(key).or_default();
        let refuse = |watchers: &mut Watchers, reason: &'static str| {
            let body = NoticeBody::Created {
                watch_id: INVALID_WATCH_ID,
                revision: current,
                cancel_reason: Some(reason),
            };
            watchers.notify(key, body, true);
        };
        let span = match WatchSpan::from_request(&request.key, &request.range_end) {
            Ok(span) => span,
            Err(reason) => return refuse(self, reason),
        };
        let watch_id = if request.watch_id == AUTO_WATCH_ID {
            while stream.watchers.contains_key(&stream.next_auto_id) {
                stream.next_auto_id += 1;
            }
            stream.next_auto_id += 1;
            stream.next_auto_id - 1
        } else if stream.watchers.contains_key(&request.watch_id) {
            return refuse(self, DUPLICATE_WATCH_ID);
        } else {
            request.watch_id
        };
        let id = self.next_watcher;
        self.next_watcher += 1;
        stream.watchers.insert(watch_id, id);
        // etcd: "now" and future revisions start synced; past ones catch up.
        let start_revision = if request.start_revision == 0 {
            current + 1
        } else {
            request.start_revision
        };
        let synced = start_revision > current;
        let watcher = Watcher {
            stream: key,
            watch_id,
            span,
            start_revision,
            next_revision: start_revision,
            synced,
            options: WatchOptions::from_request(request),
            quiet: true,
        };
        if synced {
            self.synced.add(id, &watcher.span);
        } else {
            self.unsynced.insert(id);
            self.catch_up_may_progress = true;
        }
        self.watchers.insert(id, watcher);
        let body = NoticeBody::Created {
            watch_id,
            revision: current,
            cancel_reason: None,
        };
        self.notify(key, body, true);
    }

    fn cancel(&mut self, key: StreamKey, watch_id: i64, mvcc: &Mvcc) {
        let found = self.streams.get_mut(&key).and_then(|s| s.watchers.remove(&watch_id));
        let Some(id) = found else {
            // etcd answers a cancel of an unknown watch with nothing.
            return self.notify(key, NoticeBody::Nothing, true);
        };
        self.forget(id);
        let body = NoticeBody::Canceled {
            watch_id,
            revision: mvcc.current_revision(),
        };
        self.notify(key, body, true);
    }

    fn close(&mut self, key: StreamKey) {
        let Some(stream) = self.streams.remove(&key) else {
            return;
        };
        for id in stream.watchers.into_values() {
            self.forget(id);
        }
        self.progress_deferred.remove(&key);
    }

    /// Drops a watcher from the groups (its stream entry is the caller's).
    fn forget(&mut self, id: WatcherId) {
        let watcher = self.watchers.remove(&id).expect("streams list live watchers");
        if watcher.synced {
            self.synced.remove(id, &watcher.span);
        } else {
            assert!(self.unsynced.remove(&id));
        }
    }

    /// Hands the changes just applied to the synced watchers that want them.
    pub fn publish(&mut self, changes: &[Change], mvcc: &Mvcc) {
        if changes.is_empty() || self.synced.len() == 0 {
            return;
        }
        let mut matched: BTreeMap<WatcherId, Vec<usize>> = BTreeMap::new();
        for (index, change) in changes.iter().enumerate() {
            self.synced
                .visit_matching(&change.kv.key, |id| matched.entry(id).or_default().push(index));
        }
        let mut cache = EventCache::new(changes);
        let revision = mvcc.current_revision();
        for (id, indexes) in matched {
            let watcher = &self.watchers[&id];
            let wanted: Vec<usize> = indexes
                .into_iter()
                .filter(|&i| changes[i].revision() >= watcher.next_revision && watcher.options.wants(changes[i].kind))
                .collect();
            let Some(&first) = wanted.first() else {
                continue;
            };
            if !self.streams[&watcher.stream].has_window() {
                self.fall_behind(id, changes[first].revision());
                continue;
            }
            let prev_kv = watcher.options.prev_kv;
            let events = wanted.iter().map(|&i| cache.event(i, prev_kv, mvcc)).collect();
            self.send_events(id, revision, events);
        }
    }

    /// A synced watcher whose stream is out of window: it will read from
    /// `revision` on from history once the client catches up.
    fn fall_behind(&mut self, id: WatcherId, revision: i64) {
        let watcher = self.watchers.get_mut(&id).expect("matched watchers exist");
        assert!(watcher.synced);
        watcher.synced = false;
        watcher.next_revision = watcher.next_revision.max(revision);
        self.synced.remove(id, &watcher.span);
        self.unsynced.insert(id);
        self.catch_up_may_progress = true;
    }

    fn send_events(&mut self, id: WatcherId, revision: i64, events: Vec<bytes::Bytes>) {
        let watcher = self.watchers.get_mut(&id).expect("watchers exist");
        watcher.quiet = false;
        let body = NoticeBody::Events {
            watch_id: watcher.watch_id,
            revision,
            events,
            fragment: watcher.options.fragment,
        };
        let stream = watcher.stream;
        self.notify(stream, body, false);
    }

    /// One bounded catch-up pass: up to [`CATCH_UP_WATCHERS_PER_PASS`] unsynced
    /// watchers with window left get the history they miss, up to
    /// [`CATCH_UP_CHANGES_PER_PASS`] changes; those that reach the current revision
    /// join the synced group. Watchers needing compacted history are canceled.
    pub fn catch_up(&mut self, mvcc: &Mvcc) {
        let current = mvcc.current_revision();
        let compacted = mvcc.compact_revision();
        let mut chosen = Vec::new();
        let mut gone = Vec::new();
        let mut group = WatcherGroup::default();
        let mut from = i64::MAX;
        for &id in &self.unsynced {
            let watcher = &self.watchers[&id];
            // etcd's `minRev < compactRev`; a negative start revision too.
            if watcher.next_revision < compacted || watcher.next_revision < 0 {
                gone.push(id);
                continue;
            }
            if !self.streams[&watcher.stream].has_window() {
                continue;
            }
            group.add(id, &watcher.span);
            from = from.min(watcher.next_revision);
            chosen.push(id);
            if chosen.len() == CATCH_UP_WATCHERS_PER_PASS {
                break;
            }
        }
        for id in gone {
            self.cancel_compacted(id, compacted);
        }
        self.catch_up_may_progress = chosen.len() == CATCH_UP_WATCHERS_PER_PASS;
        if chosen.is_empty() {
            return;
        }
        let history = match mvcc.history(from, current, CATCH_UP_CHANGES_PER_PASS) {
            Ok(history) => history,
            Err(MvccError::Compacted) => unreachable!("watchers below the compaction point were canceled"),
            Err(error) => fatal(&format!("reading watch history failed: {error}")),
        };
        let changes = history.changes;
        let mut matched: BTreeMap<WatcherId, Vec<usize>> = BTreeMap::new();
        for (index, change) in changes.iter().enumerate() {
            group.visit_matching(&change.kv.key, |id| matched.entry(id).or_default().push(index));
        }
        let mut cache = EventCache::new(&changes);
        for id in chosen {
            let watcher = &self.watchers[&id];
            let events: Vec<_> = matched
                .remove(&id)
                .unwrap_or_default()
                .into_iter()
                .filter(|&i| changes[i].revision() >= watcher.next_revision && watcher.options.wants(changes[i].kind))
                .map(|i| cache.event(i, watcher.options.prev_kv, mvcc))
                .collect();
            if !events.is_empty() {
                self.send_events(id, current, events);
            }
            let watcher = self.watchers.get_mut(&id).expect("chosen watchers exist");
            watcher.next_revision = watcher.next_revision.max(history.next_revision);
            if history.next_revision > current {
                watcher.synced = true;
                self.unsynced.remove(&id);
                self.synced.add(id, &watcher.span);
            } else {
                self.catch_up_may_progress = true;
            }
        }
    }

    fn cancel_compacted(&mut self, id: WatcherId, compacted: i64) {
        let watcher = &self.watchers[&id];
        let key = watcher.stream;
        let watch_id = watcher.watch_id;
        let removed = self.streams.get_mut(&key).and_then(|s| s.watchers.remove(&watch_id));
        assert_eq!(removed, Some(id));
        self.forget(id);
        // etcd reports the store's compaction point, 0 if none (then not canceled).
        let body = NoticeBody::Compacted {
            watch_id,
            compact_revision: compacted.max(0),
        };
        self.notify(key, body, false);
    }

    /// A WatchProgressRequest: answered now if every watcher of the stream is
    /// synced and the store reached its start revision, else once that holds
    /// (etcd 3.5.13+; 3.4 answered at once). A stream without watchers gets nothing.
    fn progress_all(&mut self, key: StreamKey, mvcc: &Mvcc) {
        self.notify(key, NoticeBody::Nothing, true);
        self.progress_deferred.insert(key);
        self.send_deferred_progress(mvcc);
    }

    /// Sends the stream-wide progress notifications that became possible.
    pub fn send_deferred_progress(&mut self, mvcc: &Mvcc) {
        if self.progress_deferred.is_empty() {
            return;
        }
        let current = mvcc.current_revision();
        let ready: Vec<StreamKey> = self
            .progress_deferred
            .iter()
            .copied()
            .filter(|key| self.all_synced(*key, current))
            .collect();
        for key in ready {
            self.progress_deferred.remove(&key);
            if self.streams.get(&key).is_some_and(|s| !s.watchers.is_empty()) {
                let body = NoticeBody::Progress {
                    watch_id: INVALID_WATCH_ID,
                    revision: current,
                };
                self.notify(key, body, false);
            }
        }
    }

    fn all_synced(&self, key: StreamKey, current: i64) -> bool {
        let Some(stream) = self.streams.get(&key) else {
            return true;
        };
        stream.watchers.values().all(|id| {
            let watcher = &self.watchers[id];
            watcher.synced && current >= watcher.start_revision
        })
    }

    /// The `--watch-progress-notify-interval` tick: every synced progress_notify
    /// watcher that got no events since the last tick hears the current revision.
    pub fn progress_tick(&mut self, mvcc: &Mvcc) {
        let current = mvcc.current_revision();
        let mut due = Vec::new();
        for watcher in self.watchers.values_mut() {
            if !watcher.options.progress_notify {
                continue;
            }
            if watcher.quiet && watcher.synced && current >= watcher.start_revision {
                due.push((watcher.stream, watcher.watch_id));
            }
            watcher.quiet = true;
        }
        due.sort_unstable();
        for (key, watch_id) in due {
            let body = NoticeBody::Progress {
                watch_id,
                revision: current,
            };
            self.notify(key, body, false);
        }
    }

    fn notify(&mut self, key: StreamKey, body: NoticeBody, answers_command: bool) {
        let credit_bytes = NOTICE_OVERHEAD_BYTES
            + match &body {
                NoticeBody::Events { events, .. } => events.iter().map(|e| e.len() + 8).sum(),
                _ => 0,
            };
        let stream = self.streams.get_mut(&key).expect("notices go to open streams");
        stream.in_flight_bytes += credit_bytes;
        self.outbox[key.0].push(Notice {
            stream: key.1,
            credit_bytes,
            answers_command,
            body,
        });
    }
}

#[cfg(test)]
mod tests;

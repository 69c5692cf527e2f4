//! The store core: raft, the WAL and MVCC, owned by one executor.

mod appends;
pub mod auto_compaction;
pub(crate) mod bootstrap;
pub(crate) mod core;
pub(crate) mod corruption;
pub(crate) mod entry;
pub(crate) mod event;
#[cfg(feature = "fault-injection")]
mod fault;
mod id_generator;
pub mod join;
mod lease_clock;
pub mod membership;
pub mod messages;
pub(crate) mod outbox;
mod raft_log;
mod raft_logger;
mod reads;
mod shell;
mod stepped_read;
pub(crate) mod store_files;
pub(crate) mod wal_io;
mod watchers;

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use futures_lite::future;
use glommio::channels::local_channel;
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use ringkv_datadir::layout::SNAP_DIR;
use ringkv_datadir::wal::Identity;

pub use self::bootstrap::Start;
pub use self::core::MemberInfo;
use self::core::{StoreCore, StoreSettings};
use self::event::Event;
use self::membership::Membership;
use self::messages::{Call, Reply};
use self::shell::Shell;
use self::store_files::DataDirFiles;
use self::watchers::WatchOutlet;
use crate::config::auto_compaction::AutoCompactionPolicy;
use crate::peer::{self, PeerEvent, PeerTransport};
use crate::watch::{WatchCommand, WatchPush};

/// Raft ticks between ReadIndex retries (and attribute publishing attempts).
pub(crate) const RETRY_TICKS: u64 = 5;
/// Events handled per pass before the Ready loop runs again (bounds latency).
const EVENTS_PER_PASS_MAX: usize = 1024;

pub struct StoreCoreSettings {
    pub data_dir: PathBuf,
    pub identity: Identity,
    /// Used when the data directory is new: the members of `--initial-cluster`,
    /// or for a joiner the cluster's first membership (see `bootstrap::Start`).
    pub initial_membership: Membership,
    pub start: Start,
    /// A joiner's peers as the cluster reported them (empty otherwise).
    pub join_peers: Vec<(u64, Vec<String>)>,
    pub peer_network: peer::PeerNetwork,
    /// One raft tick (`--heartbeat-interval`).
    pub heartbeat_interval: Duration,
    pub election_ticks: usize,
    /// `--snapshot-count`.
    pub catch_up_entries: u64,
    pub max_request_bytes: usize,
    /// The largest response message a read builds (`--test-response-bytes-max`).
    pub response_bytes_max: usize,
    pub backend_batch_limit: usize,
    pub backend_batch_interval: Duration,
    pub member: MemberInfo,
    pub quota_backend_bytes: Option<u64>,
    pub auto_compaction: AutoCompactionPolicy,
    pub watch_progress_notify_interval: Duration,
    /// `--experimental-initial-corrupt-check`: before serving, a member that
    /// ran before compares its HashKV with its peers' (see `corruption`).
    pub initial_corrupt_check: bool,
    /// `--experimental-corrupt-check-time`; None: 0, no periodic check.
    pub corrupt_check_interval: Option<Duration>,
    /// `--auth-token-ttl`: how long a simple token lives past its last use.
    pub simple_token_ttl: Duration,
}

/// The watch channels of every client core (see `crate::watch`).
pub struct WatchChannels {
    pub commands: Vec<SharedReceiver<WatchCommand>>,
    pub pushes: Vec<SharedSender<WatchPush>>,
}

/// Opens the store, reports readiness (or the error) on `ready`, then serves
/// calls from every client core until the process ends.
pub async fn run(
    settings: StoreCoreSettings,
    calls: Vec<flume::Receiver<Call>>,
    replies: Vec<flume::Sender<Reply>>,
    watch: WatchChannels,
    ready: std::sync::mpsc::Sender<Result<Identity, String>>,
) {
    // Each `connect` waits for the other core to connect its end: start them all
    // at once so no order between cores can deadlock.
    let pushes: Vec<_> = watch
        .pushes
        .into_iter()
        .map(|p| glommio::spawn_local(p.connect()))
        .collect();
    let commands: Vec<_> = watch
        .commands
        .into_iter()
        .map(|c| glommio::spawn_local(c.connect()))
        .collect();
    let mut connected_pushes = Vec::with_capacity(pushes.len());
    for push in pushes {
        connected_pushes.push(push.await);
    }
    let mut connected_commands = Vec::with_capacity(commands.len());
    for command in commands {
        connected_commands.push(command.await);
    }
    let opened = bootstrap::open(
        &bootstrap::DataDir(&settings.data_dir),
        settings.identity,
        settings.initial_membership,
        settings.start,
        settings.election_ticks,
    )
    .await;
    let opened = match opened {
        Ok(opened) => opened,
        Err(error) => {
            let _ = ready.send(Err(error.to_string()));
            return;
        }
    };
    let identity = opened.identity;
    if opened.membership.is_removed(identity.member_id) {
        let error = "the member has been permanently removed from the cluster; \
                     its data directory must not be used again";
        let _ = ready.send(Err(error.to_string()));
        return;
    }
    let election_timeout = settings.heartbeat_interval * settings.election_ticks as u32;
    let request_timeout = core::request_timeout(election_timeout);
    // etcd's: only a member that ran before (a new one has nothing to compare),
    // before it listens for peers or serves clients.
    if settings.initial_corrupt_check && opened.initialized {
        let dial = settings.peer_network.tls.dial.clone();
        let checked =
            corruption::check_at_start(identity, &opened.mvcc, &opened.membership, dial, request_timeout).await;
        if let Err(error) = checked {
            let _ = ready.send(Err(error.to_string()));
            return;
        }
    }
    if let Some(interval) = settings.corrupt_check_interval {
        let local_member_id = format_args!("{:x}", identity.member_id).to_string();
        tracing::info!(%local_member_id, ?interval, "enabled corruption checking");
    }
    let (events, event_queue) = local_channel::new_unbounded();
    let events = Rc::new(events);
    let report: peer::Report = {
        let events = Rc::clone(&events);
        Rc::new(move |event: PeerEvent| events.try_send(Event::Peer(event)).is_ok())
    };
    let mut transport = PeerTransport::new(
        identity.member_id,
        identity.cluster_id,
        Rc::clone(&report),
        settings.peer_network.clone(),
        settings.data_dir.join(SNAP_DIR),
    );
    // A member alone listens only once it has a peer (see `PeerTransport::listen`);
    // one with peers does now, so that a port in use is a start error.
    if !opened.membership.peers_of(identity.member_id).is_empty() {
        if let Err(error) = transport.listen() {
            let _ = ready.send(Err(error));
            return;
        }
    }
    let (wal_jobs, wal_job_queue) = local_channel::new_unbounded();
    glommio::spawn_local(wal_io::run(opened.wal, wal_job_queue, Rc::clone(&events))).detach();
    for (client, receiver) in calls.into_iter().enumerate() {
        let events = Rc::clone(&events);
        glommio::spawn_local(async move {
            while let Ok(call) = receiver.recv_async().await {
                if events.try_send(Event::Call { client, call }).is_err() {
                    return;
                }
            }
        })
        .detach();
    }
    for (client, receiver) in connected_commands.into_iter().enumerate() {
        let events = Rc::clone(&events);
        glommio::spawn_local(async move {
            while let Some(command) = receiver.recv().await {
                if events.try_send(Event::Watch { client, command }).is_err() {
                    return;
                }
            }
        })
        .detach();
    }
    spawn_timer(Rc::clone(&events), settings.heartbeat_interval, || Event::Tick);
    spawn_timer(Rc::clone(&events), settings.watch_progress_notify_interval, || {
        Event::WatchProgressTick
    });
    spawn_timer(Rc::clone(&events), settings.backend_batch_interval, || Event::CommitDue);

    let store_settings = StoreSettings {
        member_id: identity.member_id,
        cluster_id: identity.cluster_id,
        max_request_bytes: settings.max_request_bytes,
        response_bytes_max: settings.response_bytes_max,
        backend_batch_limit: settings.backend_batch_limit,
        backend_batch_interval: settings.backend_batch_interval,
        min_lease_ttl_seconds: min_lease_ttl_seconds(election_timeout),
        election_timeout,
        member: settings.member,
        quota_backend_bytes: settings.quota_backend_bytes,
        auto_compaction: settings.auto_compaction,
        request_timeout,
        catch_up_entries: settings.catch_up_entries,
        retry_ticks: RETRY_TICKS,
        health_interval: core::HEALTH_INTERVAL,
        join_peers: settings.join_peers,
        corrupt_check_interval: settings.corrupt_check_interval,
        simple_token_ttl: settings.simple_token_ttl,
    };
    let client_cores = replies.len();
    let mut core = StoreCore::new(
        store_settings,
        opened.raw,
        opened.mvcc,
        opened.membership,
        Box::new(DataDirFiles {
            data_dir: settings.data_dir.clone(),
        }),
        client_cores,
        Instant::now(),
        SystemTime::now(),
    );
    let mut shell = Shell {
        events,
        wal_jobs,
        transport,
        replies,
        watch_outlet: WatchOutlet::new(connected_pushes),
    };
    // Clients are let in only once everything known committed is applied again
    // (so even a serializable read after a restart sees every write this member
    // acknowledged) and this member's client URLs are published.
    let mut ready = Some(ready);
    core.drive(Instant::now());
    shell.carry_out(core.take_effects());
    loop {
        if core.ready_to_serve() {
            if let Some(ready) = ready.take() {
                let _ = ready.send(Ok(identity));
            }
        }
        let first = if core.has_background_work() {
            match future::poll_once(event_queue.recv()).await {
                Some(event) => event,
                None => match core.background_rest(Instant::now()) {
                    // Compaction rests between steps: wait for an event, or
                    // for the rest to end. Waiting also lets glommio submit
                    // and reap the WAL's I/O, which it does only when no task
                    // is runnable or its 100 ms preemption timer fires: with
                    // back-to-back steps each WAL write and fdatasync waited
                    // out that timer, and puts at 2,000/s had a p99 of 3.2 s
                    // during a compaction of 1M revisions.
                    Some(rest) => {
                        let woken = future::or(async { Some(event_queue.recv().await) }, async {
                            glommio::timer::sleep(rest).await;
                            None
                        });
                        match woken.await {
                            Some(event) => event,
                            None => continue,
                        }
                    }
                    None => {
                        core.background_step(Instant::now());
                        core.drive(Instant::now());
                        shell.carry_out(core.take_effects());
                        glommio::yield_if_needed().await;
                        continue;
                    }
                },
            }
        } else {
            event_queue.recv().await
        };
        let Some(first) = first else {
            return;
        };
        // What an event asks for goes out at once, not after the pass: a
        // reply answered from the applied state reaches its client core while
        // this one works on, as when the core sent replies itself.
        core.handle(Instant::now(), first);
        shell.carry_out(core.take_effects());
        for _ in 1..EVENTS_PER_PASS_MAX {
            match future::poll_once(event_queue.recv()).await {
                Some(Some(event)) => {
                    core.handle(Instant::now(), event);
                    shell.carry_out(core.take_effects());
                }
                _ => break,
            }
        }
        core.drive(Instant::now());
        shell.carry_out(core.take_effects());
    }
}

/// etcd's minimum lease TTL: ⌈1.5 × election timeout⌉ in whole seconds (2 s with
/// the default 1 s election timeout), so a lease outlives a leader election.
pub(crate) fn min_lease_ttl_seconds(election_timeout: Duration) -> i64 {
    let min_ttl = election_timeout * 3 / 2;
    let seconds = min_ttl.as_secs() + u64::from(min_ttl.subsec_nanos() > 0);
    i64::try_from(seconds.max(1)).expect("election timeouts are small")
}

fn spawn_timer(events: Rc<local_channel::LocalSender<Event>>, every: Duration, event: fn() -> Event) {
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(every).await;
            if events.try_send(event()).is_err() {
                return;
            }
        }
    })
    .detach();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_lease_ttl_is_etcds_for_the_default_election_timeout() {
        assert_eq!(min_lease_ttl_seconds(Duration::from_secs(1)), 2);
        assert_eq!(min_lease_ttl_seconds(Duration::from_millis(2000)), 3);
        assert_eq!(min_lease_ttl_seconds(Duration::from_millis(100)), 1);
    }
}

//! One member in the simulation: its store core, opened over its simulated
//! disk with the same bootstrap a real start runs, and the WAL it writes.
//! The disk outlives the process: a crash drops the core and the WAL, and a
//! restart opens them again from what the disk kept. A member of the initial
//! cluster starts as `--initial-cluster-state new` does; one added later
//! joins as `--initial-cluster-state existing` does, from the membership a
//! running member reports (`join::joined`, what `join::discover` checks).

use std::time::{Duration, Instant, SystemTime};

use ringkv_datadir::cluster::InitialMember;
use ringkv_datadir::wal::Identity;
use ringkv_engine::mvcc::CommitPlan;
use ringkv_engine::wal::sim::SimDir;
use ringkv_engine::wal::Wal;

use super::clock::MemberClock;
use super::disk::SimDisk;
use crate::config::auto_compaction::AutoCompactionPolicy;
use crate::status::RESPONSE_BYTES_MAX;
use crate::store::bootstrap::{self, Start};
use crate::store::core::{request_timeout, MemberInfo, StoreCore, StoreSettings};
use crate::store::join::{self, Joined};
use crate::store::membership::Membership;
use crate::store::wal_io::WalJob;
use crate::store::{min_lease_ttl_seconds, RETRY_TICKS};

/// The cluster token the simulated members are made with.
const CLUSTER_TOKEN: &str = "sim";
/// etcd's `HealthInterval` scaled to the simulation's runs (a few seconds of
/// faults): how long a peer must have been connected before a membership
/// change counts it as active.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);

/// Timing and limits every simulated member runs with.
#[derive(Debug, Clone, Copy)]
pub struct MemberTiming {
    pub heartbeat_interval: Duration,
    pub election_ticks: usize,
    pub backend_batch_interval: Duration,
    pub backend_batch_limit: usize,
    /// `--snapshot-count`: small, so lagging members get snapshots.
    pub catch_up_entries: u64,
}

/// The initial cluster of `members` members, as `--initial-cluster` names them.
pub fn initial_cluster(members: usize) -> Vec<InitialMember> {
    (0..members)
        .map(|index| InitialMember {
            name: format!("m{index}"),
            peer_urls: vec![peer_url(index)],
        })
        .collect()
}

/// Member `index`'s peer URL: each member's slot has its own address.
pub fn peer_url(index: usize) -> String {
    format!("http://10.0.0.{}:2380", index + 1)
}

/// The member slot whose peer URL is `url`.
pub fn index_of_url(url: &str) -> Option<usize> {
    let host = url.strip_prefix("http://10.0.0.")?.strip_suffix(":2380")?;
    host.parse::<usize>().ok()?.checked_sub(1)
}

/// How a member starts.
pub enum Boot<'a> {
    /// A member of the initial cluster (`--initial-cluster-state new`), or
    /// a later start of any member (its identity is in its WAL then).
    Existing {
        cluster: &'a [InitialMember],
        /// The members to talk to until caught up, for one that joined.
        join_peers: Vec<(u64, Vec<String>)>,
    },
    /// A member added to the running cluster, started for the first time.
    Join(Joined),
}

/// A running member: its store core, its WAL, and its I/O not yet done.
pub struct Running {
    pub core: StoreCore,
    pub wal: Wal<SimDir>,
    /// WAL jobs handed over and not yet done, in order.
    pub wal_jobs: std::collections::VecDeque<WalJob>,
    /// The page-store commit handed over and not yet run.
    pub commit: Option<CommitPlan>,
}

pub struct Member {
    pub index: usize,
    pub id: u64,
    pub disk: SimDisk,
    /// Starts so far: events for an earlier start are dropped.
    pub incarnation: u64,
    pub running: Option<Running>,
    /// The machine's clocks: they outlive the process.
    pub clock: MemberClock,
    /// The process is paused until this virtual time (µs).
    pub paused_until_us: Option<u64>,
    /// The membership the member applied last (what it answers a joiner).
    pub membership: Option<Membership>,
    /// Removed from the cluster and stopped: never started again.
    pub removed: bool,
}

impl Member {
    pub fn new(index: usize, cluster: &[InitialMember], clock: MemberClock) -> Member {
        let membership = Membership::initial(cluster, CLUSTER_TOKEN);
        let id = ringkv_datadir::ids::member_id(&[peer_url(index)], CLUSTER_TOKEN);
        assert!(membership.contains(id));
        Member::with_id(index, id, clock)
    }

    /// A member to be added in slot `index`: its id comes from MemberAdd.
    pub fn added(index: usize, clock: MemberClock) -> Member {
        Member::with_id(index, 0, clock)
    }

    fn with_id(index: usize, id: u64, clock: MemberClock) -> Member {
        Member {
            index,
            id,
            disk: SimDisk::default(),
            incarnation: 0,
            running: None,
            clock,
            paused_until_us: None,
            membership: None,
            removed: false,
        }
    }

    /// Whether the member was started before (its WAL exists).
    pub fn has_started(&self) -> bool {
        use crate::store::bootstrap::MemberStorage;
        self.disk.wal_exists()
    }

    /// Opens the member from its disk (creating it on the first start), at
    /// `now` on the simulation's clock and `wall_clock` on the wall.
    pub async fn start(
        &mut self,
        boot: Boot<'_>,
        timing: MemberTiming,
        now: Instant,
        wall_clock: SystemTime,
    ) -> Result<(), String> {
        assert!(self.running.is_none(), "a member runs once");
        let (identity, membership, start, join_peers) = match boot {
            Boot::Existing { cluster, join_peers } => {
                let membership = Membership::initial(cluster, CLUSTER_TOKEN);
                let identity = Identity {
                    member_id: self.id,
                    cluster_id: membership.cluster_id(),
                };
                (identity, membership, Start::New, join_peers)
            }
            Boot::Join(joined) => {
                assert_eq!(joined.identity.member_id, self.id, "joins as the member added");
                (joined.identity, joined.initial_membership, Start::Join, joined.peers)
            }
        };
        let opened = bootstrap::open(&self.disk, identity, membership, start, timing.election_ticks)
            .await
            .map_err(|error| error.to_string())?;
        let election_timeout = timing.heartbeat_interval * timing.election_ticks as u32;
        let settings = StoreSettings {
            member_id: self.id,
            cluster_id: identity.cluster_id,
            max_request_bytes: 1536 * 1024,
            response_bytes_max: RESPONSE_BYTES_MAX,
            backend_batch_limit: timing.backend_batch_limit,
            backend_batch_interval: timing.backend_batch_interval,
            min_lease_ttl_seconds: min_lease_ttl_seconds(election_timeout),
            election_timeout,
            member: MemberInfo {
                name: format!("m{}", self.index),
                peer_urls: vec![peer_url(self.index)],
                client_urls: vec![format!("http://10.0.0.{}:2379", self.index + 1)],
            },
            quota_backend_bytes: None,
            auto_compaction: AutoCompactionPolicy::Off,
            request_timeout: request_timeout(election_timeout),
            catch_up_entries: timing.catch_up_entries,
            retry_ticks: RETRY_TICKS,
            health_interval: HEALTH_INTERVAL,
            join_peers,
            corrupt_check_interval: None,
            simple_token_ttl: Duration::from_secs(300),
        };
        let core = StoreCore::new(
            settings,
            opened.raw,
            opened.mvcc,
            opened.membership,
            Box::new(self.disk.clone()),
            1,
            now,
            wall_clock,
        );
        self.incarnation += 1;
        self.running = Some(Running {
            core,
            wal: opened.wal,
            wal_jobs: std::collections::VecDeque::new(),
            commit: None,
        });
        Ok(())
    }

    /// What this member, added in its slot, starts from: its place in
    /// `current` (a running member's applied membership), checked as a
    /// joiner checks it against `--initial-cluster`, here the members of
    /// `current` by their slots' names and URLs.
    pub fn joining(&self, current: &Membership) -> Result<Joined, String> {
        let cluster: Vec<InitialMember> = current
            .members()
            .map(|member| {
                let name = member.peer_urls.first().and_then(|url| index_of_url(url));
                InitialMember {
                    name: format!("m{}", name.expect("every member has a slot's URL")),
                    peer_urls: member.peer_urls.clone(),
                }
            })
            .collect();
        join::joined(current, &[peer_url(self.index)], &cluster)
    }

    /// A power cut: the process is gone, and the disk keeps, loses or tears
    /// each write it had not synced (`seed` chooses).
    pub fn crash(&mut self, seed: u64) {
        self.running = None;
        self.paused_until_us = None;
        self.disk.crash(seed);
    }
}

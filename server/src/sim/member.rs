//! One member in the simulation: its store core, opened over its simulated
//! disk with the same bootstrap a real start runs, and the WAL it writes.
//! The disk outlives the process: a crash drops the core and the WAL, and a
//! restart opens them again from what the disk kept.

use std::time::{Duration, Instant, SystemTime};

use ringkv_datadir::cluster::InitialMember;
use ringkv_datadir::wal::Identity;
use ringkv_engine::mvcc::CommitPlan;
use ringkv_engine::wal::sim::SimDir;
use ringkv_engine::wal::Wal;

use super::disk::SimDisk;
use crate::config::auto_compaction::AutoCompactionPolicy;
use crate::status::RESPONSE_BYTES_MAX;
use crate::store::bootstrap::{self, Start};
use crate::store::core::{request_timeout, MemberInfo, StoreCore, StoreSettings};
use crate::store::membership::Membership;
use crate::store::wal_io::WalJob;
use crate::store::{min_lease_ttl_seconds, RETRY_TICKS};

/// The cluster token the simulated members are made with.
const CLUSTER_TOKEN: &str = "sim";

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

fn peer_url(index: usize) -> String {
    format!("http://10.0.0.{}:2380", index + 1)
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
}

impl Member {
    pub fn new(index: usize, cluster: &[InitialMember]) -> Member {
        let membership = Membership::initial(cluster, CLUSTER_TOKEN);
        let id = ringkv_datadir::ids::member_id(&[peer_url(index)], CLUSTER_TOKEN);
        assert!(membership.contains(id));
        Member {
            index,
            id,
            disk: SimDisk::default(),
            incarnation: 0,
            running: None,
        }
    }

    /// Opens the member from its disk (creating it on the first start), at
    /// `now` on the simulation's clock and `wall_clock` on the wall.
    pub async fn start(
        &mut self,
        cluster: &[InitialMember],
        timing: MemberTiming,
        now: Instant,
        wall_clock: SystemTime,
    ) -> Result<(), String> {
        assert!(self.running.is_none(), "a member runs once");
        let membership = Membership::initial(cluster, CLUSTER_TOKEN);
        let identity = Identity {
            member_id: self.id,
            cluster_id: membership.cluster_id(),
        };
        let opened = bootstrap::open(&self.disk, identity, membership, Start::New, timing.election_ticks)
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
            join_peers: Vec::new(),
            corrupt_check_interval: None,
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

    /// A power cut: the process is gone, and the disk keeps, loses or tears
    /// each write it had not synced (`seed` chooses).
    pub fn crash(&mut self, seed: u64) {
        self.running = None;
        self.disk.crash(seed);
    }
}

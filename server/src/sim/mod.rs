//! A deterministic simulation of a ringkv cluster: the members' store cores
//! in one process on one thread, over the engine's simulated disks and a
//! simulated network, driven by one seeded scheduler. Message loss, delay,
//! duplication and reordering, partitions, crashes that tear unsynced writes,
//! restarts, process pauses, clocks that drift and jump, leases, membership
//! changes and snapshots; after every run the clients' history must be linearizable, the
//! members must hold the same data, and no lease may have expired earlier than
//! promised. A failing seed replays exactly (see docs/simulation.md).

mod clock;
mod cluster;
mod disk;
mod leases;
pub mod lincheck;
mod member;
mod network;
#[cfg(test)]
mod tests;
mod workload;

use std::collections::BTreeMap;
use std::time::Duration;

use self::cluster::Cluster;
pub use self::member::MemberTiming;
pub use self::network::NetworkFaults;

/// What one run does.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    pub members: usize,
    pub clients: usize,
    /// Virtual time with faults; then the network heals, every member is
    /// started again, and the cluster settles before the final checks.
    pub faults_duration: Duration,
    pub crashes: usize,
    pub partitions: usize,
    /// Process pauses (the member's clock jumps when it goes on).
    pub pauses: usize,
    /// Whether the clients use leases.
    pub leases: bool,
    /// Membership changes the operator makes, at most.
    pub member_changes: usize,
    pub network: NetworkFaults,
    pub timing: MemberTiming,
    /// Damage the final checks must catch.
    pub sabotage: Sabotage,
}

/// Deliberate damage, for the checks' own tests: a run with it must fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    None,
    /// When the faults end, every member loses its disk (acknowledged
    /// writes are gone).
    LoseEveryDisk,
    /// Before the final checks, one member's store takes a write raft never
    /// saw (members diverge).
    WriteBehindRaft,
    /// Every member, leading, expires leases half a second earlier than
    /// their TTL says.
    LeasesExpireEarly,
}

impl SimConfig {
    /// The CI slice's run: short, with every kind of fault.
    pub fn short(members: usize) -> SimConfig {
        SimConfig {
            members,
            clients: 3,
            faults_duration: Duration::from_secs(3),
            crashes: 1,
            partitions: 1,
            pauses: 1,
            leases: true,
            member_changes: 2,
            network: NetworkFaults {
                loss: 0.02,
                duplication: 0.02,
                delay_min_us: 50,
                delay_max_us: 5_000,
            },
            timing: MemberTiming {
                heartbeat_interval: Duration::from_millis(100),
                election_ticks: 10,
                backend_batch_interval: Duration::from_millis(100),
                backend_batch_limit: 10_000,
                catch_up_entries: 20,
            },
            sabotage: Sabotage::None,
        }
    }
}

/// What a run went through.
#[derive(Debug, Default)]
pub struct SimReport {
    pub steps: u64,
    pub virtual_time: Duration,
    pub starts: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub pauses: u64,
    pub snapshots_sent: u64,
    /// Leases that ended (revoked or expired).
    pub lease_ends: u64,
    /// Membership changes answered ok.
    pub member_changes: u64,
    /// Client operations with a known outcome.
    pub operations: u64,
    /// Client operations whose outcome the client could not know.
    pub unknown_outcomes: u64,
    /// A digest of the clients' history: equal for two runs of one seed.
    pub history_digest: u64,
    /// ReadIndex requests the members asked again after a wait, or whose
    /// answer came after that (members running at the end, since their start).
    pub slow_read_indexes: u64,
}

/// Why a run failed, and when (virtual time).
#[derive(Debug)]
pub struct SimFailure {
    pub at: Duration,
    pub why: String,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at {:?}: {}", self.at, self.why)
    }
}

/// Runs seed `seed` (on the calling thread's glommio executor: the WAL needs one).
pub async fn run(seed: u64, config: SimConfig) -> Result<SimReport, SimFailure> {
    Cluster::new(seed, config).run().await
}

/// Runs seeds `seeds` in one glommio executor on this thread; the failures by seed.
pub fn run_seeds(seeds: std::ops::Range<u64>, config: SimConfig) -> (BTreeMap<u64, SimFailure>, SimReport) {
    let executor = glommio::LocalExecutorBuilder::default()
        .make()
        .expect("a glommio executor (io_uring and locked memory)");
    executor.run(async move {
        let mut failures = BTreeMap::new();
        let mut total = SimReport::default();
        for seed in seeds {
            let _naming = SeedOnPanic(seed);
            match run(seed, config).await {
                Ok(report) => total.add(&report),
                Err(failure) => {
                    failures.insert(seed, failure);
                }
            }
        }
        (failures, total)
    })
}

/// Names its seed if a run panics (a panic in a store core fails the test).
struct SeedOnPanic(u64);

impl Drop for SeedOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let seed = self.0;
            eprintln!("seed {seed} panicked (replay: RINGKV_SIM_SEED={seed})");
        }
    }
}

impl SimReport {
    fn add(&mut self, other: &SimReport) {
        self.steps += other.steps;
        self.virtual_time += other.virtual_time;
        self.starts += other.starts;
        self.crashes += other.crashes;
        self.partitions += other.partitions;
        self.pauses += other.pauses;
        self.snapshots_sent += other.snapshots_sent;
        self.lease_ends += other.lease_ends;
        self.member_changes += other.member_changes;
        self.operations += other.operations;
        self.unknown_outcomes += other.unknown_outcomes;
        self.history_digest ^= other.history_digest;
        self.slow_read_indexes += other.slow_read_indexes;
    }
}

//! The simulation's CI slice and its own checks. `RINGKV_SIM_SEEDS` sets how
//! many seeds a slice runs (the long mode: millions), `RINGKV_SIM_SEED` runs
//! one seed alone (a failure's replay).

use std::time::Instant;

use super::*;

/// Seeds in CI: 10,000 in all, in about a minute on two cores.
const CI_SEEDS_THREE_MEMBERS: u64 = 7_000;
const CI_SEEDS_FIVE_MEMBERS: u64 = 3_000;

/// Failed seeds a slice names, at most.
const FAILED_SEEDS_LISTED_MAX: usize = 20;

fn seeds(ci_seeds: u64) -> std::ops::Range<u64> {
    if let Some(seed) = std::env::var("RINGKV_SIM_SEED").ok().and_then(|seed| seed.parse().ok()) {
        return seed..seed + 1;
    }
    let count = std::env::var("RINGKV_SIM_SEEDS")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(ci_seeds);
    0..count
}

fn slice(members: usize, ci_seeds: u64) {
    let seeds = seeds(ci_seeds);
    let started = Instant::now();
    let (failures, report) = run_seeds(seeds.clone(), SimConfig::short(members));
    eprintln!(
        "{members} members, seeds {seeds:?} in {:?}: {report:?}",
        started.elapsed()
    );
    if let Some((seed, failure)) = failures.iter().next() {
        let failed: Vec<&u64> = failures.keys().take(FAILED_SEEDS_LISTED_MAX).collect();
        panic!(
            "{} of {} seeds failed ({failed:?}); the first, seed {seed} (replay: RINGKV_SIM_SEED={seed}): {failure}",
            failures.len(),
            seeds.end - seeds.start
        );
    }
}

#[test]
fn three_members_stay_linearizable_and_converge_under_faults() {
    slice(3, CI_SEEDS_THREE_MEMBERS);
}

#[test]
fn five_members_stay_linearizable_and_converge_under_faults() {
    slice(5, CI_SEEDS_FIVE_MEMBERS);
}

/// How many of seeds `seeds` of `config` fail with `sabotage`.
fn caught(seeds: std::ops::Range<u64>, config: SimConfig, sabotage: Sabotage) -> usize {
    run_seeds(seeds, SimConfig { sabotage, ..config }).0.len()
}

#[test]
fn the_checks_catch_lost_acknowledged_writes() {
    // A seed whose history may end with every key absent (deleted, or its
    // last writes unknown) loses nothing a client can see: most do not.
    // Without leases (a key put with one is gone at the end anyway), pauses
    // (which leave fewer writes acknowledged) and membership changes (a
    // member added cannot join a cluster whose disks are all lost).
    let config = SimConfig {
        leases: false,
        pauses: 0,
        member_changes: 0,
        ..SimConfig::short(3)
    };
    assert!(caught(0..10, config, Sabotage::LoseEveryDisk) >= 7);
}

#[test]
fn the_checks_catch_leases_that_expire_early() {
    // Half a second early shows where a leader expires a lease it renewed
    // itself. Under network faults and a partition alone, most seeds have
    // such a lease; with crashes, pauses and membership changes as well,
    // about half do: in the others the faults left no leader for most of
    // the run, or a lease's last renewal came before a new leader took
    // over (which adds an election timeout to every lease).
    let network_only = SimConfig {
        crashes: 0,
        pauses: 0,
        member_changes: 0,
        ..SimConfig::short(3)
    };
    let caught_network_only = caught(0..20, network_only, Sabotage::LeasesExpireEarly);
    assert!(caught_network_only >= 16, "{caught_network_only} of 20");
    let caught_every_fault = caught(0..20, SimConfig::short(3), Sabotage::LeasesExpireEarly);
    assert!(caught_every_fault >= 8, "{caught_every_fault} of 20");
}

#[test]
fn the_checks_catch_members_that_diverge() {
    assert_eq!(caught(0..10, SimConfig::short(3), Sabotage::WriteBehindRaft), 10);
}

#[test]
fn a_seed_replays_exactly() {
    let config = SimConfig::short(3);
    let (first, second) = (run_seeds(7..8, config).1, run_seeds(7..8, config).1);
    assert_eq!(first.history_digest, second.history_digest);
    assert_eq!(first.steps, second.steps);
    assert!(first.operations > 0, "{first:?}");
}

#[test]
fn reads_on_every_member_are_not_asked_again_without_faults() {
    // Every member asks ReadIndex for its own clients' linearizable reads and
    // the leader holds several at once; without faults none is dropped, so
    // none waits to be asked again (raft-rs drops a request whose context the
    // leader already holds: two members' contexts must never be equal).
    let short = SimConfig::short(3);
    let config = SimConfig {
        clients: 9,
        crashes: 0,
        partitions: 0,
        pauses: 0,
        member_changes: 0,
        network: NetworkFaults {
            loss: 0.0,
            duplication: 0.0,
            ..short.network
        },
        ..short
    };
    let (failures, report) = run_seeds(0..20, config);
    assert!(failures.is_empty(), "{failures:?}");
    assert!(report.operations > 0, "{report:?}");
    assert_eq!(report.slow_read_indexes, 0, "{report:?}");
}

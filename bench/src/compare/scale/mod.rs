//! `compare --workloads scale`: ringkv and etcd holding --scale-keys keys of
//! 256 B, the product's scale targets: resident memory after the load
//! (ringkv <= 0.5x etcd), restart to the first served read (ringkv <= 0.5x
//! etcd) and put p99 during a physical compaction of N revisions (ringkv <= 2x
//! its own p99 without one).
//!
//! Each round gives a fresh ringkv, then a fresh etcd, an empty data dir and
//! runs every phase (`phases`) on it; the table (`table`) shows medians over
//! the rounds. Not a default row: a round at 1M keys takes minutes per server.

mod phases;
pub mod table;

use std::time::Duration;

use serde::Serialize;

use super::proc_status::Memory;
use super::rows::VAL_SIZE;
use super::server::ServerKind;
use super::Session;
use crate::report::Summary;
use crate::BenchError;
use phases::Plan;
use phases::{key_space, PACED_RATE_PER_SEC};

/// The row's name in --workloads.
pub const ROW: &str = "scale";
/// --scale-keys default: the product issue's 1M keys.
pub const KEYS_DEFAULT: u64 = 1_000_000;
/// --scale-phase default.
pub const PHASE_DEFAULT: &str = "10s";

/// Everything measured in one round on one server, for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleRun {
    pub keys: u64,
    /// One Put per key, in key order.
    pub load: Summary,
    pub memory_after_load: Memory,
    /// A second Put per key: N revisions superseded.
    pub overwrite: Summary,
    /// The paced load, with nothing else going on.
    pub quiet: Summary,
    /// The same paced load while the compaction runs.
    pub during_compaction: Summary,
    pub compaction: Compaction,
    pub restart: Restart,
}

impl ScaleRun {
    /// Failed requests of every phase, a failed compaction and a failed
    /// restart: a run with any is not a clean number.
    pub fn errors(&self) -> u64 {
        let requests: u64 = [&self.load, &self.overwrite, &self.quiet, &self.during_compaction]
            .iter()
            .map(|summary| summary.errors)
            .sum();
        requests + u64::from(self.compaction.error.is_some()) + u64::from(self.restart.error.is_some())
    }
}

/// The physical compaction of the overwritten revisions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Compaction {
    /// Compacted up to this revision: the store's revision after the overwrite.
    pub revision: i64,
    /// When it was sent, from the start of the paced load.
    pub started_after_sec: f64,
    /// From sending to the reply; None if it failed.
    pub duration_sec: Option<f64>,
    pub error: Option<String>,
}

/// Stopping the server and starting it again on the same data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Restart {
    /// It had not exited 30 s after SIGTERM and was killed.
    pub killed_after_sigterm: bool,
    /// From spawning the new process to the first serializable Range that
    /// returned key 0; None if it failed.
    pub first_read_sec: Option<f64>,
    pub error: Option<String>,
}

impl Restart {
    fn failed(killed_after_sigterm: bool, error: String) -> Restart {
        Restart {
            killed_after_sigterm,
            first_read_sec: None,
            error: Some(error),
        }
    }
}

/// One run, for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleRecord {
    pub round: usize,
    pub server: ServerKind,
    #[serde(flatten)]
    pub run: ScaleRun,
}

/// The scale row in `--json`: medians per server and every run.
#[derive(Debug, Serialize)]
pub struct ScaleJson<'a> {
    pub keys: u64,
    pub val_size: usize,
    pub phase_sec: f64,
    pub rate_per_sec: u64,
    pub ringkv: Option<table::ScaleMedians>,
    pub etcd: Option<table::ScaleMedians>,
    pub runs: &'a [ScaleRecord],
}

impl Session<'_> {
    /// Every round of the scale row; stops early once interrupted.
    pub(super) fn run_scale(&mut self) -> Vec<ScaleRecord> {
        self.each_own_table_run(ROW, Self::run_scale_once, table::one_line)
            .into_iter()
            .map(|(round, server, run)| ScaleRecord { round, server, run })
            .collect()
    }

    fn run_scale_once(&mut self, kind: ServerKind, round: usize, label: &str) -> Result<ScaleRun, BenchError> {
        assert!(kind != ServerKind::Ceiling, "compare::run refuses scale for ceiling");
        self.on_fresh_server(kind, ROW, round, label, |session, server| {
            let plan = Plan {
                keys: session.args.scale_keys,
                phase: session.args.scale_phase,
                request_timeout: session.global.request_timeout,
                start_timeout: session.args.start_timeout,
                progress: session.progress,
            };
            session.runtime.block_on(phases::measure(server, &plan, label))
        })
    }

    pub(super) fn scale_json<'a>(&self, records: &'a [ScaleRecord]) -> ScaleJson<'a> {
        ScaleJson {
            keys: self.args.scale_keys,
            val_size: VAL_SIZE,
            phase_sec: self.args.scale_phase.as_secs_f64(),
            rate_per_sec: PACED_RATE_PER_SEC,
            ringkv: table::ScaleMedians::of(records, ServerKind::Ringkv),
            etcd: table::ScaleMedians::of(records, ServerKind::Etcd),
            runs: records,
        }
    }
}

/// Checks the scale flags before any server starts.
pub fn check(keys: u64, phase: Duration) -> Result<(), BenchError> {
    key_space(keys)?;
    if phase.is_zero() {
        return Err(BenchError::Usage("--scale-phase must be more than 0".into()));
    }
    Ok(())
}

//! `ringkv-bench compare`: ringkv against etcd on this machine, same workload,
//! same disk, fsync on for both. `ringkv-bench ceiling`: ringkv against
//! `ringkv-ceiling`, a do-nothing KV endpoint on ringkv's own gRPC layer, to
//! show how close ringkv gets to what the transport and the client allow.
//!
//! For each row, for each round, a fresh ringkv and then a fresh baseline
//! server (A B A B ...) each get their own empty data dir under one root and
//! free 127.0.0.1 ports, serve one run, and are killed; no state carries from
//! one run to the next. The table shows each server's median over the rounds
//! and the ratio. The `scale` row (see `scale`) runs several phases on each
//! fresh server and has a table of its own, as has the `space` row (`space`).
//! With `--members N` each fresh server is a cluster of N members (see
//! `cluster`).

mod certs;
pub mod cluster;
mod machine;
pub mod plot;
mod proc_status;
pub mod rows;
pub mod scale;
mod server;
pub mod space;
pub mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tokio::runtime::Runtime;

use crate::cli::GlobalArgs;
use crate::progress::ProgressMode;
use crate::report::{fmt_latency, fmt_rate, Summary};
use crate::runner::{self, Stop};
use crate::sample::SampleMode;
use crate::{interrupt, BenchError};
use machine::Machine;
use rows::Row;
use server::{Server, ServerKind};
use table::{Measured, Medians, RowResult};

/// Length of each run unless --total or --duration says otherwise.
pub const RUN_DURATION_DEFAULT: Duration = Duration::from_secs(10);
/// ringkv's executors (glommio) each register a 10 MiB I/O buffer with io_uring,
/// which counts as locked memory unless the process has CAP_IPC_LOCK. Below this
/// RLIMIT_MEMLOCK the registration is skipped (glommio logs a warning) and ringkv
/// runs on unregistered buffers: slower, so the numbers would understate it.
pub const RINGKV_MEMLOCK_BYTES_MIN: u64 = 64 * 1024 * 1024;
/// Bit of CAP_IPC_LOCK in /proc/self/status's CapEff.
const CAP_IPC_LOCK_BIT: u32 = 14;

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Comma-separated rows: put, put-1 (1 client), range (= range-s,range-l),
    /// range-s, range-l, txn-put, txn-mixed, delete, lease-keepalive (1000
    /// clients over 100 conns), watch-latency, kube (100 clients over 10
    /// conns). 8 B keys and 256 B values where they apply (docs/benchmarks.md).
    ///
    /// `scale` (compare only, not a default; minutes per server at 1M keys):
    /// per server, --scale-keys Puts (the put row's shape), RSS 2 s later,
    /// the same Puts again, a put load paced at 2000/s over 10 conns for
    /// --scale-phase, the same load during a physical Compact of the
    /// overwritten revisions (sent 1 s in; the load runs at least
    /// --scale-phase and until 1 s after the reply, at most 2 min), then
    /// SIGTERM and a restart on the same data, timed to the first
    /// serializable read of key 0. Its own table; ignores --total,
    /// --duration, --rate, --conns and --clients.
    ///
    /// `space` (compare only, not a default): per server, 300,000 Puts over
    /// 100,000 random keys, then dbSize and dbSizeInUse (Status) after them
    /// and after a physical Compact and a Defragment. Its own table, the
    /// same flags ignored.
    #[arg(long, value_delimiter = ',', default_value = rows::DEFAULT_ROWS)]
    pub workloads: Vec<String>,
    /// Keys the scale row writes (8 B keys, 256 B values).
    #[arg(long, default_value_t = scale::KEYS_DEFAULT)]
    pub scale_keys: u64,
    /// Length of the scale row's paced put loads (the one during compaction
    /// runs at least this long).
    #[arg(long, default_value = scale::PHASE_DEFAULT, value_parser = humantime::parse_duration)]
    pub scale_phase: Duration,
    /// Rounds: each runs every row against a fresh ringkv, then a fresh etcd
    /// (`ceiling`: ringkv-ceiling).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Members per server (at most 7): with more than one, each run starts a
    /// fresh cluster of ringkv members, then of etcd members, on 127.0.0.1,
    /// each member with its own data dir and ports and the same etcd flags
    /// (--name, --initial-cluster, ...); a row starts once a linearizable
    /// read has succeeded through every member; the connections are spread
    /// round-robin over the members' client URLs; the server CPU is the sum
    /// over the members (`compare` only; not with `scale`).
    #[arg(long, default_value_t = 1)]
    pub members: usize,
    /// The ringkv binary [default: `ringkv` next to this executable, else on PATH].
    #[arg(long)]
    pub ringkv_bin: Option<PathBuf>,
    /// The etcd binary for `compare` (a path, or a name looked up on PATH).
    #[arg(long, default_value = "etcd")]
    pub etcd_bin: PathBuf,
    /// The ringkv-ceiling binary for `ceiling` [default: next to this
    /// executable, else on PATH].
    #[arg(long)]
    pub ceiling_bin: Option<PathBuf>,
    /// Where the runs' data dirs go (a new directory is made inside); put it on
    /// the disk to measure [default: a new temporary directory].
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Keep the data dirs and server logs afterwards.
    #[arg(long)]
    pub keep_data: bool,
    /// How long a server may take to start serving.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub start_timeout: Duration,
    /// Both servers serve clients over mutual TLS as kubeadm configures them
    /// (https, --cert-file, --key-file, --trusted-ca-file,
    /// --client-cert-auth), with a CA and certificates made at start; the
    /// load client presents a client certificate (`compare` only).
    #[arg(long)]
    pub tls: bool,
    /// Also draw FILE (SVG): per row, each server's throughput second by
    /// second and its latency by percentile, ringkv beside the baseline,
    /// from each server's median round. Not for the scale row.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// A binary and what its `--version` says.
#[derive(Debug, Clone, Serialize)]
struct Binary {
    path: PathBuf,
    version: String,
}

/// One run, for `--json`.
#[derive(Debug, Clone, Serialize)]
struct RunRecord {
    row: &'static str,
    round: usize,
    server: ServerKind,
    summary: Summary,
}

#[derive(Debug, Serialize)]
struct RowJson {
    workload: String,
    conns: usize,
    clients: usize,
    unit: &'static str,
    ringkv: Option<Medians>,
    /// The baseline's medians, under its name ("etcd" or "ringkv-ceiling").
    #[serde(flatten)]
    baseline: BTreeMap<&'static str, Option<Medians>>,
    ratio: Option<f64>,
    /// The baseline's server CPU per op over ringkv's (> 1: ringkv spends less).
    per_cpu_ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
struct CompareJson<'a> {
    machine: &'a Machine,
    ringkv: &'a Binary,
    /// The baseline's binary, under its name.
    #[serde(flatten)]
    baseline: BTreeMap<&'static str, &'a Binary>,
    rounds: usize,
    /// Members per server (`--members`).
    members: usize,
    rows: Vec<RowJson>,
    runs: &'a [RunRecord],
    /// With `--workloads scale`.
    scale: Option<scale::ScaleJson<'a>>,
    /// With `--workloads space`.
    space: Option<&'a [space::SpaceRecord]>,
    notes: &'a [String],
}

/// Everything one `compare` invocation needs while it runs.
struct Session<'a> {
    global: &'a GlobalArgs,
    args: &'a CompareArgs,
    runtime: &'a Runtime,
    progress: ProgressMode,
    ringkv: Binary,
    /// etcd for `compare`, ringkv-ceiling for `ceiling`.
    baseline_kind: ServerKind,
    baseline: Binary,
    root: DataRoot,
    /// With --tls: the certificates both servers serve and the client presents.
    tls: Option<certs::TlsFiles>,
    runs: Vec<RunRecord>,
    notes: Vec<String>,
}

/// What ringkv is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    Etcd,
    Ceiling,
}

pub fn run(global: &GlobalArgs, args: &CompareArgs, runtime: &Runtime, baseline: Baseline) -> Result<(), BenchError> {
    if args.rounds == 0 {
        return Err(BenchError::Usage("--rounds must be at least 1".into()));
    }
    if !(1..=cluster::MEMBERS_MAX).contains(&args.members) {
        return Err(BenchError::Usage(format!(
            "--members must be 1 to {}",
            cluster::MEMBERS_MAX
        )));
    }
    let wants_scale = args.workloads.iter().any(|name| name.trim() == scale::ROW);
    let wants_space = args.workloads.iter().any(|name| name.trim() == space::ROW);
    let others: Vec<String> = args
        .workloads
        .iter()
        .filter(|name| name.trim() != scale::ROW && name.trim() != space::ROW)
        .cloned()
        .collect();
    if wants_space && baseline == Baseline::Ceiling {
        return Err(BenchError::Usage(format!(
            "ceiling: the {} row measures what a server stores, and ringkv-ceiling stores nothing; \
             run it with compare --workloads {}",
            space::ROW,
            space::ROW
        )));
    }
    if wants_scale {
        if baseline == Baseline::Ceiling {
            return Err(BenchError::Usage(format!(
                "ceiling: the {} row measures what a server stores, and ringkv-ceiling stores nothing; \
                 run it with compare --workloads {}",
                scale::ROW,
                scale::ROW
            )));
        }
        scale::check(args.scale_keys, args.scale_phase)?;
        if args.members > 1 {
            return Err(BenchError::Usage(format!(
                "the {} row measures one member; run it without --members",
                scale::ROW
            )));
        }
    }
    if wants_space && args.members > 1 {
        return Err(BenchError::Usage(format!(
            "the {} row measures one member; run it without --members",
            space::ROW
        )));
    }
    if args.members > 1 && baseline == Baseline::Ceiling {
        return Err(BenchError::Usage(
            "ceiling: ringkv-ceiling is a single endpoint; --members is for compare".into(),
        ));
    }
    if args.tls && baseline == Baseline::Ceiling {
        return Err(BenchError::Usage(
            "ceiling: ringkv-ceiling serves plain text only; --tls is for compare".into(),
        ));
    }
    let rows = if (wants_scale || wants_space) && others.iter().all(|name| name.trim().is_empty()) {
        Vec::new()
    } else {
        rows::resolve(&others)?
    };
    if let Some(path) = &args.plot {
        if rows.is_empty() {
            return Err(BenchError::Usage(format!(
                "--plot draws the workload rows; the {} row has its own table",
                scale::ROW
            )));
        }
        plot::check_path(path)?;
    }
    let ringkv_path = match &args.ringkv_bin {
        Some(path) => locate(path)?,
        None => default_beside("ringkv")?,
    };
    let (baseline_kind, baseline_path) = match (baseline, &args.ceiling_bin) {
        (Baseline::Etcd, _) => (ServerKind::Etcd, locate(&args.etcd_bin)?),
        (Baseline::Ceiling, Some(path)) => (ServerKind::Ceiling, locate(path)?),
        (Baseline::Ceiling, None) => (ServerKind::Ceiling, default_beside("ringkv-ceiling")?),
    };
    let root = DataRoot::create(args.data_root.as_deref(), args.keep_data)?;
    let tls = args.tls.then(|| certs::TlsFiles::make(root.path())).transpose()?;
    let mut session = Session {
        global,
        args,
        runtime,
        progress: ProgressMode::detect(global.quiet),
        ringkv: Binary {
            version: version_of(&ringkv_path),
            path: ringkv_path,
        },
        baseline_kind,
        baseline: Binary {
            version: version_of(&baseline_path),
            path: baseline_path,
        },
        root,
        tls,
        runs: Vec::new(),
        notes: Vec::new(),
    };
    if let Some(warning) = raise_memlock() {
        session.notes.push(warning);
    }
    let machine = Machine::describe(session.root.path());
    if machine.data_disk.as_ref().is_some_and(|m| m.fs_type == "tmpfs") {
        session
            .notes
            .push("the data root is on tmpfs: fsync costs nothing there, so these are not disk numbers".into());
    }
    let header = session.header(&machine, &rows, wants_scale, wants_space);
    session.progress.note(&header);

    let results: Vec<RowResult> = rows.iter().map_while(|row| session.run_row(row)).collect();
    let scale_records = wants_scale.then(|| session.run_scale());
    let space_records = wants_space.then(|| session.run_space());
    if session.args.keep_data {
        session
            .progress
            .note(&format!("data dirs and logs kept in {}", session.root.path().display()));
    }
    session.print(
        &machine,
        &header,
        &results,
        scale_records.as_deref(),
        space_records.as_deref(),
    )?;
    if let Some(path) = &args.plot {
        session.plot(path, &results)?;
    }
    Ok(())
}

impl Session<'_> {
    fn header(&self, machine: &Machine, rows: &[Row], scale: bool, space: bool) -> String {
        let mut names: Vec<&str> = rows.iter().map(|r| r.name).collect();
        let runs = rows.len() * self.args.rounds * 2;
        let each = match (self.global.total, self.global.duration) {
            (Some(total), _) => format!("{total} requests"),
            (None, duration) => humantime::format_duration(duration.unwrap_or(RUN_DURATION_DEFAULT)).to_string(),
        };
        let mut runs_text = vec![];
        if runs > 0 {
            runs_text.push(format!("{runs} runs of {each} each"));
        }
        if scale {
            names.push(scale::ROW);
            runs_text.push(format!(
                "{} scale runs of {} keys",
                self.args.rounds * 2,
                crate::report::fmt_count(self.args.scale_keys)
            ));
        }
        if space {
            names.push(space::ROW);
            runs_text.push(format!("{} space runs", self.args.rounds * 2));
        }
        let (command, durability) = match self.baseline_kind {
            ServerKind::Ceiling => ("ceiling", "ringkv always; ringkv-ceiling stores nothing"),
            _ => ("compare", "etcd default; ringkv always"),
        };
        let transport = match self.tls {
            Some(_) => "clients over mutual TLS (https, --client-cert-auth; certificates made at start)",
            None => "clients in plain text",
        };
        format!(
            "ringkv-bench {command}: {} rounds of {} ({}, plus server starts and untimed setup)\n\
             machine: {}\nringkv: {} ({})\n{}: {} ({})\n\
             each run: {}, fsync on ({durability}), {transport}",
            self.args.rounds,
            names.join(", "),
            runs_text.join("; "),
            machine.text(),
            self.ringkv.path.display(),
            self.ringkv.version,
            self.baseline_kind.name(),
            self.baseline.path.display(),
            self.baseline.version,
            cluster::describe(self.args.members),
        )
    }

    /// Every round of one row; None once interrupted.
    fn run_row(&mut self, row: &Row) -> Option<RowResult> {
        let clients = self.global.clients.unwrap_or(row.clients);
        let mut result = RowResult {
            name: row.name.to_string(),
            conns: self.global.conns.unwrap_or(row.conns.min(clients)),
            clients,
            unit: "ops/sec",
            ringkv: Vec::new(),
            baseline: Vec::new(),
        };
        for round in 1..=self.args.rounds {
            for kind in [ServerKind::Ringkv, self.baseline_kind] {
                if interrupt::requested() {
                    return None;
                }
                let label = format!("{} round {round}/{} {}", row.name, self.args.rounds, kind.name());
                match self.run_once(kind, row, round, &label) {
                    Ok(summary) => {
                        self.progress.note(&format!("{label}: {}", one_line(&summary)));
                        result.unit = summary.headline().unit;
                        let measured = Measured::of(&summary);
                        match kind {
                            ServerKind::Ringkv => result.ringkv.push(measured),
                            _ => result.baseline.push(measured),
                        }
                        self.runs.push(RunRecord {
                            row: row.name,
                            round,
                            server: kind,
                            summary,
                        });
                    }
                    Err(error) => {
                        self.progress.note(&format!("{label}: failed: {error}"));
                        self.notes.push(format!("{label}: failed: {error}"));
                    }
                }
            }
        }
        Some(result)
    }

    /// One run against a fresh server (a fresh cluster with --members).
    fn run_once(&mut self, kind: ServerKind, row: &Row, round: usize, label: &str) -> Result<Summary, BenchError> {
        self.on_fresh_cluster(kind, row.name, round, label, |session, cluster| {
            let mut options = session.global.run_options(
                row.conns,
                row.clients,
                Stop::Duration(RUN_DURATION_DEFAULT),
                label.to_string(),
            )?;
            options.endpoints = cluster.endpoints();
            options.tls = cluster.client_tls().cloned();
            options.server_pids = cluster.pids();
            if session.args.plot.is_some() {
                options.samples = options.samples.max(SampleMode::Record);
            }
            session
                .runtime
                .block_on(runner::run(row.spec.build(options.request_timeout)?, &options))
        })
    }

    /// Every round of a row with a table of its own (`scale`, `space`): per
    /// round ringkv, then etcd, each measured by `measure` (given the kind,
    /// the round and the progress label) and said in one progress line by
    /// `line`. A failed run is noted and left out; stops early once interrupted.
    fn each_own_table_run<T>(
        &mut self,
        row: &str,
        mut measure: impl FnMut(&mut Self, ServerKind, usize, &str) -> Result<T, BenchError>,
        line: impl Fn(&T) -> String,
    ) -> Vec<(usize, ServerKind, T)> {
        let mut runs = Vec::new();
        for round in 1..=self.args.rounds {
            for kind in [ServerKind::Ringkv, ServerKind::Etcd] {
                if interrupt::requested() {
                    return runs;
                }
                let label = format!("{row} round {round}/{} {}", self.args.rounds, kind.name());
                match measure(self, kind, round, &label) {
                    Ok(run) => {
                        self.progress.note(&format!("{label}: {}", line(&run)));
                        runs.push((round, kind, run));
                    }
                    Err(error) => {
                        self.progress.note(&format!("{label}: failed: {error}"));
                        self.notes.push(format!("{label}: failed: {error}"));
                    }
                }
            }
        }
        runs
    }

    /// Starts a fresh `kind` server on an empty data dir of its own
    /// (`<name>-<round>-<kind>`), waits until it serves, runs `run` against
    /// it, then stops it (noting if it had exited on its own) and removes the
    /// data dir unless kept.
    fn on_fresh_server<T>(
        &mut self,
        kind: ServerKind,
        name: &str,
        round: usize,
        label: &str,
        run: impl FnOnce(&Self, &mut Server) -> Result<T, BenchError>,
    ) -> Result<T, BenchError> {
        let bin = match kind {
            ServerKind::Ringkv => self.ringkv.path.clone(),
            _ => self.baseline.path.clone(),
        };
        let run_dir = self.root.run_dir(&format!("{name}-{round}-{}", kind.name()))?;
        let mut server = Server::spawn(kind, &bin, &run_dir, self.tls.as_ref())?;
        let ready_after = self.runtime.block_on(server.wait_ready(self.args.start_timeout))?;
        self.progress.note(&format!(
            "{label}: serving on {} after {} ms",
            server.endpoint(),
            ready_after.as_millis()
        ));
        let result = run(self, &mut server);
        let tail = server.log_tail();
        if let Some(status) = server.stop() {
            self.notes.push(format!(
                "{label}: {} exited during the run ({status}); {tail}",
                kind.name()
            ));
        }
        if !self.args.keep_data {
            let _ = std::fs::remove_dir_all(&run_dir);
        }
        result
    }

    /// Draws `--plot`'s picture of `results`.
    fn plot(&self, path: &Path, results: &[RowResult]) -> Result<(), BenchError> {
        let servers = [ServerKind::Ringkv, self.baseline_kind];
        let rows = plot::plot_rows(results, &self.runs, servers, self.args.rounds);
        let title = format!(
            "ringkv-bench: ringkv vs {} ({}); each line is the server's median round by throughput",
            self.baseline_kind.name(),
            self.baseline.version
        );
        plot::write(path, &title, &rows)?;
        self.progress.note(&format!("plot written to {}", path.display()));
        Ok(())
    }

    fn print(
        &self,
        machine: &Machine,
        header: &str,
        results: &[RowResult],
        scale_records: Option<&[scale::ScaleRecord]>,
        space_records: Option<&[space::SpaceRecord]>,
    ) -> Result<(), BenchError> {
        if self.global.json {
            let rows = results
                .iter()
                .map(|row| RowJson {
                    workload: row.name.clone(),
                    conns: row.conns,
                    clients: row.clients,
                    unit: row.unit,
                    ringkv: row.ringkv_medians(),
                    baseline: BTreeMap::from([(self.baseline_kind.name(), row.baseline_medians())]),
                    ratio: row.ratio(),
                    per_cpu_ratio: row.per_cpu_ratio(),
                })
                .collect();
            let report = CompareJson {
                machine,
                ringkv: &self.ringkv,
                baseline: BTreeMap::from([(self.baseline_kind.name(), &self.baseline)]),
                rounds: self.args.rounds,
                members: self.args.members,
                rows,
                runs: &self.runs,
                scale: scale_records.map(|records| self.scale_json(records)),
                space: space_records,
                notes: &self.notes,
            };
            let json = serde_json::to_string(&report).map_err(|e| BenchError::Internal(e.to_string()))?;
            println!("{json}");
            return Ok(());
        }
        println!("{header}\n");
        let baseline = self.baseline_kind.name();
        if !results.is_empty() {
            print!("{}", table::render(results, self.args.rounds, baseline));
            println!(
                "\nthroughput, latency and CPU are medians over the rounds; ratio = ringkv / {baseline} throughput.\n\
                 latency of kube: its writes'; of watch-latency: from Put to event.\n\
                 server CPU: user + system time of the server's processes (all members) over the timed run, \
                 per 1,000 of the row's unit;\n\
                 its ratio is {baseline}'s over ringkv's: above 1, ringkv spends less CPU per op.\n\
                 throughput of each run, in round order:"
            );
            print!("{}", table::render_rounds(results, baseline));
        }
        if let Some(records) = scale_records {
            if !results.is_empty() {
                println!();
            }
            print!(
                "{}",
                scale::table::render(records, self.args.scale_keys, self.args.rounds)
            );
            println!(
                "\neach cell is that metric's median over the runs (anon and file too, so they need not add up \
                 to the RSS); put latency runs from each op's intended send time.\neach run, in round order:"
            );
            print!("{}", scale::table::render_rounds(records));
        }
        if let Some(records) = space_records {
            if !results.is_empty() || scale_records.is_some() {
                println!();
            }
            print!("{}", space::render(records));
            println!("\neach cell is that measure's median over the rounds.");
        }
        if interrupt::requested() {
            println!("\ninterrupted: the table shows the runs that finished");
        }
        for note in &self.notes {
            println!("\nnote: {note}");
        }
        Ok(())
    }
}

/// `12,345 writes/sec, p50 1.20 ms, p99 4.50 ms, 0 errors`
fn one_line(summary: &Summary) -> String {
    let headline = summary.headline();
    let latency = headline
        .latency_ms
        .as_ref()
        .map_or("no latency".to_string(), fmt_latency);
    let watch = summary.watch.as_ref().map_or(String::new(), |watch| {
        format!(
            ", {} watch errors, {} watch problems",
            watch.errors,
            watch.problems.values().sum::<u64>()
        )
    });
    format!(
        "{} {}, latency ms {latency}, {} errors{watch}",
        fmt_rate(headline.per_sec),
        headline.unit,
        summary.errors
    )
}

/// The directory holding every run's data dir: removed at the end unless kept.
struct DataRoot {
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl DataRoot {
    fn create(parent: Option<&Path>, keep: bool) -> Result<DataRoot, BenchError> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("ringkv-bench-");
        let temp = match parent {
            Some(parent) => {
                std::fs::create_dir_all(parent)
                    .map_err(|e| BenchError::Usage(format!("--data-root {}: {e}", parent.display())))?;
                builder.tempdir_in(parent)
            }
            None => builder.tempdir(),
        }
        .map_err(|e| BenchError::Usage(format!("cannot make a data root: {e}")))?;
        Ok(if keep {
            DataRoot {
                path: temp.keep(),
                _temp: None,
            }
        } else {
            DataRoot {
                path: temp.path().to_path_buf(),
                _temp: Some(temp),
            }
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// A new empty directory for one run.
    fn run_dir(&self, name: &str) -> Result<PathBuf, BenchError> {
        let dir = self.path.join(name);
        std::fs::create_dir(&dir).map_err(|e| BenchError::Server(format!("creating {}: {e}", dir.display())))?;
        Ok(dir)
    }
}

/// `name` (ringkv, ringkv-ceiling) next to this executable (cargo puts them
/// all in target/release), else on PATH.
fn default_beside(name: &str) -> Result<PathBuf, BenchError> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .filter(|path| path.is_file());
    beside
        .or_else(|| find_on_path(name, &std::env::var_os("PATH").unwrap_or_default()))
        .ok_or_else(|| {
            BenchError::Usage(format!(
                "no {name} next to ringkv-bench or on PATH: build it (cargo build --release) or pass --{name}-bin"
            ))
        })
}

/// `path` itself if it names a file by path, else the name looked up on PATH.
fn locate(path: &Path) -> Result<PathBuf, BenchError> {
    let found = if path.components().count() > 1 || path.is_absolute() {
        path.is_file().then(|| path.to_path_buf())
    } else {
        find_on_path(&path.to_string_lossy(), &std::env::var_os("PATH").unwrap_or_default())
    };
    found.ok_or_else(|| {
        BenchError::Usage(format!(
            "{} not found (Debian: apt-get install etcd-server for etcd)",
            path.display()
        ))
    })
}

fn find_on_path(name: &str, path_var: &std::ffi::OsStr) -> Option<PathBuf> {
    std::env::split_paths(path_var)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The first line `bin --version` prints.
fn version_of(bin: &Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()
        .and_then(|output| {
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.lines().next().map(|line| line.trim().to_string())
        })
        .unwrap_or_else(|| "version unknown".to_string())
}

/// Raises this process's RLIMIT_MEMLOCK (the servers inherit it) as far as
/// allowed; returns a warning if it stays below what ringkv needs and the
/// servers do not have CAP_IPC_LOCK (which lifts the limit).
fn raise_memlock() -> Option<String> {
    if has_ipc_lock_capability() {
        return None;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) != 0 {
            return Some("cannot read RLIMIT_MEMLOCK".into());
        }
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) == 0 {
            return None;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit);
    }
    (limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < RINGKV_MEMLOCK_BYTES_MIN).then(|| {
        format!(
            "RLIMIT_MEMLOCK is {} KiB and cannot be raised; ringkv wants 64 MiB (ulimit -l 65536) to register its I/O buffers",
            limit.rlim_cur / 1024
        )
    })
}

/// Whether this process (and so the servers it starts) has CAP_IPC_LOCK.
fn has_ipc_lock_capability() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| capability_set(&status, "CapEff:"))
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK_BIT) != 0)
}

/// A capability set (hex) from a /proc/<pid>/status text.
fn capability_set(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(field))?;
    u64::from_str_radix(line[field.len()..].trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets_are_read_from_proc_status() {
        let status = "Name:\tbench\nCapPrm:\t000001fffeffffff\nCapEff:\t0000000000004000\n";
        assert_eq!(capability_set(status, "CapEff:"), Some(1 << CAP_IPC_LOCK_BIT));
        assert_eq!(capability_set(status, "CapPrm:"), Some(0x1fffeffffff));
        assert_eq!(capability_set(status, "CapBnd:"), None);
    }

    #[test]
    fn names_are_looked_up_on_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("etcd"), "").unwrap();
        let path_var = std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(find_on_path("etcd", &path_var), Some(dir.path().join("etcd")));
        assert_eq!(find_on_path("ringkv", &path_var), None);
    }

    #[test]
    fn run_dirs_are_fresh_and_the_root_goes_away() {
        let parent = tempfile::tempdir().unwrap();
        let root_path;
        {
            let root = DataRoot::create(Some(parent.path()), false).unwrap();
            root_path = root.path().to_path_buf();
            let dir = root.run_dir("put-1-ringkv").unwrap();
            assert!(dir.is_dir() && std::fs::read_dir(&dir).unwrap().next().is_none());
            assert!(root.run_dir("put-1-ringkv").is_err(), "a run never reuses a directory");
        }
        assert!(!root_path.exists());
    }
}

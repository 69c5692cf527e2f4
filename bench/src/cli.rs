//! Command-line flags: global flags, then a workload or `compare`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::compare::CompareArgs;
use crate::connect::{normalize_endpoint, Tls};
use crate::progress::ProgressMode;
use crate::runner::{RunOptions, Stop};
use crate::sample::SampleMode;
use crate::workload::WorkloadSpec;
use crate::BenchError;

/// etcd's benchmark default for --total.
pub const TOTAL_DEFAULT: u64 = 10_000;

const ABOUT: &str = "Benchmark an etcd v3 endpoint (ringkv or etcd): throughput and latency";

const LONG_ABOUT: &str = "\
Benchmark an etcd v3 endpoint (ringkv or etcd): throughput and latency.

Runs one workload against --endpoints and reports ops (or writes) per second,
latency percentiles p50/p90/p99/p99.9/max and errors by gRPC code, or with
`compare` starts a fresh ringkv and a fresh etcd and prints them side by side.
Flags follow etcd's tools/benchmark where it has them. TLS: https:// endpoints
(or any endpoint, once --cacert is given) with --cacert, and --cert/--key for a
client certificate.";

const AFTER_HELP: &str = "\
Examples:
  ringkv-bench --conns 100 --clients 1000 put --key-size 8 --val-size 256 --sequential-keys --total 100000
  ringkv-bench --clients 100 --duration 30s range --consistency s
  ringkv-bench --clients 100 --rate 5000 --duration 1m txn-put
  ringkv-bench --conns 10 --clients 100 --duration 10s watch-latency --watchers 100
  ringkv-bench --conns 10 --clients 100 --duration 10s lease-keepalive --leases 1000
  ringkv-bench --conns 10 --clients 100 --duration 10s kube --key-space-size 10000
  ringkv-bench --sample --clients 100 --duration 30s put
  ringkv-bench compare --workloads put,range --rounds 3 --duration 10s
  ringkv-bench compare --members 3 --workloads put,kube --rounds 3
  ringkv-bench compare --workloads put,put-1 --rounds 3 --plot compare.svg
  ringkv-bench ceiling --workloads put --rounds 3 --duration 10s";

#[derive(Debug, Parser)]
#[command(name = "ringkv-bench", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Workload(WorkloadSpec),
    /// ringkv vs etcd: fresh servers on this machine, same workloads, a table.
    ///
    /// For each row and round, starts a fresh ringkv and then a fresh etcd, each
    /// on its own empty data dir (fsync on) and free 127.0.0.1 ports, runs the
    /// row's workload against it and stops it (with --members 3, a fresh
    /// cluster of three members each); prints each server's medians over the
    /// rounds (throughput, latency, server CPU per 1,000 ops) and the ratios.
    /// Each run lasts --duration (default 10s) or --total requests.
    Compare(CompareArgs),
    /// ringkv vs ringkv-ceiling (a do-nothing KV endpoint on ringkv's own gRPC
    /// layer): how close ringkv gets to what the transport and client allow.
    ///
    /// Runs as `compare` does, with ringkv-ceiling in etcd's place: it decodes
    /// each KV request and answers it (once the connection has read what came
    /// with it, as ringkv's answers do), storing nothing, on the CPUs ringkv's
    /// client cores use. Only KV rows make sense (put, put-1, range-s,
    /// range-l, txn-put, txn-mixed, delete); other calls answer UNIMPLEMENTED.
    Ceiling(CompareArgs),
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options (before or after the workload)")]
pub struct GlobalArgs {
    /// Comma-separated etcd v3 endpoints; without a scheme, `http://` (or
    /// `https://` with --cacert).
    /// Connections are spread over them round-robin. `compare` ignores this.
    #[arg(long, global = true, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// gRPC (HTTP/2) connections [default: 1; compare: per workload].
    #[arg(long, global = true)]
    pub conns: Option<usize>,
    /// Concurrent request loops, spread over the connections round-robin
    /// [default: 1; compare: per workload]. Each connection and the loops on
    /// it share one client thread (one thread per CPU at most; a lone loop's
    /// calls are latency-bound and never leave its thread).
    #[arg(long, global = true)]
    pub clients: Option<usize>,
    /// Stop after this many requests [default: 10000 unless --duration;
    /// compare: --duration 10s].
    #[arg(long, global = true, conflicts_with = "duration")]
    pub total: Option<u64>,
    /// Stop after this long, e.g. 30s or 2m.
    #[arg(long, global = true, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Requests per second across all clients; 0 = no limit. With a limit,
    /// a request sent late because its client was still busy is measured from
    /// its intended send time (coordinated omission corrected); one whose
    /// client was idle, from its actual send (the timer's millisecond is not
    /// the server's).
    #[arg(long, global = true, default_value_t = 0)]
    pub rate: u64,
    /// A request not answered within this fails with DeadlineExceeded.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Print one JSON object at the end instead of the text report.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress output on stderr.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// One line per second on stderr while a run goes, in place of the
    /// progress line (also with --quiet): the requests completed in that
    /// second, their rate, p50/p99/max latency, the writes' count, p99 and max
    /// where a workload tells writes apart (kube), and errors. --json adds the
    /// samples to each run's report. Not for compare's scale row.
    #[arg(long, global = true)]
    pub sample: bool,
    /// PEM file of the CA that signed the servers' certificates: TLS on.
    #[arg(long, global = true)]
    pub cacert: Option<PathBuf>,
    /// PEM client certificate (with --key), for servers that check clients.
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    /// PEM key of --cert.
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// Process ids of the server's members, comma-separated, when they run on
    /// this machine: the report adds the CPU they used together and the work
    /// per server CPU-second (`compare` measures its own servers and ignores
    /// this).
    #[arg(long = "server-pid", value_name = "PID", global = true, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
}

impl GlobalArgs {
    /// Run options for one workload, with `conns`/`clients` used where the flags
    /// are not given and `duration` where neither --total nor --duration is.
    pub fn run_options(
        &self,
        conns: usize,
        clients: usize,
        default_stop: Stop,
        label: String,
    ) -> Result<RunOptions, BenchError> {
        let tls = match &self.cacert {
            Some(cacert) => Some(Tls::load(cacert, self.cert.as_deref(), self.key.as_deref())?),
            None if self.cert.is_some() || self.key.is_some() => {
                return Err(BenchError::Usage("--cert and --key need --cacert".into()));
            }
            None => None,
        };
        let endpoints = self
            .endpoints
            .iter()
            .map(|endpoint| normalize_endpoint(endpoint, tls.is_some()))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(BenchError::Usage("--endpoints names no endpoint".into()));
        }
        let clients = self.clients.unwrap_or(clients);
        let conns = self.conns.unwrap_or(conns.min(clients));
        if conns == 0 || clients == 0 {
            return Err(BenchError::Usage("--conns and --clients must be at least 1".into()));
        }
        if conns > clients {
            return Err(BenchError::Usage(format!(
                "--conns {conns} is more than --clients {clients}: the extra connections would carry nothing"
            )));
        }
        let stop = match (self.total, self.duration) {
            (Some(total), _) => Stop::Total(total),
            (None, Some(duration)) => Stop::Duration(duration),
            (None, None) => default_stop,
        };
        Ok(RunOptions {
            endpoints,
            tls,
            conns,
            clients,
            stop,
            rate_per_sec: (self.rate > 0).then_some(self.rate),
            request_timeout: self.request_timeout,
            progress: ProgressMode::detect(self.quiet),
            label,
            cancel: None,
            server_pids: self.server_pids.clone(),
            samples: if self.sample {
                SampleMode::Print
            } else {
                SampleMode::Off
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("ringkv-bench").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_or_after_the_workload() {
        let before = parse(&["--clients", "10", "--conns", "2", "put", "--val-size", "256"]);
        let after = parse(&["put", "--val-size", "256", "--clients", "10", "--conns", "2"]);
        for cli in [before, after] {
            assert_eq!(cli.global.clients, Some(10));
            assert_eq!(cli.global.conns, Some(2));
            match cli.command {
                Command::Workload(WorkloadSpec::Put(args)) => assert_eq!(args.val_size, 256),
                other => panic!("parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn defaults_follow_etcds_benchmark() {
        let cli = parse(&["put"]);
        let options = cli
            .global
            .run_options(1, 1, Stop::Total(TOTAL_DEFAULT), "put".into())
            .unwrap();
        assert_eq!(options.endpoints, vec!["http://127.0.0.1:2379".to_string()]);
        assert_eq!((options.conns, options.clients), (1, 1));
        assert_eq!(options.stop, Stop::Total(10_000));
        assert_eq!(options.rate_per_sec, None);
    }

    #[test]
    fn duration_and_rate_are_parsed() {
        let cli = parse(&["--duration", "1m30s", "--rate", "500", "txn-put"]);
        let options = cli
            .global
            .run_options(1, 1, Stop::Total(TOTAL_DEFAULT), "x".into())
            .unwrap();
        assert_eq!(options.stop, Stop::Duration(Duration::from_secs(90)));
        assert_eq!(options.rate_per_sec, Some(500));
    }

    #[test]
    fn total_and_duration_exclude_each_other() {
        let both = ["ringkv-bench", "--total", "5", "--duration", "5s", "put"];
        assert!(Cli::try_parse_from(both).is_err());
    }

    #[test]
    fn more_connections_than_clients_is_refused() {
        let cli = parse(&["--conns", "4", "--clients", "2", "put"]);
        assert!(cli.global.run_options(1, 1, Stop::Total(1), "x".into()).is_err());
    }

    #[test]
    fn range_consistency_is_l_or_s() {
        let cli = parse(&["range", "--consistency", "s", "--prefix", "0000", "--limit", "10"]);
        match cli.command {
            Command::Workload(WorkloadSpec::Range(args)) => {
                assert!(args.consistency.serializable());
                assert_eq!(args.prefix.as_deref(), Some("0000"));
                assert_eq!(args.limit, 10);
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(Cli::try_parse_from(["ringkv-bench", "range", "--consistency", "x"]).is_err());
    }

    #[test]
    fn workload_names_match_etcds_benchmark() {
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        for name in [
            "put",
            "range",
            "txn-put",
            "txn-mixed",
            "delete",
            "watch-latency",
            "lease-keepalive",
            "kube",
            "compare",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
        }
    }
}

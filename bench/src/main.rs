//! The `ringkv-bench` binary: parse flags, run a workload or `compare`, print.

use std::process::ExitCode;

use clap::Parser;
use ringkv_bench::cli::{Cli, Command, GlobalArgs, TOTAL_DEFAULT};
use ringkv_bench::runner::{self, Stop};
use ringkv_bench::workload::WorkloadSpec;
use ringkv_bench::{compare, interrupt, BenchError};

/// mimalloc, as ringkv runs with: the load generator shares the machine with
/// the server it measures, and under the kube mix glibc's malloc and free were
/// a fifth of its CPU (list pages are decoded on one runtime thread and freed
/// on another).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ringkv-bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    interrupt::install(&runtime);
    let result = match &cli.command {
        Command::Workload(spec) => run_workload(&cli.global, spec, &runtime),
        Command::Compare(args) => compare::run(&cli.global, args, &runtime, compare::Baseline::Etcd),
        Command::Ceiling(args) => compare::run(&cli.global, args, &runtime, compare::Baseline::Ceiling),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ringkv-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run_workload(global: &GlobalArgs, spec: &WorkloadSpec, runtime: &tokio::runtime::Runtime) -> Result<(), BenchError> {
    let workload = spec.build(global.request_timeout)?;
    let options = global.run_options(1, 1, Stop::Total(TOTAL_DEFAULT), workload.name().to_string())?;
    let summary = runtime.block_on(runner::run(workload, &options))?;
    if global.json {
        let json = serde_json::to_string(&summary).map_err(|e| BenchError::Internal(e.to_string()))?;
        println!("{json}");
    } else {
        print!("{}", summary.text());
    }
    Ok(())
}

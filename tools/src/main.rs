//! `ringkvutl`: offline tools for ringkv's data, in the spirit of etcdutl. They
//! work on files, never on a running server: stop the member first.
//!
//! - `snapshot status FILE`: checks a snapshot file (sha256 trailer, every page of
//!   the tree) and says what it holds.
//! - `snapshot restore FILE --data-dir DIR`: a new data directory from a snapshot
//!   file, for a member of a new cluster holding the data (`--initial-cluster`;
//!   this member alone by default). The file is etcd's format (from etcd or from
//!   ringkv: imported with every revision, its compaction, leases and alarms) or
//!   ringkv's page file, told apart by content; or a stopped etcd member's data
//!   directory, when its db holds every write its WAL committed.
//! - `check --data-dir DIR`: checks a stopped member's page store whole.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ringkv_datadir::layout::{self, STORE_FILE};
use ringkv_datadir::restore::{self, SnapshotSummary};
use ringkv_engine::btree::Tree;

#[derive(Parser)]
#[command(
    name = "ringkvutl",
    version,
    about = "Offline tools for ringkv data (stop the member first)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Snapshot files, as `etcdctl snapshot save` writes them from etcd or ringkv
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Check a stopped member's page store (`<data-dir>/store.db`): every page's
    /// checksum, the tree's order and shape, and that every page is accounted for
    Check {
        /// The member's data directory
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Check a snapshot file and print what it holds
    Status {
        file: PathBuf,
        /// Do not check the sha256 trailer (for a copy without one)
        #[arg(long)]
        skip_hash_check: bool,
    },
    /// Make a new data directory from a snapshot file (etcd's, from etcd or
    /// ringkv, or a ringkv page file) or a stopped etcd member's data directory. The member started on it forms a new
    /// cluster holding the data (every revision, the compaction, leases and
    /// alarms as they were); its id comes from the flags below, as for `ringkv`
    Restore(RestoreArgs),
}

#[derive(Args)]
struct RestoreArgs {
    file: PathBuf,
    /// The data directory to create (it must not exist) [default: <name>.ringkv]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The member's name, as `ringkv --name`
    #[arg(long, default_value = "default")]
    name: String,
    /// The member's peer URLs, as `ringkv --initial-advertise-peer-urls`
    #[arg(long, default_value = "http://localhost:2380", value_delimiter = ',')]
    initial_advertise_peer_urls: Vec<String>,
    /// As `ringkv --initial-cluster-token`
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// The new cluster, as `ringkv --initial-cluster` (name=peer-URL pairs);
    /// restore each member from the same snapshot with its own --name and
    /// --initial-advertise-peer-urls [default: <name>=<initial-advertise-peer-urls>]
    #[arg(long)]
    initial_cluster: Option<String>,
    /// Do not check the sha256 trailer (for a copy without one)
    #[arg(long)]
    skip_hash_check: bool,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Snapshot(SnapshotCommand::Status { file, skip_hash_check }) => snapshot_status(file, skip_hash_check),
        Command::Snapshot(SnapshotCommand::Restore(args)) => snapshot_restore(args),
        Command::Check { data_dir } => check(data_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ringkvutl: {message}");
            ExitCode::FAILURE
        }
    }
}

fn snapshot_status(file: PathBuf, skip_hash_check: bool) -> Result<(), String> {
    let scratch = scratch_dir(&file)?;
    let summary = restore::status(&file, &scratch, skip_hash_check).map_err(|error| error.to_string());
    let _ = std::fs::remove_dir(&scratch);
    print_summary(&summary?);
    Ok(())
}

/// A scratch directory next to the snapshot (same file system, no /tmp limits).
fn scratch_dir(file: &std::path::Path) -> Result<PathBuf, String> {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".status-{}", std::process::id()));
    let dir = file.with_file_name(name);
    std::fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    Ok(dir)
}

fn print_summary(summary: &SnapshotSummary) {
    let hash = if summary.hash_checked { "ok" } else { "not checked" };
    let format = if summary.etcd_format {
        "etcd (bbolt)"
    } else {
        "ringkv page file"
    };
    println!("format: {format}");
    println!("sha256: {hash}");
    println!("revision: {}", summary.revision);
    println!("compact revision: {}", summary.compact_revision);
    println!("raft applied index: {}", summary.applied_index);
    println!("keys (live or in retained history): {}", summary.keys);
    println!("store bytes: {}", summary.store_bytes);
}

fn snapshot_restore(args: RestoreArgs) -> Result<(), String> {
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from(format!("{}.ringkv", args.name)));
    let (identity, membership) = restore::restored_member(
        &args.name,
        &args.initial_advertise_peer_urls,
        args.initial_cluster.as_deref(),
        &args.initial_cluster_token,
    )
    .map_err(|error| error.to_string())?;
    let summary = restore::restore(&args.file, &data_dir, identity, &membership, args.skip_hash_check)
        .map_err(|error| error.to_string())?;
    println!(
        "restored to {} (member id {:x})",
        data_dir.display(),
        identity.member_id
    );
    print_summary(&summary);
    Ok(())
}

fn check(data_dir: PathBuf) -> Result<(), String> {
    // A running member's page store changes under the reader.
    layout::check_stopped(&data_dir).map_err(|error| error.to_string())?;
    let store = data_dir.join(STORE_FILE);
    // Opening would create a missing file and initialize an empty one: look first.
    let len = std::fs::metadata(&store)
        .map_err(|error| format!("{}: {error}", store.display()))?
        .len();
    if len == 0 {
        return Err(format!("{} is empty: never initialized", store.display()));
    }
    let report = Tree::open(&store)
        .and_then(|tree| tree.check())
        .map_err(|error| format!("{}: {error}", store.display()))?;
    println!(
        "{}: ok: {} entries, depth {}, {} pages reachable ({} branch, {} leaf, {} overflow), {} unreachable; leaves {:.1}% full",
        store.display(),
        report.entries,
        report.depth,
        report.reachable_pages,
        report.branch_pages,
        report.leaf_pages,
        report.overflow_pages,
        report.unreachable_pages,
        report.leaf_fill() * 100.0
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// The tools work on files: they link the engine and the data directory's
    /// crate, not the server (nor, directly, glommio, h2 or raft).
    #[test]
    fn the_tools_depend_on_the_engine_and_the_data_directory_only() {
        let manifest = include_str!("../Cargo.toml");
        let table = manifest.split("[dependencies]").nth(1).expect("a [dependencies] table");
        let dependencies: Vec<&str> = table
            .lines()
            .take_while(|line| !line.starts_with('['))
            .filter(|line| !line.trim_start().starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .map(|(name, _)| name.trim().trim_end_matches(".workspace"))
            .collect();
        assert_eq!(dependencies, ["ringkv-datadir", "ringkv-engine", "clap"]);
    }

    #[test]
    fn restore_defaults_follow_ringkvs_flags() {
        let cli = Cli::try_parse_from(["ringkvutl", "snapshot", "restore", "s.db"]).unwrap();
        let Command::Snapshot(SnapshotCommand::Restore(args)) = cli.command else {
            panic!("parsed as restore");
        };
        assert_eq!(args.data_dir, None, "defaults to <name>.ringkv");
        assert_eq!(args.name, "default");
        assert_eq!(args.initial_advertise_peer_urls, ["http://localhost:2380"]);
        assert_eq!(args.initial_cluster_token, "etcd-cluster");
    }
}

//! `compare --workloads space`: the same writes to ringkv and etcd, and what
//! each server's database takes for them (Maintenance.Status dbSize and
//! dbSizeInUse; `--quota-backend-bytes` counts dbSize): after 300,000 Puts
//! over 100,000 random keys (8 B keys, 256 B values), then after a physical
//! Compact at the current revision and a Defragment. Target: ringkv <= 0.8x
//! etcd on each. Its own table; ignores --total, --duration, --rate, --conns
//! and --clients.

use std::sync::Arc;
use std::time::Duration;

use crate::channel::Channel;
use ringkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ringkv_proto::etcdserverpb::{CompactionRequest, DefragmentRequest, StatusRequest};
use serde::Serialize;

use super::rows::{KEY_SIZE, VAL_SIZE};
use super::server::{Server, ServerKind};
use super::Session;
use crate::connect::connect;
use crate::runner::{self, RunOptions, Stop};
use crate::sample::SampleMode;
use crate::workload::kv_client;
use crate::workload::put::{Put, PutArgs};
use crate::BenchError;

/// The row's name in --workloads.
pub const ROW: &str = "space";
/// The writes: three revisions per key on average, picked at random.
const PUTS: u64 = 300_000;
const KEYS: u64 = 100_000;
/// 100 clients over 10 connections: both servers batch many writes per
/// commit, as they do under load.
const CONNS: usize = 10;
const CLIENTS: usize = 100;
/// Both servers commit their page stores every 100 ms: Status read this long
/// after the last write counts it.
const SETTLE: Duration = Duration::from_secs(1);
/// A physical compaction or a defragmentation of this store takes seconds;
/// one that takes longer fails the run.
const MAINTENANCE_WAIT_MAX: Duration = Duration::from_secs(600);

/// dbSize and dbSizeInUse as Status reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sizes {
    pub db_size: i64,
    pub db_size_in_use: i64,
}

/// One run on one server, for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct SpaceRecord {
    pub round: usize,
    pub server: ServerKind,
    pub written: Sizes,
    pub compacted_and_defragmented: Sizes,
}

impl Session<'_> {
    /// Every round of the space row; stops early once interrupted.
    pub(super) fn run_space(&mut self) -> Vec<SpaceRecord> {
        let measure_one = |session: &mut Self, kind, round, label: &str| {
            session.on_fresh_server(kind, ROW, round, label, |session, server| {
                session.runtime.block_on(measure(session, server, label))
            })
        };
        let line = |(written, compacted): &(Sizes, Sizes)| {
            format!(
                "{} after the writes, {} after compaction and defrag",
                one_line(*written),
                one_line(*compacted)
            )
        };
        self.each_own_table_run(ROW, measure_one, line)
            .into_iter()
            .map(|(round, server, (written, compacted_and_defragmented))| SpaceRecord {
                round,
                server,
                written,
                compacted_and_defragmented,
            })
            .collect()
    }
}

/// The writes, Status, a physical Compact at the revision Status reported, a
/// Defragment, Status again.
async fn measure(session: &Session<'_>, server: &Server, label: &str) -> Result<(Sizes, Sizes), BenchError> {
    let puts = Put::new(&PutArgs {
        key_size: KEY_SIZE,
        val_size: VAL_SIZE,
        key_space_size: KEYS,
        sequential_keys: false,
    })?;
    let options = RunOptions {
        endpoints: vec![server.endpoint().to_string()],
        tls: server.client_tls().cloned(),
        conns: CONNS,
        clients: CLIENTS,
        stop: Stop::Total(PUTS),
        rate_per_sec: None,
        request_timeout: session.global.request_timeout,
        progress: session.progress,
        label: format!("{label} writes"),
        cancel: None,
        server_pids: vec![server.pid()],
        samples: SampleMode::Off,
    };
    let summary = runner::run(Arc::new(puts), &options).await?;
    if summary.errors > 0 {
        return Err(BenchError::Server(format!("{} of the writes failed", summary.errors)));
    }
    let channel = connect(server.endpoint(), MAINTENANCE_WAIT_MAX, server.client_tls()).await?;
    tokio::time::sleep(SETTLE).await;
    let (written, revision) = status(&channel).await?;
    kv_client(channel.clone())
        .compact(CompactionRequest {
            revision,
            physical: true,
        })
        .await
        .map_err(|status| BenchError::Server(format!("compacting: {status}")))?;
    MaintenanceClient::new(channel.clone())
        .defragment(DefragmentRequest {})
        .await
        .map_err(|status| BenchError::Server(format!("defragmenting: {status}")))?;
    tokio::time::sleep(SETTLE).await;
    let (compacted, _) = status(&channel).await?;
    Ok((written, compacted))
}

/// The sizes, and the revision of the reply's header.
async fn status(channel: &Channel) -> Result<(Sizes, i64), BenchError> {
    let reply = MaintenanceClient::new(channel.clone())
        .status(StatusRequest {})
        .await
        .map_err(|status| BenchError::Server(format!("Status: {status}")))?
        .into_inner();
    let revision = reply.header.map_or(0, |header| header.revision);
    let sizes = Sizes {
        db_size: reply.db_size,
        db_size_in_use: reply.db_size_in_use,
    };
    Ok((sizes, revision))
}

fn mib(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `185.0 MiB (178.6 MiB in use)`
fn one_line(sizes: Sizes) -> String {
    format!("{} ({} in use)", mib(sizes.db_size), mib(sizes.db_size_in_use))
}

/// The median of the servers' `kind` runs of one measure, if any ran.
fn median(records: &[SpaceRecord], kind: ServerKind, measure: impl Fn(&SpaceRecord) -> i64) -> Option<i64> {
    let mut values: Vec<i64> = records.iter().filter(|r| r.server == kind).map(measure).collect();
    values.sort_unstable();
    values.get(values.len().wrapping_sub(1) / 2).copied()
}

/// The row's table: per measure, each server's median over the rounds and
/// ringkv / etcd.
pub fn render(records: &[SpaceRecord]) -> String {
    type Measure = fn(&SpaceRecord) -> i64;
    let measures: [(&str, Measure); 4] = [
        ("after the writes: dbSize", |r| r.written.db_size),
        ("after the writes: dbSizeInUse", |r| r.written.db_size_in_use),
        ("after compaction + defrag: dbSize", |r| {
            r.compacted_and_defragmented.db_size
        }),
        ("after compaction + defrag: dbSizeInUse", |r| {
            r.compacted_and_defragmented.db_size_in_use
        }),
    ];
    let mut out = format!(
        "space: {PUTS} puts over {KEYS} random keys ({KEY_SIZE} B keys, {VAL_SIZE} B values), \
         then a physical compaction at the last revision and a defrag\n\n\
         | measure | ringkv | etcd | ringkv / etcd |\n|---|---|---|---|\n"
    );
    for (name, measure) in measures {
        let ringkv = median(records, ServerKind::Ringkv, measure);
        let etcd = median(records, ServerKind::Etcd, measure);
        let ratio = match (ringkv, etcd) {
            (Some(ringkv), Some(etcd)) if etcd > 0 => format!("{:.2}x", ringkv as f64 / etcd as f64),
            _ => "-".to_string(),
        };
        let cell = |value: Option<i64>| value.map_or("-".to_string(), mib);
        out.push_str(&format!("| {name} | {} | {} | {ratio} |\n", cell(ringkv), cell(etcd)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(server: ServerKind, written: i64) -> SpaceRecord {
        let sizes = Sizes {
            db_size: written,
            db_size_in_use: written / 2,
        };
        SpaceRecord {
            round: 1,
            server,
            written: sizes,
            compacted_and_defragmented: sizes,
        }
    }

    #[test]
    fn the_table_shows_medians_and_their_ratio() {
        let mib = 1024 * 1024;
        let records = [
            record(ServerKind::Ringkv, 80 * mib),
            record(ServerKind::Etcd, 100 * mib),
            record(ServerKind::Ringkv, 90 * mib),
            record(ServerKind::Etcd, 110 * mib),
            record(ServerKind::Ringkv, 70 * mib),
        ];
        let table = render(&records);
        assert!(
            table.contains("| after the writes: dbSize | 80.0 MiB | 100.0 MiB | 0.80x |"),
            "{table}"
        );
        assert!(table.contains("| after the writes: dbSizeInUse | 40.0 MiB | 50.0 MiB | 0.80x |"));
    }

    #[test]
    fn a_server_without_runs_shows_no_ratio() {
        let table = render(&[record(ServerKind::Ringkv, 1024)]);
        assert!(
            table.contains("| after the writes: dbSize | 0.0 MiB | - | - |"),
            "{table}"
        );
    }
}

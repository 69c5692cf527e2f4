//! The scale row's phases against one running server, in order: load N keys,
//! read RSS, overwrite them, a quiet paced load, the same paced load during a
//! physical compaction of the overwritten revisions, then a restart timed to
//! the first read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringkv_proto::etcdserverpb::{CompactionRequest, RangeRequest};
use tonic::Code;

use super::{Compaction, Restart, ScaleRun};
use crate::compare::proc_status::Memory;
use crate::compare::rows::{KEY_SIZE, VAL_SIZE};
use crate::compare::server::{Server, Shutdown};
use crate::connect::{connect, Tls};
use crate::keys::{KeyOrder, KeySpace};
use crate::progress::ProgressMode;
use crate::report::Summary;
use crate::runner::{self, RunOptions, Stop};
use crate::sample::SampleMode;
use crate::workload::kv_client;
use crate::workload::put::{Put, PutArgs};
use crate::{interrupt, BenchError};

/// Load and overwrite: the put row's 1000 clients over 100 connections.
const BULK_CONNS: usize = 100;
const BULK_CLIENTS: usize = 1000;
/// The paced loads: 100 clients over 10 connections at 2000 writes/s, well
/// below either server's ceiling, so latency shows stalls, not queueing.
const PACED_CONNS: usize = 10;
const PACED_CLIENTS: usize = 100;
pub const PACED_RATE_PER_SEC: u64 = 2000;
/// Time for the allocator and the page cache to settle before RSS is read.
const RSS_SETTLE: Duration = Duration::from_secs(2);
/// The Compact is sent this long into the paced load, so the load's p99
/// covers steady state before it too.
const COMPACT_AFTER: Duration = Duration::from_secs(1);
/// The paced load keeps running this long after the Compact's reply.
const LOAD_AFTER_COMPACTION: Duration = Duration::from_secs(1);
/// A compaction without a reply after this is given up on (and reported).
const COMPACTION_WAIT_MAX: Duration = Duration::from_secs(120);

/// What the phases need besides the server.
#[derive(Debug, Clone)]
pub struct Plan {
    pub keys: u64,
    /// Length of the quiet paced load, and the least length of the one
    /// during compaction.
    pub phase: Duration,
    pub request_timeout: Duration,
    /// How long the restarted server may take to serve its first read.
    pub start_timeout: Duration,
    pub progress: ProgressMode,
}

/// The key space of `keys` keys, or a usage error naming --scale-keys.
pub fn key_space(keys: u64) -> Result<KeySpace, BenchError> {
    KeySpace::new(KEY_SIZE, keys, KeyOrder::Sequential).map_err(|e| BenchError::Usage(format!("--scale-keys: {e}")))
}

impl Plan {
    fn options(&self, server: &Server, shape: (usize, usize), stop: Stop, label: String) -> RunOptions {
        RunOptions {
            endpoints: vec![server.endpoint().to_string()],
            tls: server.client_tls().cloned(),
            conns: shape.0,
            clients: shape.1,
            stop,
            rate_per_sec: None,
            request_timeout: self.request_timeout,
            progress: self.progress,
            label,
            cancel: None,
            server_pids: vec![server.pid()],
            samples: SampleMode::Off,
        }
    }

    fn paced(&self, server: &Server, stop: Stop, label: String) -> RunOptions {
        RunOptions {
            rate_per_sec: Some(PACED_RATE_PER_SEC),
            ..self.options(server, (PACED_CONNS, PACED_CLIENTS), stop, label)
        }
    }
}

/// Every phase against `server`, which has just started on an empty data dir.
/// Stops between phases on Ctrl-C, which would leave the rest meaningless.
pub async fn measure(server: &mut Server, plan: &Plan, label: &str) -> Result<ScaleRun, BenchError> {
    let load = bulk_puts(server, plan, format!("{label} load")).await?;
    tokio::time::sleep(RSS_SETTLE).await;
    let memory_after_load = Memory::of_pid(server.pid())?;
    let overwrite = bulk_puts(server, plan, format!("{label} overwrite")).await?;
    not_interrupted()?;
    let revision = current_revision(server.endpoint(), server.client_tls(), plan.request_timeout).await?;
    plan.progress
        .note(&format!("{label}: revision {revision} after the overwrite"));
    let quiet_load = Put::new(&put_args(plan.keys, false))?;
    let quiet = runner::run(
        Arc::new(quiet_load),
        &plan.paced(server, Stop::Duration(plan.phase), format!("{label} quiet")),
    )
    .await?;
    not_interrupted()?;
    let (during_compaction, compaction) = during_compaction(server, plan, revision, label).await?;
    not_interrupted()?;
    let restart = restart(server, plan).await;
    Ok(ScaleRun {
        keys: plan.keys,
        load,
        memory_after_load,
        overwrite,
        quiet,
        during_compaction,
        compaction,
        restart,
    })
}

fn not_interrupted() -> Result<(), BenchError> {
    if interrupt::requested() {
        Err(BenchError::Interrupted)
    } else {
        Ok(())
    }
}

fn put_args(keys: u64, sequential: bool) -> PutArgs {
    PutArgs {
        key_size: KEY_SIZE,
        val_size: VAL_SIZE,
        key_space_size: keys,
        sequential_keys: sequential,
    }
}

/// One Put of every key, 0 to N-1 in order (as the put row writes them).
async fn bulk_puts(server: &Server, plan: &Plan, label: String) -> Result<Summary, BenchError> {
    let workload = Put::new(&put_args(plan.keys, true))?;
    let options = plan.options(server, (BULK_CONNS, BULK_CLIENTS), Stop::Total(plan.keys), label);
    runner::run(Arc::new(workload), &options).await
}

/// The store's revision, from a Range's header.
async fn current_revision(endpoint: &str, tls: Option<&Tls>, request_timeout: Duration) -> Result<i64, BenchError> {
    let channel = connect(endpoint, request_timeout, tls).await?;
    let request = RangeRequest {
        key: b"ringkv-bench-revision".to_vec(),
        ..Default::default()
    };
    let reply = kv_client(channel)
        .range(request)
        .await
        .map_err(|status| BenchError::Server(format!("reading the revision: {status}")))?;
    let revision = reply.into_inner().header.map_or(0, |header| header.revision);
    assert!(revision > 0, "a store that took Puts has a positive revision");
    Ok(revision)
}

/// The paced load, with a physical Compact up to `revision` sent
/// COMPACT_AFTER into it; the load runs for at least `plan.phase` and until
/// LOAD_AFTER_COMPACTION after the Compact's reply.
async fn during_compaction(
    server: &Server,
    plan: &Plan,
    revision: i64,
    label: &str,
) -> Result<(Summary, Compaction), BenchError> {
    let cancel = Arc::new(AtomicBool::new(false));
    // The bound if the compaction never replies; normally `cancel` ends the run.
    let bound = plan
        .phase
        .max(COMPACT_AFTER + COMPACTION_WAIT_MAX + LOAD_AFTER_COMPACTION);
    let options = RunOptions {
        cancel: Some(Arc::clone(&cancel)),
        ..plan.paced(server, Stop::Duration(bound), format!("{label} during compaction"))
    };
    let load = runner::run(Arc::new(Put::new(&put_args(plan.keys, false))?), &options);
    let endpoint = server.endpoint().to_string();
    let tls = server.client_tls();
    let start = Instant::now();
    let control = async {
        tokio::time::sleep(COMPACT_AFTER).await;
        let compaction = compact(&endpoint, tls, revision, start).await;
        let end = (start + plan.phase).max(Instant::now() + LOAD_AFTER_COMPACTION);
        tokio::time::sleep_until(end.into()).await;
        cancel.store(true, Ordering::Relaxed);
        compaction
    };
    let (summary, compaction) = tokio::join!(load, control);
    Ok((summary?, compaction))
}

/// Sends `Compact { revision, physical: true }` on its own connection and
/// times it to the reply, which both servers send once the removal is done.
async fn compact(endpoint: &str, tls: Option<&Tls>, revision: i64, load_start: Instant) -> Compaction {
    let started_after_sec = load_start.elapsed().as_secs_f64();
    let sent = Instant::now();
    let result = match connect(endpoint, COMPACTION_WAIT_MAX, tls).await {
        Ok(channel) => kv_client(channel)
            .compact(CompactionRequest {
                revision,
                physical: true,
            })
            .await
            .map(|_| ())
            .map_err(|status| match status.code() {
                Code::DeadlineExceeded | Code::Cancelled => format!(
                    "no reply within {}; gave up",
                    humantime::format_duration(COMPACTION_WAIT_MAX)
                ),
                code => format!("{code:?}: {}", status.message()),
            }),
        Err(error) => Err(error.to_string()),
    };
    let duration_sec = sent.elapsed().as_secs_f64();
    Compaction {
        revision,
        started_after_sec,
        duration_sec: result.is_ok().then_some(duration_sec),
        error: result.err(),
    }
}

/// SIGTERM, then the same binary on the same data dir and ports, timed from
/// its spawn to the first serializable Range that returns key 0.
async fn restart(server: &mut Server, plan: &Plan) -> Restart {
    let key = key_space(plan.keys)
        .expect("--scale-keys is checked before any run")
        .key(0);
    let (shutdown, spawned) = match server.restart().await {
        Ok(restarted) => restarted,
        Err(error) => return Restart::failed(false, error.to_string()),
    };
    let killed = shutdown == Shutdown::Killed;
    match server.wait_serves_key(&key, plan.start_timeout).await {
        Ok(served) => Restart {
            killed_after_sigterm: killed,
            first_read_sec: Some(served.duration_since(spawned).as_secs_f64()),
            error: None,
        },
        Err(error) => Restart::failed(killed, error.to_string()),
    }
}

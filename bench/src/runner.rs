//! Running a workload: connections, request loops, pacing, stopping, recording.
//!
//! `--clients` request loops share `--conns` HTTP/2 connections round-robin
//! (loop `i` uses connection `i % conns`), like etcd's benchmark. Ops are
//! numbered across all loops from one counter ("tickets"): the number picks
//! sequential keys and, with `--rate`, the op's intended send time. A loop stops
//! when the tickets reach `--total`, when the next op would be sent after
//! `--duration`, when the caller sets `RunOptions::cancel`, or on Ctrl-C. Then
//! the workload's `finish` winds down what ran beside the ops (watchers,
//! leases) and adds what it measured.
//!
//! Connections and request loops run where [`Placement`] says: on client
//! threads of their own, each loop on the thread of the connection it sends
//! on. Progress, samples and the workload's `prepare` and `finish` stay on the
//! caller's runtime.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::channel::Channel;

use crate::connect::{connect, Tls};
use crate::pacing::{intended_offset, measured_from};
use crate::placement::Placement;
use crate::progress::{Counters, Progress, ProgressMode};
use crate::report::{RunInfo, Summary};
use crate::sample::{self, SampleMode, Sampler, Shards};
use crate::workload::{Workload, WorkloadClient};
use crate::{interrupt, server_cpu, BenchError};

/// Request loops share this many recorders (a mutex each), so recording costs
/// one uncontended lock instead of a 200 KiB histogram per loop.
pub const RECORDER_SHARDS: usize = 16;
/// After a failed request its loop waits this long, so a dead server is not
/// hammered in a busy loop. (With `--rate` the wait is part of the next op's
/// latency, as it should be.)
pub const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this many requests (successful or not).
    Total(u64),
    /// When the next request would be sent after this long.
    Duration(Duration),
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub endpoints: Vec<String>,
    /// For `https://` endpoints.
    pub tls: Option<Tls>,
    pub conns: usize,
    pub clients: usize,
    pub stop: Stop,
    /// Requests per second across all loops; None: as fast as replies come.
    pub rate_per_sec: Option<u64>,
    pub request_timeout: Duration,
    pub progress: ProgressMode,
    /// Prefix of the progress line.
    pub label: String,
    /// Once set, no further op is sent, as if the deadline had passed: for a
    /// caller that ends a run on an event of its own (`compare`'s scale row
    /// keeps a load running until a compaction has finished). `stop` still
    /// bounds the run.
    pub cancel: Option<Arc<AtomicBool>>,
    /// The server's processes (one per member), when they run on this
    /// machine: the summary then says how much CPU they used together over
    /// the timed part of the run. Empty: not measured.
    pub server_pids: Vec<u32>,
    /// Per-second samples (`--sample`, `compare --plot`).
    pub samples: SampleMode,
}

struct Shared {
    next_ticket: AtomicU64,
    /// No op gets a ticket at or above this.
    ticket_limit: u64,
    start: Instant,
    deadline: Option<Instant>,
    rate_per_sec: Option<u64>,
    cancel: Option<Arc<AtomicBool>>,
    counters: Arc<Counters>,
    recorders: Arc<Shards>,
}

impl Shared {
    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|cancel| cancel.load(Ordering::Relaxed))
    }
}

/// Connects, prepares the workload (untimed), runs it and summarizes.
pub async fn run(workload: Arc<dyn Workload>, options: &RunOptions) -> Result<Summary, BenchError> {
    assert!(options.conns > 0 && options.clients > 0, "checked when parsing flags");
    let placement = Placement::for_run(options.clients, options.conns)?;
    let channels = connect_on(&placement, options).await?;
    workload.prepare(&channels, options.progress).await?;
    if interrupt::requested() {
        return Err(BenchError::Interrupted);
    }

    let requested = match options.stop {
        Stop::Total(total) => total,
        Stop::Duration(_) => u64::MAX,
    };
    let op_limit = workload.op_limit();
    let ticket_limit = op_limit.as_ref().map_or(requested, |limit| limit.ops.min(requested));
    let cpu_at_start = server_cpu::total_cpu_seconds(&options.server_pids)?;
    let start = Instant::now();
    let shared = Arc::new(Shared {
        next_ticket: AtomicU64::new(0),
        ticket_limit,
        start,
        deadline: match options.stop {
            Stop::Duration(duration) => Some(start + duration),
            Stop::Total(_) => None,
        },
        rate_per_sec: options.rate_per_sec,
        cancel: options.cancel.clone(),
        counters: Arc::new(Counters::default()),
        recorders: Arc::new(Shards::new(RECORDER_SHARDS, options.samples, workload.write_kinds())),
    });

    // Printed samples take the progress line's place.
    let progress_mode = match options.samples {
        SampleMode::Print => ProgressMode::Off,
        _ => options.progress,
    };
    let progress = Progress::start(options.label.clone(), Arc::clone(&shared.counters), progress_mode);
    let sampler = Sampler::start(
        Arc::clone(&shared.recorders),
        start,
        options.label.clone(),
        options.samples,
    );
    let last_done = run_loops(workload.as_ref(), &placement, &channels, options.clients, &shared).await;
    let server_cpu_sec = match cpu_at_start {
        Some(at_start) => server_cpu::total_cpu_seconds(&options.server_pids)?.map(|at_end| at_end - at_start),
        None => None,
    };
    progress.finish();
    let samples = match (sampler, &last_done) {
        (Some(sampler), Ok(last_done)) => sampler.finish(last_done.saturating_duration_since(start)).await,
        _ => Vec::new(),
    };
    let extras = workload.finish(start, options.progress).await;
    let last_done = last_done?;

    let recorder = shared.recorders.totals();
    let tickets_used = shared.next_ticket.load(Ordering::Relaxed).min(ticket_limit);
    let stopped_early = if interrupt::requested() {
        Some("interrupted (Ctrl-C)".to_string())
    } else {
        op_limit
            .filter(|limit| limit.ops < requested && tickets_used >= limit.ops)
            .map(|limit| limit.why)
    };
    let info = RunInfo {
        workload: workload.name().to_string(),
        settings: workload.settings(),
        endpoints: options.endpoints.clone(),
        conns: options.conns,
        clients: options.clients,
        rate_limit_per_sec: options.rate_per_sec,
        writes: workload.writes(),
        write_kinds: workload.write_kinds(),
    };
    let duration_sec = last_done.saturating_duration_since(start).as_secs_f64();
    let mut summary = Summary::new(info, &recorder, duration_sec, stopped_early);
    summary.watch = extras.watch;
    summary.notes = extras.notes;
    summary.server_cpu_sec = server_cpu_sec;
    if options.samples != SampleMode::Off {
        summary.samples = samples;
        summary.latency_percentiles = sample::percentile_curve(recorder.latency_us());
    }
    Ok(summary)
}

/// Opens `options.conns` connections, spread round-robin over the endpoints,
/// each on its thread in `placement`, so that its task runs there.
async fn connect_on(placement: &Placement, options: &RunOptions) -> Result<Vec<Channel>, BenchError> {
    let mut channels = Vec::with_capacity(options.conns);
    for index in 0..options.conns {
        let endpoint = options.endpoints[index % options.endpoints.len()].clone();
        let (timeout, tls) = (options.request_timeout, options.tls.clone());
        let opened = placement.run_on(index, async move { connect(&endpoint, timeout, tls.as_ref()).await });
        channels.push(opened.await??);
    }
    Ok(channels)
}

/// Starts every request loop in `placement` and waits for all of them;
/// returns when the last reply came.
async fn run_loops(
    workload: &dyn Workload,
    placement: &Placement,
    channels: &[Channel],
    clients: usize,
    shared: &Arc<Shared>,
) -> Result<Instant, BenchError> {
    let loops: Vec<_> = (0..clients)
        .map(|index| {
            let connection = index % channels.len();
            let client = workload.client(index, channels[connection].clone());
            placement.spawn_on(connection, request_loop(client, Arc::clone(shared), index))
        })
        .collect();
    let mut last_done = shared.start;
    for handle in loops {
        let done = handle
            .await
            .map_err(|error| BenchError::Internal(format!("a request loop failed: {error}")))?;
        last_done = last_done.max(done);
    }
    Ok(last_done)
}

/// One request loop; returns when its last reply came.
async fn request_loop(mut client: Box<dyn WorkloadClient>, shared: Arc<Shared>, index: usize) -> Instant {
    let shard = shared.recorders.shard(index);
    let mut last_done = shared.start;
    while !interrupt::requested() && !shared.cancelled() {
        let ticket = shared.next_ticket.fetch_add(1, Ordering::Relaxed);
        if ticket >= shared.ticket_limit {
            break;
        }
        let intended = shared
            .rate_per_sec
            .map(|rate| shared.start + intended_offset(ticket, rate));
        if let Some(deadline) = shared.deadline {
            if intended.unwrap_or_else(Instant::now) >= deadline {
                break;
            }
        }
        let ready = Instant::now();
        if let Some(at) = intended {
            tokio::time::sleep_until(at.into()).await;
        }
        let sent = Instant::now();
        let from = intended.map_or(sent, |intended| measured_from(intended, ready, sent));
        let result = client.op(ticket, from).await;
        last_done = shard.lock().expect("no loop panicked holding a recorder").record(
            result.as_ref().map(|outcome| outcome.0),
            shared.start,
            from,
        );
        if result.is_err() {
            shared.counters.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(ERROR_PAUSE).await;
        } else {
            shared.counters.ops.fetch_add(1, Ordering::Relaxed);
        }
    }
    last_done
}

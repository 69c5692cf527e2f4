//! go-grpc-prometheus's server series, as etcd 3.4 exposes them: started,
//! handled (by code), messages received and sent, and with `--metrics
//! extensive` the handling-time histogram. Each client core counts its own
//! calls in a slot only it writes (no lock, no read-modify-write shared
//! between cores); a scrape sums the slots.

use std::cell::OnceCell;
use std::fmt::Write;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// grpc-prometheus's `grpc_type` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrpcType {
    Unary,
    ServerStream,
    BidiStream,
}

impl GrpcType {
    fn label(self) -> &'static str {
        match self {
            GrpcType::Unary => "unary",
            GrpcType::ServerStream => "server_stream",
            GrpcType::BidiStream => "bidi_stream",
        }
    }
}

/// One method as the series name it.
struct MethodInfo {
    service: &'static str,
    method: &'static str,
    kind: GrpcType,
    /// etcd 3.4 registers these before grpc-prometheus initializes its series,
    /// so they are shown from the start, zero included; the rest (Lock,
    /// Election, 3.5's additions) appear once called, as on etcd.
    initialized: bool,
}

const fn method(service: &'static str, method: &'static str, kind: GrpcType, initialized: bool) -> MethodInfo {
    MethodInfo {
        service,
        method,
        kind,
        initialized,
    }
}

const KV: &str = "etcdserverpb.KV";
const LEASE: &str = "etcdserverpb.Lease";
const CLUSTER: &str = "etcdserverpb.Cluster";
const MAINTENANCE: &str = "etcdserverpb.Maintenance";
const AUTH: &str = "etcdserverpb.Auth";
const HEALTH: &str = "grpc.health.v1.Health";
const LOCK: &str = "v3lockpb.Lock";
const ELECTION: &str = "v3electionpb.Election";

use GrpcType::{BidiStream, ServerStream, Unary};

/// Every method of etcd's gRPC server, in etcd 3.4's scrape order
/// (registered ones first). Calls to other paths are not counted: grpc-go
/// answers them before any interceptor runs.
const METHODS: [MethodInfo; METHOD_COUNT] = [
    method(KV, "Range", Unary, true),
    method(KV, "Put", Unary, true),
    method(KV, "DeleteRange", Unary, true),
    method(KV, "Txn", Unary, true),
    method(KV, "Compact", Unary, true),
    method("etcdserverpb.Watch", "Watch", BidiStream, true),
    method(LEASE, "LeaseGrant", Unary, true),
    method(LEASE, "LeaseRevoke", Unary, true),
    method(LEASE, "LeaseKeepAlive", BidiStream, true),
    method(LEASE, "LeaseTimeToLive", Unary, true),
    method(LEASE, "LeaseLeases", Unary, true),
    method(CLUSTER, "MemberAdd", Unary, true),
    method(CLUSTER, "MemberRemove", Unary, true),
    method(CLUSTER, "MemberUpdate", Unary, true),
    method(CLUSTER, "MemberList", Unary, true),
    method(CLUSTER, "MemberPromote", Unary, true),
    method(MAINTENANCE, "Alarm", Unary, true),
    method(MAINTENANCE, "Status", Unary, true),
    method(MAINTENANCE, "Defragment", Unary, true),
    method(MAINTENANCE, "Hash", Unary, true),
    method(MAINTENANCE, "HashKV", Unary, true),
    method(MAINTENANCE, "Snapshot", ServerStream, true),
    method(MAINTENANCE, "MoveLeader", Unary, true),
    method(MAINTENANCE, "Downgrade", Unary, false),
    method(AUTH, "AuthEnable", Unary, true),
    method(AUTH, "AuthDisable", Unary, true),
    method(AUTH, "AuthStatus", Unary, false),
    method(AUTH, "Authenticate", Unary, true),
    method(AUTH, "UserAdd", Unary, true),
    method(AUTH, "UserGet", Unary, true),
    method(AUTH, "UserList", Unary, true),
    method(AUTH, "UserDelete", Unary, true),
    method(AUTH, "UserChangePassword", Unary, true),
    method(AUTH, "UserGrantRole", Unary, true),
    method(AUTH, "UserRevokeRole", Unary, true),
    method(AUTH, "RoleAdd", Unary, true),
    method(AUTH, "RoleGet", Unary, true),
    method(AUTH, "RoleList", Unary, true),
    method(AUTH, "RoleDelete", Unary, true),
    method(AUTH, "RoleGrantPermission", Unary, true),
    method(AUTH, "RoleRevokePermission", Unary, true),
    method(HEALTH, "Check", Unary, true),
    method(HEALTH, "Watch", ServerStream, true),
    method(LOCK, "Lock", Unary, false),
    method(LOCK, "Unlock", Unary, false),
    method(ELECTION, "Campaign", Unary, false),
    method(ELECTION, "Proclaim", Unary, false),
    method(ELECTION, "Leader", Unary, false),
    method(ELECTION, "Observe", ServerStream, false),
    method(ELECTION, "Resign", Unary, false),
];
const METHOD_COUNT: usize = 50;

/// grpc-go's `codes.Code` names, by code number.
const CODE_NAMES: [&str; CODE_COUNT] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CODE_COUNT: usize = 17;

/// grpc-prometheus's histogram buckets (Go's `prometheus.DefBuckets`), seconds.
const HANDLING_BOUNDS_SECONDS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const HANDLING_BUCKETS: usize = HANDLING_BOUNDS_SECONDS.len() + 1;

/// A counter one thread writes and any thread reads: a plain load and store,
/// no locked read-modify-write, since no other thread adds to it.
#[derive(Debug, Default)]
struct OwnedCounter(AtomicU64);

impl OwnedCounter {
    fn add(&self, amount: u64) {
        let value = self.0.load(Ordering::Relaxed).wrapping_add(amount);
        self.0.store(value, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One method's counters on one core.
#[derive(Debug, Default)]
struct MethodCounters {
    started: OwnedCounter,
    received: OwnedCounter,
    sent: OwnedCounter,
    handled: [OwnedCounter; CODE_COUNT],
    /// Observations per bucket, not cumulative; the last is `+Inf`'s.
    handling: [OwnedCounter; HANDLING_BUCKETS],
    handling_nanos: OwnedCounter,
}

/// One client core's counters, on cache lines of their own.
#[derive(Debug)]
#[repr(align(128))]
struct CoreCounters {
    methods: [MethodCounters; METHOD_COUNT],
}

impl Default for CoreCounters {
    fn default() -> CoreCounters {
        CoreCounters {
            methods: std::array::from_fn(|_| MethodCounters::default()),
        }
    }
}

/// Every client core's gRPC counters.
#[derive(Debug)]
pub struct GrpcMetrics {
    /// etcd's `--metrics extensive`: `grpc_server_handling_seconds` too.
    handling_histogram: bool,
    cores: Box<[CoreCounters]>,
}

impl GrpcMetrics {
    pub fn new(handling_histogram: bool, client_cores: usize) -> Arc<GrpcMetrics> {
        Arc::new(GrpcMetrics {
            handling_histogram,
            cores: (0..client_cores).map(|_| CoreCounters::default()).collect(),
        })
    }

    /// The handle client core `core` counts its calls with.
    pub fn core(self: &Arc<GrpcMetrics>, core: usize) -> GrpcCore {
        assert!(core < self.cores.len(), "client core {core} has no counters");
        GrpcCore {
            metrics: Arc::clone(self),
            core,
        }
    }

    /// The series in Prometheus text format, every core's summed.
    pub fn render(&self, out: &mut String) {
        let totals: Vec<MethodTotals> = (0..METHOD_COUNT).map(|index| self.totals(index)).collect();
        let shown = |index: usize| METHODS[index].initialized || totals[index].started > 0;
        family_head(
            out,
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            "counter",
        );
        for (index, totals) in totals.iter().enumerate().filter(|(index, _)| shown(*index)) {
            for (code, name) in CODE_NAMES.iter().enumerate() {
                let count = totals.handled[code];
                // grpc-prometheus initializes every code of a registered method.
                if METHODS[index].initialized || count > 0 {
                    let labels = labels(index);
                    let _ = writeln!(
                        out,
                        "grpc_server_handled_total{{grpc_code=\"{name}\",{labels}}} {count}"
                    );
                }
            }
        }
        if self.handling_histogram {
            self.render_handling(out, &totals, shown);
        }
        type Value = fn(&MethodTotals) -> u64;
        let simple: [(&str, &str, Value); 3] = [
            (
                "grpc_server_msg_received_total",
                "Total number of RPC stream messages received on the server.",
                |totals| totals.received,
            ),
            (
                "grpc_server_msg_sent_total",
                "Total number of gRPC stream messages sent by the server.",
                |totals| totals.sent,
            ),
            (
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                |totals| totals.started,
            ),
        ];
        for (name, help, value) in simple {
            family_head(out, name, help, "counter");
            for (index, totals) in totals.iter().enumerate().filter(|(index, _)| shown(*index)) {
                let _ = writeln!(out, "{name}{{{}}} {}", labels(index), value(totals));
            }
        }
    }

    fn render_handling(&self, out: &mut String, totals: &[MethodTotals], shown: impl Fn(usize) -> bool) {
        let name = "grpc_server_handling_seconds";
        family_head(
            out,
            name,
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            "histogram",
        );
        for (index, totals) in totals.iter().enumerate().filter(|(index, _)| shown(*index)) {
            let labels = labels(index);
            let mut cumulative = 0;
            for (bound, count) in HANDLING_BOUNDS_SECONDS.iter().zip(&totals.handling) {
                cumulative += count;
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let count: u64 = totals.handling.iter().sum();
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
            let seconds = totals.handling_nanos as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum{{{labels}}} {seconds}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }
    }

    fn totals(&self, index: usize) -> MethodTotals {
        let mut totals = MethodTotals::default();
        for core in self.cores.iter() {
            let counters = &core.methods[index];
            totals.started += counters.started.get();
            totals.received += counters.received.get();
            totals.sent += counters.sent.get();
            for (total, counter) in totals.handled.iter_mut().zip(&counters.handled) {
                *total += counter.get();
            }
            for (total, counter) in totals.handling.iter_mut().zip(&counters.handling) {
                *total += counter.get();
            }
            totals.handling_nanos += counters.handling_nanos.get();
        }
        totals
    }
}

/// One method's counts summed over the cores.
#[derive(Debug, Default)]
struct MethodTotals {
    started: u64,
    received: u64,
    sent: u64,
    handled: [u64; CODE_COUNT],
    handling: [u64; HANDLING_BUCKETS],
    handling_nanos: u64,
}

fn family_head(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn labels(index: usize) -> String {
    let info = &METHODS[index];
    format!(
        "grpc_method=\"{}\",grpc_service=\"{}\",grpc_type=\"{}\"",
        info.method,
        info.service,
        info.kind.label()
    )
}

/// The counters of the client core this thread runs.
#[derive(Debug, Clone)]
pub struct GrpcCore {
    metrics: Arc<GrpcMetrics>,
    core: usize,
}

thread_local! {
    /// Set once by the client core running on this thread; unset elsewhere
    /// (tools, fuzzing), where calls are not counted.
    static THIS_CORE: OnceCell<Rc<GrpcCore>> = const { OnceCell::new() };
}

impl GrpcCore {
    /// Makes the calls served on this thread count here. A thread serves one
    /// client core for its whole life.
    pub fn install(self) {
        THIS_CORE.with(|cell| {
            assert!(cell.set(Rc::new(self)).is_ok(), "a thread runs one client core");
        });
    }

    /// Every core's counters, for a scrape.
    pub fn metrics(&self) -> &GrpcMetrics {
        &self.metrics
    }

    /// The gRPC counters of this thread's client core, if it runs one.
    pub fn this_thread() -> Option<Rc<GrpcCore>> {
        THIS_CORE.with(|cell| cell.get().cloned())
    }

    fn counters(&self, method: usize) -> &MethodCounters {
        &self.metrics.cores[self.core].methods[method]
    }
}

/// One call being counted, from its start (grpc-prometheus's interceptor
/// entry) to `handled`.
#[derive(Debug)]
pub struct CallCount {
    core: Rc<GrpcCore>,
    method: usize,
    /// Kept only with the histogram on, as grpc-prometheus does.
    started_at: Option<Instant>,
}

impl CallCount {
    /// Counts the start of a call to `path` (`/package.Service/Method`) on
    /// this thread's core; None for a path etcd does not serve, or on a
    /// thread that runs no client core.
    pub fn start(path: &str) -> Option<CallCount> {
        let method = method_index(path)?;
        let core = GrpcCore::this_thread()?;
        core.counters(method).started.add(1);
        let started_at = core.metrics.handling_histogram.then(Instant::now);
        Some(CallCount {
            core,
            method,
            started_at,
        })
    }

    pub fn received(&self) {
        self.core.counters(self.method).received.add(1);
    }

    pub fn sent(&self) {
        self.core.counters(self.method).sent.add(1);
    }

    /// The call ended with gRPC status code `code` (0 is OK).
    pub fn handled(&self, code: usize) {
        let counters = self.core.counters(self.method);
        counters.handled[code.min(CODE_COUNT - 1)].add(1);
        if let Some(started_at) = self.started_at {
            let elapsed = started_at.elapsed();
            let seconds = elapsed.as_secs_f64();
            let bucket = HANDLING_BOUNDS_SECONDS
                .iter()
                .position(|&bound| seconds <= bound)
                .unwrap_or(HANDLING_BUCKETS - 1);
            counters.handling[bucket].add(1);
            counters.handling_nanos.add(elapsed.as_nanos() as u64);
        }
    }
}

/// The index in `METHODS` of `/package.Service/Method`.
fn method_index(path: &str) -> Option<usize> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    METHODS
        .iter()
        .position(|info| info.method == method && info.service == service)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts `calls` on core `core` as the gRPC layer would, each ending with `code`.
    fn count(metrics: &Arc<GrpcMetrics>, core: usize, path: &str, calls: usize, code: usize) {
        let core = Rc::new(metrics.core(core));
        for _ in 0..calls {
            let method = method_index(path).unwrap();
            core.counters(method).started.add(1);
            let call = CallCount {
                core: Rc::clone(&core),
                method,
                started_at: metrics.handling_histogram.then(Instant::now),
            };
            call.received();
            if code == 0 {
                call.sent();
            }
            call.handled(code);
        }
    }

    fn render(metrics: &GrpcMetrics) -> String {
        let mut out = String::new();
        metrics.render(&mut out);
        out
    }

    #[test]
    fn every_core_counts_and_a_scrape_sums_them() {
        let metrics = GrpcMetrics::new(false, 2);
        count(&metrics, 0, "/etcdserverpb.KV/Put", 3, 0);
        count(&metrics, 1, "/etcdserverpb.KV/Put", 2, 0);
        count(&metrics, 1, "/etcdserverpb.KV/Put", 1, 14);
        let out = render(&metrics);
        let labels = r#"grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary""#;
        assert!(
            out.contains(&format!("grpc_server_started_total{{{labels}}} 6\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("grpc_server_msg_received_total{{{labels}}} 6\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("grpc_server_msg_sent_total{{{labels}}} 5\n")),
            "{out}"
        );
        assert!(out.contains(&format!("grpc_server_handled_total{{grpc_code=\"OK\",{labels}}} 5\n")));
        assert!(out.contains(&format!(
            "grpc_server_handled_total{{grpc_code=\"Unavailable\",{labels}}} 1\n"
        )));
    }

    #[test]
    fn registered_methods_show_every_code_at_zero_and_the_others_once_called() {
        let metrics = GrpcMetrics::new(false, 1);
        let out = render(&metrics);
        // etcd 3.4's scrape: 41 registered methods, each with all 17 codes.
        assert_eq!(out.matches("grpc_server_handled_total{").count(), 41 * 17);
        assert_eq!(out.matches("grpc_server_started_total{").count(), 41);
        assert!(!out.contains("v3lockpb"), "{out}");
        assert!(out.contains(
            r#"grpc_server_handled_total{grpc_code="DataLoss",grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"} 0"#
        ));
        count(&metrics, 0, "/v3lockpb.Lock/Unlock", 1, 2);
        let out = render(&metrics);
        let labels = r#"grpc_method="Unlock",grpc_service="v3lockpb.Lock",grpc_type="unary""#;
        assert!(out.contains(&format!(
            "grpc_server_handled_total{{grpc_code=\"Unknown\",{labels}}} 1\n"
        )));
        assert_eq!(out.matches("grpc_method=\"Unlock\"").count(), 4, "{out}");
    }

    #[test]
    fn the_histogram_is_there_with_extensive_only() {
        let basic = GrpcMetrics::new(false, 1);
        count(&basic, 0, "/etcdserverpb.KV/Range", 1, 0);
        assert!(!render(&basic).contains("grpc_server_handling_seconds"));
        let extensive = GrpcMetrics::new(true, 1);
        count(&extensive, 0, "/etcdserverpb.KV/Range", 2, 0);
        let out = render(&extensive);
        let labels = r#"grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary""#;
        assert!(out.contains("# TYPE grpc_server_handling_seconds histogram\n"));
        assert!(
            out.contains(&format!(
                "grpc_server_handling_seconds_bucket{{{labels},le=\"10\"}} 2\n"
            )),
            "{out}"
        );
        assert!(out.contains(&format!(
            "grpc_server_handling_seconds_bucket{{{labels},le=\"+Inf\"}} 2\n"
        )));
        assert!(out.contains(&format!("grpc_server_handling_seconds_count{{{labels}}} 2\n")));
        assert_eq!(out.matches("grpc_server_handling_seconds_count{").count(), 41);
    }

    #[test]
    fn only_etcds_methods_are_counted() {
        assert_eq!(method_index("/etcdserverpb.KV/Range"), Some(0));
        assert_eq!(
            method_index("/grpc.health.v1.Health/Watch").map(|i| METHODS[i].kind),
            Some(ServerStream)
        );
        assert_eq!(method_index("/etcdserverpb.KV/Nope"), None);
        assert_eq!(method_index("/etcdserverpb.KV/Range/x"), None);
        assert_eq!(method_index("etcdserverpb.KV/Range"), None);
    }

    #[test]
    fn a_thread_without_a_client_core_counts_nothing() {
        assert!(CallCount::start("/etcdserverpb.KV/Range").is_none());
    }
}

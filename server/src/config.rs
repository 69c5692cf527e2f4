//! Command-line flags. Names and defaults follow etcd's where etcd has the flag, so
//! an operator's existing etcd command line works; ringkv-only flags say so.

pub mod auth_token;
pub mod auto_compaction;
pub mod etcd_flags;
pub mod logging;
pub mod tls;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use ringkv_datadir::cluster::{initial_cluster, parse_url, split_urls, BadUrl, InitialClusterError, InitialMember};
use ringkv_engine::wal::SEGMENT_BYTES_DEFAULT;

use self::auto_compaction::{AutoCompactionMode, AutoCompactionPolicy};
use self::tls::{TlsFiles, TlsFlagError, TlsProtocol};
use crate::placement::DiskInterrupts;

/// etcd's `--max-txn-ops` default.
pub const MAX_TXN_OPS_DEFAULT: usize = 128;
/// etcd's `--max-request-bytes` default: 1.5 MiB.
pub const MAX_REQUEST_BYTES_DEFAULT: usize = 1536 * 1024;
/// Above this etcd warns that requests this large may slow the cluster (its
/// `recommendedMaxRequestBytes`, 10 MiB); ringkv warns too.
pub const MAX_REQUEST_BYTES_RECOMMENDED: usize = 10 * 1024 * 1024;
/// The largest `--max-request-bytes` ringkv accepts: a request is proposed as
/// one raft entry, which is one WAL record (at most half a WAL segment: 32 MiB)
/// and travels to a follower in one peer frame (64 MiB) beside at most 1 MiB
/// of other entries. 1 MiB of the record is kept for its own header and the
/// records every segment starts with. etcd has no upper bound, but nothing
/// larger could be written or sent, so a larger value is refused at start.
pub const MAX_REQUEST_BYTES_MAX: usize = (SEGMENT_BYTES_DEFAULT / 2) as usize - 1024 * 1024;
/// etcd's `--backend-batch-limit` default: page-store commit after this many applied entries.
pub const BACKEND_BATCH_LIMIT_DEFAULT: usize = 10_000;
/// etcd's backend quota when `--quota-backend-bytes` is 0: 2 GiB.
pub const QUOTA_BACKEND_BYTES_DEFAULT: u64 = 2 * 1024 * 1024 * 1024;
/// etcd 3.4's `--snapshot-count` default.
pub const SNAPSHOT_COUNT_DEFAULT: u64 = 100_000;
/// The longest `--self-signed-cert-validity`, in years (a certificate's end
/// date must stay within what X.509 dates hold; etcd has no bound).
pub const SELF_SIGNED_CERT_VALIDITY_YEARS_MAX: u32 = 100;
/// The shortest `--watch-progress-notify-interval`: each tick visits every
/// progress_notify watcher on the store core, so it must not run too often.
pub const WATCH_PROGRESS_NOTIFY_INTERVAL_MIN: Duration = Duration::from_millis(100);

/// ringkv: an etcd-v3-compatible key-value server.
///
/// Start a single member with data in ./default.ringkv serving clients on
/// 127.0.0.1:2379:   ringkv
#[derive(Debug, Parser)]
#[command(name = "ringkv", version, about, long_about = None)]
pub struct Flags {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,

    /// Path to the data directory [default: <name>.ringkv].
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Comma-separated URLs to listen on for client traffic (gRPC and HTTP on one port).
    #[arg(long, env = "ETCD_LISTEN_CLIENT_URLS", default_value = "http://127.0.0.1:2379")]
    pub listen_client_urls: String,

    /// Comma-separated client URLs of this member to advertise to clients.
    #[arg(long, env = "ETCD_ADVERTISE_CLIENT_URLS", default_value = "http://127.0.0.1:2379")]
    pub advertise_client_urls: String,

    /// Comma-separated URLs to listen on for peer (raft) traffic; a member with
    /// no peers does not listen.
    #[arg(long, env = "ETCD_LISTEN_PEER_URLS", default_value = "http://localhost:2380")]
    pub listen_peer_urls: String,

    /// Comma-separated peer URLs of this member, as the other members reach it.
    /// With --initial-cluster they determine the member id (derived as etcd does).
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,

    /// Initial cluster configuration for bootstrapping: name=peer-URL pairs, comma
    /// separated (a name may repeat for several URLs) [default: <name>=<initial-advertise-peer-urls>].
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// Initial cluster state: `new` (bootstrap with --initial-cluster) or
    /// `existing` (join a running cluster after MemberAdd: --initial-cluster lists
    /// every member, this one included; the member learns its id from the others'
    /// peer URLs). Used only when the data directory is new.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", value_enum, default_value = "new")]
    pub initial_cluster_state: InitialClusterState,

    /// Initial cluster token; part of the member and cluster id derivation, as in etcd.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_TOKEN", default_value = "etcd-cluster")]
    pub initial_cluster_token: String,

    /// Time (in milliseconds) of a heartbeat interval: one raft tick.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,

    /// Time (in milliseconds) for an election to time out: at least 5 heartbeat
    /// intervals, as etcd requires.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,

    /// Committed entries a member keeps in its raft log (and WAL) behind what its
    /// page store holds, so a lagging follower catches up from the log (etcd keeps
    /// the entries of up to this many transactions between its snapshots); one
    /// further behind is sent a snapshot of the page store. Only members with
    /// peers keep any.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = SNAPSHOT_COUNT_DEFAULT)]
    pub snapshot_count: u64,

    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = MAX_TXN_OPS_DEFAULT)]
    pub max_txn_ops: usize,

    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = MAX_REQUEST_BYTES_DEFAULT)]
    pub max_request_bytes: usize,

    /// Maximum concurrent streams that each client can open at a time (etcd's
    /// default: math.MaxUint32; 0 means the same, as in grpc-go). Streams past it
    /// are refused with HTTP/2's REFUSED_STREAM.
    #[arg(long, env = "ETCD_MAX_CONCURRENT_STREAMS", default_value_t = u32::MAX)]
    pub max_concurrent_streams: u32,

    /// Tests only: the largest response message, below grpc-go's 2 GiB - 1, so a
    /// test can reach "trying to send message larger than max" with small data.
    #[arg(long, hide = true, default_value_t = crate::status::RESPONSE_BYTES_MAX)]
    pub test_response_bytes_max: usize,

    /// Maximum time between page-store commits (the WAL is the durability point; this
    /// bounds how much WAL a restart replays).
    #[arg(long, env = "ETCD_BACKEND_BATCH_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub backend_batch_interval: Duration,

    /// Maximum number of applied entries per page-store commit.
    #[arg(long, env = "ETCD_BACKEND_BATCH_LIMIT", default_value_t = BACKEND_BATCH_LIMIT_DEFAULT)]
    pub backend_batch_limit: usize,

    /// Raise the NOSPACE alarm when the page store would grow past this many bytes
    /// (0: the default, 2 GiB; negative: no quota).
    #[arg(
        long,
        env = "ETCD_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub quota_backend_bytes: i64,

    /// How --auto-compaction-retention is read: `periodic` (keep that much time of
    /// history) or `revision` (keep that many revisions).
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", value_enum, default_value = "periodic")]
    pub auto_compaction_mode: AutoCompactionMode,

    /// History to keep when compacting automatically: for periodic, a duration
    /// (`30m`, `1h`) or a number of hours; for revision, a revision count. 0: off.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,

    /// Comma-separated URLs to also serve /metrics, /health, /livez, /readyz and
    /// /version on (HTTP/1.1; https ones with the client port's certificate).
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,

    /// Level of detail of /metrics: basic, or extensive to add the gRPC
    /// handling-time histogram (grpc_server_handling_seconds).
    #[arg(long, env = "ETCD_METRICS", value_enum, default_value = "basic")]
    pub metrics: MetricsLevel,

    /// Interval between periodic progress notifications to watchers that asked for
    /// them (at least 100ms). etcd 3.5 spells it --experimental-watch-progress-notify-interval.
    #[arg(
        long, env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        alias = "experimental-watch-progress-notify-interval",
        default_value = "10m",
        value_parser = humantime::parse_duration
    )]
    pub watch_progress_notify_interval: Duration,

    /// Before serving, compare this member's HashKV with its peers' at the same
    /// revision and refuse to start on a mismatch (a new member has nothing
    /// to compare and skips it).
    #[arg(long, env = "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", default_value = "false", value_parser = go_bool,
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub experimental_initial_corrupt_check: bool,

    /// How often the leader compares its HashKV with its peers' (0: never); a
    /// mismatch raises the CORRUPT alarm, which refuses writes until disarmed.
    #[arg(long, env = "ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME", default_value = "0s",
          value_parser = humantime::parse_duration)]
    pub experimental_corrupt_check_time: Duration,

    /// Authentication tokens: `simple`, or `jwt,pub-key=FILE,priv-key=FILE,sign-method=RS256|ES256|...,ttl=5m`.
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,

    /// Seconds a simple token lives after its last use.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,

    /// The bcrypt cost of password hashes (4 to 31; another is warned about
    /// and 10 is used, as etcd does).
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = BCRYPT_COST_DEFAULT)]
    pub bcrypt_cost: u32,

    /// Path to the client server TLS cert file (https:// client and metrics URLs).
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,

    /// Path to the client server TLS key file.
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// Path to the client server TLS trusted CA cert file; as in etcd 3.4, it
    /// also makes client certificates required.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Require client certificates signed by --trusted-ca-file on the client port.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", default_value = "false", value_parser = go_bool,
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub client_cert_auth: bool,

    /// Path to the client certificate revocation list file.
    #[arg(long, env = "ETCD_CLIENT_CRL_FILE")]
    pub client_crl_file: Option<PathBuf>,

    /// A client certificate must be valid for this host name (its subject
    /// alternative names).
    #[arg(long, env = "ETCD_CLIENT_CERT_ALLOWED_HOSTNAME")]
    pub client_cert_allowed_hostname: Option<String>,

    /// Client TLS using a self-signed certificate made at start (when no
    /// --cert-file and --key-file are given).
    #[arg(long, env = "ETCD_AUTO_TLS", default_value = "false", value_parser = go_bool,
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub auto_tls: bool,

    /// Years the certificates made by --auto-tls and --peer-auto-tls are valid.
    #[arg(long, env = "ETCD_SELF_SIGNED_CERT_VALIDITY", default_value_t = 1)]
    pub self_signed_cert_validity: u32,

    /// Path to the peer server TLS cert file (https:// peer URLs).
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,

    /// Path to the peer server TLS key file.
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,

    /// Path to the peer client TLS cert file presented when dialing peers
    /// [default: --peer-cert-file].
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_FILE")]
    pub peer_client_cert_file: Option<PathBuf>,

    /// Path to the peer client TLS key file [default: --peer-key-file].
    #[arg(long, env = "ETCD_PEER_CLIENT_KEY_FILE")]
    pub peer_client_key_file: Option<PathBuf>,

    /// Path to the peer server TLS trusted CA file: peers' certificates are
    /// verified against it, both ways.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,

    /// Require peer certificates signed by --peer-trusted-ca-file on the peer
    /// port: a connection without one is refused before any raft message.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", default_value = "false", value_parser = go_bool,
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub peer_client_cert_auth: bool,

    /// Path to the peer certificate revocation list file.
    #[arg(long, env = "ETCD_PEER_CRL_FILE")]
    pub peer_crl_file: Option<PathBuf>,

    /// A peer certificate must have this common name.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_CN")]
    pub peer_cert_allowed_cn: Option<String>,

    /// A peer certificate must be valid for this host name.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_HOSTNAME")]
    pub peer_cert_allowed_hostname: Option<String>,

    /// Peer TLS using a self-signed certificate made at start (encrypted, not
    /// authenticated: peers' certificates are not verified).
    #[arg(long, env = "ETCD_PEER_AUTO_TLS", default_value = "false", value_parser = go_bool,
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub peer_auto_tls: bool,

    /// Comma-separated TLS 1.2 cipher suites (Go's names) for every port
    /// [default: rustls's]. TLS 1.3's suites are not configurable.
    #[arg(long, env = "ETCD_CIPHER_SUITES", default_value = "")]
    pub cipher_suites: String,

    /// Minimum TLS version: TLS1.2 or TLS1.3.
    #[arg(long, env = "ETCD_TLS_MIN_VERSION", default_value = "TLS1.2")]
    pub tls_min_version: String,

    /// Maximum TLS version: TLS1.2 or TLS1.3 [default: TLS1.3].
    #[arg(long, env = "ETCD_TLS_MAX_VERSION", default_value = "")]
    pub tls_max_version: String,

    /// ringkv only: CPU to pin the store executor (raft, WAL, MVCC) to
    /// [default: the CPU that takes the interrupts of the data directory's
    /// disk, if one takes them all and --client-cpus is not given; else 0].
    #[arg(long)]
    pub store_cpu: Option<usize>,

    /// ringkv only: comma-separated CPUs for client executors (gRPC, HTTP)
    /// [default: every other online CPU, or the store CPU on a 1-CPU machine].
    #[arg(long, value_delimiter = ',')]
    pub client_cpus: Vec<usize>,

    /// Log level: debug, info, warn or error (etcd's dpanic, panic and fatal
    /// log errors only). RUST_LOG, when set, sets levels per module instead.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// How log lines are written: zap (JSON lines with etcd's keys: level,
    /// ts, caller, msg, then the fields) or capnslog (text lines; etcd 3.4's
    /// default).
    #[arg(long, env = "ETCD_LOGGER", default_value = "capnslog")]
    pub logger: String,

    /// Where logs go, comma-separated: stderr, stdout, default (stderr) or
    /// file paths (appended to).
    #[arg(long, env = "ETCD_LOG_OUTPUTS", value_delimiter = ',', default_value = "default")]
    pub log_outputs: Vec<String>,
}

/// A Go boolean flag's value (`strconv.ParseBool`): etcd's command lines and
/// environment files say `--client-cert-auth=true`, `=1`, `=T`...
fn go_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("invalid boolean value {text:?}")),
    }
}

/// etcd's `--metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsLevel {
    Basic,
    Extensive,
}

/// etcd's `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InitialClusterState {
    New,
    Existing,
}

/// One listen URL: where to bind, and whether its port speaks TLS (`https://`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub tls: bool,
}

/// Validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client: Vec<Listen>,
    pub listen_metrics: Vec<Listen>,
    pub metrics: MetricsLevel,
    /// The client and metrics ports' TLS (`--cert-file`, ...).
    pub client_tls: TlsFiles,
    /// The peer port's and the peer dialer's TLS (`--peer-cert-file`, ...).
    pub peer_tls: TlsFiles,
    pub tls_protocol: TlsProtocol,
    /// Hosts of the listen URLs, for self-signed certificates (as etcd's).
    pub client_hosts: Vec<String>,
    pub peer_hosts: Vec<String>,
    /// None: no quota.
    pub quota_backend_bytes: Option<u64>,
    pub auto_compaction: AutoCompactionPolicy,
    pub advertise_client_urls: Vec<String>,
    /// This member's advertised peer URLs.
    pub peer_urls: Vec<String>,
    pub listen_peer: Vec<Listen>,
    /// Every member of the initial cluster, this one included, in flag order.
    pub initial_cluster: Vec<InitialMember>,
    /// `--initial-cluster-state existing`: a new data directory joins a running
    /// cluster instead of bootstrapping one.
    pub join_existing: bool,
    pub cluster_token: String,
    /// One raft tick.
    pub heartbeat_interval: Duration,
    /// Ticks without a leader before a follower campaigns.
    pub election_ticks: usize,
    pub snapshot_count: u64,
    pub max_txn_ops: usize,
    pub max_request_bytes: usize,
    pub max_concurrent_streams: u32,
    /// The largest response message (`--test-response-bytes-max`).
    pub response_bytes_max: usize,
    pub backend_batch_interval: Duration,
    pub backend_batch_limit: usize,
    pub watch_progress_notify_interval: Duration,
    /// `--experimental-initial-corrupt-check`.
    pub initial_corrupt_check: bool,
    /// `--experimental-corrupt-check-time`; None: 0, never.
    pub corrupt_check_interval: Option<Duration>,
    pub auth_token: auth_token::AuthToken,
    /// `--auth-token-ttl`.
    pub simple_token_ttl: Duration,
    pub bcrypt_cost: u32,
    pub store_cpu: usize,
    /// The disk whose interrupts chose `store_cpu`, if they did (for the log).
    pub store_cpu_by_disk: Option<DiskInterrupts>,
    pub client_cpus: Vec<usize>,
    /// What the flags ask for that ringkv does not do as asked, for the log.
    pub warnings: Vec<String>,
}

/// bcrypt's costs as Go's `bcrypt` takes them (`MinCost`, `MaxCost`) and
/// etcd's default (`DefaultCost`).
pub const BCRYPT_COSTS: std::ops::RangeInclusive<u32> = 4..=31;
pub const BCRYPT_COST_DEFAULT: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    BadUrl(#[from] BadUrl),
    #[error("--auto-compaction-retention: {0}")]
    AutoCompaction(String),
    #[error("--{flag} must be at least {min:?}")]
    TooShort { flag: &'static str, min: Duration },
    #[error("--{flag} must be greater than zero")]
    Zero { flag: &'static str },
    #[error("--{flag} must be at most {max} (asked for {value})")]
    TooLarge {
        flag: &'static str,
        value: usize,
        max: usize,
    },
    #[error(transparent)]
    InitialCluster(#[from] InitialClusterError),
    #[error(
        "--election-timeout[{election_ms}ms] should be at least as 5 times as --heartbeat-interval[{heartbeat_ms}ms]"
    )]
    ElectionTimeout { election_ms: u64, heartbeat_ms: u64 },
    #[error(transparent)]
    Tls(#[from] TlsFlagError),
    #[error(transparent)]
    AuthToken(#[from] auth_token::AuthTokenError),
    /// etcd's words for a client URL: "TLS key/cert (--cert-file, --key-file)
    /// must be provided for client url https://... with HTTPS scheme".
    #[error("TLS key/cert (--cert-file, --key-file) must be provided for {kind} url {url} with HTTPS scheme")]
    NoClientKeyPair { kind: &'static str, url: String },
    /// etcd's words for a peer URL.
    #[error("cannot listen on TLS for {addr}: KeyFile and CertFile are not presented")]
    NoPeerKeyPair { addr: SocketAddr },
    #[error("--{flag} must be between 1 and {max}")]
    Validity { flag: &'static str, max: u32 },
    #[error("--{flag}: CPU {cpu} is not online (this machine has {online})")]
    NoSuchCpu {
        flag: &'static str,
        cpu: usize,
        online: usize,
    },
}

impl Flags {
    /// Checks the flags and resolves defaults that depend on other flags or the machine.
    /// `disk_interrupts` finds the CPU that takes the data directory's disk's
    /// interrupts (`placement::disk_interrupts`), asked only when neither
    /// --store-cpu nor --client-cpus is given.
    pub fn into_config(
        self,
        online_cpus: usize,
        disk_interrupts: impl FnOnce(&Path) -> Option<DiskInterrupts>,
    ) -> Result<Config, ConfigError> {
        assert!(online_cpus > 0);
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from(format!("{}.ringkv", self.name)));
        let mut warnings = Vec::new();
        let bcrypt_cost = if BCRYPT_COSTS.contains(&self.bcrypt_cost) {
            self.bcrypt_cost
        } else {
            warnings.push(format!(
                "--bcrypt-cost {} is not between {} and {}: using {BCRYPT_COST_DEFAULT}",
                self.bcrypt_cost,
                BCRYPT_COSTS.start(),
                BCRYPT_COSTS.end()
            ));
            BCRYPT_COST_DEFAULT
        };
        let listen_client = listen_urls("listen-client-urls", &self.listen_client_urls)?;
        let listen_metrics = listen_urls("listen-metrics-urls", &self.listen_metrics_urls)?;
        let listen_peer = listen_urls("listen-peer-urls", &self.listen_peer_urls)?;
        let tls_protocol = tls::protocol(&self.tls_min_version, &self.tls_max_version, &self.cipher_suites)?;
        if self.self_signed_cert_validity == 0 || self.self_signed_cert_validity > SELF_SIGNED_CERT_VALIDITY_YEARS_MAX {
            return Err(ConfigError::Validity {
                flag: "self-signed-cert-validity",
                max: SELF_SIGNED_CERT_VALIDITY_YEARS_MAX,
            });
        }
        let client_tls = TlsFiles {
            cert_file: self.cert_file,
            key_file: self.key_file,
            trusted_ca_file: self.trusted_ca_file,
            client_cert_auth: self.client_cert_auth,
            crl_file: self.client_crl_file,
            auto_tls: self.auto_tls,
            self_signed_years: self.self_signed_cert_validity,
            dial_cert_file: None,
            dial_key_file: None,
            allowed_cn: None,
            allowed_hostname: self.client_cert_allowed_hostname,
        };
        let peer_tls = TlsFiles {
            cert_file: self.peer_cert_file,
            key_file: self.peer_key_file,
            trusted_ca_file: self.peer_trusted_ca_file,
            client_cert_auth: self.peer_client_cert_auth,
            crl_file: self.peer_crl_file,
            auto_tls: self.peer_auto_tls,
            self_signed_years: self.self_signed_cert_validity,
            dial_cert_file: self.peer_client_cert_file,
            dial_key_file: self.peer_client_key_file,
            allowed_cn: self.peer_cert_allowed_cn,
            allowed_hostname: self.peer_cert_allowed_hostname,
        };
        check_tls_urls(
            &listen_client,
            &listen_metrics,
            &listen_peer,
            &client_tls,
            &peer_tls,
            &mut warnings,
        )?;
        let quota_backend_bytes = match self.quota_backend_bytes {
            0 => Some(QUOTA_BACKEND_BYTES_DEFAULT),
            bytes if bytes < 0 => None,
            bytes => Some(bytes as u64),
        };
        let auto_compaction = AutoCompactionPolicy::parse(self.auto_compaction_mode, &self.auto_compaction_retention)
            .map_err(ConfigError::AutoCompaction)?;
        let advertise_client_urls = split_urls(&self.advertise_client_urls);
        for url in &advertise_client_urls {
            resolve_url("advertise-client-urls", url)?;
        }
        let peer_urls = split_urls(&self.initial_advertise_peer_urls);
        for url in &peer_urls {
            parse_url("initial-advertise-peer-urls", url)?;
        }
        let initial_cluster = initial_cluster(&self.name, &peer_urls, self.initial_cluster.as_deref())?;
        if self.heartbeat_interval == 0 {
            return Err(ConfigError::Zero {
                flag: "heartbeat-interval",
            });
        }
        if self.election_timeout < 5 * self.heartbeat_interval {
            return Err(ConfigError::ElectionTimeout {
                election_ms: self.election_timeout,
                heartbeat_ms: self.heartbeat_interval,
            });
        }
        let election_ticks =
            usize::try_from(self.election_timeout / self.heartbeat_interval).expect("election ticks fit usize");
        if self.max_txn_ops == 0 {
            return Err(ConfigError::Zero { flag: "max-txn-ops" });
        }
        if self.max_request_bytes == 0 {
            return Err(ConfigError::Zero {
                flag: "max-request-bytes",
            });
        }
        if self.max_request_bytes > MAX_REQUEST_BYTES_MAX {
            return Err(ConfigError::TooLarge {
                flag: "max-request-bytes",
                value: self.max_request_bytes,
                max: MAX_REQUEST_BYTES_MAX,
            });
        }
        if self.test_response_bytes_max == 0 {
            return Err(ConfigError::Zero {
                flag: "test-response-bytes-max",
            });
        }
        if self.test_response_bytes_max > crate::status::RESPONSE_BYTES_MAX {
            return Err(ConfigError::TooLarge {
                flag: "test-response-bytes-max",
                value: self.test_response_bytes_max,
                max: crate::status::RESPONSE_BYTES_MAX,
            });
        }
        if self.backend_batch_limit == 0 {
            return Err(ConfigError::Zero {
                flag: "backend-batch-limit",
            });
        }
        if self.watch_progress_notify_interval < WATCH_PROGRESS_NOTIFY_INTERVAL_MIN {
            return Err(ConfigError::TooShort {
                flag: "watch-progress-notify-interval",
                min: WATCH_PROGRESS_NOTIFY_INTERVAL_MIN,
            });
        }
        let (store_cpu, store_cpu_by_disk) = match self.store_cpu {
            Some(cpu) => (cpu, None),
            None if self.client_cpus.is_empty() => default_store_cpu(disk_interrupts(&data_dir), online_cpus),
            None => (0, None),
        };
        check_cpu("store-cpu", store_cpu, online_cpus)?;
        let client_cpus = if self.client_cpus.is_empty() {
            default_client_cpus(store_cpu, online_cpus)
        } else {
            self.client_cpus
        };
        for &cpu in &client_cpus {
            check_cpu("client-cpus", cpu, online_cpus)?;
        }
        Ok(Config {
            name: self.name,
            data_dir,
            client_hosts: hosts(&self.listen_client_urls),
            peer_hosts: hosts(&self.listen_peer_urls),
            listen_client,
            listen_metrics,
            metrics: self.metrics,
            client_tls,
            peer_tls,
            tls_protocol,
            quota_backend_bytes,
            auto_compaction,
            advertise_client_urls,
            peer_urls,
            listen_peer,
            initial_cluster,
            join_existing: self.initial_cluster_state == InitialClusterState::Existing,
            cluster_token: self.initial_cluster_token,
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval),
            election_ticks,
            snapshot_count: self.snapshot_count,
            max_txn_ops: self.max_txn_ops,
            max_request_bytes: self.max_request_bytes,
            max_concurrent_streams: match self.max_concurrent_streams {
                0 => u32::MAX,
                streams => streams,
            },
            response_bytes_max: self.test_response_bytes_max,
            backend_batch_interval: self.backend_batch_interval,
            backend_batch_limit: self.backend_batch_limit,
            watch_progress_notify_interval: self.watch_progress_notify_interval,
            initial_corrupt_check: self.experimental_initial_corrupt_check,
            corrupt_check_interval: Some(self.experimental_corrupt_check_time).filter(|interval| !interval.is_zero()),
            auth_token: auth_token::parse(&self.auth_token)?,
            simple_token_ttl: Duration::from_secs(self.auth_token_ttl),
            bcrypt_cost,
            store_cpu,
            store_cpu_by_disk,
            client_cpus,
            warnings,
        })
    }
}

/// A comma-separated list of listen URLs, resolved.
fn listen_urls(flag: &'static str, list: &str) -> Result<Vec<Listen>, ConfigError> {
    split_urls(list)
        .iter()
        .map(|url| {
            Ok(Listen {
                addr: resolve_url(flag, url)?,
                tls: parse_url(flag, url)?.scheme() == "https",
            })
        })
        .collect()
}

/// The hosts of a list of URLs, for a self-signed certificate (bad URLs are
/// refused elsewhere).
fn hosts(list: &str) -> Vec<String> {
    let mut hosts: Vec<String> = split_urls(list)
        .iter()
        .filter_map(|url| url::Url::parse(url).ok())
        .filter_map(|url| {
            url.host_str()
                .map(|host| host.trim_start_matches('[').trim_end_matches(']').to_string())
        })
        .collect();
    hosts.dedup();
    hosts
}

/// Every https listener has a certificate to present, as etcd checks at start;
/// certificates given to a port with no https listener are unused (etcd warns).
fn check_tls_urls(
    client: &[Listen],
    metrics: &[Listen],
    peer: &[Listen],
    client_tls: &TlsFiles,
    peer_tls: &TlsFiles,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let https = |listen: &Listen| format!("https://{}", listen.addr);
    if !client_tls.can_serve() {
        if let Some(listen) = client.iter().find(|listen| listen.tls) {
            return Err(ConfigError::NoClientKeyPair {
                kind: "client",
                url: https(listen),
            });
        }
        if let Some(listen) = metrics.iter().find(|listen| listen.tls) {
            return Err(ConfigError::NoClientKeyPair {
                kind: "metrics",
                url: https(listen),
            });
        }
    }
    if !peer_tls.can_serve() {
        if let Some(listen) = peer.iter().find(|listen| listen.tls) {
            return Err(ConfigError::NoPeerKeyPair { addr: listen.addr });
        }
    }
    for (files, what) in [(client_tls, "client"), (peer_tls, "peer")] {
        if files.auto_tls && files.has_key_pair() {
            warnings.push(format!("ignoring {what} auto TLS since certs given"));
        }
    }
    let client_https = client.iter().chain(metrics).any(|listen| listen.tls);
    if client_tls.has_key_pair() && !client_https {
        warnings.push("--cert-file and --key-file are given but no client URL is https: they are not used".to_string());
    }
    Ok(())
}

fn resolve_url(flag: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    let url = parse_url(flag, text)?;
    let host = url.host_str().expect("checked by parse_url");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port().expect("checked by parse_url");
    let mut addrs = (host, port).to_socket_addrs().map_err(|e| BadUrl {
        flag,
        url: text.to_string(),
        reason: e.to_string(),
    })?;
    // Prefer IPv4 for names like "localhost", as etcd's listeners do.
    let all: Vec<SocketAddr> = addrs.by_ref().collect();
    let addr = all.iter().find(|a| a.is_ipv4()).or(all.first()).copied();
    addr.ok_or_else(|| {
        ConfigError::BadUrl(BadUrl {
            flag,
            url: text.to_string(),
            reason: "host resolves to no address".to_string(),
        })
    })
}

fn check_cpu(flag: &'static str, cpu: usize, online: usize) -> Result<(), ConfigError> {
    if cpu >= online {
        return Err(ConfigError::NoSuchCpu { flag, cpu, online });
    }
    Ok(())
}

/// The store core's CPU when the flags place neither core: the one that takes
/// the data directory's disk's interrupts, if it is online (and that disk, for
/// the log); else 0.
pub fn default_store_cpu(disk: Option<DiskInterrupts>, online: usize) -> (usize, Option<DiskInterrupts>) {
    match disk.filter(|disk| disk.cpu < online) {
        Some(disk) => (disk.cpu, Some(disk)),
        None => (0, None),
    }
}

/// Every CPU but the store's; on a single-CPU machine the store CPU is shared.
pub fn default_client_cpus(store_cpu: usize, online: usize) -> Vec<usize> {
    let others: Vec<usize> = (0..online).filter(|&cpu| cpu != store_cpu).collect();
    if others.is_empty() {
        vec![store_cpu]
    } else {
        others
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_disk(_: &Path) -> Option<DiskInterrupts> {
        None
    }

    fn parse(args: &[&str]) -> Flags {
        Flags::try_parse_from(std::iter::once("ringkv").chain(args.iter().copied())).expect("flags parse")
    }

    #[test]
    fn defaults_match_etcd_with_ringkv_data_dir() {
        let config = parse(&[]).into_config(2, no_disk).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("default.ringkv"));
        let plain = Listen {
            addr: "127.0.0.1:2379".parse().unwrap(),
            tls: false,
        };
        assert_eq!(config.listen_client, vec![plain]);
        assert_eq!(config.max_txn_ops, 128);
        assert_eq!(config.max_request_bytes, 1_572_864);
        assert_eq!(config.backend_batch_interval, Duration::from_millis(100));
        assert_eq!(config.client_cpus, vec![1]);
        assert_eq!(config.quota_backend_bytes, Some(2 << 30));
        assert!(config.listen_metrics.is_empty());
        assert_eq!(config.client_tls, TlsFiles::default());
    }

    #[test]
    fn max_concurrent_streams_is_unlimited_by_default_and_for_zero_as_in_etcd() {
        assert_eq!(
            parse(&[]).into_config(2, no_disk).unwrap().max_concurrent_streams,
            u32::MAX
        );
        let zero = parse(&["--max-concurrent-streams", "0"])
            .into_config(2, no_disk)
            .unwrap();
        assert_eq!(zero.max_concurrent_streams, u32::MAX);
        let ten = parse(&["--max-concurrent-streams", "10"])
            .into_config(2, no_disk)
            .unwrap();
        assert_eq!(ten.max_concurrent_streams, 10);
    }

    #[test]
    fn the_test_response_limit_cannot_exceed_grpc_gos() {
        let default = parse(&[]).into_config(2, no_disk).unwrap();
        assert_eq!(default.response_bytes_max, crate::status::RESPONSE_BYTES_MAX);
        let over = (crate::status::RESPONSE_BYTES_MAX + 1).to_string();
        assert!(parse(&["--test-response-bytes-max", &over])
            .into_config(2, no_disk)
            .is_err());
    }

    #[test]
    fn a_negative_quota_means_none_as_in_etcd() {
        let config = parse(&["--quota-backend-bytes", "-1"]).into_config(2, no_disk).unwrap();
        assert_eq!(config.quota_backend_bytes, None);
        let config = parse(&["--quota-backend-bytes", "4096"])
            .into_config(2, no_disk)
            .unwrap();
        assert_eq!(config.quota_backend_bytes, Some(4096));
    }

    #[test]
    fn max_request_bytes_past_what_a_wal_record_holds_is_refused_at_start() {
        let most = MAX_REQUEST_BYTES_MAX.to_string();
        assert_eq!(
            parse(&["--max-request-bytes", &most])
                .into_config(2, no_disk)
                .unwrap()
                .max_request_bytes,
            MAX_REQUEST_BYTES_MAX
        );
        let over = (MAX_REQUEST_BYTES_MAX + 1).to_string();
        let error = parse(&["--max-request-bytes", &over])
            .into_config(2, no_disk)
            .unwrap_err();
        assert!(matches!(error, ConfigError::TooLarge { .. }), "{error}");
        // The bound is below what the WAL takes in one record.
        let wal = ringkv_engine::wal::WalOptions::default();
        assert!(MAX_REQUEST_BYTES_MAX < wal.record_bytes_max());
    }

    #[test]
    fn data_dir_follows_the_name() {
        let config = parse(&["--name", "infra0"]).into_config(2, no_disk).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("infra0.ringkv"));
    }

    #[test]
    fn the_store_core_goes_to_the_cpu_of_the_disks_interrupts_unless_the_flags_place_the_cores() {
        let disk_on = |cpu| {
            move |_: &Path| {
                Some(DiskInterrupts {
                    cpu,
                    irq: 36,
                    disk: "vda".to_string(),
                })
            }
        };
        let config = parse(&[]).into_config(2, disk_on(1)).unwrap();
        assert_eq!((config.store_cpu, config.client_cpus), (1, vec![0]));
        assert_eq!(config.store_cpu_by_disk.map(|disk| disk.irq), Some(36));
        let config = parse(&[]).into_config(4, disk_on(2)).unwrap();
        assert_eq!((config.store_cpu, config.client_cpus), (2, vec![0, 1, 3]));
        let config = parse(&["--store-cpu", "0"]).into_config(2, disk_on(1)).unwrap();
        assert_eq!((config.store_cpu, config.client_cpus), (0, vec![1]));
        assert_eq!(config.store_cpu_by_disk, None);
        let config = parse(&["--client-cpus", "1"]).into_config(2, disk_on(1)).unwrap();
        assert_eq!(
            (config.store_cpu, config.client_cpus),
            (0, vec![1]),
            "the CPUs the user gave"
        );
        let config = parse(&[]).into_config(2, disk_on(5)).unwrap();
        assert_eq!(
            (config.store_cpu, config.store_cpu_by_disk),
            (0, None),
            "a CPU not online"
        );
        let asked = std::cell::Cell::new(None);
        parse(&["--data-dir", "/var/lib/etcd"])
            .into_config(2, |dir: &Path| {
                asked.set(Some(dir.to_path_buf()));
                None
            })
            .unwrap();
        assert_eq!(asked.take(), Some(PathBuf::from("/var/lib/etcd")));
    }

    #[test]
    fn one_cpu_machine_shares_the_store_cpu() {
        let config = parse(&[]).into_config(1, no_disk).unwrap();
        assert_eq!(config.client_cpus, vec![0]);
    }

    #[test]
    fn https_urls_without_a_certificate_are_refused_with_etcds_words() {
        let error = parse(&["--listen-client-urls", "https://127.0.0.1:2379"])
            .into_config(2, no_disk)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "TLS key/cert (--cert-file, --key-file) must be provided for client url \
             https://127.0.0.1:2379 with HTTPS scheme"
        );
        let error = parse(&[
            "--listen-peer-urls",
            "https://127.0.0.1:2380",
            "--cert-file",
            "c",
            "--key-file",
            "k",
        ])
        .into_config(2, no_disk)
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot listen on TLS for 127.0.0.1:2380: KeyFile and CertFile are not presented"
        );
    }

    #[test]
    fn https_urls_take_their_port_flags_and_say_they_speak_tls() {
        let config = parse(&[
            "--listen-client-urls=https://127.0.0.1:2379,http://127.0.0.1:22379",
            "--cert-file=server.crt",
            "--key-file=server.key",
            "--client-cert-auth=true",
            "--trusted-ca-file=ca.crt",
            "--listen-peer-urls=https://127.0.0.1:2380",
            "--peer-auto-tls",
            "--peer-client-cert-auth",
        ])
        .into_config(2, no_disk)
        .unwrap();
        let tls: Vec<bool> = config.listen_client.iter().map(|listen| listen.tls).collect();
        assert_eq!(tls, [true, false]);
        assert!(config.listen_peer[0].tls);
        assert!(config.client_tls.client_cert_auth);
        assert_eq!(config.client_tls.cert_file, Some(PathBuf::from("server.crt")));
        assert!(config.peer_tls.auto_tls && config.peer_tls.client_cert_auth);
        assert_eq!(config.client_hosts, ["127.0.0.1"]);
    }

    #[test]
    fn boolean_flags_take_gos_spellings_and_no_separate_value() {
        for (arg, value) in [
            ("--client-cert-auth", true),
            ("--client-cert-auth=true", true),
            ("--client-cert-auth=1", true),
            ("--client-cert-auth=F", false),
        ] {
            assert_eq!(parse(&[arg]).client_cert_auth, value, "{arg}");
        }
        assert!(Flags::try_parse_from(["ringkv", "--client-cert-auth=yes"]).is_err());
        // As Go's flag package: a bool flag takes no value after a space.
        assert!(Flags::try_parse_from(["ringkv", "--client-cert-auth", "true"]).is_err());
    }

    #[test]
    fn initial_cluster_groups_urls_by_name_and_must_name_this_member() {
        let config = parse(&[
            "--name",
            "b",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2382",
            "--initial-cluster",
            "a=http://127.0.0.1:2380,a=http://10.0.0.1:2380,b=http://127.0.0.1:2382",
        ])
        .into_config(2, no_disk)
        .unwrap();
        assert_eq!(config.initial_cluster.len(), 2);
        assert_eq!(config.initial_cluster[0].peer_urls.len(), 2);
        let error = parse(&["--name", "c", "--initial-cluster", "a=http://127.0.0.1:2380"])
            .into_config(2, no_disk)
            .unwrap_err();
        assert!(matches!(error, ConfigError::InitialCluster(_)), "{error}");
        let error = parse(&["--initial-cluster", "default=http://127.0.0.1:9"])
            .into_config(2, no_disk)
            .unwrap_err();
        assert!(error.to_string().contains("does not match"), "{error}");
    }

    #[test]
    fn election_timeout_must_be_five_heartbeats_as_in_etcd() {
        let error = parse(&["--heartbeat-interval", "100", "--election-timeout", "400"])
            .into_config(2, no_disk)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "--election-timeout[400ms] should be at least as 5 times as --heartbeat-interval[100ms]"
        );
        let config = parse(&["--heartbeat-interval", "50", "--election-timeout", "500"])
            .into_config(2, no_disk)
            .unwrap();
        assert_eq!(config.election_ticks, 10);
        assert_eq!(config.heartbeat_interval, Duration::from_millis(50));
    }

    #[test]
    fn corruption_checks_are_off_by_default_and_take_etcds_spellings() {
        let config = parse(&[]).into_config(2, no_disk).unwrap();
        assert!(!config.initial_corrupt_check);
        assert_eq!(config.corrupt_check_interval, None);
        let config = parse(&[
            "--experimental-initial-corrupt-check=true",
            "--experimental-corrupt-check-time=90s",
        ])
        .into_config(2, no_disk)
        .unwrap();
        assert!(config.initial_corrupt_check);
        assert_eq!(config.corrupt_check_interval, Some(Duration::from_secs(90)));
        let config = parse(&[
            "--experimental-initial-corrupt-check",
            "--experimental-corrupt-check-time",
            "0",
        ])
        .into_config(2, no_disk)
        .unwrap();
        assert!(config.initial_corrupt_check);
        assert_eq!(config.corrupt_check_interval, None, "0 is off, as in etcd");
    }

    #[test]
    fn missing_cpu_is_refused() {
        let error = parse(&["--store-cpu", "7"]).into_config(2, no_disk).unwrap_err();
        assert!(matches!(error, ConfigError::NoSuchCpu { cpu: 7, .. }));
    }
}

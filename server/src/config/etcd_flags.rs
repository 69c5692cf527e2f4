//! etcd 3.5's server flags that ringkv does not take as its own, each with its
//! answer: accepted with a logged warning (it has no meaning in ringkv's
//! design, or changes nothing ringkv does), or refused at start with ringkv's
//! own message naming it ("ringkv does not support --discovery yet"), never
//! clap's generic "unexpected argument". The same for their `ETCD_*`
//! variables. The command line is screened before clap reads it, so `--help`
//! lists only what ringkv does; the README's flag table lists them all.
//!
//! Go's flag syntax is taken as Go takes it: `-flag` as well as `--flag`,
//! `--flag=value` or `--flag value`, and a boolean flag's value only after `=`.

use std::ffi::OsString;

/// What ringkv does with an etcd flag it does not implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Accepted and warned about, with why it changes nothing.
    Ignored(&'static str),
    /// Refused at start.
    Refused,
}

/// One etcd flag: its name, whether it is a Go boolean (its value only after
/// `=`), and ringkv's answer.
#[derive(Debug, Clone, Copy)]
pub struct EtcdFlag {
    pub name: &'static str,
    pub boolean: bool,
    pub answer: Answer,
}

const fn ignored(name: &'static str, boolean: bool, why: &'static str) -> EtcdFlag {
    EtcdFlag {
        name,
        boolean,
        answer: Answer::Ignored(why),
    }
}

const fn refused(name: &'static str, boolean: bool) -> EtcdFlag {
    EtcdFlag {
        name,
        boolean,
        answer: Answer::Refused,
    }
}

const NO_BBOLT: &str = "ringkv's page store is not bbolt";
const NO_V2: &str = "ringkv serves the v3 API only";
const LOGS: &str = "ringkv's logs follow --logger, --log-outputs and --log-level";
const NO_TRACING: &str = "ringkv exports no traces";
const NO_COMPACT_HASH_CHECK: &str = "ringkv does not run etcd 3.5's hash check at compactions \
     (--experimental-corrupt-check-time runs the periodic check)";

/// Every etcd 3.5 server flag that is not one of ringkv's own.
pub const ETCD_FLAGS: &[EtcdFlag] = &[
    refused("wal-dir", false),
    ignored(
        "max-snapshots",
        false,
        "ringkv keeps no snapshot files: the page store is the snapshot",
    ),
    ignored(
        "max-wals",
        false,
        "ringkv recycles a WAL segment once a page-store commit covers it",
    ),
    ignored(
        "initial-election-tick-advance",
        true,
        "a ringkv member campaigns after a full election timeout",
    ),
    ignored("experimental-backend-bbolt-freelist-type", false, NO_BBOLT),
    ignored("backend-bbolt-freelist-type", false, NO_BBOLT),
    ignored(
        "grpc-keepalive-min-time",
        false,
        "ringkv's HTTP/2 server answers client pings at any rate",
    ),
    ignored(
        "grpc-keepalive-interval",
        false,
        "ringkv's HTTP/2 server does not ping idle clients",
    ),
    ignored(
        "grpc-keepalive-timeout",
        false,
        "ringkv's HTTP/2 server does not ping idle clients",
    ),
    refused("discovery", false),
    refused("discovery-fallback", false),
    refused("discovery-proxy", false),
    refused("discovery-srv", false),
    refused("discovery-srv-name", false),
    ignored(
        "strict-reconfig-check",
        true,
        "ringkv always checks reconfigurations strictly, as etcd's default",
    ),
    ignored("pre-vote", true, "ringkv's members always pre-vote"),
    ignored("enable-v2", true, NO_V2),
    ignored("experimental-enable-v2v3", false, NO_V2),
    ignored("v2-deprecation", false, NO_V2),
    ignored(
        "cors",
        false,
        "ringkv's HTTP answers allow every origin (etcd's default, *); a list of origins is not enforced",
    ),
    ignored(
        "host-whitelist",
        false,
        "ringkv accepts every Host header (etcd's default, *); a list of hosts is not enforced",
    ),
    ignored("enable-pprof", true, "ringkv has no Go runtime to profile"),
    ignored("log-format", false, LOGS),
    ignored("enable-log-rotation", true, LOGS),
    ignored("log-rotation-config-json", false, LOGS),
    ignored("log-package-levels", false, LOGS),
    ignored("debug", true, LOGS),
    refused("proxy", false),
    ignored("proxy-failure-wait", false, "ringkv has no proxy mode"),
    ignored("proxy-refresh-interval", false, "ringkv has no proxy mode"),
    ignored("proxy-dial-timeout", false, "ringkv has no proxy mode"),
    ignored("proxy-write-timeout", false, "ringkv has no proxy mode"),
    ignored("proxy-read-timeout", false, "ringkv has no proxy mode"),
    refused("force-new-cluster", true),
    ignored("experimental-compact-hash-check-enabled", true, NO_COMPACT_HASH_CHECK),
    ignored("experimental-compact-hash-check-time", false, NO_COMPACT_HASH_CHECK),
    ignored(
        "experimental-enable-lease-checkpoint",
        true,
        "ringkv has no lease checkpoints: a new leader renews every lease in full, as etcd without them",
    ),
    ignored(
        "experimental-enable-lease-checkpoint-persist",
        true,
        "ringkv has no lease checkpoints",
    ),
    ignored(
        "experimental-compaction-batch-limit",
        false,
        "ringkv compacts in bounded steps of its own",
    ),
    ignored(
        "experimental-peer-skip-client-san-verification",
        true,
        "ringkv checks a peer's host names only under --peer-cert-allowed-hostname",
    ),
    ignored(
        "experimental-warning-apply-duration",
        false,
        "ringkv does not warn about slow applies",
    ),
    ignored(
        "experimental-warning-unary-request-duration",
        false,
        "ringkv does not warn about slow requests",
    ),
    ignored("experimental-txn-mode-write-with-shared-buffer", true, NO_BBOLT),
    ignored(
        "experimental-bootstrap-defrag-threshold-megabytes",
        false,
        "ringkv defragments online, when asked",
    ),
    ignored(
        "experimental-max-learners",
        false,
        "ringkv allows one learner at a time, etcd's default",
    ),
    ignored(
        "experimental-snapshot-catchup-entries",
        false,
        "--snapshot-count is how many entries a ringkv member keeps for followers",
    ),
    ignored(
        "experimental-downgrade-check-time",
        false,
        "ringkv has one storage version: Downgrade answers UNIMPLEMENTED",
    ),
    ignored("experimental-memory-mlock", true, "ringkv does not lock its memory"),
    ignored(
        "experimental-wait-cluster-ready-timeout",
        false,
        "a ringkv member serves once its store has recovered",
    ),
    ignored(
        "experimental-stop-grpc-service-on-defrag",
        true,
        "ringkv defragments online, serving meanwhile",
    ),
    ignored("experimental-enable-distributed-tracing", true, NO_TRACING),
    ignored("experimental-distributed-tracing-address", false, NO_TRACING),
    ignored("experimental-distributed-tracing-service-name", false, NO_TRACING),
    ignored("experimental-distributed-tracing-instance-id", false, NO_TRACING),
    ignored("experimental-distributed-tracing-sampling-rate", false, NO_TRACING),
    ignored("unsafe-no-fsync", true, "ringkv always syncs before it answers"),
    ignored(
        "socket-reuse-address",
        true,
        "ringkv always sets SO_REUSEADDR on its listeners",
    ),
    ignored(
        "socket-reuse-port",
        true,
        "ringkv never shares a port with another process",
    ),
    ignored(
        "client-cert-file",
        false,
        "ringkv has no gRPC gateway that dials its own client port",
    ),
    ignored(
        "client-key-file",
        false,
        "ringkv has no gRPC gateway that dials its own client port",
    ),
    refused("listen-client-http-urls", false),
    refused("config-file", false),
];

/// A flag or variable ringkv refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnsupportedFlag {
    #[error("ringkv does not support --{0} yet")]
    Flag(&'static str),
    #[error("ringkv does not support {variable} (--{flag}) yet")]
    Variable { variable: String, flag: &'static str },
    #[error("flag needs an argument: --{0}")]
    NoValue(&'static str),
}

/// The command line with etcd's flags that ringkv ignores taken out, Go's
/// single-dash spellings made double, and a warning for each flag or
/// variable ignored; or the first refused one.
pub fn screen(
    args: impl IntoIterator<Item = OsString>,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(Vec<OsString>, Vec<String>), UnsupportedFlag> {
    let mut warnings = Vec::new();
    let mut kept = Vec::new();
    let mut args = args.into_iter();
    kept.extend(args.next()); // the program's name
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str().map(str::to_string) else {
            kept.push(arg);
            continue;
        };
        if text == "--" {
            kept.push(arg);
            kept.extend(args.by_ref());
            break;
        }
        let text = go_spelling(&text);
        let Some(body) = text.strip_prefix("--") else {
            kept.push(OsString::from(text));
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        let Some(flag) = ETCD_FLAGS.iter().find(|flag| flag.name == name) else {
            kept.push(OsString::from(text.clone()));
            continue;
        };
        let value = match (inline, flag.boolean) {
            (Some(value), _) => value.to_string(),
            (None, true) => "true".to_string(),
            (None, false) => args
                .next()
                .and_then(|value| value.into_string().ok())
                .ok_or(UnsupportedFlag::NoValue(flag.name))?,
        };
        match flag.answer {
            Answer::Refused => return Err(UnsupportedFlag::Flag(flag.name)),
            Answer::Ignored(why) => warnings.push(format!("--{}={value} ignored: {why}", flag.name)),
        }
    }
    for (variable, value) in vars {
        let Some(flag) = ETCD_FLAGS.iter().find(|flag| variable_name(flag.name) == variable) else {
            continue;
        };
        match flag.answer {
            Answer::Refused => {
                return Err(UnsupportedFlag::Variable {
                    variable,
                    flag: flag.name,
                })
            }
            Answer::Ignored(why) => warnings.push(format!("{variable}={value} ignored: {why}")),
        }
    }
    Ok((kept, warnings))
}

/// Go's flag package takes `-name` for `--name`; clap takes only the latter
/// for a long flag (a single letter after one dash stays a short flag).
fn go_spelling(arg: &str) -> String {
    let is_single_dash_long =
        arg.starts_with('-') && !arg.starts_with("--") && arg[1..].split('=').next().is_some_and(|name| name.len() > 1);
    if is_single_dash_long {
        format!("-{arg}")
    } else {
        arg.to_string()
    }
}

/// The variable etcd reads a flag from: `ETCD_` and the name in capitals,
/// dashes as underscores.
pub fn variable_name(flag: &str) -> String {
    format!("ETCD_{}", flag.to_uppercase().replace('-', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        std::iter::once("ringkv")
            .chain(list.iter().copied())
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn ignored_flags_are_taken_out_with_their_values_and_warned_about() {
        let (kept, warnings) = screen(
            args(&[
                "--name=a",
                "--max-wals",
                "5",
                "--experimental-compact-hash-check-enabled=true",
                "--enable-v2",
                "--data-dir",
                "d",
            ]),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(kept, args(&["--name=a", "--data-dir", "d"]));
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].starts_with("--max-wals=5 ignored: "), "{warnings:?}");
    }

    #[test]
    fn refused_flags_and_variables_name_themselves() {
        let error = screen(args(&["--discovery=https://x"]), Vec::new()).unwrap_err();
        assert_eq!(error.to_string(), "ringkv does not support --discovery yet");
        let error = screen(args(&["-force-new-cluster"]), Vec::new()).unwrap_err();
        assert_eq!(error.to_string(), "ringkv does not support --force-new-cluster yet");
        let vars = vec![("ETCD_DISCOVERY_SRV".to_string(), "example.com".to_string())];
        let error = screen(args(&[]), vars).unwrap_err();
        assert_eq!(
            error.to_string(),
            "ringkv does not support ETCD_DISCOVERY_SRV (--discovery-srv) yet"
        );
    }

    #[test]
    fn gos_single_dash_spelling_reaches_clap_as_a_long_flag() {
        let (kept, _) = screen(args(&["-name=a", "-data-dir", "d", "-h"]), Vec::new()).unwrap();
        assert_eq!(kept, args(&["--name=a", "--data-dir", "d", "-h"]));
    }

    #[test]
    fn no_etcd_flag_is_also_one_of_ringkvs() {
        use clap::CommandFactory;
        let command = super::super::Flags::command();
        for flag in ETCD_FLAGS {
            assert!(
                command.get_arguments().all(|arg| arg.get_long() != Some(flag.name)),
                "--{} is both ringkv's and in the table",
                flag.name
            );
        }
    }

    #[test]
    fn every_etcd_35_server_flag_has_an_answer() {
        use clap::CommandFactory;
        let command = super::super::Flags::command();
        let ringkvs = |name: &str| {
            command
                .get_arguments()
                .any(|arg| arg.get_long() == Some(name) || arg.get_all_aliases().is_some_and(|a| a.contains(&name)))
        };
        for name in ETCD_35_FLAGS {
            assert!(
                ringkvs(name) || ETCD_FLAGS.iter().any(|flag| flag.name == *name),
                "--{name} has no answer"
            );
        }
    }

    /// `etcd --help` of etcd 3.5.16, flag names only.
    const ETCD_35_FLAGS: &[&str] = &[
        "name",
        "data-dir",
        "wal-dir",
        "snapshot-count",
        "heartbeat-interval",
        "election-timeout",
        "initial-election-tick-advance",
        "listen-peer-urls",
        "listen-client-urls",
        "listen-client-http-urls",
        "max-snapshots",
        "max-wals",
        "quota-backend-bytes",
        "backend-bbolt-freelist-type",
        "backend-batch-interval",
        "backend-batch-limit",
        "max-txn-ops",
        "max-request-bytes",
        "max-concurrent-streams",
        "grpc-keepalive-min-time",
        "grpc-keepalive-interval",
        "grpc-keepalive-timeout",
        "socket-reuse-port",
        "socket-reuse-address",
        "initial-advertise-peer-urls",
        "initial-cluster",
        "initial-cluster-state",
        "initial-cluster-token",
        "advertise-client-urls",
        "discovery",
        "discovery-fallback",
        "discovery-proxy",
        "discovery-srv",
        "discovery-srv-name",
        "strict-reconfig-check",
        "pre-vote",
        "auto-compaction-retention",
        "auto-compaction-mode",
        "enable-v2",
        "v2-deprecation",
        "cert-file",
        "key-file",
        "client-cert-file",
        "client-key-file",
        "client-cert-auth",
        "client-crl-file",
        "client-cert-allowed-hostname",
        "trusted-ca-file",
        "auto-tls",
        "peer-cert-file",
        "peer-key-file",
        "peer-client-cert-file",
        "peer-client-key-file",
        "peer-client-cert-auth",
        "peer-trusted-ca-file",
        "peer-cert-allowed-cn",
        "peer-cert-allowed-hostname",
        "peer-auto-tls",
        "self-signed-cert-validity",
        "peer-crl-file",
        "cipher-suites",
        "cors",
        "host-whitelist",
        "tls-min-version",
        "tls-max-version",
        "auth-token",
        "bcrypt-cost",
        "auth-token-ttl",
        "enable-pprof",
        "metrics",
        "listen-metrics-urls",
        "logger",
        "log-outputs",
        "log-level",
        "enable-log-rotation",
        "log-rotation-config-json",
        "proxy",
        "proxy-failure-wait",
        "proxy-refresh-interval",
        "proxy-dial-timeout",
        "proxy-write-timeout",
        "proxy-read-timeout",
        "experimental-initial-corrupt-check",
        "experimental-corrupt-check-time",
        "experimental-compact-hash-check-enabled",
        "experimental-compact-hash-check-time",
        "experimental-enable-v2v3",
        "experimental-enable-lease-checkpoint",
        "experimental-enable-lease-checkpoint-persist",
        "experimental-compaction-batch-limit",
        "experimental-peer-skip-client-san-verification",
        "experimental-watch-progress-notify-interval",
        "experimental-warning-apply-duration",
        "experimental-txn-mode-write-with-shared-buffer",
        "experimental-warning-unary-request-duration",
        "experimental-bootstrap-defrag-threshold-megabytes",
        "experimental-max-learners",
        "experimental-snapshot-catchup-entries",
        "experimental-downgrade-check-time",
        "experimental-memory-mlock",
        "experimental-wait-cluster-ready-timeout",
        "experimental-stop-grpc-service-on-defrag",
        "experimental-enable-distributed-tracing",
        "experimental-distributed-tracing-address",
        "experimental-distributed-tracing-service-name",
        "experimental-distributed-tracing-instance-id",
        "experimental-distributed-tracing-sampling-rate",
        "experimental-backend-bbolt-freelist-type",
        "force-new-cluster",
        "unsafe-no-fsync",
        "debug",
        "log-package-levels",
        "log-format",
        "config-file",
    ];
}

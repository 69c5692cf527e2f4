//! The server's integration tests, as one test binary: real `ringkv` (and
//! `etcd`) processes on 127.0.0.1, one module per suite, `support` compiled
//! once for all of them.
//!
//! Run one suite by its module path, e.g.
//! `cargo test --release -p ringkv-server --test integration faults::`
//! (the filter matches any part of a test's name, so `differential::` also runs
//! `lease_differential::` and `watch_differential::`).
//!
//! Tests of every suite run side by side in this one process (libtest runs as
//! many at once as there are CPUs), so none may own anything process-wide:
//! ports come from `support::free_port`, files from temporary directories, and
//! nothing changes the process's environment, working directory or signal
//! handlers. Tests that must not run beside each other hold a lock of their
//! own (the disk-full tests, `hostile::disk_full`, run one at a time).

mod support;

mod auth;
mod bad_input;
mod ceiling;
mod cluster;
mod corruption;
mod crash;
mod deploy;
mod differential;
mod etcd_data;
mod etcdctl;
mod faults;
mod gateway;
mod health;
mod hostile;
mod kube_contract;
mod lease_differential;
mod leases;
mod lincheck;
mod lock_election;
mod logs;
mod maintenance;
mod membership;
mod metrics;
mod snapshot_defrag;
mod tls;
mod watch;
mod watch_differential;

//! The bodies of the server's fuzz targets (`fuzz/fuzz_targets/*.rs` are
//! one-line calls of these), and the replay of their committed corpora in
//! `cargo test`. Targets, inputs and the properties each checks:
//! docs/fuzzing.md. The engine's targets and the shared machinery (the
//! executor, the corpus files, seeds) are in `ringkv_engine::fuzzing`.

mod client;
mod peer;
mod raft_entry;
mod raft_step;
mod snapshot_file;

use std::path::PathBuf;

use ringkv_engine::fuzzing::Target;

pub use client::{client_port, grpc_request};
pub use peer::{peer_frames, peer_snapshot};
pub use raft_entry::raft_entry;
pub use raft_step::raft_step;
pub use snapshot_file::snapshot_file;

/// The server's targets.
pub const TARGETS: &[Target] = &[
    Target {
        name: "grpc_request",
        run: grpc_request,
        seeds: client::grpc_seeds,
    },
    Target {
        name: "client_port",
        run: client_port,
        seeds: client::client_port_seeds,
    },
    Target {
        name: "peer_frames",
        run: peer_frames,
        seeds: peer::frame_seeds,
    },
    Target {
        name: "peer_snapshot",
        run: peer_snapshot,
        seeds: peer::snapshot_seeds,
    },
    Target {
        name: "snapshot_file",
        run: snapshot_file,
        seeds: snapshot_file::seeds,
    },
    Target {
        name: "raft_entry",
        run: raft_entry,
        seeds: raft_entry::seeds,
    },
    Target {
        name: "raft_step",
        run: raft_step,
        seeds: raft_step::seeds,
    },
];

/// A directory for the targets that go through real files, in memory
/// (`/dev/shm`) where there is one: one per thread, removed with it.
fn scratch_dir() -> PathBuf {
    thread_local! {
        static SCRATCH: tempfile::TempDir = {
            let shm = std::path::Path::new("/dev/shm");
            let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
            tempfile::Builder::new()
                .prefix("ringkv-fuzz-")
                .tempdir_in(base)
                .expect("a scratch directory")
        };
    }
    SCRATCH.with(|dir| dir.path().to_path_buf())
}

#[cfg(test)]
mod tests {
    use ringkv_engine::fuzzing::{replay, target, write_seeds};

    use super::TARGETS;

    #[test]
    fn every_grpc_request_input_is_answered_without_a_panic() {
        replay(target(TARGETS, "grpc_request"));
    }

    #[test]
    fn every_client_port_input_is_served_without_a_panic() {
        replay(target(TARGETS, "client_port"));
    }

    #[test]
    fn every_peer_frames_input_is_read_without_a_panic_and_reencodes() {
        replay(target(TARGETS, "peer_frames"));
    }

    #[test]
    fn every_peer_snapshot_input_is_received_or_refused_without_a_panic() {
        replay(target(TARGETS, "peer_snapshot"));
    }

    #[test]
    fn every_snapshot_file_input_is_summarized_or_refused_without_a_panic() {
        replay(target(TARGETS, "snapshot_file"));
    }

    #[test]
    fn every_raft_entry_input_decodes_and_validates_without_a_panic() {
        replay(target(TARGETS, "raft_entry"));
    }

    #[test]
    fn every_raft_step_input_is_screened_or_stepped_without_a_panic() {
        replay(target(TARGETS, "raft_step"));
    }

    /// Writes the seeds into `fuzz/corpus/` (after a format change):
    /// `cargo test -p ringkv-server --lib fuzzing -- --ignored`.
    #[test]
    #[ignore]
    fn write_seed_corpora() {
        TARGETS.iter().for_each(write_seeds);
    }
}

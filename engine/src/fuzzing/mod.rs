//! The bodies of the engine's fuzz targets (`fuzz/fuzz_targets/*.rs` are
//! one-line calls of these), and the replay of their committed corpora in
//! `cargo test`. Targets, inputs and the properties each checks:
//! docs/fuzzing.md.
//!
//! Every target takes arbitrary bytes and must return without a panic, an
//! abort, a hang or an allocation out of proportion to its input; where it
//! says so, it also asserts a round trip.

mod store;
mod wal_open;
mod wal_roundtrip;

use std::future::Future;
use std::path::{Path, PathBuf};

pub use store::{larger_page_file, page_store, small_page_file};
pub use wal_open::wal_open;
pub use wal_roundtrip::wal_roundtrip;

/// A fuzz target: its body and the seeds its corpus starts from.
pub struct Target {
    /// The target's file in `fuzz/fuzz_targets/` and its corpus directory in
    /// `fuzz/corpus/`.
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// Real encodings made now by ringkv's own writers, by name.
    pub seeds: fn() -> Vec<(&'static str, Vec<u8>)>,
}

/// The engine's targets.
pub const TARGETS: &[Target] = &[
    Target {
        name: "wal_open",
        run: wal_open,
        seeds: wal_open::seeds,
    },
    Target {
        name: "wal_roundtrip",
        run: wal_roundtrip,
        seeds: wal_roundtrip::seeds,
    },
    Target {
        name: "page_store",
        run: page_store,
        seeds: store::seeds,
    },
];

/// Runs `future` on this thread's glommio executor, made once per thread: a
/// fuzzer calls its target millions of times, and a new executor per call
/// would set up io_uring every time.
pub fn run<T>(future: impl Future<Output = T>) -> T {
    thread_local! {
        static EXECUTOR: glommio::LocalExecutor = glommio::LocalExecutor::default();
    }
    EXECUTOR.with(|executor| executor.run(future))
}

/// The bytes `#[derive(Arbitrary)]` reads as variant `index` of an enum of
/// `count` variants (it scales a little-endian u32), for hand-made seeds.
pub fn variant(index: u32, count: u32) -> [u8; 4] {
    let scaled = (u64::from(index) << 32).div_ceil(u64::from(count));
    u32::try_from(scaled).expect("index < count").to_le_bytes()
}

/// `fuzz/corpus/` of this repository.
pub fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

/// Every committed input of `target`, in name order.
pub fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_root().join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
    let mut paths: Vec<PathBuf> = entries.map(|entry| entry.expect("a directory entry").path()).collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            (path, bytes)
        })
        .collect()
}

/// Writes the target's seeds into `fuzz/corpus/<target>/` as `seed-<name>`.
pub fn write_seeds(target: &Target) {
    let dir = corpus_root().join(target.name);
    std::fs::create_dir_all(&dir).expect("the corpus directory");
    for (name, bytes) in (target.seeds)() {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("a seed file");
    }
}

/// Runs the target over its committed corpus and over its seeds made now (so
/// the seeds follow format changes even before they are written again).
pub fn replay(target: &Target) {
    let committed = corpus(target.name);
    assert!(!committed.is_empty(), "fuzz/corpus/{} holds no input", target.name);
    for (path, bytes) in committed {
        eprintln!("{}: {}", target.name, path.display());
        (target.run)(&bytes);
    }
    for (name, bytes) in (target.seeds)() {
        eprintln!("{}: seed {name}", target.name);
        (target.run)(&bytes);
    }
}

/// The target named `name` in `targets`.
pub fn target<'a>(targets: &'a [Target], name: &str) -> &'a Target {
    targets
        .iter()
        .find(|target| target.name == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wal_open_input_is_refused_or_opened_without_a_panic() {
        replay(target(TARGETS, "wal_open"));
    }

    #[test]
    fn every_wal_roundtrip_input_reads_back_what_was_written() {
        replay(target(TARGETS, "wal_roundtrip"));
    }

    #[test]
    fn every_page_store_input_is_refused_or_read_without_a_panic() {
        replay(target(TARGETS, "page_store"));
    }

    /// Writes the seeds into `fuzz/corpus/` (after a format change):
    /// `cargo test -p ringkv-engine --lib fuzzing -- --ignored`.
    #[test]
    #[ignore]
    fn write_seed_corpora() {
        TARGETS.iter().for_each(write_seeds);
    }
}

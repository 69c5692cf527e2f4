//! The snapshot-file target: arbitrary bytes as the file `ringkvutl snapshot
//! status` (and the first steps of `restore`) reads: length and sha256
//! trailer checks, then a page file's copy or an etcd (bbolt) file's import,
//! the whole-tree check and the MVCC summary.

use sha2::{Digest, Sha256};

use prost::Message as _;
use ringkv_datadir::restore;
use ringkv_engine::fuzzing::{larger_page_file, small_page_file};

use super::scratch_dir;

/// Flag bits of the first input byte.
const APPEND_TRAILER: u8 = 1;
const SKIP_HASH_CHECK: u8 = 2;

/// Input: a flag byte, then the file. With `APPEND_TRAILER` the file gets
/// the sha256 trailer of its bytes (so the pages behind it are read); with
/// `SKIP_HASH_CHECK` it is read as `--skip-hash-check` does.
pub fn snapshot_file(data: &[u8]) {
    let Some((&flags, file)) = data.split_first() else {
        return;
    };
    let mut file = file.to_vec();
    if flags & APPEND_TRAILER != 0 {
        let digest = Sha256::digest(&file);
        file.extend_from_slice(&digest);
    }
    let dir = scratch_dir();
    let path = dir.join("snapshot.db");
    std::fs::write(&path, &file).expect("a scratch file");
    let _ = restore::status(&path, &dir, flags & SKIP_HASH_CHECK != 0);
    std::fs::remove_file(&path).expect("the scratch file");
}

pub(super) fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("small-with-trailer", [vec![APPEND_TRAILER], small_page_file()].concat()),
        (
            "larger-bare",
            [
                vec![SKIP_HASH_CHECK],
                larger_page_file(super::peer::membership().encode_to_vec()),
            ]
            .concat(),
        ),
        // etcd 3.4.23's `snapshot save`, trailer included: the etcd importer.
        ("etcd-3.4-snapshot", [&[0u8][..], ETCD_SNAPSHOT].concat()),
    ]
}

/// A snapshot etcd 3.4.23 wrote (see `ringkv_etcdfile::import`'s tests).
const ETCD_SNAPSHOT: &[u8] = include_bytes!("../../../etcdfile/testdata/etcd-3.4.23-history.db");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_are_snapshots_status_reads() {
        for (name, seed) in seeds() {
            let mut file = seed[1..].to_vec();
            if seed[0] & APPEND_TRAILER != 0 {
                let digest = Sha256::digest(&file);
                file.extend_from_slice(&digest);
            }
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("snapshot.db");
            std::fs::write(&path, &file).unwrap();
            let summary = restore::status(&path, dir.path(), seed[0] & SKIP_HASH_CHECK != 0)
                .unwrap_or_else(|error| panic!("{name}: {error}"));
            assert!(summary.keys >= 2, "{name}");
        }
    }
}

//! The page-store target: arbitrary page-file bytes opened as the B-tree and
//! as the MVCC store (the simulated page I/O, so meta pages, freelist pages,
//! node pages and overflow chains are all read from the fuzzer's bytes).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use crate::btree::Tree;
use crate::mvcc::{Alarm, KeySpan, Mvcc, RangeEnd, RangeOptions};
use crate::page::sim::SimPageIo;
use crate::page::{get_u64, seal_page, PageIo, PAGE_BYTES};

/// Flag bits of the first input byte.
const RESTAMP_CHECKSUMS: u8 = 1;
const RESTAMP_IDS: u8 = 2;
/// Keys written into a tree that passed its check.
const WRITES: &[&[u8]] = &[b"\x00", b"fuzz", b"m", b"r\xff\xff", b"zz"];

/// Input: a flag byte, then the page file. With `RESTAMP_CHECKSUMS` every
/// whole page gets its checksum recomputed (and with `RESTAMP_IDS` its id set
/// to its place) first, so the layouts behind the checksum are what the
/// fuzzer explores. Reads must fail cleanly or succeed; a tree that passes
/// `Tree::check` must take writes and a commit, reopen, pass again and hold
/// what was written.
pub fn page_store(data: &[u8]) {
    let Some((&flags, file)) = data.split_first() else {
        return;
    };
    let mut file = file.to_vec();
    if flags & RESTAMP_CHECKSUMS != 0 {
        for (id, page) in file.chunks_exact_mut(PAGE_BYTES).enumerate() {
            if flags & RESTAMP_IDS != 0 {
                page[16..24].copy_from_slice(&(id as u64).to_le_bytes());
            }
            let txid = get_u64(page, 8);
            seal_page(page, txid);
        }
    }
    let io = SimPageIo::new();
    io.write_at(0, &file).expect("the simulated write");
    io.sync().expect("the simulated sync");
    read_tree(&io);
    read_mvcc(&io);
}

fn read_tree(io: &Arc<SimPageIo>) {
    let Ok(mut tree) = Tree::open_with(io.clone()) else {
        return;
    };
    let mut contents = BTreeMap::new();
    for entry in tree.range(Bound::Unbounded, Bound::Unbounded) {
        let Ok((key, value)) = entry else {
            break;
        };
        contents.insert(key, value);
    }
    for key in WRITES {
        let _ = tree.get(key);
    }
    if tree.check().is_err() {
        return;
    }
    // A checked tree is whole: every read succeeds, writes and a commit work.
    for (key, value) in &contents {
        assert_eq!(tree.get(key).expect("a read of a checked tree").as_ref(), Some(value));
    }
    for (index, key) in WRITES.iter().enumerate() {
        if index % 2 == 0 {
            let value = vec![index as u8; index * 700];
            tree.insert(key, &value).expect("a write to a checked tree");
            contents.insert(key.to_vec(), value);
        } else {
            tree.remove(key).expect("a removal from a checked tree");
            contents.remove(*key);
        }
    }
    tree.commit().expect("a commit of a checked tree");
    let reopened = Tree::open_with(io.clone()).expect("the committed tree opens");
    reopened.check().expect("the committed tree passes its check");
    let read: BTreeMap<Vec<u8>, Vec<u8>> = reopened
        .range(Bound::Unbounded, Bound::Unbounded)
        .map(|entry| entry.expect("a read of a checked tree"))
        .collect();
    assert_eq!(read, contents);
}

fn read_mvcc(io: &Arc<SimPageIo>) {
    let Ok(mvcc) = Mvcc::open_with(io.clone()) else {
        return;
    };
    let everything = KeySpan {
        key: b"\x00",
        end: RangeEnd::ToEnd,
    };
    let _ = mvcc.range(everything, RangeOptions::default());
    let _ = mvcc.range(
        everything,
        RangeOptions {
            rev: mvcc.compact_revision().max(1),
            limit: 3,
            ..RangeOptions::default()
        },
    );
    let _ = mvcc.hash_kv(0);
    let _ = mvcc.hash_all();
    let _ = mvcc.history(mvcc.compact_revision() + 1, mvcc.current_revision(), 100);
    let _ = (
        mvcc.membership(),
        mvcc.conf_state(),
        mvcc.alarms().count(),
        mvcc.key_count(),
    );
}

/// Real page files, cut after their last used page: one leaf; several
/// commits with a branch over leaves, an overflow value, deletions, a lease,
/// an alarm, server records and a compaction (freelist pages too).
pub(super) fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("one-leaf", [&[0u8][..], &small_page_file()].concat()),
        (
            "several-commits",
            [&[0u8][..], &larger_page_file(b"membership".to_vec())].concat(),
        ),
    ]
}

/// The durable bytes of `io` up to the store's last used page.
fn used_bytes(io: &SimPageIo, allocated_bytes: u64) -> Vec<u8> {
    let bytes = io.map().expect("the simulated file");
    bytes[..allocated_bytes as usize].to_vec()
}

/// A page file with two keys in one leaf.
pub fn small_page_file() -> Vec<u8> {
    let io = SimPageIo::new();
    let mut mvcc = Mvcc::open_with(io.clone()).expect("a new store");
    let mut txn = mvcc.write();
    txn.put(b"greeting", b"hello", 0).expect("a put");
    txn.put(b"k", b"v", 0).expect("a put");
    txn.end();
    mvcc.set_applied_index(3);
    mvcc.commit().expect("a commit");
    let allocated = mvcc.allocated_bytes();
    used_bytes(&io, allocated)
}

/// A page file of several commits (see [`seeds`]) whose membership record is
/// `membership` (the engine keeps it as bytes; the server's seeds give it one
/// the server decodes).
pub fn larger_page_file(membership: Vec<u8>) -> Vec<u8> {
    let io = SimPageIo::new();
    let mut mvcc = Mvcc::open_with(io.clone()).expect("a new store");
    mvcc.grant_lease(7, 60).expect("a lease");
    // Enough keys for two levels: leaves under a branch.
    for (round, keys) in [(0u8, 0..90u8), (1, 0..20)] {
        let mut txn = mvcc.write();
        for key in keys {
            txn.put(format!("key/{key:03}").as_bytes(), &[round; 40], 0)
                .expect("a put");
        }
        txn.end();
        mvcc.commit().expect("a commit");
    }
    let mut txn = mvcc.write();
    txn.put(b"large", &[9; 4500], 7).expect("a put");
    txn.delete_range(KeySpan {
        key: b"key/030",
        end: RangeEnd::Until(b"key/040"),
    })
    .expect("a delete");
    txn.end();
    mvcc.activate_alarm(Alarm { member_id: 1, kind: 1 });
    mvcc.set_membership(membership);
    mvcc.set_conf_state(vec![8, 1]);
    mvcc.set_applied_index(42);
    mvcc.compact(mvcc.current_revision() - 1).expect("a compaction");
    while !mvcc.compact_step(1000).expect("a compaction step") {}
    mvcc.commit().expect("a commit");
    let allocated = mvcc.allocated_bytes();
    used_bytes(&io, allocated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_are_stores_that_open_and_pass_their_check() {
        for (name, seed) in seeds() {
            let io = SimPageIo::new();
            io.write_at(0, &seed[1..]).unwrap();
            io.sync().unwrap();
            let report = Tree::open_with(io.clone())
                .unwrap()
                .check()
                .unwrap_or_else(|error| panic!("{name}: {error}"));
            if name == "several-commits" {
                assert!(report.depth >= 2, "{name}: a tree of {} levels", report.depth);
            }
            let mvcc = Mvcc::open_with(io).unwrap();
            assert!(mvcc.key_count() >= 2, "{name}");
        }
    }
}

//! The tree against a `BTreeMap` model: random inserts, removes, reads, ranges,
//! commits, reopens, and commits that fail part-way (after which reopening must
//! give exactly the last durable state). The integrity check runs after every
//! step that changes structure.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use proptest::prelude::*;

use super::node::{KEY_BYTES_MAX, NODE_BYTES_MAX};
use super::overflow::OVERFLOW_DATA_BYTES;
use super::{EndsWanted, StoredEnds, Tree};
use crate::page::sim::SimPageIo;
use crate::page::{PageError, PageId, PageIo, SnapshotSource, HEADER_BYTES, PAGE_BYTES};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Clone)]
enum Op {
    /// Inserts `value`, asking its leaf to keep `ends` of it.
    Insert {
        key: u16,
        pad: usize,
        value: Vec<u8>,
        ends: EndsWanted,
    },
    /// Inserts `count` keys, each after every key in the tree (as revision
    /// keys arrive), with values of `value_len` bytes.
    Append {
        count: u16,
        value_len: usize,
    },
    Remove {
        key: u16,
        pad: usize,
    },
    RemoveRun {
        from: u16,
        count: u16,
    },
    Get {
        key: u16,
        pad: usize,
    },
    Range {
        from: u16,
        to: u16,
        excluded: bool,
    },
    Commit,
    Reopen,
    /// A commit whose n-th write fails; then the process "dies" and restarts.
    FailedCommit {
        writes_before_failure: u32,
        seed: u64,
    },
    /// A whole defragmentation: bounded steps, each committed, then a trim.
    Defragment {
        leaves_per_step: usize,
    },
    /// Commits, then pins the durable state for a snapshot read later.
    PinSnapshot,
    /// Reads the oldest pinned snapshot, checks it against the model of its
    /// time, and unpins it.
    ReadSnapshot,
    /// Puts a value of 64 pages at `key` (so the file sometimes has to grow),
    /// then commits while the file cannot grow. If it has to, the commit
    /// stalls (writes nothing) and the ops after it build the next transaction
    /// over it, until the next commit retries it with room back, or a restart
    /// finds the state before it.
    CommitWithoutRoom {
        key: u16,
    },
}

/// Keys share prefixes and sometimes run long, so nodes split at varied points.
fn key(index: u16, pad: usize) -> Vec<u8> {
    let mut key = format!("k{index:05}").into_bytes();
    key.resize(key.len() + pad, b'.');
    key.truncate(KEY_BYTES_MAX);
    key
}

/// The `n`th appended key: after every key `key` makes, and after the ones
/// appended before it.
fn appended_key(n: u32) -> Vec<u8> {
    format!("z{n:08}").into_bytes()
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop::collection::vec(any::<u8>(), 0..40),
        2 => prop::collection::vec(any::<u8>(), 300..1100),
        1 => prop::collection::vec(any::<u8>(), 1100..2100),
        1 => (1usize..4).prop_map(|pages| vec![0xab; pages * OVERFLOW_DATA_BYTES - 7]),
        // Whole pages and a rest its leaf can keep.
        1 => (1usize..3, 0usize..900).prop_map(|(pages, rest)| {
            (0..pages * OVERFLOW_DATA_BYTES + rest).map(|i| (i % 251) as u8).collect()
        }),
    ]
}

fn ends() -> impl Strategy<Value = EndsWanted> {
    prop_oneof![
        2 => Just(EndsWanted::default()),
        1 => (0usize..200, 0usize..20).prop_map(|(front, back)| EndsWanted { front, back }),
        1 => (0usize..1100, 0usize..1100).prop_map(|(front, back)| EndsWanted { front, back }),
    ]
}

fn pad() -> impl Strategy<Value = usize> {
    prop_oneof![8 => Just(0usize), 1 => 0usize..600]
}

fn op(keys: u16) -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (0..keys, pad(), value(), ends()).prop_map(|(key, pad, value, ends)| Op::Insert {
            key,
            pad,
            value,
            ends
        }),
        3 => (1..60u16, 0usize..600).prop_map(|(count, value_len)| Op::Append { count, value_len }),
        10 => (0..keys, pad()).prop_map(|(key, pad)| Op::Remove { key, pad }),
        2 => (0..keys, 1..200u16).prop_map(|(from, count)| Op::RemoveRun { from, count }),
        6 => (0..keys, pad()).prop_map(|(key, pad)| Op::Get { key, pad }),
        3 => (0..keys, 0..keys, any::<bool>()).prop_map(|(from, to, excluded)| Op::Range { from, to, excluded }),
        3 => Just(Op::Commit),
        2 => Just(Op::Reopen),
        1 => (0u32..40, any::<u64>()).prop_map(|(writes_before_failure, seed)| Op::FailedCommit {
            writes_before_failure,
            seed
        }),
        1 => (1usize..8).prop_map(|leaves_per_step| Op::Defragment { leaves_per_step }),
        1 => Just(Op::PinSnapshot),
        1 => Just(Op::ReadSnapshot),
        1 => (0..keys).prop_map(|key| Op::CommitWithoutRoom { key }),
    ]
}

fn open(io: &Arc<SimPageIo>) -> Tree {
    Tree::open_with(Arc::clone(io) as Arc<dyn PageIo>).expect("the page file opens")
}

fn contents(tree: &Tree) -> Model {
    tree.range(Bound::Unbounded, Bound::Unbounded)
        .collect::<Result<_, _>>()
        .expect("a full scan")
}

/// Defragments `tree` completely, committing after every step: a second pass
/// when the first packed leaves and so lowered the target (as the server does).
fn defragment(tree: &mut Tree, leaves_per_step: usize) {
    let mut from = Vec::new();
    let mut target = tree.relocation_target();
    let mut passes = 1;
    // Every step visits at least one leaf: bounded by the leaf count.
    for _ in 0..100_000 {
        let next = tree.relocate_step(&from, target, leaves_per_step).unwrap();
        tree.commit().unwrap();
        match next {
            Some(key) => from = key,
            None if passes < 2 && tree.relocation_target() < target => {
                passes += 1;
                target = tree.relocation_target();
                from = Vec::new();
            }
            None => {
                // As the server does: settle, then trim (see store::core::space).
                tree.commit().unwrap();
                tree.request_trim();
                tree.commit().unwrap();
                return;
            }
        }
    }
    panic!("defragmentation did not finish");
}

/// Reads a whole snapshot and opens it as a tree of its own.
fn read_snapshot(source: &mut SnapshotSource) -> Tree {
    let mut image = Vec::new();
    let mut buf = vec![0; 3 * PAGE_BYTES];
    loop {
        let n = source.read(&mut buf).unwrap();
        image.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            break;
        }
    }
    assert_eq!(image.len() as u64, source.total_bytes());
    let io = SimPageIo::new();
    io.write_at(0, &image).unwrap();
    io.sync().unwrap();
    open(&io)
}

/// The room is back: the commit that found none is made.
fn retry_with_room(tree: &mut Tree, io: &SimPageIo) {
    io.limit_file_bytes(None);
    let result = tree.retry_commit().execute();
    tree.finish_commit(result).unwrap();
}

fn run(ops: Vec<Op>) {
    let io = SimPageIo::new();
    let mut tree = open(&io);
    let mut model = Model::new();
    let mut durable = Model::new();
    let mut snapshots: VecDeque<(SnapshotSource, Model)> = VecDeque::new();
    // The model of a commit that found no room, while it waits.
    let mut stalled: Option<Model> = None;
    let mut appended = 0u32;
    for (step, op) in ops.into_iter().enumerate() {
        let commits = matches!(
            op,
            Op::Commit
                | Op::Defragment { .. }
                | Op::PinSnapshot
                | Op::FailedCommit { .. }
                | Op::CommitWithoutRoom { .. }
        );
        if let Some(then) = stalled.take_if(|_| commits) {
            retry_with_room(&mut tree, &io);
            durable = then;
        }
        match op {
            Op::Insert {
                key: k,
                pad,
                value,
                ends,
            } => {
                tree.insert_with_ends(&key(k, pad), &value, ends).unwrap();
                model.insert(key(k, pad), value);
            }
            Op::Append { count, value_len } => {
                for _ in 0..count {
                    let value = vec![appended as u8; value_len];
                    tree.insert(&appended_key(appended), &value).unwrap();
                    model.insert(appended_key(appended), value);
                    appended += 1;
                }
            }
            Op::Remove { key: k, pad } => {
                assert_eq!(tree.remove(&key(k, pad)).unwrap(), model.remove(&key(k, pad)).is_some());
            }
            Op::RemoveRun { from, count } => {
                let doomed: Vec<Vec<u8>> = model
                    .range(key(from, 0)..)
                    .take(count as usize)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in doomed {
                    assert!(tree.remove(&k).unwrap());
                    model.remove(&k);
                }
            }
            Op::Get { key: k, pad } => {
                assert_eq!(tree.get(&key(k, pad)).unwrap().as_ref(), model.get(&key(k, pad)));
            }
            Op::Range { from, to, excluded } => {
                let (start, end) = (key(from, 0), key(to, 0));
                let end_bound = if excluded {
                    Bound::Excluded(&end[..])
                } else {
                    Bound::Included(&end[..])
                };
                let got: Vec<(Vec<u8>, Vec<u8>)> = tree
                    .range(Bound::Included(&start[..]), end_bound)
                    .collect::<Result<_, _>>()
                    .unwrap();
                let want: Vec<(Vec<u8>, Vec<u8>)> = if start > end || (excluded && start == end) {
                    Vec::new()
                } else {
                    model
                        .range::<[u8], _>((Bound::Included(&start[..]), end_bound))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                };
                assert_eq!(got, want);
                let ends: Vec<(Vec<u8>, StoredEnds)> = tree
                    .range_ends(Bound::Included(&start[..]), end_bound)
                    .collect::<Result<_, _>>()
                    .unwrap();
                assert_eq!(ends.len(), want.len());
                for ((key, stored), (want_key, value)) in ends.iter().zip(&want) {
                    assert_eq!(key, want_key);
                    match stored {
                        StoredEnds::Whole(whole) => assert_eq!(whole, value),
                        StoredEnds::Parted { len, front, back } => {
                            assert_eq!(*len, value.len());
                            assert!(front.len() + back.len() < value.len());
                            assert_eq!(&value[..front.len()], &front[..]);
                            assert_eq!(&value[value.len() - back.len()..], &back[..]);
                        }
                    }
                }
            }
            Op::Commit => {
                tree.commit().unwrap();
                durable = model.clone();
            }
            Op::Reopen if stalled.is_some() => {
                // A crash: the stalled commit was never made.
                stalled = None;
                drop(tree);
                snapshots.clear();
                io.limit_file_bytes(None);
                tree = open(&io);
                assert_eq!(contents(&tree), durable, "the state before the stalled commit");
                model = durable.clone();
            }
            Op::CommitWithoutRoom { key: k } => {
                let value = vec![0xcd; 64 * OVERFLOW_DATA_BYTES];
                tree.insert(&key(k, 0), &value).unwrap();
                model.insert(key(k, 0), value);
                io.limit_file_bytes(Some(io.size().unwrap()));
                let result = tree.begin_commit().unwrap().execute();
                match tree.finish_commit(result) {
                    Ok(()) => {
                        io.limit_file_bytes(None);
                        durable = model.clone();
                    }
                    Err(PageError::NoSpace { .. }) => stalled = Some(model.clone()),
                    Err(error) => panic!("step {step}: {error}"),
                }
            }
            Op::Reopen => {
                tree.commit().unwrap();
                durable = model.clone();
                drop(tree);
                // A restart ends every reader, and with them their pins.
                snapshots.clear();
                tree = open(&io);
            }
            Op::Defragment { leaves_per_step } => {
                defragment(&mut tree, leaves_per_step);
                durable = model.clone();
            }
            Op::PinSnapshot => {
                tree.commit().unwrap();
                durable = model.clone();
                snapshots.push_back((tree.pin_snapshot().unwrap(), durable.clone()));
            }
            Op::ReadSnapshot => {
                if let Some((mut source, then)) = snapshots.pop_front() {
                    let copy = read_snapshot(&mut source);
                    assert_eq!(contents(&copy), then, "the snapshot holds the state it pinned");
                    copy.check().unwrap();
                    tree.unpin_snapshot(source.txid());
                }
            }
            Op::FailedCommit {
                writes_before_failure,
                seed,
            } => {
                io.fail_write_after(writes_before_failure);
                let plan = tree.begin_commit().unwrap();
                let result = plan.execute();
                let failed = result.is_err();
                if !failed {
                    // Fewer writes than armed: the commit went through.
                    io.clear_faults();
                    durable = model.clone();
                }
                drop(tree);
                io.crash(seed);
                snapshots.clear();
                tree = open(&io);
                model = durable.clone();
            }
        }
        tree.check()
            .unwrap_or_else(|error| panic!("integrity after step {step}: {error}"));
    }
    if stalled.is_some() {
        retry_with_room(&mut tree, &io);
    }
    assert_eq!(contents(&tree), model);
    tree.commit().unwrap();
    drop(tree);
    let tree = open(&io);
    assert_eq!(contents(&tree), model, "after a final reopen");
    tree.check().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn tree_matches_a_btreemap_across_commits_reopens_and_failed_commits(ops in prop::collection::vec(op(3000), 1..1500)) {
        run(ops);
    }

    #[test]
    fn few_keys_many_rewrites(ops in prop::collection::vec(op(40), 1..300)) {
        run(ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Trees deep enough for several branches, thinned out as a compaction
    /// thins revisions: defragmenting packs their leaves and their branches
    /// (which the trees of the tests above rarely have to) and keeps every
    /// key, across a reopen.
    #[test]
    fn defragmenting_a_thinned_tree_keeps_every_key(
        count in 2000u16..6000,
        pad in 0usize..64,
        kept_every in 2u16..6,
        leaves_per_step in 1usize..64,
    ) {
        let io = SimPageIo::new();
        let mut tree = open(&io);
        for k in 0..count {
            tree.insert(&key(k, pad), &[5; 200]).unwrap();
        }
        tree.commit().unwrap();
        for k in (0..count).filter(|k| k % kept_every != 0) {
            tree.remove(&key(k, pad)).unwrap();
        }
        tree.commit().unwrap();
        let model = contents(&tree);
        let sparse = tree.check().unwrap();
        defragment(&mut tree, leaves_per_step);
        prop_assert_eq!(&contents(&tree), &model);
        let packed = tree.check().unwrap();
        prop_assert!(packed.branch_pages <= sparse.branch_pages);
        drop(tree);
        let tree = open(&io);
        prop_assert_eq!(&contents(&tree), &model);
        tree.check().unwrap();
    }
}

#[test]
fn many_keys_split_into_a_deep_tree_and_merge_back_to_nothing() {
    let io = SimPageIo::new();
    let mut tree = open(&io);
    let keys: Vec<Vec<u8>> = (0..20_000u32)
        .map(|i| format!("{:08}", i.wrapping_mul(2_654_435_761) % 1_000_003).into_bytes())
        .collect();
    for (i, key) in keys.iter().enumerate() {
        tree.insert(key, &vec![i as u8; i % 300]).unwrap();
        if i % 5000 == 0 {
            tree.commit().unwrap();
        }
    }
    tree.commit().unwrap();
    let full = tree.check().unwrap();
    assert!(full.depth >= 3, "20k entries make a tree of depth {}", full.depth);
    let mut tree = open(&io);
    for key in &keys {
        tree.remove(key).unwrap();
    }
    tree.commit().unwrap();
    let empty = tree.check().unwrap();
    assert_eq!((empty.entries, empty.depth), (0, 0));
    // Everything but the freelist itself is free again.
    assert!(empty.reachable_pages == 0, "{empty:?}");
    // Filling it again reuses the freed pages instead of growing the file.
    let pages_before = empty.reachable_pages + empty.unreachable_pages;
    let mut tree = open(&io);
    for key in &keys {
        tree.insert(key, b"again").unwrap();
    }
    tree.commit().unwrap();
    let refilled = tree.check().unwrap();
    let pages_after = refilled.reachable_pages + refilled.unreachable_pages;
    assert_eq!(pages_after, pages_before, "{refilled:?} vs {empty:?}");
}

#[test]
fn a_commit_in_flight_does_not_block_the_next_transaction() {
    let io = SimPageIo::new();
    let mut tree = open(&io);
    for i in 0..500u32 {
        tree.insert(&i.to_be_bytes(), b"first").unwrap();
    }
    let plan = tree.begin_commit().unwrap();
    // The next transaction reads and changes the sealed pages before they are written.
    for i in 0..500u32 {
        assert_eq!(tree.get(&i.to_be_bytes()).unwrap().as_deref(), Some(&b"first"[..]));
        tree.insert(&i.to_be_bytes(), b"second").unwrap();
    }
    tree.check().unwrap();
    let result = plan.execute();
    tree.finish_commit(result).unwrap();
    tree.commit().unwrap();
    drop(tree);
    let tree = open(&io);
    assert_eq!(tree.get(&7u32.to_be_bytes()).unwrap().as_deref(), Some(&b"second"[..]));
    tree.check().unwrap();
}

/// A committed file of 2,000 keys with 100-byte values: several leaves, so
/// page 2, the first data page allocated, is a leaf of the tree.
fn committed_file_of_2000_keys() -> Arc<SimPageIo> {
    let io = SimPageIo::new();
    let mut tree = open(&io);
    for i in 0..2000u32 {
        tree.insert(&i.to_be_bytes(), &[7; 100]).unwrap();
    }
    tree.commit().unwrap();
    io
}

#[test]
fn a_damaged_leaf_is_corruption_on_read() {
    let io = committed_file_of_2000_keys();
    // Page 2 is the first data page allocated: a leaf of this tree.
    io.corrupt(2 * crate::page::PAGE_BYTES as u64 + 300);
    let tree = open(&io);
    let scan: Result<Vec<_>, PageError> = tree.range(Bound::Unbounded, Bound::Unbounded).collect();
    assert!(
        matches!(scan, Err(PageError::Corrupt { .. })),
        "a full scan must hit the damaged page"
    );
    assert!(matches!(tree.check(), Err(PageError::Corrupt { .. })));
}

/// A leaf whose checksum is right but whose slot array points outside its
/// entries: reported as corruption on its first read and on every read after
/// (the layout is checked only on the read that verifies the checksum, so a
/// failed check must not leave the page trusted).
#[test]
fn a_leaf_with_a_bad_layout_stays_corrupt_on_every_read() {
    let io = committed_file_of_2000_keys();
    // Page 2 is the first data page allocated: a leaf of this tree. Its first
    // slot (right after the header) now points past its first entry, and the
    // checksum is stamped again as `seal_page` does.
    let offset = 2 * PAGE_BYTES as u64;
    let mut page = vec![0; PAGE_BYTES];
    io.read_at(offset, &mut page).unwrap();
    page[HEADER_BYTES] = page[HEADER_BYTES].wrapping_add(1);
    let crc = crc32fast::hash(&page[4..]);
    page[0..4].copy_from_slice(&crc.to_le_bytes());
    io.write_at(offset, &page).unwrap();
    io.sync().unwrap();
    let tree = open(&io);
    for round in 0..3 {
        let scan: Result<Vec<_>, PageError> = tree.range(Bound::Unbounded, Bound::Unbounded).collect();
        match scan {
            Err(PageError::Corrupt { page, reason }) => {
                assert_eq!(page, 2, "round {round}: {reason}");
                assert!(
                    reason.to_string().contains("entry 0 at offset"),
                    "round {round}: {reason}"
                );
            }
            other => panic!("round {round}: the bad leaf read as {other:?}"),
        }
    }
}

/// Rewrites committed page `id` with `change` applied, its checksum stamped
/// again: damage (or forgery) that the checksum cannot see.
fn rewrite_page(io: &SimPageIo, id: PageId, change: impl FnOnce(&mut [u8])) {
    let offset = id * PAGE_BYTES as u64;
    let mut page = vec![0; PAGE_BYTES];
    io.read_at(offset, &mut page).unwrap();
    change(&mut page);
    let txid = crate::page::get_u64(&page, 8);
    crate::page::seal_page(&mut page, txid);
    io.write_at(offset, &page).unwrap();
    io.sync().unwrap();
}

fn is_corrupt<T: std::fmt::Debug>(result: Result<T, PageError>) -> bool {
    matches!(result, Err(PageError::Corrupt { .. }))
}

/// A branch whose first child is the branch itself: every walk from the root
/// (get, range, insert, remove, check) reports corruption after at most
/// DEPTH_MAX levels instead of walking (and allocating) without end.
#[test]
fn a_branch_that_points_back_at_itself_is_corruption_not_an_endless_walk() {
    let io = committed_file_of_2000_keys();
    let root = open(&io).root.expect("a tree of several leaves");
    rewrite_page(&io, root, |page| {
        let first_entry = usize::from(u16::from_le_bytes([page[HEADER_BYTES], page[HEADER_BYTES + 1]]));
        // A branch entry: u16 key length, u64 child, key.
        page[first_entry + 2..first_entry + 10].copy_from_slice(&root.to_le_bytes());
    });
    let mut tree = open(&io);
    let first_key = 0u32.to_be_bytes();
    assert!(is_corrupt(tree.get(&first_key)));
    let scan: Result<Vec<_>, PageError> = tree.range(Bound::Unbounded, Bound::Unbounded).collect();
    assert!(is_corrupt(scan));
    assert!(is_corrupt(tree.check()));
    assert!(is_corrupt(tree.remove(&first_key)));
    assert!(is_corrupt(tree.insert(&first_key, b"v")));
}

/// An overflow chain whose middle page points at itself: reading, checking
/// or replacing the value reports corruption, without reading round the
/// loop (or releasing a page twice).
#[test]
fn an_overflow_chain_that_loops_is_corruption() {
    let io = SimPageIo::new();
    let mut tree = open(&io);
    tree.insert(b"k", &[5; 3 * OVERFLOW_DATA_BYTES - 10]).unwrap();
    tree.commit().unwrap();
    // The value's pages were allocated first: 2, 3 and 4 (the leaf is 5).
    rewrite_page(&io, 3, |page| {
        page[HEADER_BYTES..HEADER_BYTES + 8].copy_from_slice(&3u64.to_le_bytes())
    });
    let mut tree = open(&io);
    assert!(is_corrupt(tree.get(b"k")));
    assert!(is_corrupt(tree.check()));
    assert!(is_corrupt(tree.insert(b"k", b"small")));
}

#[test]
fn a_value_longer_than_the_file_is_corruption_before_it_is_read() {
    let io = SimPageIo::new();
    let mut tree = open(&io);
    tree.insert(b"k", &[5; 2 * OVERFLOW_DATA_BYTES]).unwrap();
    tree.commit().unwrap();
    // The leaf (page 4): one entry, u32 value length at 3 after its offset.
    rewrite_page(&io, 4, |page| {
        let entry = usize::from(u16::from_le_bytes([page[HEADER_BYTES], page[HEADER_BYTES + 1]]));
        page[entry + 3..entry + 7].copy_from_slice(&u32::MAX.to_le_bytes());
    });
    let tree = open(&io);
    match tree.get(b"k") {
        Err(PageError::Corrupt { reason, .. }) => {
            assert!(reason.to_string().contains("more overflow pages"), "{reason}")
        }
        other => panic!("read as {other:?}"),
    }
}

#[test]
fn the_real_file_commits_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let mut tree = Tree::open(&path).unwrap();
    let big = vec![3u8; 3 * OVERFLOW_DATA_BYTES];
    for i in 0..3000u32 {
        tree.insert(&i.to_be_bytes(), if i % 100 == 0 { &big } else { b"small" })
            .unwrap();
    }
    tree.commit().unwrap();
    for i in (0..3000u32).step_by(3) {
        tree.remove(&i.to_be_bytes()).unwrap();
    }
    tree.commit().unwrap();
    drop(tree);
    let tree = Tree::open(&path).unwrap();
    tree.check().unwrap();
    assert_eq!(tree.get(&100u32.to_be_bytes()).unwrap(), Some(big));
    assert_eq!(tree.get(&99u32.to_be_bytes()).unwrap(), None);
    assert_eq!(tree.range(Bound::Unbounded, Bound::Unbounded).count(), 2000);
    assert!(tree.file_bytes() >= tree.in_use_bytes());
}

#[test]
fn defragmentation_gives_back_the_space_of_removed_keys() {
    let io = SimPageIo::new();
    let mut tree = open(&io);
    let big = vec![0x5a; 3 * OVERFLOW_DATA_BYTES];
    for k in 0..6000u16 {
        let value: &[u8] = if k % 10 == 0 { &big } else { &[7; 300] };
        tree.insert(&key(k, 0), value).unwrap();
    }
    tree.commit().unwrap();
    // Keep every tenth key (all the overflow values): most pages become free,
    // scattered through the file.
    for k in (0..6000u16).filter(|k| k % 10 != 0) {
        tree.remove(&key(k, 0)).unwrap();
    }
    tree.commit().unwrap();
    let model = contents(&tree);
    let (allocated, file) = (tree.allocated_bytes(), tree.file_bytes());
    defragment(&mut tree, 16);
    assert_eq!(contents(&tree), model);
    tree.check().unwrap();
    let target_bytes = tree.relocation_target() * PAGE_BYTES as u64;
    assert!(
        tree.allocated_bytes() <= target_bytes,
        "{} bytes still used of {allocated}; {} in use, target {target_bytes}",
        tree.allocated_bytes(),
        tree.in_use_bytes()
    );
    assert!(
        tree.file_bytes() < file,
        "the file was cut: {} of {file}",
        tree.file_bytes()
    );
    assert_eq!(io.size().unwrap(), tree.file_bytes());
    drop(tree);
    let tree = open(&io);
    assert_eq!(contents(&tree), model, "after a reopen");
    tree.check().unwrap();
}

#[test]
fn a_pinned_snapshot_survives_rewrites_and_defragmentation() {
    let io = SimPageIo::new();
    let mut tree = open(&io);
    for k in 0..3000u16 {
        tree.insert(&key(k, 0), &[1; 200]).unwrap();
    }
    tree.commit().unwrap();
    let then = contents(&tree);
    let mut source = tree.pin_snapshot().unwrap();
    // Rewrite and remove everything, many commits: without the pin these would
    // reuse the pinned commit's pages.
    for round in 0..4u8 {
        for k in 0..3000u16 {
            tree.insert(&key(k, 0), &[round + 2; 200]).unwrap();
        }
        tree.commit().unwrap();
    }
    for k in 0..2900u16 {
        tree.remove(&key(k, 0)).unwrap();
    }
    tree.commit().unwrap();
    defragment(&mut tree, 64);
    let copy = read_snapshot(&mut source);
    assert_eq!(contents(&copy), then);
    copy.check().unwrap();
    tree.unpin_snapshot(source.txid());
    let before = tree.allocated_bytes();
    defragment(&mut tree, 64);
    assert!(tree.allocated_bytes() < before, "the held pages were released");
    tree.check().unwrap();
}

#[test]
fn a_commit_without_room_keeps_the_tree_and_the_next_transaction_and_lands_later() {
    let io = SimPageIo::new();
    let mut tree = open(&io);
    tree.commit().unwrap();
    let full_at = io.size().unwrap();
    io.limit_file_bytes(Some(full_at));
    for i in 0..2000u32 {
        tree.insert(&i.to_be_bytes(), &[1; 1000]).unwrap();
    }
    let result = tree.begin_commit().unwrap().execute();
    assert!(matches!(tree.finish_commit(result), Err(PageError::NoSpace { .. })));
    // The transaction after the stalled commit goes on over its sealed pages.
    for i in 2000..3000u32 {
        tree.insert(&i.to_be_bytes(), &[2; 1000]).unwrap();
    }
    assert!(tree.remove(&0u32.to_be_bytes()).unwrap());
    tree.check().unwrap();
    let result = tree.retry_commit().execute();
    assert!(matches!(tree.finish_commit(result), Err(PageError::NoSpace { .. })));

    io.limit_file_bytes(None);
    let result = tree.retry_commit().execute();
    tree.finish_commit(result).unwrap();
    tree.commit().unwrap();
    let expected = contents(&tree);
    assert_eq!(expected.len(), 2999);
    drop(tree);
    let tree = open(&io);
    assert_eq!(contents(&tree), expected, "both transactions are durable");
    tree.check().unwrap();
}

/// The leaf pages `report`'s entry bytes would take packed full.
fn leaf_pages_needed(report: &super::CheckReport) -> u64 {
    report.leaf_entry_bytes.div_ceil(NODE_BYTES_MAX as u64)
}

#[test]
fn keys_appended_in_order_fill_their_leaves() {
    let io = SimPageIo::new();
    let mut tree = open(&io);
    // Revision-like keys (big endian, always the last), values of varied
    // sizes, a commit now and then: every leaf but the last stays full.
    for n in 0..20_000u32 {
        let mut key = vec![b'r'];
        key.extend_from_slice(&u64::from(n).to_be_bytes());
        tree.insert(&key, &vec![7; 100 + (n as usize * 37) % 300]).unwrap();
        if n % 500 == 0 {
            tree.commit().unwrap();
        }
    }
    tree.commit().unwrap();
    let report = tree.check().unwrap();
    assert!(
        report.leaf_pages * 85 <= leaf_pages_needed(&report) * 100,
        "{} leaf pages for {} bytes of entries ({} pages full)",
        report.leaf_pages,
        report.leaf_entry_bytes,
        leaf_pages_needed(&report)
    );
}

#[test]
fn defragmentation_packs_the_leaves_a_compaction_emptied() {
    let io = SimPageIo::new();
    let mut tree = open(&io);
    for k in 0..9000u16 {
        tree.insert(&key(k, 0), &[3; 250]).unwrap();
    }
    tree.commit().unwrap();
    // Two of every three keys go (a compaction of three revisions per key):
    // no leaf falls below a quarter page, so none merged.
    for k in (0..9000u16).filter(|k| k % 3 != 0) {
        tree.remove(&key(k, 0)).unwrap();
    }
    tree.commit().unwrap();
    let sparse = tree.check().unwrap();
    assert!(sparse.leaf_fill() < 0.5, "leaves {:.2} full", sparse.leaf_fill());
    let model = contents(&tree);
    defragment(&mut tree, 16);
    assert_eq!(contents(&tree), model);
    let packed = tree.check().unwrap();
    assert!(
        packed.leaf_pages * 90 <= leaf_pages_needed(&packed) * 100,
        "{} leaf pages for {} bytes of entries ({} pages full)",
        packed.leaf_pages,
        packed.leaf_entry_bytes,
        leaf_pages_needed(&packed)
    );
    assert!(packed.reachable_pages * 2 < sparse.reachable_pages);
    // A second pass finds nothing to pack: the leaves stay where they are.
    let before = tree.check().unwrap();
    defragment(&mut tree, 16);
    assert_eq!(tree.check().unwrap().leaf_pages, before.leaf_pages);
}

//! The tree against a `BTreeMap` model: random inserts, removes, reads, ranges,
//! commits, reopens, and commits that fail part-way (after which reopening must
//! give exactly the last durable state). The integrity check runs after every
//! step that changes structure.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use proptest::prelude::*;

use super::node::MAX_KEY_BYTES;
use super::overflow::OVERFLOW_DATA_BYTES;
use super::Tree;
use crate::page::sim::SimPageIo;
use crate::page::{PageError, PageIo};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Clone)]
enum Op {
    Insert {
        key: u16,
        pad: usize,
        value: Vec<u8>,
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
}

/// Keys share prefixes and sometimes run long, so nodes split at varied points.
fn key(index: u16, pad: usize) -> Vec<u8> {
    let mut key = format!("k{index:05}").into_bytes();
    key.resize(key.len() + pad, b'.');
    key.truncate(MAX_KEY_BYTES);
    key
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop::collection::vec(any::<u8>(), 0..40),
        2 => prop::collection::vec(any::<u8>(), 300..1100),
        1 => (1usize..4).prop_map(|pages| vec![0xab; pages * OVERFLOW_DATA_BYTES - 7]),
    ]
}

fn pad() -> impl Strategy<Value = usize> {
    prop_oneof![8 => Just(0usize), 1 => 0usize..600]
}

fn op(keys: u16) -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (0..keys, pad(), value()).prop_map(|(key, pad, value)| Op::Insert { key, pad, value }),
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

fn run(ops: Vec<Op>) {
    let io = SimPageIo::new();
    let mut tree = open(&io);
    let mut model = Model::new();
    let mut durable = Model::new();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Insert { key: k, pad, value } => {
                tree.insert(&key(k, pad), &value).unwrap();
                model.insert(key(k, pad), value);
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
            }
            Op::Commit => {
                tree.commit().unwrap();
                durable = model.clone();
            }
            Op::Reopen => {
                tree.commit().unwrap();
                durable = model.clone();
                drop(tree);
                tree = open(&io);
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
                tree = open(&io);
                model = durable.clone();
            }
        }
        tree.check()
            .unwrap_or_else(|error| panic!("integrity after step {step}: {error}"));
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

#[test]
fn a_damaged_leaf_is_corruption_on_read() {
    let io = SimPageIo::new();
    let mut tree = open(&io);
    for i in 0..2000u32 {
        tree.insert(&i.to_be_bytes(), &[7; 100]).unwrap();
    }
    tree.commit().unwrap();
    drop(tree);
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

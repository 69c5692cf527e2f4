//! MVCC against a model that keeps the whole map at every revision.

use std::collections::BTreeMap;

use proptest::prelude::*;
use prost::Message;
use ringkv_proto::mvccpb::KeyValue;

use super::*;
use crate::btree::Tree;

const KEYS: [&[u8]; 6] = [b"a", b"ab", b"b", b"ba", b"c", b"d"];

#[derive(Debug, Clone)]
enum Span {
    Key(usize),
    Until(usize, usize),
    ToEnd(usize),
    /// A next page: from `start` (any bytes) to `KEYS[end]`, or to the end.
    Page {
        start: Vec<u8>,
        end: Option<usize>,
    },
}

impl Span {
    fn as_span(&self) -> KeySpan<'_> {
        match *self {
            Span::Key(k) => KeySpan {
                key: KEYS[k],
                end: RangeEnd::Key,
            },
            Span::Until(k, e) => KeySpan {
                key: KEYS[k],
                end: RangeEnd::Until(KEYS[e]),
            },
            Span::ToEnd(k) => KeySpan {
                key: KEYS[k],
                end: RangeEnd::ToEnd,
            },
            Span::Page { ref start, end } => KeySpan {
                key: start,
                end: end.map_or(RangeEnd::ToEnd, |e| RangeEnd::Until(KEYS[e])),
            },
        }
    }

    /// The index of the key the span ends before; None: no end (or one key).
    fn end(&self) -> Option<usize> {
        match *self {
            Span::Until(_, e) => Some(e),
            Span::Page { end, .. } => end,
            Span::Key(_) | Span::ToEnd(_) => None,
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        match *self {
            Span::Key(k) => key == KEYS[k],
            Span::Until(k, e) => KEYS[k] <= key && key < KEYS[e],
            Span::ToEnd(k) => KEYS[k] <= key,
            Span::Page { ref start, end } => start.as_slice() <= key && end.is_none_or(|e| key < KEYS[e]),
        }
    }
}

#[derive(Debug, Clone)]
enum Change {
    Put {
        key: usize,
        value: Vec<u8>,
        lease: i64,
    },
    Delete(Span),
    /// A read inside the transaction: sees the earlier changes.
    Read(Span),
}

#[derive(Debug, Clone)]
enum Step {
    Txn(Vec<Change>),
    Read {
        span: Span,
        rev_back: i64,
        limit: usize,
        count_only: bool,
        /// Through `range_encoded`, decoding what it hands out.
        encoded: bool,
    },
    Compact {
        rev_back: i64,
    },
    PhysicalCompaction(usize),
    /// The next page of the last limited Read that had more, at its revision,
    /// starting just after its last key, or with `back` 1 just after the one
    /// before it (as the server does: it fetches one more than the client's limit).
    NextPage {
        limit: usize,
        back: usize,
        encoded: bool,
    },
    Restart,
    /// Grant lease `id` (if it does not exist).
    Grant {
        id: i64,
        ttl: i64,
    },
    /// Revoke lease `id` (if it exists): its keys go in one revision.
    Revoke(i64),
}

fn span() -> impl Strategy<Value = Span> {
    prop_oneof![
        (0..KEYS.len()).prop_map(Span::Key),
        (0..KEYS.len(), 0..KEYS.len()).prop_map(|(k, e)| Span::Until(k, e)),
        (0..KEYS.len()).prop_map(Span::ToEnd),
    ]
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => (0..KEYS.len(), prop::collection::vec(any::<u8>(), 0..8), 0i64..4)
            .prop_map(|(key, value, lease)| Change::Put { key, value, lease }),
        // Records past a leaf: overflow pages, and ends the leaf keeps.
        1 => (0..KEYS.len(), 4000usize..9000, any::<u8>(), 0i64..4).prop_map(|(key, len, byte, lease)| Change::Put {
            key,
            value: vec![byte; len],
            lease
        }),
        2 => span().prop_map(Change::Delete),
        1 => span().prop_map(Change::Read),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => prop::collection::vec(change(), 1..4).prop_map(Step::Txn),
        4 => (span(), -1i64..6, 0usize..3, any::<bool>(), any::<bool>()).prop_map(
            |(span, rev_back, limit, count_only, encoded)| Step::Read { span, rev_back, limit, count_only, encoded }
        ),
        1 => (-1i64..6).prop_map(|rev_back| Step::Compact { rev_back }),
        1 => (1usize..4).prop_map(Step::PhysicalCompaction),
        3 => (1usize..4, 0usize..2, any::<bool>()).prop_map(|(limit, back, encoded)| Step::NextPage {
            limit,
            back,
            encoded
        }),
        1 => Just(Step::Restart),
        2 => (1i64..4, 1i64..100).prop_map(|(id, ttl)| Step::Grant { id, ttl }),
        1 => (1i64..4).prop_map(Step::Revoke),
    ]
}

/// The model: the whole map at every revision (index = revision).
struct Model {
    states: Vec<BTreeMap<Vec<u8>, KeyValue>>,
    compacted: i64,
    /// Lease id -> TTL. Attachments are the `lease` fields of the newest state.
    leases: BTreeMap<i64, i64>,
}

impl Model {
    fn new() -> Model {
        // Revisions 0 and 1 are both the empty store.
        Model {
            states: vec![BTreeMap::new(), BTreeMap::new()],
            compacted: -1,
            leases: BTreeMap::new(),
        }
    }

    fn current(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    /// The live keys whose newest revision carries lease `id`, in key order.
    fn keys_of(&self, id: i64) -> Vec<&[u8]> {
        let state = self.states.last().unwrap();
        state
            .values()
            .filter(|kv| kv.lease == id)
            .map(|kv| kv.key.as_slice())
            .collect()
    }

    fn check_leases(&self, store: &Mvcc) {
        let leases = store.leases();
        leases.check().unwrap();
        assert_eq!(leases.iter().collect::<BTreeMap<_, _>>(), self.leases);
        for &id in self.leases.keys() {
            assert_eq!(
                leases.keys(id).collect::<Vec<_>>(),
                self.keys_of(id),
                "keys of lease {id}"
            );
        }
    }

    fn read(
        &self,
        state: &BTreeMap<Vec<u8>, KeyValue>,
        span: &Span,
        limit: usize,
        count_only: bool,
        view: i64,
    ) -> RangeResult {
        let matching: Vec<&KeyValue> = state.iter().filter(|(k, _)| span.contains(k)).map(|(_, v)| v).collect();
        let kvs = if count_only {
            Vec::new()
        } else {
            matching
                .iter()
                .take(if limit == 0 { usize::MAX } else { limit })
                .map(|kv| (*kv).clone())
                .collect()
        };
        RangeResult {
            kvs,
            count: matching.len(),
            rev: view,
        }
    }
}

fn apply_txn(model: &mut Model, store: &mut Mvcc, changes: &[Change]) {
    let revision = model.current() + 1;
    let mut state = model.states.last().unwrap().clone();
    let mut changed = false;
    let mut txn = store.write();
    assert_eq!(txn.revision(), revision);
    for change in changes {
        match change {
            Change::Put { key, value, lease } => {
                let key = KEYS[*key];
                // The server refuses unknown leases before writing.
                let lease = if model.leases.contains_key(lease) { lease } else { &0 };
                let (created, version) = match state.get(key) {
                    Some(kv) => (kv.create_revision, kv.version + 1),
                    None => (revision, 1),
                };
                state.insert(
                    key.to_vec(),
                    KeyValue {
                        key: key.to_vec(),
                        create_revision: created,
                        mod_revision: revision,
                        version,
                        value: value.clone(),
                        lease: *lease,
                    },
                );
                txn.put(key, value, *lease).unwrap();
                changed = true;
            }
            Change::Delete(span) => {
                let doomed: Vec<Vec<u8>> = state.keys().filter(|k| span.contains(k)).cloned().collect();
                for key in &doomed {
                    state.remove(key);
                }
                let deleted = txn.delete_range(span.as_span()).unwrap();
                assert_eq!(deleted, doomed.len() as i64);
                changed |= deleted > 0;
            }
            Change::Read(span) => {
                let view = if changed { revision } else { revision - 1 };
                let expected = model.read(&state, span, 0, false, view);
                let actual = txn.range(span.as_span(), RangeOptions::default()).unwrap();
                assert_eq!(actual, expected, "read inside a txn sees its earlier writes");
            }
        }
    }
    let after = txn.end();
    if changed {
        model.states.push(state);
    }
    assert_eq!(after, model.current(), "one revision per txn that changes something");
}

fn revoke(model: &mut Model, store: &mut Mvcc, id: i64) {
    if model.leases.remove(&id).is_none() {
        return;
    }
    let doomed: Vec<Vec<u8>> = model.keys_of(id).into_iter().map(<[u8]>::to_vec).collect();
    let mut state = model.states.last().unwrap().clone();
    for key in &doomed {
        state.remove(key);
    }
    let mut txn = store.write();
    assert_eq!(txn.revoke_lease(id).unwrap(), doomed.len() as i64);
    let after = txn.end();
    if !doomed.is_empty() {
        model.states.push(state);
    }
    assert_eq!(after, model.current(), "a revoke deletes its keys in one revision");
}

/// A limited read that had more keys to give: where a client's list goes on.
struct Cursor {
    end: Option<usize>,
    revision: i64,
    keys: Vec<Vec<u8>>,
}

/// Reads `span` from the store and checks it against the model; a page with
/// more to come gives the cursor for the next.
fn check_read(
    model: &Model,
    store: &Mvcc,
    span: Span,
    rev: i64,
    limit: usize,
    count_only: bool,
    encoded: bool,
) -> Option<Cursor> {
    let options = RangeOptions { limit, rev, count_only };
    let actual = if encoded {
        let mut kvs = Vec::new();
        store
            .range_encoded(span.as_span(), options, |body| {
                kvs.push(KeyValue::decode(body).expect("a served body decodes"))
            })
            .map(|result| {
                assert!(result.kvs.is_empty(), "key-values go to the callback only");
                RangeResult { kvs, ..result }
            })
    } else {
        store.range(span.as_span(), options)
    };
    let current = model.current();
    let read_at = if rev <= 0 { current } else { rev };
    if read_at > current {
        assert!(matches!(actual, Err(MvccError::FutureRev)), "{actual:?}");
        return None;
    }
    if read_at < model.compacted {
        assert!(matches!(actual, Err(MvccError::Compacted)), "{actual:?}");
        return None;
    }
    let expected = model.read(&model.states[read_at as usize], &span, limit, count_only, current);
    let actual = actual.unwrap();
    assert_eq!(actual, expected, "read of {span:?} at {read_at}");
    let pages = !matches!(span, Span::Key(_)) && limit > 0 && !count_only && actual.count > actual.kvs.len();
    pages.then(|| Cursor {
        end: span.end(),
        revision: read_at,
        keys: actual.kvs.into_iter().map(|kv| kv.key).collect(),
    })
}

/// Keys as stores written before narrow keys gave every revision: wide.
fn all_wide() -> RevisionKeys {
    RevisionKeys::with_last_wide(Some(Revision::new(1 << 55, 0)))
}

/// What a store answers whatever form its revision keys take: its HashKV,
/// ringkv's Hash, and its history since the compaction point.
type Answers = (KvHash, u32, HistoryChunk);

/// Runs `steps` against the model. With `wide_first`, the store writes wide
/// revision keys (as stores written before narrow keys did) until its first
/// restart, and then opens as such a store does: the revisions it holds keep
/// their wide keys, later ones get narrow keys.
fn run(steps: Vec<Step>, wide_first: bool) -> Answers {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Mvcc::open(&dir.path().join("store.db")).unwrap();
    if wide_first {
        store.keys = all_wide();
    }
    let mut model = Model::new();
    let mut cursor: Option<Cursor> = None;
    for step in steps {
        match step {
            Step::Txn(changes) => apply_txn(&mut model, &mut store, &changes),
            Step::Read {
                span,
                rev_back,
                limit,
                count_only,
                encoded,
            } => {
                let rev = if rev_back < 0 {
                    0
                } else {
                    model.current() - rev_back + 1
                };
                cursor = check_read(&model, &store, span, rev, limit, count_only, encoded);
            }
            Step::NextPage { limit, back, encoded } => {
                if let Some(page) = cursor.take() {
                    let last = page.keys.len().saturating_sub(1 + back);
                    let mut start = page.keys[last].clone();
                    start.push(0);
                    let span = Span::Page { start, end: page.end };
                    cursor = check_read(&model, &store, span, page.revision, limit, false, encoded);
                }
            }
            Step::Compact { rev_back } => {
                let rev = model.current() - rev_back;
                let result = store.compact(rev);
                if rev <= model.compacted {
                    assert!(matches!(result, Err(MvccError::Compacted)));
                } else if rev > model.current() {
                    assert!(matches!(result, Err(MvccError::FutureRev)));
                } else {
                    result.unwrap();
                    model.compacted = rev;
                }
                assert_eq!(store.compact_revision(), model.compacted);
            }
            Step::PhysicalCompaction(batch) => {
                store.compact_step(batch).unwrap();
            }
            Step::Restart => {
                store.set_applied_index(store.applied_index() + 1);
                let applied = store.applied_index();
                store.commit().unwrap();
                drop(store);
                store = Mvcc::open(&dir.path().join("store.db")).unwrap();
                assert_eq!(store.applied_index(), applied);
                assert_eq!(store.current_revision(), model.current());
                assert_eq!(store.compact_revision(), model.compacted);
            }
            Step::Grant { id, ttl } => {
                if let std::collections::btree_map::Entry::Vacant(entry) = model.leases.entry(id) {
                    entry.insert(ttl);
                    store.grant_lease(id, ttl).unwrap();
                }
            }
            Step::Revoke(id) => revoke(&mut model, &mut store, id),
        }
        model.check_leases(&store);
    }
    // Finish any compaction: reads at or after the compaction point are unchanged.
    while !store.compact_step(1000).unwrap() {}
    for rev in model.compacted.max(1)..=model.current() {
        let span = Span::ToEnd(0);
        let options = RangeOptions {
            rev,
            ..Default::default()
        };
        let expected = model.read(&model.states[rev as usize], &span, 0, false, model.current());
        assert_eq!(
            store.range(span.as_span(), options).unwrap(),
            expected,
            "after compaction, at {rev}"
        );
    }
    store.commit().unwrap();
    drop(store);
    let store = Mvcc::open(&dir.path().join("store.db")).unwrap();
    let history = store
        .history(model.compacted.max(0), model.current(), usize::MAX)
        .unwrap();
    (store.hash_kv(0).unwrap(), store.hash_all().unwrap(), history)
}

#[test]
fn a_store_keeps_its_wide_revision_keys_and_writes_narrow_ones_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let mut store = Mvcc::open(&path).unwrap();
    store.keys = all_wide();
    let put = |store: &mut Mvcc, values: &[&[u8]]| {
        let mut txn = store.write();
        for value in values {
            txn.put(b"k", value, 0).unwrap();
        }
        txn.end();
        store.commit().unwrap();
    };
    put(&mut store, &[b"1"]);
    put(&mut store, &[b"2", b"3"]);
    drop(store);
    let mut store = Mvcc::open(&path).unwrap();
    put(&mut store, &[b"4"]);
    put(&mut store, &[b"5", b"6"]);
    let forms: Vec<(Revision, bool)> = store
        .tree
        .range(
            std::ops::Bound::Included(&b"r"[..]),
            std::ops::Bound::Excluded(&b"s"[..]),
        )
        .map(|entry| {
            let (key, _) = entry.unwrap();
            (Revision::from_key(&key).unwrap(), super::revision::is_wide(&key))
        })
        .collect();
    let revision = Revision::new;
    assert_eq!(
        forms,
        [
            (revision(2, 0), true),
            (revision(3, 0), true),
            (revision(3, 1), true),
            (revision(4, 0), false),
            (revision(5, 0), false),
            (revision(5, 1), false),
        ]
    );
    let values = |store: &Mvcc, from, to| -> Vec<Vec<u8>> {
        let history = store.history(from, to, usize::MAX).unwrap();
        history.changes.into_iter().map(|change| change.kv.value).collect()
    };
    assert_eq!(values(&store, 3, 4), [b"2", b"3", b"4"]);
    store.compact(4).unwrap();
    while !store.compact_step(1).unwrap() {}
    store.commit().unwrap();
    drop(store);
    let store = Mvcc::open(&path).unwrap();
    assert_eq!(values(&store, 4, 5), [b"4", b"5", b"6"]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mvcc_matches_a_map_per_revision(steps in prop::collection::vec(step(), 1..120)) {
        run(steps, false);
    }

    /// A store that began with wide revision keys, reads, compacts and
    /// hashes across the change of form as one that never had them.
    #[test]
    fn a_store_that_began_with_wide_revision_keys_answers_the_same(
        steps in prop::collection::vec(step(), 1..120)
    ) {
        let wide_first = run(steps.clone(), true);
        prop_assert_eq!(wide_first, run(steps, false));
    }
}

#[test]
fn the_first_write_gets_revision_two() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Mvcc::open(&dir.path().join("s.db")).unwrap();
    assert_eq!(store.current_revision(), 1);
    let mut txn = store.write();
    txn.put(b"k", b"v", 0).unwrap();
    assert_eq!(txn.end(), 2);
    let kv = &store
        .range(
            KeySpan {
                key: b"k",
                end: RangeEnd::Key,
            },
            RangeOptions::default(),
        )
        .unwrap()
        .kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
}

#[test]
fn deleting_nothing_uses_no_revision() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Mvcc::open(&dir.path().join("s.db")).unwrap();
    let mut txn = store.write();
    assert_eq!(
        txn.delete_range(KeySpan {
            key: b"a",
            end: RangeEnd::ToEnd
        })
        .unwrap(),
        0
    );
    assert_eq!(txn.end(), 1);
}

#[test]
fn a_restart_mid_compaction_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Mvcc::open(&dir.path().join("s.db")).unwrap();
    for i in 0..50 {
        let mut txn = store.write();
        txn.put(b"k", format!("{i}").as_bytes(), 0).unwrap();
        txn.end();
    }
    store.compact(40).unwrap();
    assert!(
        !store.compact_step(10).unwrap(),
        "38 revisions take more than one step of 10"
    );
    store.commit().unwrap();
    drop(store);
    let mut store = Mvcc::open(&dir.path().join("s.db")).unwrap();
    assert!(store.compaction_pending());
    while !store.compact_step(10).unwrap() {}
    let at_40 = store
        .range(
            KeySpan {
                key: b"k",
                end: RangeEnd::Key,
            },
            RangeOptions {
                rev: 40,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(at_40.kvs[0].value, b"38");
    assert!(matches!(
        store.range(
            KeySpan {
                key: b"k",
                end: RangeEnd::Key
            },
            RangeOptions {
                rev: 39,
                ..Default::default()
            }
        ),
        Err(MvccError::Compacted)
    ));
    store.commit().unwrap();
    drop(store);
    let stored = Tree::open(&dir.path().join("s.db"))
        .unwrap()
        .range(std::ops::Bound::Unbounded, std::ops::Bound::Unbounded)
        .count();
    // Revisions 41..=51 plus the kept one at 40, plus 4 meta keys.
    assert_eq!(stored, 12 + 4);
}

mod maintenance {
    use super::*;
    use crate::mvcc::{Alarm, Mvcc, StepBudget};

    fn fresh() -> (tempfile::TempDir, Mvcc) {
        let dir = tempfile::tempdir().unwrap();
        let store = Mvcc::open(&dir.path().join("store.db")).unwrap();
        (dir, store)
    }

    fn put(store: &mut Mvcc, key: &[u8], value: &[u8]) {
        let mut txn = store.write();
        txn.put(key, value, 0).unwrap();
        txn.end();
    }

    fn delete(store: &mut Mvcc, key: &[u8], end: RangeEnd<'_>) {
        let mut txn = store.write();
        txn.delete_range(KeySpan { key, end }).unwrap();
        txn.end();
    }

    #[test]
    fn alarms_survive_a_commit_and_reopen() {
        let (dir, mut store) = fresh();
        let nospace = Alarm { member_id: 7, kind: 1 };
        assert!(store.activate_alarm(nospace));
        assert!(!store.activate_alarm(nospace), "already active");
        store.commit().unwrap();
        drop(store);
        let mut store = Mvcc::open(&dir.path().join("store.db")).unwrap();
        assert_eq!(store.alarms().collect::<Vec<_>>(), vec![nospace]);
        assert!(store.deactivate_alarm(nospace));
        store.commit().unwrap();
        drop(store);
        let store = Mvcc::open(&dir.path().join("store.db")).unwrap();
        assert_eq!(store.alarms().count(), 0);
    }

    #[test]
    fn hash_kv_covers_history_up_to_the_revision_only() {
        let (_dir, mut store) = fresh();
        put(&mut store, b"a", b"1");
        let at_two = store.hash_kv(0).unwrap();
        assert_eq!(at_two.hash_revision, 2);
        assert_eq!(at_two.compact_revision, -1);
        put(&mut store, b"a", b"2");
        assert_eq!(
            store.hash_kv(2).unwrap(),
            at_two,
            "a later write does not change an older hash"
        );
        assert_ne!(store.hash_kv(0).unwrap().hash, at_two.hash);
        assert!(matches!(store.hash_kv(4), Err(MvccError::FutureRev)));
    }

    #[test]
    fn hash_kv_is_the_same_before_and_after_physical_compaction() {
        let (_dir, mut store) = fresh();
        for value in [b"1", b"2", b"3"] {
            put(&mut store, b"a", value);
        }
        for key in [&b"b"[..], b"c", b"d"] {
            put(&mut store, key, b"1");
            put(&mut store, key, b"2");
        }
        delete(&mut store, b"c", RangeEnd::Key);
        store.compact(9).unwrap();
        // With no key live at the hashed revision, etcd counts every revision
        // left below the point: what compaction removes must not count either.
        delete(&mut store, b"a", RangeEnd::ToEnd);
        let pending = store.hash_kv(0).unwrap();
        // One key of the index, or one revision, per step: the hash is the same
        // however far the compaction has got.
        while !store.compact_step(1).unwrap() {
            assert_eq!(store.hash_kv(0).unwrap(), pending);
        }
        assert_eq!(store.hash_kv(0).unwrap(), pending);
        assert!(
            matches!(store.hash_kv(9), Err(MvccError::Compacted)),
            "etcd 3.5: rev <= compactRev"
        );
    }

    #[test]
    fn hash_kv_below_the_compaction_point_counts_only_keys_live_at_the_hashed_revision() {
        // etcd's Keep(rev): k1@3 is stored but deleted by revision 5, so a hash at 5
        // leaves it out, and equals the hash of a store that never had it below 4.
        let (_dir, mut store) = fresh();
        put(&mut store, b"k0", b"x");
        put(&mut store, b"k1", b"a");
        put(&mut store, b"k2", b"b");
        delete(&mut store, b"k1", RangeEnd::Key);
        let before = store.hash_kv(5).unwrap().hash;
        store.compact(4).unwrap();
        while !store.compact_step(10).unwrap() {}
        assert_ne!(store.hash_kv(5).unwrap().hash, before, "k1@3 no longer counts");
    }

    #[test]
    fn a_stepped_hash_kv_hashes_the_store_as_it_began_while_writes_and_a_compaction_go_on() {
        let (_dir, mut store) = fresh();
        for round in 0..4u8 {
            for key in [&b"a"[..], b"b", b"c", b"d", b"e"] {
                put(&mut store, key, &[round]);
            }
        }
        delete(&mut store, b"c", RangeEnd::Key);
        store.compact(8).unwrap();
        while !store.compact_step(100).unwrap() {}
        let whole = store.hash_kv(0).unwrap();
        let one_revision = StepBudget {
            keys: 1,
            bytes: usize::MAX,
        };
        let mut cursor = store.begin_hash_kv(0).unwrap();
        let mut steps = 0;
        while !cursor.is_done() {
            store.hash_kv_step(&mut cursor, one_revision).unwrap();
            steps += 1;
            if steps == 3 {
                // Between steps: more writes, and a compaction above the one the
                // hash began with, whose removal waits for the hash.
                put(&mut store, b"a", b"later");
                delete(&mut store, b"b", RangeEnd::Key);
                store.compact(whole.hash_revision).unwrap();
                assert!(!store.compact_step(100).unwrap(), "held back by the hash");
            }
        }
        assert!(steps > 10, "one revision per step: {steps}");
        assert_eq!(cursor.finish(), whole);
        while !store.compact_step(100).unwrap() {}
        assert!(matches!(store.hash_kv(whole.hash_revision), Err(MvccError::Compacted)));
    }
}

#[test]
fn captured_changes_match_history_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Mvcc::open(&dir.path().join("s.db")).unwrap();
    store.capture_changes();
    let mut txn = store.write();
    txn.put(b"a", b"1", 0).unwrap();
    txn.put(b"b", b"1", 0).unwrap();
    txn.end();
    let mut txn = store.write();
    txn.delete_range(KeySpan {
        key: b"a",
        end: RangeEnd::ToEnd,
    })
    .unwrap();
    txn.end();
    let captured = store.take_changes();
    assert_eq!(captured.len(), 4);
    assert!(store.take_changes().is_empty(), "taking empties the capture");
    let history = store.history(2, 3, 100).unwrap();
    assert_eq!(history.changes, captured);
    assert_eq!(history.next_revision, 4);
    assert_eq!(captured[2].kind, ChangeKind::Delete);
    assert_eq!(
        (captured[2].kv.key.as_slice(), captured[2].kv.mod_revision),
        (&b"a"[..], 3)
    );
}

#[test]
fn history_reads_stop_only_between_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Mvcc::open(&dir.path().join("s.db")).unwrap();
    for round in 0..3 {
        let mut txn = store.write();
        for key in [b"x", b"y", b"z"] {
            txn.put(key, &[round], 0).unwrap();
        }
        txn.end();
    }
    let first = store.history(2, 4, 2).unwrap();
    assert_eq!(first.changes.len(), 3, "revision 2 is read whole");
    assert_eq!(first.next_revision, 3);
    let rest = store.history(3, 4, 100).unwrap();
    assert_eq!(rest.changes.len(), 6);
    assert_eq!(rest.next_revision, 5);
}

#[test]
fn history_below_the_compaction_point_is_refused_and_its_tombstones_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Mvcc::open(&dir.path().join("s.db")).unwrap();
    let mut txn = store.write();
    txn.put(b"k", b"v", 0).unwrap();
    txn.end();
    let mut txn = store.write();
    txn.delete_range(KeySpan {
        key: b"k",
        end: RangeEnd::Key,
    })
    .unwrap();
    txn.end();
    store.compact(3).unwrap();
    assert!(matches!(store.history(2, 3, 10), Err(MvccError::Compacted)));
    let at_point = store.history(3, 3, 10).unwrap();
    assert!(
        at_point.changes.is_empty(),
        "a tombstone at the compaction point is compacted"
    );
}

#[test]
fn defragmenting_after_a_compaction_gives_the_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Mvcc::open(&dir.path().join("s.db")).unwrap();
    let value = vec![b'x'; 2000];
    for i in 0..300 {
        let mut txn = store.write();
        txn.put(format!("key{i}").as_bytes(), &value, 0).unwrap();
        txn.end();
        if i % 50 == 0 {
            store.commit().unwrap();
        }
    }
    let mut txn = store.write();
    txn.delete_range(KeySpan {
        key: b"key",
        end: RangeEnd::ToEnd,
    })
    .unwrap();
    txn.end();
    store.compact(store.current_revision()).unwrap();
    while !store.compact_step(1000).unwrap() {}
    // Not committed yet: the first step's commit releases everything the
    // compaction removed, so it finds no free page below for its freelist.
    let before = store.allocated_bytes();
    let target = store.defragment_target();
    let mut from = Vec::new();
    while let Some(next) = store.defragment_step(&from, target, 256).unwrap() {
        store.commit().unwrap();
        from = next;
    }
    store.commit().unwrap();
    store.commit().unwrap();
    store.request_trim();
    store.commit().unwrap();
    assert!(store.allocated_bytes() <= target * crate::page::PAGE_BYTES as u64);
    assert!(
        store.allocated_bytes() * 10 < before,
        "{} of {before} bytes",
        store.allocated_bytes()
    );
}

#[test]
fn server_records_are_stored_with_the_commit_that_follows_their_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut store = Mvcc::open(&path).unwrap();
    assert_eq!((store.membership(), store.conf_state()), (None, None));
    store.set_membership(b"members".to_vec());
    store.set_conf_state(b"voters".to_vec());
    drop(store);
    let mut store = Mvcc::open(&path).unwrap();
    assert_eq!(store.conf_state(), None, "not committed, not stored");
    store.set_conf_state(b"voters".to_vec());
    store.set_applied_index(7);
    store.commit().unwrap();
    store.set_membership(b"members".to_vec());
    store.commit().unwrap();
    drop(store);
    let store = Mvcc::open(&path).unwrap();
    assert_eq!(store.conf_state(), Some(&b"voters"[..]));
    assert_eq!(store.membership(), Some(&b"members"[..]));
    assert_eq!(store.applied_index(), 7);
}

#[test]
fn the_auth_record_is_stored_with_the_commit_that_follows_its_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut store = Mvcc::open(&path).unwrap();
    assert_eq!(store.auth(), None);
    store.set_auth(b"users".to_vec());
    drop(store);
    let mut store = Mvcc::open(&path).unwrap();
    assert_eq!(store.auth(), None, "not committed, not stored");
    store.set_auth(b"users".to_vec());
    store.set_applied_index(3);
    store.commit().unwrap();
    store.set_auth(b"users and roles".to_vec());
    store.set_applied_index(4);
    store.commit().unwrap();
    drop(store);
    let store = Mvcc::open(&path).unwrap();
    assert_eq!(store.auth(), Some(&b"users and roles"[..]));
    assert_eq!(store.applied_index(), 4);
}

/// A store of key `k` put twice (revisions 2 and 3), with `damage` done to its
/// tree afterwards, as a forged or damaged file (or snapshot) would hold it.
fn opened_after(damage: impl FnOnce(&mut Tree)) -> Result<Mvcc, MvccError> {
    let io = crate::page::sim::SimPageIo::new();
    let mut store = Mvcc::open_with(io.clone()).unwrap();
    for value in [b"1", b"2"] {
        let mut txn = store.write();
        txn.put(b"k", value, 0).unwrap();
        txn.end();
    }
    store.commit().unwrap();
    drop(store);
    let mut tree = Tree::open_with(io.clone()).unwrap();
    damage(&mut tree);
    tree.commit().unwrap();
    Mvcc::open_with(io)
}

#[test]
fn a_stored_put_whose_version_does_not_follow_is_corruption_not_a_panic() {
    let opened = opened_after(|tree| {
        let key = RevisionKeys::default().key(Revision::new(3, 0));
        let (tombstone, mut kv) = super::record::decode_record(&tree.get(&key).unwrap().unwrap()).unwrap();
        assert_eq!(kv.version, 2);
        kv.version = 5;
        tree.insert(&key, &super::record::encode_record(tombstone, &kv))
            .unwrap();
    });
    match opened {
        Err(MvccError::Corrupt(reason)) => assert!(reason.to_string().contains("version 5"), "{reason}"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a version out of step opened"),
    }
}

#[test]
fn a_key_put_many_times_in_one_txn_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let mut store = Mvcc::open(&path).unwrap();
    let mut txn = store.write();
    for value in [b"1", b"2", b"3"] {
        txn.put(b"k", value, 0).unwrap();
    }
    assert_eq!(txn.end(), 2);
    store.commit().unwrap();
    drop(store);
    let store = Mvcc::open(&path).unwrap();
    let got = store
        .range(
            KeySpan {
                key: b"k",
                end: RangeEnd::Key,
            },
            RangeOptions::default(),
        )
        .unwrap();
    assert_eq!(
        (got.kvs[0].version, got.kvs[0].mod_revision, &got.kvs[0].value[..]),
        (3, 2, &b"3"[..])
    );
}

#[test]
fn a_stored_version_no_put_can_follow_is_corruption() {
    let opened = opened_after(|tree| {
        // `k` deleted at revision 4 and put again at 5: a generation that
        // starts at a version the next put could not follow.
        let deleted = KeyValue {
            key: b"k".to_vec(),
            mod_revision: 4,
            ..Default::default()
        };
        let put = KeyValue {
            key: b"k".to_vec(),
            create_revision: 5,
            mod_revision: 5,
            version: i64::MAX,
            ..Default::default()
        };
        for (revision, tombstone, kv) in [(4, true, deleted), (5, false, put)] {
            let record = super::record::encode_record(tombstone, &kv);
            tree.insert(&RevisionKeys::default().key(Revision::new(revision, 0)), &record)
                .unwrap();
        }
        tree.insert(b"mcurrent_revision", &5i64.to_be_bytes()).unwrap();
    });
    match opened {
        Err(MvccError::Corrupt(reason)) => {
            assert!(reason.to_string().contains("version 9223372036854775807"), "{reason}")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a version no put can follow opened"),
    }
}

#[test]
fn a_stored_current_revision_no_write_can_follow_is_corruption() {
    for revision in [i64::MAX, 0, -3] {
        let opened = opened_after(|tree| tree.insert(b"mcurrent_revision", &revision.to_be_bytes()).unwrap());
        assert!(matches!(opened, Err(MvccError::Corrupt(_))), "{revision}");
    }
}

/// A store given `puts` puts of `value_bytes`-byte values over `keys` keys
/// picked by a fixed pseudo-random sequence, committed every 500 (as the
/// server batches them).
fn store_after_random_puts(path: &std::path::Path, puts: u64, keys: u64, value_bytes: usize) -> Mvcc {
    let mut store = Mvcc::open(path).unwrap();
    let value = vec![b'v'; value_bytes];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for n in 0..puts {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut txn = store.write();
        txn.put(format!("{:08}", state % keys).as_bytes(), &value, 0).unwrap();
        txn.end();
        if n % 500 == 499 {
            store.commit().unwrap();
        }
    }
    store.commit().unwrap();
    store
}

/// One line on where a store's pages go (`--nocapture` shows it).
fn space_line(label: &str, store: &Mvcc) -> crate::btree::CheckReport {
    let report = store.check_tree().unwrap();
    println!(
        "{label}: allocated {} pages, in use {}, leaves {} ({:.1}% full), branches {}, unreachable {}",
        store.allocated_bytes() / crate::page::PAGE_BYTES as u64,
        store.in_use_bytes() / crate::page::PAGE_BYTES as u64,
        report.leaf_pages,
        report.leaf_fill() * 100.0,
        report.branch_pages,
        report.unreachable_pages
    );
    report
}

/// Defragments as the server does: bounded steps each committed, a second
/// pass if the first lowered the target, then a trim.
fn defragment(store: &mut Mvcc) {
    for _pass in 0..2 {
        let target = store.defragment_target();
        let mut from = Vec::new();
        while let Some(next) = store.defragment_step(&from, target, 256).unwrap() {
            store.commit().unwrap();
            from = next;
        }
        store.commit().unwrap();
        if store.defragment_target() >= target {
            break;
        }
    }
    store.commit().unwrap();
    store.commit().unwrap();
    store.request_trim();
    store.commit().unwrap();
}

#[test]
fn revisions_fill_their_leaves_before_and_after_compaction_and_defragmentation() {
    let dir = tempfile::tempdir().unwrap();
    let (puts, keys) = (30_000, 10_000);
    let mut store = store_after_random_puts(&dir.path().join("s.db"), puts, keys, 256);
    let written = space_line("after the puts", &store);
    assert!(
        written.leaf_fill() > 0.95,
        "revision leaves {:.2} full",
        written.leaf_fill()
    );
    store.compact(store.current_revision()).unwrap();
    while !store.compact_step(1000).unwrap() {}
    store.commit().unwrap();
    space_line("after the compaction", &store);
    defragment(&mut store);
    let packed = space_line("after the defragmentation", &store);
    assert!(packed.leaf_fill() > 0.9, "leaves {:.2} full", packed.leaf_fill());
    // Their parents pack too: a compaction leaves them holding a third of the
    // leaves they did (about 23 a page after packing the leaves alone).
    assert!(
        packed.branch_pages * 40 <= packed.leaf_pages,
        "{} branches for {} leaves",
        packed.branch_pages,
        packed.leaf_pages
    );
    let pages = store.allocated_bytes() / crate::page::PAGE_BYTES as u64;
    assert!(
        pages <= (packed.leaf_pages + packed.branch_pages) * 105 / 100 + 2,
        "{pages} pages for {} leaves and {} branches",
        packed.leaf_pages,
        packed.branch_pages
    );
}

//! The page store on its own: meta page alternation, recovery after a torn
//! commit, corruption refused, fsync errors never retried, space reused.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;

use super::layout::HeaderError;
use super::sim::SimPageIo;
use super::*;

fn data_page(store: &mut PageStore, fill: u8) -> PageImage {
    let id = store.allocate();
    let mut page = new_page(PageKind::Leaf, 1, id);
    page[HEADER_BYTES..].fill(fill);
    (id, page)
}

fn reopen(io: &Arc<SimPageIo>) -> Result<PageStore, PageError> {
    PageStore::open(Arc::clone(io) as Arc<dyn PageIo>)
}

#[test]
fn a_new_file_opens_empty_and_commits_alternate_meta_slots() {
    let io = SimPageIo::new();
    let mut store = reopen(&io).unwrap();
    assert_eq!(store.committed_root(), None);
    for round in 1..=4u8 {
        let (id, page) = data_page(&mut store, round);
        store.commit(Some(id), vec![(id, page)]).unwrap();
        let reopened = reopen(&io).unwrap();
        assert_eq!(reopened.durable.txid, round as u64);
        assert_eq!(reopened.durable.slot(), round as u64 % 2);
        assert_eq!(reopened.committed_root(), Some(id));
        let page = reopened.page(id).unwrap();
        assert_eq!((page.kind, page.bytes[HEADER_BYTES]), (PageKind::Leaf, round));
        assert!(page.verified_now, "the first read after opening verifies");
        assert!(!reopened.page(id).unwrap().verified_now, "later reads trust it");
    }
}

/// Replays `plan`'s I/O by hand up to a crash: page writes (and, with
/// `pages_synced`, their fdatasync and the meta write), then a power cut.
fn crash_during(io: &Arc<SimPageIo>, plan: CommitPlan, pages_synced: bool, seed: u64) {
    for (&id, bytes) in plan.pages.iter() {
        io.write_at(id * PAGE_BYTES as u64, bytes).unwrap();
    }
    if pages_synced {
        io.sync().unwrap();
        io.write_at(plan.meta.slot() * PAGE_BYTES as u64, &plan.meta.encode())
            .unwrap();
    }
    io.crash(seed);
}

#[test]
fn a_commit_torn_by_a_crash_leaves_the_previous_one_or_the_new_one_whole() {
    for seed in 0..40 {
        for pages_synced in [false, true] {
            let io = SimPageIo::new();
            let mut store = reopen(&io).unwrap();
            let (first, page) = data_page(&mut store, 1);
            store.commit(Some(first), vec![(first, page)]).unwrap();
            let (second, page) = data_page(&mut store, 2);
            let plan = store.seal(Some(second), vec![(second, page)]).unwrap();
            crash_during(&io, plan, pages_synced, seed);
            let reopened = reopen(&io).unwrap();
            let root = reopened.committed_root().unwrap();
            assert!(
                pages_synced || root == first,
                "seed {seed}: the meta page was never written"
            );
            let bytes = reopened.page(root).unwrap().bytes;
            assert_eq!(bytes[HEADER_BYTES], if root == first { 1 } else { 2 }, "seed {seed}");
        }
    }
}

#[test]
fn a_damaged_page_is_reported_as_corruption_not_skipped() {
    let io = SimPageIo::new();
    let mut store = reopen(&io).unwrap();
    let (id, page) = data_page(&mut store, 9);
    store.commit(Some(id), vec![(id, page)]).unwrap();
    io.corrupt(id * PAGE_BYTES as u64 + 100);
    let reopened = reopen(&io).unwrap();
    let error = reopened.page(id).unwrap_err();
    assert!(
        matches!(error, PageError::Corrupt { page, .. } if page == id),
        "{error}"
    );
}

#[test]
fn corruption_keeps_the_checks_error_as_its_source_and_says_what_it_is() {
    let io = SimPageIo::new();
    let mut store = reopen(&io).unwrap();
    let (id, page) = data_page(&mut store, 9);
    store.commit(Some(id), vec![(id, page)]).unwrap();
    io.corrupt(id * PAGE_BYTES as u64 + 100);
    let error = reopen(&io).unwrap().page(id).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("page store corrupt at page {id}: page checksum mismatch")
    );
    let source = std::error::Error::source(&error).and_then(|source| source.downcast_ref::<HeaderError>());
    assert_eq!(source, Some(&HeaderError::Checksum));
}

#[test]
fn a_file_with_no_valid_meta_page_is_refused() {
    let io = SimPageIo::new();
    let mut store = reopen(&io).unwrap();
    let (id, page) = data_page(&mut store, 1);
    store.commit(Some(id), vec![(id, page)]).unwrap();
    io.corrupt(10);
    io.corrupt(PAGE_BYTES as u64 + 10);
    let error = reopen(&io).err().expect("refused");
    assert!(error.to_string().contains("no valid meta page"), "{error}");
}

/// A page count whose size in bytes is past u64 (found by the page_store
/// fuzzer): refused as corruption, not an overflow (or, wrapped, a check
/// passed and a huge allocation).
#[test]
fn a_meta_page_counting_more_bytes_than_a_u64_holds_is_refused() {
    let io = SimPageIo::new();
    reopen(&io).unwrap();
    let meta = super::meta::Meta {
        txid: 1,
        root: None,
        freelist_head: None,
        freelist_format: FreelistFormat::Map,
        page_count: 1 << 62,
    };
    io.write_at(PAGE_BYTES as u64, &meta.encode()).unwrap();
    io.sync().unwrap();
    let error = reopen(&io).err().expect("refused");
    assert!(error.to_string().contains("meta page counts"), "{error}");
}

/// A page id whose offset is past usize (a branch's child as the page_store
/// fuzzer wrote it): corruption, not an overflow.
#[test]
fn a_page_id_past_any_offset_is_corruption() {
    let io = SimPageIo::new();
    let store = reopen(&io).unwrap();
    for id in [u64::MAX, u64::MAX / PAGE_BYTES as u64 + 1] {
        let error = store.page(id).expect_err("refused");
        assert!(error.to_string().contains("past the end"), "{id}: {error}");
    }
}

/// A meta page whose freelist starts at a page past its own page count, a
/// page that verifies and lists pages within the count (the page_store fuzzer
/// made one): corruption, not a broken freelist invariant.
#[test]
fn a_freelist_page_past_the_page_count_is_corruption() {
    let io = SimPageIo::new();
    let mut store = reopen(&io).unwrap();
    let (live, page) = data_page(&mut store, 0);
    store.commit(Some(live), vec![(live, page)]).unwrap();
    let meta = super::meta::Meta {
        txid: store.durable.txid + 1,
        root: None,
        freelist_head: Some(3),
        freelist_format: FreelistFormat::Chain,
        page_count: 3,
    };
    let mut freelist = layout::new_page(PageKind::Freelist, 1, 3);
    freelist[HEADER_BYTES + 8..HEADER_BYTES + 16].copy_from_slice(&2u64.to_le_bytes());
    layout::seal_page(&mut freelist, meta.txid);
    io.write_at(3 * PAGE_BYTES as u64, &freelist).unwrap();
    io.write_at(meta.slot() * PAGE_BYTES as u64, &meta.encode()).unwrap();
    io.sync().unwrap();
    let error = reopen(&io).err().expect("refused");
    assert!(error.to_string().contains("a freelist page outside"), "{error}");
}

#[test]
fn an_fsync_error_poisons_the_store() {
    let io = SimPageIo::new();
    let mut store = reopen(&io).unwrap();
    let (id, page) = data_page(&mut store, 1);
    io.fail_next_sync();
    assert!(store.commit(Some(id), vec![(id, page)]).is_err());
    assert!(matches!(store.seal(None, Vec::new()), Err(PageError::Poisoned)));
    let reopened = reopen(&io).unwrap();
    assert_eq!(
        reopened.committed_root(),
        None,
        "the failed commit never became durable"
    );
}

#[test]
fn released_pages_are_reused_and_the_file_stops_growing() {
    let io = SimPageIo::new();
    let mut store = reopen(&io).unwrap();
    let (mut live, page) = data_page(&mut store, 0);
    store.commit(Some(live), vec![(live, page)]).unwrap();
    for round in 0..200u8 {
        // Copy-on-write of the one live page, as the tree does.
        let (id, page) = data_page(&mut store, round);
        store.release(live);
        live = id;
        store.commit(Some(live), vec![(live, page)]).unwrap();
        // A reused page holds new bytes: its first read verifies it again
        // (and so, above the page store, its layout is checked again).
        let read = store.page(live).unwrap();
        assert_eq!(read.bytes[HEADER_BYTES], round);
        assert!(read.verified_now, "round {round}: page {live} read back unverified");
    }
    assert!(
        store.freelist.page_count() < 10,
        "pages in use: {}",
        store.freelist.page_count()
    );
    let reopened = reopen(&io).unwrap();
    assert_eq!(reopened.committed_root(), Some(live));
    assert_eq!(reopened.freelist.page_count(), store.freelist.page_count());
}

/// Pages enough to grow a new (1 MiB) file, as one commit.
fn pages_past_the_first_grow_step(store: &mut PageStore) -> (PageId, Vec<PageImage>) {
    let pages: Vec<PageImage> = (0..300).map(|i| data_page(store, i as u8)).collect();
    (pages[0].0, pages)
}

#[test]
fn a_commit_that_cannot_grow_the_file_writes_nothing_and_runs_again_once_there_is_room() {
    let io = SimPageIo::new();
    let mut store = reopen(&io).unwrap();
    let file_bytes = store.file_bytes();
    io.limit_file_bytes(Some(file_bytes));
    let (root, pages) = pages_past_the_first_grow_step(&mut store);
    let syncs = io.syncs();
    let plan = store.seal(Some(root), pages).unwrap();
    let result = plan.execute();
    assert!(matches!(result, Err(PageError::NoSpace { .. })));
    assert!(matches!(store.finish(result), Err(PageError::NoSpace { .. })));
    assert_eq!(io.syncs(), syncs, "nothing was written, so nothing was synced");
    assert_eq!(io.size().unwrap(), file_bytes, "the file kept its length");
    assert_eq!(reopen(&io).unwrap().committed_root(), None, "the commit was not made");
    // The sealed commit stays readable from memory meanwhile.
    assert_eq!(store.committed_root(), Some(root));
    assert_eq!(store.page(root).unwrap().bytes[HEADER_BYTES], 0);

    // Still no room: the same commit fails the same way, and is not poisoned.
    let result = store.retry_commit().execute();
    assert!(matches!(store.finish(result), Err(PageError::NoSpace { .. })));

    io.limit_file_bytes(None);
    let result = store.retry_commit().execute();
    store.finish(result).unwrap();
    assert!(store.file_bytes() > file_bytes);
    let reopened = reopen(&io).unwrap();
    assert_eq!(reopened.committed_root(), Some(root));
    assert_eq!(reopened.durable.txid, 1, "one commit, made once");
    assert_eq!(reopened.page(root).unwrap().bytes[HEADER_BYTES], 0);
    // And the store takes the next commit as usual.
    let (id, page) = data_page(&mut store, 7);
    store.commit(Some(id), vec![(id, page)]).unwrap();
}

#[test]
fn other_errors_while_committing_stay_fatal() {
    let io = SimPageIo::new();
    let mut store = reopen(&io).unwrap();
    let (root, pages) = pages_past_the_first_grow_step(&mut store);
    io.fail_write_after(0);
    assert!(matches!(store.commit(Some(root), pages), Err(PageError::Io { .. })));
    assert!(matches!(store.seal(None, Vec::new()), Err(PageError::Poisoned)));
}

/// Writes a format-1 file by hand, as a build before the free-page map did:
/// `live` pages in use, `free` listed on a kind-5 chain of two pages.
fn format_1_file(live: &[PageId], free: &[PageId], chain: [PageId; 2]) -> Arc<SimPageIo> {
    let io = SimPageIo::new();
    drop(reopen(&io).unwrap());
    let page_count = live.iter().chain(free).chain(&chain).max().unwrap() + 1;
    io.grow(page_count * PAGE_BYTES as u64).unwrap();
    let txid = 1;
    for &id in live {
        let mut page = new_page(PageKind::Leaf, 1, id);
        page[HEADER_BYTES..HEADER_BYTES + 8].copy_from_slice(&id.to_le_bytes());
        seal_page(&mut page, txid);
        io.write_at(id * PAGE_BYTES as u64, &page).unwrap();
    }
    let (first, second) = free.split_at(free.len() / 2);
    for (id, next, ids) in [(chain[0], Some(chain[1]), first), (chain[1], None, second)] {
        let mut page = freemap::encode_chain_page(id, next, ids);
        seal_page(&mut page, txid);
        io.write_at(id * PAGE_BYTES as u64, &page).unwrap();
    }
    let meta = super::meta::Meta {
        txid,
        root: live.first().copied(),
        freelist_head: Some(chain[0]),
        freelist_format: FreelistFormat::Chain,
        page_count,
    };
    io.write_at(meta.slot() * PAGE_BYTES as u64, &meta.encode()).unwrap();
    io.sync().unwrap();
    io
}

#[test]
fn a_file_with_a_format_1_freelist_opens_and_its_next_commit_writes_the_map() {
    let live: Vec<PageId> = (2..40).step_by(3).collect();
    let free: Vec<PageId> = (2..40).filter(|id| id % 3 != 2).collect();
    let io = format_1_file(&live, &free, [40, 41]);
    let mut store = reopen(&io).unwrap();
    assert_eq!(store.durable.freelist_format, FreelistFormat::Chain);
    let (read, _) = store.read_free_pages().unwrap();
    assert_eq!(read, free.iter().copied().collect());
    let unreachable: BTreeSet<PageId> = store.unreachable_pages().collect();
    assert!(
        unreachable.contains(&40) && unreachable.contains(&41),
        "the chain is accounted"
    );

    let (id, page) = data_page(&mut store, 7);
    store.release(live[1]);
    store.commit(Some(id), vec![(id, page)]).unwrap();
    let reopened = reopen(&io).unwrap();
    assert_eq!(reopened.durable.freelist_format, FreelistFormat::Map);
    let (read, map) = reopened.read_free_pages().unwrap();
    let map_pages: BTreeSet<PageId> = map.index.iter().chain(map.bitmaps.iter().flatten()).copied().collect();
    let mut expected: BTreeSet<PageId> = free.iter().copied().chain([40, 41, live[1]]).collect();
    expected.remove(&id);
    expected.retain(|id| !map_pages.contains(id));
    assert_eq!(read, expected, "the old chain's pages and the released page are free");
    for &id in live.iter().filter(|&&id| id != live[1]) {
        assert_eq!(get_u64(reopened.page(id).unwrap().bytes, HEADER_BYTES), id);
    }
}

/// The map of the durable commit, rewritten by `edit` and sealed in place.
fn forge_map(io: &Arc<SimPageIo>, edit: impl FnOnce(&mut [u8], &mut [u8])) {
    let store = reopen(io).unwrap();
    let index = store.durable.freelist_head.unwrap();
    let (_, map) = store.read_free_pages().unwrap();
    let bitmap = map.bitmaps[0].unwrap();
    let read = |id: PageId| store.page(id).unwrap().bytes.to_vec();
    let (mut index_page, mut bitmap_page) = (read(index), read(bitmap));
    edit(&mut index_page, &mut bitmap_page);
    for (id, mut page) in [(index, index_page), (bitmap, bitmap_page)] {
        let txid = get_u64(&page, 8);
        seal_page(&mut page, txid);
        io.write_at(id * PAGE_BYTES as u64, &page).unwrap();
    }
    io.sync().unwrap();
}

/// A store of one commit with some pages free.
fn store_with_free_pages() -> Arc<SimPageIo> {
    let io = SimPageIo::new();
    let mut store = reopen(&io).unwrap();
    let pages: Vec<PageImage> = (0..20).map(|i| data_page(&mut store, i)).collect();
    let ids: Vec<PageId> = pages.iter().map(|(id, _)| *id).collect();
    store.commit(Some(ids[0]), pages).unwrap();
    ids[10..].iter().for_each(|&id| store.release(id));
    store.commit(Some(ids[0]), Vec::new()).unwrap();
    io
}

#[test]
fn a_forged_free_page_map_is_corruption_not_a_panic() {
    type Edit = fn(&mut [u8], &mut [u8]);
    let cases: [(&str, Edit); 6] = [
        ("lists itself as free", |index, bitmap| {
            // The bitmap marks the index page itself free.
            let id = get_u64(index, 16);
            bitmap[HEADER_BYTES + 8 + (id / 8) as usize] |= 1 << (id % 8);
            let count = get_u16(bitmap, 6) + 1;
            bitmap[6..8].copy_from_slice(&count.to_le_bytes());
        }),
        ("counts", |_, bitmap| bitmap[6] ^= 1),
        ("index names 2 ranges", |index, _| {
            let first = get_u64(index, HEADER_BYTES + 8);
            index[HEADER_BYTES + 16..HEADER_BYTES + 24].copy_from_slice(&first.to_le_bytes());
            index[6] = 2;
        }),
        ("outside pages 2..", |index, _| {
            index[HEADER_BYTES + 8..HEADER_BYTES + 16].copy_from_slice(&1_000_000u64.to_le_bytes());
        }),
        ("a freelist page named twice", |index, _| {
            let own = get_u64(index, 16);
            index[HEADER_BYTES + 8..HEADER_BYTES + 16].copy_from_slice(&own.to_le_bytes());
        }),
        ("expected a FreeBitmap page, found Leaf", |index, _| {
            // Page 2 holds live data.
            index[HEADER_BYTES + 8..HEADER_BYTES + 16].copy_from_slice(&2u64.to_le_bytes());
        }),
    ];
    for (expected, edit) in cases {
        let io = store_with_free_pages();
        forge_map(&io, edit);
        let error = reopen(&io).err().unwrap_or_else(|| panic!("{expected}: opened"));
        assert!(matches!(error, PageError::Corrupt { .. }), "{expected}: {error}");
        assert!(error.to_string().contains(expected), "{expected}: {error}");
    }
}

#[test]
fn a_damaged_bitmap_page_is_refused_at_open() {
    let io = store_with_free_pages();
    let (_, map) = reopen(&io).unwrap().read_free_pages().unwrap();
    let bitmap = map.bitmaps[0].unwrap();
    io.corrupt(bitmap * PAGE_BYTES as u64 + 500);
    let error = reopen(&io).err().expect("refused");
    assert!(
        matches!(error, PageError::Corrupt { page, .. } if page == bitmap),
        "{error}"
    );
}

#[derive(Debug, Clone)]
enum ModelOp {
    /// Pages allocated and written by the open transaction.
    Write {
        pages: usize,
    },
    /// A live page released (the `pick`-th, wrapping).
    Release {
        pick: usize,
    },
    Commit,
    /// A commit torn by a power cut: its pages written (and, with
    /// `pages_synced`, synced and its meta page written), then the crash.
    TornCommit {
        pages_synced: bool,
        seed: u64,
    },
    /// A restart: the open transaction is lost.
    Reopen,
    /// A commit that gives back the free pages at the end of the file.
    TrimCommit,
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        4 => (1usize..6).prop_map(|pages| ModelOp::Write { pages }),
        4 => any::<usize>().prop_map(|pick| ModelOp::Release { pick }),
        3 => Just(ModelOp::Commit),
        2 => (any::<bool>(), any::<u64>()).prop_map(|(pages_synced, seed)| ModelOp::TornCommit { pages_synced, seed }),
        1 => Just(ModelOp::Reopen),
        1 => Just(ModelOp::TrimCommit),
    ]
}

/// Live pages, each with the stamp it was written with.
type LivePages = BTreeMap<PageId, u64>;

fn stamped_page(store: &mut PageStore, stamp: u64) -> PageImage {
    let id = store.allocate();
    let mut page = new_page(PageKind::Leaf, 1, id);
    page[HEADER_BYTES..HEADER_BYTES + 8].copy_from_slice(&stamp.to_le_bytes());
    (id, page)
}

/// The store's accounting against the model: every page is meta, live, or
/// unreachable, exactly one of these; after an open, unreachable means listed
/// free on disk or a page of the freelist itself.
fn check_against(store: &PageStore, live: &LivePages) {
    let unreachable: Vec<PageId> = store.unreachable_pages().collect();
    let mut seen: BTreeSet<PageId> = live.keys().copied().collect();
    for id in unreachable {
        assert!(
            seen.insert(id),
            "page {id} both live and unreachable, or unreachable twice"
        );
    }
    assert_eq!(seen, (META_PAGE_COUNT..store.page_count()).collect(), "pages leaked");
}

/// A reopened store: its live pages hold what was written, and its freelist
/// on disk is the complement of them.
fn check_durable(store: &PageStore, live: &LivePages) {
    for (&id, &stamp) in live {
        let page = store.page(id).unwrap_or_else(|error| panic!("live page {id}: {error}"));
        assert_eq!(get_u64(page.bytes, HEADER_BYTES), stamp, "live page {id} overwritten");
    }
    let (free, map) = store.read_free_pages().unwrap();
    let mut expected: BTreeSet<PageId> = (META_PAGE_COUNT..store.page_count()).collect();
    for id in live.keys().chain(&map.index).chain(map.bitmaps.iter().flatten()) {
        expected.remove(id);
    }
    assert_eq!(free, expected, "the freelist on disk");
    check_against(store, live);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// The freelist against a set model across commits, torn commits,
    /// restarts and trims: a torn commit leaves the previous commit's pages
    /// and freelist whole, and every freelist read back is exactly the pages
    /// no live page and no freelist page uses.
    #[test]
    fn the_freelist_on_disk_is_the_complement_of_the_live_pages(ops in prop::collection::vec(model_op(), 1..60)) {
        let io = SimPageIo::new();
        let mut store = reopen(&io).unwrap();
        let (mut durable, mut building) = (LivePages::new(), LivePages::new());
        let mut stamp = 0u64;
        for op in ops {
            match op {
                ModelOp::Write { pages } => {
                    for _ in 0..pages {
                        stamp += 1;
                        let (id, page) = stamped_page(&mut store, stamp);
                        building.insert(id, stamp);
                        // One commit of one page each: the store takes pages per seal.
                        let root = building.keys().next().copied();
                        store.commit(root, vec![(id, page)]).unwrap();
                        durable = building.clone();
                    }
                }
                ModelOp::Release { pick } => {
                    if let Some(&id) = building.keys().nth(pick % building.len().max(1)) {
                        store.release(id);
                        building.remove(&id);
                    }
                }
                ModelOp::Commit | ModelOp::TrimCommit => {
                    if matches!(op, ModelOp::TrimCommit) {
                        store.request_trim();
                    }
                    store.commit(building.keys().next().copied(), Vec::new()).unwrap();
                    durable = building.clone();
                }
                ModelOp::TornCommit { pages_synced, seed } => {
                    let txid = store.durable.txid;
                    let plan = store.seal(building.keys().next().copied(), Vec::new()).unwrap();
                    crash_during(&io, plan, pages_synced, seed);
                    store = reopen(&io).unwrap();
                    if store.durable.txid > txid {
                        prop_assert!(pages_synced, "a meta page never written won");
                        durable = building.clone();
                    }
                    building = durable.clone();
                    check_durable(&store, &durable);
                }
                ModelOp::Reopen => {
                    store = reopen(&io).unwrap();
                    building = durable.clone();
                    check_durable(&store, &durable);
                }
            }
            check_against(&store, &building);
        }
        let reopened = reopen(&io).unwrap();
        check_durable(&reopened, &durable);
    }
}

//! The page store on its own: meta page alternation, recovery after a torn
//! commit, corruption refused, fsync errors never retried, space reused.

use std::sync::Arc;

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

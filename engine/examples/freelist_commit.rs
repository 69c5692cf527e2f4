//! Bench: what one small commit costs on a page file with many free pages (the
//! freelist's share of a commit; docs/benchmarks.md, "The freelist's cost per
//! commit"). Not a test: it prints, it asserts nothing about time.
//!
//! It fills a page file of `--fill-pages` pages (default 262,144: 1 GiB),
//! releases every other page (a compaction that freed half of the file, its
//! free pages scattered), then makes `--commits` commits that each copy a path
//! of three pages as a put does in the tree (three pages allocated, three
//! released), and reports per commit: the seal's time (on the store core), the
//! execution's time (writes and two fdatasyncs, off the core) and the bytes
//! written.
//!
//! `cargo run --release -p ringkv-engine --example freelist_commit -- [--dir DIR] [--fill-pages N] [--commits N]`

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringkv_engine::page::{new_page, FilePageIo, Mapping, PageId, PageIo, PageKind, PageStore, HEADER_BYTES};

/// Pages written per fill commit.
const FILL_BATCH_PAGES: u64 = 4096;
/// Pages a put copies in the tree: a path from the root to a leaf.
const PATH_PAGES: usize = 3;

/// The real file, counting the bytes written to it.
struct CountingIo {
    file: FilePageIo,
    written_bytes: AtomicU64,
}

impl PageIo for CountingIo {
    fn size(&self) -> std::io::Result<u64> {
        self.file.size()
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.written_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.file.write_at(offset, data)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.file.sync()
    }
    fn grow(&self, len: u64) -> std::io::Result<()> {
        self.file.grow(len)
    }
    fn truncate(&self, len: u64) -> std::io::Result<()> {
        self.file.truncate(len)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.file.read_at(offset, buf)
    }
    fn map(&self) -> std::io::Result<Mapping> {
        self.file.map()
    }
}

struct Options {
    dir: PathBuf,
    fill_pages: u64,
    commits: usize,
}

fn options() -> Options {
    let mut options = Options {
        dir: std::env::temp_dir().join("ringkv-freelist-bench"),
        fill_pages: 262_144,
        commits: 500,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => options.dir = PathBuf::from(value),
            "--fill-pages" => options.fill_pages = value.parse().expect("--fill-pages N"),
            "--commits" => options.commits = value.parse().expect("--commits N"),
            _ => panic!("unknown flag {flag}"),
        }
    }
    options
}

fn leaf(store: &mut PageStore) -> (PageId, Box<[u8]>) {
    let id = store.allocate();
    let mut page = new_page(PageKind::Leaf, 0, id);
    page[HEADER_BYTES..HEADER_BYTES + 8].copy_from_slice(&id.to_le_bytes());
    (id, page)
}

/// A deterministic xorshift, so every run picks the same pages.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

fn main() {
    let options = options();
    let _ = std::fs::remove_dir_all(&options.dir);
    std::fs::create_dir_all(&options.dir).expect("the bench directory");
    let io = Arc::new(CountingIo {
        file: FilePageIo::open(&options.dir.join("store.db")).expect("the page file"),
        written_bytes: AtomicU64::new(0),
    });
    let mut store = PageStore::open(Arc::clone(&io) as Arc<dyn PageIo>).expect("a new store");

    let mut live: Vec<PageId> = Vec::new();
    while (live.len() as u64) < options.fill_pages {
        let batch = FILL_BATCH_PAGES.min(options.fill_pages - live.len() as u64);
        let pages: Vec<_> = (0..batch).map(|_| leaf(&mut store)).collect();
        live.extend(pages.iter().map(|(id, _)| *id));
        store.commit(Some(live[0]), pages).expect("a fill commit");
    }
    // A compaction freed every other page.
    let (kept, freed): (Vec<_>, Vec<_>) = live.iter().enumerate().partition(|(index, _)| index % 2 == 0);
    freed.into_iter().for_each(|(_, &id)| store.release(id));
    live = kept.into_iter().map(|(_, &id)| id).collect();
    store.commit(Some(live[0]), Vec::new()).expect("the freeing commit");
    store
        .commit(Some(live[0]), Vec::new())
        .expect("a commit that reuses nothing");
    let free_pages = store.page_count() - live.len() as u64 - 2;
    println!(
        "page file: {} pages ({} MiB), {} live, {} free or freelist",
        store.page_count(),
        store.file_bytes() >> 20,
        live.len(),
        free_pages
    );

    let mut random = 0x9e37_79b9_7f4a_7c15;
    let mut seals = Vec::with_capacity(options.commits);
    let mut executions = Vec::with_capacity(options.commits);
    let written_before = io.written_bytes.load(Ordering::Relaxed);
    for _ in 0..options.commits {
        let mut pages = Vec::with_capacity(PATH_PAGES);
        for _ in 0..PATH_PAGES {
            let slot = (next_random(&mut random) % live.len() as u64) as usize;
            store.release(live[slot]);
            let (id, page) = leaf(&mut store);
            live[slot] = id;
            pages.push((id, page));
        }
        let started = Instant::now();
        let plan = store.seal(Some(live[0]), pages).expect("a seal");
        let sealed = Instant::now();
        let result = plan.execute();
        let executed = Instant::now();
        store.finish(result).expect("a commit");
        seals.push(sealed - started);
        executions.push(executed - sealed);
    }
    let written = io.written_bytes.load(Ordering::Relaxed) - written_before;
    seals.sort();
    executions.sort();
    let mean = |times: &[Duration]| times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "{} commits of {PATH_PAGES} pages copied: seal mean {:?} p50 {:?} p99 {:?}; execute mean {:?} p50 {:?} p99 {:?}; written per commit {} bytes ({} pages, meta page included)",
        options.commits,
        mean(&seals),
        percentile(&seals, 0.5),
        percentile(&seals, 0.99),
        mean(&executions),
        percentile(&executions, 0.5),
        percentile(&executions, 0.99),
        written / options.commits as u64,
        written / options.commits as u64 / 4096,
    );
    let _ = std::fs::remove_dir_all(&options.dir);
}

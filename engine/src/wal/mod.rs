//! The write-ahead log, which is also the raft log.
//!
//! Segments of fixed size, preallocated and pre-written (or recycled), written
//! with O_DIRECT in whole 4 KiB blocks. One `append` is one frame: one write,
//! awaited, then one fdatasync, awaited; it returns only when the frame is
//! durable. Every frame starts on a fresh block, so a block holding acknowledged
//! records is never written again. A full disk is not an I/O failure: a
//! segment that cannot be prepared for want of room is `WalError::NoSpace`,
//! which writes nothing more and leaves the WAL usable (see `append`). Formats
//! and the recovery rule are specified in docs/wal-format.md.

mod io;
mod record;
mod recovery;
#[cfg(any(test, feature = "sim"))]
pub mod sim;

#[cfg(test)]
mod no_space_tests;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use crate::no_space::is_no_space;
use crate::CorruptReason;

pub use io::{sync_directory, sync_parent_directory, DmaDir, DmaSegment, WalDir, WalFile};
pub use record::{EntryRecord, HardStateRecord, Record, SnapshotRecord, BLOCK_BYTES};

// Fuzz targets build frames the writer would write, then damage them.
pub(crate) use record::encode_frame;
use record::{
    metadata_record_bytes, payload_bytes_max, records_fitting, snapshot_record_bytes, FRAME_HEADER_BYTES,
    HARD_STATE_RECORD_BYTES,
};
use recovery::{LiveSegment, SegmentName};

/// etcd's WAL segment size, and ours.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct WalOptions {
    /// Size of every segment file; a multiple of the block size.
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
        }
    }
}

impl WalOptions {
    /// The configured limit on a record (`encoded_len`). An append can refuse a
    /// smaller one when the records that start every segment leave less room.
    pub fn record_bytes_max(&self) -> usize {
        self.segment_bytes as usize / 2
    }
}

/// What the WAL held at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub metadata: Vec<u8>,
    pub snapshot: Option<SnapshotRecord>,
    pub hard_state: Option<HardStateRecord>,
    /// Contiguous entries after the snapshot's index.
    pub entries: Vec<EntryRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL I/O error while {context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("WAL is corrupt: {file} at offset {offset}: {reason}")]
    Corrupt {
        file: PathBuf,
        offset: u64,
        #[source]
        reason: CorruptReason,
    },
    #[error("WAL is unusable after an earlier I/O error")]
    Poisoned,
    #[error("a WAL record of {bytes} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { bytes: usize, max: usize },
    #[error("a WAL already exists in {0}")]
    Exists(PathBuf),
    /// The next segment could not be prepared for want of room. Of the append,
    /// the first `written` records are durable and nothing after them was
    /// written; the WAL is not poisoned: append the rest again later.
    #[error("no space left to prepare WAL segment {segment} ({written} records of the append are durable): {source}")]
    NoSpace {
        segment: String,
        written: usize,
        source: std::io::Error,
    },
}

impl WalError {
    fn io(context: &str, source: std::io::Error) -> WalError {
        WalError::Io {
            context: context.to_string(),
            source,
        }
    }
}

/// The segment being written.
struct Active<F> {
    name: SegmentName,
    file: F,
    offset: u64,
    max_entry_index: u64,
}

/// A segment ready to become the next active one, being prepared, or whose
/// preparation failed.
enum Spare<F> {
    Ready(SegmentName, F),
    Preparing(SegmentName, glommio::Task<std::io::Result<F>>),
    /// For want of room: tried again at the roll and on `retry_spare`. Any
    /// other error is reported, as fatal, at the roll.
    Failed(SegmentName, std::io::Error),
}

pub struct Wal<D: WalDir = DmaDir> {
    dir: D,
    options: WalOptions,
    metadata: Vec<u8>,
    latest_snapshot: Option<SnapshotRecord>,
    latest_hard_state: Option<HardStateRecord>,
    /// Older segments, oldest first.
    sealed: Vec<LiveSegment>,
    active: Active<D::File>,
    spare: Option<Spare<D::File>>,
    next_batch_seq: u64,
    poisoned: bool,
}

impl Wal<DmaDir> {
    /// True if `dir` holds a WAL.
    pub fn exists(dir: &Path) -> bool {
        dir.is_dir()
    }

    /// Creates a WAL in `dir`, which must not exist, holding `metadata` and the
    /// initial `snapshot` record. The directory appears only once its first
    /// segment, the metadata and the snapshot record are durable.
    pub async fn create(
        dir: &Path,
        options: WalOptions,
        metadata: Vec<u8>,
        snapshot: SnapshotRecord,
    ) -> Result<Self, WalError> {
        if Wal::exists(dir) {
            return Err(WalError::Exists(dir.to_path_buf()));
        }
        let staging = dir.with_extension("creating");
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| WalError::io("clearing a half-created WAL", e))?;
        }
        std::fs::create_dir_all(&staging).map_err(|e| WalError::io("creating the WAL directory", e))?;
        let mut wal = Wal::create_in(DmaDir::new(&staging), options, metadata, snapshot).await?;
        std::fs::rename(&staging, dir).map_err(|e| WalError::io("naming the WAL directory", e))?;
        sync_parent(dir).await?;
        // Nothing may keep a path into the staging directory: creation starts no
        // spare, and the active segment is opened again under its final path.
        assert!(wal.spare.is_none() && wal.sealed.is_empty());
        wal.dir = DmaDir::new(dir);
        wal.active.file = wal
            .dir
            .open(&wal.active.name.name)
            .await
            .map_err(|e| WalError::io("reopening the first segment", e))?;
        Ok(wal)
    }

    pub async fn open(dir: &Path, options: WalOptions) -> Result<(Self, Recovered), WalError> {
        Wal::open_in(DmaDir::new(dir), options).await
    }
}

async fn sync_parent(dir: &Path) -> Result<(), WalError> {
    io::sync_parent_directory(dir)
        .await
        .map_err(|e| WalError::io("syncing the data directory", e))
}

impl<D: WalDir + Clone + 'static> Wal<D> {
    /// A new WAL in an empty directory seam: segment 0, whose first frame holds
    /// the metadata and the initial snapshot record. Starts no spare.
    pub async fn create_in(
        dir: D,
        options: WalOptions,
        metadata: Vec<u8>,
        snapshot: SnapshotRecord,
    ) -> Result<Self, WalError> {
        assert_eq!(options.segment_bytes % BLOCK_BYTES as u64, 0);
        assert!(options.segment_bytes >= 4 * BLOCK_BYTES as u64);
        let name = SegmentName::new(0);
        let file = dir
            .create_prewritten(&name.name, options.segment_bytes)
            .await
            .map_err(|e| WalError::io("preparing the first segment", e))?;
        let mut wal = Wal {
            dir,
            options,
            metadata,
            latest_snapshot: None,
            latest_hard_state: None,
            sealed: Vec::new(),
            active: Active {
                name,
                file,
                offset: 0,
                max_entry_index: 0,
            },
            spare: None,
            next_batch_seq: 0,
            poisoned: false,
        };
        // The metadata goes with the first frame of every segment, and a WAL is
        // never without a snapshot record: a crash right after creation leaves a
        // WAL that opens.
        wal.write(&[Record::Snapshot(snapshot)]).await?;
        assert!(wal.latest_snapshot.is_some());
        Ok(wal)
    }

    /// Opens an existing WAL: replays it, truncates a torn tail, refuses corruption.
    pub async fn open_in(dir: D, options: WalOptions) -> Result<(Self, Recovered), WalError> {
        let scan = recovery::scan(&dir, options.segment_bytes)
            .await?
            .ok_or_else(|| WalError::Corrupt {
                file: dir.display_path(""),
                offset: 0,
                reason: "no WAL segment".into(),
            })?;
        let recovered = scan.recovered;
        let mut live = scan.live;
        let existing_spares: Vec<SegmentName> = scan.spares;
        // The end segment is the newest live one, or the file after it (its
        // first frame was torn, or the newest live one was full to the end and
        // a spare follows). Never replace an existing file: what it holds is
        // evidence, and the next frame overwrites its first block anyway.
        // When the end is a segment yet to be made (the newest file is full to
        // the end), the newest file stays active, full: open makes nothing
        // new, so that it works on a full disk; the first append rolls.
        let (active_name, active_offset, active_max) = if scan.end_segment_exists {
            let max = match live.last() {
                Some(last) if last.name == scan.end_segment => live.pop().expect("last").max_entry_index,
                _ => 0,
            };
            (scan.end_segment, scan.end_offset, max)
        } else {
            assert_eq!(scan.end_offset, 0);
            let full = live
                .pop()
                .expect("a log that ends after the last file has a live segment");
            assert_eq!(
                full.name.seq + 1,
                scan.end_segment.seq,
                "the end follows the newest file"
            );
            (full.name, options.segment_bytes, full.max_entry_index)
        };
        let file = dir
            .open(&active_name.name)
            .await
            .map_err(|e| WalError::io("opening the active segment", e))?;
        remove_leftover_temporaries(&dir).await?;
        let mut wal = Wal {
            dir,
            options,
            metadata: recovered.metadata.clone(),
            latest_snapshot: recovered.snapshot.clone(),
            latest_hard_state: recovered.hard_state,
            sealed: live,
            active: Active {
                name: active_name.clone(),
                file,
                offset: active_offset,
                max_entry_index: active_max,
            },
            spare: None,
            next_batch_seq: scan.next_batch_seq,
            poisoned: false,
        };
        // Keep the first spare after the active segment; remove any others.
        for spare in existing_spares {
            if spare == active_name {
                continue;
            }
            if spare.seq == wal.active.name.seq + 1 && wal.spare.is_none() {
                let file = wal
                    .dir
                    .open(&spare.name)
                    .await
                    .map_err(|e| WalError::io("opening a spare segment", e))?;
                wal.spare = Some(Spare::Ready(spare, file));
            } else {
                wal.dir
                    .remove(&spare.name)
                    .await
                    .map_err(|e| WalError::io("removing an unused segment", e))?;
            }
        }
        // A log past the middle of its segment needs the next one soon: find
        // out now whether there is room for it (see `out_of_space`).
        wal.prepare_spare_if_due();
        Ok((wal, recovered))
    }

    /// Appends `records` durably: on Ok, every record is on disk. Normally one
    /// write and one fdatasync. Any I/O error poisons the WAL (never retry an
    /// fsync: the kernel may have dropped the data), except two that write
    /// nothing: `RecordTooLarge`, and `NoSpace`, when the next segment cannot
    /// be prepared; then the records after the first `written` are to be
    /// appended again, once there is room.
    pub async fn append(&mut self, records: &[Record]) -> Result<(), WalError> {
        self.write(records).await?;
        self.prepare_spare_if_due();
        Ok(())
    }

    /// `append` without starting a spare.
    async fn write(&mut self, records: &[Record]) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        if records.is_empty() {
            return Ok(()); // nothing to make durable: no write, no sync, no roll
        }
        let max = self.append_record_bytes_max(records);
        if let Some(record) = records.iter().find(|r| r.encoded_len() > max) {
            return Err(WalError::RecordTooLarge {
                bytes: record.encoded_len(),
                max,
            });
        }
        let result = self.append_frames(records).await;
        if let Err(error) = &result {
            // Refusing a record or finding no room writes nothing (more);
            // anything else may have.
            if !matches!(error, WalError::RecordTooLarge { .. } | WalError::NoSpace { .. }) {
                self.poisoned = true;
            }
        }
        result
    }

    /// The largest record this append can take: the configured limit, or less if
    /// the records a segment starts with leave less room in an empty segment.
    /// Those are bounded from above: the metadata, the larger of the latest
    /// snapshot record and any in `records` (a snapshot written by this append
    /// starts the segments it rolls to), and a hard state if there is or will be one.
    fn append_record_bytes_max(&self, records: &[Record]) -> usize {
        let snapshot_bytes = self
            .latest_snapshot
            .iter()
            .chain(records.iter().filter_map(|r| match r {
                Record::Snapshot(snapshot) => Some(snapshot),
                _ => None,
            }))
            .map(snapshot_record_bytes)
            .max()
            .unwrap_or(0);
        let has_hard_state =
            self.latest_hard_state.is_some() || records.iter().any(|r| matches!(r, Record::HardState(_)));
        let hard_state_bytes = if has_hard_state { HARD_STATE_RECORD_BYTES } else { 0 };
        let start_bytes = metadata_record_bytes(&self.metadata) + snapshot_bytes + hard_state_bytes;
        let room = payload_bytes_max(self.options.segment_bytes as usize).saturating_sub(start_bytes);
        room.min(self.options.record_bytes_max())
    }

    async fn append_frames(&mut self, mut records: &[Record]) -> Result<(), WalError> {
        let mut written = 0;
        loop {
            let start = if self.active.offset == 0 {
                self.segment_start_records()
            } else {
                Vec::new()
            };
            let room = (self.options.segment_bytes - self.active.offset) as usize;
            let taken = records_fitting(&start, records, room);
            if taken == 0 {
                if self.active.offset == 0 {
                    // Not even an empty segment takes it: rolling on would loop
                    // forever. append_record_bytes_max refuses such records up front.
                    let start_bytes: usize = start.iter().map(Record::encoded_len).sum();
                    return Err(WalError::RecordTooLarge {
                        bytes: records[0].encoded_len(),
                        max: payload_bytes_max(room).saturating_sub(start_bytes),
                    });
                }
                self.roll().await.map_err(|error| match error {
                    WalError::NoSpace { segment, source, .. } => WalError::NoSpace {
                        segment,
                        written,
                        source,
                    },
                    other => other,
                })?;
                continue;
            }
            let frame_records: Vec<&Record> = start.iter().chain(&records[..taken]).collect();
            self.write_frame(&frame_records).await?;
            written += taken;
            records = &records[taken..];
            if records.is_empty() {
                return Ok(());
            }
        }
    }

    /// What every segment starts with, so that releasing older segments loses
    /// nothing: the metadata, the latest snapshot record and hard state. Cloned
    /// once per segment, not per append.
    fn segment_start_records(&self) -> Vec<Record> {
        let mut records = vec![Record::Metadata(self.metadata.clone())];
        if let Some(snapshot) = &self.latest_snapshot {
            records.push(Record::Snapshot(snapshot.clone()));
        }
        if let Some(hard_state) = self.latest_hard_state {
            records.push(Record::HardState(hard_state));
        }
        records
    }

    async fn write_frame(&mut self, records: &[&Record]) -> Result<(), WalError> {
        let frame = encode_frame(self.next_batch_seq, self.active.name.seq, records);
        assert!(frame.len() >= FRAME_HEADER_BYTES && frame.len().is_multiple_of(BLOCK_BYTES));
        assert!(self.active.offset + frame.len() as u64 <= self.options.segment_bytes);
        let written = self
            .active
            .file
            .write_at(self.active.offset, &frame)
            .await
            .map_err(|e| WalError::io(&format!("writing {}", self.active.name.name), e))?;
        if written != frame.len() {
            return Err(WalError::io(
                &format!("writing {}", self.active.name.name),
                std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("short write: {written} of {}", frame.len()),
                ),
            ));
        }
        // The write completed before the fsync was issued: they are ordered.
        self.active
            .file
            .sync()
            .await
            .map_err(|e| WalError::io(&format!("syncing {}", self.active.name.name), e))?;
        self.active.offset += frame.len() as u64;
        self.next_batch_seq += 1;
        for record in records {
            match record {
                Record::Entry(entry) => {
                    self.active.max_entry_index = self.active.max_entry_index.max(entry.index);
                }
                Record::HardState(hard_state) => self.latest_hard_state = Some(*hard_state),
                Record::Snapshot(snapshot) => self.latest_snapshot = Some(snapshot.clone()),
                Record::Metadata(_) => {}
            }
        }
        Ok(())
    }

    /// Seals the active segment and continues in the next one: the spare, or
    /// one made now. Without room for it, `NoSpace` (with `written` 0) and
    /// nothing changes but the spare, which is then `Failed`.
    async fn roll(&mut self) -> Result<(), WalError> {
        let next = SegmentName::new(self.active.name.seq + 1);
        let spare = match self.spare.take() {
            Some(Spare::Ready(name, file)) => Some((name, Ok(file))),
            Some(Spare::Preparing(name, task)) => Some((name, task.await)),
            Some(Spare::Failed(name, error)) => Some((name, Err(error))),
            None => None,
        };
        if let Some((name, _)) = &spare {
            assert_eq!(*name, next, "the spare is the segment after the active one");
        }
        let file = match spare.map(|(_, result)| result) {
            Some(Ok(file)) => file,
            Some(Err(error)) if !is_no_space(&error) => {
                return Err(WalError::io("preparing a segment", error));
            }
            // No spare, or none for want of room: the room may be back.
            _ => match self.dir.create_prewritten(&next.name, self.options.segment_bytes).await {
                Ok(file) => file,
                Err(error) if is_no_space(&error) => {
                    let kept = std::io::Error::new(error.kind(), error.to_string());
                    self.spare = Some(Spare::Failed(next.clone(), kept));
                    return Err(WalError::NoSpace {
                        segment: next.name,
                        written: 0,
                        source: error,
                    });
                }
                Err(error) => return Err(WalError::io("preparing a segment", error)),
            },
        };
        let sealed = std::mem::replace(
            &mut self.active,
            Active {
                name: next,
                file,
                offset: 0,
                max_entry_index: 0,
            },
        );
        self.sealed.push(LiveSegment {
            name: sealed.name,
            max_entry_index: sealed.max_entry_index,
        });
        Ok(())
    }

    /// Starts preparing the next segment once half of the active one is used, so
    /// the roll finds it ready and no append waits for a 64 MiB pre-write.
    /// After a preparation failed, only `retry_spare` (or the roll) tries again.
    fn prepare_spare_if_due(&mut self) {
        if self.spare.is_some() || self.active.offset < self.options.segment_bytes / 2 {
            return;
        }
        self.start_preparing();
    }

    fn start_preparing(&mut self) {
        let next = SegmentName::new(self.active.name.seq + 1);
        let dir = self.dir.clone();
        let bytes = self.options.segment_bytes;
        let name = next.name.clone();
        let task = glommio::spawn_local(async move { dir.create_prewritten(&name, bytes).await });
        self.spare = Some(Spare::Preparing(next, task));
    }

    /// True while the next segment could not be prepared for want of room
    /// (and none was recycled since): appends go on in the active segment,
    /// but the one that needs the next segment fails with `NoSpace`.
    pub fn out_of_space(&self) -> bool {
        matches!(&self.spare, Some(Spare::Failed(_, error)) if is_no_space(error))
    }

    /// Prepares the next segment again after it failed for want of room (the
    /// caller decides how often); no-op otherwise. See `settle_spare`.
    pub fn retry_spare(&mut self) {
        if self.out_of_space() {
            self.start_preparing();
        }
    }

    /// Waits until the preparation of the next segment that is running, if
    /// any, finishes, and keeps the outcome (ready, or failed: then
    /// `out_of_space` may say so). With none running it never returns.
    /// Cancel-safe: dropped while waiting, it leaves the preparation running.
    pub async fn settle_spare(&mut self) {
        let Some(Spare::Preparing(_, task)) = &mut self.spare else {
            return futures_lite::future::pending().await;
        };
        let result = task.await;
        let Some(Spare::Preparing(name, _)) = self.spare.take() else {
            unreachable!("the spare being prepared was awaited above");
        };
        self.spare = Some(match result {
            Ok(file) => Spare::Ready(name, file),
            Err(error) => Spare::Failed(name, error),
        });
    }

    /// Records durably that everything up to `snapshot.index` is held elsewhere,
    /// then recycles (or removes) the older segments that hold nothing newer.
    /// `NoSpace` (the record needed a segment there is no room for) releases
    /// nothing and leaves the WAL usable; a later release covers these segments.
    ///
    /// Panics if `snapshot.index` is below the last snapshot record's: replay
    /// refuses a decreasing snapshot index, so writing one would make the WAL
    /// impossible to open. That is a caller bug; nothing is written.
    pub async fn release_to(&mut self, snapshot: SnapshotRecord) -> Result<(), WalError> {
        let index = snapshot.index;
        let latest = self
            .latest_snapshot
            .as_ref()
            .expect("a WAL always holds a snapshot record");
        assert!(
            index >= latest.index,
            "release_to({index}) after release_to({}): the snapshot index never decreases",
            latest.index
        );
        self.append(&[Record::Snapshot(snapshot)]).await?;
        while self.sealed.first().is_some_and(|s| s.max_entry_index <= index) {
            let released = self.sealed.remove(0);
            // A recycled segment needs no room: it also ends a spare's failure.
            let has_spare = matches!(self.spare, Some(Spare::Ready(..) | Spare::Preparing(..)));
            let result = if !has_spare {
                self.recycle(released.name).await
            } else {
                self.dir.remove(&released.name.name).await
            };
            if let Err(error) = result {
                self.poisoned = true;
                return Err(WalError::io("releasing a segment", error));
            }
        }
        Ok(())
    }

    /// Renames a released segment to be the next spare: its blocks are already
    /// written, and its stale frames name another segment, so recovery skips them.
    async fn recycle(&mut self, released: SegmentName) -> std::io::Result<()> {
        let next = SegmentName::new(self.active.name.seq + 1);
        self.dir.rename(&released.name, &next.name).await?;
        let file = self.dir.open(&next.name).await?;
        self.spare = Some(Spare::Ready(next, file));
        Ok(())
    }

    /// Segment files the WAL uses now (sealed and active), for tests and tools.
    pub fn segment_count(&self) -> usize {
        self.sealed.len() + 1
    }
}

/// A segment whose preparation a crash interrupted never got its name.
async fn remove_leftover_temporaries<D: WalDir>(dir: &D) -> Result<(), WalError> {
    let names = dir
        .list()
        .await
        .map_err(|e| WalError::io("listing the WAL directory", e))?;
    for name in names.iter().filter(|name| name.ends_with(".tmp")) {
        dir.remove(name)
            .await
            .map_err(|e| WalError::io("removing a half-prepared segment", e))?;
    }
    Ok(())
}

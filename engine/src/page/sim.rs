//! Test support: an in-memory page file that can fail and crash.
//!
//! It keeps the durable bytes and the writes made since the last sync.
//! [`SimPageIo::crash`] decides the fate of every unsynced 512-byte sector: kept,
//! lost, or (for the whole write) cut short, chosen by a seed, as a power cut
//! might. Growing is durable at once (the real file's fallocate is followed by
//! an fdatasync before anything depends on it).

use std::io;
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::io::{Mapping, PageIo};

const SECTOR_BYTES: usize = 512;

#[derive(Default)]
struct State {
    durable: Vec<u8>,
    /// (offset, bytes) written since the last sync, in order.
    unsynced: Vec<(u64, Vec<u8>)>,
    /// `durable` with `unsynced` written over it: what reads see, kept up to
    /// date so that a read does not rebuild the file (the simulation reads
    /// pages by the million).
    current: Vec<u8>,
    /// Writes that succeed before the next one fails (None: no failure armed).
    writes_before_failure: Option<u32>,
    fail_next_sync: bool,
    /// The file cannot grow past this many bytes: a full disk.
    file_bytes_max: Option<u64>,
    syncs: u64,
}

impl State {
    /// Rebuilds `current` after `durable` or `unsynced` changed other than by a write.
    fn rebuild_current(&mut self) {
        let mut bytes = self.durable.clone();
        for (offset, data) in &self.unsynced {
            overwrite(&mut bytes, *offset, data);
        }
        self.current = bytes;
    }
}

fn overwrite(bytes: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[offset as usize..end].copy_from_slice(data);
}

#[derive(Default)]
pub struct SimPageIo {
    state: Mutex<State>,
}

impl SimPageIo {
    pub fn new() -> Arc<SimPageIo> {
        Arc::new(SimPageIo::default())
    }

    /// A file whose durable bytes are `bytes` (a copy received whole).
    pub fn with_durable(bytes: Vec<u8>) -> Arc<SimPageIo> {
        let io = SimPageIo::default();
        let mut state = io.state.lock().unwrap();
        state.durable = bytes;
        state.rebuild_current();
        drop(state);
        Arc::new(io)
    }

    /// The write after `successes` more successful ones fails.
    pub fn fail_write_after(&self, successes: u32) {
        self.state.lock().unwrap().writes_before_failure = Some(successes);
    }

    pub fn clear_faults(&self) {
        let mut state = self.state.lock().unwrap();
        state.writes_before_failure = None;
        state.fail_next_sync = false;
    }

    /// The next fdatasync fails, and (as on Linux) the unsynced data is gone.
    pub fn fail_next_sync(&self) {
        self.state.lock().unwrap().fail_next_sync = true;
    }

    /// The file cannot grow past `bytes` (None: no limit): `grow` fails with
    /// ENOSPC's kind and changes nothing, as the real one cuts a partial
    /// allocation back.
    pub fn limit_file_bytes(&self, bytes: Option<u64>) {
        self.state.lock().unwrap().file_bytes_max = bytes;
    }

    pub fn syncs(&self) -> u64 {
        self.state.lock().unwrap().syncs
    }

    /// A power cut: every unsynced sector is kept or lost, chosen by `seed`.
    pub fn crash(&self, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut state = self.state.lock().unwrap();
        let unsynced = std::mem::take(&mut state.unsynced);
        for (offset, data) in unsynced {
            for (index, sector) in data.chunks(SECTOR_BYTES).enumerate() {
                if rng.gen_bool(0.5) {
                    overwrite(&mut state.durable, offset + (index * SECTOR_BYTES) as u64, sector);
                }
            }
        }
        state.rebuild_current();
    }

    /// Flips one durable byte (a bad sector).
    pub fn corrupt(&self, offset: u64) {
        let mut state = self.state.lock().unwrap();
        assert!(state.unsynced.is_empty(), "corrupt durable data only");
        state.durable[offset as usize] ^= 0x5a;
        state.rebuild_current();
    }
}

impl PageIo for SimPageIo {
    fn size(&self) -> io::Result<u64> {
        Ok(self.state.lock().unwrap().current.len() as u64)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.state.lock().unwrap();
        match state.writes_before_failure {
            Some(0) => {
                state.writes_before_failure = None;
                return Err(io::Error::other("injected write error"));
            }
            Some(n) => state.writes_before_failure = Some(n - 1),
            None => {}
        }
        overwrite(&mut state.current, offset, data);
        state.unsynced.push((offset, data.to_vec()));
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut state = self.state.lock().unwrap();
        state.syncs += 1;
        if std::mem::take(&mut state.fail_next_sync) {
            // fsyncgate: the kernel drops the dirty pages and reports once.
            state.unsynced.clear();
            state.rebuild_current();
            return Err(io::Error::other("injected fsync error"));
        }
        for (offset, data) in std::mem::take(&mut state.unsynced) {
            overwrite(&mut state.durable, offset, &data);
        }
        Ok(())
    }

    fn grow(&self, len: u64) -> io::Result<()> {
        let mut state = self.state.lock().unwrap();
        if state.file_bytes_max.is_some_and(|max| len > max) && state.durable.len() < len as usize {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "injected full disk"));
        }
        if state.durable.len() < len as usize {
            state.durable.resize(len as usize, 0);
        }
        if state.current.len() < len as usize {
            state.current.resize(len as usize, 0);
        }
        Ok(())
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        let mut state = self.state.lock().unwrap();
        // Like the real call, the new length is visible at once; the sim keeps it
        // durable at once too (a longer file after a crash is harmless anyway).
        state.durable.truncate(len as usize);
        for (offset, data) in &mut state.unsynced {
            let end = (*offset as usize + data.len()).min(len as usize);
            data.truncate(end.saturating_sub(*offset as usize));
        }
        state.rebuild_current();
        Ok(())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let state = self.state.lock().unwrap();
        let bytes = state
            .current
            .get(offset as usize..offset as usize + buf.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }

    fn map(&self) -> io::Result<Mapping> {
        Ok(Mapping::Memory(Arc::from(
            self.state.lock().unwrap().current.as_slice(),
        )))
    }
}

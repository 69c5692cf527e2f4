//! etcd's HashKV: a CRC-32C over the key-value history up to a revision, fed the
//! same bytes etcd's `kvHasher` feeds (server/storage/mvcc/hash.go), so two
//! members, or ringkv and etcd after the same writes, report the same hash.
//!
//! etcd hashes its `key` bucket: the bucket name, then for every stored revision
//! up to the hashed one, its bbolt key (8-byte big-endian main, `_`, 8-byte
//! big-endian sub, and `t` for a tombstone) and its value (the marshalled
//! `mvccpb.KeyValue`; a tombstone's holds only the key). Revisions that a running
//! compaction will remove are skipped. A hash is taken in bounded steps
//! (`HashKvCursor`), as a large Range is.

use std::ops::Bound;

use prost::Message;
use ringkv_proto::mvccpb::KeyValue;

use super::cursor::ReadHold;
use super::record::decode_record;
use super::revision::{wide_key, Revision, REVISION_TABLE};
use super::{Mvcc, MvccError, StepBudget};

/// etcd's bucket name, hashed first.
const KEY_BUCKET_NAME: &[u8] = b"key";

/// The CRC-32C (Castagnoli) polynomial, reversed.
const CASTAGNOLI_REVERSED: u32 = 0x82f6_3b78;

const fn castagnoli_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = byte as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ CASTAGNOLI_REVERSED
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[byte] = crc;
        byte += 1;
    }
    table
}

static TABLE: [u32; 256] = castagnoli_table();

/// A running CRC-32C, as Go's `crc32.New(crc32.MakeTable(crc32.Castagnoli))`.
#[derive(Debug, Clone)]
pub struct Crc32c {
    state: u32,
}

impl Default for Crc32c {
    fn default() -> Crc32c {
        Crc32c { state: !0 }
    }
}

impl Crc32c {
    /// Goes on from a CRC-32C already computed, as Go's `crc.New(prev, table)`
    /// (etcd's WAL chains its records' checksums so).
    pub fn resume(crc: u32) -> Crc32c {
        Crc32c { state: !crc }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        let mut crc = self.state;
        for &byte in bytes {
            crc = TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
        }
        self.state = crc;
    }

    pub fn finish(&self) -> u32 {
        !self.state
    }
}

/// Feeds revisions to the hash in the order etcd's bucket scan visits them.
#[derive(Debug)]
pub struct KvHasher {
    crc: Crc32c,
}

impl KvHasher {
    pub fn new() -> KvHasher {
        let mut crc = Crc32c::default();
        crc.update(KEY_BUCKET_NAME);
        KvHasher { crc }
    }

    /// One stored revision: etcd's bbolt key and value for it.
    pub fn write(&mut self, revision: Revision, tombstone: bool, kv: &KeyValue) {
        let mut key = [0u8; 18];
        key[..8].copy_from_slice(&revision.main.to_be_bytes());
        key[8] = b'_';
        key[9..17].copy_from_slice(&revision.sub.to_be_bytes());
        if tombstone {
            key[17] = b't';
            self.crc.update(&key);
            let marked = KeyValue {
                key: kv.key.clone(),
                ..Default::default()
            };
            self.crc.update(&marked.encode_to_vec());
        } else {
            self.crc.update(&key[..17]);
            self.crc.update(&kv.encode_to_vec());
        }
    }

    pub fn finish(&self) -> u32 {
        self.crc.finish()
    }
}

/// What HashKV answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    /// The store's compaction revision (-1 before any, as etcd reports it).
    pub compact_revision: i64,
    /// The revision the hash covers.
    pub hash_revision: i64,
}

/// A HashKV in progress (from `Mvcc::begin_hash_kv`), taken in bounded steps
/// like a stepped Range (see `cursor.rs`) so a large history never holds the
/// store core for long. It hashes the store as it was when it began: writes
/// since add revisions above the hashed one, and its hold on the compaction
/// revision of then keeps a later compaction from removing what it reads.
#[derive(Debug)]
pub struct HashKvCursor {
    /// The revision asked for (0 or less: the current one), to begin again on
    /// a store a snapshot replaced.
    asked: i64,
    hasher: KvHasher,
    hash_revision: i64,
    /// The compaction revision when the hash began: what the rules compare
    /// with, and what the answer reports.
    compact_revision: i64,
    /// Some key is live at the hashed revision.
    any_live: bool,
    /// The last revision-table key hashed or skipped; the next step starts after it.
    after: Option<Vec<u8>>,
    done: bool,
    hold: ReadHold,
}

impl HashKvCursor {
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The answer of a finished hash.
    pub fn finish(self) -> KvHash {
        assert!(self.done, "a hash is finished once done");
        KvHash {
            hash: self.hasher.finish(),
            compact_revision: self.compact_revision,
            hash_revision: self.hash_revision,
        }
    }
}

impl Mvcc {
    /// etcd's HashKV at `revision` (0 or less: the current one), as etcd 3.4 and
    /// 3.5 compute it (`HashByRev`), in one go: see `begin_hash_kv`.
    pub fn hash_kv(&self, revision: i64) -> Result<KvHash, MvccError> {
        let mut cursor = self.begin_hash_kv(revision)?;
        let whole = StepBudget {
            keys: usize::MAX,
            bytes: usize::MAX,
        };
        while !cursor.is_done() {
            self.hash_kv_step(&mut cursor, whole)?;
        }
        Ok(cursor.finish())
    }

    /// Begins etcd's HashKV at `revision` (0 or less: the current one): every
    /// stored revision up to it, except that a revision at or below the
    /// compaction point counts only if it is its key's live state at the
    /// hashed revision (etcd's `kvindex.Keep(rev)`), unless no key is live
    /// then. Revisions a running compaction will remove never count.
    pub fn begin_hash_kv(&self, revision: i64) -> Result<HashKvCursor, MvccError> {
        if revision > 0 && revision <= self.compact_revision {
            return Err(MvccError::Compacted);
        }
        if revision > self.current_revision {
            return Err(MvccError::FutureRev);
        }
        let hash_revision = if revision <= 0 { self.current_revision } else { revision };
        // Stops at the first live key; visits every key only when none is live.
        let mut any_live = false;
        self.index
            .visit_range(Bound::Unbounded, Bound::Unbounded, hash_revision, |_, _| {
                any_live = true;
                false
            });
        Ok(HashKvCursor {
            asked: revision,
            hasher: KvHasher::new(),
            hash_revision,
            compact_revision: self.compact_revision,
            any_live,
            after: None,
            done: false,
            hold: ReadHold::new(&self.read_holds, self.compact_revision),
        })
    }

    /// The next step of `cursor`'s hash: stored revisions in order until the
    /// hash is done or `budget` is spent (each revision counts as a key, its
    /// record's bytes as bytes). On a store a snapshot replaced, the hash
    /// begins again: the answer is the new store's.
    pub fn hash_kv_step(&self, cursor: &mut HashKvCursor, budget: StepBudget) -> Result<(), MvccError> {
        assert!(!cursor.done, "a finished hash takes no more steps");
        assert!(budget.keys > 0 && budget.bytes > 0);
        if !cursor.hold.is_in(&self.read_holds) {
            *cursor = self.begin_hash_kv(cursor.asked)?;
        }
        let table = [REVISION_TABLE];
        let start = match &cursor.after {
            Some(after) => Bound::Excluded(&after[..]),
            None => Bound::Included(&table[..]),
        };
        let end = self.keys.key(Revision::new(cursor.hash_revision + 1, 0));
        let compact_revision = cursor.compact_revision;
        let (mut keys, mut bytes) = (0, 0);
        let mut last = None;
        for entry in self.tree.range(start, Bound::Excluded(&end[..])) {
            if keys == budget.keys || bytes >= budget.bytes {
                cursor.after = last;
                return Ok(());
            }
            let (key, value) = entry?;
            keys += 1;
            bytes += value.len();
            let revision =
                Revision::from_key(&key).ok_or_else(|| MvccError::corrupt(format!("bad revision key {key:?}")))?;
            let (tombstone, kv) = decode_record(&value)?;
            last = Some(key);
            // Revisions the running compaction will remove, however far it has
            // got: at or below the point and not the key's state there.
            let compacted_away = revision.main <= compact_revision
                && self.index.at(&kv.key, compact_revision).map(|at| at.modified) != Some(revision);
            if compacted_away {
                continue;
            }
            let kept = |key: &[u8]| {
                self.index
                    .at(key, cursor.hash_revision)
                    .is_some_and(|at| at.modified == revision)
            };
            if revision.main <= compact_revision && cursor.any_live && !kept(&kv.key) {
                continue;
            }
            cursor.hasher.write(revision, tombstone, &kv);
        }
        cursor.done = true;
        Ok(())
    }

    /// ringkv's Hash: a CRC-32C over every key and value of the committed and
    /// open state of the tree (meta and revision tables), in key order, each
    /// revision key in its wide form. Not etcd's value (etcd hashes its bbolt
    /// file's buckets), but equal on members holding the same state, whenever
    /// each began writing narrow revision keys.
    pub fn hash_all(&self) -> Result<u32, MvccError> {
        let mut crc = Crc32c::default();
        for entry in self.tree.range(Bound::Unbounded, Bound::Unbounded) {
            let (key, value) = entry?;
            match Revision::from_key(&key) {
                Some(revision) => crc.update(&wide_key(revision)),
                None => crc.update(&key),
            }
            crc.update(&value);
        }
        Ok(crc.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C of "123456789" (RFC 3720 appendix B.4 check value).
        let mut crc = Crc32c::default();
        crc.update(b"123456789");
        assert_eq!(crc.finish(), 0xe306_9283);
    }

    #[test]
    fn an_empty_history_hashes_only_the_bucket_name() {
        let mut crc = Crc32c::default();
        crc.update(b"key");
        assert_eq!(KvHasher::new().finish(), crc.finish());
    }

    #[test]
    fn a_tombstone_hashes_its_marked_key_and_only_the_user_key() {
        let kv = KeyValue {
            key: b"foo".to_vec(),
            mod_revision: 3,
            ..Default::default()
        };
        let mut hasher = KvHasher::new();
        hasher.write(Revision::new(3, 0), true, &kv);
        let mut expected = Crc32c::default();
        expected.update(b"key");
        expected.update(&[0, 0, 0, 0, 0, 0, 0, 3, b'_', 0, 0, 0, 0, 0, 0, 0, 0, b't']);
        expected.update(&[0x0a, 3, b'f', b'o', b'o']);
        assert_eq!(hasher.finish(), expected.finish());
    }
}

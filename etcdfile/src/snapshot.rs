//! A snapshot file as `etcdctl snapshot save` writes it: the database, then
//! the 32-byte sha256 of the database that etcd sends as the stream's last
//! message. etcd tells a file with the trailer by its length (`len % 512 ==
//! 32`, v3_snapshot.go); files here are told apart by their first meta page.

use std::fs::File;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

use crate::bbolt::{MAGIC, PAGE_HEADER_BYTES};

/// Bytes of the sha256 trailer.
pub const TRAILER_BYTES: u64 = 32;
/// A database is a whole number of these (etcd's test for a trailer).
const TRAILER_ALIGNMENT_BYTES: u64 = 512;
/// Bytes hashed per read.
const HASH_CHUNK_BYTES: usize = 1 << 20;

/// What a snapshot file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// etcd's backend file (bbolt): from etcd, or from ringkv since its
    /// snapshots are etcd's format.
    Etcd,
    /// Anything else: ringkv's page file (the format before; also what a
    /// copy of a member's `store.db` is).
    Other,
}

/// Tells an etcd (bbolt) file by the magic of its first meta page.
pub fn detect(file: &File) -> std::io::Result<Format> {
    let mut magic = [0u8; 4];
    match file.read_exact_at(&mut magic, PAGE_HEADER_BYTES as u64) {
        Ok(()) if u32::from_le_bytes(magic) == MAGIC => Ok(Format::Etcd),
        Ok(()) => Ok(Format::Other),
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(Format::Other),
        Err(error) => Err(error),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrailerError {
    #[error("reading the snapshot: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the snapshot has no sha256 trailer ({len} bytes is not a whole number of 512-byte blocks plus 32): a \
         truncated file, or a copy of a data directory's db (then pass --skip-hash-check)"
    )]
    Missing { len: u64 },
    #[error("the sha256 trailer does not match the contents (a torn or altered file)")]
    Mismatch,
}

/// The database's length in a snapshot file of `len` bytes, after checking
/// its trailer; with `skip_check`, a file without one is taken whole. The
/// bool says whether the hash was checked.
pub fn check_trailer(file: &File, len: u64, skip_check: bool) -> Result<(u64, bool), TrailerError> {
    let has_trailer = len % TRAILER_ALIGNMENT_BYTES == TRAILER_BYTES;
    match (has_trailer, skip_check) {
        (false, false) => Err(TrailerError::Missing { len }),
        (false, true) => Ok((len, false)),
        (true, true) => Ok((len - TRAILER_BYTES, false)),
        (true, false) => {
            let db_len = len - TRAILER_BYTES;
            let mut digest = Sha256::new();
            let mut buf = vec![0u8; HASH_CHUNK_BYTES];
            let mut offset = 0u64;
            while offset < db_len {
                let chunk = &mut buf[..(db_len - offset).min(HASH_CHUNK_BYTES as u64) as usize];
                file.read_exact_at(chunk, offset)?;
                digest.update(&*chunk);
                offset += chunk.len() as u64;
            }
            let mut trailer = [0u8; TRAILER_BYTES as usize];
            file.read_exact_at(&mut trailer, db_len)?;
            if digest.finalize().as_slice() != trailer {
                return Err(TrailerError::Mismatch);
            }
            Ok((db_len, true))
        }
    }
}

//! etcd's backend file: a bbolt database holding etcd 3.5's buckets. ringkv
//! reads one to import an etcd snapshot with its whole history
//! ([`import`]), and writes one as `Maintenance.Snapshot`'s stream
//! ([`export`]), so etcd's tools restore ringkv's snapshots. No networking and
//! no server here; the formats are in docs/bbolt-format.md.
//!
//! - [`bbolt`]: the file format (pages, metas, buckets), read and written;
//! - [`etcd`]: etcd's buckets and the encodings of their keys and values;
//! - [`etcd_wal`]: etcd's WAL, read to learn whether a data directory's db is whole;
//! - [`snapshot`]: a snapshot file's sha256 trailer, and telling etcd's
//!   files from ringkv's page files;
//! - [`import`]: an etcd file into a new ringkv page store;
//! - [`export`]: a pinned ringkv commit out as an etcd file.

pub mod bbolt;
pub mod etcd;
pub mod etcd_wal;
pub mod export;
pub mod import;
pub mod snapshot;

#[cfg(test)]
mod tests;

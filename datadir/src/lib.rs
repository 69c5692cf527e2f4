//! A ringkv member's data directory, shared by the server (`ringkv`) and the
//! offline tools (`ringkvutl`), which do not link the server:
//!
//! - [`layout`]: the names in it, the claim and lock, replacing the page store;
//! - [`cluster`], [`ids`]: `--initial-cluster` and the ids derived from it, and
//!   the first membership a new member's page store holds;
//! - [`wal`]: what ringkv writes in the engine's WAL (the member's identity,
//!   raft's entries, hard states and configurations) and a new member's WAL;
//! - [`restore`]: a snapshot file's status, and a new data directory from one.
//!
//! The on-disk formats are the engine's (docs/wal-format.md, page-format.md,
//! mvcc-format.md); docs/architecture.md lists the directory's layout.

pub mod cluster;
pub mod ids;
pub mod layout;
pub mod restore;
pub mod wal;

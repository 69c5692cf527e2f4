//! The meta table and commits: each commit writes the applied index, the
//! revisions and the compaction's progress, the alarms and the server's
//! records (those that changed) with the data they go with.

use super::alarm::write_alarms;
use super::{Mvcc, MvccError};
use crate::btree::Tree;
use crate::page::{CommitPlan, CommittedPlan, PageError};

/// Meta table keys (prefix `m`), each an 8-byte big-endian integer. The
/// alarms' and the server records' keys are in `alarm` and `server_record`.
pub(super) const META_APPLIED_INDEX: &[u8] = b"mapplied_index";
pub(super) const META_CURRENT_REVISION: &[u8] = b"mcurrent_revision";
pub(super) const META_COMPACT_REVISION: &[u8] = b"mcompact_revision";
pub(super) const META_FINISHED_COMPACT_REVISION: &[u8] = b"mfinished_compact_revision";

impl Mvcc {
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The raft index whose effects the store holds; stored by the next commit.
    pub fn set_applied_index(&mut self, index: u64) {
        assert!(index >= self.applied_index, "the applied index never goes back");
        self.applied_index = index;
    }

    /// Writes the meta keys and seals the transaction for `CommitPlan::execute`.
    pub fn begin_commit(&mut self) -> Result<CommitPlan, MvccError> {
        self.write_meta()?;
        Ok(self.tree.begin_commit()?)
    }

    /// Takes back the outcome of the plan from `begin_commit`. An error is
    /// final, except `PageError::NoSpace`: then the commit was not made, and
    /// [`Mvcc::retry_commit`] runs it again later.
    pub fn finish_commit(&mut self, result: Result<CommittedPlan, PageError>) -> Result<(), MvccError> {
        Ok(self.tree.finish_commit(result)?)
    }

    /// The plan of the commit that found no room to grow the file, to execute
    /// again: the same state (applied index, revisions, alarms) as sealed.
    pub fn retry_commit(&mut self) -> CommitPlan {
        self.tree.retry_commit()
    }

    /// Commits synchronously (tools and tests).
    pub fn commit(&mut self) -> Result<(), MvccError> {
        self.write_meta()?;
        Ok(self.tree.commit()?)
    }

    fn write_meta(&mut self) -> Result<(), MvccError> {
        let applied = i64::try_from(self.applied_index).expect("raft indexes fit i64");
        self.tree.insert(META_APPLIED_INDEX, &applied.to_be_bytes())?;
        self.tree
            .insert(META_CURRENT_REVISION, &self.current_revision.to_be_bytes())?;
        self.tree
            .insert(META_COMPACT_REVISION, &self.compact_revision.to_be_bytes())?;
        self.tree.insert(
            META_FINISHED_COMPACT_REVISION,
            &self.finished_compact_revision.to_be_bytes(),
        )?;
        write_alarms(&mut self.tree, &self.alarms)?;
        self.membership.write(&mut self.tree)?;
        self.conf_state.write(&mut self.tree)?;
        self.auth.write(&mut self.tree)
    }
}

pub(super) fn read_meta(tree: &Tree, name: &[u8]) -> Result<Option<i64>, MvccError> {
    let Some(value) = tree.get(name)? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = value
        .as_slice()
        .try_into()
        .map_err(|_| MvccError::corrupt(format!("meta value {name:?} is not 8 bytes")))?;
    Ok(Some(i64::from_be_bytes(bytes)))
}

//! TEMPORARY in-memory stand-in with the final public API of the B-tree store.
//! The real copy-on-write B-tree over the page file replaces this file entirely.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

/// Errors from the B-tree store. Every variant except `Io` means the file is
/// damaged: the caller must stop, never skip.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("page store I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("page store corrupt at page {page}: {reason}")]
    Corrupt { page: u64, reason: String },
}

/// An ordered byte-key to byte-value map stored in a copy-on-write B-tree file.
/// Writes are visible to reads at once; they become durable at `commit`.
pub struct Tree {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// A sealed transaction whose page writes and fsyncs have not run yet.
/// `execute` does blocking I/O: run it off the executor.
pub struct CommitPlan {
    _private: (),
}

/// A commit plan whose writes are durable; hand it back to `Tree::finish_commit`.
pub struct CommittedPlan {
    _private: (),
}

impl CommitPlan {
    pub fn execute(self) -> Result<CommittedPlan, TreeError> {
        Ok(CommittedPlan { _private: () })
    }
}

impl Tree {
    pub fn open(_path: &Path) -> Result<Tree, TreeError> {
        Ok(Tree { map: BTreeMap::new() })
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, TreeError> {
        Ok(self.map.get(key).cloned())
    }

    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<(), TreeError> {
        self.map.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    pub fn remove(&mut self, key: &[u8]) -> Result<bool, TreeError> {
        Ok(self.map.remove(key).is_some())
    }

    /// Ascending iteration over `(start, end)`.
    pub fn range(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), TreeError>> + '_ {
        self.map
            .range::<[u8], _>((start, end))
            .map(|(k, v)| Ok((k.clone(), v.clone())))
    }

    pub fn begin_commit(&mut self) -> Result<CommitPlan, TreeError> {
        Ok(CommitPlan { _private: () })
    }

    pub fn finish_commit(&mut self, _done: CommittedPlan) {}

    pub fn commit(&mut self) -> Result<(), TreeError> {
        let done = self.begin_commit()?.execute()?;
        self.finish_commit(done);
        Ok(())
    }
}

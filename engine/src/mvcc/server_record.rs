//! Records the server encodes and decodes, which the engine only stores: the
//! cluster's membership, the raft configuration and etcd's auth state, as of
//! the applied index.

use super::{Mvcc, MvccError};
use crate::btree::Tree;

/// Meta table keys of the two records, each stored as the server gave it.
pub(super) const META_MEMBERSHIP: &[u8] = b"mmembership";
pub(super) const META_CONF_STATE: &[u8] = b"mconf_state";
pub(super) const META_AUTH: &[u8] = b"mauth";

/// Bytes the server encodes and decodes; the engine only stores them, in the
/// same commits as the data they were applied with. Rarely changed, so written
/// only in a commit after they changed.
pub(super) struct ServerRecord {
    key: &'static [u8],
    value: Option<Vec<u8>>,
    changed: bool,
}

impl ServerRecord {
    pub(super) fn load(tree: &Tree, key: &'static [u8]) -> Result<ServerRecord, MvccError> {
        Ok(ServerRecord {
            key,
            value: tree.get(key)?,
            changed: false,
        })
    }

    fn set(&mut self, value: Vec<u8>) {
        self.value = Some(value);
        self.changed = true;
    }

    pub(super) fn write(&mut self, tree: &mut Tree) -> Result<(), MvccError> {
        if self.changed {
            let value = self.value.as_deref().expect("a changed record is set");
            tree.insert(self.key, value)?;
            self.changed = false;
        }
        Ok(())
    }
}

impl Mvcc {
    /// The membership record last set (see `set_membership`), if any.
    pub fn membership(&self) -> Option<&[u8]> {
        self.membership.value.as_deref()
    }

    /// Replaces the membership record; stored by the next commit.
    pub fn set_membership(&mut self, record: Vec<u8>) {
        self.membership.set(record);
    }

    /// The raft configuration record last set (see `set_conf_state`), if any.
    pub fn conf_state(&self) -> Option<&[u8]> {
        self.conf_state.value.as_deref()
    }

    /// Replaces the raft configuration record: the configuration as of the
    /// applied index, stored by the next commit with that index.
    pub fn set_conf_state(&mut self, record: Vec<u8>) {
        self.conf_state.set(record);
    }

    /// The auth record last set (see `set_auth`), if any.
    pub fn auth(&self) -> Option<&[u8]> {
        self.auth.value.as_deref()
    }

    /// Replaces the auth record (users, roles, the enabled flag and the auth
    /// revision), stored by the next commit: the one holding the entry that
    /// changed it.
    pub fn set_auth(&mut self, record: Vec<u8>) {
        self.auth.set(record);
    }
}

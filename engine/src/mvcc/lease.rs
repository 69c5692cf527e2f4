//! Leases as stored state: which leases exist (with their granted TTL) and which
//! live keys are attached to each. Timing (when a lease expires) is not stored
//! state; the server decides it.
//!
//! The lease table in the tree holds one entry per lease (`l` + id -> TTL). The
//! attachments are not stored separately: a key is attached to the lease in the
//! `lease` field of its newest revision record, so the open rebuilds them from the
//! revision table (as etcd's `restore` re-attaches keys from its key bucket), and
//! they change only through the MVCC write path (put, delete, revoke).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{Mvcc, MvccError};

/// Tree keys of the lease table start with this byte.
pub const LEASE_TABLE: u8 = b'l';
/// Encoded key length: table byte, lease id (8 bytes big endian).
pub const LEASE_KEY_BYTES: usize = 9;
/// Encoded value length: granted TTL in seconds (8 bytes big endian).
pub const LEASE_VALUE_BYTES: usize = 8;
/// Lease id 0 means "no lease" in every request and record.
pub const NO_LEASE: i64 = 0;

/// The tree key of lease `id`.
pub fn lease_key(id: i64) -> [u8; LEASE_KEY_BYTES] {
    assert_ne!(id, NO_LEASE, "lease 0 is never stored");
    let mut key = [0u8; LEASE_KEY_BYTES];
    key[0] = LEASE_TABLE;
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// Decodes one lease table entry into (id, ttl).
pub fn decode_lease(key: &[u8], value: &[u8]) -> Result<(i64, i64), MvccError> {
    let corrupt = || MvccError::corrupt(format!("bad lease entry {key:?} -> {value:?}"));
    if key.len() != LEASE_KEY_BYTES || key[0] != LEASE_TABLE {
        return Err(corrupt());
    }
    let id = i64::from_be_bytes(key[1..].try_into().map_err(|_| corrupt())?);
    let ttl: [u8; LEASE_VALUE_BYTES] = value.try_into().map_err(|_| corrupt())?;
    let ttl = i64::from_be_bytes(ttl);
    if id == NO_LEASE || ttl <= 0 {
        return Err(corrupt());
    }
    Ok((id, ttl))
}

/// The two directions of the lease attachments disagree (see `Leases::check`).
#[derive(Debug, thiserror::Error)]
pub enum AttachmentError {
    #[error("{by_lease} attachments by lease, {by_key} by key")]
    Counts { by_lease: usize, by_key: usize },
    #[error("key {key:?} is attached to lease {lease}, which does not exist")]
    UnknownLease { key: Vec<u8>, lease: i64 },
    #[error("key {key:?} is missing from lease {lease}'s keys")]
    MissingKey { key: Vec<u8>, lease: i64 },
}

/// Leases and their attached keys, in memory.
#[derive(Debug, Default)]
pub struct Leases {
    /// Lease id -> granted TTL in seconds.
    ttls: BTreeMap<i64, i64>,
    /// Lease id -> keys attached to it (sorted, as etcd revokes them in key order).
    keys: HashMap<i64, BTreeSet<Vec<u8>>>,
    /// Key -> the lease it is attached to; only keys with a lease.
    lease_of: HashMap<Vec<u8>, i64>,
}

impl Leases {
    pub fn ttl(&self, id: i64) -> Option<i64> {
        self.ttls.get(&id).copied()
    }

    pub fn contains(&self, id: i64) -> bool {
        self.ttls.contains_key(&id)
    }

    /// Every lease as (id, ttl), by id.
    pub fn iter(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.ttls.iter().map(|(&id, &ttl)| (id, ttl))
    }

    pub fn len(&self) -> usize {
        self.ttls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ttls.is_empty()
    }

    /// The keys attached to lease `id`, in key order.
    pub fn keys(&self, id: i64) -> impl Iterator<Item = &[u8]> + '_ {
        self.keys.get(&id).into_iter().flatten().map(Vec::as_slice)
    }

    pub fn insert(&mut self, id: i64, ttl: i64) {
        assert_ne!(id, NO_LEASE);
        assert!(ttl > 0, "a stored TTL is positive");
        assert!(self.ttls.insert(id, ttl).is_none(), "lease {id} granted twice");
    }

    /// Forgets lease `id`; its keys must have been detached (deleted) first.
    pub fn remove(&mut self, id: i64) {
        assert!(self.ttls.remove(&id).is_some(), "lease {id} exists");
        assert!(self.keys(id).next().is_none(), "a removed lease has no keys");
        self.keys.remove(&id);
    }

    /// Records that `key`'s newest revision carries `lease` (0: none), moving it
    /// off the lease it had.
    pub fn set_lease_of(&mut self, key: &[u8], lease: i64) {
        self.detach(key);
        if lease == NO_LEASE {
            return;
        }
        assert!(self.contains(lease), "key attached to unknown lease {lease}");
        self.keys.entry(lease).or_default().insert(key.to_vec());
        self.lease_of.insert(key.to_vec(), lease);
    }

    /// The key was deleted (or re-put without a lease): it belongs to no lease.
    pub fn detach(&mut self, key: &[u8]) {
        // Most stores have no attached keys: skip hashing the key then.
        if self.lease_of.is_empty() {
            return;
        }
        let Some(old) = self.lease_of.remove(key) else {
            return;
        };
        let keys = self.keys.get_mut(&old).expect("an attached key's lease has a key set");
        assert!(keys.remove(key), "lease_of and keys agree");
    }

    /// Checks the two directions of the attachment maps agree (tests).
    pub fn check(&self) -> Result<(), AttachmentError> {
        let attached: usize = self.keys.values().map(BTreeSet::len).sum();
        if attached != self.lease_of.len() {
            return Err(AttachmentError::Counts {
                by_lease: attached,
                by_key: self.lease_of.len(),
            });
        }
        for (key, &lease) in &self.lease_of {
            if !self.ttls.contains_key(&lease) {
                return Err(AttachmentError::UnknownLease {
                    key: key.clone(),
                    lease,
                });
            }
            if !self.keys.get(&lease).is_some_and(|keys| keys.contains(key)) {
                return Err(AttachmentError::MissingKey {
                    key: key.clone(),
                    lease,
                });
            }
        }
        Ok(())
    }
}

impl Mvcc {
    /// The leases that exist and the keys attached to them.
    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// Creates lease `id` with `ttl` seconds; stored by the next commit. The
    /// caller has checked that it does not exist (etcd's ErrLeaseExist).
    pub fn grant_lease(&mut self, id: i64, ttl: i64) -> Result<(), MvccError> {
        self.leases.insert(id, ttl);
        self.tree.insert(&lease_key(id), &ttl.to_be_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_with_another_lease_moves_the_key() {
        let mut leases = Leases::default();
        leases.insert(1, 10);
        leases.insert(2, 10);
        leases.set_lease_of(b"k", 1);
        leases.set_lease_of(b"k", 2);
        assert_eq!(leases.keys(1).count(), 0);
        assert_eq!(leases.keys(2).collect::<Vec<_>>(), vec![b"k".as_slice()]);
        leases.set_lease_of(b"k", NO_LEASE);
        assert_eq!(leases.keys(2).count(), 0);
        leases.check().unwrap();
    }

    #[test]
    fn lease_entries_round_trip() {
        let key = lease_key(-7);
        assert_eq!(decode_lease(&key, &30i64.to_be_bytes()).unwrap(), (-7, 30));
        assert!(decode_lease(&key, &[0; 7]).is_err());
        assert!(decode_lease(&key, &0i64.to_be_bytes()).is_err());
        assert!(decode_lease(&key[..8], &30i64.to_be_bytes()).is_err());
    }

    #[test]
    #[should_panic(expected = "unknown lease")]
    fn attaching_to_an_unknown_lease_is_a_bug() {
        Leases::default().set_lease_of(b"k", 3);
    }
}

//! Alarms (etcd's NOSPACE and CORRUPT), applied through raft and stored with
//! the data under `malarms`.

use std::collections::BTreeSet;

use super::{Mvcc, MvccError};
use crate::btree::Tree;

/// Active alarms: 12 bytes each (member id u64, alarm type i32, both big endian).
const META_ALARMS: &[u8] = b"malarms";
const ALARM_RECORD_BYTES: usize = 12;

/// An active alarm: a member and etcd's `AlarmType` number (1 NOSPACE, 2 CORRUPT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Alarm {
    pub member_id: u64,
    pub kind: i32,
}

impl Mvcc {
    /// Active alarms, in (member, kind) order.
    pub fn alarms(&self) -> impl Iterator<Item = Alarm> + '_ {
        self.alarms.iter().copied()
    }

    /// Raises `alarm`; false if it was already active. Stored by the next commit.
    pub fn activate_alarm(&mut self, alarm: Alarm) -> bool {
        self.alarms.insert(alarm)
    }

    /// Clears `alarm`; false if it was not active.
    pub fn deactivate_alarm(&mut self, alarm: Alarm) -> bool {
        self.alarms.remove(&alarm)
    }
}

pub(super) fn read_alarms(tree: &Tree) -> Result<BTreeSet<Alarm>, MvccError> {
    let Some(value) = tree.get(META_ALARMS)? else {
        return Ok(BTreeSet::new());
    };
    if value.len() % ALARM_RECORD_BYTES != 0 {
        return Err(MvccError::corrupt(format!("alarm list of {} bytes", value.len())));
    }
    Ok(value
        .chunks_exact(ALARM_RECORD_BYTES)
        .map(|record| Alarm {
            member_id: u64::from_be_bytes(record[..8].try_into().expect("8 bytes")),
            kind: i32::from_be_bytes(record[8..].try_into().expect("4 bytes")),
        })
        .collect())
}

/// Stores the active alarms; an empty list is no key at all.
pub(super) fn write_alarms(tree: &mut Tree, alarms: &BTreeSet<Alarm>) -> Result<(), MvccError> {
    if alarms.is_empty() {
        tree.remove(META_ALARMS)?;
        return Ok(());
    }
    let mut record = Vec::with_capacity(alarms.len() * ALARM_RECORD_BYTES);
    for alarm in alarms {
        record.extend_from_slice(&alarm.member_id.to_be_bytes());
        record.extend_from_slice(&alarm.kind.to_be_bytes());
    }
    tree.insert(META_ALARMS, &record)?;
    Ok(())
}

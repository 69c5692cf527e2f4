//! Encoding changes as `mvccpb.Event`s, once per change however many watchers get
//! it (fan-out to 10,000 watchers clones a `Bytes`, not a key-value).

use bytes::Bytes;
use prost::Message;
use ringkv_engine::mvcc::{Change, ChangeKind, KeySpan, Mvcc, MvccError, RangeEnd, RangeOptions};
use ringkv_proto::mvccpb::{self, event::EventType, KeyValue};

use crate::fatal::fatal;

/// Lazily encoded events of one batch of changes, with and without `prev_kv`.
pub struct EventCache<'a> {
    changes: &'a [Change],
    plain: Vec<Option<Bytes>>,
    with_prev: Vec<Option<Bytes>>,
}

impl<'a> EventCache<'a> {
    pub fn new(changes: &'a [Change]) -> EventCache<'a> {
        EventCache {
            changes,
            plain: vec![None; changes.len()],
            with_prev: vec![None; changes.len()],
        }
    }

    pub fn event(&mut self, index: usize, prev_kv: bool, mvcc: &Mvcc) -> Bytes {
        let change = &self.changes[index];
        let slot = if prev_kv {
            &mut self.with_prev[index]
        } else {
            &mut self.plain[index]
        };
        slot.get_or_insert_with(|| {
            let prev = if prev_kv { previous_kv(change, mvcc) } else { None };
            encode_event(change, prev)
        })
        .clone()
    }
}

pub fn encode_event(change: &Change, prev_kv: Option<KeyValue>) -> Bytes {
    let event = mvccpb::Event {
        r#type: match change.kind {
            ChangeKind::Put => EventType::Put as i32,
            ChangeKind::Delete => EventType::Delete as i32,
        },
        kv: Some(change.kv.clone()),
        prev_kv,
    };
    Bytes::from(event.encode_to_vec())
}

/// The key's value just before the change, as etcd's watch server reads it (a
/// range at `mod_revision - 1`); none for a creation or once that is compacted.
fn previous_kv(change: &Change, mvcc: &Mvcc) -> Option<KeyValue> {
    if change.kind == ChangeKind::Put && change.kv.version == 1 {
        return None;
    }
    let span = KeySpan {
        key: &change.kv.key,
        end: RangeEnd::Key,
    };
    let options = RangeOptions {
        rev: change.revision() - 1,
        ..Default::default()
    };
    match mvcc.range(span, options) {
        Ok(result) => result.kvs.into_iter().next(),
        Err(MvccError::Compacted | MvccError::FutureRev) => None,
        Err(error) => fatal(&format!("reading a watch event's previous value failed: {error}")),
    }
}

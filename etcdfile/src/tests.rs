//! Round trips through etcd's format: a ringkv store exported and imported
//! again reads the same at every retained revision, with the same auth state.

use proptest::prelude::*;
use ringkv_engine::mvcc::{KeySpan, Mvcc, RangeEnd, RangeOptions};

use crate::bbolt::read::Reader;
use crate::export::{export, ExportInfo};
use crate::import::import;

#[derive(Debug, Clone)]
enum Op {
    Put { key: u8, value: Vec<u8>, lease: bool },
    Delete { key: u8 },
    Grant { id: i64, ttl: i64 },
    Compact { back: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..6u8, prop::collection::vec(any::<u8>(), 0..40), any::<bool>())
            .prop_map(|(key, value, lease)| Op::Put { key, value, lease }),
        2 => (0..6u8).prop_map(|key| Op::Delete { key }),
        1 => (1..4i64, 1..1000i64).prop_map(|(id, ttl)| Op::Grant { id: id * 0x0100_0000_0000_0001, ttl }),
        1 => (0..5i64).prop_map(|back| Op::Compact { back }),
    ]
}

fn apply(store: &mut Mvcc, ops: &[Op]) {
    let mut leases = Vec::new();
    for op in ops {
        match op {
            Op::Put { key, value, lease } => {
                let lease = if *lease { leases.last().copied().unwrap_or(0) } else { 0 };
                let mut txn = store.write();
                txn.put(&[b'k', *key], value, lease).unwrap();
                txn.end();
            }
            Op::Delete { key } => {
                let mut txn = store.write();
                txn.delete_range(KeySpan {
                    key: &[b'k', *key],
                    end: RangeEnd::Key,
                })
                .unwrap();
                txn.end();
            }
            Op::Grant { id, ttl } => {
                // The server refuses a second grant of an id before the store sees it.
                if !leases.contains(id) {
                    store.grant_lease(*id, *ttl).unwrap();
                    leases.push(*id);
                }
            }
            Op::Compact { back } => {
                let at = store.current_revision() - back;
                if at > store.compact_revision() && at > 1 {
                    store.compact(at).unwrap();
                    while !store.compact_step(100).unwrap() {}
                }
            }
        }
    }
    store.commit().unwrap();
}

fn all_at(store: &Mvcc, rev: i64) -> Vec<ringkv_proto::mvccpb::KeyValue> {
    let span = KeySpan {
        key: b"\0",
        end: RangeEnd::ToEnd,
    };
    store
        .range(
            span,
            RangeOptions {
                rev,
                ..RangeOptions::default()
            },
        )
        .unwrap()
        .kvs
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn an_exported_store_imports_to_the_same_history(ops in prop::collection::vec(op(), 0..80)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Mvcc::open(&dir.path().join("a.db")).unwrap();
        apply(&mut store, &ops);
        let source = store.pin_snapshot().unwrap();
        let view = ringkv_engine::mvcc::SnapshotView::open(&source).unwrap();
        let info = ExportInfo { term: 1, cluster_version: "3.5.0".into() };
        let file = export(&view, tempfile::tempfile().unwrap(), &info).unwrap();
        drop(view);
        store.unpin_snapshot(source.txid());
        let len = file.metadata().unwrap().len();
        let (imported, summary) = import(&Reader::open(file, len).unwrap(), &dir.path().join("b.db")).unwrap();
        prop_assert_eq!(summary.revision, store.current_revision());
        prop_assert_eq!(imported.current_revision(), store.current_revision());
        prop_assert_eq!(imported.compact_revision(), store.compact_revision());
        for rev in store.compact_revision().max(1)..=store.current_revision() {
            prop_assert_eq!(all_at(&imported, rev), all_at(&store, rev), "at revision {}", rev);
        }
        let leases = |store: &Mvcc| {
            let mut leases: Vec<(i64, i64, Vec<Vec<u8>>)> = store
                .leases()
                .iter()
                .map(|(id, ttl)| (id, ttl, store.leases().keys(id).map(<[u8]>::to_vec).collect()))
                .collect();
            leases.sort();
            leases
        };
        prop_assert_eq!(leases(&imported), leases(&store));
    }
}

/// The auth record travels through etcd's auth buckets unchanged: users with
/// their hashes and options, roles with their permissions, the flag and the
/// revision.
#[test]
fn an_exported_auth_record_imports_the_same() {
    use prost::Message;
    use ringkv_proto::authpb;
    use ringkv_proto::ringkvpb::AuthRecord;

    let record = AuthRecord {
        enabled: true,
        revision: 12,
        users: vec![
            authpb::User {
                name: b"alice".to_vec(),
                password: b"$2a$10$abc".to_vec(),
                roles: vec!["app".into()],
                options: None,
            },
            authpb::User {
                name: b"bob".to_vec(),
                password: Vec::new(),
                roles: Vec::new(),
                options: Some(authpb::UserAddOptions { no_password: true }),
            },
        ],
        roles: vec![authpb::Role {
            name: b"app".to_vec(),
            key_permission: vec![authpb::Permission {
                perm_type: authpb::permission::Type::Readwrite as i32,
                key: b"app/".to_vec(),
                range_end: b"app0".to_vec(),
            }],
        }],
    };
    let dir = tempfile::tempdir().unwrap();
    let mut store = Mvcc::open(&dir.path().join("a.db")).unwrap();
    store.set_auth(record.encode_to_vec());
    store.commit().unwrap();
    let source = store.pin_snapshot().unwrap();
    let view = ringkv_engine::mvcc::SnapshotView::open(&source).unwrap();
    let info = ExportInfo {
        term: 1,
        cluster_version: "3.5.0".into(),
    };
    let file = export(&view, tempfile::tempfile().unwrap(), &info).unwrap();
    drop(view);
    store.unpin_snapshot(source.txid());
    let len = file.metadata().unwrap().len();
    drop(import(&Reader::open(file, len).unwrap(), &dir.path().join("b.db")).unwrap());
    let imported = Mvcc::open(&dir.path().join("b.db")).unwrap();
    let imported = AuthRecord::decode(imported.auth().expect("an auth record")).unwrap();
    assert_eq!(imported, record);
}

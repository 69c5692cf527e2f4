//! The checks etcd makes on a request's content before it reaches raft
//! (etcd `api/v3rpc/key.go`, and `types.NewURLs` for member URLs): same order,
//! same errors. The client core runs
//! them on every request it accepts; apply runs them again on every entry it
//! meets (with no op limit, which is a member's setting), because an entry may
//! come from a peer that never ran them, and a transaction that passed them
//! cannot fail half-written.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use ringkv_proto::etcdserverpb as pb;

use crate::etcd_error::EtcdError;

use pb::range_request::{SortOrder, SortTarget};
use pb::request_op::Request as Op;

/// Transactions one inside another, the outermost included. etcd has no such
/// limit; ringkv needs one because prost refuses messages nested more than 100
/// deep (a Txn level is two: `TxnRequest`, `RequestOp`), and every check and
/// the apply of a Txn recurse once per level. 32 leaves prost's limit far
/// away (a Put in the 32nd level sits at depth 64).
pub const TXN_DEPTH_MAX: usize = 32;

pub fn check_range(request: &pb::RangeRequest) -> Result<(), EtcdError> {
    if request.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    // etcd 3.5 refuses sort enums it does not know.
    if SortOrder::from_i32(request.sort_order).is_none() || SortTarget::from_i32(request.sort_target).is_none() {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

pub fn check_put(request: &pb::PutRequest) -> Result<(), EtcdError> {
    if request.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if request.ignore_value && !request.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(request: &pb::DeleteRangeRequest) -> Result<(), EtcdError> {
    if request.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// Op count, nesting and keys (recursively), then put/delete overlaps in each branch.
pub fn check_txn(request: &pb::TxnRequest, max_txn_ops: usize) -> Result<(), EtcdError> {
    check_txn_ops(request, max_txn_ops, 1)?;
    check_overlaps(&request.success)?;
    check_overlaps(&request.failure)?;
    Ok(())
}

/// etcd's `checkTxnRequest`: the largest of compares/success/failure must not
/// exceed the limit; nested transactions get what is left of it. `depth` is
/// this transaction's level, 1 for the outermost; a transaction at
/// [`TXN_DEPTH_MAX`] may hold no other.
fn check_txn_ops(request: &pb::TxnRequest, max_txn_ops: usize, depth: usize) -> Result<(), EtcdError> {
    let ops = request
        .compare
        .len()
        .max(request.success.len())
        .max(request.failure.len());
    if ops > max_txn_ops {
        return Err(EtcdError::TooManyOps);
    }
    if request.compare.iter().any(|compare| compare.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in request.success.iter().chain(&request.failure) {
        match &op.request {
            Some(Op::RequestRange(range)) => check_range(range)?,
            Some(Op::RequestPut(put)) => check_put(put)?,
            Some(Op::RequestDeleteRange(delete)) => check_delete(delete)?,
            Some(Op::RequestTxn(_)) if depth == TXN_DEPTH_MAX => return Err(EtcdError::TxnTooDeep),
            Some(Op::RequestTxn(nested)) => check_txn_ops(nested, max_txn_ops - ops, depth + 1)?,
            // etcd answers an empty op with "key not found".
            None => return Err(EtcdError::KeyNotFound),
        }
    }
    Ok(())
}

/// Deleted key ranges as etcd's interval tree sees them: `[begin, end)` with
/// an empty `end` meaning "no upper bound"; a single key is `[key, key\0)`.
/// Kept as their union, disjoint ranges by `begin`, so a put is checked
/// against all of them in O(log n): checked against each in turn, a Txn of
/// 2^16 nested puts and deletes (a 1.5 MiB request) took many seconds.
#[derive(Default)]
struct Deleted {
    /// `begin` to `end` of disjoint ranges.
    ranges: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Deleted {
    fn covers(&self, key: &[u8]) -> bool {
        self.ranges
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .is_some_and(|(_, end)| ends_after(end, key))
    }

    fn insert(&mut self, mut begin: Vec<u8>, mut end: Vec<u8>) {
        if !ends_after(&end, &begin) {
            return; // holds no key
        }
        let before = self
            .ranges
            .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(begin.as_slice())))
            .next_back();
        if let Some((before_begin, before_end)) = before {
            if reaches(before_end, &begin) {
                begin = before_begin.clone();
            }
        }
        // Every range that starts inside (or right at the end of) this one joins it.
        loop {
            let next = self
                .ranges
                .range::<[u8], _>((Bound::Included(begin.as_slice()), Bound::Unbounded))
                .next()
                .filter(|(next_begin, _)| reaches(&end, next_begin))
                .map(|(next_begin, _)| next_begin.clone());
            let Some(next_begin) = next else {
                break;
            };
            let next_end = self.ranges.remove(&next_begin).expect("the range just found");
            if end.is_empty() || next_end.is_empty() {
                end.clear();
            } else {
                end = end.max(next_end);
            }
        }
        self.ranges.insert(begin, end);
    }

    fn extend(&mut self, other: Deleted) {
        for (begin, end) in other.ranges {
            self.insert(begin, end);
        }
    }
}

/// A range ending at `end` holds keys up to `key`.
fn ends_after(end: &[u8], key: &[u8]) -> bool {
    end.is_empty() || key < end
}

/// A range ending at `end` touches or overlaps one starting at `key`.
fn reaches(end: &[u8], key: &[u8]) -> bool {
    end.is_empty() || key <= end
}

/// etcd's `checkIntervals`: within one branch (nested transactions included), no
/// key may be put twice or put and deleted. Then/else of a nested transaction
/// exclude each other, so a key put in both is fine.
fn check_overlaps(ops: &[pb::RequestOp]) -> Result<(HashSet<Vec<u8>>, Deleted), EtcdError> {
    let mut deleted = Deleted::default();
    for op in ops {
        if let Some(Op::RequestDeleteRange(delete)) = &op.request {
            let end = if delete.range_end.is_empty() {
                [delete.key.as_slice(), &[0]].concat()
            } else {
                delete.range_end.clone()
            };
            deleted.insert(delete.key.clone(), end);
        }
    }
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Op::RequestTxn(nested)) = &op.request else {
            continue;
        };
        let (puts_then, deleted_then) = check_overlaps(&nested.success)?;
        let (puts_else, deleted_else) = check_overlaps(&nested.failure)?;
        for key in &puts_then {
            if puts.contains(key) || deleted.covers(key) {
                return Err(EtcdError::DuplicateKey);
            }
        }
        puts.extend(puts_then.iter().cloned());
        for key in puts_else {
            if puts.contains(&key) && !puts_then.contains(&key) || deleted.covers(&key) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(key);
        }
        deleted.extend(deleted_then);
        deleted.extend(deleted_else);
    }
    for op in ops {
        let Some(Op::RequestPut(put)) = &op.request else {
            continue;
        };
        if puts.contains(&put.key) || deleted.covers(&put.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(put.key.clone());
    }
    Ok((puts, deleted))
}

/// etcd's `types.NewURLs` as MemberAdd uses it: at least one URL, each
/// `scheme://host:port` with scheme http, https, unix or unixs and no path;
/// returned trimmed and sorted. Any failure is etcd's "given member URLs are
/// invalid" (its gRPC layer drops the detail).
pub fn member_peer_urls(urls: &[String]) -> Result<Vec<String>, EtcdError> {
    if urls.is_empty() {
        return Err(EtcdError::MemberBadUrls);
    }
    let mut checked = Vec::with_capacity(urls.len());
    for url in urls {
        let url = url.trim();
        let (scheme, rest) = url.split_once("://").ok_or(EtcdError::MemberBadUrls)?;
        if !matches!(scheme, "http" | "https" | "unix" | "unixs") {
            return Err(EtcdError::MemberBadUrls);
        }
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        if !path.is_empty() && path != "/" || !has_port(authority) || url::Url::parse(url).is_err() {
            return Err(EtcdError::MemberBadUrls);
        }
        checked.push(url.to_string());
    }
    checked.sort_unstable();
    Ok(checked)
}

/// Go's `net.SplitHostPort` succeeds: `host:port` or `[v6]:port`.
fn has_port(authority: &str) -> bool {
    let Some((host, _port)) = authority.rsplit_once(':') else {
        return false;
    };
    if host.starts_with('[') {
        return host.ends_with(']');
    }
    !host.contains(':') && !host.contains(['[', ']'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Op::RequestPut(pb::PutRequest {
                key: key.into(),
                ..Default::default()
            })),
        }
    }

    fn delete(key: &str, range_end: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Op::RequestDeleteRange(pb::DeleteRangeRequest {
                key: key.into(),
                range_end: range_end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<pb::RequestOp>, failure: Vec<pb::RequestOp>) -> pb::TxnRequest {
        pb::TxnRequest {
            compare: Vec::new(),
            success,
            failure,
        }
    }

    #[test]
    fn more_ops_than_the_limit_are_refused() {
        let ops = (0..129).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(check_txn(&txn(ops, vec![]), 128), Err(EtcdError::TooManyOps));
        let ops = (0..128).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(check_txn(&txn(ops, vec![]), 128), Ok(()));
    }

    #[test]
    fn transactions_nested_past_the_limit_are_refused() {
        let mut request = txn(vec![put("k")], vec![]);
        for _ in 1..TXN_DEPTH_MAX {
            request = txn(
                vec![pb::RequestOp {
                    request: Some(Op::RequestTxn(request)),
                }],
                vec![],
            );
        }
        assert_eq!(check_txn(&request, 128), Ok(()));
        let deeper = txn(
            vec![],
            vec![pb::RequestOp {
                request: Some(Op::RequestTxn(request)),
            }],
        );
        assert_eq!(check_txn(&deeper, 128), Err(EtcdError::TxnTooDeep));
    }

    #[test]
    fn the_same_key_put_twice_is_a_duplicate() {
        let request = txn(vec![put("a"), put("a")], vec![]);
        assert_eq!(check_txn(&request, 128), Err(EtcdError::DuplicateKey));
    }

    #[test]
    fn a_put_inside_a_deleted_range_is_a_duplicate() {
        let request = txn(vec![delete("a", "c"), put("b")], vec![]);
        assert_eq!(check_txn(&request, 128), Err(EtcdError::DuplicateKey));
        let request = txn(vec![delete("a", "c"), put("c")], vec![]);
        assert_eq!(check_txn(&request, 128), Ok(()));
    }

    #[test]
    fn then_and_else_of_a_nested_txn_may_put_the_same_key() {
        let nested = Op::RequestTxn(txn(vec![put("a")], vec![put("a")]));
        let request = txn(vec![pb::RequestOp { request: Some(nested) }], vec![]);
        assert_eq!(check_txn(&request, 128), Ok(()));
    }

    #[test]
    fn a_nested_put_under_an_outer_delete_is_a_duplicate() {
        let nested = Op::RequestTxn(txn(vec![put("b")], vec![]));
        let request = txn(vec![delete("b", ""), pb::RequestOp { request: Some(nested) }], vec![]);
        assert_eq!(check_txn(&request, 128), Err(EtcdError::DuplicateKey));
    }

    /// A Txn of `2^depth` leaves: nested pairs of txns down to `depth`, each
    /// leaf a txn of one delete (in the first half) or one put (the second),
    /// all different keys: ops fit the limit at every level.
    fn wide_txn(depth: u32, leaf: u32) -> pb::TxnRequest {
        if depth == 0 {
            let key = format!("key/{leaf:08}");
            let op = if leaf.is_multiple_of(2) {
                delete(&key, "")
            } else {
                put(&key)
            };
            return txn(vec![op], vec![]);
        }
        let nested = |leaf| pb::RequestOp {
            request: Some(Op::RequestTxn(wide_txn(depth - 1, leaf))),
        };
        txn(vec![nested(leaf * 2), nested(leaf * 2 + 1)], vec![])
    }

    #[test]
    fn a_txn_of_many_puts_and_deletes_is_checked_in_near_linear_time() {
        // 2^16 ops, about a 1.5 MiB request: checking each put against every
        // delete so far is 1e9 comparisons, seconds; the union takes ms.
        let request = wide_txn(16, 0);
        let started = std::time::Instant::now();
        assert_eq!(check_txn(&request, 128), Ok(()));
        let elapsed = started.elapsed();
        assert!(elapsed < std::time::Duration::from_secs(3), "took {elapsed:?}");
    }

    #[test]
    fn an_empty_op_is_key_not_found() {
        let request = txn(vec![pb::RequestOp { request: None }], vec![]);
        assert_eq!(check_txn(&request, 128), Err(EtcdError::KeyNotFound));
    }

    #[test]
    fn ignore_value_with_a_value_is_refused() {
        let request = pb::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(check_put(&request), Err(EtcdError::ValueProvided));
    }
}

#[cfg(test)]
mod deleted_tests {
    use proptest::prelude::*;

    use super::*;

    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(0u8..4, 0..4)
    }

    proptest! {
        /// The union answers as every range asked in turn would.
        #[test]
        fn the_union_covers_what_any_of_its_ranges_covers(
            ranges in prop::collection::vec((key(), key()), 0..12),
            keys in prop::collection::vec(key(), 1..20),
        ) {
            let mut deleted = Deleted::default();
            for (begin, end) in &ranges {
                deleted.insert(begin.clone(), end.clone());
            }
            for key in &keys {
                let any = ranges.iter().any(|(begin, end)| begin <= key && ends_after(end, key));
                prop_assert_eq!(deleted.covers(key), any, "{:?} in {:?}", key, ranges);
            }
        }
    }
}

#[cfg(test)]
mod member_url_tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|url| url.to_string()).collect()
    }

    #[test]
    fn member_urls_are_checked_as_etcds_new_urls_does() {
        assert_eq!(
            member_peer_urls(&urls(&["http://b:2", " http://a:1 "])),
            Ok(urls(&["http://a:1", "http://b:2"]))
        );
        assert_eq!(
            member_peer_urls(&urls(&["http://[::1]:2380"])),
            Ok(urls(&["http://[::1]:2380"]))
        );
        for bad in ["foo", "ftp://a:1", "http://a", "http://a:1/path", "http://::1:2"] {
            assert_eq!(member_peer_urls(&urls(&[bad])), Err(EtcdError::MemberBadUrls), "{bad}");
        }
        assert_eq!(member_peer_urls(&[]), Err(EtcdError::MemberBadUrls));
    }
}

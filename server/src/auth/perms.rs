//! A user's merged key permissions and etcd's range checks on them: the
//! intervals of every role the user has, read and write apart, compared as
//! etcd's `adt.BytesAffineInterval`s (`auth/range_perm_cache.go`), so a
//! request is allowed exactly when etcd allows it.

use std::cmp::Ordering;

use ringkv_proto::authpb::{self, permission::Type as PermType};

/// Keys compared as etcd's `adt.BytesAffineComparable`: the empty key stands
/// for "past every key" (an open end).
fn affine_cmp(a: &[u8], b: &[u8]) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.cmp(b),
    }
}

/// `[begin, end)`, `end` empty for no end.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interval {
    begin: Vec<u8>,
    end: Vec<u8>,
}

impl Interval {
    /// One key, as `[key, key + "\0")`.
    fn point(key: &[u8]) -> Interval {
        let mut end = Vec::with_capacity(key.len() + 1);
        end.extend_from_slice(key);
        end.push(0);
        Interval {
            begin: key.to_vec(),
            end,
        }
    }

    /// adt's `Interval.Compare` giving 0: neither lies wholly left of the other.
    fn overlaps(&self, begin: &[u8], end: &[u8]) -> bool {
        let left_of = affine_cmp(self.begin.as_slice(), begin) == Ordering::Less
            && affine_cmp(self.end.as_slice(), begin) != Ordering::Greater;
        let right_of = affine_cmp(self.begin.as_slice(), end) != Ordering::Less;
        !left_of && !right_of
    }
}

/// One kind of access (read or write) over every role of a user, sorted by
/// where each interval begins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct IntervalSet {
    intervals: Vec<Interval>,
}

impl IntervalSet {
    fn insert(&mut self, interval: Interval) {
        // After equal beginnings, as adt's tree inserts them.
        let at = self
            .intervals
            .partition_point(|held| affine_cmp(&held.begin, &interval.begin) != Ordering::Greater);
        self.intervals.insert(at, interval);
    }

    /// adt's `Intersects`: some interval holds part of `[begin, end)`.
    fn intersects(&self, begin: &[u8], end: &[u8]) -> bool {
        self.intervals.iter().any(|held| held.overlaps(begin, end))
    }

    /// adt's `Contains`: the intervals overlapping `[begin, end)`, in order,
    /// leave no gap and cover it whole.
    fn contains(&self, begin: &[u8], end: &[u8]) -> bool {
        let mut covered: Option<(&[u8], &[u8])> = None;
        for held in self.intervals.iter().filter(|held| held.overlaps(begin, end)) {
            covered = Some(match covered {
                None => (&held.begin, &held.end),
                Some((_, max_end)) if affine_cmp(max_end, &held.begin) == Ordering::Less => return false,
                Some((min_begin, max_end)) if affine_cmp(&held.end, max_end) == Ordering::Greater => {
                    (min_begin, &held.end)
                }
                Some(kept) => kept,
            });
        }
        covered.is_some_and(|(min_begin, max_end)| {
            affine_cmp(max_end, end) != Ordering::Less && affine_cmp(min_begin, begin) != Ordering::Greater
        })
    }
}

/// Read or write, as a request needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// What one user may touch (etcd's `unifiedRangePermissions`), rebuilt
/// whenever users or roles change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct UserPerms {
    read: IntervalSet,
    write: IntervalSet,
}

impl UserPerms {
    /// Merges the permissions of `roles` (etcd's `getMergedPerms`).
    pub(super) fn merge<'a>(roles: impl Iterator<Item = &'a authpb::Permission>) -> UserPerms {
        let mut perms = UserPerms::default();
        for perm in roles {
            let interval = if perm.range_end.is_empty() {
                Interval::point(&perm.key)
            } else {
                let end = if perm.range_end == [0] {
                    Vec::new()
                } else {
                    perm.range_end.clone()
                };
                Interval {
                    begin: perm.key.clone(),
                    end,
                }
            };
            match PermType::from_i32(perm.perm_type) {
                Some(PermType::Readwrite) => {
                    perms.read.insert(interval.clone());
                    perms.write.insert(interval);
                }
                Some(PermType::Read) => perms.read.insert(interval),
                Some(PermType::Write) => perms.write.insert(interval),
                // etcd stores any number a client sends; one it does not
                // know grants nothing.
                None => {}
            }
        }
        perms
    }

    /// etcd's `isRangeOpPermitted`: one key (`range_end` empty) needs an
    /// interval holding it; a range (`"\0"`: no end) needs to be covered.
    pub(super) fn permits(&self, key: &[u8], range_end: &[u8], access: Access) -> bool {
        let set = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        if range_end.is_empty() {
            let point = Interval::point(key);
            return set.intersects(&point.begin, &point.end);
        }
        let end: &[u8] = if range_end == [0] { &[] } else { range_end };
        set.contains(key, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn perm(kind: PermType, key: &[u8], range_end: &[u8]) -> authpb::Permission {
        authpb::Permission {
            perm_type: kind as i32,
            key: key.to_vec(),
            range_end: range_end.to_vec(),
        }
    }

    #[test]
    fn a_single_key_permission_allows_that_key_only() {
        let perms = UserPerms::merge([perm(PermType::Read, b"foo", b"")].iter());
        assert!(perms.permits(b"foo", b"", Access::Read));
        assert!(!perms.permits(b"foo", b"", Access::Write));
        assert!(!perms.permits(b"fo", b"", Access::Read));
        assert!(!perms.permits(b"foo0", b"", Access::Read));
        // The range [foo, foo\0) is the key itself.
        assert!(perms.permits(b"foo", b"foo\0", Access::Read));
        assert!(!perms.permits(b"foo", b"fop", Access::Read));
    }

    #[test]
    fn a_prefix_permission_covers_ranges_inside_it() {
        let perms = UserPerms::merge([perm(PermType::Readwrite, b"dir/", b"dir0")].iter());
        assert!(perms.permits(b"dir/a", b"", Access::Write));
        assert!(perms.permits(b"dir/", b"dir0", Access::Read));
        assert!(perms.permits(b"dir/a", b"dir/b", Access::Read));
        assert!(!perms.permits(b"dir/", b"\0", Access::Read), "open end");
        assert!(!perms.permits(b"dir", b"dir0", Access::Read));
        assert!(!perms.permits(b"dir0", b"", Access::Read));
    }

    #[test]
    fn an_open_ended_permission_covers_everything_after_its_key() {
        let perms = UserPerms::merge([perm(PermType::Read, b"\0", b"\0")].iter());
        assert!(perms.permits(b"\0", b"\0", Access::Read));
        assert!(perms.permits(b"zzz", b"", Access::Read));
        assert!(perms.permits(b"a", b"\0", Access::Read));
    }

    #[test]
    fn adjacent_permissions_cover_a_range_together_and_a_gap_does_not() {
        let joined = UserPerms::merge([perm(PermType::Read, b"a", b"c"), perm(PermType::Read, b"c", b"e")].iter());
        assert!(joined.permits(b"a", b"e", Access::Read));
        let gapped = UserPerms::merge([perm(PermType::Read, b"a", b"c"), perm(PermType::Read, b"d", b"e")].iter());
        assert!(!gapped.permits(b"a", b"e", Access::Read));
        assert!(gapped.permits(b"d", b"e", Access::Read));
    }

    /// Keys over a small alphabet, so ranges meet and overlap often.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(vec![0u8, b'a', b'b', b'c']), 1..4)
    }

    proptest! {
        /// A single key is allowed exactly when one permission's interval
        /// holds it (the model: check the interval of each permission).
        #[test]
        fn a_key_is_allowed_when_some_permission_holds_it(
            grants in prop::collection::vec((key(), prop::option::of(key()), any::<bool>()), 0..5),
            asked in key(),
        ) {
            let perms: Vec<_> = grants
                .iter()
                .map(|(key, end, open)| {
                    let end = match (end, open) {
                        (_, true) => vec![0],
                        // etcd never checks reversed ranges: grant a key instead.
                        (Some(end), false) if end > key => end.clone(),
                        _ => Vec::new(),
                    };
                    perm(PermType::Read, key, &end)
                })
                .collect();
            let merged = UserPerms::merge(perms.iter());
            let model = perms.iter().any(|perm| {
                if perm.range_end.is_empty() {
                    perm.key == asked
                } else if perm.range_end == [0] {
                    asked >= perm.key
                } else {
                    asked >= perm.key && asked < perm.range_end
                }
            });
            prop_assert_eq!(merged.permits(&asked, b"", Access::Read), model);
        }
    }
}

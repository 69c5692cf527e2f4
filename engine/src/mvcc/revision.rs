//! Revisions: (main, sub). `main` is the store revision of a write request, `sub`
//! numbers the changes inside it. The revision table is keyed by their encoding,
//! in one of two forms (`RevisionKeys`).

use std::ops::Deref;

/// Tree keys of the revision table start with this byte.
pub const REVISION_TABLE: u8 = b'r';
/// A wide key: table byte, main (8 bytes big endian), sub (8 bytes big endian).
const WIDE_KEY_BYTES: usize = 17;
/// The longest narrow key: table byte, main's length and its 8 bytes, sub's length
/// and its 8 bytes.
const NARROW_KEY_MAX_BYTES: usize = 19;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub fn new(main: i64, sub: i64) -> Revision {
        assert!(main >= 0 && sub >= 0, "revisions are never negative");
        Revision { main, sub }
    }

    /// Decodes a tree key of the revision table, of either form; None if it is
    /// not one.
    pub fn from_key(key: &[u8]) -> Option<Revision> {
        let (&table, rest) = key.split_first()?;
        if table != REVISION_TABLE {
            return None;
        }
        let revision = if is_wide(key) {
            Revision {
                main: i64::from_be_bytes(key[1..9].try_into().ok()?),
                sub: i64::from_be_bytes(key[9..17].try_into().ok()?),
            }
        } else {
            let (main, rest) = take_narrow(rest)?;
            let sub = match rest {
                [] => 0,
                rest => match take_narrow(rest)? {
                    // A sub of 0 is written as no sub at all: one key per revision.
                    (0, _) => return None,
                    (sub, []) => sub,
                    _ => return None,
                },
            };
            Revision { main, sub }
        };
        (revision.main >= 0 && revision.sub >= 0).then_some(revision)
    }
}

/// How one store's revisions become tree keys. Stores written before 2026-12-06
/// keyed every revision wide (17 bytes); later revisions get narrow keys: the
/// table byte, then main as its length in bytes (1 to 8) and those low bytes
/// big endian, then, unless sub is 0 (nearly every revision), sub the same way.
/// A revision at 300,000 with sub 0 takes 5 bytes instead of 17.
///
/// Both forms sort in revision order (a narrow number's length comes before its
/// bytes, so a shorter one is smaller; a key without a sub is a prefix of that
/// main's keys with one). Every wide key sorts before every narrow key: its
/// second byte is its main's top byte, 0 below 2^56, where a narrow key's is a
/// length, 1 to 8. So as long as every wide revision is older than every narrow
/// one, the whole table is in revision order, and a range of revisions is one
/// range of keys: revisions up to the last wide one a store held when it was
/// opened (`last_wide`) keep their wide keys, every later one is narrow.
/// `RevisionKeys::default()` is a store without wide keys: every store created
/// since, and every store a load fills.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RevisionKeys {
    last_wide: Option<Revision>,
}

impl RevisionKeys {
    /// The keys of a store whose revision table holds wide keys up to
    /// `last_wide` (None: none, every key is narrow).
    pub(super) fn with_last_wide(last_wide: Option<Revision>) -> RevisionKeys {
        RevisionKeys { last_wide }
    }

    /// The tree key of `revision` in this store.
    pub fn key(&self, revision: Revision) -> RevisionKey {
        if self.last_wide.is_some_and(|last_wide| revision <= last_wide) {
            return wide_key(revision);
        }
        let mut key = RevisionKey::table();
        key.push_narrow(revision.main);
        if revision.sub != 0 {
            key.push_narrow(revision.sub);
        }
        key
    }
}

/// `revision`'s wide key, whatever form a store gives it: what hashes over
/// stored keys feed, so that they do not depend on when a store began writing
/// narrow keys.
pub(super) fn wide_key(revision: Revision) -> RevisionKey {
    let mut key = RevisionKey::table();
    key.push(&revision.main.to_be_bytes());
    key.push(&revision.sub.to_be_bytes());
    key
}

/// Whether a revision table key is in the wide form. Its second byte is the top
/// byte of its main, which only a main of 2^56 or more sets (never reached: wide
/// keys are only read, from stores written before narrow keys); a narrow key's is
/// a length, 1 to 8.
pub(super) fn is_wide(key: &[u8]) -> bool {
    key.len() == WIDE_KEY_BYTES && key.get(1) == Some(&0)
}

/// A number as a narrow key writes it, and the bytes after it; None if `bytes`
/// does not start with one in its shortest form.
fn take_narrow(bytes: &[u8]) -> Option<(i64, &[u8])> {
    let (&len, rest) = bytes.split_first()?;
    let len = usize::from(len);
    if !(1..=8).contains(&len) || rest.len() < len {
        return None;
    }
    let (number, rest) = rest.split_at(len);
    // The shortest form only (a leading zero byte only for the number 0): one
    // key per revision.
    if len > 1 && number[0] == 0 {
        return None;
    }
    let mut be = [0u8; 8];
    be[8 - len..].copy_from_slice(number);
    Some((i64::from_be_bytes(be), rest))
}

/// A revision table key, held without allocating.
#[derive(Clone, Copy)]
pub struct RevisionKey {
    bytes: [u8; NARROW_KEY_MAX_BYTES],
    len: u8,
}

impl RevisionKey {
    /// The table byte alone.
    fn table() -> RevisionKey {
        let mut key = RevisionKey {
            bytes: [0; NARROW_KEY_MAX_BYTES],
            len: 1,
        };
        key.bytes[0] = REVISION_TABLE;
        key
    }

    fn push(&mut self, bytes: &[u8]) {
        let at = usize::from(self.len);
        self.bytes[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len() as u8;
    }

    /// `number`'s length in bytes (at least 1), then those bytes big endian.
    fn push_narrow(&mut self, number: i64) {
        let be = number.to_be_bytes();
        let skip = (number.leading_zeros() / 8).min(7) as usize;
        self.push(&[(8 - skip) as u8]);
        self.push(&be[skip..]);
    }
}

impl Deref for RevisionKey {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for RevisionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", &**self)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const WIDE_UP_TO_3: RevisionKeys = RevisionKeys {
        last_wide: Some(Revision { main: 3, sub: 0 }),
    };

    #[test]
    fn narrow_keys_are_short_and_wide_ones_as_before() {
        let narrow = RevisionKeys::default();
        assert_eq!(&*narrow.key(Revision::new(2, 0)), b"r\x01\x02");
        assert_eq!(&*narrow.key(Revision::new(0, 0)), b"r\x01\x00");
        assert_eq!(&*narrow.key(Revision::new(300_000, 0)), b"r\x03\x04\x93\xe0");
        assert_eq!(&*narrow.key(Revision::new(256, 1)), b"r\x02\x01\x00\x01\x01");
        assert_eq!(
            narrow.key(Revision::new(i64::MAX, i64::MAX)).len(),
            NARROW_KEY_MAX_BYTES
        );
        assert_eq!(
            &*WIDE_UP_TO_3.key(Revision::new(3, 0)),
            b"r\x00\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00\x00"
        );
        assert_eq!(&*WIDE_UP_TO_3.key(Revision::new(3, 1)), b"r\x01\x03\x01\x01");
    }

    #[test]
    fn keys_of_other_tables_and_forms_not_written_are_refused() {
        for key in [
            &b"m-not-a-revision"[..],
            b"r",
            b"r\x00",
            b"r\x01",
            b"r\x09\x01\x02\x03\x04\x05\x06\x07\x08\x09",
            b"r\x02\x00\x05",                         // not the shortest form
            b"r\x01\x05\x01\x00",                     // a sub of 0 written out
            b"r\x01\x05\x01\x01\x00",                 // bytes after the sub
            b"r\x08\x80\x00\x00\x00\x00\x00\x00\x00", // negative
            b"r\x00\x00\x00\x00\x00\x00\x00\x03",     // wide, cut short
        ] {
            assert_eq!(Revision::from_key(key), None, "{key:?}");
        }
    }

    fn revision() -> impl Strategy<Value = Revision> {
        let number = prop_oneof![0..300i64, 0..1i64 << 20, 0..1i64 << 56, 0..i64::MAX];
        (number.clone(), prop_oneof![Just(0i64), number]).prop_map(|(main, sub)| Revision::new(main, sub))
    }

    proptest! {
        /// Whatever the boundary between wide and narrow keys, every key decodes
        /// to its revision and keys sort in revision order.
        #[test]
        fn keys_round_trip_and_sort_in_revision_order(
            mut revisions in proptest::collection::vec(revision(), 1..40),
            last_wide in proptest::option::of(revision()),
        ) {
            // Wide keys are only read from stores written before narrow keys,
            // whose mains stay far below 2^56.
            let last_wide = last_wide.filter(|last_wide| last_wide.main < 1 << 56);
            let keys = RevisionKeys::with_last_wide(last_wide);
            revisions.sort();
            revisions.dedup();
            for revision in &revisions {
                let key = keys.key(*revision);
                prop_assert_eq!(Revision::from_key(&key), Some(*revision));
                prop_assert_eq!(is_wide(&key), last_wide.is_some_and(|last_wide| *revision <= last_wide));
            }
            for pair in revisions.windows(2) {
                prop_assert!(*keys.key(pair[0]) < *keys.key(pair[1]), "{:?}", pair);
            }
        }
    }
}

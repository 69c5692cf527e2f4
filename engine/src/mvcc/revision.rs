//! Revisions: (main, sub). `main` is the store revision of a write request, `sub`
//! numbers the changes inside it. The revision table is keyed by their encoding.

/// Tree keys of the revision table start with this byte.
pub const REVISION_TABLE: u8 = b'r';
/// Encoded length: table byte, main (8 bytes big endian), sub (8 bytes big endian).
pub const REVISION_KEY_BYTES: usize = 17;

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

    /// The tree key; big endian so byte order is revision order.
    pub fn to_key(self) -> [u8; REVISION_KEY_BYTES] {
        let mut key = [0u8; REVISION_KEY_BYTES];
        key[0] = REVISION_TABLE;
        key[1..9].copy_from_slice(&self.main.to_be_bytes());
        key[9..17].copy_from_slice(&self.sub.to_be_bytes());
        key
    }

    /// Decodes a tree key of the revision table; None if it is not one.
    pub fn from_key(key: &[u8]) -> Option<Revision> {
        if key.len() != REVISION_KEY_BYTES || key[0] != REVISION_TABLE {
            return None;
        }
        let main = i64::from_be_bytes(key[1..9].try_into().ok()?);
        let sub = i64::from_be_bytes(key[9..17].try_into().ok()?);
        (main >= 0 && sub >= 0).then_some(Revision { main, sub })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_is_revision_order() {
        let revisions = [
            Revision::new(2, 0),
            Revision::new(2, 1),
            Revision::new(3, 0),
            Revision::new(256, 0),
        ];
        for pair in revisions.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(pair[0].to_key() < pair[1].to_key());
        }
    }

    #[test]
    fn keys_round_trip() {
        let revision = Revision::new(123_456_789, 7);
        assert_eq!(Revision::from_key(&revision.to_key()), Some(revision));
        assert_eq!(Revision::from_key(b"m-not-a-revision"), None);
    }
}

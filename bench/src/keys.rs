//! Keys and values the workloads send.
//!
//! A key is its index in the key space written as zero-padded decimal, exactly
//! `key_size` bytes long (`--key-size 8`: key 42 is `00000042`). Keys are printable,
//! so `etcdctl get "" --prefix` shows what a run wrote, and they sort in index
//! order, so a prefix of leading digits selects a contiguous block of keys.
//! (etcd's benchmark writes binary varints padded with zeros; only the size
//! matters to the server.)

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// The order in which ops walk the key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrder {
    /// Op number `n` uses key `n % key_space_size`.
    Sequential,
    /// Each op picks a key uniformly at random.
    Random,
}

impl KeyOrder {
    pub fn from_sequential_flag(sequential: bool) -> KeyOrder {
        if sequential {
            KeyOrder::Sequential
        } else {
            KeyOrder::Random
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KeyOrder::Sequential => "sequential",
            KeyOrder::Random => "random",
        }
    }
}

/// `key_space_size` keys of `key_size` bytes each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpace {
    key_size: usize,
    size: u64,
    order: KeyOrder,
}

impl KeySpace {
    /// Fails if a key index would not fit in `key_size` decimal digits.
    pub fn new(key_size: usize, size: u64, order: KeyOrder) -> Result<KeySpace, String> {
        if key_size == 0 {
            return Err("--key-size must be at least 1".into());
        }
        if size == 0 {
            return Err("--key-space-size must be at least 1".into());
        }
        let digits = decimal_digits(size - 1);
        if digits > key_size {
            return Err(format!(
                "--key-space-size {size} needs keys of at least {digits} bytes (keys are zero-padded decimal), \
                 but --key-size is {key_size}"
            ));
        }
        Ok(KeySpace { key_size, size, order })
    }

    pub fn key_size(&self) -> usize {
        self.key_size
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn order(&self) -> KeyOrder {
        self.order
    }

    /// The key index op number `ticket` uses.
    pub fn index(&self, ticket: u64, rng: &mut impl Rng) -> u64 {
        match self.order {
            KeyOrder::Sequential => ticket % self.size,
            KeyOrder::Random => rng.gen_range(0..self.size),
        }
    }

    /// The key with index `index`.
    pub fn key(&self, index: u64) -> Vec<u8> {
        debug_assert!(
            index < self.size,
            "key index {index} outside a key space of {}",
            self.size
        );
        format!("{index:0width$}", width = self.key_size).into_bytes()
    }

    /// The index of `key` if it is one of this key space's keys.
    pub fn index_of(&self, key: &[u8]) -> Option<u64> {
        if key.len() != self.key_size || !key.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let index: u64 = std::str::from_utf8(key).ok()?.parse().ok()?;
        (index < self.size).then_some(index)
    }

    /// `[start, end)` covering every key of the key space (and nothing else of
    /// the same size).
    pub fn bounds(&self) -> (Vec<u8>, Vec<u8>) {
        let mut end = self.key(self.size - 1);
        end.push(0);
        (self.key(0), end)
    }

    /// Every key index once, in this key space's order: 0, 1, 2, ... or a
    /// permutation shuffled with `seed` (for workloads that use each key once).
    pub fn each_once(&self, seed: u64) -> Vec<u64> {
        let mut indexes: Vec<u64> = (0..self.size).collect();
        if self.order == KeyOrder::Random {
            indexes.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        }
        indexes
    }

    /// For the run's settings line.
    pub fn describe(&self) -> String {
        format!(
            "key-size {} B, key-space-size {}, {} keys",
            self.key_size,
            self.size,
            self.order.name()
        )
    }
}

fn decimal_digits(mut n: u64) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

/// A value of `size` printable bytes. Every op sends the same value, as etcd's
/// benchmark does: neither server compresses, so the content does not matter.
pub fn value(size: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..size).map(|i| ALPHABET[(i * 7 + 3) % ALPHABET.len()]).collect()
}

/// The `range_end` that makes a Range cover every key starting with `prefix`
/// (etcd's `GetPrefixRangeEnd`): the prefix with its last byte below 0xff
/// incremented and what follows dropped; `[0]` (every key) if there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;

    fn space(key_size: usize, size: u64, order: KeyOrder) -> KeySpace {
        KeySpace::new(key_size, size, order).unwrap()
    }

    #[test]
    fn keys_are_exactly_key_size_bytes_of_zero_padded_decimal() {
        let keys = space(8, 100_000, KeyOrder::Sequential);
        assert_eq!(keys.key(0), b"00000000");
        assert_eq!(keys.key(42), b"00000042");
        assert_eq!(keys.key(99_999), b"00099999");
        assert!((0..1000).all(|i| keys.key(i).len() == 8));
    }

    #[test]
    fn key_order_is_index_order() {
        let keys = space(4, 10_000, KeyOrder::Sequential);
        assert!((1..10_000).all(|i| keys.key(i - 1) < keys.key(i)));
    }

    #[test]
    fn key_space_too_large_for_key_size_is_refused() {
        assert!(KeySpace::new(3, 1000, KeyOrder::Random).is_ok());
        let error = KeySpace::new(3, 1001, KeyOrder::Random).unwrap_err();
        assert!(error.contains("at least 4 bytes"), "{error}");
        assert!(KeySpace::new(0, 1, KeyOrder::Random).is_err());
        assert!(KeySpace::new(8, 0, KeyOrder::Random).is_err());
    }

    #[test]
    fn sequential_order_wraps_around_the_key_space() {
        let keys = space(8, 3, KeyOrder::Sequential);
        let mut rng = StdRng::seed_from_u64(1);
        let picked: Vec<u64> = (0..7).map(|t| keys.index(t, &mut rng)).collect();
        assert_eq!(picked, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn random_order_stays_inside_the_key_space_and_spreads() {
        let keys = space(8, 10, KeyOrder::Random);
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = [0u32; 10];
        for ticket in 0..10_000 {
            seen[usize::try_from(keys.index(ticket, &mut rng)).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&count| count > 800), "{seen:?}");
    }

    #[test]
    fn index_of_inverts_key() {
        let keys = space(8, 1000, KeyOrder::Random);
        assert!((0..1000).all(|i| keys.index_of(&keys.key(i)) == Some(i)));
        assert_eq!(keys.index_of(b"00001000"), None, "outside the key space");
        assert_eq!(keys.index_of(b"0000042"), None, "wrong size");
        assert_eq!(keys.index_of(b"0000004x"), None, "not decimal");
    }

    #[test]
    fn bounds_cover_exactly_the_key_space() {
        let keys = space(8, 1000, KeyOrder::Random);
        let (start, end) = keys.bounds();
        assert!((0..1000).map(|i| keys.key(i)).all(|k| start <= k && k < end));
        assert!(b"00001000".to_vec() >= end);
    }

    #[test]
    fn each_once_is_a_permutation() {
        let keys = space(8, 1000, KeyOrder::Random);
        let mut order = keys.each_once(3);
        assert_ne!(order, (0..1000).collect::<Vec<_>>(), "random order is shuffled");
        order.sort_unstable();
        assert_eq!(order, (0..1000).collect::<Vec<_>>());
        let sequential = space(8, 5, KeyOrder::Sequential);
        assert_eq!(sequential.each_once(3), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn values_have_the_requested_size() {
        assert_eq!(value(0).len(), 0);
        assert_eq!(value(256).len(), 256);
        assert!(value(256).iter().all(u8::is_ascii_alphanumeric));
    }

    #[test]
    fn prefix_end_matches_etcd() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }
}

//! The keys a watcher covers, from a create request, with etcd's conventions: an
//! empty key means `"\0"`; an empty `range_end` means the key alone; `"\0"` means
//! every key from `key` on; otherwise `[key, range_end)`, refused if empty.

use super::range_index::RangeEndKey;

/// etcd's `ErrEmptyWatcherRange` text.
pub const EMPTY_RANGE: &str = "mvcc: watcher range is empty";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchSpan {
    Key(Box<[u8]>),
    Range { start: Box<[u8]>, end: RangeEndKey },
}

impl WatchSpan {
    pub fn from_request(key: &[u8], range_end: &[u8]) -> Result<WatchSpan, &'static str> {
        let key: Box<[u8]> = if key.is_empty() { Box::new([0]) } else { key.into() };
        match range_end {
            [] => Ok(WatchSpan::Key(key)),
            [0] => Ok(WatchSpan::Range {
                start: key,
                end: RangeEndKey::Unbounded,
            }),
            end if &*key >= end => Err(EMPTY_RANGE),
            end => Ok(WatchSpan::Range {
                start: key,
                end: RangeEndKey::Before(end.into()),
            }),
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            WatchSpan::Key(only) => &**only == key,
            WatchSpan::Range { start, end } => {
                &**start <= key
                    && match end {
                        RangeEndKey::Before(end) => key < &**end,
                        RangeEndKey::Unbounded => true,
                    }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcds_range_conventions_apply() {
        assert_eq!(WatchSpan::from_request(b"", b""), Ok(WatchSpan::Key(Box::new([0]))));
        let everything = WatchSpan::from_request(b"", b"\0").unwrap();
        assert!(everything.contains(b"\0") && everything.contains(b"\xff\xff"));
        let prefix = WatchSpan::from_request(b"ab", b"ac").unwrap();
        assert!(prefix.contains(b"ab") && prefix.contains(b"ab\xff") && !prefix.contains(b"ac"));
        assert!(!WatchSpan::from_request(b"k", b"").unwrap().contains(b"k2"));
    }

    #[test]
    fn an_empty_range_is_refused_with_etcds_reason() {
        assert_eq!(WatchSpan::from_request(b"b", b"a"), Err(EMPTY_RANGE));
        assert_eq!(WatchSpan::from_request(b"a", b"a"), Err(EMPTY_RANGE));
    }
}

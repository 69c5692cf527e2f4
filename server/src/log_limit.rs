//! Warnings about what peers send, written at most once per interval per kind
//! with a count of those held back: a flood of bad frames or connections cannot
//! fill the disk with logs.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// One warning of a kind per this long; the rest are counted, not written.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(1);

/// One kind of warning and when it was last written.
#[derive(Debug, Default)]
pub struct LogLimit {
    last: Cell<Option<Instant>>,
    held_back: Cell<u64>,
}

impl LogLimit {
    /// Whether a warning may be written now: Some(how many were held back since
    /// the last one), or None (this one is counted and held back).
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        if self.last.get().is_some_and(|last| now < last + WARNING_INTERVAL) {
            self.held_back.set(self.held_back.get() + 1);
            return None;
        }
        self.last.set(Some(now));
        Some(self.held_back.replace(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_writes_one_warning_per_interval_and_counts_the_rest() {
        let limit = LogLimit::default();
        let start = Instant::now();
        assert_eq!(limit.allow_at(start), Some(0));
        for step in 1..=1000u32 {
            assert_eq!(limit.allow_at(start + WARNING_INTERVAL * step / 1001), None);
        }
        assert_eq!(limit.allow_at(start + WARNING_INTERVAL), Some(1000));
        assert_eq!(limit.allow_at(start + WARNING_INTERVAL), None);
    }
}

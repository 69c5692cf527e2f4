//! `--rate`: when each op is meant to be sent, and which start time its latency
//! is measured from.
//!
//! With a rate limit, op number `n` (numbered across all request loops) is
//! scheduled at `start + n / rate`. Its latency runs from that *intended* send
//! time, not from when a request loop got around to sending it: if the server
//! stalls, the ops that should have been sent meanwhile wait in line, and that
//! wait counts. Measuring from the actual send would hide exactly the stalls an
//! operator cares about ("coordinated omission", Gil Tene). Without a rate limit
//! each loop sends as soon as its previous op finished, and latency runs from the
//! actual send. So does a paced op whose loop was idle at its intended time
//! ([`measured_from`]): it was sent late only by the timer, whose resolution is
//! a millisecond, and that millisecond is the tool's, not the server's.

use std::time::{Duration, Instant};

/// When op `ticket` is due, relative to the run's start, under `rate_per_sec`.
pub fn intended_offset(ticket: u64, rate_per_sec: u64) -> Duration {
    assert!(rate_per_sec > 0, "a rate limit of 0 means no limit, not a schedule");
    let nanos = u128::from(ticket) * 1_000_000_000 / u128::from(rate_per_sec);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Where a paced op's latency runs from: its intended send time if its loop
/// was still busy with the previous op then (`ready`, when the loop was free,
/// is later: the wait counts), else its actual send time (`sent`).
pub fn measured_from(intended: Instant, ready: Instant, sent: Instant) -> Instant {
    if ready > intended {
        intended
    } else {
        sent
    }
}

/// Latency to record, in whole microseconds, at least 1 (the histogram's floor).
pub fn latency_us(from: Instant, done: Instant) -> u64 {
    let micros = done.saturating_duration_since(from).as_micros();
    u64::try_from(micros).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_spread_evenly_at_the_rate() {
        assert_eq!(intended_offset(0, 1000), Duration::ZERO);
        assert_eq!(intended_offset(1, 1000), Duration::from_millis(1));
        assert_eq!(intended_offset(1000, 1000), Duration::from_secs(1));
        assert_eq!(intended_offset(3, 4), Duration::from_millis(750));
    }

    #[test]
    fn schedule_does_not_drift_at_rates_that_do_not_divide_a_second() {
        // 3 ops/s: 333.33.. ms apart; op 3000 is due at exactly 1000 s.
        assert_eq!(intended_offset(3000, 3), Duration::from_secs(1000));
        assert_eq!(intended_offset(1, 3), Duration::from_nanos(333_333_333));
    }

    #[test]
    fn huge_tickets_saturate_instead_of_wrapping() {
        assert_eq!(intended_offset(u64::MAX, 1), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn a_loop_behind_schedule_counts_the_wait_and_an_idle_one_does_not() {
        let intended = Instant::now();
        // Busy until 3 ms after the op was due: its latency runs from the due time.
        let ready = intended + Duration::from_millis(3);
        assert_eq!(measured_from(intended, ready, ready), intended);
        // Idle before the due time, woken 0.9 ms after it by the timer: from the send.
        let ready = intended - Duration::from_millis(2);
        let sent = intended + Duration::from_micros(900);
        assert_eq!(measured_from(intended, ready, sent), sent);
    }

    #[test]
    fn latency_is_measured_from_the_given_start() {
        let intended = Instant::now();
        let done = intended + Duration::from_micros(2500);
        assert_eq!(latency_us(intended, done), 2500);
        // A late send does not shorten the recorded latency: the caller passes
        // the intended time, whatever the actual send time was.
        assert_eq!(latency_us(intended + Duration::from_millis(2), done), 500);
    }

    #[test]
    fn latency_has_a_floor_of_one_microsecond() {
        let now = Instant::now();
        assert_eq!(latency_us(now, now), 1);
        assert_eq!(latency_us(now + Duration::from_secs(1), now), 1);
    }
}

//! A member's clocks in the simulation. The monotonic clock (`Instant`, what
//! the store core keeps all its time with: raft ticks, lease deadlines,
//! request timeouts) starts at its own origin and runs at its own rate, within
//! `DRIFT_PPM_MAX` of the run's virtual time; the machine keeps it across the
//! member's crashes. The wall clock (`SystemTime`, read by the core only when
//! it starts, to seed its id generators) jumps by up to an hour, either way,
//! while the member is down.

use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::Rng;

/// How far a member's monotonic clock may run fast or slow (parts per
/// million of virtual time). NTP slews CLOCK_MONOTONIC by at most 500 ppm
/// and a crystal is off by well under 100; the simulation allows twenty
/// times as much, so that what depends on two members' clocks agreeing shows.
pub const DRIFT_PPM_MAX: i64 = 10_000;
/// Monotonic clocks start this far apart at most (machines booted at
/// different times): no `Instant` may travel between members.
const ORIGIN_SPREAD_US: u64 = 1_000_000_000;
/// The wall clock every run starts near (member ids are made from it).
const WALL_CLOCK_START_UNIX_SECONDS: u64 = 1_700_000_000;
/// A wall-clock jump while a member is down is at most this, either way.
const WALL_CLOCK_JUMP_MAX_SECONDS: i64 = 3_600;

const MILLION: i64 = 1_000_000;

#[derive(Debug, Clone)]
pub struct MemberClock {
    /// The monotonic clock's reading at virtual time 0 (µs past `base`).
    origin_us: u64,
    /// It runs `MILLION + drift_ppm` µs per `MILLION` µs of virtual time.
    drift_ppm: i64,
    /// The wall clock's offset from the virtual clock.
    wall_offset_s: i64,
}

impl MemberClock {
    /// A clock of its own: origin, rate and wall clock chosen by `rng`.
    pub fn random(rng: &mut StdRng) -> MemberClock {
        MemberClock {
            origin_us: rng.gen_range(0..ORIGIN_SPREAD_US),
            drift_ppm: rng.gen_range(-DRIFT_PPM_MAX..=DRIFT_PPM_MAX),
            wall_offset_s: rng.gen_range(-WALL_CLOCK_JUMP_MAX_SECONDS..=WALL_CLOCK_JUMP_MAX_SECONDS),
        }
    }

    /// The monotonic clock at virtual time `virtual_us`, in µs past `base`.
    pub fn local_us(&self, virtual_us: u64) -> u64 {
        let drift = i128::from(virtual_us) * i128::from(self.drift_ppm) / i128::from(MILLION);
        let local = i128::from(self.origin_us) + i128::from(virtual_us) + drift;
        u64::try_from(local).expect("a clock drifts by less than it runs")
    }

    /// The monotonic clock at virtual time `virtual_us`.
    pub fn now(&self, base: Instant, virtual_us: u64) -> Instant {
        base + Duration::from_micros(self.local_us(virtual_us))
    }

    /// The virtual time in which `local` passes on this clock.
    pub fn virtual_for(&self, local: Duration) -> Duration {
        let local_us = local.as_micros() as i128;
        let virtual_us = local_us * i128::from(MILLION) / i128::from(MILLION + self.drift_ppm);
        Duration::from_micros(u64::try_from(virtual_us).expect("a short duration"))
    }

    /// The wall clock at virtual time `virtual_us`.
    pub fn wall_clock(&self, virtual_us: u64) -> SystemTime {
        let start = WALL_CLOCK_START_UNIX_SECONDS.saturating_add_signed(self.wall_offset_s);
        SystemTime::UNIX_EPOCH + Duration::from_secs(start) + Duration::from_micros(virtual_us)
    }

    /// While the member is down, its wall clock is set anew (NTP stepping
    /// it, an operator, a dead battery): forward or back.
    pub fn jump_wall_clock(&mut self, rng: &mut StdRng) {
        self.wall_offset_s = rng.gen_range(-WALL_CLOCK_JUMP_MAX_SECONDS..=WALL_CLOCK_JUMP_MAX_SECONDS);
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn a_clock_runs_at_its_rate_from_its_origin() {
        let clock = MemberClock {
            origin_us: 500,
            drift_ppm: 10_000,
            wall_offset_s: 0,
        };
        assert_eq!(clock.local_us(0), 500);
        assert_eq!(clock.local_us(1_000_000), 500 + 1_010_000);
        let local = Duration::from_micros(1_010_000);
        assert_eq!(clock.virtual_for(local), Duration::from_secs(1));
    }

    #[test]
    fn a_slow_clock_still_moves_forward() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            let clock = MemberClock::random(&mut rng);
            assert!(clock.local_us(1) >= clock.local_us(0));
            assert!(clock.local_us(10_000_000) > clock.local_us(9_999_000));
        }
    }

    #[test]
    fn the_wall_clock_jumps_either_way_within_its_bound() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut clock = MemberClock::random(&mut rng);
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(WALL_CLOCK_START_UNIX_SECONDS);
        let bound = Duration::from_secs(WALL_CLOCK_JUMP_MAX_SECONDS as u64);
        let (mut earlier, mut later) = (false, false);
        for _ in 0..100 {
            clock.jump_wall_clock(&mut rng);
            let wall = clock.wall_clock(0);
            earlier |= wall < start;
            later |= wall > start;
            assert!(wall >= start - bound && wall <= start + bound);
        }
        assert!(earlier && later);
    }
}

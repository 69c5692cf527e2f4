//! Server-chosen ids, made as etcd makes them (idutil.Generator): the member id's
//! low 16 bits, then a 40-bit millisecond timestamp and an 8-bit counter that
//! count up together, with the sign bit cleared so ids are positive. Used for
//! lease ids when the client asks for id 0 (`EtcdServer.LeaseGrant`) and for the
//! ids of proposed requests, which must not repeat across members and restarts:
//! a member's proposal is answered by whichever member applies an entry whose
//! id it waits for.

use std::time::{SystemTime, UNIX_EPOCH};

const SUFFIX_BITS: u32 = 48;
const COUNTER_BITS: u32 = 8;
const TIMESTAMP_MASK: u64 = (1 << (SUFFIX_BITS - COUNTER_BITS)) - 1;
const SUFFIX_MASK: u64 = (1 << SUFFIX_BITS) - 1;

#[derive(Debug)]
pub struct IdGenerator {
    prefix: u64,
    suffix: u64,
}

impl IdGenerator {
    /// A generator for `member_id` started at wall-clock time `now`.
    pub fn new(member_id: u64, now: SystemTime) -> IdGenerator {
        let millis = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        IdGenerator::starting_at(member_id, millis)
    }

    fn starting_at(member_id: u64, millis: u64) -> IdGenerator {
        IdGenerator {
            prefix: (member_id & 0xffff) << SUFFIX_BITS,
            suffix: (millis & TIMESTAMP_MASK) << COUNTER_BITS,
        }
    }

    /// The next id that is not 0 and not `taken`.
    pub fn next(&mut self, taken: impl Fn(i64) -> bool) -> i64 {
        loop {
            self.suffix = (self.suffix + 1) & SUFFIX_MASK;
            let id = ((self.prefix | self.suffix) & (i64::MAX as u64)) as i64;
            if id != 0 && !taken(id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_member_and_count_up() {
        let mut ids = IdGenerator::starting_at(0x8e9e05c52164694d, 0x10);
        let first = ids.next(|_| false);
        assert_eq!(first, 0x694d_0000_0000_1001);
        assert_eq!(ids.next(|_| false), first + 1);
    }

    #[test]
    fn taken_ids_and_zero_are_skipped() {
        let mut ids = IdGenerator::starting_at(0, 0);
        assert_eq!(ids.next(|id| id == 1), 2);
        let mut wrapped = IdGenerator::starting_at(0, TIMESTAMP_MASK);
        wrapped.suffix = SUFFIX_MASK;
        assert_eq!(wrapped.next(|_| false), 1, "0 after the wrap is skipped");
    }

    #[test]
    fn ids_are_positive() {
        let mut ids = IdGenerator::starting_at(u64::MAX, TIMESTAMP_MASK);
        assert!(ids.next(|_| false) > 0);
    }
}

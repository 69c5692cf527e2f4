//! The simulated network between members: each message is lost, delayed,
//! duplicated or delivered as the run's faults and its seeded random numbers
//! say; messages overtake each other when their delays differ. A partition
//! cuts members off from each other in both directions until it heals.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

/// How unreliable the network is in a run.
#[derive(Debug, Clone, Copy)]
pub struct NetworkFaults {
    /// Chance that a message is lost.
    pub loss: f64,
    /// Chance that a delivered message is delivered twice. Never a forwarded
    /// proposal: raft does not deduplicate proposals, a proposal delivered
    /// twice is applied twice (in etcd too), and the real transport (one TCP
    /// stream per peer, what a broken stream held dropped, never resent)
    /// delivers each message at most once. Raft's other messages are
    /// idempotent, and duplicating them tests that.
    pub duplication: f64,
    /// Delays are drawn from this range (µs); different delays reorder.
    pub delay_min_us: u64,
    pub delay_max_us: u64,
}

impl NetworkFaults {
    pub const RELIABLE: NetworkFaults = NetworkFaults {
        loss: 0.0,
        duplication: 0.0,
        delay_min_us: 100,
        delay_max_us: 100,
    };
}

pub struct Network {
    pub faults: NetworkFaults,
    /// (from, to) member indexes that cannot reach each other.
    cut: BTreeSet<(usize, usize)>,
}

impl Network {
    pub fn new(faults: NetworkFaults) -> Network {
        Network {
            faults,
            cut: BTreeSet::new(),
        }
    }

    /// The delays after which a message from `from` to `to` arrives: none if
    /// it is lost, two if it is `duplicable` and duplicated.
    pub fn deliveries(&self, rng: &mut StdRng, from: usize, to: usize, duplicable: bool) -> Vec<Duration> {
        if !self.connected(from, to) || rng.gen_bool(self.faults.loss) {
            return Vec::new();
        }
        let copies = if duplicable && rng.gen_bool(self.faults.duplication) {
            2
        } else {
            1
        };
        (0..copies)
            .map(|_| Duration::from_micros(rng.gen_range(self.faults.delay_min_us..=self.faults.delay_max_us)))
            .collect()
    }

    /// Whether a message from `from` reaches `to` now (also checked again at
    /// delivery: a partition drops what was in flight across it).
    pub fn connected(&self, from: usize, to: usize) -> bool {
        !self.cut.contains(&(from, to))
    }

    /// Cuts `side` off from every other member of `members`.
    pub fn partition(&mut self, side: &[usize], members: usize) {
        for &inside in side {
            for outside in (0..members).filter(|other| !side.contains(other)) {
                self.cut.insert((inside, outside));
                self.cut.insert((outside, inside));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn a_partition_cuts_both_ways_until_it_heals() {
        let mut network = Network::new(NetworkFaults::RELIABLE);
        let mut rng = StdRng::seed_from_u64(1);
        network.partition(&[0], 3);
        assert!(network.deliveries(&mut rng, 0, 1, true).is_empty());
        assert!(network.deliveries(&mut rng, 2, 0, true).is_empty());
        assert_eq!(network.deliveries(&mut rng, 1, 2, true).len(), 1);
        network.heal();
        assert_eq!(network.deliveries(&mut rng, 0, 1, true).len(), 1);
    }

    #[test]
    fn loss_and_duplication_follow_their_chances() {
        let faults = NetworkFaults {
            loss: 0.5,
            duplication: 0.5,
            delay_min_us: 1,
            delay_max_us: 1000,
        };
        let network = Network::new(faults);
        let mut rng = StdRng::seed_from_u64(7);
        let counts: Vec<usize> = (0..1000)
            .map(|_| network.deliveries(&mut rng, 0, 1, true).len())
            .collect();
        let lost = counts.iter().filter(|&&n| n == 0).count();
        let doubled = counts.iter().filter(|&&n| n == 2).count();
        assert!((400..600).contains(&lost), "{lost} lost");
        assert!((150..350).contains(&doubled), "{doubled} duplicated");
    }
}

//! What the leader's heartbeats tell about each peer, for /metrics: the round
//! trip of a heartbeat and its response (`etcd_network_peer_round_trip_time_seconds`;
//! etcd times a prober's ping instead, which ringkv does not have), and
//! heartbeats sent later than twice the heartbeat interval after the previous
//! one to the same peer (`etcd_server_heartbeat_send_failures_total`: etcd's
//! timeout detector, a leader too busy, likely from a slow disk).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raft::eraftpb::{Message, MessageType};

use crate::metrics::{Histogram, PeerRoundTrip};

/// A heartbeat unanswered this long is taken as lost: the next one is timed
/// instead, so a lost heartbeat does not lengthen the next pairing.
const UNANSWERED_MAX: Duration = Duration::from_secs(5);

/// One peer's heartbeat times.
#[derive(Debug)]
struct PeerClock {
    /// The heartbeat being timed, until its response.
    timing: Option<Instant>,
    /// When the last heartbeat to this peer was sent.
    last_sent: Option<Instant>,
    round_trip: Histogram,
}

#[derive(Debug)]
pub(super) struct PeerTiming {
    heartbeat_interval: Duration,
    peers: BTreeMap<u64, PeerClock>,
    send_failures: u64,
}

impl PeerTiming {
    pub(super) fn new(heartbeat_interval: Duration) -> PeerTiming {
        PeerTiming {
            heartbeat_interval,
            peers: BTreeMap::new(),
            send_failures: 0,
        }
    }

    /// Raft's messages leave now.
    pub(super) fn sent(&mut self, now: Instant, messages: &[Message]) {
        for message in messages {
            if message.get_msg_type() != MessageType::MsgHeartbeat {
                continue;
            }
            let clock = self.peers.entry(message.to).or_insert_with(|| PeerClock {
                timing: None,
                last_sent: None,
                // etcd's buckets: 0.1 ms doubling to about 0.8 s.
                round_trip: Histogram::exponential(0.0001, 2.0, 14),
            });
            if clock
                .last_sent
                .is_some_and(|last| now.saturating_duration_since(last) > 2 * self.heartbeat_interval)
            {
                self.send_failures += 1;
            }
            clock.last_sent = Some(now);
            if clock
                .timing
                .is_none_or(|sent| now.saturating_duration_since(sent) > UNANSWERED_MAX)
            {
                clock.timing = Some(now);
            }
        }
    }

    /// A message from a peer arrived now.
    pub(super) fn received(&mut self, now: Instant, message: &Message) {
        if message.get_msg_type() != MessageType::MsgHeartbeatResponse {
            return;
        }
        let Some(clock) = self.peers.get_mut(&message.from) else {
            return;
        };
        if let Some(sent) = clock.timing.take() {
            clock.round_trip.observe(now.saturating_duration_since(sent));
        }
    }

    /// This member became leader or stopped being one: heartbeats start or
    /// stop, and the gap since the last one (as etcd's detector is reset)
    /// is no late heartbeat.
    pub(super) fn leadership_changed(&mut self) {
        for clock in self.peers.values_mut() {
            clock.last_sent = None;
            clock.timing = None;
        }
    }

    /// Only peers still in the membership are kept.
    pub(super) fn retain_peers(&mut self, is_member: impl Fn(u64) -> bool) {
        self.peers.retain(|&id, _| is_member(id));
    }

    pub(super) fn send_failures(&self) -> u64 {
        self.send_failures
    }

    /// The round trips measured, by peer.
    pub(super) fn round_trips(&self) -> Vec<PeerRoundTrip> {
        self.peers
            .iter()
            .filter(|(_, clock)| clock.round_trip.count() > 0)
            .map(|(&peer, clock)| PeerRoundTrip {
                peer,
                histogram: clock.round_trip.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: MessageType, from: u64, to: u64) -> Message {
        let mut message = Message::default();
        message.set_msg_type(kind);
        message.from = from;
        message.to = to;
        message
    }

    #[test]
    fn a_heartbeat_and_its_response_are_one_round_trip() {
        let start = Instant::now();
        let mut timing = PeerTiming::new(Duration::from_millis(100));
        timing.sent(start, &[message(MessageType::MsgHeartbeat, 1, 2)]);
        // A second heartbeat before the response does not restart the timing.
        timing.sent(
            start + Duration::from_millis(100),
            &[message(MessageType::MsgHeartbeat, 1, 2)],
        );
        timing.received(
            start + Duration::from_millis(3),
            &message(MessageType::MsgHeartbeatResponse, 2, 1),
        );
        timing.received(
            start + Duration::from_millis(4),
            &message(MessageType::MsgAppendResponse, 2, 1),
        );
        let trips = timing.round_trips();
        assert_eq!(trips.len(), 1);
        assert_eq!(trips[0].peer, 2);
        assert_eq!(trips[0].histogram.count(), 1);
        assert_eq!(trips[0].histogram.sum_seconds(), 0.003);
    }

    #[test]
    fn a_heartbeat_later_than_twice_the_interval_is_a_send_failure() {
        let start = Instant::now();
        let mut timing = PeerTiming::new(Duration::from_millis(100));
        let heartbeats = [
            message(MessageType::MsgHeartbeat, 1, 2),
            message(MessageType::MsgHeartbeat, 1, 3),
        ];
        timing.sent(start, &heartbeats);
        timing.sent(start + Duration::from_millis(200), &heartbeats);
        assert_eq!(timing.send_failures(), 0);
        timing.sent(start + Duration::from_millis(401), &heartbeats[..1]);
        assert_eq!(timing.send_failures(), 1);
        timing.leadership_changed();
        timing.sent(start + Duration::from_secs(10), &heartbeats);
        assert_eq!(timing.send_failures(), 1, "a new leadership starts afresh");
    }

    #[test]
    fn a_lost_heartbeat_is_not_paired_with_a_later_response() {
        let start = Instant::now();
        let mut timing = PeerTiming::new(Duration::from_millis(100));
        timing.sent(start, &[message(MessageType::MsgHeartbeat, 1, 2)]);
        let later = start + UNANSWERED_MAX + Duration::from_millis(1);
        timing.sent(later, &[message(MessageType::MsgHeartbeat, 1, 2)]);
        timing.received(
            later + Duration::from_millis(2),
            &message(MessageType::MsgHeartbeatResponse, 2, 1),
        );
        assert_eq!(timing.round_trips()[0].histogram.sum_seconds(), 0.002);
    }
}

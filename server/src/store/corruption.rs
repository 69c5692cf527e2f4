//! etcd's corruption checks (etcd 3.4's `etcdserver/corrupt.go`): a member
//! compares its HashKV with its peers' at the same revision. At start
//! (`--experimental-initial-corrupt-check`) a mismatch stops the member before
//! it serves; on the leader, every `--experimental-corrupt-check-time`
//! (`core/corrupt_check.rs`), a mismatch raises the CORRUPT alarm.
//!
//! Which answers are a mismatch is decided here, as pure functions of the
//! hashes and the peers' answers, case for case etcd's. Any other answer (a
//! peer unreachable, behind, compacted past the revision, or answering with
//! something that is no HashKV) is a warning and the check goes on.

use std::sync::Arc;
use std::time::Duration;

use ringkv_datadir::wal::Identity;
use ringkv_engine::mvcc::{KvHash, Mvcc, MvccError};

use super::membership::Membership;
use crate::peer::hash_kv;
use crate::peer::{PeerHash, PeerHashKv};

/// What one peer's answer means to the check at start (etcd's
/// `CheckInitialHashKV`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFinding {
    /// The same hash.
    Consistent,
    /// Another hash at the same compact revision: the data differ.
    Mismatch,
    /// Another hash at another compact revision: not comparable (a warning).
    DifferentCompaction,
    /// The peer compacted the revision: this member is behind (a warning).
    LocalBehind,
    /// The peer has not reached the revision (a warning).
    PeerBehind,
    /// No answer (a warning).
    Unanswered,
}

/// What `answer` (a peer's HashKV at this member's revision) means beside
/// this member's own `own`. etcd compares only hashes and compact revisions.
pub fn start_finding(own: KvHash, answer: &PeerHash) -> StartFinding {
    match answer {
        PeerHash::Hashed(peer) if peer.hash == own.hash => StartFinding::Consistent,
        PeerHash::Hashed(peer) if peer.compact_revision == own.compact_revision => StartFinding::Mismatch,
        PeerHash::Hashed(_) => StartFinding::DifferentCompaction,
        PeerHash::Compacted => StartFinding::LocalBehind,
        PeerHash::FutureRevision => StartFinding::PeerBehind,
        PeerHash::Failed(_) => StartFinding::Unanswered,
    }
}

/// A mismatch the leader's periodic check finds (etcd's `checkHashKV`); any
/// one raises the CORRUPT alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodicMismatch {
    /// The leader's own HashKV changed between its two hashes while its
    /// revision and compact revision stayed.
    OwnHashChanged { first: KvHash, second: KvHash },
    /// A peer hashed a revision past the leader's.
    PeerRevisionAhead { peer: u64, revision: i64 },
    /// A peer compacted past the leader.
    PeerCompactionAhead { peer: u64, compact_revision: i64 },
    /// A peer at the leader's first compact revision with another hash.
    HashDiffers { peer: u64, hash: u32 },
}

/// etcd's `checkHashKV` verdict: `first` is the leader's HashKV the peers
/// were asked at (its revision), `second` the leader's again once it applied
/// everything committed when the answers came. Peers that gave no HashKV
/// (unreachable, behind, compacted) are not checked.
pub fn periodic_mismatches(first: KvHash, second: KvHash, answers: &[PeerHashKv]) -> Vec<PeriodicMismatch> {
    let mut mismatches = Vec::new();
    let own_changed = second.hash != first.hash
        && second.hash_revision == first.hash_revision
        && second.compact_revision == first.compact_revision;
    if own_changed {
        mismatches.push(PeriodicMismatch::OwnHashChanged { first, second });
    }
    for answer in answers {
        let PeerHash::Hashed(peer) = &answer.answer else {
            continue;
        };
        if peer.hash_revision > second.hash_revision {
            mismatches.push(PeriodicMismatch::PeerRevisionAhead {
                peer: answer.id,
                revision: peer.hash_revision,
            });
        }
        if peer.compact_revision > second.compact_revision {
            mismatches.push(PeriodicMismatch::PeerCompactionAhead {
                peer: answer.id,
                compact_revision: peer.compact_revision,
            });
        }
        if peer.compact_revision == first.compact_revision && peer.hash != first.hash {
            mismatches.push(PeriodicMismatch::HashDiffers {
                peer: answer.id,
                hash: peer.hash,
            });
        }
    }
    mismatches
}

/// Peers that answered with a HashKV (etcd's "number-of-peers-checked").
pub fn peers_checked(answers: &[PeerHashKv]) -> usize {
    answers
        .iter()
        .filter(|answer| matches!(answer.answer, PeerHash::Hashed(_)))
        .count()
}

/// Why a member does not start.
#[derive(Debug, thiserror::Error)]
pub enum CorruptionError {
    /// etcd's words, with the member id as etcd prints it.
    #[error("{member:x} found data inconsistency with peers")]
    Inconsistent { member: u64 },
    #[error("{member:x} failed to fetch hash ({source})")]
    Hash { member: u64, source: MvccError },
}

/// etcd's `CheckInitialHashKV`, before the member serves: its HashKV as
/// opened, each peer asked for its own at that revision (each within
/// `timeout`, etcd's request timeout). A peer at the same compact revision
/// with another hash stops the start; any other answer is a warning.
pub async fn check_at_start(
    identity: Identity,
    mvcc: &Mvcc,
    membership: &Membership,
    dial: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<(), CorruptionError> {
    let member = identity.member_id;
    let local_member_id = format_args!("{member:x}").to_string();
    tracing::info!(%local_member_id, ?timeout, "starting initial corruption check");
    let own = mvcc
        .hash_kv(0)
        .map_err(|source| CorruptionError::Hash { member, source })?;
    let peers = membership.peers_of(member);
    let answers = hash_kv::ask_all(identity.cluster_id, member, peers, dial, own.hash_revision, timeout).await;
    let mut mismatched = 0;
    for answer in &answers {
        let finding = start_finding(own, &answer.answer);
        warn_start_finding(&local_member_id, own, answer, finding);
        if finding == StartFinding::Mismatch {
            mismatched += 1;
        }
    }
    if mismatched > 0 {
        return Err(CorruptionError::Inconsistent { member });
    }
    tracing::info!(%local_member_id, "initial corruption checking passed; no corruption");
    Ok(())
}

/// etcd's warning for a finding at start, with its fields.
fn warn_start_finding(local_member_id: &str, own: KvHash, answer: &PeerHashKv, finding: StartFinding) {
    let remote_peer_id = format_args!("{:x}", answer.id).to_string();
    let endpoints = &answer.urls;
    let message = match finding {
        StartFinding::Consistent => return,
        StartFinding::Mismatch => "found different hash values from remote peer",
        StartFinding::DifferentCompaction => "found different compact revision values from remote peer",
        StartFinding::LocalBehind => "cannot fetch hash from remote peer; local member is behind",
        StartFinding::PeerBehind => "cannot fetch hash from slow remote peer",
        StartFinding::Unanswered => "failed hash kv request",
    };
    match &answer.answer {
        PeerHash::Hashed(peer) => tracing::warn!(
            local_member_id,
            local_member_revision = own.hash_revision,
            local_member_compact_revision = own.compact_revision,
            local_member_hash = own.hash,
            %remote_peer_id,
            ?endpoints,
            remote_peer_revision = peer.hash_revision,
            remote_peer_compact_revision = peer.compact_revision,
            remote_peer_hash = peer.hash,
            "{message}"
        ),
        PeerHash::Failed(error) => tracing::warn!(
            local_member_id,
            requested_revision = own.hash_revision,
            %remote_peer_id,
            ?endpoints,
            %error,
            "{message}"
        ),
        PeerHash::Compacted | PeerHash::FutureRevision => tracing::warn!(
            local_member_id,
            local_member_revision = own.hash_revision,
            local_member_compact_revision = own.compact_revision,
            local_member_hash = own.hash,
            %remote_peer_id,
            ?endpoints,
            "{message}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::hash_kv::AskError;

    fn hash(hash: u32, hash_revision: i64, compact_revision: i64) -> KvHash {
        KvHash {
            hash,
            compact_revision,
            hash_revision,
        }
    }

    fn peer(id: u64, answer: PeerHash) -> PeerHashKv {
        PeerHashKv {
            id,
            urls: vec![format!("http://10.0.0.{id}:2380")],
            answer,
        }
    }

    fn failed() -> PeerHash {
        PeerHash::Failed(AskError::Timeout(Duration::from_secs(7)))
    }

    #[test]
    fn at_start_only_another_hash_at_the_same_compaction_is_a_mismatch() {
        let own = hash(10, 8, 3);
        let cases = [
            (PeerHash::Hashed(hash(10, 8, 3)), StartFinding::Consistent),
            (PeerHash::Hashed(hash(11, 8, 3)), StartFinding::Mismatch),
            // etcd reads no revision at start: a peer's answer is at the one asked.
            (PeerHash::Hashed(hash(11, 9, 3)), StartFinding::Mismatch),
            (PeerHash::Hashed(hash(11, 8, 5)), StartFinding::DifferentCompaction),
            (PeerHash::Hashed(hash(11, 8, -1)), StartFinding::DifferentCompaction),
            // The same hash is consistent whatever the peer's compaction.
            (PeerHash::Hashed(hash(10, 8, 5)), StartFinding::Consistent),
            (PeerHash::Compacted, StartFinding::LocalBehind),
            (PeerHash::FutureRevision, StartFinding::PeerBehind),
            (failed(), StartFinding::Unanswered),
        ];
        for (answer, finding) in cases {
            assert_eq!(start_finding(own, &answer), finding, "{answer:?}");
        }
    }

    #[test]
    fn periodically_a_peer_at_the_first_compaction_with_another_hash_is_a_mismatch() {
        let first = hash(10, 8, 3);
        let answers = [
            peer(2, PeerHash::Hashed(hash(10, 8, 3))),
            peer(3, PeerHash::Hashed(hash(99, 8, 3))),
        ];
        assert_eq!(
            periodic_mismatches(first, first, &answers),
            [PeriodicMismatch::HashDiffers { peer: 3, hash: 99 }]
        );
        assert!(periodic_mismatches(first, first, &answers[..1]).is_empty());
    }

    #[test]
    fn periodically_peers_without_a_hash_are_not_checked() {
        let first = hash(10, 8, 3);
        let answers = [
            peer(2, PeerHash::Compacted),
            peer(3, PeerHash::FutureRevision),
            peer(4, failed()),
        ];
        assert!(periodic_mismatches(first, first, &answers).is_empty());
        assert_eq!(peers_checked(&answers), 0);
    }

    #[test]
    fn periodically_a_peer_compacted_elsewhere_is_compared_only_past_the_leader() {
        let first = hash(10, 8, 3);
        // The leader applied a compaction to 5 between its hashes (its second
        // hash is at revision 9): a peer at 5 is neither behind nor compared.
        let second = hash(20, 9, 5);
        let at_five = [peer(2, PeerHash::Hashed(hash(77, 8, 5)))];
        assert!(periodic_mismatches(first, second, &at_five).is_empty());
        // One still at an older compaction is not compared either.
        let older = [peer(2, PeerHash::Hashed(hash(77, 8, 1)))];
        assert!(periodic_mismatches(first, second, &older).is_empty());
        // A compaction the leader has not applied even now is.
        let ahead = [peer(2, PeerHash::Hashed(hash(77, 8, 6)))];
        assert_eq!(
            periodic_mismatches(first, second, &ahead),
            [PeriodicMismatch::PeerCompactionAhead {
                peer: 2,
                compact_revision: 6
            }]
        );
    }

    #[test]
    fn periodically_a_peer_past_the_leaders_revision_is_a_mismatch() {
        let first = hash(10, 8, 3);
        let second = hash(12, 9, 3);
        let answers = [peer(2, PeerHash::Hashed(hash(10, 10, 3)))];
        assert_eq!(
            periodic_mismatches(first, second, &answers),
            [PeriodicMismatch::PeerRevisionAhead { peer: 2, revision: 10 }]
        );
        let at_second = [peer(2, PeerHash::Hashed(hash(10, 9, 3)))];
        assert!(periodic_mismatches(first, second, &at_second).is_empty());
    }

    #[test]
    fn periodically_the_leaders_own_hash_changing_under_one_revision_is_a_mismatch() {
        let first = hash(10, 8, 3);
        let changed = hash(11, 8, 3);
        assert_eq!(
            periodic_mismatches(first, changed, &[]),
            [PeriodicMismatch::OwnHashChanged { first, second: changed }]
        );
        // A write or a compaction between the hashes changes the hash honestly.
        assert!(periodic_mismatches(first, hash(11, 9, 3), &[]).is_empty());
        assert!(periodic_mismatches(first, hash(11, 8, 4), &[]).is_empty());
    }

    #[test]
    fn periodically_every_mismatch_of_one_peer_is_reported() {
        let first = hash(10, 8, 3);
        let answers = [peer(2, PeerHash::Hashed(hash(11, 9, 4)))];
        assert_eq!(
            periodic_mismatches(first, first, &answers),
            [
                PeriodicMismatch::PeerRevisionAhead { peer: 2, revision: 9 },
                PeriodicMismatch::PeerCompactionAhead {
                    peer: 2,
                    compact_revision: 4
                },
            ]
        );
        assert_eq!(peers_checked(&answers), 1);
    }
}

//! What the store core is configured with: identity, limits and timeouts.

use std::time::Duration;

use crate::config::auto_compaction::AutoCompactionPolicy;

/// Identity and limits the store core answers with.
pub struct StoreSettings {
    pub member_id: u64,
    pub cluster_id: u64,
    pub max_request_bytes: usize,
    /// The largest response message a read builds (see `stepped_read`).
    pub response_bytes_max: usize,
    pub backend_batch_limit: usize,
    pub backend_batch_interval: Duration,
    /// etcd's minimum lease TTL: ⌈1.5 × election timeout⌉ seconds.
    pub min_lease_ttl_seconds: i64,
    /// How much longer than their TTL leases live after this member becomes leader.
    pub election_timeout: Duration,
    /// This member as MemberList reports it.
    pub member: MemberInfo,
    /// `--quota-backend-bytes`; None: no quota.
    pub quota_backend_bytes: Option<u64>,
    pub auto_compaction: AutoCompactionPolicy,
    /// A proposal not applied by then is answered with etcd's timeout error.
    pub request_timeout: Duration,
    /// Applied entries kept in the raft log for lagging followers (`--snapshot-count`).
    pub catch_up_entries: u64,
    /// Raft ticks before something raft may have dropped silently is asked
    /// again: a ReadIndex (the leader had not committed in its term yet, or the
    /// message was lost) and the publishing of this member's attributes.
    pub retry_ticks: u64,
    /// etcd's `HealthInterval` (`HEALTH_INTERVAL`): a peer counts as active
    /// for the strict reconfiguration checks once connected this long.
    pub health_interval: Duration,
    /// A member joining a running cluster: the members (id, peer URLs) it
    /// joined, talked to until it has caught up (see `membership_changed`).
    pub join_peers: Vec<(u64, Vec<String>)>,
    /// How often the leader runs the corruption check
    /// (`--experimental-corrupt-check-time`); None: never.
    pub corrupt_check_interval: Option<Duration>,
    /// How long a simple token lives past its last use (`--auth-token-ttl`).
    pub simple_token_ttl: Duration,
}

/// The parts of a member that its configuration gives.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// etcd's request timeout: 5 s plus two election timeouts.
pub fn request_timeout(election_timeout: Duration) -> Duration {
    Duration::from_secs(5) + 2 * election_timeout
}

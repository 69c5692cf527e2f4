//! Member and cluster ids, derived exactly as etcd derives them, so that
//! `etcdctl member list` and response headers look the same for the same flags.

use sha1::{Digest, Sha1};

/// etcd's `computeMemberId`: the first 8 bytes (big endian) of
/// sha1(sorted peer URLs concatenated ++ cluster token).
pub fn member_id(peer_urls: &[String], cluster_token: &str) -> u64 {
    assert!(!peer_urls.is_empty(), "a member has at least one peer URL");
    let mut sorted: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut hasher = Sha1::new();
    for url in sorted {
        hasher.update(url.as_bytes());
    }
    hasher.update(cluster_token.as_bytes());
    first_8_bytes(&hasher.finalize())
}

/// etcd's `NewMember` for a member added at run time (MemberAdd): the first 8
/// bytes (big endian) of sha1(sorted peer URLs concatenated ++ the Unix time in
/// whole seconds, in decimal). No cluster token: etcd passes an empty one.
pub fn added_member_id(peer_urls: &[String], unix_seconds: u64) -> u64 {
    member_id(peer_urls, &unix_seconds.to_string())
}

/// etcd's `RaftCluster.genID`: the first 8 bytes (big endian) of sha1 over the
/// sorted member ids, each as 8 big-endian bytes.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    assert!(!member_ids.is_empty(), "a cluster has at least one member");
    let mut sorted = member_ids.to_vec();
    sorted.sort_unstable();
    let mut hasher = Sha1::new();
    for id in sorted {
        hasher.update(id.to_be_bytes());
    }
    first_8_bytes(&hasher.finalize())
}

fn first_8_bytes(digest: &[u8]) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    // etcd started with default flags reports member 8e9e05c52164694d in
    // cluster cdf818194e3a8c32 (peer URL http://localhost:2380, token etcd-cluster).
    #[test]
    fn default_flags_give_etcds_default_ids() {
        let member = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(member, 0x8e9e05c52164694d);
        assert_eq!(cluster_id(&[member]), 0xcdf818194e3a8c32);
    }

    #[test]
    fn peer_url_order_does_not_matter() {
        let a = ["http://a:2380".to_string(), "http://b:2380".to_string()];
        let b = ["http://b:2380".to_string(), "http://a:2380".to_string()];
        assert_eq!(member_id(&a, "t"), member_id(&b, "t"));
        assert_ne!(member_id(&a, "t"), member_id(&a, "u"));
    }
}

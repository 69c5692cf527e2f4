//! Joining a running cluster (`--initial-cluster-state existing`), after an
//! operator's MemberAdd: the new member asks the other members of
//! `--initial-cluster` for the cluster's membership over their peer URLs (a
//! membership query, see `peer::query`), checks that `--initial-cluster` lists
//! exactly that cluster (etcd's `ValidateClusterAndAssignIDs`), and takes its
//! own id and the cluster id from it: etcd's MemberAdd made the id from the
//! time, so no flag can derive it.

use std::sync::Arc;
use std::time::Duration;

use ringkv_datadir::cluster::InitialMember;
use ringkv_datadir::wal::Identity;

use super::membership::Membership;
use crate::peer;

/// How long one peer URL may take to answer a membership query.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// What a joining member starts with.
#[derive(Debug)]
pub struct Joined {
    pub identity: Identity,
    /// The cluster's membership at raft index 0: the joiner replays the log from it.
    pub initial_membership: Membership,
    /// The members now, but this one: whom to talk to until caught up.
    pub peers: Vec<(u64, Vec<String>)>,
}

/// Asks the other members of `cluster`, in turn, for the membership, and
/// finds this member (advertising `peer_urls`) in it.
pub fn discover(
    peer_urls: &[String],
    cluster: &[InitialMember],
    dial: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Joined, String> {
    let mut failures = Vec::new();
    let others = cluster.iter().filter(|member| !same_urls(&member.peer_urls, peer_urls));
    for url in others.flat_map(|member| member.peer_urls.iter()) {
        match peer::query::ask(url, dial, QUERY_TIMEOUT) {
            // A member that is still starting answers with no members.
            Ok(answer) => match Membership::from_pb(answer) {
                Ok(current) => return joined(&current, peer_urls, cluster),
                Err(error) => failures.push(format!("{url} answered: {error}")),
            },
            Err(error) => failures.push(format!("{url}: {error}")),
        }
    }
    Err(format!(
        "cannot fetch cluster info from peer urls: could not retrieve cluster information from the given URLs ({})",
        failures.join("; ")
    ))
}

/// For a joiner's later starts (its id is in its WAL): the members (id, peer
/// URLs) the others report now, but this one, so that a joiner that stopped
/// before its replay reached the current leader can still reach it. Best
/// effort: empty if no one answers.
pub fn current_peers(
    peer_urls: &[String],
    cluster: &[InitialMember],
    dial: Option<&Arc<rustls::ClientConfig>>,
) -> Vec<(u64, Vec<String>)> {
    let others = cluster.iter().filter(|member| !same_urls(&member.peer_urls, peer_urls));
    for url in others.flat_map(|member| member.peer_urls.iter()) {
        let Ok(answer) = peer::query::ask(url, dial, QUERY_TIMEOUT) else {
            continue;
        };
        if let Ok(current) = Membership::from_pb(answer) {
            let me = current.member_with_peer_urls(peer_urls).map_or(0, |member| member.id);
            return current.peers_of(me);
        }
    }
    Vec::new()
}

/// This member's place in the cluster `current`, which `cluster`
/// (`--initial-cluster`) must list exactly, by peer URLs.
pub(crate) fn joined(current: &Membership, peer_urls: &[String], cluster: &[InitialMember]) -> Result<Joined, String> {
    let invalid = |reason: String| format!("error validating peerURLs {}: {reason}", describe(current));
    if current.members().count() != cluster.len() {
        return Err(invalid("member count is unequal".to_string()));
    }
    for member in cluster {
        if current.member_with_peer_urls(&member.peer_urls).is_none() {
            return Err(invalid(format!(
                "unmatched member while checking PeerURLs ({}={})",
                member.name,
                member.peer_urls.join(",")
            )));
        }
    }
    let me = current
        .member_with_peer_urls(peer_urls)
        .expect("--initial-cluster holds this member (config checks) and every one matched");
    // A member that published its name has started once: its data directory
    // was lost, and it cannot join again under the same id.
    if !me.name.is_empty() {
        return Err(format!(
            "member {:x} has already been bootstrapped (remove it and add it again to start it afresh)",
            me.id
        ));
    }
    Ok(Joined {
        identity: Identity {
            member_id: me.id,
            cluster_id: current.cluster_id(),
        },
        initial_membership: Membership::joining(current),
        peers: current.peers_of(me.id),
    })
}

fn same_urls(a: &[String], b: &[String]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

fn describe(membership: &Membership) -> String {
    let members: Vec<String> = membership
        .members()
        .map(|member| format!("{:x}={}", member.id, member.peer_urls.join(",")))
        .collect();
    format!("cluster {:x} [{}]", membership.cluster_id(), members.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::membership::MemberChange;
    use ringkv_proto::ringkvpb;

    fn initial(names_ports: &[(&str, u16)]) -> Vec<InitialMember> {
        names_ports
            .iter()
            .map(|(name, port)| InitialMember {
                name: name.to_string(),
                peer_urls: vec![format!("http://127.0.0.1:{port}")],
            })
            .collect()
    }

    fn with_added(port: u16) -> (Membership, u64) {
        let mut cluster = Membership::initial(&initial(&[("a", 1), ("b", 2)]), "t");
        let added = ringkvpb::Member {
            id: 77,
            peer_urls: vec![format!("http://127.0.0.1:{port}")],
            is_learner: true,
            ..Default::default()
        };
        cluster.apply(&MemberChange::Add(added));
        (cluster, 77)
    }

    #[test]
    fn a_joiner_takes_its_added_id_and_starts_from_the_first_membership() {
        let (current, id) = with_added(3);
        let flags = initial(&[("a", 1), ("b", 2), ("c", 3)]);
        let joined = joined(&current, &flags[2].peer_urls, &flags).unwrap();
        assert_eq!(joined.identity.member_id, id);
        assert_eq!(joined.identity.cluster_id, current.cluster_id());
        assert!(!joined.initial_membership.contains(id), "it replays its own addition");
        assert_eq!(joined.initial_membership.voter_ids(), current.voter_ids());
        assert_eq!(joined.peers.len(), 2);
    }

    #[test]
    fn initial_cluster_must_list_the_cluster_exactly() {
        let (current, _) = with_added(3);
        let short = initial(&[("a", 1), ("c", 3)]);
        let error = joined(&current, &short[1].peer_urls, &short).unwrap_err();
        assert!(error.ends_with("member count is unequal"), "{error}");
        let wrong = initial(&[("a", 1), ("b", 9), ("c", 3)]);
        let error = joined(&current, &wrong[2].peer_urls, &wrong).unwrap_err();
        assert!(
            error.contains("unmatched member while checking PeerURLs (b="),
            "{error}"
        );
    }
}

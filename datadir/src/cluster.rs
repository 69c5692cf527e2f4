//! The cluster a new data directory is made for: `--initial-cluster` as etcd
//! reads it (`ringkv` and `ringkvutl snapshot restore` take the same flags),
//! and the membership a new member's page store starts with.

use std::collections::BTreeMap;

use ringkv_proto::ringkvpb;

use crate::ids;

/// A URL flag's value ringkv cannot use.
#[derive(Debug, thiserror::Error)]
#[error("invalid URL {url:?} in --{flag}: {reason}")]
pub struct BadUrl {
    pub flag: &'static str,
    pub url: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InitialClusterError {
    #[error(transparent)]
    BadUrl(#[from] BadUrl),
    #[error("--initial-cluster: {pair:?} is not name=URL")]
    NotNameUrl { pair: String },
    #[error("--initial-cluster: no members")]
    NoMembers,
    #[error("--initial-cluster: no member named {name:?} (set --name to this member's name in --initial-cluster)")]
    NotListed { name: String },
    #[error("--initial-cluster: {name}={listed} does not match --initial-advertise-peer-urls={advertised}")]
    UrlsDiffer {
        name: String,
        listed: String,
        advertised: String,
    },
}

/// One member of `--initial-cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    pub peer_urls: Vec<String>,
}

/// A comma-separated list of URLs, as etcd's flags take them.
pub fn split_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_string)
        .collect()
}

/// `text`, the value of `--flag`, as an `http://host:port` or `https://host:port`
/// URL (the scheme says whether the port speaks TLS).
pub fn parse_url(flag: &'static str, text: &str) -> Result<url::Url, BadUrl> {
    let bad = |reason: &str| BadUrl {
        flag,
        url: text.to_string(),
        reason: reason.to_string(),
    };
    let url = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
    match url.scheme() {
        "http" | "https" => {}
        _ => return Err(bad("scheme must be http or https")),
    }
    if url.host_str().is_none() || url.port().is_none() {
        return Err(bad("expected http://host:port or https://host:port"));
    }
    Ok(url)
}

/// `--initial-cluster` for member `name` advertising `peer_urls` (this member
/// alone when the flag is absent), checked to hold this member as etcd checks.
pub fn initial_cluster(
    name: &str,
    peer_urls: &[String],
    text: Option<&str>,
) -> Result<Vec<InitialMember>, InitialClusterError> {
    let cluster = match text {
        Some(text) => parse_initial_cluster(text)?,
        None => vec![InitialMember {
            name: name.to_string(),
            peer_urls: peer_urls.to_vec(),
        }],
    };
    check_self_in_cluster(name, peer_urls, &cluster)?;
    Ok(cluster)
}

/// `name=url,name=url,...`; a name that repeats gathers its URLs in one member.
fn parse_initial_cluster(text: &str) -> Result<Vec<InitialMember>, InitialClusterError> {
    let mut members: Vec<InitialMember> = Vec::new();
    for pair in split_urls(text) {
        let (name, url) = pair
            .split_once('=')
            .ok_or_else(|| InitialClusterError::NotNameUrl { pair: pair.clone() })?;
        parse_url("initial-cluster", url)?;
        match members.iter_mut().find(|member| member.name == name) {
            Some(member) => member.peer_urls.push(url.to_string()),
            None => members.push(InitialMember {
                name: name.to_string(),
                peer_urls: vec![url.to_string()],
            }),
        }
    }
    if members.is_empty() {
        return Err(InitialClusterError::NoMembers);
    }
    Ok(members)
}

/// This member must be in the initial cluster with exactly its advertised peer
/// URLs, as etcd checks: otherwise the ids every member derives would disagree.
fn check_self_in_cluster(
    name: &str,
    peer_urls: &[String],
    cluster: &[InitialMember],
) -> Result<(), InitialClusterError> {
    let Some(member) = cluster.iter().find(|member| member.name == name) else {
        return Err(InitialClusterError::NotListed { name: name.to_string() });
    };
    let mut listed = member.peer_urls.clone();
    listed.sort_unstable();
    let mut advertised = peer_urls.to_vec();
    advertised.sort_unstable();
    if listed != advertised {
        return Err(InitialClusterError::UrlsDiffer {
            name: name.to_string(),
            listed: member.peer_urls.join(","),
            advertised: peer_urls.join(","),
        });
    }
    Ok(())
}

/// The membership of a new cluster of `cluster`'s members (every one a voter),
/// ids derived as etcd derives them, as the page store keeps it. Client URLs
/// are unknown until each member publishes them.
pub fn initial_membership(cluster: &[InitialMember], cluster_token: &str) -> ringkvpb::Membership {
    assert!(!cluster.is_empty(), "a cluster has a member");
    let members: BTreeMap<u64, ringkvpb::Member> = cluster
        .iter()
        .map(|member| {
            let id = ids::member_id(&member.peer_urls, cluster_token);
            let member = ringkvpb::Member {
                id,
                name: member.name.clone(),
                peer_urls: member.peer_urls.clone(),
                client_urls: Vec::new(),
                is_learner: false,
            };
            (id, member)
        })
        .collect();
    assert_eq!(members.len(), cluster.len(), "member ids are distinct");
    let member_ids: Vec<u64> = members.keys().copied().collect();
    let members: Vec<ringkvpb::Member> = members.into_values().collect();
    ringkvpb::Membership {
        cluster_id: ids::cluster_id(&member_ids),
        initial_members: members.clone(),
        members,
        removed_ids: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &str) -> Vec<String> {
        split_urls(list)
    }

    #[test]
    fn without_the_flag_the_member_is_alone_with_etcds_default_ids() {
        let peer_urls = urls("http://localhost:2380");
        let cluster = initial_cluster("default", &peer_urls, None).unwrap();
        let membership = initial_membership(&cluster, "etcd-cluster");
        assert_eq!(membership.cluster_id, 0xcdf818194e3a8c32);
        assert_eq!(membership.members.len(), 1);
        assert_eq!(membership.members[0].id, 0x8e9e05c52164694d);
        assert_eq!(membership.initial_members, membership.members);
    }

    #[test]
    fn every_member_is_a_voter_in_id_order_and_the_first_membership() {
        let text = "c=http://10.0.0.3:2380,a=http://10.0.0.1:2380,b=http://10.0.0.2:2380,a=http://10.0.0.9:2380";
        let cluster = initial_cluster("b", &urls("http://10.0.0.2:2380"), Some(text)).unwrap();
        let names: Vec<&str> = cluster.iter().map(|member| member.name.as_str()).collect();
        assert_eq!(
            names,
            ["c", "a", "b"],
            "in flag order; a name that repeats is one member"
        );
        assert_eq!(cluster[1].peer_urls, urls("http://10.0.0.1:2380,http://10.0.0.9:2380"));
        let membership = initial_membership(&cluster, "t");
        let member_ids: Vec<u64> = membership.members.iter().map(|member| member.id).collect();
        let mut sorted = member_ids.clone();
        sorted.sort_unstable();
        assert_eq!(member_ids, sorted);
        assert!(membership.members.iter().all(|member| !member.is_learner));
        assert_eq!(membership.cluster_id, ids::cluster_id(&member_ids));
        assert_eq!(membership.initial_members, membership.members);
    }

    #[test]
    fn a_cluster_without_this_member_as_advertised_is_refused_as_etcd_refuses_it() {
        let peer_urls = urls("http://localhost:2380");
        let refused = |text: &str| {
            initial_cluster("default", &peer_urls, Some(text))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(refused("nope"), r#"--initial-cluster: "nope" is not name=URL"#);
        assert_eq!(refused(" , "), "--initial-cluster: no members");
        assert_eq!(
            refused("other=http://localhost:2380"),
            r#"--initial-cluster: no member named "default" (set --name to this member's name in --initial-cluster)"#
        );
        assert_eq!(
            refused("default=http://localhost:2381"),
            "--initial-cluster: default=http://localhost:2381 does not match \
             --initial-advertise-peer-urls=http://localhost:2380"
        );
        assert_eq!(
            refused("default=unix://x:1"),
            r#"invalid URL "unix://x:1" in --initial-cluster: scheme must be http or https"#
        );
    }
}

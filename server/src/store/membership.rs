//! The cluster's members as MemberList reports them: ids, names, peer and client
//! URLs. Changed only by applying raft entries (a member publishing its
//! attributes), and stored in the page store with the data (`mmembership`, a
//! prost-encoded `ringkvpb.Membership`), so every member answers the same.

use std::collections::BTreeMap;

use prost::Message;
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::ringkvpb;

use crate::config::InitialMember;
use crate::ids;

#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    cluster_id: u64,
    members: BTreeMap<u64, ringkvpb::Member>,
}

impl Membership {
    /// The members of `--initial-cluster`, ids derived as etcd derives them.
    /// Client URLs are unknown until each member publishes them.
    pub fn initial(cluster: &[InitialMember], cluster_token: &str) -> Membership {
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
        let ids: Vec<u64> = members.keys().copied().collect();
        Membership {
            cluster_id: ids::cluster_id(&ids),
            members,
        }
    }

    /// A one-member cluster, for a member whose flags no longer name it (its id
    /// comes from its WAL).
    pub fn single(member: ringkvpb::Member, cluster_id: u64) -> Membership {
        Membership {
            cluster_id,
            members: BTreeMap::from([(member.id, member)]),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Membership, String> {
        let stored = ringkvpb::Membership::decode(bytes).map_err(|error| error.to_string())?;
        let members: BTreeMap<u64, ringkvpb::Member> =
            stored.members.into_iter().map(|member| (member.id, member)).collect();
        if members.is_empty() {
            return Err("no members".to_string());
        }
        Ok(Membership {
            cluster_id: stored.cluster_id,
            members,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        ringkvpb::Membership {
            cluster_id: self.cluster_id,
            members: self.members.values().cloned().collect(),
        }
        .encode_to_vec()
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    pub fn contains(&self, id: u64) -> bool {
        self.members.contains_key(&id)
    }

    pub fn voter_ids(&self) -> Vec<u64> {
        self.members.values().filter(|m| !m.is_learner).map(|m| m.id).collect()
    }

    pub fn member(&self, id: u64) -> Option<&ringkvpb::Member> {
        self.members.get(&id)
    }

    /// Every member but `me`, with its peer URLs: whom the transport talks to.
    pub fn peers_of(&self, me: u64) -> Vec<(u64, Vec<String>)> {
        self.members
            .values()
            .filter(|member| member.id != me)
            .map(|member| (member.id, member.peer_urls.clone()))
            .collect()
    }

    /// Applies a published name and client URLs; false if the member is unknown
    /// (removed meanwhile) or nothing changed.
    pub fn set_attributes(&mut self, attributes: &ringkvpb::MemberAttributes) -> bool {
        let Some(member) = self.members.get_mut(&attributes.member_id) else {
            return false;
        };
        if member.name == attributes.name && member.client_urls == attributes.client_urls {
            return false;
        }
        member.name.clone_from(&attributes.name);
        member.client_urls.clone_from(&attributes.client_urls);
        true
    }

    /// MemberList's members, in id order.
    pub fn to_pb(&self) -> Vec<pb::Member> {
        self.members
            .values()
            .map(|member| pb::Member {
                id: member.id,
                name: member.name.clone(),
                peer_ur_ls: member.peer_urls.clone(),
                client_ur_ls: member.client_urls.clone(),
                is_learner: member.is_learner,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Vec<InitialMember> {
        ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, name)| InitialMember {
                name: name.to_string(),
                peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + i)],
            })
            .collect()
    }

    #[test]
    fn initial_membership_has_etcds_ids_and_round_trips() {
        let membership = Membership::initial(&three(), "etcd-cluster");
        let ids = membership.voter_ids();
        assert_eq!(ids.len(), 3);
        assert_eq!(membership.cluster_id(), ids::cluster_id(&ids));
        let a = ids::member_id(&["http://127.0.0.1:2380".to_string()], "etcd-cluster");
        assert_eq!(membership.member(a).unwrap().name, "a");
        assert_eq!(Membership::decode(&membership.encode()).unwrap(), membership);
        assert_eq!(membership.peers_of(a).len(), 2);
    }

    #[test]
    fn published_attributes_show_in_member_list() {
        let mut membership = Membership::initial(&three(), "t");
        let id = membership.voter_ids()[0];
        let attributes = ringkvpb::MemberAttributes {
            member_id: id,
            name: membership.member(id).unwrap().name.clone(),
            client_urls: vec!["http://127.0.0.1:2379".to_string()],
        };
        assert!(membership.set_attributes(&attributes));
        assert!(
            !membership.set_attributes(&attributes),
            "nothing changed the second time"
        );
        let listed = membership.to_pb();
        assert_eq!(
            listed.iter().find(|m| m.id == id).unwrap().client_ur_ls,
            attributes.client_urls
        );
        let unknown = ringkvpb::MemberAttributes {
            member_id: 1,
            ..attributes
        };
        assert!(!membership.set_attributes(&unknown));
    }
}

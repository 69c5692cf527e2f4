//! The cluster's members as MemberList reports them: ids, names, peer and client
//! URLs, learner flags. Changed only by applying raft entries (a member
//! publishing its attributes, membership changes), and stored in the page store
//! with the data (`mmembership`, a prost-encoded `ringkvpb.Membership`), so every
//! member answers the same.
//!
//! Membership changes are checked here when applied, against the membership as
//! applied so far, with etcd's rules (`ValidateConfigurationChange`): every member
//! applies the same entries to the same membership, so all reach the same verdict.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::ringkvpb;

use ringkv_datadir::cluster::{self, InitialMember};

use crate::etcd_error::EtcdError;

/// Learners a cluster may have at once (etcd's `maxLearners`).
pub const LEARNERS_MAX: usize = 1;

#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    cluster_id: u64,
    members: BTreeMap<u64, ringkvpb::Member>,
    /// The members at raft index 0; see `ringkvpb.Membership.initial_members`.
    initial_members: Vec<ringkvpb::Member>,
    /// Removed ids: never members again.
    removed: BTreeSet<u64>,
}

/// One membership change, as proposed and applied.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberChange {
    /// A new member (voter or learner, by `is_learner`).
    Add(ringkvpb::Member),
    /// A learner becomes a voter.
    Promote(u64),
    Remove(u64),
    /// New peer URLs for a member.
    Update {
        id: u64,
        peer_urls: Vec<String>,
    },
}

impl Membership {
    /// The members of `--initial-cluster`, ids derived as etcd derives them
    /// (`cluster::initial_membership`, what a restore writes too).
    /// Client URLs are unknown until each member publishes them.
    pub fn initial(cluster: &[InitialMember], cluster_token: &str) -> Membership {
        let initial = cluster::initial_membership(cluster, cluster_token);
        let members = initial.members.into_iter().map(|member| (member.id, member)).collect();
        Membership::starting_with(initial.cluster_id, members)
    }

    /// A one-member cluster, for a member whose flags no longer name it (its id
    /// comes from its WAL).
    pub fn single(member: ringkvpb::Member, cluster_id: u64) -> Membership {
        Membership::starting_with(cluster_id, BTreeMap::from([(member.id, member)]))
    }

    fn starting_with(cluster_id: u64, members: BTreeMap<u64, ringkvpb::Member>) -> Membership {
        Membership {
            cluster_id,
            initial_members: members.values().cloned().collect(),
            members,
            removed: BTreeSet::new(),
        }
    }

    /// The membership a member joining the cluster `current` (as a peer
    /// answered a membership query) starts from: the cluster's membership at
    /// raft index 0, from which it replays the whole log.
    pub fn joining(current: &Membership) -> Membership {
        let members = current
            .initial_members
            .iter()
            .map(|member| (member.id, member.clone()))
            .collect();
        Membership::starting_with(current.cluster_id, members)
    }

    pub fn decode(bytes: &[u8]) -> Result<Membership, String> {
        let stored = ringkvpb::Membership::decode(bytes).map_err(|error| error.to_string())?;
        Membership::from_pb(stored)
    }

    pub fn from_pb(stored: ringkvpb::Membership) -> Result<Membership, String> {
        let members: BTreeMap<u64, ringkvpb::Member> =
            stored.members.into_iter().map(|member| (member.id, member)).collect();
        if members.is_empty() {
            return Err("no members".to_string());
        }
        let initial_members = if stored.initial_members.is_empty() {
            // Written before initial members were recorded, when only attributes
            // could change: the members are the initial ones.
            members
                .values()
                .map(|member| ringkvpb::Member {
                    client_urls: Vec::new(),
                    ..member.clone()
                })
                .collect()
        } else {
            stored.initial_members
        };
        Ok(Membership {
            cluster_id: stored.cluster_id,
            members,
            initial_members,
            removed: stored.removed_ids.into_iter().collect(),
        })
    }

    pub fn to_stored(&self) -> ringkvpb::Membership {
        ringkvpb::Membership {
            cluster_id: self.cluster_id,
            members: self.members.values().cloned().collect(),
            initial_members: self.initial_members.clone(),
            removed_ids: self.removed.iter().copied().collect(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        self.to_stored().encode_to_vec()
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    pub fn contains(&self, id: u64) -> bool {
        self.members.contains_key(&id)
    }

    pub fn is_removed(&self, id: u64) -> bool {
        self.removed.contains(&id)
    }

    pub fn voter_ids(&self) -> Vec<u64> {
        self.members.values().filter(|m| !m.is_learner).map(|m| m.id).collect()
    }

    /// The voters of the raft configuration the log starts from (index 0).
    pub fn initial_voter_ids(&self) -> Vec<u64> {
        self.initial_members
            .iter()
            .filter(|m| !m.is_learner)
            .map(|m| m.id)
            .collect()
    }

    pub fn member(&self, id: u64) -> Option<&ringkvpb::Member> {
        self.members.get(&id)
    }

    pub fn members(&self) -> impl Iterator<Item = &ringkvpb::Member> {
        self.members.values()
    }

    /// The member whose peer URLs are exactly `peer_urls` (in any order).
    pub fn member_with_peer_urls(&self, peer_urls: &[String]) -> Option<&ringkvpb::Member> {
        let wanted = sorted(peer_urls);
        self.members.values().find(|member| sorted(&member.peer_urls) == wanted)
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

    /// etcd's `ValidateConfigurationChange`, plus raft's own refusal to remove
    /// the last voter (which etcd's strict check catches before proposing).
    pub fn validate(&self, change: &MemberChange) -> Result<(), EtcdError> {
        let id = change.member_id();
        if self.removed.contains(&id) {
            return Err(EtcdError::MemberNotFound); // etcd's ErrIDRemoved, as gRPC shows it
        }
        match change {
            MemberChange::Add(member) => {
                if self.members.contains_key(&id) {
                    return Err(EtcdError::MemberExist);
                }
                if self.peer_urls_taken(&member.peer_urls, None) {
                    return Err(EtcdError::PeerUrlExist);
                }
                let learners = self.members.values().filter(|m| m.is_learner).count();
                if member.is_learner && learners + 1 > LEARNERS_MAX {
                    return Err(EtcdError::TooManyLearners);
                }
            }
            MemberChange::Promote(_) => {
                let member = self.members.get(&id).ok_or(EtcdError::MemberNotFound)?;
                if !member.is_learner {
                    return Err(EtcdError::MemberNotLearner);
                }
            }
            MemberChange::Remove(_) => {
                let member = self.members.get(&id).ok_or(EtcdError::MemberNotFound)?;
                if !member.is_learner && self.voter_ids().len() == 1 {
                    return Err(EtcdError::NotEnoughStarted);
                }
            }
            MemberChange::Update { peer_urls, .. } => {
                if !self.members.contains_key(&id) {
                    return Err(EtcdError::MemberNotFound);
                }
                if self.peer_urls_taken(peer_urls, Some(id)) {
                    return Err(EtcdError::PeerUrlExist);
                }
            }
        }
        Ok(())
    }

    /// Applies a change `validate` accepted.
    pub fn apply(&mut self, change: &MemberChange) {
        assert_eq!(self.validate(change), Ok(()), "only valid changes are applied");
        match change {
            MemberChange::Add(member) => {
                self.members.insert(member.id, member.clone());
            }
            MemberChange::Promote(id) => {
                self.members.get_mut(id).expect("validated").is_learner = false;
            }
            MemberChange::Remove(id) => {
                self.members.remove(id);
                self.removed.insert(*id);
            }
            MemberChange::Update { id, peer_urls } => {
                self.members
                    .get_mut(id)
                    .expect("validated")
                    .peer_urls
                    .clone_from(peer_urls);
            }
        }
        assert!(!self.voter_ids().is_empty(), "a cluster keeps a voter");
    }

    fn peer_urls_taken(&self, peer_urls: &[String], except: Option<u64>) -> bool {
        self.members
            .values()
            .filter(|member| Some(member.id) != except)
            .any(|member| member.peer_urls.iter().any(|url| peer_urls.contains(url)))
    }

    /// etcd's `IsStarted`: a member has a name once it has published its
    /// attributes (initial members are named by `--initial-cluster`).
    fn started_voters(&self, except: Option<u64>) -> (usize, usize) {
        let voters = self.members.values().filter(|m| !m.is_learner && Some(m.id) != except);
        voters.fold((0, 0), |(count, started), member| {
            (count + 1, started + usize::from(!member.name.is_empty()))
        })
    }

    /// etcd's `IsReadyToAddVotingMember`: with one more voter, a quorum of
    /// voters would still have started.
    pub fn ready_to_add_voter(&self) -> bool {
        let (voters, started) = self.started_voters(None);
        let voters_after = voters + 1;
        // Adding a second member to a one-member cluster (etcd's restore case).
        if started == 1 && voters_after == 2 {
            return true;
        }
        started >= quorum(voters_after)
    }

    /// etcd's `IsReadyToRemoveVotingMember`: without `id`, a quorum of the
    /// remaining voters has started.
    pub fn ready_to_remove_voter(&self, id: u64) -> bool {
        let (voters, started) = self.started_voters(Some(id));
        started >= quorum(voters)
    }

    /// etcd's `IsReadyToPromoteMember` (3.4.23): the learner counts as a
    /// started voter of the configuration after the promotion.
    pub fn ready_to_promote(&self) -> bool {
        let (voters, started) = self.started_voters(None);
        started + 1 >= quorum(voters + 1)
    }

    /// MemberList's members, in id order.
    pub fn to_pb(&self) -> Vec<pb::Member> {
        self.members.values().map(member_to_pb).collect()
    }
}

impl MemberChange {
    pub fn member_id(&self) -> u64 {
        match self {
            MemberChange::Add(member) => member.id,
            MemberChange::Promote(id) | MemberChange::Remove(id) | MemberChange::Update { id, .. } => *id,
        }
    }
}

pub fn member_to_pb(member: &ringkvpb::Member) -> pb::Member {
    pb::Member {
        id: member.id,
        name: member.name.clone(),
        peer_ur_ls: member.peer_urls.clone(),
        client_ur_ls: member.client_urls.clone(),
        is_learner: member.is_learner,
    }
}

/// A majority of `voters`.
fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

fn sorted(urls: &[String]) -> Vec<String> {
    let mut urls = urls.to_vec();
    urls.sort_unstable();
    urls
}

#[cfg(test)]
mod tests {
    use ringkv_datadir::ids;

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

    fn added(id: u64, port: u16, is_learner: bool) -> ringkvpb::Member {
        ringkvpb::Member {
            id,
            name: String::new(),
            peer_urls: vec![format!("http://127.0.0.1:{port}")],
            client_urls: Vec::new(),
            is_learner,
        }
    }

    #[test]
    fn adds_are_checked_as_etcd_checks_them() {
        let mut membership = Membership::initial(&three(), "t");
        let a = membership.voter_ids()[0];
        let taken_url = membership.member(a).unwrap().peer_urls[0].clone();
        let existing = ringkvpb::Member {
            id: a,
            ..added(a, 9000, false)
        };
        assert_eq!(
            membership.validate(&MemberChange::Add(existing)),
            Err(EtcdError::MemberExist)
        );
        let clash = ringkvpb::Member {
            peer_urls: vec!["http://other:1".to_string(), taken_url],
            ..added(5, 0, false)
        };
        assert_eq!(
            membership.validate(&MemberChange::Add(clash)),
            Err(EtcdError::PeerUrlExist)
        );
        let learner = MemberChange::Add(added(5, 9005, true));
        membership.apply(&learner);
        assert_eq!(membership.voter_ids().len(), 3, "a learner does not vote");
        assert_eq!(
            membership.validate(&MemberChange::Add(added(6, 9006, true))),
            Err(EtcdError::TooManyLearners)
        );
        assert_eq!(membership.validate(&MemberChange::Add(added(6, 9006, false))), Ok(()));
    }

    #[test]
    fn promote_needs_a_learner_and_removed_ids_stay_removed() {
        let mut membership = Membership::initial(&three(), "t");
        let voter = membership.voter_ids()[0];
        assert_eq!(
            membership.validate(&MemberChange::Promote(voter)),
            Err(EtcdError::MemberNotLearner)
        );
        assert_eq!(
            membership.validate(&MemberChange::Promote(5)),
            Err(EtcdError::MemberNotFound)
        );
        membership.apply(&MemberChange::Add(added(5, 9005, true)));
        membership.apply(&MemberChange::Promote(5));
        assert!(membership.voter_ids().contains(&5));
        membership.apply(&MemberChange::Remove(5));
        assert!(membership.is_removed(5) && !membership.contains(5));
        // etcd's ErrIDRemoved, which its gRPC layer reports as "member not found".
        for change in [
            MemberChange::Remove(5),
            MemberChange::Promote(5),
            MemberChange::Add(added(5, 9007, false)),
            MemberChange::Update {
                id: 5,
                peer_urls: vec!["http://127.0.0.1:9008".to_string()],
            },
        ] {
            assert_eq!(
                membership.validate(&change),
                Err(EtcdError::MemberNotFound),
                "{change:?}"
            );
        }
        let decoded = Membership::decode(&membership.encode()).unwrap();
        assert_eq!(decoded, membership, "removed ids and initial members are stored");
        assert_eq!(decoded.initial_voter_ids().len(), 3);
    }

    #[test]
    fn update_may_keep_its_own_urls_but_not_take_anothers() {
        let mut membership = Membership::initial(&three(), "t");
        let ids = membership.voter_ids();
        let own = membership.member(ids[0]).unwrap().peer_urls.clone();
        let other = membership.member(ids[1]).unwrap().peer_urls.clone();
        let keep = MemberChange::Update {
            id: ids[0],
            peer_urls: own,
        };
        assert_eq!(membership.validate(&keep), Ok(()));
        let take = MemberChange::Update {
            id: ids[0],
            peer_urls: other,
        };
        assert_eq!(membership.validate(&take), Err(EtcdError::PeerUrlExist));
        let unknown = MemberChange::Update {
            id: 1,
            peer_urls: Vec::new(),
        };
        assert_eq!(membership.validate(&unknown), Err(EtcdError::MemberNotFound));
        let moved = vec!["http://127.0.0.1:9100".to_string()];
        membership.apply(&MemberChange::Update {
            id: ids[0],
            peer_urls: moved.clone(),
        });
        assert_eq!(membership.member(ids[0]).unwrap().peer_urls, moved);
    }

    #[test]
    fn the_last_voter_cannot_be_removed() {
        let one = vec![InitialMember {
            name: "a".to_string(),
            peer_urls: vec!["http://127.0.0.1:1".to_string()],
        }];
        let membership = Membership::initial(&one, "t");
        let id = membership.voter_ids()[0];
        assert_eq!(
            membership.validate(&MemberChange::Remove(id)),
            Err(EtcdError::NotEnoughStarted)
        );
    }

    #[test]
    fn quorum_rules_count_started_voters_as_etcd_does() {
        let mut membership = Membership::initial(&three(), "t");
        // Three started voters: a fourth keeps 3 of 4 started (quorum 3).
        assert!(membership.ready_to_add_voter());
        membership.apply(&MemberChange::Add(added(5, 9005, false)));
        // 3 of 4 started: a fifth unstarted voter needs 3 of 5: still fine.
        assert!(membership.ready_to_add_voter());
        membership.apply(&MemberChange::Add(added(6, 9006, false)));
        // 3 of 5 started: a sixth needs 4 of 6.
        assert!(!membership.ready_to_add_voter());
        // Removing a started voter leaves 2 started of 4: quorum 3.
        let started = membership.voter_ids().into_iter().find(|id| *id > 6).unwrap();
        assert!(!membership.ready_to_remove_voter(started));
        assert!(membership.ready_to_remove_voter(5), "3 started of 4 remain");

        // etcd's exception: a second member may be added to a one-member cluster.
        let one = Membership::initial(&three()[..1], "t");
        assert!(one.ready_to_add_voter());
        assert!(one.ready_to_promote());
    }
}

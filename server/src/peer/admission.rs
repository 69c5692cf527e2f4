//! Who may hold a connection to the peer port: how many connections at once,
//! how many still waiting for their hello, how many per member, and which
//! member ids are let in.
//!
//! A member id is let in when this member's transport talks to it (the applied
//! membership's members, plus while joining the members it joined) or when a
//! member it talks to lists it (vouched: a member that fell behind does not yet
//! know members added since, and must still hear from, and answer, the leader
//! among them; etcd accepts such a peer's messages for the same reason).
//! Removed ids, id 0 and this member's own id are never let in.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

/// Inbound peer connections served at once; one more is closed at once. A
/// member of a 7-member cluster holds up to 6 × CONNECTIONS_PER_MEMBER_MAX of
/// its peers' connections and up to HANDSHAKES_MAX unintroduced ones; this
/// leaves room for clusters of up to 20 members.
pub const PEER_CONNECTIONS_MAX: usize = 128;
/// Connections that have not said hello yet. A peer says hello with its first
/// write, so when one more comes, the one waiting longest is closed: a flood
/// of silent connections cannot keep a real peer out.
pub const HANDSHAKES_MAX: usize = 32;
/// Connections one member id may hold: its message connection and a snapshot
/// stream, twice over for a reconnect that overlaps a connection not yet seen
/// closed (the idle timeout closes those within seconds). One more is closed.
pub const CONNECTIONS_PER_MEMBER_MAX: usize = 4;
/// How often an unknown member id may make this member ask its peers whether
/// it is a member now.
pub const VOUCH_INTERVAL: Duration = Duration::from_secs(5);

/// Why a hello's member id is not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("member {0:x} was removed from the cluster")]
    Removed(u64),
    #[error("{0:x} is not a member this member knows")]
    Unknown(u64),
    #[error("{0:x} is this member's own id, or no member's")]
    NotAPeer(u64),
    #[error("member {0:x} already holds {CONNECTIONS_PER_MEMBER_MAX} connections")]
    TooMany(u64),
}

/// The peer port's bookkeeping, shared by every connection's task.
#[derive(Debug)]
pub struct Admission {
    member_id: u64,
    open: Cell<usize>,
    /// Connections waiting for their hello, oldest first, with the sender
    /// whose drop closes each.
    handshakes: RefCell<VecDeque<(u64, LocalSender<()>)>>,
    next_handshake: Cell<u64>,
    per_member: RefCell<HashMap<u64, usize>>,
    /// The members the transport talks to, with their peer URLs.
    known: RefCell<BTreeMap<u64, Vec<String>>>,
    /// Members a known member listed when last asked, with their peer URLs.
    vouched: RefCell<BTreeMap<u64, Vec<String>>>,
    removed: RefCell<BTreeSet<u64>>,
    last_vouch: Cell<Option<Instant>>,
}

/// One served connection; dropping it frees its place.
#[must_use]
pub struct Connection(Rc<Admission>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
    }
}

/// A connection waiting for its hello; `closed` ends when a newer one takes
/// its place.
pub struct Handshake {
    admission: Rc<Admission>,
    id: u64,
    pub closed: LocalReceiver<()>,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.admission.handshakes.borrow_mut().retain(|(id, _)| *id != self.id);
    }
}

/// A member's connection, counted against CONNECTIONS_PER_MEMBER_MAX.
#[must_use]
pub struct MemberConnection {
    admission: Rc<Admission>,
    member: u64,
}

impl Drop for MemberConnection {
    fn drop(&mut self) {
        let mut per_member = self.admission.per_member.borrow_mut();
        let count = per_member.get_mut(&self.member).expect("counted when admitted");
        *count -= 1;
        if *count == 0 {
            per_member.remove(&self.member);
        }
    }
}

impl Admission {
    pub fn new(member_id: u64) -> Admission {
        Admission {
            member_id,
            open: Cell::new(0),
            handshakes: RefCell::default(),
            next_handshake: Cell::new(0),
            per_member: RefCell::default(),
            known: RefCell::default(),
            vouched: RefCell::default(),
            removed: RefCell::default(),
            last_vouch: Cell::new(None),
        }
    }

    /// A place for a new connection; None if PEER_CONNECTIONS_MAX are open.
    pub fn open(self: &Rc<Self>) -> Option<Connection> {
        if self.open.get() >= PEER_CONNECTIONS_MAX {
            return None;
        }
        self.open.set(self.open.get() + 1);
        Some(Connection(Rc::clone(self)))
    }

    /// Starts waiting for a connection's hello, closing the longest waiting
    /// one if HANDSHAKES_MAX wait already.
    pub fn handshake(self: &Rc<Self>) -> Handshake {
        let id = self.next_handshake.get();
        self.next_handshake.set(id + 1);
        let (close, closed) = local_channel::new_bounded(1);
        let mut handshakes = self.handshakes.borrow_mut();
        if handshakes.len() >= HANDSHAKES_MAX {
            // Dropping its sender ends the oldest one's `closed`.
            handshakes.pop_front();
        }
        handshakes.push_back((id, close));
        Handshake {
            admission: Rc::clone(self),
            id,
            closed,
        }
    }

    /// Lets member `from` in, counted against CONNECTIONS_PER_MEMBER_MAX.
    pub fn admit(self: &Rc<Self>, from: u64) -> Result<MemberConnection, Refusal> {
        self.may_speak(from)?;
        let mut per_member = self.per_member.borrow_mut();
        let count = per_member.entry(from).or_default();
        if *count >= CONNECTIONS_PER_MEMBER_MAX {
            return Err(Refusal::TooMany(from));
        }
        *count += 1;
        Ok(MemberConnection {
            admission: Rc::clone(self),
            member: from,
        })
    }

    /// Whether member `from` may still speak (it may have been removed since
    /// its hello).
    pub fn may_speak(&self, from: u64) -> Result<(), Refusal> {
        if from == 0 || from == self.member_id {
            return Err(Refusal::NotAPeer(from));
        }
        if self.removed.borrow().contains(&from) {
            return Err(Refusal::Removed(from));
        }
        if self.known.borrow().contains_key(&from) || self.vouched.borrow().contains_key(&from) {
            return Ok(());
        }
        Err(Refusal::Unknown(from))
    }

    /// The members the transport talks to, with their peer URLs.
    pub fn set_known(&self, known: BTreeMap<u64, Vec<String>>) {
        *self.known.borrow_mut() = known;
    }

    /// The ids the applied membership says were removed.
    pub fn set_removed(&self, removed: BTreeSet<u64>) {
        *self.removed.borrow_mut() = removed;
    }

    /// The peer URLs to ask whether an unknown id is a member now, if it is
    /// time to ask again (at most once per VOUCH_INTERVAL).
    pub fn vouch_due(&self) -> Option<Vec<String>> {
        let now = Instant::now();
        if self.last_vouch.get().is_some_and(|last| now < last + VOUCH_INTERVAL) {
            return None;
        }
        self.last_vouch.set(Some(now));
        Some(self.known.borrow().values().flatten().cloned().collect())
    }

    /// What a known member listed as the members (id and peer URLs), and as removed.
    pub fn set_vouched(&self, members: impl IntoIterator<Item = (u64, Vec<String>)>, removed: &[u64]) {
        let vouched = members.into_iter().filter(|(id, _)| !removed.contains(id)).collect();
        *self.vouched.borrow_mut() = vouched;
    }

    /// The peer URLs of `id` if it is a member only vouched for: this member
    /// must answer it without knowing it yet.
    pub fn vouched_urls(&self, id: u64) -> Option<Vec<String>> {
        if self.known.borrow().contains_key(&id) || self.may_speak(id).is_err() {
            return None;
        }
        self.vouched.borrow().get(&id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;

    fn admission(known: &[u64], removed: &[u64]) -> Rc<Admission> {
        let admission = Rc::new(Admission::new(1));
        let urls = |id: u64| vec![format!("http://127.0.0.1:{id}")];
        admission.set_known(known.iter().map(|id| (*id, urls(*id))).collect());
        admission.set_removed(removed.iter().copied().collect());
        admission
    }

    #[test]
    fn connections_over_the_limit_are_refused_until_one_closes() {
        let admission = admission(&[2], &[]);
        let open: Vec<Connection> = (0..PEER_CONNECTIONS_MAX).map(|_| admission.open().unwrap()).collect();
        assert!(admission.open().is_none());
        drop(open);
        assert!(admission.open().is_some());
    }

    #[test]
    fn a_new_handshake_closes_the_one_waiting_longest() {
        glommio::LocalExecutor::default().run(async {
            let admission = admission(&[2], &[]);
            let mut waiting: VecDeque<Handshake> = (0..HANDSHAKES_MAX).map(|_| admission.handshake()).collect();
            let newest = admission.handshake();
            let oldest = waiting.pop_front().unwrap();
            assert_eq!(oldest.closed.recv().await, None, "the oldest is closed");
            for handshake in &waiting {
                assert!(future::poll_once(handshake.closed.recv()).await.is_none(), "still open");
            }
            // One that said hello leaves the queue, and frees a place.
            drop(waiting.pop_back());
            let _another = admission.handshake();
            assert!(future::poll_once(waiting[0].closed.recv()).await.is_none());
            drop(newest);
        });
    }

    #[test]
    fn only_known_or_vouched_members_that_were_not_removed_are_let_in() {
        let admission = admission(&[2, 3], &[4]);
        assert!(admission.admit(2).is_ok());
        assert_eq!(admission.admit(4).err(), Some(Refusal::Removed(4)));
        assert_eq!(admission.admit(5).err(), Some(Refusal::Unknown(5)));
        assert_eq!(admission.admit(1).err(), Some(Refusal::NotAPeer(1)));
        assert_eq!(admission.admit(0).err(), Some(Refusal::NotAPeer(0)));
        // A member added since this member's applied index, listed by a peer.
        let listed = |id: u64| (id, vec![format!("http://127.0.0.1:{id}")]);
        admission.set_vouched([1, 2, 3, 4, 5, 6].map(listed), &[6]);
        assert!(admission.admit(5).is_ok());
        assert_eq!(admission.vouched_urls(5), Some(listed(5).1), "answered");
        assert_eq!(admission.vouched_urls(2), None, "known: talked to already");
        assert_eq!(admission.vouched_urls(4), None, "removed");
        assert_eq!(admission.admit(4).err(), Some(Refusal::Removed(4)));
        assert_eq!(admission.admit(6).err(), Some(Refusal::Unknown(6)));
        // Removed after its hello: it may no longer speak.
        admission.set_removed([3].into());
        assert_eq!(admission.may_speak(3), Err(Refusal::Removed(3)));
    }

    #[test]
    fn a_member_holds_at_most_its_share_of_connections() {
        let admission = admission(&[2, 3], &[]);
        let held: Vec<MemberConnection> = (0..CONNECTIONS_PER_MEMBER_MAX)
            .map(|_| admission.admit(2).unwrap())
            .collect();
        assert_eq!(admission.admit(2).err(), Some(Refusal::TooMany(2)));
        assert!(admission.admit(3).is_ok(), "others are not held up");
        drop(held);
        assert!(admission.admit(2).is_ok());
    }

    #[test]
    fn asking_peers_about_unknown_ids_is_rate_limited() {
        let admission = admission(&[2, 3], &[]);
        let urls = admission.vouch_due().expect("the first time");
        assert_eq!(urls.len(), 2);
        assert!(admission.vouch_due().is_none());
    }
}

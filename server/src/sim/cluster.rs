//! One simulated run: members, clients, the network and the faults, driven
//! by one seeded scheduler on one virtual clock. Every choice (delays,
//! losses, crashes, what a client does next, raft's election timeouts) comes
//! from the run's seed, so a run replays exactly from its number.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use raft::eraftpb::MessageType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_datadir::cluster::InitialMember;
use ringkv_engine::page::PAGE_BYTES;
use ringkv_proto::etcdserverpb as pb;

mod operator;

use self::operator::Operator;
use super::clock::MemberClock;
use super::disk::SimDisk;
use super::leases::{LeaseAnswer, LeaseBook};
use super::lincheck::{self, Budget, Op, Outcome, Verdict};
use super::member::{initial_cluster, Boot, Member, MemberTiming};
use super::network::{Network, NetworkFaults};
use super::workload::{self, ClientOp, InFlight};
use super::{Sabotage, SimConfig, SimFailure, SimReport};
use crate::etcd_error::EtcdError;
use crate::peer::{PeerEvent, PeerMessage};
use crate::store::event::Event;
use crate::store::membership::Membership;
use crate::store::messages::{Call, Request, Response};
use crate::store::outbox::Effect;
use crate::store::wal_io::{self, WalJob};

/// How long a client waits for an answer before it gives up on the call
/// (longer than the members' request timeout, so that one answers first).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// After the faults: virtual time for the cluster to settle before the
/// final reads.
const SETTLE: Duration = Duration::from_secs(5);
/// After settling, virtual time for the last leases to expire and every
/// member to apply the same entries, at most: a lease that outlives it,
/// with no client keeping it alive, is a failure.
const QUIESCE_MAX: Duration = Duration::from_secs(10);
/// Steps one run may take at most: a run that does not end is a failure.
const STEPS_MAX: u64 = 5_000_000;
/// Background steps (large reads, compaction) run back to back at most.
const BACKGROUND_STEPS_MAX: usize = 64;
/// A process pause (a stalled VM, a stopped process) lasts this long at most:
/// long enough for the others to elect a new leader, and for a paused
/// leader's clock to jump past its leases' deadlines.
const PAUSE_MAX: Duration = Duration::from_secs(3);
/// How much earlier than promised `Sabotage::LeasesExpireEarly` expires leases.
const SABOTAGE_EXPIRY_EARLY: Duration = Duration::from_millis(500);

/// Something that happens at a moment of the run.
enum Action {
    /// Member `member`'s start `incarnation`'s timers (a restart starts new ones).
    Tick {
        member: usize,
        incarnation: u64,
    },
    CommitDue {
        member: usize,
        incarnation: u64,
    },
    /// An event for member `to`'s start `incarnation` (dropped if it restarted since).
    Deliver {
        to: usize,
        incarnation: u64,
        event: Box<Event>,
    },
    /// A snapshot stream from `from` arrives at `to`.
    SnapshotArrives {
        from: usize,
        from_incarnation: u64,
        to: usize,
        message: Box<raft::eraftpb::Message>,
        txid: u64,
        bytes: Vec<u8>,
    },
    /// The next WAL job of member `member`'s start `incarnation` is done.
    WalIo {
        member: usize,
        incarnation: u64,
    },
    /// The page-store commit of member `member`'s start `incarnation` is done.
    CommitIo {
        member: usize,
        incarnation: u64,
    },
    /// Background work of member `member` may go on.
    Background {
        member: usize,
        incarnation: u64,
    },
    ClientStep(usize),
    ClientTimeout {
        client: usize,
        call_id: u64,
    },
    /// A member, chosen then, loses power; it is started again `down` later.
    Crash {
        down: Duration,
    },
    Restart(usize),
    /// A member's process, chosen then, stops for `lasting`, then goes on
    /// (what happens to it meanwhile waits); its clock does not stop.
    Pause {
        lasting: Duration,
    },
    /// The operator's next membership change.
    OperatorStep,
    OperatorTimeout {
        call_id: u64,
    },
    /// The member added in this slot is started (as a joiner).
    Join(usize),
    Partition,
    Heal,
    /// The end of the faults: the network heals and stays reliable.
    Calm,
}

/// The keys every member reads at the end.
const FINAL_KEYS: [&str; 3] = ["a", "b", "c"];

/// A call each member answers at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FinalCall {
    /// A linearizable read of the key.
    Read(&'static str),
    HashKv,
    Leases,
}

impl FinalCall {
    /// What a member answers at the end: a learner serves no linearizable read.
    fn requests(learner: bool) -> Vec<(FinalCall, Request)> {
        let mut requests: Vec<(FinalCall, Request)> = FINAL_KEYS
            .iter()
            .filter(|_| !learner)
            .map(|key| (FinalCall::Read(key), Request::Range(workload::range(key))))
            .collect();
        requests.push((FinalCall::HashKv, Request::HashKv(pb::HashKvRequest { revision: 0 })));
        requests.push((FinalCall::Leases, Request::LeaseLeases(pb::LeaseLeasesRequest {})));
        requests
    }
}

struct Client {
    calling: Option<Calling>,
    calls: u64,
}

/// A client's call in flight: the member it went to, its id, and what it is.
struct Calling {
    member: usize,
    call_id: u64,
    call: InFlight,
}

pub struct Cluster {
    config: SimConfig,
    rng: StdRng,
    base: Instant,
    now_us: u64,
    steps: u64,
    next_seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    actions: HashMap<u64, Action>,
    cluster: Vec<InitialMember>,
    members: Vec<Member>,
    /// Member id → index.
    index_of: BTreeMap<u64, usize>,
    network: Network,
    clients: Vec<Client>,
    history: Vec<lincheck::Event>,
    leases: LeaseBook,
    operator: Operator,
    calm: bool,
    /// Answers to the final reads, by call id.
    final_answers: HashMap<u64, Result<Response, EtcdError>>,
    report: SimReport,
}

impl Action {
    /// The member whose process carries this action out, if one does (a
    /// paused one leaves it waiting).
    fn paused_by(&self) -> Option<usize> {
        match *self {
            Action::Tick { member, .. }
            | Action::CommitDue { member, .. }
            | Action::Deliver { to: member, .. }
            | Action::SnapshotArrives { to: member, .. }
            | Action::WalIo { member, .. }
            | Action::CommitIo { member, .. }
            | Action::Background { member, .. } => Some(member),
            Action::ClientStep(_)
            | Action::ClientTimeout { .. }
            | Action::Crash { .. }
            | Action::Restart(_)
            | Action::Pause { .. }
            | Action::OperatorStep
            | Action::OperatorTimeout { .. }
            | Action::Join(_)
            | Action::Partition
            | Action::Heal
            | Action::Calm => None,
        }
    }
}

impl Cluster {
    pub fn new(seed: u64, config: SimConfig) -> Cluster {
        let mut rng = StdRng::seed_from_u64(seed);
        let cluster = initial_cluster(config.members);
        let members: Vec<Member> = (0..config.members)
            .map(|index| Member::new(index, &cluster, MemberClock::random(&mut rng)))
            .collect();
        let index_of = members.iter().map(|member| (member.id, member.index)).collect();
        let clients = (0..config.clients)
            .map(|_| Client {
                calling: None,
                calls: 0,
            })
            .collect();
        Cluster {
            config,
            rng,
            base: Instant::now(),
            now_us: 0,
            steps: 0,
            next_seq: 0,
            queue: BinaryHeap::new(),
            actions: HashMap::new(),
            cluster,
            members,
            index_of,
            network: Network::new(config.network),
            clients,
            history: Vec::new(),
            leases: LeaseBook::default(),
            operator: Operator::new(config.member_changes),
            calm: false,
            final_answers: HashMap::new(),
            report: SimReport::default(),
        }
    }

    /// Member `member`'s monotonic clock now.
    fn now_of(&self, member: usize) -> Instant {
        self.members[member].clock.now(self.base, self.now_us)
    }

    /// The virtual time in which `local` passes on member `member`'s clock.
    fn on_clock_of(&self, member: usize, local: Duration) -> Duration {
        self.members[member].clock.virtual_for(local)
    }

    fn at(&mut self, after: Duration, action: Action) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let time = self.now_us + after.as_micros() as u64;
        self.queue.push(Reverse((time, seq)));
        self.actions.insert(seq, action);
    }

    fn timing(&self) -> MemberTiming {
        self.config.timing
    }

    /// Runs the faults, then lets the cluster settle, then checks it.
    pub async fn run(mut self) -> Result<SimReport, SimFailure> {
        for index in 0..self.members.len() {
            self.start_member(index).await?;
        }
        for client in 0..self.clients.len() {
            let think = self.think_time();
            self.at(think, Action::ClientStep(client));
        }
        self.schedule_faults();
        if self.config.member_changes > 0 {
            let first = operator::OPERATOR_START + Duration::from_micros(self.rng.gen_range(0..500_000));
            self.at(first, Action::OperatorStep);
        }
        let faults_end = self.config.faults_duration;
        self.at(faults_end, Action::Calm);
        let end_us = (faults_end + SETTLE).as_micros() as u64;
        self.run_until(end_us, |_| false).await?;
        self.finish().await
    }

    /// Carries out the queued actions in order, up to virtual time `end_us`
    /// or until `done` says so; what comes later stays queued.
    async fn run_until(&mut self, end_us: u64, done: impl Fn(&Cluster) -> bool) -> Result<(), SimFailure> {
        while let Some(&Reverse((time, seq))) = self.queue.peek() {
            if time > end_us || done(self) {
                return Ok(());
            }
            self.queue.pop();
            self.steps += 1;
            if self.steps > STEPS_MAX {
                return Err(self.failure("the run did not end within its step budget".to_string()));
            }
            self.now_us = time;
            let action = self.actions.remove(&seq).expect("every queued step has an action");
            self.act(action).await?;
        }
        Ok(())
    }

    async fn act(&mut self, action: Action) -> Result<(), SimFailure> {
        if let Some(member) = action.paused_by() {
            if let Some(until_us) = self.paused_until(member) {
                // A paused process does nothing; it finds it all waiting when it goes on.
                self.at(Duration::from_micros(until_us - self.now_us), action);
                return Ok(());
            }
        }
        match action {
            Action::Tick { member, incarnation } => {
                if incarnation == self.members[member].incarnation {
                    self.deliver(member, Some(incarnation), Event::Tick).await?;
                    let every = self.on_clock_of(member, self.timing().heartbeat_interval);
                    self.at(every, Action::Tick { member, incarnation });
                }
            }
            Action::CommitDue { member, incarnation } => {
                if incarnation == self.members[member].incarnation {
                    self.deliver(member, Some(incarnation), Event::CommitDue).await?;
                    let every = self.on_clock_of(member, self.timing().backend_batch_interval);
                    self.at(every, Action::CommitDue { member, incarnation });
                }
            }
            Action::Deliver { to, incarnation, event } => self.deliver(to, Some(incarnation), *event).await?,
            Action::SnapshotArrives {
                from,
                from_incarnation,
                to,
                message,
                txid,
                bytes,
            } => {
                self.snapshot_arrives(from, from_incarnation, to, message, txid, bytes)
                    .await?
            }
            Action::WalIo { member, incarnation } => self.wal_io(member, incarnation).await?,
            Action::CommitIo { member, incarnation } => self.commit_io(member, incarnation).await?,
            Action::Background { member, incarnation } => {
                if self.is_running(member, Some(incarnation)) {
                    self.after_events(member).await?;
                }
            }
            Action::ClientStep(client) => self.client_step(client).await?,
            Action::ClientTimeout { client, call_id } => self.client_gives_up(client, call_id),
            Action::Crash { down } => {
                let member = self.rng.gen_range(0..self.members.len());
                if !self.calm && self.members[member].running.is_some() {
                    self.crash(member).await;
                    self.at(down, Action::Restart(member));
                }
            }
            Action::Restart(member) => {
                let member_state = &self.members[member];
                if member_state.running.is_none() && !member_state.removed {
                    self.start_member(member).await?;
                }
            }
            Action::OperatorStep => self.operator_step().await?,
            Action::OperatorTimeout { call_id } => self.operator_answered(call_id, None),
            Action::Join(slot) => self.join(slot).await?,
            Action::Pause { lasting } => {
                let member = self.rng.gen_range(0..self.members.len());
                if !self.calm && self.members[member].running.is_some() {
                    let until_us = self.now_us + lasting.as_micros() as u64;
                    self.members[member].paused_until_us = Some(until_us);
                    self.report.pauses += 1;
                }
            }
            Action::Partition => {
                if !self.calm {
                    let members = self.members.len();
                    let size = self.rng.gen_range(1..=members / 2);
                    let mut side: Vec<usize> = (0..members).collect();
                    for i in 0..size {
                        let j = self.rng.gen_range(i..members);
                        side.swap(i, j);
                    }
                    side.truncate(size);
                    self.network.partition(&side, members);
                    self.report.partitions += 1;
                }
            }
            Action::Heal => self.network.heal(),
            Action::Calm => {
                self.calm = true;
                self.network.heal();
                self.network.faults = NetworkFaults::RELIABLE;
                self.sabotage();
                // Every member that ran is started (an added one that never
                // ran is the operator's to start: `reconcile_members`).
                for member in 0..self.members.len() {
                    let down = &self.members[member];
                    let initial = member < self.cluster.len();
                    if down.running.is_none() && !down.removed && (initial || down.has_started()) {
                        self.start_member(member).await?;
                    }
                }
                self.reconcile_members().await?;
            }
        }
        Ok(())
    }

    /// The configured damage (`Sabotage`), for the checks to catch.
    fn sabotage(&mut self) {
        match self.config.sabotage {
            Sabotage::None | Sabotage::WriteBehindRaft | Sabotage::LeasesExpireEarly => {}
            Sabotage::LoseEveryDisk => {
                for member in &mut self.members {
                    member.running = None;
                    member.disk = SimDisk::default();
                }
            }
        }
    }

    /// Scatters crashes and partitions over the fault period.
    fn schedule_faults(&mut self) {
        let period_us = self.config.faults_duration.as_micros() as u64;
        for _ in 0..self.config.crashes {
            let at = Duration::from_micros(self.rng.gen_range(0..period_us));
            let down = Duration::from_millis(self.rng.gen_range(10..3000));
            self.at(at, Action::Crash { down });
        }
        for _ in 0..self.config.partitions {
            let at = Duration::from_micros(self.rng.gen_range(0..period_us));
            self.at(at, Action::Partition);
            let lasting = Duration::from_millis(self.rng.gen_range(100..4000));
            self.at(at + lasting, Action::Heal);
        }
        for _ in 0..self.config.pauses {
            let at = Duration::from_micros(self.rng.gen_range(0..period_us));
            let lasting = Duration::from_micros(self.rng.gen_range(0..PAUSE_MAX.as_micros() as u64));
            self.at(at, Action::Pause { lasting });
        }
    }

    /// Until when member `member` is paused, if it is now.
    fn paused_until(&mut self, member: usize) -> Option<u64> {
        let member = &mut self.members[member];
        if member.paused_until_us.is_some_and(|until_us| until_us <= self.now_us) {
            member.paused_until_us = None;
        }
        member.paused_until_us
    }

    /// Starts member `index` again (or, in the initial cluster, the first
    /// time); an added member that never ran joins instead.
    async fn start_member(&mut self, index: usize) -> Result<(), SimFailure> {
        let initial = index < self.cluster.len();
        if !initial && !self.members[index].has_started() {
            return self.join(index).await;
        }
        // One that joined talks to whom the others list until caught up.
        let id = self.members[index].id;
        let join_peers = match self.cluster_membership() {
            Some(membership) if !initial => membership.peers_of(id),
            _ => Vec::new(),
        };
        let cluster = self.cluster.clone();
        self.start_member_as(
            index,
            Boot::Existing {
                cluster: &cluster,
                join_peers,
            },
        )
        .await
    }

    async fn start_member_as(&mut self, index: usize, boot: Boot<'_>) -> Result<(), SimFailure> {
        if self.members[index].incarnation > 0 {
            self.members[index].clock.jump_wall_clock(&mut self.rng);
        }
        let timing = self.timing();
        let now = self.now_of(index);
        let wall_clock = self.members[index].clock.wall_clock(self.now_us);
        if let Err(error) = self.members[index].start(boot, timing, now, wall_clock).await {
            return Err(self.failure(format!("member {index} did not start: {error}")));
        }
        if self.config.sabotage == Sabotage::LeasesExpireEarly {
            let running = self.members[index].running.as_mut().expect("started");
            running.core.expire_leases_early(SABOTAGE_EXPIRY_EARLY);
        }
        self.report.starts += 1;
        // Timers start at a random phase, as separate processes' do.
        let phase = Duration::from_micros(self.rng.gen_range(0..timing.heartbeat_interval.as_micros() as u64));
        let incarnation = self.members[index].incarnation;
        self.at(
            phase,
            Action::Tick {
                member: index,
                incarnation,
            },
        );
        let commit_due = self.on_clock_of(index, timing.backend_batch_interval);
        self.at(
            commit_due + phase,
            Action::CommitDue {
                member: index,
                incarnation,
            },
        );
        self.connected(index);
        self.at(
            Duration::ZERO,
            Action::Background {
                member: index,
                incarnation,
            },
        );
        Ok(())
    }

    /// Member `index` just started: it and every running peer connect (the
    /// link named by the incarnation of the member it leads to).
    fn connected(&mut self, index: usize) {
        let (id, incarnation) = (self.members[index].id, self.members[index].incarnation);
        let peers: Vec<(usize, u64, u64)> = self
            .members
            .iter()
            .filter(|peer| peer.index != index && peer.running.is_some())
            .map(|peer| (peer.index, peer.id, peer.incarnation))
            .collect();
        for (peer_index, peer, peer_incarnation) in peers {
            let now = self.now_of(index);
            let event = PeerEvent::Connected {
                peer,
                link: peer_incarnation,
                at: now,
            };
            self.deliver_later(index, incarnation, Event::Peer(event));
            let now = self.now_of(peer_index);
            let event = PeerEvent::Connected {
                peer: id,
                link: incarnation,
                at: now,
            };
            self.deliver_later(peer_index, peer_incarnation, Event::Peer(event));
        }
    }

    /// Member `index` stopped: its running peers' links to it break.
    fn disconnected(&mut self, index: usize) {
        let (id, incarnation) = (self.members[index].id, self.members[index].incarnation);
        let peers: Vec<(usize, u64)> = self
            .members
            .iter()
            .filter(|peer| peer.index != index && peer.running.is_some())
            .map(|peer| (peer.index, peer.incarnation))
            .collect();
        for (peer_index, peer_incarnation) in peers {
            let event = PeerEvent::Disconnected {
                peer: id,
                link: incarnation,
            };
            self.deliver_later(peer_index, peer_incarnation, Event::Peer(event));
        }
    }

    /// `event` for member `to`'s start `incarnation`, as the next step.
    fn deliver_later(&mut self, to: usize, incarnation: u64, event: Event) {
        let event = Box::new(event);
        self.at(Duration::ZERO, Action::Deliver { to, incarnation, event });
    }

    fn is_running(&self, member: usize, incarnation: Option<u64>) -> bool {
        let member = &self.members[member];
        member.running.is_some() && incarnation.is_none_or(|incarnation| incarnation == member.incarnation)
    }

    /// Hands `event` to a member that is up (and still the same start, if
    /// `incarnation` says which), then moves it forward.
    async fn deliver(&mut self, member: usize, incarnation: Option<u64>, event: Event) -> Result<(), SimFailure> {
        if !self.is_running(member, incarnation) {
            return Ok(());
        }
        if let Some(until_us) = self.paused_until(member) {
            let incarnation = self.members[member].incarnation;
            let event = Box::new(event);
            let after = Duration::from_micros(until_us - self.now_us);
            self.at(
                after,
                Action::Deliver {
                    to: member,
                    incarnation,
                    event,
                },
            );
            return Ok(());
        }
        let now = self.now_of(member);
        let running = self.members[member].running.as_mut().expect("checked above");
        running.core.handle(now, event);
        self.after_events(member).await
    }

    /// `drive`, background steps, then the effects.
    async fn after_events(&mut self, member: usize) -> Result<(), SimFailure> {
        let now = self.now_of(member);
        let mut rest = None;
        {
            let running = self.members[member].running.as_mut().expect("the member runs");
            running.core.drive(now);
            for _ in 0..BACKGROUND_STEPS_MAX {
                if !running.core.has_background_work() {
                    break;
                }
                if let Some(wait) = running.core.background_rest(now) {
                    rest = Some(wait);
                    break;
                }
                running.core.background_step(now);
                running.core.drive(now);
            }
            let rng = &mut self.rng;
            running.core.choose_election_timeout(|base| rng.gen_range(0..base));
        }
        let incarnation = self.members[member].incarnation;
        if let Some(rest) = rest {
            let rest = self.on_clock_of(member, rest);
            self.at(rest, Action::Background { member, incarnation });
        }
        let core = &mut self.members[member].running.as_mut().expect("the member runs").core;
        let (audit, effects) = (core.take_lease_audit(), core.take_effects());
        let local_us = self.members[member].clock.local_us(self.now_us);
        for audit in audit {
            if let Err(why) = self.leases.audit(member, self.now_us, local_us, audit) {
                return Err(self.failure(why));
            }
        }
        for effect in effects {
            self.carry_out(member, effect)?;
        }
        Ok(())
    }

    fn disk_delay(&mut self) -> Duration {
        Duration::from_micros(self.rng.gen_range(50..2000))
    }

    fn carry_out(&mut self, member: usize, effect: Effect) -> Result<(), SimFailure> {
        let incarnation = self.members[member].incarnation;
        match effect {
            Effect::Wal(job) => {
                let running = self.members[member].running.as_mut().expect("the member runs");
                running.wal_jobs.push_back(job);
                if running.wal_jobs.len() == 1 {
                    let delay = self.disk_delay();
                    self.at(delay, Action::WalIo { member, incarnation });
                }
            }
            Effect::Commit(plan) => {
                let running = self.members[member].running.as_mut().expect("the member runs");
                assert!(running.commit.is_none(), "one commit at a time");
                running.commit = Some(plan);
                let delay = self.disk_delay();
                self.at(delay, Action::CommitIo { member, incarnation });
            }
            Effect::Reply { reply, .. } => self.client_answered(reply.id, reply.result),
            Effect::WatchPush { .. } => {}
            Effect::Peers { membership, .. } => {
                let membership = Membership::from_pb(membership)
                    .map_err(|error| self.failure(format!("member {member}'s membership: {error}")))?;
                self.learn_member_ids(&membership);
                self.members[member].membership = Some(membership);
            }
            Effect::Raft(messages) => {
                for message in messages {
                    let to = message.to;
                    self.send(member, to, PeerMessage::Raft(message));
                }
            }
            Effect::ToPeer { to, message } => self.send(member, to, message),
            Effect::SendSnapshot {
                to,
                message,
                mut source,
            } => {
                let txid = source.txid();
                let mut bytes = Vec::with_capacity(source.total_bytes() as usize);
                let mut buffer = vec![0; PAGE_BYTES * 16];
                loop {
                    let read = source
                        .read(&mut buffer)
                        .map_err(|error| self.failure(format!("reading a snapshot: {error}")))?;
                    if read == 0 {
                        break;
                    }
                    bytes.extend_from_slice(&buffer[..read]);
                }
                drop(source);
                let to_index = self.index_of[&to];
                let delivery = self
                    .network
                    .deliveries(&mut self.rng, member, to_index, false)
                    .first()
                    .copied();
                match delivery {
                    Some(delay) => {
                        let arrives = Action::SnapshotArrives {
                            from: member,
                            from_incarnation: incarnation,
                            to: to_index,
                            message: Box::new(message),
                            txid,
                            bytes,
                        };
                        self.at(delay * 10, arrives);
                    }
                    None => {
                        let event = Event::Peer(PeerEvent::SnapshotSent {
                            to,
                            txid,
                            delivered: false,
                        });
                        let delay = Duration::from_millis(100);
                        self.at(
                            delay,
                            Action::Deliver {
                                to: member,
                                incarnation,
                                event: Box::new(event),
                            },
                        );
                    }
                }
                self.report.snapshots_sent += 1;
            }
            Effect::Stop => {
                let state = &self.members[member];
                if !state
                    .membership
                    .as_ref()
                    .is_some_and(|applied| applied.is_removed(state.id))
                {
                    return Err(self.failure(format!("member {member} stopped, but it applied no removal of its own")));
                }
                self.stop_member(member);
            }
            // The simulated members run no corruption checks and are never
            // asked for their HashKV over the network.
            Effect::AskHashKvs { .. } | Effect::AnswerHashKv { .. } => {
                return Err(self.failure("a corruption check: the simulation runs none".to_string()))
            }
        }
        Ok(())
    }

    /// A peer message from `from` to member id `to` through the network.
    fn send(&mut self, from: usize, to: u64, message: PeerMessage) {
        let from_id = self.members[from].id;
        let Some(&to_index) = self.index_of.get(&to) else {
            let event = Event::Peer(PeerEvent::Undelivered { to, message });
            let incarnation = self.members[from].incarnation;
            self.at(
                Duration::ZERO,
                Action::Deliver {
                    to: from,
                    incarnation,
                    event: Box::new(event),
                },
            );
            return;
        };
        let event = |message: PeerMessage| match message {
            PeerMessage::Raft(raft) => Some(PeerEvent::Received(Box::new(raft))),
            PeerMessage::LeaseForward(forward) => Some(PeerEvent::LeaseForward { from: from_id, forward }),
            PeerMessage::LeaseForwardReply(reply) => Some(PeerEvent::LeaseForwardReply(reply)),
            PeerMessage::PromoteCheck(check) => Some(PeerEvent::PromoteCheck { from: from_id, check }),
            _ => None,
        };
        let incarnation = self.members[to_index].incarnation;
        let proposal = matches!(&message, PeerMessage::Raft(raft) if raft.get_msg_type() == MessageType::MsgPropose);
        for delay in self.network.deliveries(&mut self.rng, from, to_index, !proposal) {
            if let Some(event) = event(message.clone()) {
                self.at(
                    delay,
                    Action::Deliver {
                        to: to_index,
                        incarnation,
                        event: Box::new(Event::Peer(event)),
                    },
                );
            }
        }
    }

    async fn snapshot_arrives(
        &mut self,
        from: usize,
        from_incarnation: u64,
        to: usize,
        message: Box<raft::eraftpb::Message>,
        txid: u64,
        bytes: Vec<u8>,
    ) -> Result<(), SimFailure> {
        let delivered = self.is_running(to, None) && self.network.connected(from, to);
        if delivered {
            let index = message.get_snapshot().get_metadata().index;
            let path = self.members[to].disk.receive(index, bytes);
            self.deliver(to, None, Event::Peer(PeerEvent::SnapshotReceived { message, path }))
                .await?;
        }
        let to_id = self.members[to].id;
        let event = Event::Peer(PeerEvent::SnapshotSent {
            to: to_id,
            txid,
            delivered,
        });
        self.deliver(from, Some(from_incarnation), event).await
    }

    async fn wal_io(&mut self, member: usize, incarnation: u64) -> Result<(), SimFailure> {
        if !self.is_running(member, Some(incarnation)) {
            return Ok(());
        }
        let delay = self.disk_delay();
        let running = self.members[member].running.as_mut().expect("checked above");
        let job = running.wal_jobs.pop_front().expect("a WAL job was queued");
        let event = wal_io::run_job(&mut running.wal, job, None).await;
        if !running.wal_jobs.is_empty() {
            self.at(delay, Action::WalIo { member, incarnation });
        }
        match event {
            Some(event) => self.deliver(member, Some(incarnation), event).await,
            None => Ok(()),
        }
    }

    async fn commit_io(&mut self, member: usize, incarnation: u64) -> Result<(), SimFailure> {
        if !self.is_running(member, Some(incarnation)) {
            return Ok(());
        }
        let delay = self.disk_delay();
        let running = self.members[member].running.as_mut().expect("checked above");
        let plan = running.commit.take().expect("a commit was handed over");
        let result = plan.execute();
        let event = Event::Committed { result, elapsed: delay };
        self.deliver(member, Some(incarnation), event).await
    }

    /// A power cut on `member`. A write in progress (the next WAL job or
    /// commit) is cut short: what it wrote unsynced is kept, lost or torn.
    async fn crash(&mut self, member: usize) {
        if self.calm || self.members[member].running.is_none() {
            return;
        }
        let seed = self.rng.gen();
        let cut_write = self.rng.gen_bool(0.5);
        let disk = self.members[member].disk.clone();
        let running = self.members[member].running.as_mut().expect("checked above");
        if cut_write {
            if let Some(WalJob::Persist { records, .. }) = running.wal_jobs.front() {
                disk.wal.die_at_next_sync();
                let _ = running.wal.append(records).await;
            } else if let Some(plan) = running.commit.take() {
                disk.page().fail_write_after(self.rng.gen_range(0..4));
                let _ = plan.execute();
                disk.page().clear_faults();
            }
        }
        self.members[member].crash(seed);
        self.report.crashes += 1;
        self.disconnected(member);
        self.calls_lost(member);
    }

    /// Calls in flight to `member`, which crashed or stopped: their callers lose them.
    fn calls_lost(&mut self, member: usize) {
        for client in 0..self.clients.len() {
            if self.clients[client]
                .calling
                .as_ref()
                .is_some_and(|calling| calling.member == member)
            {
                self.client_done(client, None);
            }
        }
        self.operator_lost(member);
    }

    fn think_time(&mut self) -> Duration {
        Duration::from_micros(self.rng.gen_range(0..20_000))
    }

    async fn client_step(&mut self, client: usize) -> Result<(), SimFailure> {
        if self.calm || self.clients[client].calling.is_some() {
            return Ok(());
        }
        let member = self.rng.gen_range(0..self.members.len());
        let call_id = (client as u64) << 32 | self.clients[client].calls;
        self.clients[client].calls += 1;
        let leases = self.config.leases.then_some((&self.leases, self.now_us));
        let (op, request) = workload::random_call(&mut self.rng, call_id, leases);
        if !self.is_running(member, None) {
            // Connection refused: nothing was sent.
            let think = self.think_time();
            self.at(think, Action::ClientStep(client));
            return Ok(());
        }
        if let ClientOp::Revoke { lease } = op {
            self.leases.revoking(lease, self.now_us);
        }
        let call = InFlight {
            op,
            invoke_us: self.now_us,
        };
        self.clients[client].calling = Some(Calling { member, call_id, call });
        self.at(CLIENT_TIMEOUT, Action::ClientTimeout { client, call_id });
        self.call(member, call_id, request, true).await
    }

    /// Call `call_id` to `member`: a client's etcd RPC if `client_rpc` (else
    /// the simulation's own look at the member, which a learner answers too).
    async fn call(
        &mut self,
        member: usize,
        call_id: u64,
        request: Request,
        client_rpc: bool,
    ) -> Result<(), SimFailure> {
        let call = Call {
            id: call_id,
            request,
            require_leader: false,
            client_rpc,
            auth: Default::default(),
        };
        self.deliver(member, None, Event::Call { client: 0, call }).await
    }

    fn client_answered(&mut self, call_id: u64, result: Result<Response, EtcdError>) {
        if Operator::owns(call_id) {
            return self.operator_answered(call_id, Some(result));
        }
        let client = (call_id >> 32) as usize;
        if client >= self.clients.len() {
            // A final read's answer: kept for `finish`.
            self.final_answers.insert(call_id, result);
            return;
        }
        if self.clients[client]
            .calling
            .as_ref()
            .is_some_and(|calling| calling.call_id == call_id)
        {
            self.client_done(client, Some(result));
        } // else given up on already
    }

    fn client_gives_up(&mut self, client: usize, call_id: u64) {
        if self.clients[client]
            .calling
            .as_ref()
            .is_some_and(|calling| calling.call_id == call_id)
        {
            self.client_done(client, None);
        }
    }

    /// Client `client`'s call is over, with the member's answer (None: none
    /// came, or the client gave up): recorded in the history or the lease book.
    fn client_done(&mut self, client: usize, answer: Option<Result<Response, EtcdError>>) {
        let Calling { member, call, .. } = self.clients[client].calling.take().expect("a call in flight");
        let (invoke_us, now_us) = (call.invoke_us, self.now_us);
        let known = matches!(answer, Some(Ok(_)));
        match call.op {
            ClientOp::Kv(op) => {
                let outcome = match answer {
                    Some(Ok(response)) => workload::outcome(&op, response),
                    _ => Outcome::Unknown,
                };
                let event = workload::completed(client as u32, op, invoke_us, now_us, outcome);
                self.history.push(event);
            }
            ClientOp::Grant => {
                if let Some(Ok(Response::LeaseGrant(grant))) = answer {
                    let keep_until_us = now_us + workload::keep_alive_for(&mut self.rng).as_micros() as u64;
                    let call = (member, invoke_us, now_us);
                    self.leases.granted(grant.id, grant.ttl, call, keep_until_us);
                }
            }
            ClientOp::KeepAlive { lease } => {
                if let Some(Ok(Response::LeaseKeepAlive(keep_alive))) = answer {
                    self.leases.promised(lease, keep_alive.ttl, (member, invoke_us, now_us));
                }
            }
            ClientOp::Revoke { lease } => {
                let answer = match answer {
                    Some(Ok(_)) => LeaseAnswer::Revoked,
                    Some(Err(EtcdError::LeaseNotFound)) => LeaseAnswer::RevokeNotFound,
                    _ => LeaseAnswer::Unknown,
                };
                self.leases.answered(lease, invoke_us, now_us, answer);
            }
        }
        if known {
            self.report.operations += 1;
        } else {
            self.report.unknown_outcomes += 1;
        }
        let think = self.think_time();
        self.at(think, Action::ClientStep(client));
    }

    /// After the settling time: every member reads every key, the history
    /// must be linearizable, the members must hold the same data and
    /// leases, and no lease may have ended earlier than promised.
    async fn finish(mut self) -> Result<SimReport, SimFailure> {
        if self.config.sabotage == Sabotage::WriteBehindRaft {
            if let Some(running) = self.members.iter_mut().find_map(|member| member.running.as_mut()) {
                running.core.write_behind_raft(b"a", b"behind raft");
            }
        }
        // A call still unanswered may yet be applied: its outcome is unknown.
        for client in 0..self.clients.len() {
            if self.clients[client].calling.is_some() {
                self.client_done(client, None);
            }
        }
        if self.operator_calling() {
            self.operator_answered(self.operator_call_id(), None);
        }
        // A membership change the operator made late may have been applied since.
        self.reconcile_members().await?;
        let quiesce_end_us = self.now_us + QUIESCE_MAX.as_micros() as u64;
        self.run_until(quiesce_end_us, Cluster::quiet).await?;
        if !self.quiet() {
            let why = format!(
                "the members did not settle (same applied index, no lease left) within {QUIESCE_MAX:?}; {}",
                self.raft_statuses()
            );
            return Err(self.failure(why));
        }
        let final_from_us = self.now_us;
        let mut calls = Vec::new();
        for (member, learner) in self.current_members() {
            for (kind, request) in FinalCall::requests(learner) {
                let call_id = self.final_call_id(member, kind);
                calls.push((call_id, member, kind));
                let client_rpc = matches!(kind, FinalCall::Read(_));
                self.call(member, call_id, request, client_rpc).await?;
            }
        }
        // Let the final calls be answered.
        let end_us = self.now_us + Duration::from_secs(3).as_micros() as u64;
        let answers = calls.len();
        self.run_until(end_us, |cluster| cluster.final_answers.len() == answers)
            .await?;
        let mut hashes = Vec::new();
        let mut lease_lists = Vec::new();
        for (call_id, member, kind) in calls {
            let Some(answer) = self.final_answers.remove(&call_id) else {
                let why = format!(
                    "member {member}'s final {kind:?} was not answered; {}",
                    self.raft_statuses()
                );
                return Err(self.failure(why));
            };
            let response =
                answer.map_err(|error| self.failure(format!("member {member}'s final {kind:?}: {error}")))?;
            match (kind, response) {
                (FinalCall::Read(key), response) => {
                    let op = Op::Get { key: key.to_string() };
                    let outcome = workload::outcome(&op, response);
                    let client = self.clients.len() as u32 + member as u32;
                    let event = workload::completed(client, op, final_from_us, self.now_us, outcome);
                    self.history.push(event);
                }
                (FinalCall::HashKv, Response::HashKv(hash)) => {
                    hashes.push((member, hash.header.map(|header| header.revision), hash.hash));
                }
                (FinalCall::Leases, Response::LeaseLeases(leases)) => {
                    let ids: BTreeSet<i64> = leases.leases.iter().map(|lease| lease.id).collect();
                    lease_lists.push((member, ids));
                }
                (kind, response) => panic!("a final {kind:?} answered with {response:?}"),
            }
        }
        if hashes
            .windows(2)
            .any(|pair| (pair[0].1, pair[0].2) != (pair[1].1, pair[1].2))
        {
            return Err(self.failure(format!("members differ: (member, revision, hash) {hashes:?}")));
        }
        if let Some((member, leases)) = lease_lists.iter().find(|(_, leases)| !leases.is_empty()) {
            return Err(self.failure(format!("member {member} lists leases {leases:x?} at the end")));
        }
        self.check_leases()?;
        self.check_history()?;
        let mut digest = std::hash::DefaultHasher::new();
        format!("{:?}", self.history).hash(&mut digest);
        self.report.history_digest = digest.finish();
        self.report.steps = self.steps;
        self.report.virtual_time = Duration::from_micros(self.now_us);
        self.report.slow_read_indexes = self
            .members
            .iter()
            .filter_map(|member| member.running.as_ref())
            .map(|running| running.core.slow_read_indexes())
            .sum();
        Ok(self.report)
    }

    /// The id of member `member`'s final call `kind` (the clients' ids
    /// carry their number below `clients.len()` in the high half).
    fn final_call_id(&self, member: usize, kind: FinalCall) -> u64 {
        let caller = (self.clients.len() + member) as u64;
        let number = match kind {
            FinalCall::Read(key) => FINAL_KEYS.iter().position(|k| *k == key).expect("a final key") as u64,
            FinalCall::HashKv => 99,
            FinalCall::Leases => 98,
        };
        caller << 32 | number
    }

    /// The cluster's members (slot, learner), as the freshest member applied them.
    fn current_members(&self) -> Vec<(usize, bool)> {
        self.cluster_membership()
            .map(|membership| self.slots_of(&membership))
            .unwrap_or_default()
    }

    /// Whether the cluster's members all run, have applied the same entries,
    /// and hold no lease: nothing is left to change their data.
    fn quiet(&self) -> bool {
        let members = self.current_members();
        let mut states = members.iter().map(|&(member, _)| {
            let running = self.members[member].running.as_ref();
            running.map(|running| running.core.applied_and_leases())
        });
        let Some(Some((applied, 0))) = states.next() else {
            return false;
        };
        states.all(|state| state == Some((applied, 0)))
    }

    /// No lease expired early by its expiring leader's clock, and every
    /// answer that a lease was gone agrees with its removal.
    fn check_leases(&mut self) -> Result<(), SimFailure> {
        let clocks: Vec<MemberClock> = self.members.iter().map(|member| member.clock.clone()).collect();
        self.leases
            .check(|member, virtual_us| clocks[member].local_us(virtual_us))
            .map_err(|why| self.failure(why))?;
        self.report.lease_ends += self.leases.lease_ends().map_err(|why| self.failure(why))?.len() as u64;
        Ok(())
    }

    /// The clients' history, final reads and lease ends included, is linearizable.
    fn check_history(&mut self) -> Result<(), SimFailure> {
        let ends = self.leases.lease_ends().map_err(|why| self.failure(why))?;
        self.history.extend(ends);
        match lincheck::check(&self.history, Budget::default()) {
            Verdict::Linearizable => Ok(()),
            Verdict::Violation { key, explanation } => {
                Err(self.failure(format!("not linearizable on {key}:\n{explanation}")))
            }
            Verdict::Inconclusive { key } => Err(self.failure(format!("the checker ran out of budget on {key}"))),
        }
    }

    /// Each member's raft, as it stands.
    fn raft_statuses(&self) -> String {
        let statuses: Vec<String> = self
            .members
            .iter()
            .map(|member| match &member.running {
                Some(running) => format!(
                    "member {}: {} (paused until {:?} µs)",
                    member.index,
                    running.core.raft_status(),
                    member.paused_until_us
                ),
                None => format!("member {}: down", member.index),
            })
            .collect();
        statuses.join("; ")
    }

    fn failure(&self, why: String) -> SimFailure {
        SimFailure {
            at: Duration::from_micros(self.now_us),
            why,
        }
    }
}

//! One simulated run: members, clients, the network and the faults, driven
//! by one seeded scheduler on one virtual clock. Every choice (delays,
//! losses, crashes, what a client does next, raft's election timeouts) comes
//! from the run's seed, so a run replays exactly from its number.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant, SystemTime};

use raft::eraftpb::MessageType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_datadir::cluster::InitialMember;
use ringkv_engine::page::PAGE_BYTES;
use ringkv_proto::etcdserverpb as pb;

use super::disk::SimDisk;
use super::lincheck::{self, Budget, Op, Outcome, Verdict};
use super::member::{initial_cluster, Member, MemberTiming};
use super::network::{Network, NetworkFaults};
use super::workload::{self, InFlight};
use super::{Sabotage, SimConfig, SimFailure, SimReport};
use crate::etcd_error::EtcdError;
use crate::peer::{PeerEvent, PeerMessage};
use crate::store::event::Event;
use crate::store::messages::{Call, Request, Response};
use crate::store::outbox::Effect;
use crate::store::wal_io::{self, WalJob};

/// The wall-clock time every run starts at (member ids are made from it).
const WALL_CLOCK_START_UNIX_SECONDS: u64 = 1_700_000_000;
/// How long a client waits for an answer before it gives up on the call
/// (longer than the members' request timeout, so that one answers first).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// After the faults: virtual time for the cluster to settle before the
/// final reads.
const SETTLE: Duration = Duration::from_secs(5);
/// Steps one run may take at most: a run that does not end is a failure.
const STEPS_MAX: u64 = 5_000_000;
/// Background steps (large reads, compaction) run back to back at most.
const BACKGROUND_STEPS_MAX: usize = 64;

/// Something that happens at a moment of the run.
enum Action {
    Tick(usize),
    CommitDue(usize),
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
    Crash(usize),
    Restart(usize),
    Partition,
    Heal,
    /// The end of the faults: the network heals and stays reliable.
    Calm,
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
    calm: bool,
    /// Answers to the final reads, by call id.
    final_answers: HashMap<u64, Result<Response, EtcdError>>,
    report: SimReport,
}

impl Cluster {
    pub fn new(seed: u64, config: SimConfig) -> Cluster {
        let cluster = initial_cluster(config.members);
        let members: Vec<Member> = (0..config.members).map(|index| Member::new(index, &cluster)).collect();
        let index_of = members.iter().map(|member| (member.id, member.index)).collect();
        let clients = (0..config.clients)
            .map(|_| Client {
                calling: None,
                calls: 0,
            })
            .collect();
        Cluster {
            config,
            rng: StdRng::seed_from_u64(seed),
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
            calm: false,
            final_answers: HashMap::new(),
            report: SimReport::default(),
        }
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_micros(self.now_us)
    }

    fn wall_clock(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(WALL_CLOCK_START_UNIX_SECONDS) + Duration::from_micros(self.now_us)
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
        let faults_end = self.config.faults_duration;
        self.at(faults_end, Action::Calm);
        let end_us = (faults_end + SETTLE).as_micros() as u64;
        while let Some(Reverse((time, seq))) = self.queue.pop() {
            if time > end_us {
                break;
            }
            self.steps += 1;
            if self.steps > STEPS_MAX {
                return Err(self.failure("the run did not end within its step budget".to_string()));
            }
            self.now_us = time;
            let action = self.actions.remove(&seq).expect("every queued step has an action");
            self.act(action).await?;
        }
        self.finish().await
    }

    async fn act(&mut self, action: Action) -> Result<(), SimFailure> {
        match action {
            Action::Tick(member) => {
                self.deliver(member, None, Event::Tick).await?;
                let every = self.timing().heartbeat_interval;
                self.at(every, Action::Tick(member));
            }
            Action::CommitDue(member) => {
                self.deliver(member, None, Event::CommitDue).await?;
                let every = self.timing().backend_batch_interval;
                self.at(every, Action::CommitDue(member));
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
            Action::Crash(member) => self.crash(member).await,
            Action::Restart(member) => {
                if self.members[member].running.is_none() {
                    self.start_member(member).await?;
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
                for member in 0..self.members.len() {
                    if self.members[member].running.is_none() {
                        self.start_member(member).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The configured damage (`Sabotage`), for the checks to catch.
    fn sabotage(&mut self) {
        match self.config.sabotage {
            Sabotage::None | Sabotage::WriteBehindRaft => {}
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
            let member = self.rng.gen_range(0..self.members.len());
            self.at(at, Action::Crash(member));
            let down = Duration::from_millis(self.rng.gen_range(10..3000));
            self.at(at + down, Action::Restart(member));
        }
        for _ in 0..self.config.partitions {
            let at = Duration::from_micros(self.rng.gen_range(0..period_us));
            self.at(at, Action::Partition);
            let lasting = Duration::from_millis(self.rng.gen_range(100..4000));
            self.at(at + lasting, Action::Heal);
        }
    }

    async fn start_member(&mut self, index: usize) -> Result<(), SimFailure> {
        let (now, wall_clock, timing) = (self.now(), self.wall_clock(), self.timing());
        let cluster = self.cluster.clone();
        if let Err(error) = self.members[index].start(&cluster, timing, now, wall_clock).await {
            return Err(self.failure(format!("member {index} did not start: {error}")));
        }
        self.report.starts += 1;
        // Timers start at a random phase, as separate processes' do.
        let phase = Duration::from_micros(self.rng.gen_range(0..timing.heartbeat_interval.as_micros() as u64));
        self.at(phase, Action::Tick(index));
        self.at(timing.backend_batch_interval + phase, Action::CommitDue(index));
        let peers: Vec<(u64, usize)> = self
            .members
            .iter()
            .filter(|member| member.index != index)
            .map(|member| (member.id, member.index))
            .collect();
        let incarnation = self.members[index].incarnation;
        for (peer, _) in peers {
            let event = Event::Peer(PeerEvent::Connected { peer, link: 0, at: now });
            self.at(
                Duration::ZERO,
                Action::Deliver {
                    to: index,
                    incarnation,
                    event: Box::new(event),
                },
            );
        }
        self.at(
            Duration::ZERO,
            Action::Background {
                member: index,
                incarnation,
            },
        );
        Ok(())
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
        let now = self.now();
        let running = self.members[member].running.as_mut().expect("checked above");
        running.core.handle(now, event);
        self.after_events(member).await
    }

    /// `drive`, background steps, then the effects.
    async fn after_events(&mut self, member: usize) -> Result<(), SimFailure> {
        let now = self.now();
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
            self.at(rest, Action::Background { member, incarnation });
        }
        let effects = self.members[member]
            .running
            .as_mut()
            .expect("the member runs")
            .core
            .take_effects();
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
            Effect::WatchPush { .. } | Effect::Peers { .. } => {}
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
            Effect::Stop => return Err(self.failure("a member stopped: no member is removed here".to_string())),
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
        // Calls in flight to the crashed member: the clients lose them.
        for client in 0..self.clients.len() {
            if self.clients[client]
                .calling
                .as_ref()
                .is_some_and(|calling| calling.member == member)
            {
                self.client_done(client, Outcome::Unknown);
            }
        }
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
        let (op, request) = workload::random_op(&mut self.rng, call_id);
        if !self.is_running(member, None) {
            // Connection refused: nothing was sent.
            let think = self.think_time();
            self.at(think, Action::ClientStep(client));
            return Ok(());
        }
        let call = InFlight {
            op,
            invoke_us: self.now_us,
        };
        self.clients[client].calling = Some(Calling { member, call_id, call });
        self.at(CLIENT_TIMEOUT, Action::ClientTimeout { client, call_id });
        self.call(member, call_id, request).await
    }

    async fn call(&mut self, member: usize, call_id: u64, request: Request) -> Result<(), SimFailure> {
        let call = Call {
            id: call_id,
            request,
            require_leader: false,
            client_rpc: true,
        };
        self.deliver(member, None, Event::Call { client: 0, call }).await
    }

    fn client_answered(&mut self, call_id: u64, result: Result<Response, EtcdError>) {
        let client = (call_id >> 32) as usize;
        if client >= self.clients.len() {
            // A final read's answer: kept for `finish`.
            self.final_answers.insert(call_id, result);
            return;
        }
        let Some(calling) = self.clients[client]
            .calling
            .as_ref()
            .filter(|calling| calling.call_id == call_id)
        else {
            return; // given up on already
        };
        let outcome = match result {
            Ok(response) => workload::outcome(&calling.call.op, response),
            Err(_) => Outcome::Unknown,
        };
        self.client_done(client, outcome);
    }

    fn client_gives_up(&mut self, client: usize, call_id: u64) {
        if self.clients[client]
            .calling
            .as_ref()
            .is_some_and(|calling| calling.call_id == call_id)
        {
            self.client_done(client, Outcome::Unknown);
        }
    }

    fn client_done(&mut self, client: usize, outcome: Outcome) {
        let calling = self.clients[client].calling.take().expect("a call in flight");
        if outcome == Outcome::Unknown {
            self.report.unknown_outcomes += 1;
        } else {
            self.report.operations += 1;
        }
        self.history
            .push(workload::completed(client as u32, calling.call, self.now_us, outcome));
        let think = self.think_time();
        self.at(think, Action::ClientStep(client));
    }

    /// After the settling time: every member reads every key, the history
    /// must be linearizable, and the members must hold the same data.
    async fn finish(mut self) -> Result<SimReport, SimFailure> {
        if self.config.sabotage == Sabotage::WriteBehindRaft {
            if let Some(running) = self.members.iter_mut().find_map(|member| member.running.as_mut()) {
                running.core.write_behind_raft(b"a", b"behind raft");
            }
        }
        // A call still unanswered may yet be applied: its outcome is unknown.
        for client in 0..self.clients.len() {
            if self.clients[client].calling.is_some() {
                self.client_done(client, Outcome::Unknown);
            }
        }
        let reader = self.clients.len() as u64;
        let keys = ["a", "b", "c"];
        let mut reads = Vec::new();
        for member in 0..self.members.len() {
            for (k, key) in keys.iter().enumerate() {
                let call_id = (reader + member as u64) << 32 | k as u64;
                reads.push((call_id, member, key.to_string(), self.now_us));
                self.call(member, call_id, Request::Range(workload::range(key))).await?;
            }
            let call_id = (reader + member as u64) << 32 | 99;
            let hash = Request::HashKv(pb::HashKvRequest { revision: 0 });
            self.call(member, call_id, hash).await?;
        }
        // Let the reads and hashes be answered.
        let end_us = self.now_us + Duration::from_secs(3).as_micros() as u64;
        while let Some(Reverse((time, seq))) = self.queue.pop() {
            if time > end_us || self.final_answers.len() == reads.len() + self.members.len() {
                break;
            }
            self.now_us = time;
            let action = self.actions.remove(&seq).expect("every queued step has an action");
            self.act(action).await?;
        }
        for (call_id, member, key, invoke_us) in reads {
            let Some(result) = self.final_answers.remove(&call_id) else {
                return Err(self.failure(format!("member {member}'s final read of {key} was not answered")));
            };
            let response = result.map_err(|error| self.failure(format!("member {member}'s final read: {error}")))?;
            let op = Op::Get { key };
            let outcome = workload::outcome(&op, response);
            let call = InFlight { op, invoke_us };
            self.history.push(workload::completed(
                reader as u32 + member as u32,
                call,
                self.now_us,
                outcome,
            ));
        }
        let mut hashes = Vec::new();
        for member in 0..self.members.len() {
            let call_id = (reader + member as u64) << 32 | 99;
            match self.final_answers.remove(&call_id) {
                Some(Ok(Response::HashKv(hash))) => hashes.push((hash.header.map(|h| h.revision), hash.hash)),
                other => return Err(self.failure(format!("member {member}'s HashKV: {other:?}"))),
            }
        }
        if hashes.windows(2).any(|pair| pair[0] != pair[1]) {
            return Err(self.failure(format!("members differ: (revision, hash) {hashes:?}")));
        }
        match lincheck::check(&self.history, Budget::default()) {
            Verdict::Linearizable => {}
            Verdict::Violation { key, explanation } => {
                return Err(self.failure(format!("not linearizable on {key}:\n{explanation}")));
            }
            Verdict::Inconclusive { key } => {
                return Err(self.failure(format!("the checker ran out of budget on {key}")));
            }
        }
        let mut digest = std::hash::DefaultHasher::new();
        format!("{:?}", self.history).hash(&mut digest);
        self.report.history_digest = digest.finish();
        self.report.steps = self.steps;
        self.report.virtual_time = Duration::from_micros(self.now_us);
        Ok(self.report)
    }

    fn failure(&self, why: String) -> SimFailure {
        SimFailure {
            at: Duration::from_micros(self.now_us),
            why,
        }
    }
}

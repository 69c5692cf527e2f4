//! The store core's glommio side: carries out the core's effects (`outbox`)
//! with the WAL task, blocking threads for page-store commits, the peer
//! transport and the client cores' channels; what comes of them returns to
//! the core as events on its channel.

use std::rc::Rc;
use std::time::Instant;

use glommio::channels::local_channel::LocalSender;
use ringkv_engine::mvcc::CommitPlan;

use super::event::Event;
use super::messages::{Reply, Response};
use super::outbox::Effect;
use super::wal_io::WalJob;
use super::watchers::WatchOutlet;
use crate::fatal::fatal;
use crate::peer::{PeerEvent, PeerMessage, PeerTransport};

/// What the store core's effects are carried out with.
pub struct Shell {
    pub events: Rc<LocalSender<Event>>,
    pub wal_jobs: LocalSender<WalJob>,
    pub transport: PeerTransport,
    pub replies: Vec<flume::Sender<Reply>>,
    pub watch_outlet: WatchOutlet,
}

impl Shell {
    /// Carries out `effects` in order.
    pub fn carry_out(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Wal(job) => {
                    if self.wal_jobs.try_send(job).is_err() {
                        fatal("the WAL task stopped");
                    }
                }
                Effect::Commit(plan) => self.execute_commit(plan),
                Effect::Reply { client, reply } => self.reply(client, reply),
                Effect::WatchPush { client, push } => self.watch_outlet.push(client, push),
                Effect::Raft(messages) => self.transport.send(messages),
                Effect::ToPeer { to, message } => {
                    // Only ringkv's own messages have a caller waiting on them.
                    let kept = (!matches!(message, PeerMessage::Raft(_))).then(|| message.clone());
                    if !self.transport.send_to(to, message) {
                        if let Some(message) = kept {
                            self.report(PeerEvent::Undelivered { to, message });
                        }
                    }
                }
                Effect::SendSnapshot { to, message, source } => {
                    if let Err(source) = self.transport.send_snapshot(to, message, source) {
                        let txid = source.txid();
                        self.report(PeerEvent::SnapshotSent {
                            to,
                            txid,
                            delivered: false,
                        });
                    }
                }
                Effect::AskHashKvs {
                    check,
                    revision,
                    peers,
                    timeout,
                } => self.transport.ask_hash_kvs(check, revision, peers, timeout),
                Effect::AnswerHashKv { query, answer } => self.transport.answer_hash_kv(query, answer),
                Effect::Peers { peers, membership } => {
                    self.transport.set_peers(&peers);
                    self.transport.set_membership(membership);
                }
                Effect::Stop => {
                    let message = "the member has been permanently removed from the cluster";
                    tracing::error!("{message}; its data directory must not be used again");
                    eprintln!("ringkv: {message}");
                    std::process::exit(0);
                }
            }
        }
        self.watch_outlet.flush();
    }

    fn report(&self, event: PeerEvent) {
        // The store core outlives its shell; a closed channel means shutdown.
        let _ = self.events.try_send(Event::Peer(event));
    }

    fn reply(&self, client: usize, mut reply: Reply) {
        // The peer port's counts are the transport's, which the core does not see.
        if let Ok(Response::Metrics(metrics)) = &mut reply.result {
            metrics.peer_connections_rejected = self.transport.drops().connections_rejected;
            metrics.peer_traffic = self.transport.traffic();
        }
        // Client cores admit at most as many calls as their reply channel holds,
        // so this never finds the channel full.
        if self.replies[client].try_send(reply).is_err() {
            tracing::warn!(client, "reply channel closed; dropping a reply");
        }
    }

    /// Runs a commit's writes and fsyncs on a blocking thread; `Committed` reports them.
    fn execute_commit(&self, plan: CommitPlan) {
        let events = Rc::clone(&self.events);
        glommio::spawn_local(async move {
            let (result, elapsed) = glommio::executor()
                .spawn_blocking(move || {
                    let started = Instant::now();
                    let result = plan.execute();
                    (result, started.elapsed())
                })
                .await;
            // The store core outlives this task; a closed channel means shutdown.
            let _ = events.try_send(Event::Committed { result, elapsed });
        })
        .detach();
    }
}

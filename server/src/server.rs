//! Starting the executors: the store core first (it recovers the data), then the
//! client cores, each pinned to its CPU and wired to the store core by a pair of
//! bounded channels.

use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};
use ringkv_datadir::ids;
use ringkv_datadir::layout::{self, DataDirError, DataDirLock};
use ringkv_datadir::wal::Identity;

use crate::auth::jwt::JwtKeys;
use crate::client::auth_service::TokenKind;
use crate::client::{self, ClientCoreSettings};
use crate::config::auth_token::AuthToken;
use crate::config::{Config, Listen, MetricsLevel};
use crate::listener;
use crate::metrics::grpc::GrpcMetrics;
use crate::peer::{PeerNetwork, PeerTls};
use crate::store::membership::Membership;
use crate::store::{self, join, MemberInfo, Start, StoreCoreSettings, WatchChannels};
use crate::tls::{self, Port, TlsError};

/// Calls in flight from one client core to the store core; also the capacity of
/// each cross-core channel, so neither can overflow (see `client::store_client`).
const IN_FLIGHT_CALLS_PER_CLIENT_CORE: usize = 16 * 1024;
/// Watch commands queued from one client core to the store core (client tasks
/// wait for room: creates, cancels, credit returns).
const WATCH_COMMANDS_PER_CLIENT_CORE: usize = 4 * 1024;
/// Watch pushes queued from the store core to one client core; each push holds a
/// whole pass's notices, and the store core keeps what does not fit (bounded by
/// stream windows) for the next pass.
const WATCH_PUSHES_PER_CLIENT_CORE: usize = 256;
/// glommio's pool of DMA buffers on every executor: its minimum. Each executor
/// registers its pool with io_uring, so its pages stay resident (10 MiB each by
/// default), but nothing here uses registered buffers: client cores read and
/// write no files, and the store core's WAL appends with plain `pwrite`s from a
/// DMA buffer only for its alignment (`ringkv_engine::wal::io`), which a buffer
/// the pool cannot give has too (glommio then takes it from the heap).
const EXECUTOR_IO_MEMORY: usize = 64 * 1024;
/// How often each executor gives the memory its allocator holds freed back to
/// the OS (see `start`'s `return_freed_memory`).
const FREED_MEMORY_RETURN_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start an executor: {0}")]
    Executor(String),
    #[error("{0}")]
    Store(String),
    #[error("{0}")]
    Listen(String),
    #[error("cannot join the cluster: {0}")]
    Join(String),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Auth(String),
}

/// A client port as bound, and whether it speaks TLS.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr {
    pub addr: SocketAddr,
    pub tls: bool,
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.addr)
    }
}

/// A running server: the addresses it serves and its executor threads.
pub struct Running {
    pub identity: Identity,
    pub client_addrs: Vec<ClientAddr>,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    /// The data directory is this process's until it ends.
    _data_dir: DataDirLock,
}

impl Running {
    /// Blocks until every executor stops (they run until the process ends).
    pub fn wait(self) {
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// The client and metrics ports' TLS: (client port's, metrics ports'), each
/// only if one of its URLs is https.
type ClientTls = (Option<Arc<rustls::ServerConfig>>, Option<Arc<rustls::ServerConfig>>);

fn client_tls(config: &Config) -> Result<ClientTls, TlsError> {
    let https = |listens: &[Listen]| listens.iter().any(|listen| listen.tls);
    if !https(&config.listen_client) && !https(&config.listen_metrics) {
        return Ok((None, None));
    }
    let side = tls::Side::new(
        Port::Client,
        &config.client_tls,
        &config.tls_protocol,
        &config.client_hosts,
    )?;
    Ok((
        side.server_config(tls::ALPN_CLIENT_PORT)?,
        side.server_config(tls::ALPN_HTTP1)?,
    ))
}

/// The peer port's TLS: a server side if a listen URL is https, a dialing side
/// if any peer URL is https or peer TLS is configured (a member added later
/// may have an https URL).
fn peer_tls(config: &Config) -> Result<PeerTls, TlsError> {
    let files = &config.peer_tls;
    let listens = config.listen_peer.iter().any(|listen| listen.tls);
    let https_peers = config
        .initial_cluster
        .iter()
        .flat_map(|member| &member.peer_urls)
        .chain(&config.peer_urls)
        .any(|url| url.starts_with("https://"));
    let configured = files.can_serve() || files.trusted_ca_file.is_some();
    if !listens && !https_peers && !configured {
        return Ok(PeerTls::default());
    }
    let side = tls::Side::new(Port::Peer, files, &config.tls_protocol, &config.peer_hosts)?;
    Ok(PeerTls {
        accept: if listens { side.server_config(&[])? } else { None },
        dial: Some(side.client_config()?),
    })
}

/// Starts the store core and the client cores. Each executor calls
/// `return_freed_memory` every `FREED_MEMORY_RETURN_INTERVAL`: the binary's
/// allocator gives freed memory back to the OS only when the thread that freed
/// it later allocates on a slow path, so an executor that goes quiet after a
/// burst (a full list's pages of values) kept it (docs/benchmarks.md).
pub fn start(config: &Config, return_freed_memory: fn()) -> Result<Running, StartError> {
    // Before anything reads or writes it, even a joiner's discovery.
    let data_dir = layout::claim(&config.data_dir)?;
    // Certificates are read now: a missing or bad file is a start error.
    let (client_tls, metrics_tls) = client_tls(config)?;
    let peer_tls = peer_tls(config)?;
    let (identity, initial_membership, start, join_peers) = if config.join_existing && layout::is_new(&config.data_dir)
    {
        let joined = join::discover(&config.peer_urls, &config.initial_cluster, peer_tls.dial.as_ref())
            .map_err(StartError::Join)?;
        tracing::info!(
            member_id = format_args!("{:x}", joined.identity.member_id),
            cluster_id = format_args!("{:x}", joined.identity.cluster_id),
            "joining a running cluster"
        );
        (joined.identity, joined.initial_membership, Start::Join, joined.peers)
    } else {
        let initial_membership = Membership::initial(&config.initial_cluster, &config.cluster_token);
        let member_id = ids::member_id(&config.peer_urls, &config.cluster_token);
        assert!(
            initial_membership.contains(member_id),
            "config checks that --initial-cluster names this member with its peer URLs"
        );
        let identity = Identity {
            member_id,
            cluster_id: initial_membership.cluster_id(),
        };
        // A joiner's later start: until caught up, it also talks to whom the
        // others list (see `join::current_peers`).
        let join_peers = if config.join_existing {
            join::current_peers(&config.peer_urls, &config.initial_cluster, peer_tls.dial.as_ref())
        } else {
            Vec::new()
        };
        (identity, initial_membership, Start::New, join_peers)
    };
    let client_cores = config.client_cpus.len();
    let mut call_senders = Vec::with_capacity(client_cores);
    let mut call_receivers = Vec::with_capacity(client_cores);
    let mut reply_senders = Vec::with_capacity(client_cores);
    let mut reply_receivers = Vec::with_capacity(client_cores);
    let mut watch_command_senders = Vec::with_capacity(client_cores);
    let mut watch = WatchChannels {
        commands: Vec::with_capacity(client_cores),
        pushes: Vec::with_capacity(client_cores),
    };
    let mut watch_push_receivers = Vec::with_capacity(client_cores);
    for _ in 0..client_cores {
        // Calls and replies cross cores on flume channels, not glommio's: a
        // glommio shared channel wakes the sending core on every receive, so a
        // lone call woke each core once more than it needed (docs/benchmarks.md).
        // Both ends only ever `try_send` (the client core's permits bound the
        // calls in flight), so no sender waits for room.
        let (tx, rx) = flume::bounded(IN_FLIGHT_CALLS_PER_CLIENT_CORE);
        call_senders.push(tx);
        call_receivers.push(rx);
        let (tx, rx) = flume::bounded(IN_FLIGHT_CALLS_PER_CLIENT_CORE);
        reply_senders.push(tx);
        reply_receivers.push(rx);
        let (tx, rx) = shared_channel::new_bounded(WATCH_COMMANDS_PER_CLIENT_CORE);
        watch_command_senders.push(tx);
        watch.commands.push(rx);
        let (tx, rx) = shared_channel::new_bounded(WATCH_PUSHES_PER_CLIENT_CORE);
        watch.pushes.push(tx);
        watch_push_receivers.push(rx);
    }

    // Bound before the store recovers, as etcd binds before it opens its
    // backend: a client that connects meanwhile waits in the listen backlog
    // until the client cores accept, where a refused connection would make
    // grpc-go back off for a second before it tries again. Shared: each client
    // core accepts on its own duplicate of every socket (see `listener::bind`).
    let bind = |listens: &[Listen]| -> Result<Vec<client::Socket>, StartError> {
        listens
            .iter()
            .map(|listen| {
                let socket =
                    listener::bind_at_start(listen.addr).map_err(|error| StartError::Listen(error.to_string()))?;
                Ok(client::Socket {
                    socket,
                    tls: listen.tls,
                })
            })
            .collect()
    };
    let client_listeners = bind(&config.listen_client)?;
    let metrics_listeners = bind(&config.listen_metrics)?;
    // Every executor starts at once: the watch channels connect only when
    // both ends are running. Clients are accepted only once the store has
    // recovered.
    let mut threads = Vec::with_capacity(client_cores + 1);
    let (ready_tx, ready_rx) = mpsc::channel();
    let store_settings = StoreCoreSettings {
        data_dir: config.data_dir.clone(),
        identity,
        initial_membership,
        start,
        join_peers,
        peer_network: PeerNetwork {
            listen: config.listen_peer.clone(),
            tls: peer_tls,
        },
        heartbeat_interval: config.heartbeat_interval,
        election_ticks: config.election_ticks,
        catch_up_entries: config.snapshot_count,
        max_request_bytes: config.max_request_bytes,
        response_bytes_max: config.response_bytes_max,
        backend_batch_limit: config.backend_batch_limit,
        backend_batch_interval: config.backend_batch_interval,
        member: MemberInfo {
            name: config.name.clone(),
            peer_urls: config.peer_urls.clone(),
            client_urls: config.advertise_client_urls.clone(),
        },
        quota_backend_bytes: config.quota_backend_bytes,
        auto_compaction: config.auto_compaction,
        watch_progress_notify_interval: config.watch_progress_notify_interval,
        initial_corrupt_check: config.initial_corrupt_check,
        corrupt_check_interval: config.corrupt_check_interval,
        simple_token_ttl: config.simple_token_ttl,
    };
    threads.push(
        LocalExecutorBuilder::new(Placement::Fixed(config.store_cpu))
            .name("ringkv-store")
            .io_memory(EXECUTOR_IO_MEMORY)
            .spawn(move || async move {
                return_freed_memory_periodically(return_freed_memory);
                store::run(store_settings, call_receivers, reply_senders, watch, ready_tx).await
            })
            .map_err(|e| StartError::Executor(e.to_string()))?,
    );
    let auth_tokens = match &config.auth_token {
        AuthToken::Simple => TokenKind::Simple,
        AuthToken::Jwt(options) => TokenKind::Jwt(Arc::new(
            JwtKeys::load(options).map_err(|error| StartError::Auth(error.to_string()))?,
        )),
    };
    let handling_histogram = config.metrics == MetricsLevel::Extensive;
    let grpc_metrics = GrpcMetrics::new(handling_histogram, client_cores);
    let mut clients = Vec::with_capacity(client_cores);
    for (index, ((((calls, replies), watch_commands), watch_pushes), cpu)) in call_senders
        .into_iter()
        .zip(reply_receivers)
        .zip(watch_command_senders)
        .zip(watch_push_receivers)
        .zip(config.client_cpus.iter().copied())
        .enumerate()
    {
        let settings = ClientCoreSettings {
            max_txn_ops: config.max_txn_ops,
            max_request_bytes: config.max_request_bytes,
            max_concurrent_streams: config.max_concurrent_streams,
            in_flight_calls_max: IN_FLIGHT_CALLS_PER_CLIENT_CORE,
            election_timeout: config.heartbeat_interval * config.election_ticks as u32,
            client_tls: client_tls.clone(),
            metrics_tls: metrics_tls.clone(),
            auth_tokens: auth_tokens.clone(),
            bcrypt_cost: config.bcrypt_cost,
            grpc_metrics: grpc_metrics.core(index),
        };
        let (listen_tx, listen_rx) = mpsc::channel();
        threads.push(
            LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("ringkv-client-{index}"))
                .io_memory(EXECUTOR_IO_MEMORY)
                .spawn(move || async move {
                    return_freed_memory_periodically(return_freed_memory);
                    client::run(settings, calls, replies, watch_commands, watch_pushes, listen_rx).await
                })
                .map_err(|e| StartError::Executor(e.to_string()))?,
        );
        clients.push(listen_tx);
    }
    let identity = ready_rx
        .recv()
        .map_err(|_| StartError::Store("the store core stopped while starting".to_string()))?
        .map_err(StartError::Store)?;

    let client_addrs = client_listeners
        .iter()
        .map(|listener| {
            let addr = listener.socket.local_addr()?;
            Ok(ClientAddr {
                addr,
                tls: listener.tls,
            })
        })
        .collect::<Result<Vec<_>, std::io::Error>>()
        .map_err(|error| StartError::Listen(error.to_string()))?;
    let duplicate = |listeners: &[client::Socket]| -> Result<Vec<client::Socket>, StartError> {
        listeners
            .iter()
            .map(|listener| {
                let socket = listener
                    .socket
                    .try_clone()
                    .map_err(|error| StartError::Listen(error.to_string()))?;
                Ok(client::Socket {
                    socket,
                    tls: listener.tls,
                })
            })
            .collect()
    };
    for (index, listen_tx) in clients.into_iter().enumerate() {
        let listeners = client::Listeners {
            client: duplicate(&client_listeners)?,
            // The first client core also serves the metrics URLs.
            metrics: if index == 0 {
                duplicate(&metrics_listeners)?
            } else {
                Vec::new()
            },
        };
        listen_tx
            .send(listeners)
            .map_err(|_| StartError::Listen("a client core stopped while starting".to_string()))?;
    }
    Ok(Running {
        identity,
        client_addrs,
        threads,
        _data_dir: data_dir,
    })
}

/// Calls `return_freed_memory` on this executor every
/// `FREED_MEMORY_RETURN_INTERVAL`, for as long as the executor runs.
fn return_freed_memory_periodically(return_freed_memory: fn()) {
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(FREED_MEMORY_RETURN_INTERVAL).await;
            return_freed_memory();
        }
    })
    .detach();
}

#[cfg(test)]
mod tests {
    //! The executors' periodic return of freed memory; and their wake-ups and
    //! preemption, as `vendor/glommio`'s patch leaves them (its RINGKV-PATCH.md):
    //! a park fenced instead of `membarrier`, and preemption timers kept armed
    //! from one pass of the loop to the next.

    use std::cell::Cell;
    use std::rc::Rc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use glommio::LocalExecutorBuilder;

    /// Generous: a lost wake-up hangs for ever, a working pair takes well under a second.
    const HANG: Duration = Duration::from_secs(60);

    #[test]
    fn an_executor_returns_freed_memory_every_interval_while_it_runs() {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        fn count_call() {
            CALLS.fetch_add(1, Ordering::Relaxed);
        }
        let executor = LocalExecutorBuilder::default()
            .spawn(|| async {
                super::return_freed_memory_periodically(count_call);
                let start = Instant::now();
                while CALLS.load(Ordering::Relaxed) < 2 && start.elapsed() < HANG {
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
            })
            .unwrap();
        executor.join().unwrap();
        assert!(
            CALLS.load(Ordering::Relaxed) >= 2,
            "called {} times",
            CALLS.load(Ordering::Relaxed)
        );
    }

    #[test]
    fn messages_between_executors_that_park_between_them_always_wake_the_receiver() {
        // Every message finds its receiver parked or about to park (each side
        // waits for the other's answer): a wake-up lost between a waker's send
        // and a sleeper's last look at its queues would stop the exchange.
        const ROUND_TRIPS: u64 = 20_000;
        let (to_echo, echo_inbox) = flume::bounded::<u64>(1);
        let (to_caller, caller_inbox) = flume::bounded::<u64>(1);
        let echo = LocalExecutorBuilder::default()
            .spawn(move || async move {
                while let Ok(n) = echo_inbox.recv_async().await {
                    to_caller.send_async(n + 1).await.unwrap();
                }
            })
            .unwrap();
        let (done, finished) = mpsc::channel();
        let caller = LocalExecutorBuilder::default()
            .spawn(move || async move {
                let mut n = 0;
                for _ in 0..ROUND_TRIPS {
                    to_echo.send_async(n).await.unwrap();
                    n = caller_inbox.recv_async().await.unwrap();
                }
                done.send(n).unwrap();
            })
            .unwrap();
        assert_eq!(finished.recv_timeout(HANG), Ok(ROUND_TRIPS), "a wake-up was lost");
        caller.join().unwrap();
        echo.join().unwrap();
    }

    #[test]
    fn a_task_that_only_yields_when_asked_still_lets_a_timer_fire() {
        // The store core's background steps rely on `yield_if_needed` to let
        // the reactor in: the preemption timer must keep firing while one task
        // runs, also once it is no longer armed on every pass.
        let handle = LocalExecutorBuilder::default()
            .spawn(|| async move {
                let fired = Rc::new(Cell::new(false));
                let timer = glommio::spawn_local({
                    let fired = Rc::clone(&fired);
                    async move {
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                        fired.set(true);
                    }
                });
                // A park first: the loop's preemption timer is taken for it and
                // armed again after.
                glommio::timer::sleep(Duration::from_millis(1)).await;
                let started = Instant::now();
                while !fired.get() && started.elapsed() < HANG {
                    glommio::yield_if_needed().await;
                }
                let fired_while_running = fired.get();
                timer.await;
                fired_while_running
            })
            .unwrap();
        assert!(handle.join().unwrap(), "the timer never fired while the task ran");
    }
}

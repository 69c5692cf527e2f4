//! A client core: listeners on the client port, HTTP/2 + gRPC and HTTP/1.1
//! (with the JSON gateway), and the etcd API handed over to the store core.

pub mod auth_service;
mod concurrency;
pub(crate) mod election_service;
pub(crate) mod etcd_service;
mod gateway;
pub(crate) mod health;
mod http;
mod leader_monitor;
pub(crate) mod lease_service;
pub(crate) mod lock_service;
mod snapshot;
mod store_client;
pub(crate) mod watch;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::channels::shared_channel::{SharedReceiver, SharedSender};

use crate::listener;
use crate::metrics::grpc::GrpcCore;
use crate::net::{self, ConnectionLimits};
use crate::store::messages::{Call, Reply};
use crate::watch::{WatchCommand, WatchPush};
use etcd_service::EtcdService;
use leader_monitor::LeaderMonitor;
use store_client::StoreClient;
use watch::WatchRouter;

/// gRPC accepts messages this much larger than `--max-request-bytes`, as etcd's
/// server does; the proposal size check then gives etcd's own error.
const GRPC_RECV_SLACK_BYTES: usize = 512 * 1024;

pub struct ClientCoreSettings {
    pub max_txn_ops: usize,
    pub max_request_bytes: usize,
    /// `--max-concurrent-streams`.
    pub max_concurrent_streams: u32,
    /// Calls in flight to the store core from this client core.
    pub in_flight_calls_max: usize,
    /// `--election-timeout`: how often streams that require a leader check.
    pub election_timeout: Duration,
    /// The https client URLs' TLS (ALPN h2 and http/1.1).
    pub client_tls: Option<Arc<rustls::ServerConfig>>,
    /// The https metrics URLs' TLS (ALPN http/1.1).
    pub metrics_tls: Option<Arc<rustls::ServerConfig>>,
    /// `--auth-token`'s tokens.
    pub auth_tokens: auth_service::TokenKind,
    /// `--bcrypt-cost`.
    pub bcrypt_cost: u32,
    /// This core's gRPC counters, among every client core's.
    pub grpc_metrics: GrpcCore,
}

/// The listening sockets one client core accepts on: duplicates of the ones
/// the starting thread bound (`listener::bind`), shared by every client core.
pub struct Listeners {
    pub client: Vec<Socket>,
    /// `--listen-metrics-urls` (HTTP only), served by one client core.
    pub metrics: Vec<Socket>,
}

/// One listening socket, and whether its URL is https.
pub struct Socket {
    pub socket: std::net::TcpListener,
    pub tls: bool,
}

/// Connects to the store core, waits for its listeners (sent once the store is
/// ready) and serves them until the process ends.
pub async fn run(
    settings: ClientCoreSettings,
    calls: flume::Sender<Call>,
    replies: flume::Receiver<Reply>,
    watch_commands: SharedSender<WatchCommand>,
    watch_pushes: SharedReceiver<WatchPush>,
    listeners: std::sync::mpsc::Receiver<Listeners>,
) {
    settings.grpc_metrics.install();
    // Both at once: each watch channel waits for the store core to connect its end.
    let watch_commands = glommio::spawn_local(watch_commands.connect());
    let watch_pushes = glommio::spawn_local(watch_pushes.connect());
    let (watch_commands, watch_pushes) = (watch_commands.await, watch_pushes.await);
    let watches = WatchRouter::start(watch_commands, watch_pushes, settings.max_request_bytes);
    let store = StoreClient::new(calls, settings.in_flight_calls_max);
    glommio::spawn_local(Rc::clone(&store).pump_replies(replies)).detach();
    let Some(listeners) = wait_for_listeners(&listeners).await else {
        return;
    };

    let leader_monitor = LeaderMonitor::new(Rc::clone(&store), settings.election_timeout);
    let service = Rc::new(EtcdService::new(
        Rc::clone(&store),
        watches,
        leader_monitor,
        settings.max_txn_ops,
        auth_service::ClientAuth::new(settings.auth_tokens, settings.bcrypt_cost),
    ));
    // The metrics URLs serve no gateway, as etcd's.
    let metrics_http = Rc::new(http::EtcdHttp::new(Rc::clone(&store), None));
    let gateway = gateway::Gateway::new(Rc::clone(&service));
    let http = Rc::new(http::EtcdHttp::new(store, Some(gateway)));
    let mut limits = ConnectionLimits::default();
    limits.http2.max_recv_message_bytes = settings.max_request_bytes + GRPC_RECV_SLACK_BYTES;
    limits.http1_body_bytes_max = gateway_body_bytes_max(settings.max_request_bytes);
    limits.http2.max_concurrent_streams = settings.max_concurrent_streams;
    // An https socket has TLS: config refuses an https URL without a certificate.
    let tls = |socket: &Socket, config: &Option<Arc<rustls::ServerConfig>>| {
        socket.tls.then(|| {
            let config = config.as_ref().expect("an https URL has a certificate");
            net::TlsPort::new(Arc::clone(config))
        })
    };
    for socket in listeners.metrics {
        let tls = tls(&socket, &settings.metrics_tls);
        glommio::spawn_local(net::serve_http_port(
            listener::adopt(socket.socket),
            Rc::clone(&metrics_http),
            limits.clone(),
            tls,
        ))
        .detach();
    }
    let tasks: Vec<_> = listeners
        .client
        .into_iter()
        .map(|socket| {
            let tls = tls(&socket, &settings.client_tls);
            glommio::spawn_local(net::serve_client_port(
                listener::adopt(socket.socket),
                Rc::clone(&service),
                Rc::clone(&http),
                limits.clone(),
                tls,
            ))
        })
        .collect();
    for task in tasks {
        task.await;
    }
}

/// The largest JSON gateway request body: a request of `--max-request-bytes`
/// in JSON, its bytes in base64 (4 characters per 3 bytes) with room for the
/// JSON around them.
fn gateway_body_bytes_max(max_request_bytes: usize) -> usize {
    max_request_bytes / 3 * 4 + GRPC_RECV_SLACK_BYTES
}

/// The sockets to serve, sent from the starting thread; None if it gave up.
async fn wait_for_listeners(listeners: &std::sync::mpsc::Receiver<Listeners>) -> Option<Listeners> {
    loop {
        match listeners.try_recv() {
            Ok(listeners) => return Some(listeners),
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return None,
        }
    }
}

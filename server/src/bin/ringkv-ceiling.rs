//! `ringkv-ceiling`: a do-nothing etcd KV endpoint on ringkv's own network,
//! HTTP/2 and gRPC layers, for `ringkv-bench ceiling`.
//!
//! It runs the executors ringkv's client cores run on (every CPU but the store
//! core's, by default: for a data directory in the current directory, see
//! `ringkv_server::placement`), accepts connections as ringkv does, decodes each
//! KV request and answers it with an empty response once the connection has
//! read what arrived with it: no raft, no WAL, no store, no hop to another
//! core. What a workload reaches against it is what the transport and the
//! benchmark client allow; ringkv's throughput over this is how close ringkv
//! gets to that. Only Range, Put, DeleteRange and Txn are
//! served (every other method answers UNIMPLEMENTED); nothing is stored, so a
//! Range finds nothing.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use clap::Parser;
use glommio::{LocalExecutorBuilder, Placement};
use ringkv_proto::etcdserverpb as pb;
use ringkv_server::grpc::{
    self, CallContext, Code, Encoded, GrpcService, MethodKind, RequestStream, ResponseSink, Status,
};
use ringkv_server::listener;
use ringkv_server::net::{self, ConnectionLimits, HttpHandler, HttpRequest, HttpResponse};

/// The allocator ringkv runs with, so the ceiling measures the same transport.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "ringkv-ceiling",
    version,
    about = "A do-nothing etcd KV endpoint on ringkv's gRPC layer"
)]
struct Flags {
    /// Where to serve clients (http only).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    listen_client_urls: String,
    /// Comma-separated CPUs for the executors [default: ringkv's client cores
    /// for a data directory here: every CPU but the one that takes this disk's
    /// interrupts (else 0), or the only CPU].
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
}

/// The KV methods it answers.
#[derive(Debug, Clone, Copy)]
enum KvMethod {
    Range,
    Put,
    DeleteRange,
    Txn,
}

impl KvMethod {
    fn route(path: &str) -> Result<KvMethod, Status> {
        match path {
            "/etcdserverpb.KV/Range" => Ok(KvMethod::Range),
            "/etcdserverpb.KV/Put" => Ok(KvMethod::Put),
            "/etcdserverpb.KV/DeleteRange" => Ok(KvMethod::DeleteRange),
            "/etcdserverpb.KV/Txn" => Ok(KvMethod::Txn),
            _ => Err(Status::new(
                Code::Unimplemented,
                format!("ringkv-ceiling serves KV Range, Put, DeleteRange and Txn only, not {path}"),
            )),
        }
    }
}

/// Answers every KV call with an empty response whose header carries a
/// revision that goes up with each write, as a store's would.
#[derive(Default)]
struct NullKv {
    revision: Cell<i64>,
}

impl NullKv {
    fn header(&self, write: bool) -> Option<pb::ResponseHeader> {
        if write {
            self.revision.set(self.revision.get() + 1);
        }
        Some(pb::ResponseHeader {
            cluster_id: 1,
            member_id: 1,
            revision: self.revision.get(),
            raft_term: 1,
        })
    }
}

impl GrpcService for NullKv {
    fn method_kind(&self, path: &str) -> Result<MethodKind, Status> {
        KvMethod::route(path).map(|_| MethodKind::Unary)
    }

    async fn unary(&self, path: &str, request: Bytes, _ctx: CallContext) -> Result<Encoded, Status> {
        // ringkv's answers come back from the store core after the connection
        // has read every request that arrived together, so h2 writes them out
        // in one send. Answered at once, each call would finish before the next
        // stream is accepted, and accepting flushes: one send per call, a cost
        // ringkv never pays. Yielding once keeps the batching ringkv has.
        futures_lite::future::yield_now().await;
        // Decoded like a real server would, so the work per request is the same.
        Ok(match KvMethod::route(path)? {
            KvMethod::Range => {
                let _: pb::RangeRequest = grpc::decode(request)?;
                grpc::encode(&pb::RangeResponse {
                    header: self.header(false),
                    ..Default::default()
                })
            }
            KvMethod::Put => {
                let _: pb::PutRequest = grpc::decode(request)?;
                grpc::encode(&pb::PutResponse {
                    header: self.header(true),
                    prev_kv: None,
                })
            }
            KvMethod::DeleteRange => {
                let _: pb::DeleteRangeRequest = grpc::decode(request)?;
                grpc::encode(&pb::DeleteRangeResponse {
                    header: self.header(true),
                    ..Default::default()
                })
            }
            KvMethod::Txn => {
                let _: pb::TxnRequest = grpc::decode(request)?;
                grpc::encode(&pb::TxnResponse {
                    header: self.header(true),
                    succeeded: true,
                    responses: Vec::new(),
                })
            }
        })
    }

    async fn streaming(
        &self,
        path: &str,
        _requests: RequestStream,
        _responses: ResponseSink,
        _ctx: CallContext,
    ) -> Result<(), Status> {
        unreachable!("{path} is not routed: only unary KV methods are")
    }
}

/// HTTP/1.1 on the client port: nothing to serve.
struct NoHttp;

impl HttpHandler for NoHttp {
    async fn handle(&self, _request: HttpRequest) -> HttpResponse {
        HttpResponse::text(404, "ringkv-ceiling serves gRPC KV calls only\n")
    }
}

fn main() {
    let flags = Flags::parse();
    let addr = match listen_addr(&flags.listen_client_urls) {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("ringkv-ceiling: --listen-client-urls: {error}");
            std::process::exit(1);
        }
    };
    let cpus = if flags.cpus.is_empty() {
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        let disk = ringkv_server::placement::disk_interrupts(std::path::Path::new("."));
        let (store_cpu, _) = ringkv_server::config::default_store_cpu(disk, online);
        ringkv_server::config::default_client_cpus(store_cpu, online)
    } else {
        flags.cpus
    };
    // One listening socket, accepted on by every executor (as ringkv's client cores do).
    let socket = listener::bind(addr).unwrap_or_else(|error| {
        eprintln!("ringkv-ceiling: {error}");
        std::process::exit(1);
    });
    let executors: Vec<_> = cpus
        .iter()
        .map(|&cpu| {
            let socket = socket.try_clone().unwrap_or_else(|error| {
                eprintln!("ringkv-ceiling: cannot share the listener: {error}");
                std::process::exit(1);
            });
            LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("ringkv-ceiling-{cpu}"))
                .spawn(move || serve(socket))
                .unwrap_or_else(|error| {
                    eprintln!("ringkv-ceiling: cannot start an executor on CPU {cpu}: {error}");
                    std::process::exit(1);
                })
        })
        .collect();
    eprintln!("ringkv-ceiling: serving client requests on http://{addr} (CPUs {cpus:?})");
    for executor in executors {
        let _ = executor.join();
    }
}

/// One executor accepting on its duplicate of the listening socket.
async fn serve(socket: std::net::TcpListener) {
    net::serve_client_port(
        listener::adopt(socket),
        Rc::new(NullKv::default()),
        Rc::new(NoHttp),
        ConnectionLimits::default(),
        None,
    )
    .await;
}

/// `http://host:port` → the address to bind.
fn listen_addr(url: &str) -> Result<SocketAddr, String> {
    let url = url::Url::parse(url).map_err(|error| error.to_string())?;
    if url.scheme() != "http" {
        return Err("only http:// is served".to_string());
    }
    let host = url.host_str().ok_or("no host")?;
    let port = url.port().ok_or("no port")?;
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .map_err(|error| error.to_string())?
        .next()
        .ok_or_else(|| "does not resolve".to_string())
}

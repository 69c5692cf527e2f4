//! `lease-keepalive`: LeaseKeepAlive round trips.
//!
//! Before the run (untimed) --leases leases of --lease-ttl seconds are granted.
//! Each request loop keeps one bidirectional LeaseKeepAlive stream and has one
//! keepalive on it at a time: an op sends a request for lease number
//! `ticket % leases` and waits for its response, so responses match requests
//! in order. A response for another lease, or with TTL 0 (the lease is gone),
//! fails the op. A failed stream is reopened by the loop's next op. At the end
//! every lease is revoked, best effort and bounded.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use ringkv_proto::etcdserverpb::lease_client::LeaseClient;
use ringkv_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::transport::Channel;
use tonic::Status;

use super::populate::for_each_index;
use super::{Extras, FinishFuture, OpFuture, Outcome, PrepareFuture, Workload, WorkloadClient};
use crate::progress::ProgressMode;
use crate::report::fmt_count;
use crate::BenchError;

/// Most leases one run grants (8 bytes each here).
pub const LEASES_MAX: u64 = 10_000_000;
/// Revoking the leases at the end may take at most this long.
pub const REVOKE_TIME_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Args)]
pub struct LeaseKeepaliveArgs {
    /// Leases granted before the run; the keepalives cycle over them.
    #[arg(long, default_value_t = 1000)]
    pub leases: u64,
    /// TTL of each lease in seconds. A lease expires if it gets no keepalive
    /// for this long, so keep it above leases / --rate.
    #[arg(long, default_value_t = 60)]
    pub lease_ttl: i64,
}

pub struct LeaseKeepalive {
    leases: u64,
    ttl_sec: i64,
    request_timeout: Duration,
    /// Lease ids by number (0: not granted), filled by `prepare`.
    ids: Arc<Vec<AtomicI64>>,
    /// The run's connections, for revoking.
    channels: Mutex<Vec<Channel>>,
}

impl LeaseKeepalive {
    pub fn new(args: &LeaseKeepaliveArgs, request_timeout: Duration) -> Result<LeaseKeepalive, BenchError> {
        if !(1..=LEASES_MAX).contains(&args.leases) {
            return Err(BenchError::Usage(format!("--leases must be 1 to {LEASES_MAX}")));
        }
        if args.lease_ttl < 1 {
            return Err(BenchError::Usage("--lease-ttl must be at least 1 second".into()));
        }
        Ok(LeaseKeepalive {
            leases: args.leases,
            ttl_sec: args.lease_ttl,
            request_timeout,
            ids: Arc::new((0..args.leases).map(|_| AtomicI64::new(0)).collect()),
            channels: Mutex::new(Vec::new()),
        })
    }

    async fn grant(&self, channels: &[Channel], progress: ProgressMode) -> Result<(), BenchError> {
        progress.note(&format!(
            "granting {} leases of {} s (not measured)",
            fmt_count(self.leases),
            self.ttl_sec
        ));
        *self.channels.lock().expect("not poisoned") = channels.to_vec();
        let ids = Arc::clone(&self.ids);
        let ttl = self.ttl_sec;
        for_each_index(channels, self.leases, move |index, channel| {
            let ids = Arc::clone(&ids);
            async move {
                let request = LeaseGrantRequest { ttl, id: 0 };
                let response = LeaseClient::new(channel).lease_grant(request).await?.into_inner();
                if !response.error.is_empty() || response.id == 0 {
                    return Err(Status::internal(format!(
                        "grant returned id {} error {:?}",
                        response.id, response.error
                    )));
                }
                ids[index as usize].store(response.id, Ordering::Relaxed);
                Ok(())
            }
        })
        .await
        .map_err(|(index, status)| {
            BenchError::Prepare(format!(
                "granting lease {index}: {:?}: {}",
                status.code(),
                status.message()
            ))
        })
    }

    /// Revokes every granted lease, at most REVOKE_TIME_MAX; says how it went.
    async fn revoke(&self, progress: ProgressMode) -> Extras {
        let channels = std::mem::take(&mut *self.channels.lock().expect("not poisoned"));
        let ids: Vec<i64> = self
            .ids
            .iter()
            .map(|id| id.load(Ordering::Relaxed))
            .filter(|id| *id != 0)
            .collect();
        if ids.is_empty() || channels.is_empty() {
            return Extras::default();
        }
        progress.note(&format!(
            "revoking {} leases (not measured)",
            fmt_count(ids.len() as u64)
        ));
        let count = ids.len() as u64;
        let ids = Arc::new(ids);
        let revoked = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&revoked);
        let revoking = for_each_index(&channels, count, move |index, channel| {
            let request = LeaseRevokeRequest {
                id: ids[index as usize],
            };
            let counter = Arc::clone(&counter);
            async move {
                LeaseClient::new(channel).lease_revoke(request).await?;
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        });
        let note = match tokio::time::timeout(REVOKE_TIME_MAX, revoking).await {
            Ok(Ok(())) => format!("revoked all {} leases after the run", fmt_count(count)),
            Ok(Err((index, status))) => format!(
                "revoked {} of {} leases after the run; revoking lease {index} failed: {:?}: {}",
                fmt_count(revoked.load(Ordering::Relaxed)),
                fmt_count(count),
                status.code(),
                status.message()
            ),
            Err(_) => format!(
                "revoked {} of {} leases in {} after the run, then gave up",
                fmt_count(revoked.load(Ordering::Relaxed)),
                fmt_count(count),
                humantime::format_duration(REVOKE_TIME_MAX)
            ),
        };
        Extras {
            watch: None,
            notes: vec![note],
        }
    }
}

impl Workload for LeaseKeepalive {
    fn name(&self) -> &'static str {
        "lease-keepalive"
    }

    fn settings(&self) -> String {
        format!(
            "one keepalive per op over {} leases of {} s, one stream per client",
            fmt_count(self.leases),
            self.ttl_sec
        )
    }

    fn writes(&self) -> bool {
        false
    }

    fn prepare<'a>(&'a self, channels: &'a [Channel], progress: ProgressMode) -> PrepareFuture<'a> {
        Box::pin(self.grant(channels, progress))
    }

    fn client(&self, _index: usize, channel: Channel) -> Box<dyn WorkloadClient> {
        Box::new(KeepaliveClient {
            lease: LeaseClient::new(channel),
            ids: Arc::clone(&self.ids),
            request_timeout: self.request_timeout,
            stream: None,
        })
    }

    fn finish<'a>(&'a self, _start: Instant, progress: ProgressMode) -> FinishFuture<'a> {
        Box::pin(self.revoke(progress))
    }
}

/// One open LeaseKeepAlive stream.
struct KeepaliveStream {
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

struct KeepaliveClient {
    lease: LeaseClient<Channel>,
    ids: Arc<Vec<AtomicI64>>,
    request_timeout: Duration,
    stream: Option<KeepaliveStream>,
}

impl KeepaliveClient {
    /// Sends one keepalive for `id` and waits for its response, opening the
    /// stream first if there is none.
    // tonic::Status is large; it is the error type of every call on this path anyway.
    #[allow(clippy::result_large_err)]
    async fn keepalive(&mut self, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
        let request = LeaseKeepAliveRequest { id };
        let stream = match &mut self.stream {
            Some(stream) => {
                stream
                    .requests
                    .send(request)
                    .await
                    .map_err(|_| Status::unavailable("the keepalive stream is closed"))?;
                stream
            }
            None => {
                // The first request goes out with the call: a server may send
                // the response headers only with the first response.
                let (requests, outgoing) = mpsc::channel(1);
                requests.try_send(request).expect("an empty channel has room");
                let call = self.lease.lease_keep_alive(ReceiverStream::new(outgoing));
                let responses = tokio::time::timeout(self.request_timeout, call)
                    .await
                    .map_err(|_| Status::deadline_exceeded("no response to the LeaseKeepAlive call"))??
                    .into_inner();
                self.stream.insert(KeepaliveStream { requests, responses })
            }
        };
        tokio::time::timeout(self.request_timeout, stream.responses.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no keepalive response in time"))??
            .ok_or_else(|| Status::unavailable("the server closed the keepalive stream"))
    }
}

impl WorkloadClient for KeepaliveClient {
    fn op(&mut self, ticket: u64, _from: Instant) -> OpFuture<'_> {
        let id = self.ids[(ticket % self.ids.len() as u64) as usize].load(Ordering::Relaxed);
        Box::pin(async move {
            let response = match self.keepalive(id).await {
                Ok(response) => response,
                Err(status) => {
                    // Whatever state the stream is in, the next op starts afresh.
                    self.stream = None;
                    return Err(status);
                }
            };
            check_response(id, &response)?;
            Ok(Outcome::DONE)
        })
    }
}

/// A keepalive response must be for the lease asked about and keep it alive.
#[allow(clippy::result_large_err)]
pub fn check_response(id: i64, response: &LeaseKeepAliveResponse) -> Result<(), Status> {
    if response.id != id {
        return Err(Status::internal(format!(
            "keepalive for lease {id:x} answered for lease {:x}",
            response.id
        )));
    }
    if response.ttl <= 0 {
        return Err(Status::not_found("keepalive answered TTL 0: the lease is gone"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_must_name_the_lease_and_a_ttl() {
        let response = |id, ttl| LeaseKeepAliveResponse { header: None, id, ttl };
        assert!(check_response(7, &response(7, 60)).is_ok());
        assert_eq!(
            check_response(7, &response(8, 60)).unwrap_err().code(),
            tonic::Code::Internal
        );
        assert_eq!(
            check_response(7, &response(7, 0)).unwrap_err().code(),
            tonic::Code::NotFound
        );
    }
}

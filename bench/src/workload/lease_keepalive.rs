//! `lease-keepalive`: LeaseKeepAlive round trips.
//!
//! Before the run (untimed) --leases leases of --lease-ttl seconds are granted.
//! Each request loop keeps one bidirectional LeaseKeepAlive stream and has one
//! keepalive on it at a time: an op sends a request for lease number
//! `ticket % leases` and waits for its response, so responses match requests
//! in order. A response must name the lease and renew it to the TTL its grant
//! returned: another lease, TTL 0 (the lease is gone) or another TTL fails the
//! op. A failed stream is reopened by the loop's next op. At the end every
//! lease is revoked, best effort and bounded.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::channel::Channel;
use clap::Args;
use ringkv_proto::etcdserverpb::lease_client::LeaseClient;
use ringkv_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::{Code, Status};

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
    /// The leases by number, filled by `prepare`.
    leases_granted: Arc<Vec<GrantedLease>>,
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
            leases_granted: Arc::new((0..args.leases).map(|_| GrantedLease::default()).collect()),
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
        let granted = Arc::clone(&self.leases_granted);
        let ttl = self.ttl_sec;
        for_each_index(channels, self.leases, move |index, channel| {
            let granted = Arc::clone(&granted);
            async move {
                let request = LeaseGrantRequest { ttl, id: 0 };
                let response = LeaseClient::new(channel).lease_grant(request).await?.into_inner();
                if !response.error.is_empty() || response.id == 0 {
                    return Err(Status::internal(format!(
                        "grant returned id {} error {:?}",
                        response.id, response.error
                    )));
                }
                let lease = &granted[index as usize];
                lease.ttl_sec.store(response.ttl, Ordering::Relaxed);
                lease.id.store(response.id, Ordering::Relaxed);
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
            .leases_granted
            .iter()
            .map(|lease| lease.id.load(Ordering::Relaxed))
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
        let expired = Arc::new(AtomicU64::new(0));
        let counters = (Arc::clone(&revoked), Arc::clone(&expired));
        let revoking = for_each_index(&channels, count, move |index, channel| {
            let request = LeaseRevokeRequest {
                id: ids[index as usize],
            };
            let (revoked, expired) = (Arc::clone(&counters.0), Arc::clone(&counters.1));
            async move {
                match LeaseClient::new(channel).lease_revoke(request).await {
                    Ok(_) => revoked.fetch_add(1, Ordering::Relaxed),
                    Err(status) if status.code() == Code::NotFound => expired.fetch_add(1, Ordering::Relaxed),
                    Err(status) => return Err(status),
                };
                Ok(())
            }
        });
        let outcome = tokio::time::timeout(REVOKE_TIME_MAX, revoking).await;
        let mut note = format!(
            "revoked {} of {} leases after the run",
            fmt_count(revoked.load(Ordering::Relaxed)),
            fmt_count(count)
        );
        let expired = expired.load(Ordering::Relaxed);
        if expired > 0 {
            note.push_str(&format!(" ({} had expired)", fmt_count(expired)));
        }
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err((index, status))) => note.push_str(&format!(
                "; revoking lease {index} failed: {:?}: {}",
                status.code(),
                status.message()
            )),
            Err(_) => note.push_str(&format!(
                "; gave up after {}",
                humantime::format_duration(REVOKE_TIME_MAX)
            )),
        }
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
            leases: Arc::clone(&self.leases_granted),
            request_timeout: self.request_timeout,
            stream: None,
        })
    }

    fn finish<'a>(&'a self, _start: Instant, progress: ProgressMode) -> FinishFuture<'a> {
        Box::pin(self.revoke(progress))
    }
}

/// A lease's id (0 until granted) and the TTL its grant returned.
#[derive(Debug, Default)]
struct GrantedLease {
    id: AtomicI64,
    ttl_sec: AtomicI64,
}

/// One open LeaseKeepAlive stream.
struct KeepaliveStream {
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

struct KeepaliveClient {
    lease: LeaseClient<Channel>,
    leases: Arc<Vec<GrantedLease>>,
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
        let lease = &self.leases[(ticket % self.leases.len() as u64) as usize];
        let id = lease.id.load(Ordering::Relaxed);
        let ttl_sec = lease.ttl_sec.load(Ordering::Relaxed);
        Box::pin(async move {
            let response = match self.keepalive(id).await {
                Ok(response) => response,
                Err(status) => {
                    // Whatever state the stream is in, the next op starts afresh.
                    self.stream = None;
                    return Err(status);
                }
            };
            check_response(id, ttl_sec, &response)?;
            Ok(Outcome::DONE)
        })
    }
}

/// A keepalive response must be for the lease asked about and renew it to
/// its granted TTL (`ttl_sec`), as etcd's do.
#[allow(clippy::result_large_err)]
pub fn check_response(id: i64, ttl_sec: i64, response: &LeaseKeepAliveResponse) -> Result<(), Status> {
    if response.id != id {
        return Err(Status::internal(format!(
            "keepalive for lease {id:x} answered for lease {:x}",
            response.id
        )));
    }
    if response.ttl <= 0 {
        return Err(Status::not_found("keepalive answered TTL 0: the lease is gone"));
    }
    if response.ttl != ttl_sec {
        return Err(Status::internal(format!(
            "keepalive renewed lease {id:x} to TTL {} s, its grant said {ttl_sec} s",
            response.ttl
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_must_name_the_lease_and_renew_it_to_its_granted_ttl() {
        let response = |id, ttl| LeaseKeepAliveResponse { header: None, id, ttl };
        assert!(check_response(7, 60, &response(7, 60)).is_ok());
        assert_eq!(
            check_response(7, 60, &response(8, 60)).unwrap_err().code(),
            Code::Internal
        );
        assert_eq!(
            check_response(7, 60, &response(7, 0)).unwrap_err().code(),
            Code::NotFound
        );
        assert_eq!(
            check_response(7, 60, &response(7, 59)).unwrap_err().code(),
            Code::Internal
        );
    }
}

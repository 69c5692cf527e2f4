//! grpc.health.v1.Health side by side with etcd 3.4: the same Check and Watch
//! calls get the same answers (the empty service name SERVING, another name
//! NOT_FOUND "unknown service" from Check and SERVICE_UNKNOWN from Watch), and
//! a Watch stream stays open after its first answer.

use std::time::Duration;

use ringkv_proto::health::health_check_response::ServingStatus;
use ringkv_proto::health::health_client::HealthClient;
use ringkv_proto::health::HealthCheckRequest;

use crate::support;

/// How long a Watch stream is watched for a second message that must not come.
const QUIET_WAIT: Duration = Duration::from_millis(500);

/// What one endpoint answers to each call, as comparable text.
async fn answers(endpoint: &str) -> Vec<String> {
    let mut client = HealthClient::new(support::channel(endpoint).await);
    let request = |service: &str| HealthCheckRequest {
        service: service.to_string(),
    };
    let mut out = Vec::new();
    for service in ["", "etcdserverpb.KV", "no.such.Service"] {
        out.push(match client.check(request(service)).await {
            Ok(reply) => format!("Check {service:?}: {:?}", reply.into_inner().status()),
            Err(status) => format!("Check {service:?}: {:?} {:?}", status.code(), status.message()),
        });
    }
    for service in ["", "no.such.Service"] {
        let mut stream = client.watch(request(service)).await.expect("Watch starts").into_inner();
        let first = stream
            .message()
            .await
            .expect("a first answer")
            .expect("the stream is open");
        out.push(format!("Watch {service:?}: {:?}", first.status()));
        let next = tokio::time::timeout(QUIET_WAIT, stream.message()).await;
        assert!(
            next.is_err(),
            "{endpoint}: Watch {service:?} sent more or ended: {next:?}"
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_and_watch_answer_as_etcd() {
    let etcd = support::Etcd::start();
    let data_dir = tempfile::tempdir().unwrap();
    let ringkv = support::Ringkv::start(data_dir.path(), &[]);
    let from_etcd = answers(&etcd.endpoint()).await;
    let from_ringkv = answers(&ringkv.endpoint()).await;
    assert_eq!(from_ringkv, from_etcd);
    assert_eq!(from_ringkv[0], format!("Check \"\": {:?}", ServingStatus::Serving));
}

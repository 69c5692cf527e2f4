//! `grpc.health.v1.Health` as etcd serves it on its client port (grpc-go's
//! health server, with only the empty service name, which stands for all of
//! etcd's services, set to SERVING at start): Check answers SERVING for ""
//! and NOT_FOUND "unknown service" for any other name; Watch sends the same
//! status (SERVICE_UNKNOWN for another name) and then holds the stream open
//! until the client ends it, as grpc-go's does. etcd with its default flags
//! never changes the status while it runs, so neither does ringkv.

use bytes::Bytes;
use ringkv_proto::health::health_check_response::ServingStatus;
use ringkv_proto::health::{HealthCheckRequest, HealthCheckResponse};

use crate::grpc::{self, Code, Encoded, MethodKind, RequestStream, ResponseSink, Status};

/// The health service's gRPC name.
pub const SERVICE: &str = "grpc.health.v1.Health";
/// The one service name etcd registers a status for: all of its services.
const ALL_SERVICES: &str = "";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HealthMethod {
    Check,
    Watch,
}

impl HealthMethod {
    pub(crate) fn route(service: &str, method: &str) -> Option<HealthMethod> {
        match (service, method) {
            (SERVICE, "Check") => Some(HealthMethod::Check),
            (SERVICE, "Watch") => Some(HealthMethod::Watch),
            _ => None,
        }
    }

    pub(crate) fn kind(self) -> MethodKind {
        match self {
            HealthMethod::Check => MethodKind::Unary,
            HealthMethod::Watch => MethodKind::ServerStreaming,
        }
    }
}

/// The status of `service` while the member serves; None if it is unknown.
fn status_of(service: &str) -> Option<ServingStatus> {
    (service == ALL_SERVICES).then_some(ServingStatus::Serving)
}

fn response(status: ServingStatus) -> Encoded {
    grpc::encode(&HealthCheckResponse { status: status as i32 })
}

/// Decodes a request message of either method.
pub(crate) fn decode(request: Bytes) -> Result<HealthCheckRequest, Status> {
    grpc::decode(request)
}

/// Health.Check.
pub(crate) fn check(request: Bytes) -> Result<Encoded, Status> {
    let request = decode(request)?;
    match status_of(&request.service) {
        Some(status) => Ok(response(status)),
        None => Err(Status::new(Code::NotFound, "unknown service")),
    }
}

/// Health.Watch: the status now, then nothing until the client ends the
/// stream (the gRPC layer drops this call on a reset or a closed connection).
pub(crate) async fn watch(mut requests: RequestStream, mut responses: ResponseSink) -> Result<(), Status> {
    let request = match requests.next().await {
        Some(request) => decode(request?)?,
        None => return Err(Status::new(Code::Internal, "grpc: the client sent no request")),
    };
    let status = status_of(&request.service).unwrap_or(ServingStatus::ServiceUnknown);
    responses.send(response(status)).await?;
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn ask(service: &str) -> Bytes {
        Bytes::from(
            HealthCheckRequest {
                service: service.to_string(),
            }
            .encode_to_vec(),
        )
    }

    #[test]
    fn the_empty_name_is_serving_and_any_other_is_unknown() {
        assert!(check(ask("")).is_ok());
        let Err(unknown) = check(ask("etcdserverpb.KV")) else {
            panic!("a named service is unknown");
        };
        assert_eq!(
            (unknown.code, unknown.message.as_str()),
            (Code::NotFound, "unknown service")
        );
        assert_eq!(status_of(""), Some(ServingStatus::Serving));
        assert_eq!(status_of("x"), None);
    }

    #[test]
    fn routes_are_health_methods_only() {
        assert_eq!(HealthMethod::route(SERVICE, "Check"), Some(HealthMethod::Check));
        assert_eq!(
            HealthMethod::route(SERVICE, "Watch").map(HealthMethod::kind),
            Some(MethodKind::ServerStreaming)
        );
        assert_eq!(HealthMethod::route(SERVICE, "List"), None);
        assert_eq!(HealthMethod::route("etcdserverpb.KV", "Check"), None);
    }
}

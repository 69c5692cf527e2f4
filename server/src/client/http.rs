//! Plain HTTP/1.1 on the client port. `/version` answers as etcd does; the other
//! endpoints (health, metrics) come with the maintenance work.

use crate::net::{HttpHandler, HttpRequest, HttpResponse};
use crate::version::ETCD_COMPATIBLE_VERSION;

pub struct EtcdHttp;

impl HttpHandler for EtcdHttp {
    async fn handle(&self, request: HttpRequest) -> HttpResponse {
        match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/version") => HttpResponse::json(
                200,
                format!(
                    "{{\"etcdserver\":\"{ETCD_COMPATIBLE_VERSION}\",\"etcdcluster\":\"{}\"}}",
                    crate::version::cluster_version()
                ),
            ),
            // Go's net/http answer for an unknown path.
            _ => HttpResponse::text(404, "404 page not found\n"),
        }
    }
}

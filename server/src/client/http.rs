//! Plain HTTP/1.1 on the client port and on `--listen-metrics-urls`: etcd's
//! `/version`, `/health`, `/livez`, `/readyz` and `/metrics` (etcdserver/api/etcdhttp),
//! and on the client port the JSON gateway's `/v3/...`.

use std::rc::Rc;

use ringkv_proto::etcdserverpb as pb;

use super::gateway::Gateway;
use super::store_client::StoreClient;
use crate::etcd_error::EtcdError;
use crate::metrics::grpc::GrpcCore;
use crate::metrics::process::ProcessStats;
use crate::net::{HttpHandler, HttpRequest, HttpResponse};
use crate::store::messages::{Request, Response};
use crate::version::{cluster_version, ETCD_COMPATIBLE_VERSION, RINGKV_VERSION};

pub struct EtcdHttp {
    store: Rc<StoreClient>,
    /// The client port's; the metrics URLs have none.
    gateway: Option<Gateway>,
}

/// One named check of `/livez` or `/readyz`: Ok, or why it failed.
type Check = (&'static str, Result<(), String>);

impl EtcdHttp {
    pub fn new(store: Rc<StoreClient>, gateway: Option<Gateway>) -> EtcdHttp {
        EtcdHttp { store, gateway }
    }

    async fn alarms(&self) -> Result<Vec<pb::AlarmMember>, EtcdError> {
        match self.store.call(Request::Alarm(pb::AlarmRequest::default())).await? {
            Response::Alarm(response) => Ok(response.alarms),
            other => unreachable!("an alarm request answered {other:?}"),
        }
    }

    async fn status(&self) -> Result<pb::StatusResponse, EtcdError> {
        match self.store.call(Request::Status).await? {
            Response::Status(status) => Ok(status),
            other => unreachable!("a status request answered {other:?}"),
        }
    }

    async fn has_leader(&self) -> Result<bool, EtcdError> {
        self.status().await.map(|status| status.leader != 0)
    }

    /// etcd's `non_learner` readiness check.
    async fn non_learner(&self) -> Result<(), String> {
        match self.status().await {
            Ok(status) if status.is_learner => Err("not supported for learner".to_string()),
            Ok(_) => Ok(()),
            Err(error) => Err(error.to_string()),
        }
    }

    /// etcd's health read: one key at most, keys only.
    async fn read(&self, serializable: bool) -> Result<(), EtcdError> {
        let range = pb::RangeRequest {
            key: b"health".to_vec(),
            keys_only: true,
            limit: 1,
            serializable,
            ..Default::default()
        };
        self.store.call(Request::Range(range)).await.map(|_| ())
    }

    /// etcd's `/health`: alarms (unless excluded), leader, then a read.
    async fn health(&self, query: &str) -> HttpResponse {
        let excluded: Vec<&str> = query_values(query, "exclude").collect();
        let serializable = query_values(query, "serializable").any(|v| v == "true");
        let reason = match self.alarms().await {
            Err(error) => Some(format!("ALARM ERROR:{error}")),
            Ok(alarms) => alarms
                .iter()
                .map(|alarm| pb::AlarmType::from_i32(alarm.alarm).map_or("UNKNOWN", |kind| kind.as_str_name()))
                .find(|name| !excluded.contains(name))
                .map(|name| format!("ALARM {name}")),
        };
        let reason = match reason {
            Some(reason) => Some(reason),
            None if !serializable && !self.has_leader().await.unwrap_or(false) => Some("RAFT NO LEADER".to_string()),
            None => self
                .read(serializable)
                .await
                .err()
                .map(|error| format!("RANGE ERROR:{error}")),
        };
        match reason {
            None => HttpResponse::json(200, "{\"health\":\"true\",\"reason\":\"\"}".to_string()),
            Some(reason) => HttpResponse::json(
                503,
                format!("{{\"health\":\"false\",\"reason\":\"{}\"}}", json_escape(&reason)),
            ),
        }
    }

    async fn livez_checks(&self) -> Vec<Check> {
        vec![("serializable_read", self.read(true).await.map_err(|e| e.to_string()))]
    }

    async fn readyz_checks(&self) -> Vec<Check> {
        let corruption = match self.alarms().await {
            Ok(alarms) if alarms.iter().any(|a| a.alarm == pb::AlarmType::Corrupt as i32) => {
                Err("alarm activated: CORRUPT".to_string())
            }
            Ok(_) => Ok(()),
            Err(error) => Err(error.to_string()),
        };
        vec![
            ("data_corruption", corruption),
            ("serializable_read", self.read(true).await.map_err(|e| e.to_string())),
            ("linearizable_read", self.read(false).await.map_err(|e| e.to_string())),
            ("non_learner", self.non_learner().await),
        ]
    }

    async fn metrics(&self) -> HttpResponse {
        match self.store.call(Request::Metrics).await {
            Ok(Response::Metrics(snapshot)) => {
                let mut body = snapshot.render(RINGKV_VERSION, ETCD_COMPATIBLE_VERSION);
                if let Some(core) = GrpcCore::this_thread() {
                    core.metrics().render(&mut body);
                }
                match ProcessStats::read() {
                    Ok(stats) => stats.render(&mut body),
                    Err(error) => tracing::warn!(%error, "no process metrics"),
                }
                HttpResponse {
                    status: 200,
                    content_type: "text/plain; version=0.0.4; charset=utf-8",
                    body: body.into_bytes(),
                    chunks: None,
                }
            }
            Ok(other) => unreachable!("a metrics request answered {other:?}"),
            Err(error) => HttpResponse::text(503, &format!("{error}\n")),
        }
    }
}

impl HttpHandler for EtcdHttp {
    async fn handle(&self, request: HttpRequest) -> HttpResponse {
        if let Some(gateway) = &self.gateway {
            if let Some(response) = gateway.handle(&request).await {
                return response;
            }
        }
        let path = request.path.as_str();
        let known = matches!(path, "/version" | "/health" | "/metrics") || probe(path).is_some();
        if known && request.method != "GET" {
            return HttpResponse::text(405, "Method Not Allowed\n");
        }
        match path {
            "/version" => HttpResponse::json(
                200,
                format!(
                    "{{\"etcdserver\":\"{ETCD_COMPATIBLE_VERSION}\",\"etcdcluster\":\"{}\",\"ringkv\":\"{RINGKV_VERSION}\"}}",
                    cluster_version()
                ),
            ),
            "/health" => self.health(&request.query).await,
            "/metrics" => self.metrics().await,
            _ => match probe(path) {
                Some((name, only)) => {
                    let checks = if name == "livez" {
                        self.livez_checks().await
                    } else {
                        self.readyz_checks().await
                    };
                    probe_response(name, only, &checks, &request.query)
                }
                // Go's net/http answer for an unknown path.
                None => HttpResponse::text(404, "404 page not found\n"),
            },
        }
    }
}

/// `/livez`, `/readyz` or `/readyz/<check>`: the probe and the one check asked for.
fn probe(path: &str) -> Option<(&'static str, Option<&str>)> {
    for name in ["livez", "readyz"] {
        let Some(rest) = path.strip_prefix('/').and_then(|p| p.strip_prefix(name)) else {
            continue;
        };
        match rest.strip_prefix('/') {
            None if rest.is_empty() => return Some((name, None)),
            Some(check) if !check.is_empty() => return Some((name, Some(check))),
            _ => {}
        }
    }
    None
}

/// etcd's (Kubernetes-style) probe output: `ok`, or the failed checks and
/// "<probe> check failed" with 503; `?verbose` lists every check; `?exclude=` skips.
fn probe_response(name: &str, only: Option<&str>, checks: &[Check], query: &str) -> HttpResponse {
    let excluded: Vec<&str> = query_values(query, "exclude").collect();
    let verbose = query
        .split('&')
        .any(|pair| pair == "verbose" || pair.starts_with("verbose="));
    let selected: Vec<&Check> = checks
        .iter()
        .filter(|(check, _)| (only.is_none() || only == Some(*check)) && !excluded.contains(check))
        .collect();
    if selected.is_empty() {
        return HttpResponse::text(404, "404 page not found\n");
    }
    let failed = selected.iter().any(|(_, result)| result.is_err());
    let mut body = String::new();
    if verbose || failed {
        for (check, result) in &selected {
            match result {
                Ok(()) => body.push_str(&format!("[+]{check} ok\n")),
                Err(_) => body.push_str(&format!("[-]{check} failed: reason withheld\n")),
            }
        }
    }
    if failed {
        body.push_str(&format!("{name} check failed\n"));
        HttpResponse::text(503, &body)
    } else {
        body.push_str("ok\n");
        HttpResponse::text(200, &body)
    }
}

/// Values of `name` in a query string (no percent-decoding: etcd's values are plain words).
fn query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    query
        .split('&')
        .filter_map(move |pair| pair.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
}

fn json_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_and_single_checks_route() {
        assert_eq!(probe("/livez"), Some(("livez", None)));
        assert_eq!(
            probe("/readyz/linearizable_read"),
            Some(("readyz", Some("linearizable_read")))
        );
        assert_eq!(probe("/readyzz"), None);
        assert_eq!(probe("/readyz/"), None);
    }

    #[test]
    fn a_failed_check_makes_the_probe_fail_with_its_name() {
        let checks = [("a", Ok(())), ("b", Err("down".to_string()))];
        let response = probe_response("readyz", None, &checks, "");
        assert_eq!(response.status, 503);
        let body = String::from_utf8(response.body).unwrap();
        assert_eq!(body, "[+]a ok\n[-]b failed: reason withheld\nreadyz check failed\n");
        let response = probe_response("readyz", None, &checks, "exclude=b");
        assert_eq!((response.status, response.body), (200, b"ok\n".to_vec()));
    }

    #[test]
    fn query_values_are_found_by_name() {
        let values: Vec<&str> = query_values("exclude=NOSPACE&serializable=true&exclude=CORRUPT", "exclude").collect();
        assert_eq!(values, ["NOSPACE", "CORRUPT"]);
    }
}

//! Endpoints and gRPC connections.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::BenchError;

/// How long one TCP + HTTP/2 connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response accepted (etcd's clients allow up to math.MaxInt32; a
/// benchmark Range is far below this).
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// `127.0.0.1:2379` or `http://127.0.0.1:2379` -> `http://127.0.0.1:2379`.
/// `https://` is refused: TLS is not supported yet.
pub fn normalize_endpoint(endpoint: &str) -> Result<String, BenchError> {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.is_empty() {
        return Err(BenchError::Usage("empty endpoint in --endpoints".into()));
    }
    if endpoint.starts_with("https://") {
        return Err(BenchError::Usage(format!(
            "{endpoint}: TLS endpoints are not supported yet; use http://"
        )));
    }
    let url = if endpoint.starts_with("http://") {
        endpoint.to_string()
    } else if endpoint.contains("://") {
        return Err(BenchError::Usage(format!(
            "{endpoint}: only http:// endpoints are supported"
        )));
    } else {
        format!("http://{endpoint}")
    };
    Endpoint::from_shared(url.clone()).map_err(|e| BenchError::Usage(format!("{endpoint}: {e}")))?;
    Ok(url)
}

/// Opens `conns` HTTP/2 connections, spread round-robin over `endpoints`. Each
/// request on them fails with DEADLINE_EXCEEDED after `request_timeout`.
pub async fn connect(
    endpoints: &[String],
    conns: usize,
    request_timeout: Duration,
) -> Result<Vec<Channel>, BenchError> {
    assert!(!endpoints.is_empty() && conns > 0, "checked when parsing flags");
    let mut channels = Vec::with_capacity(conns);
    for i in 0..conns {
        let endpoint = &endpoints[i % endpoints.len()];
        let channel = Endpoint::from_shared(endpoint.clone())
            .map_err(|e| BenchError::Usage(format!("{endpoint}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(request_timeout)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|error| BenchError::Connect {
                endpoint: endpoint.clone(),
                error: error_chain(&error),
            })?;
        channels.push(channel);
    }
    Ok(channels)
}

/// An error and its sources on one line (tonic's transport error alone says only
/// "transport error").
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_http_when_it_is_left_out() {
        assert_eq!(normalize_endpoint("127.0.0.1:2379").unwrap(), "http://127.0.0.1:2379");
        assert_eq!(
            normalize_endpoint(" http://127.0.0.1:2379/ ").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(normalize_endpoint("localhost:23790").unwrap(), "http://localhost:23790");
    }

    #[test]
    fn tls_and_other_schemes_are_refused_with_a_reason() {
        let error = normalize_endpoint("https://127.0.0.1:2379").unwrap_err().to_string();
        assert!(error.contains("TLS endpoints are not supported yet"), "{error}");
        assert!(normalize_endpoint("unix:///tmp/etcd.sock").is_err());
        assert!(normalize_endpoint("").is_err());
    }
}

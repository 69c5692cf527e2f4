//! Endpoints and gRPC connections.

use std::time::Duration;

use std::path::Path;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::BenchError;

/// How long one TCP + HTTP/2 connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response accepted (etcd's clients allow up to math.MaxInt32; a
/// benchmark Range is far below this).
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The certificates `--cacert`, `--cert` and `--key` name, read once.
#[derive(Debug, Clone)]
pub struct Tls {
    /// PEM: the CA that signed the server's certificate.
    ca: Vec<u8>,
    /// PEM certificate and key for client-certificate authentication.
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Tls {
    /// Reads the files; a client certificate needs both `cert` and `key`.
    pub fn load(cacert: &Path, cert: Option<&Path>, key: Option<&Path>) -> Result<Tls, BenchError> {
        let read = |flag: &str, path: &Path| {
            std::fs::read(path).map_err(|e| BenchError::Usage(format!("--{flag} {}: {e}", path.display())))
        };
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((read("cert", cert)?, read("key", key)?)),
            (None, None) => None,
            _ => return Err(BenchError::Usage("--cert and --key go together".into())),
        };
        Ok(Tls {
            ca: read("cacert", cacert)?,
            identity,
        })
    }

    fn config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca));
        match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

/// `127.0.0.1:2379` -> `http://127.0.0.1:2379` (`https://` when `tls`, as
/// etcd's tools do with --cacert); `http://` and `https://` URLs are kept.
pub fn normalize_endpoint(endpoint: &str, tls: bool) -> Result<String, BenchError> {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.is_empty() {
        return Err(BenchError::Usage("empty endpoint in --endpoints".into()));
    }
    let url = if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_string()
    } else if endpoint.contains("://") {
        return Err(BenchError::Usage(format!(
            "{endpoint}: only http:// and https:// endpoints are supported"
        )));
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    };
    if url.starts_with("https://") && !tls {
        return Err(BenchError::Usage(format!(
            "{endpoint}: an https:// endpoint needs --cacert (the CA that signed its certificate)"
        )));
    }
    Endpoint::from_shared(url.clone()).map_err(|e| BenchError::Usage(format!("{endpoint}: {e}")))?;
    Ok(url)
}

/// Opens `conns` HTTP/2 connections, spread round-robin over `endpoints`
/// (`https://` ones with `tls`). Each request on them fails with
/// DEADLINE_EXCEEDED after `request_timeout`.
pub async fn connect(
    endpoints: &[String],
    conns: usize,
    request_timeout: Duration,
    tls: Option<&Tls>,
) -> Result<Vec<Channel>, BenchError> {
    assert!(!endpoints.is_empty() && conns > 0, "checked when parsing flags");
    let mut channels = Vec::with_capacity(conns);
    for i in 0..conns {
        let endpoint = &endpoints[i % endpoints.len()];
        let mut builder =
            Endpoint::from_shared(endpoint.clone()).map_err(|e| BenchError::Usage(format!("{endpoint}: {e}")))?;
        if endpoint.starts_with("https://") {
            let tls = tls.expect("https:// endpoints come with --cacert (normalize_endpoint)");
            builder = builder
                .tls_config(tls.config())
                .map_err(|e| BenchError::Usage(format!("{endpoint}: {}", error_chain(&e))))?;
        }
        let channel = builder
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
    fn endpoints_get_a_scheme_when_it_is_left_out() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:2379", false).unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            normalize_endpoint(" http://127.0.0.1:2379/ ", false).unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            normalize_endpoint("localhost:23790", false).unwrap(),
            "http://localhost:23790"
        );
        assert_eq!(
            normalize_endpoint("localhost:23790", true).unwrap(),
            "https://localhost:23790"
        );
        assert_eq!(
            normalize_endpoint("https://127.0.0.1:2379", true).unwrap(),
            "https://127.0.0.1:2379"
        );
    }

    #[test]
    fn https_needs_a_ca_and_other_schemes_are_refused() {
        let error = normalize_endpoint("https://127.0.0.1:2379", false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("needs --cacert"), "{error}");
        assert!(normalize_endpoint("unix:///tmp/etcd.sock", false).is_err());
        assert!(normalize_endpoint("", false).is_err());
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "pem").unwrap();
        let error = Tls::load(&ca, Some(&ca), None).unwrap_err().to_string();
        assert!(error.contains("--cert and --key go together"), "{error}");
        assert!(Tls::load(&dir.path().join("missing.pem"), None, None).is_err());
        assert!(Tls::load(&ca, None, None).is_ok());
    }
}

//! Endpoints and gRPC connections.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_rustls::TlsConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tonic::codegen::http::uri::{Authority, Scheme};
use tonic::codegen::http::Uri;

use crate::channel::{Channel, Unvectored};
use crate::BenchError;

/// How long one TCP + TLS + HTTP/2 connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response accepted (etcd's clients allow up to math.MaxInt32; a
/// benchmark Range is far below this).
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// What `--cacert`, `--cert` and `--key` name, read once: the TLS client
/// settings every `https://` connection uses.
#[derive(Debug, Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
}

impl Tls {
    /// Reads the files: servers must present a certificate `cacert` signed,
    /// and with `cert` and `key` (both or neither) this client presents its own.
    pub fn load(cacert: &Path, cert: Option<&Path>, key: Option<&Path>) -> Result<Tls, BenchError> {
        let usage = |flag: &str, path: &Path, error: &dyn std::fmt::Display| {
            BenchError::Usage(format!("--{flag} {}: {error}", path.display()))
        };
        let read = |flag: &str, path: &Path| std::fs::read(path).map_err(|e| usage(flag, path, &e));
        let certs = |flag: &str, path: &Path| -> Result<Vec<CertificateDer<'static>>, BenchError> {
            let certs = CertificateDer::pem_slice_iter(&read(flag, path)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| usage(flag, path, &e))?;
            if certs.is_empty() {
                return Err(usage(flag, path, &"no CERTIFICATE block"));
            }
            Ok(certs)
        };
        let mut roots = RootCertStore::empty();
        for ca in certs("cacert", cacert)? {
            roots.add(ca).map_err(|e| usage("cacert", cacert, &e))?;
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(ring_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| BenchError::Internal(format!("TLS: {e}")))?
            .with_root_certificates(roots);
        let mut config = match (cert, key) {
            (Some(cert), Some(key)) => {
                let key_der = PrivateKeyDer::from_pem_slice(&read("key", key)?).map_err(|e| usage("key", key, &e))?;
                builder
                    .with_client_auth_cert(certs("cert", cert)?, key_der)
                    .map_err(|e| usage("cert", cert, &e))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(BenchError::Usage("--cert and --key go together".into())),
        };
        // gRPC is HTTP/2: a server that negotiates nothing would speak HTTP/1.1.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Tls {
            config: Arc::new(config),
        })
    }
}

/// rustls's ring provider, as the server uses (its deprecation and why ring is
/// kept: `server/src/tls/protocol.rs`, `default_provider`).
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
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
    origin(&url).map_err(|e| BenchError::Usage(format!("{endpoint}: {e}")))?;
    Ok(url)
}

/// The scheme and host of a normalized endpoint URL.
fn origin(url: &str) -> Result<(Scheme, Authority), String> {
    let uri: Uri = url.parse().map_err(|e| format!("{e}"))?;
    match (uri.scheme(), uri.authority()) {
        (Some(scheme), Some(authority)) if uri.path() == "/" => Ok((scheme.clone(), authority.clone())),
        _ => Err("not a URL of the form http://host:port".into()),
    }
}

/// Opens one HTTP/2 connection to `endpoint` (an `https://` one with `tls`).
/// Each request on it fails with DEADLINE_EXCEEDED after `request_timeout`.
pub async fn connect(endpoint: &str, request_timeout: Duration, tls: Option<&Tls>) -> Result<Channel, BenchError> {
    tokio::time::timeout(CONNECT_TIMEOUT, open(endpoint, request_timeout, tls))
        .await
        .unwrap_or_else(|_| Err(format!("no connection after {CONNECT_TIMEOUT:?}")))
        .map_err(|error| BenchError::Connect {
            endpoint: endpoint.to_string(),
            error,
        })
}

/// One connection: TCP (no Nagle delay), TLS for `https://`, then HTTP/2.
async fn open(url: &str, request_timeout: Duration, tls: Option<&Tls>) -> Result<Channel, String> {
    let (scheme, authority) = origin(url)?;
    let https = scheme == Scheme::HTTPS;
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    // `host()` keeps an IPv6 address's brackets, which neither a socket
    // address nor a TLS server name takes.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let handshake = |error: h2::Error| format!("HTTP/2 handshake: {}", error_chain(&error));
    if !https {
        return Channel::handshake(Unvectored(tcp), scheme, authority, request_timeout)
            .await
            .map_err(handshake);
    }
    let tls = tls.expect("https:// endpoints come with --cacert (normalize_endpoint)");
    let name = ServerName::try_from(host).map_err(|e| e.to_string())?;
    let stream = TlsConnector::from(Arc::clone(&tls.config))
        .connect(name, tcp.compat())
        .await
        .map_err(|e| format!("TLS handshake: {}", error_chain(&e)))?;
    Channel::handshake(stream.compat(), scheme, authority, request_timeout)
        .await
        .map_err(handshake)
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
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        std::fs::write(&ca, params.self_signed(&key).unwrap().pem()).unwrap();
        let error = Tls::load(&ca, Some(&ca), None).unwrap_err().to_string();
        assert!(error.contains("--cert and --key go together"), "{error}");
        assert!(Tls::load(&dir.path().join("missing.pem"), None, None).is_err());
        assert!(Tls::load(&ca, None, None).is_ok());
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let error = Tls::load(&ca, None, None).unwrap_err().to_string();
        assert!(
            error.contains("--cacert") && error.contains("no CERTIFICATE block"),
            "{error}"
        );
    }
}

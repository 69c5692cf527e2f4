//! TLS on every port with rustls (ring as its crypto): what a port presents
//! (certificate files read again when they change, or a self-signed one made at
//! start), how it checks client certificates (a CA, CRLs, and on the peer port
//! an allowed common name and host name), and the peer dialer's side. Rules and
//! messages follow etcd 3.4's `pkg/transport`; see docs/architecture.md#tls.
//!
//! Connections use futures-rustls over glommio's streams (they implement
//! futures-io): the same adapter tokio-rustls is, from the same maintainers,
//! and it keeps rustls's buffers bounded by rustls's own limits.

mod auto;
pub mod identity;
mod key_pair;
mod protocol;
pub mod stream;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_rustls::{TlsAcceptor, TlsConnector};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoClientAuth, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::ServerName;

use crate::config::tls::{TlsFiles, TlsProtocol};
use key_pair::{DialKey, FileKeyPair, KeySource, ServerKey};
pub use stream::MaybeTls;

/// ALPN of the client port: gRPC needs h2; HTTP/1.1 for /health and /metrics
/// (Go's server, etcd's, offers both).
pub const ALPN_CLIENT_PORT: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN of a `--listen-metrics-urls` port, which speaks HTTP/1.1 only.
pub const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];

/// A TLS handshake on any port must be over by then: a client that stalls
/// one holds a task and rustls's buffers, nothing more, and not for longer
/// (the plain client port gives a connection's first bytes as long).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// As Go says it ("open server.crt: no such file or directory").
    #[error("open {}: {}", .path.display(), describe(.source))]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{}: {reason}", .path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("{} and {}: {source}", .cert.display(), .key.display())]
    KeyPair {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("unexpected TLS cipher suite {0:?}")]
    UnknownSuite(String),
    #[error("--cipher-suites: rustls implements none of these suites")]
    NoSuite,
    #[error("cannot make a self-signed certificate: {0}")]
    SelfSigned(rcgen::Error),
    #[error("{what}: client certificates are required but there is no CA to verify them against (--{flag})")]
    NoClientCa { what: &'static str, flag: &'static str },
    #[error("{what}: {source}")]
    Verifier {
        what: &'static str,
        source: rustls::server::VerifierBuilderError,
    },
    #[error("peer dialer: {0}")]
    ServerVerifier(rustls::server::VerifierBuilderError),
    #[error(transparent)]
    Rustls(rustls::Error),
}

impl TlsError {
    fn pem(path: &Path, reason: impl std::fmt::Display) -> TlsError {
        TlsError::Pem {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

fn describe(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => error.to_string(),
    }
}

/// Which port's flags a side comes from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Client,
    Peer,
}

impl Port {
    fn what(self) -> &'static str {
        match self {
            Port::Client => "client TLS",
            Port::Peer => "peer TLS",
        }
    }

    fn ca_flag(self) -> &'static str {
        match self {
            Port::Client => "trusted-ca-file",
            Port::Peer => "peer-trusted-ca-file",
        }
    }
}

/// One port's TLS (the client and metrics ports', or the peer port's), built at start.
#[derive(Debug)]
pub struct Side {
    provider: Arc<CryptoProvider>,
    versions: Vec<&'static SupportedProtocolVersion>,
    /// What this side presents; None when no certificate is configured.
    key: Option<Arc<KeySource>>,
    /// What it presents dialing a peer, if not `key` (`--peer-client-cert-file`).
    dial_key: Option<Arc<KeySource>>,
    clients: Arc<dyn ClientCertVerifier>,
    /// The CA servers are verified against when this side dials (the peer port).
    roots: Arc<RootCertStore>,
    auto_tls: bool,
}

impl Side {
    /// Reads the files now, so a missing or bad one is a start error.
    /// `hosts`: the listen URLs' hosts, for a self-signed certificate.
    pub fn new(port: Port, files: &TlsFiles, protocol: &TlsProtocol, hosts: &[String]) -> Result<Side, TlsError> {
        let provider = protocol::provider(protocol)?;
        let versions = protocol::versions(protocol);
        let key = match (&files.cert_file, &files.key_file) {
            (Some(cert), Some(key)) => Some(Arc::new(KeySource::Files(FileKeyPair::open(
                cert,
                key,
                Arc::clone(&provider),
            )?))),
            _ if files.auto_tls => Some(Arc::new(KeySource::Fixed(Arc::new(auto::self_signed(
                hosts,
                files.self_signed_years,
                &provider,
            )?)))),
            _ => None,
        };
        let dial_key = match (&files.dial_cert_file, &files.dial_key_file) {
            (Some(cert), Some(key)) => Some(Arc::new(KeySource::Files(FileKeyPair::open(
                cert,
                key,
                Arc::clone(&provider),
            )?))),
            _ => None,
        };
        let roots = match &files.trusted_ca_file {
            Some(path) => Arc::new(roots(path)?),
            None => Arc::new(RootCertStore::empty()),
        };
        let clients = client_verifier(port, files, &roots, &provider)?;
        Ok(Side {
            provider,
            versions,
            key,
            dial_key,
            clients,
            roots,
            auto_tls: files.auto_tls && !files.has_key_pair(),
        })
    }

    /// The server side of a listener offering `alpn`; None when this side has
    /// no certificate (config refuses an https listen URL then).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Option<Arc<ServerConfig>>, TlsError> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&self.versions)
            .map_err(TlsError::Rustls)?
            .with_client_cert_verifier(Arc::clone(&self.clients))
            .with_cert_resolver(Arc::new(ServerKey(Arc::clone(key))));
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(Some(Arc::new(config)))
    }

    /// The dialing side: servers verified against this side's CA (the system's
    /// roots when none is given, as Go does; none under auto TLS, as etcd
    /// skips verification then), presenting this side's certificate.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let builder = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&self.versions)
            .map_err(TlsError::Rustls)?;
        let builder = if self.auto_tls {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verify::AnyServer(Arc::clone(&self.provider))))
        } else {
            let roots = if self.roots.is_empty() {
                Arc::new(system_roots())
            } else {
                Arc::clone(&self.roots)
            };
            let verifier = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&self.provider))
                .build()
                .map_err(TlsError::ServerVerifier)?;
            builder.with_webpki_verifier(verifier)
        };
        let config = match self.dial_key.as_ref().or(self.key.as_ref()) {
            Some(key) => builder.with_client_cert_resolver(Arc::new(DialKey(Arc::clone(key)))),
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in key_pair::read_certs(path)? {
        roots.add(cert).map_err(|error| TlsError::pem(path, error))?;
    }
    Ok(roots)
}

/// The machine's CA certificates; any that cannot be read are skipped, as Go's
/// `SystemCertPool` skips them.
fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    roots
}

/// How a side checks client certificates: etcd 3.4 requires and verifies them
/// when `--client-cert-auth` is on or a trusted CA is given, against that CA
/// and the CRLs; the peer port also checks the allowed name and host.
fn client_verifier(
    port: Port,
    files: &TlsFiles,
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    if !files.requires_client_certs() {
        return Ok(Arc::new(NoClientAuth));
    }
    if roots.is_empty() {
        return Err(TlsError::NoClientCa {
            what: port.what(),
            flag: port.ca_flag(),
        });
    }
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), Arc::clone(provider));
    if let Some(path) = &files.crl_file {
        builder = builder.with_crls(key_pair::read_crls(path)?);
    }
    let verifier = builder.build().map_err(|source| TlsError::Verifier {
        what: port.what(),
        source,
    })?;
    if files.allowed_cn.is_none() && files.allowed_hostname.is_none() {
        return Ok(verifier);
    }
    Ok(Arc::new(verify::AllowedPeer {
        inner: verifier,
        allowed_cn: files.allowed_cn.clone(),
        allowed_hostname: files.allowed_hostname.clone(),
    }))
}

/// A finished server-side handshake and what it proved about the client.
pub struct Accepted<S> {
    pub stream: futures_rustls::server::TlsStream<S>,
    /// The verified client certificate's common name (etcd's user name for it).
    pub common_name: Option<String>,
}

/// Why a handshake failed, said as a rejected connection is logged.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no handshake within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(std::io::Error),
}

/// The server side of a handshake on `stream`, within HANDSHAKE_TIMEOUT.
pub async fn accept<S>(acceptor: &TlsAcceptor, stream: S) -> Result<Accepted<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = async { acceptor.accept(stream).await };
    let stream = within(HANDSHAKE_TIMEOUT, handshake)
        .await
        .ok_or(HandshakeError::Timeout(HANDSHAKE_TIMEOUT))?
        .map_err(HandshakeError::Failed)?;
    let common_name = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(identity::common_name);
    Ok(Accepted { stream, common_name })
}

/// The client side of a handshake with `host` (a name or an IP address, as in
/// the peer's URL) on `stream`, within HANDSHAKE_TIMEOUT.
pub async fn connect<S>(
    connector: &TlsConnector,
    host: &str,
    stream: S,
) -> Result<futures_rustls::client::TlsStream<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = ServerName::try_from(host.to_string())
        .map_err(|error| HandshakeError::Failed(std::io::Error::new(std::io::ErrorKind::InvalidInput, error)))?;
    let handshake = async { connector.connect(name, stream).await };
    within(HANDSHAKE_TIMEOUT, handshake)
        .await
        .ok_or(HandshakeError::Timeout(HANDSHAKE_TIMEOUT))?
        .map_err(HandshakeError::Failed)
}

async fn within<T>(limit: Duration, work: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(work.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

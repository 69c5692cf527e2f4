//! Certificates, keys and CRLs read from PEM files, and the certificate a port
//! presents: read from its files again whenever they change on disk (etcd reads
//! them at every handshake; cert-manager and kubeadm renew them in place), or
//! made once at start (`--auto-tls`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use super::TlsError;

/// Every certificate in the PEM file at `path`, in order.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::pem(path, error))?;
    if certs.is_empty() {
        return Err(TlsError::pem(path, "no CERTIFICATE block"));
    }
    Ok(certs)
}

/// The private key in the PEM file at `path` (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| TlsError::pem(path, error))
}

/// Every CRL in the PEM file at `path`.
pub fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::pem(path, error))?;
    if crls.is_empty() {
        return Err(TlsError::pem(path, "no X509 CRL block"));
    }
    Ok(crls)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// A certificate chain and its key, checked to belong together.
fn certified(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(cert)?;
    let key_der = read_key(key)?;
    CertifiedKey::from_der(chain, key_der, provider).map_err(|source| TlsError::KeyPair {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    })
}

/// What identifies a file's contents without reading it: a renewal writes a
/// new file (new inode, size or modification time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path)?;
    Ok(Stamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
        inode: metadata.ino(),
    })
}

/// The certificate a port presents (as a server, or as a client dialing a peer).
#[derive(Debug)]
pub enum KeySource {
    /// Read from these files; read again at a handshake after they change.
    Files(FileKeyPair),
    /// Made at start (`--auto-tls`).
    Fixed(Arc<CertifiedKey>),
}

impl KeySource {
    /// The certificate to present now. A renewed pair that cannot be read
    /// (half written, or a certificate and key that do not match yet) is
    /// warned about and the last good pair is presented meanwhile: a
    /// renewal in progress must not refuse every new connection.
    pub fn current(&self) -> Arc<CertifiedKey> {
        match self {
            KeySource::Fixed(key) => Arc::clone(key),
            KeySource::Files(files) => files.current(),
        }
    }
}

/// A certificate and key file, the pair last read from them, and their stamps then.
#[derive(Debug)]
pub struct FileKeyPair {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    loaded: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    stamps: (Stamp, Stamp),
    pair: Arc<CertifiedKey>,
}

impl FileKeyPair {
    /// Reads the pair now: a missing or bad file is a start error.
    pub fn open(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<FileKeyPair, TlsError> {
        let stamps = stamps(cert, key).map_err(|source| TlsError::Open {
            path: cert.to_path_buf(),
            source,
        })?;
        let pair = Arc::new(certified(cert, key, &provider)?);
        Ok(FileKeyPair {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            loaded: Mutex::new(Loaded { stamps, pair }),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Ok(now) = stamps(&self.cert, &self.key) else {
            return Arc::clone(&loaded.pair);
        };
        if now != loaded.stamps {
            match certified(&self.cert, &self.key, &self.provider) {
                Ok(pair) => {
                    tracing::info!(cert = %self.cert.display(), "certificate files changed: read again");
                    *loaded = Loaded {
                        stamps: now,
                        pair: Arc::new(pair),
                    };
                }
                // Not recorded as read: the next handshake tries again.
                Err(error) => tracing::warn!(%error, "changed certificate files cannot be used yet"),
            }
        }
        Arc::clone(&loaded.pair)
    }
}

fn stamps(cert: &Path, key: &Path) -> io::Result<(Stamp, Stamp)> {
    Ok((stamp(cert)?, stamp(key)?))
}

/// The server side's certificate: rustls asks at every handshake.
#[derive(Debug)]
pub struct ServerKey(pub Arc<KeySource>);

impl rustls::server::ResolvesServerCert for ServerKey {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

/// The certificate a member presents when it dials a peer.
#[derive(Debug)]
pub struct DialKey(pub Arc<KeySource>);

impl rustls::client::ResolvesClientCert for DialKey {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

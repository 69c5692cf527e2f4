//! The TLS flags as plain settings: which files a port's certificate, key, CA
//! and CRL come from, whether client certificates are required, and the
//! protocol versions and cipher suites. `crate::tls` turns them into rustls
//! configurations at start; the checks here need no file and no rustls.

use std::path::PathBuf;

/// One side's TLS files and checks: the client port's (`--cert-file`, ...) or
/// the peer port's (`--peer-cert-file`, ...), as etcd's `transport.TLSInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The CA that client certificates must be signed by; as in etcd 3.4, a CA
    /// alone also requires client certificates.
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub crl_file: Option<PathBuf>,
    /// A self-signed certificate made at start when no certificate file is given.
    pub auto_tls: bool,
    /// How long such a certificate is valid (`--self-signed-cert-validity`).
    pub self_signed_years: u32,
    /// Peer side only (`--peer-client-cert-file`, `--peer-client-key-file`): the
    /// certificate this member presents when it dials a peer, if not `cert_file`.
    pub dial_cert_file: Option<PathBuf>,
    pub dial_key_file: Option<PathBuf>,
    /// Peer side only: a client certificate must have this common name.
    pub allowed_cn: Option<String>,
    /// Peer side only: a client certificate must be valid for this host name.
    pub allowed_hostname: Option<String>,
}

impl Default for TlsFiles {
    fn default() -> TlsFiles {
        TlsFiles {
            cert_file: None,
            key_file: None,
            trusted_ca_file: None,
            client_cert_auth: false,
            crl_file: None,
            auto_tls: false,
            self_signed_years: 1,
            dial_cert_file: None,
            dial_key_file: None,
            allowed_cn: None,
            allowed_hostname: None,
        }
    }
}

impl TlsFiles {
    /// Whether this side requires and verifies client certificates (etcd 3.4:
    /// `ClientCertAuth || TrustedCAFile != ""`).
    pub fn requires_client_certs(&self) -> bool {
        self.client_cert_auth || self.trusted_ca_file.is_some()
    }

    /// Whether a certificate and key are given as files.
    pub fn has_key_pair(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }

    /// Whether a TLS listener can be made: files, or a self-signed certificate.
    pub fn can_serve(&self) -> bool {
        self.has_key_pair() || self.auto_tls
    }
}

/// A TLS protocol version, as etcd 3.5's `--tls-min-version` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// `--tls-min-version`, `--tls-max-version` and `--cipher-suites`, shared by every port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsProtocol {
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// Go's names of the TLS 1.2 suites to offer; empty: rustls's defaults. TLS
    /// 1.3's suites are not configurable, as in Go.
    pub cipher_suites: Vec<String>,
}

impl Default for TlsProtocol {
    fn default() -> TlsProtocol {
        TlsProtocol {
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            cipher_suites: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TlsFlagError {
    #[error("unexpected TLS version {0:?} (must be one of: TLS1.0, TLS1.1, TLS1.2, TLS1.3)")]
    UnknownVersion(String),
    #[error("ringkv does not support {0}: rustls speaks TLS1.2 and TLS1.3 only")]
    OldVersion(String),
    #[error("min version ({min}) is greater than max version ({max})")]
    MinAboveMax { min: String, max: String },
    #[error("cipher suites cannot be configured when only TLS1.3 or greater is supported")]
    SuitesWithTls13Only,
}

/// `--tls-min-version` / `--tls-max-version`: etcd 3.5's names; an empty max
/// means the highest there is.
pub fn parse_version(text: &str) -> Result<TlsVersion, TlsFlagError> {
    match text {
        "TLS1.2" => Ok(TlsVersion::Tls12),
        "TLS1.3" => Ok(TlsVersion::Tls13),
        "TLS1.0" | "TLS1.1" => Err(TlsFlagError::OldVersion(text.to_string())),
        _ => Err(TlsFlagError::UnknownVersion(text.to_string())),
    }
}

/// The protocol flags checked together, with etcd 3.5's messages.
pub fn protocol(min: &str, max: &str, cipher_suites: &str) -> Result<TlsProtocol, TlsFlagError> {
    let min_version = parse_version(min)?;
    let max_version = if max.is_empty() {
        TlsVersion::Tls13
    } else {
        parse_version(max)?
    };
    if min_version > max_version {
        return Err(TlsFlagError::MinAboveMax {
            min: min.to_string(),
            max: max.to_string(),
        });
    }
    let cipher_suites: Vec<String> = cipher_suites
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect();
    if min_version == TlsVersion::Tls13 && !cipher_suites.is_empty() {
        return Err(TlsFlagError::SuitesWithTls13Only);
    }
    Ok(TlsProtocol {
        min_version,
        max_version,
        cipher_suites,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_default_to_tls12_through_tls13_as_etcd_35() {
        assert_eq!(protocol("TLS1.2", "", "").unwrap(), TlsProtocol::default());
        let only13 = protocol("TLS1.3", "TLS1.3", "").unwrap();
        assert_eq!(only13.min_version, TlsVersion::Tls13);
    }

    #[test]
    fn bad_version_combinations_are_refused_with_etcds_words() {
        assert_eq!(
            protocol("TLS1.3", "TLS1.2", "").unwrap_err().to_string(),
            "min version (TLS1.3) is greater than max version (TLS1.2)"
        );
        assert_eq!(
            protocol("TLS1.3", "", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")
                .unwrap_err()
                .to_string(),
            "cipher suites cannot be configured when only TLS1.3 or greater is supported"
        );
        assert!(matches!(protocol("SSL3", "", ""), Err(TlsFlagError::UnknownVersion(_))));
        assert!(matches!(protocol("TLS1.0", "", ""), Err(TlsFlagError::OldVersion(_))));
    }

    #[test]
    fn a_trusted_ca_alone_requires_client_certs_as_in_etcd_34() {
        let mut files = TlsFiles::default();
        assert!(!files.requires_client_certs());
        files.trusted_ca_file = Some(PathBuf::from("ca.crt"));
        assert!(files.requires_client_certs());
    }
}

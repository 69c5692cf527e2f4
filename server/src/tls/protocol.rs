//! `--tls-min-version`, `--tls-max-version` and `--cipher-suites` as a rustls
//! crypto provider (ring) and a list of protocol versions.

use std::sync::Arc;

use rustls::crypto::ring::cipher_suite;
use rustls::crypto::CryptoProvider;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

use super::TlsError;
use crate::config::tls::{TlsProtocol, TlsVersion};

/// The TLS 1.2 suites rustls implements, by Go's names (etcd's flag takes Go's
/// names; Go spells the ChaCha20 suites both with and without `_SHA256`).
const SUPPORTED: &[(&str, SupportedCipherSuite)] = &[
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// Suites etcd accepts that rustls does not implement (CBC, RC4, 3DES, and
/// RSA key exchange): dropped from the list with a warning. Leaving a suite
/// out only narrows what is offered, so a hardening guide's list that also
/// names these still starts.
const UNSUPPORTED: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// rustls's ring provider. rustls 0.23.48 deprecates it because ring has no
/// post-quantum key exchange (X25519MLKEM768 is in the aws-lc-rs provider
/// only); ring needs no cmake or assembler, and the clients ringkv serves
/// (etcd 3.4/3.5's Go and kube-apiserver's) offer no post-quantum group to
/// etcd either. Moving to aws-lc-rs is a change of this one function.
#[allow(deprecated)]
pub fn default_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// ring's provider, its TLS 1.2 suites narrowed to `--cipher-suites` (TLS 1.3's
/// are kept: Go does not let them be configured either).
pub fn provider(protocol: &TlsProtocol) -> Result<Arc<CryptoProvider>, TlsError> {
    let mut provider = default_provider();
    if protocol.cipher_suites.is_empty() {
        return Ok(Arc::new(provider));
    }
    let mut tls12 = Vec::new();
    for name in &protocol.cipher_suites {
        if let Some((_, suite)) = SUPPORTED.iter().find(|(known, _)| known == name) {
            if !tls12.contains(suite) {
                tls12.push(*suite);
            }
        } else if UNSUPPORTED.contains(&name.as_str()) {
            tracing::warn!(suite = %name, "cipher suite left out: rustls implements only ECDHE suites with AES-GCM or ChaCha20-Poly1305");
        } else {
            return Err(TlsError::UnknownSuite(name.clone()));
        }
    }
    if tls12.is_empty() {
        return Err(TlsError::NoSuite);
    }
    provider
        .cipher_suites
        .retain(|suite| matches!(suite, SupportedCipherSuite::Tls13(_)));
    provider.cipher_suites.extend(tls12);
    Ok(Arc::new(provider))
}

/// The versions from `--tls-min-version` to `--tls-max-version`.
pub fn versions(protocol: &TlsProtocol) -> Vec<&'static SupportedProtocolVersion> {
    let mut versions = Vec::with_capacity(2);
    for (version, supported) in [
        (TlsVersion::Tls13, &rustls::version::TLS13),
        (TlsVersion::Tls12, &rustls::version::TLS12),
    ] {
        if protocol.min_version <= version && version <= protocol.max_version {
            versions.push(supported);
        }
    }
    assert!(!versions.is_empty(), "config checks min <= max");
    versions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suites(names: &[&str]) -> Result<Arc<CryptoProvider>, TlsError> {
        provider(&TlsProtocol {
            cipher_suites: names.iter().map(|name| name.to_string()).collect(),
            ..TlsProtocol::default()
        })
    }

    #[test]
    fn cipher_suites_narrow_tls12_and_keep_tls13() {
        let narrowed = suites(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_RSA_WITH_AES_128_CBC_SHA"]).unwrap();
        let tls12: Vec<_> = narrowed
            .cipher_suites
            .iter()
            .filter(|suite| matches!(suite, SupportedCipherSuite::Tls12(_)))
            .collect();
        assert_eq!(tls12, [&cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]);
        assert_eq!(
            narrowed.cipher_suites.len() - 1,
            default_provider()
                .cipher_suites
                .iter()
                .filter(|suite| matches!(suite, SupportedCipherSuite::Tls13(_)))
                .count()
        );
    }

    #[test]
    fn unknown_suites_are_refused_with_etcds_words_and_unsupported_ones_alone_too() {
        assert_eq!(
            suites(&["FOO"]).unwrap_err().to_string(),
            r#"unexpected TLS cipher suite "FOO""#
        );
        assert!(matches!(
            suites(&["TLS_RSA_WITH_AES_128_CBC_SHA"]),
            Err(TlsError::NoSuite)
        ));
    }

    #[test]
    fn versions_follow_min_and_max() {
        let only12 = TlsProtocol {
            max_version: TlsVersion::Tls12,
            ..TlsProtocol::default()
        };
        assert_eq!(versions(&only12), [&rustls::version::TLS12]);
        assert_eq!(versions(&TlsProtocol::default()).len(), 2);
    }
}

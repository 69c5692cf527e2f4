//! Certificate checks rustls's verifiers do not make on their own:
//! `--peer-cert-allowed-cn` and `--peer-cert-allowed-hostname` on top of the
//! CA's verification, and the peer dialer's acceptance of any certificate
//! under `--peer-auto-tls` (etcd's `InsecureSkipVerify`: a self-signed
//! certificate cannot be verified; the link is encrypted, not authenticated).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme};

use super::identity;

/// Why a peer's certificate, signed by the peer CA, is still refused.
#[derive(Debug, thiserror::Error)]
pub enum PeerNameError {
    #[error("CommonName authentication failed (CommonName {found:?}, allowed {allowed:?})")]
    CommonName { found: Option<String>, allowed: String },
    #[error("the certificate is not valid for the allowed hostname {0:?}")]
    Hostname(String),
}

/// The CA's verification, then the allowed common name and host name.
#[derive(Debug)]
pub struct AllowedPeer {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub allowed_cn: Option<String>,
    pub allowed_hostname: Option<String>,
}

impl AllowedPeer {
    fn check_names(&self, cert: &CertificateDer<'_>) -> Result<(), PeerNameError> {
        if let Some(allowed) = &self.allowed_cn {
            let found = identity::common_name(cert);
            if found.as_deref() != Some(allowed.as_str()) {
                return Err(PeerNameError::CommonName {
                    found,
                    allowed: allowed.clone(),
                });
            }
        }
        if let Some(host) = &self.allowed_hostname {
            if !identity::valid_for_host(cert, host) {
                return Err(PeerNameError::Hostname(host.clone()));
            }
        }
        Ok(())
    }
}

impl ClientCertVerifier for AllowedPeer {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        self.check_names(end_entity)
            .map_err(|refused| Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(refused)))))?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Any server certificate, its handshake signatures still checked.
#[derive(Debug)]
pub struct AnyServer(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

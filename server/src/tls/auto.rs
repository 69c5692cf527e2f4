//! `--auto-tls` and `--peer-auto-tls`: a self-signed certificate made at start,
//! as etcd's `transport.SelfCert` makes one (ECDSA P-256, valid for the hosts
//! of the listen URLs, for server and client use). etcd writes it
//! under the data directory and reuses it; ringkv keeps it in memory and makes
//! a new one at every start: nobody can verify a self-signed certificate
//! anyway (etcd's clients of one skip verification).

use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::TlsError;

/// A self-signed certificate for `hosts` (names or IP addresses), valid for
/// `years` (etcd 3.5's `--self-signed-cert-validity`; etcd 3.4's is one year).
pub fn self_signed(hosts: &[String], years: u32, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let made = || -> Result<(Vec<u8>, Vec<u8>), rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(hosts.to_vec())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "etcd");
        params.distinguished_name = name;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now;
        params.not_after = now + time::Duration::days(365 * i64::from(years));
        let cert = params.self_signed(&key)?;
        Ok((cert.der().to_vec(), key.serialize_der()))
    };
    let (cert, key) = made().map_err(TlsError::SelfSigned)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
    CertifiedKey::from_der(vec![cert.into()], key, provider).map_err(TlsError::Rustls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_names_its_hosts() {
        let provider = super::super::protocol::default_provider();
        let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let key = self_signed(&hosts, 1, &provider).unwrap();
        let cert = webpki::EndEntityCert::try_from(&key.cert[0]).unwrap();
        for host in &hosts {
            let name = rustls_pki_types::ServerName::try_from(host.as_str()).unwrap();
            cert.verify_is_valid_for_subject_name(&name).unwrap();
        }
        let other = rustls_pki_types::ServerName::try_from("example.com").unwrap();
        assert!(cert.verify_is_valid_for_subject_name(&other).is_err());
    }
}

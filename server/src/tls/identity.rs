//! What a verified certificate says about its holder: the common name (etcd's
//! user name for a client certificate when auth is on) and the host names it
//! is valid for (`--peer-cert-allowed-hostname`).

use rustls_pki_types::{CertificateDer, ServerName};

/// The subject's first common name, if it has one that is text.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = parsed.subject().iter_common_name().next()?;
    name.as_str().ok().map(str::to_string)
}

/// Whether `cert` is valid for `host` (a DNS name or an IP address in its
/// subject alternative names), as a TLS client checks a server's.
pub fn valid_for_host(cert: &CertificateDer<'_>, host: &str) -> bool {
    let Ok(name) = ServerName::try_from(host) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert).is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, sans: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn the_common_name_is_read_from_the_subject() {
        assert_eq!(common_name(&cert("root", &[])).as_deref(), Some("root"));
        assert_eq!(common_name(&CertificateDer::from(vec![1, 2, 3])), None);
    }

    #[test]
    fn a_certificate_is_valid_for_its_alternative_names_only() {
        let cert = cert("m0", &["m0.example", "10.0.0.1"]);
        assert!(valid_for_host(&cert, "m0.example"));
        assert!(valid_for_host(&cert, "10.0.0.1"));
        assert!(!valid_for_host(&cert, "m1.example"));
        assert!(!valid_for_host(&cert, "m0"));
    }
}

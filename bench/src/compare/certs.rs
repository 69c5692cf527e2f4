//! `compare --tls`: a CA, a server certificate for 127.0.0.1 and a client
//! certificate, made with rcgen in the data root, and the flags that give both
//! servers the same mutual TLS kubeadm configures (https client URLs,
//! `--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::connect::Tls;
use crate::BenchError;

/// The files one `compare --tls` run serves (PEM), and what its load client
/// presents, read once.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client: Tls,
}

impl TlsFiles {
    /// Makes the CA and the two certificates in `dir`. Keys are ECDSA P-256
    /// (rcgen's default; kubeadm's are RSA 2048): the key type changes the
    /// handshake, which a run does once per connection, not the record
    /// encryption every request pays.
    pub fn make(dir: &Path) -> Result<TlsFiles, BenchError> {
        let made =
            |what: &str, error: rcgen::Error| BenchError::Prepare(format!("making the {what} certificate: {error}"));
        let ca_key = KeyPair::generate().map_err(|e| made("CA", e))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|e| made("CA", e))?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "ringkv-bench-ca");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(|e| made("CA", e))?;
        let issuer = Issuer::new(ca_params, ca_key);
        let ca = dir.join("ca.crt");
        let (server_cert, server_key) = (dir.join("server.crt"), dir.join("server.key"));
        let (client_cert, client_key) = (dir.join("client.crt"), dir.join("client.key"));
        write(&ca, &ca_cert.pem())?;
        let issue = |cn: &str, usage: ExtendedKeyUsagePurpose, cert: &Path, key: &Path| {
            let pair = KeyPair::generate().map_err(|e| made(cn, e))?;
            let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).map_err(|e| made(cn, e))?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![usage];
            let signed = params.signed_by(&pair, &issuer).map_err(|e| made(cn, e))?;
            write(cert, &signed.pem())?;
            write(key, &pair.serialize_pem())
        };
        issue(
            "kube-etcd",
            ExtendedKeyUsagePurpose::ServerAuth,
            &server_cert,
            &server_key,
        )?;
        issue(
            "kube-apiserver-etcd-client",
            ExtendedKeyUsagePurpose::ClientAuth,
            &client_cert,
            &client_key,
        )?;
        let client = Tls::load(&ca, Some(&client_cert), Some(&client_key))?;
        Ok(TlsFiles {
            ca,
            server_cert,
            server_key,
            client,
        })
    }

    /// The server flags: the certificate and key served, the CA that client
    /// certificates must chain to, and client certificates required.
    pub fn server_flags(&self) -> Vec<String> {
        vec![
            format!("--cert-file={}", self.server_cert.display()),
            format!("--key-file={}", self.server_key.display()),
            format!("--trusted-ca-file={}", self.ca.display()),
            "--client-cert-auth=true".to_string(),
        ]
    }

    /// What the load client trusts and presents.
    pub fn client(&self) -> &Tls {
        &self.client
    }
}

fn write(path: &Path, pem: &str) -> Result<(), BenchError> {
    std::fs::write(path, pem).map_err(|e| BenchError::Prepare(format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_are_pem_and_the_client_loads_them() {
        let dir = tempfile::tempdir().unwrap();
        // make() fails unless the client's files load.
        let files = TlsFiles::make(dir.path()).unwrap();
        for path in [&files.ca, &files.server_cert, &dir.path().join("client.crt")] {
            assert!(std::fs::read_to_string(path)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----"));
        }
        assert!(std::fs::read_to_string(&files.server_key)
            .unwrap()
            .contains("PRIVATE KEY"));
        let flags = files.server_flags().join(" ");
        assert!(
            flags.contains("--client-cert-auth=true") && flags.contains("server.crt"),
            "{flags}"
        );
    }
}

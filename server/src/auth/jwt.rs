//! `--auth-token jwt`: tokens signed with the configured key, carrying the
//! user and the auth revision (etcd's `auth/jwt.go`). Signed and verified on
//! the client cores, never on the store core: a signature costs far more
//! than a permission check.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use super::AuthInfo;
use crate::config::auth_token::JwtOptions;

/// Why the JWT keys could not be made (a start error).
#[derive(Debug, thiserror::Error)]
pub enum JwtKeyError {
    #[error("--auth-token jwt: unknown sign-method {0:?}")]
    SignMethod(String),
    #[error("--auth-token jwt: open {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("--auth-token jwt: ringkv needs pub-key (it does not derive it from priv-key)")]
    NoPublicKey,
    #[error("--auth-token jwt: {sign_method} needs priv-key")]
    NoSecret { sign_method: String },
    #[error("--auth-token jwt: {0}")]
    Key(#[from] jsonwebtoken::errors::Error),
}

/// Authenticate with a verify-only key (etcd's `ErrVerifyOnly`).
#[derive(Debug, thiserror::Error)]
pub enum JwtSignError {
    #[error("auth: token signing attempted with verify-only key")]
    VerifyOnly,
    #[error("signing a token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// The configured keys and lifetime.
pub struct JwtKeys {
    algorithm: Algorithm,
    /// None: verify-only (no priv-key).
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    ttl: Duration,
}

impl JwtKeys {
    /// Reads the keys `--auth-token jwt,...` names.
    pub fn load(options: &JwtOptions) -> Result<JwtKeys, JwtKeyError> {
        let algorithm = Algorithm::from_str(&options.sign_method)
            .map_err(|_| JwtKeyError::SignMethod(options.sign_method.clone()))?;
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|error| JwtKeyError::Read {
                path: path.display().to_string(),
                error,
            })
        };
        let private = options.priv_key.as_deref().map(read).transpose()?;
        let public = options.pub_key.as_deref().map(read).transpose()?;
        let (signing, verifying) = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let secret = private.ok_or_else(|| JwtKeyError::NoSecret {
                    sign_method: options.sign_method.clone(),
                })?;
                (
                    Some(EncodingKey::from_secret(&secret)),
                    DecodingKey::from_secret(&secret),
                )
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                let public = public.ok_or(JwtKeyError::NoPublicKey)?;
                let signing = private.map(|key| EncodingKey::from_ec_pem(&key)).transpose()?;
                (signing, DecodingKey::from_ec_pem(&public)?)
            }
            Algorithm::EdDSA => return Err(JwtKeyError::SignMethod(options.sign_method.clone())),
            _ => {
                let public = public.ok_or(JwtKeyError::NoPublicKey)?;
                let signing = private.map(|key| EncodingKey::from_rsa_pem(&key)).transpose()?;
                (signing, DecodingKey::from_rsa_pem(&public)?)
            }
        };
        Ok(JwtKeys {
            algorithm,
            signing,
            verifying,
            ttl: options.ttl,
        })
    }

    /// A token for `user` at auth revision `revision`, expiring `ttl` from now.
    pub fn sign(&self, user: &str, revision: u64, now: SystemTime) -> Result<String, JwtSignError> {
        let key = self.signing.as_ref().ok_or(JwtSignError::VerifyOnly)?;
        let expires = (now + self.ttl)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = serde_json::json!({
            "username": user,
            "revision": revision,
            "exp": expires,
        });
        Ok(jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key)?)
    }

    /// The user and revision of a token signed with this key, of this
    /// method and not expired; None for any other.
    pub fn verify(&self, token: &str) -> Option<AuthInfo> {
        let mut validation = Validation::new(self.algorithm);
        // jwt-go, which etcd uses, allows no leeway.
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &self.verifying, &validation).ok()?;
        let username = data.claims.get("username")?.as_str()?.to_string();
        // JSON numbers: jwt-go reads the revision as a float64.
        let revision = data.claims.get("revision")?.as_f64()? as u64;
        Some(AuthInfo { username, revision })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(sign_method: &str, ttl: Duration) -> (tempfile::TempDir, JwtKeys) {
        let dir = tempfile::tempdir().unwrap();
        let pair = match sign_method {
            "ES256" => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            // rcgen over ring makes no RSA keys: a fixed one for tests.
            _ => rcgen::KeyPair::from_pem(TEST_RSA_KEY).unwrap(),
        };
        let private = dir.path().join("key.pem");
        let public = dir.path().join("key.pub");
        std::fs::write(&private, pair.serialize_pem()).unwrap();
        std::fs::write(&public, pair.public_key_pem()).unwrap();
        let options = JwtOptions {
            sign_method: sign_method.to_string(),
            pub_key: Some(public),
            priv_key: Some(private),
            ttl,
        };
        let keys = JwtKeys::load(&options).unwrap();
        (dir, keys)
    }

    /// A 2048-bit RSA key for tests only.
    const TEST_RSA_KEY: &str = include_str!("testdata/rsa-2048.pem");

    #[test]
    fn a_signed_token_verifies_as_its_user_and_revision() {
        for method in ["RS256", "ES256"] {
            let (_dir, keys) = keys(method, Duration::from_secs(60));
            let token = keys.sign("alice", 7, SystemTime::now()).unwrap();
            let info = keys.verify(&token).unwrap();
            assert_eq!((info.username.as_str(), info.revision), ("alice", 7), "{method}");
            assert!(keys.verify(&format!("{token}x")).is_none(), "{method}: tampered");
        }
    }

    #[test]
    fn an_expired_token_does_not_verify() {
        let (_dir, keys) = keys("ES256", Duration::from_secs(1));
        let token = keys
            .sign("alice", 7, SystemTime::now() - Duration::from_secs(5))
            .unwrap();
        assert!(keys.verify(&token).is_none());
    }
}

//! `--auth-token` as etcd reads it (`auth/store.go` `decomposeOpts`,
//! `auth/options.go`): `simple`, or `jwt,` followed by `key=value` options
//! (`sign-method`, `pub-key`, `priv-key`, `ttl`).

use std::path::PathBuf;
use std::time::Duration;

/// etcd's JWT lifetime when `ttl` is not given.
pub const JWT_TTL_DEFAULT: Duration = Duration::from_secs(5 * 60);

/// The token provider `--auth-token` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthToken {
    Simple,
    Jwt(JwtOptions),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtOptions {
    /// As given (`RS256`, `ES256`, ...); checked when the keys are read.
    pub sign_method: String,
    pub pub_key: Option<PathBuf>,
    pub priv_key: Option<PathBuf>,
    pub ttl: Duration,
}

/// Why `--auth-token` was refused (etcd: "auth: invalid auth options").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthTokenError {
    #[error("--auth-token: option {0:?} is not key=value")]
    NotKeyValue(String),
    #[error("--auth-token: option {0:?} is given twice")]
    Duplicate(String),
    #[error("--auth-token: unknown token type {0:?} (simple or jwt)")]
    UnknownType(String),
    #[error("--auth-token: jwt ttl {0:?}: {1}")]
    Ttl(String, String),
    #[error("--auth-token: jwt needs sign-method")]
    NoSignMethod,
}

pub fn parse(value: &str) -> Result<AuthToken, AuthTokenError> {
    let mut parts = value.split(',');
    let kind = parts.next().unwrap_or_default();
    let mut options: Vec<(&str, &str)> = Vec::new();
    for part in parts {
        let Some((key, value)) = part.split_once('=').filter(|(_, value)| !value.contains('=')) else {
            return Err(AuthTokenError::NotKeyValue(part.to_string()));
        };
        if options.iter().any(|(seen, _)| *seen == key) {
            return Err(AuthTokenError::Duplicate(key.to_string()));
        }
        options.push((key, value));
    }
    let option = |name: &str| options.iter().find(|(key, _)| *key == name).map(|(_, value)| *value);
    match kind {
        "simple" => Ok(AuthToken::Simple),
        "jwt" => {
            let ttl = match option("ttl").filter(|ttl| !ttl.is_empty()) {
                None => JWT_TTL_DEFAULT,
                Some(ttl) => humantime::parse_duration(ttl)
                    .map_err(|error| AuthTokenError::Ttl(ttl.to_string(), error.to_string()))?,
            };
            let path = |name: &str| option(name).filter(|path| !path.is_empty()).map(PathBuf::from);
            Ok(AuthToken::Jwt(JwtOptions {
                sign_method: option("sign-method")
                    .filter(|method| !method.is_empty())
                    .ok_or(AuthTokenError::NoSignMethod)?
                    .to_string(),
                pub_key: path("pub-key"),
                priv_key: path("priv-key"),
                ttl,
            }))
        }
        other => Err(AuthTokenError::UnknownType(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_and_jwt_read_as_etcd_reads_them() {
        assert_eq!(parse("simple"), Ok(AuthToken::Simple));
        let jwt = parse("jwt,pub-key=a.pub,priv-key=a.key,sign-method=RS256,ttl=10m").unwrap();
        assert_eq!(
            jwt,
            AuthToken::Jwt(JwtOptions {
                sign_method: "RS256".to_string(),
                pub_key: Some(PathBuf::from("a.pub")),
                priv_key: Some(PathBuf::from("a.key")),
                ttl: Duration::from_secs(600),
            })
        );
        let AuthToken::Jwt(default) = parse("jwt,sign-method=ES256,priv-key=k").unwrap() else {
            panic!("jwt");
        };
        assert_eq!(default.ttl, JWT_TTL_DEFAULT);
    }

    #[test]
    fn malformed_options_are_refused() {
        assert_eq!(parse("jwt,ttl"), Err(AuthTokenError::NotKeyValue("ttl".to_string())));
        assert_eq!(
            parse("jwt,ttl=1s,ttl=2s"),
            Err(AuthTokenError::Duplicate("ttl".to_string()))
        );
        assert_eq!(parse("jwt,priv-key=k"), Err(AuthTokenError::NoSignMethod));
        assert_eq!(parse("oauth"), Err(AuthTokenError::UnknownType("oauth".to_string())));
    }
}

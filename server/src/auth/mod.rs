//! etcd's auth (users, roles, key-range permissions, tokens), apart from any
//! transport: the state machine the store core applies entries to and checks
//! requests against, simple tokens, and password hashing.

pub mod jwt;
mod perms;
mod state;
mod tokens;

pub use perms::Access;
pub use state::{AuthInfo, AuthRecordError, AuthState, ROOT_ROLE, ROOT_USER};
pub use tokens::{token_prefix, SimpleTokens};

/// Who a client call comes from, as the client core found it in the call's
/// metadata and connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CallAuth {
    /// No token, no verified certificate: anonymous.
    #[default]
    None,
    /// A simple token (`token` metadata), looked up on the store core.
    Token(String),
    /// A user the client core verified a JWT of, at the token's revision.
    Verified(AuthInfo),
    /// The common name of the verified client certificate (no token sent):
    /// the user, at the current revision (etcd's `AuthInfoFromTLS`).
    CommonName(String),
}

/// Who a read or a proposal is checked as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The server itself (`/health`'s read, a leader's lease expiry): etcd
    /// checks none of its own calls.
    Server,
    /// A client, as the user its credentials name, if any.
    Client(Option<AuthInfo>),
}

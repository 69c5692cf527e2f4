//! etcd's Auth service on a client core, and who a call comes as. Passwords
//! are hashed and checked here with bcrypt on a blocking thread (never on the
//! store core, which only stores hashes), at most `BCRYPT_IN_FLIGHT_MAX` at
//! once per client core; JWTs are signed and verified here too.

use std::rc::Rc;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use glommio::sync::Semaphore;
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::ringkvpb::auth_request::Request as AuthOp;
use ringkv_proto::ringkvpb::{AuthRequest, AuthenticateEntry};

use super::store_client::StoreClient;
use crate::auth::jwt::JwtKeys;
use crate::auth::token_prefix;
use crate::etcd_error::EtcdError;
use crate::grpc::{self, CallContext, Code, Encoded, Status};
use crate::store::messages::{AuthCall, AuthResponse, CallAuth, Request, Response};

/// bcrypt hashes or checks running at once per client core: a flood of
/// Authenticate (or UserAdd) calls queues here instead of taking every
/// blocking thread's CPU. etcd has no such bound.
pub const BCRYPT_IN_FLIGHT_MAX: u64 = 2;

/// Times Authenticate checks a password again because the auth state changed
/// between the check and the token (etcd retries without a bound).
const AUTHENTICATE_ATTEMPTS_MAX: usize = 5;

/// The tokens this server gives and takes.
#[derive(Clone)]
pub enum TokenKind {
    Simple,
    Jwt(Arc<JwtKeys>),
}

/// The Auth RPCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthMethod {
    Enable,
    Disable,
    Status,
    Authenticate,
    UserAdd,
    UserGet,
    UserList,
    UserDelete,
    UserChangePassword,
    UserGrantRole,
    UserRevokeRole,
    RoleAdd,
    RoleGet,
    RoleList,
    RoleDelete,
    RoleGrantPermission,
    RoleRevokePermission,
}

impl AuthMethod {
    pub(crate) fn route(service: &str, method: &str) -> Option<AuthMethod> {
        if service != "etcdserverpb.Auth" {
            return None;
        }
        Some(match method {
            "AuthEnable" => AuthMethod::Enable,
            "AuthDisable" => AuthMethod::Disable,
            "AuthStatus" => AuthMethod::Status,
            "Authenticate" => AuthMethod::Authenticate,
            "UserAdd" => AuthMethod::UserAdd,
            "UserGet" => AuthMethod::UserGet,
            "UserList" => AuthMethod::UserList,
            "UserDelete" => AuthMethod::UserDelete,
            "UserChangePassword" => AuthMethod::UserChangePassword,
            "UserGrantRole" => AuthMethod::UserGrantRole,
            "UserRevokeRole" => AuthMethod::UserRevokeRole,
            "RoleAdd" => AuthMethod::RoleAdd,
            "RoleGet" => AuthMethod::RoleGet,
            "RoleList" => AuthMethod::RoleList,
            "RoleDelete" => AuthMethod::RoleDelete,
            "RoleGrantPermission" => AuthMethod::RoleGrantPermission,
            "RoleRevokePermission" => AuthMethod::RoleRevokePermission,
            _ => return None,
        })
    }
}

/// A client core's auth: its token kind, bcrypt's cost and bound.
pub struct ClientAuth {
    tokens: TokenKind,
    bcrypt_cost: u32,
    bcrypt_slots: Rc<Semaphore>,
}

impl ClientAuth {
    pub fn new(tokens: TokenKind, bcrypt_cost: u32) -> ClientAuth {
        ClientAuth {
            tokens,
            bcrypt_cost,
            bcrypt_slots: Rc::new(Semaphore::new(BCRYPT_IN_FLIGHT_MAX)),
        }
    }

    /// Who the call comes as: its `token` metadata (clientv3's; `authorization`
    /// is the gateway's), else the verified certificate's common name.
    pub fn caller(&self, ctx: &CallContext) -> Result<CallAuth, Status> {
        let token = ctx.metadata.get("token").or_else(|| ctx.metadata.get("authorization"));
        if let Some(token) = token {
            let token = token.to_str().map_err(|_| Status::from(EtcdError::InvalidAuthToken))?;
            return match &self.tokens {
                TokenKind::Simple => Ok(CallAuth::Token(token.to_string())),
                TokenKind::Jwt(keys) => keys
                    .verify(token)
                    .map(CallAuth::Verified)
                    .ok_or_else(|| Status::from(EtcdError::InvalidAuthToken)),
            };
        }
        Ok(match &ctx.client_common_name {
            Some(name) => CallAuth::CommonName(name.to_string()),
            None => CallAuth::None,
        })
    }

    async fn bcrypt<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
        let _slot = self
            .bcrypt_slots
            .acquire_permit(1)
            .await
            .map_err(|_| Status::from(EtcdError::Stopped))?;
        Ok(glommio::executor().spawn_blocking(work).await)
    }

    /// bcrypt's hash of `password`, as Go's `bcrypt` writes it (`$2a$`).
    async fn hash(&self, password: String) -> Result<String, Status> {
        let cost = self.bcrypt_cost;
        let hashed = self
            .bcrypt(move || {
                bcrypt::hash_with_result(password, cost).map(|hash| hash.format_for_version(bcrypt::Version::TwoA))
            })
            .await?;
        hashed.map_err(|error| Status::new(Code::Unknown, error.to_string()))
    }

    /// Serves one Auth RPC for a caller who came as `auth`.
    pub(crate) async fn unary(
        &self,
        store: &StoreClient,
        method: AuthMethod,
        request: Bytes,
        auth: CallAuth,
        require_leader: bool,
    ) -> Result<Encoded, Status> {
        let call = match decode(method, request)? {
            Decoded::Status => AuthCall::Status,
            Decoded::Authenticate(request) => return self.authenticate(store, request, auth, require_leader).await,
            Decoded::Op(op) => AuthCall::Propose(AuthRequest {
                request: Some(self.hash_passwords(op).await?),
            }),
        };
        let response = store
            .call_rpc_as(Request::Auth(call), require_leader, auth)
            .await
            .map_err(Status::from)?;
        Ok(encode(response))
    }

    /// Replaces a password with its hash: the entry never holds it.
    async fn hash_passwords(&self, op: AuthOp) -> Result<AuthOp, Status> {
        Ok(match op {
            AuthOp::UserAdd(mut add) => {
                let no_password = add.options.as_ref().is_some_and(|options| options.no_password);
                let password = std::mem::take(&mut add.password);
                add.hashed_password = if no_password {
                    String::new()
                } else {
                    self.hash(password).await?
                };
                AuthOp::UserAdd(add)
            }
            AuthOp::UserChangePassword(mut change) => {
                let password = std::mem::take(&mut change.password);
                change.hashed_password = self.hash(password).await?;
                AuthOp::UserChangePassword(change)
            }
            op => op,
        })
    }

    /// etcd's Authenticate: check the password against the hash the store
    /// holds (here, off the store core), then propose the token; if the auth
    /// state changed in between, check again.
    async fn authenticate(
        &self,
        store: &StoreClient,
        request: pb::AuthenticateRequest,
        auth: CallAuth,
        require_leader: bool,
    ) -> Result<Encoded, Status> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let asked = Request::Auth(AuthCall::PasswordHash(request.name.clone()));
            let (hash, revision) = match store.call_rpc_as(asked, require_leader, auth.clone()).await {
                Ok(Response::Auth(AuthResponse::PasswordHash { hash, revision })) => (hash, revision),
                Ok(other) => unreachable!("a password hash is answered in kind, not with {other:?}"),
                Err(error) => return Err(Status::from(error)),
            };
            let password = request.password.clone();
            let matches = self
                .bcrypt(move || bcrypt::verify(password, &String::from_utf8_lossy(&hash)).unwrap_or(false))
                .await?;
            if !matches {
                tracing::info!(user = %request.name, "invalid password");
                return Err(Status::from(EtcdError::AuthFailed));
            }
            let simple_token_prefix = match self.tokens {
                TokenKind::Simple => token_prefix(),
                TokenKind::Jwt(_) => String::new(),
            };
            let entry = AuthenticateEntry {
                name: request.name.clone(),
                simple_token_prefix,
                checked_revision: revision,
            };
            let proposed = AuthCall::Propose(AuthRequest {
                request: Some(AuthOp::Authenticate(entry)),
            });
            match store
                .call_rpc_as(Request::Auth(proposed), require_leader, auth.clone())
                .await
            {
                Err(EtcdError::AuthOldRevision) if attempts < AUTHENTICATE_ATTEMPTS_MAX => continue,
                Err(error) => return Err(Status::from(error)),
                Ok(Response::Auth(AuthResponse::Authenticate(mut response))) => {
                    if let TokenKind::Jwt(keys) = &self.tokens {
                        response.token = keys
                            .sign(&request.name, revision, SystemTime::now())
                            .map_err(|error| Status::new(Code::Unknown, error.to_string()))?;
                    }
                    return Ok(grpc::encode(&response));
                }
                Ok(other) => unreachable!("Authenticate is answered in kind, not with {other:?}"),
            }
        }
    }
}

/// An Auth RPC's request as decoded, passwords still plain.
pub(crate) enum Decoded {
    Status,
    Authenticate(pb::AuthenticateRequest),
    /// Proposed once its passwords are hashed.
    Op(AuthOp),
}

/// Decodes an Auth RPC's request message.
pub(crate) fn decode(method: AuthMethod, request: Bytes) -> Result<Decoded, Status> {
    let op = match method {
        AuthMethod::Status => {
            let _: pb::AuthStatusRequest = grpc::decode(request)?;
            return Ok(Decoded::Status);
        }
        AuthMethod::Authenticate => return Ok(Decoded::Authenticate(grpc::decode(request)?)),
        AuthMethod::Enable => AuthOp::Enable(grpc::decode(request)?),
        AuthMethod::Disable => AuthOp::Disable(grpc::decode(request)?),
        AuthMethod::UserAdd => AuthOp::UserAdd(grpc::decode(request)?),
        AuthMethod::UserChangePassword => AuthOp::UserChangePassword(grpc::decode(request)?),
        AuthMethod::UserGet => AuthOp::UserGet(grpc::decode(request)?),
        AuthMethod::UserList => AuthOp::UserList(grpc::decode(request)?),
        AuthMethod::UserDelete => AuthOp::UserDelete(grpc::decode(request)?),
        AuthMethod::UserGrantRole => AuthOp::UserGrantRole(grpc::decode(request)?),
        AuthMethod::UserRevokeRole => AuthOp::UserRevokeRole(grpc::decode(request)?),
        AuthMethod::RoleAdd => AuthOp::RoleAdd(grpc::decode(request)?),
        AuthMethod::RoleGet => AuthOp::RoleGet(grpc::decode(request)?),
        AuthMethod::RoleList => AuthOp::RoleList(grpc::decode(request)?),
        AuthMethod::RoleDelete => AuthOp::RoleDelete(grpc::decode(request)?),
        AuthMethod::RoleGrantPermission => AuthOp::RoleGrantPermission(grpc::decode(request)?),
        AuthMethod::RoleRevokePermission => AuthOp::RoleRevokePermission(grpc::decode(request)?),
    };
    Ok(Decoded::Op(op))
}

fn encode(response: Response) -> Encoded {
    let Response::Auth(response) = response else {
        unreachable!("an Auth call is answered in kind, not with {response:?}");
    };
    match response {
        AuthResponse::Enable(r) => grpc::encode(&r),
        AuthResponse::Disable(r) => grpc::encode(&r),
        AuthResponse::Status(r) => grpc::encode(&r),
        AuthResponse::Authenticate(r) => grpc::encode(&r),
        AuthResponse::UserAdd(r) => grpc::encode(&r),
        AuthResponse::UserGet(r) => grpc::encode(&r),
        AuthResponse::UserList(r) => grpc::encode(&r),
        AuthResponse::UserDelete(r) => grpc::encode(&r),
        AuthResponse::UserChangePassword(r) => grpc::encode(&r),
        AuthResponse::UserGrantRole(r) => grpc::encode(&r),
        AuthResponse::UserRevokeRole(r) => grpc::encode(&r),
        AuthResponse::RoleAdd(r) => grpc::encode(&r),
        AuthResponse::RoleGet(r) => grpc::encode(&r),
        AuthResponse::RoleList(r) => grpc::encode(&r),
        AuthResponse::RoleDelete(r) => grpc::encode(&r),
        AuthResponse::RoleGrantPermission(r) => grpc::encode(&r),
        AuthResponse::RoleRevokePermission(r) => grpc::encode(&r),
        AuthResponse::PasswordHash { .. } => unreachable!("a password hash never leaves the server"),
    }
}

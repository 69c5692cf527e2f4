//! etcd's auth on the store core: who a call comes as (simple tokens live
//! here, since every member assigns them when an Authenticate entry is
//! applied), the checks etcd's API layer makes before proposing or reading,
//! the checks its auth applier makes when an entry is applied (at the auth
//! revision the call was checked at), and the Auth RPCs applied to the state.

use ringkv_proto::authpb::UserAddOptions;
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::ringkvpb::auth_request::Request as AuthOp;
use ringkv_proto::ringkvpb::{raft_request, AuthHeader, AuthRequest};

use super::super::messages::{AuthCall, AuthResponse, CallAuth, Request, Response};
use super::StoreCore;
use crate::auth::{Access, AuthInfo, AuthState};
use crate::etcd_error::EtcdError;
use crate::fatal::fatal;
use crate::watch::WatchCommand;

/// Raft ticks between sweeps of expired simple tokens (etcd sweeps each second).
pub(super) const TOKEN_SWEEP_TICKS: u64 = 10;

impl StoreCore {
    /// The auth state a store holds (a new one when it holds none).
    pub(super) fn stored_auth(mvcc: &ringkv_engine::mvcc::Mvcc) -> AuthState {
        match mvcc.auth() {
            None => AuthState::default(),
            Some(bytes) => AuthState::decode(bytes).unwrap_or_else(|error| fatal(&error.to_string())),
        }
    }

    /// The user a call runs as (etcd's `AuthInfoFromCtx`, then
    /// `AuthInfoFromTLS`): a token that is not (or no longer) known is
    /// etcd's "invalid auth token", with auth on or off.
    pub(super) fn call_user(&mut self, auth: CallAuth) -> Result<Option<AuthInfo>, EtcdError> {
        let revision = self.auth.revision();
        Ok(match auth {
            CallAuth::None => None,
            CallAuth::Token(token) => {
                let user = self.tokens.user(&token, self.now).ok_or(EtcdError::InvalidAuthToken)?;
                Some(AuthInfo {
                    username: user.to_string(),
                    revision,
                })
            }
            CallAuth::Verified(info) => Some(info),
            CallAuth::CommonName(username) => Some(AuthInfo { username, revision }),
        })
    }

    /// The checks etcd makes before a call is proposed or read (its gRPC
    /// servers' and `EtcdServer`'s, as of 3.4.45 and 3.5.33, which closed
    /// 3.4.23's gaps): admin calls need role root, most others some user. Reads are checked when served
    /// (`check_read`); writes when applied (`check_applied`).
    pub(super) fn check_call(&self, info: Option<&AuthInfo>, request: &Request) -> Result<(), EtcdError> {
        let auth = &self.auth;
        match request {
            Request::Compact(_)
            | Request::Hash
            | Request::HashKv(_)
            | Request::MoveLeader(_)
            | Request::Defragment
            | Request::Snapshot
            | Request::MemberAdd(_)
            | Request::MemberRemove(_)
            | Request::MemberUpdate(_)
            | Request::MemberPromote(_) => auth.check_admin(info),
            Request::Alarm(alarm) if alarm.action == pb::alarm_request::AlarmAction::Get as i32 => {
                auth.check_user(info)
            }
            Request::Alarm(_) => auth.check_admin(info),
            // 3.5's Status: any user (3.4.45 wants root, which breaks
            // kube-apiserver's size polling as a plain user).
            Request::Status | Request::MemberList | Request::LeaseGrant(_) | Request::LeaseRevoke(_) => {
                auth.check_user(info)
            }
            Request::LeaseTimeToLive(request) if request.keys => {
                auth.check_user(info)?;
                self.check_lease_keys(info, request.id, Access::Read)
            }
            Request::LeaseTimeToLive(_) => auth.check_user(info),
            Request::LeaseLeases(_) => self.check_lease_list(info),
            _ => Ok(()),
        }
    }

    /// etcd 3.4.45's `checkLeaseTimeToLive` and `checkLeasePuts`: every key
    /// attached to the lease, unless the user has role root.
    fn check_lease_keys(&self, info: Option<&AuthInfo>, lease: i64, access: Access) -> Result<(), EtcdError> {
        if !self.auth.enabled() || (access == Access::Read && self.auth.check_admin(info).is_ok()) {
            return Ok(());
        }
        for key in self.mvcc.leases().keys(lease) {
            self.auth.check(info, key, b"", access)?;
        }
        Ok(())
    }

    /// etcd 3.4.45's `checkLeaseLeases`: root, or a user who may read every
    /// key attached to every lease.
    fn check_lease_list(&self, info: Option<&AuthInfo>) -> Result<(), EtcdError> {
        if !self.auth.enabled() {
            return Ok(());
        }
        self.auth.check_user(info)?;
        if self.auth.check_admin(info).is_ok() {
            return Ok(());
        }
        for (lease, _) in self.mvcc.leases().iter() {
            for key in self.mvcc.leases().keys(lease) {
                self.auth.check(info, key, b"", Access::Read)?;
            }
        }
        Ok(())
    }

    /// etcd's auth applier: what an entry (or a read) may do, as the user it
    /// came with, at the auth revision it was checked at.
    pub(super) fn check_applied(
        &self,
        info: Option<&AuthInfo>,
        request: &raft_request::Request,
    ) -> Result<(), EtcdError> {
        if !self.auth.enabled() {
            return Ok(());
        }
        match request {
            raft_request::Request::Put(put) => self.check_put(info, put),
            raft_request::Request::DeleteRange(delete) => self.check_delete(info, delete),
            raft_request::Request::Txn(txn) => self.check_txn(info, txn),
            raft_request::Request::LeaseRevoke(revoke) => self.check_lease_keys(info, revoke.id, Access::Write),
            raft_request::Request::Auth(auth) => self.check_auth_request(info, auth),
            _ => Ok(()),
        }
    }

    pub(super) fn check_range(&self, info: Option<&AuthInfo>, range: &pb::RangeRequest) -> Result<(), EtcdError> {
        self.auth.check(info, &range.key, &range.range_end, Access::Read)
    }

    /// etcd 3.4.45's `checkPutAuth`: the key, every key of the lease it
    /// attaches to (the user must be able to revoke it), the previous value.
    fn check_put(&self, info: Option<&AuthInfo>, put: &pb::PutRequest) -> Result<(), EtcdError> {
        self.auth.check(info, &put.key, b"", Access::Write)?;
        self.check_lease_keys(info, put.lease, Access::Write)?;
        if put.prev_kv {
            self.auth.check(info, &put.key, b"", Access::Read)?;
        }
        Ok(())
    }

    fn check_delete(&self, info: Option<&AuthInfo>, delete: &pb::DeleteRangeRequest) -> Result<(), EtcdError> {
        self.auth.check(info, &delete.key, &delete.range_end, Access::Write)?;
        if delete.prev_kv {
            self.auth.check(info, &delete.key, &delete.range_end, Access::Read)?;
        }
        Ok(())
    }

    /// etcd's `checkTxnAuth`: every compare, then every op of both branches,
    /// nested Txns too (3.4.45).
    pub(super) fn check_txn(&self, info: Option<&AuthInfo>, txn: &pb::TxnRequest) -> Result<(), EtcdError> {
        for compare in &txn.compare {
            self.auth.check(info, &compare.key, &compare.range_end, Access::Read)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match &op.request {
                Some(pb::request_op::Request::RequestRange(range)) => self.check_range(info, range)?,
                Some(pb::request_op::Request::RequestPut(put)) => self.check_put(info, put)?,
                Some(pb::request_op::Request::RequestDeleteRange(delete)) => {
                    if delete.prev_kv {
                        self.auth.check(info, &delete.key, &delete.range_end, Access::Read)?;
                    }
                    self.auth.check(info, &delete.key, &delete.range_end, Access::Write)?;
                }
                Some(pb::request_op::Request::RequestTxn(nested)) => self.check_txn(info, nested)?,
                None => {}
            }
        }
        Ok(())
    }

    /// etcd's `needAdminPermission`, and UserGet and RoleGet for the user's
    /// own name and roles.
    fn check_auth_request(&self, info: Option<&AuthInfo>, request: &AuthRequest) -> Result<(), EtcdError> {
        let admin = self.auth.check_admin(info);
        match &request.request {
            Some(AuthOp::Authenticate(_)) | None => Ok(()),
            Some(AuthOp::UserGet(get)) if info.is_some_and(|info| info.username == get.name) => Ok(()),
            Some(AuthOp::RoleGet(get)) if info.is_some_and(|info| self.auth.has_role(&info.username, &get.role)) => {
                Ok(())
            }
            Some(_) => admin,
        }
    }

    /// A watch command from a client core: a watch the caller may not read
    /// is refused with etcd's cancel reason (a gRPC status's text).
    pub(super) fn watch_command(&mut self, client: usize, command: WatchCommand) {
        if let WatchCommand::Create { stream, request, auth } = &command {
            let checked = self.call_user(auth.clone()).and_then(|info| {
                self.auth
                    .check(info.as_ref(), &request.key, &request.range_end, Access::Read)
            });
            if let Err(error) = checked {
                let reason = match error {
                    EtcdError::InvalidAuthToken => {
                        "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"
                    }
                    EtcdError::AuthOldRevision => {
                        "rpc error: code = InvalidArgument desc = etcdserver: revision of auth store is old"
                    }
                    EtcdError::UserEmpty => "rpc error: code = InvalidArgument desc = etcdserver: user name is empty",
                    _ => "rpc error: code = PermissionDenied desc = etcdserver: permission denied",
                };
                self.watchers.refuse_create(client, *stream, reason, &self.mvcc);
                return;
            }
        }
        self.watchers.handle(client, command, &self.mvcc);
    }

    /// The auth header an entry carries for `info`.
    pub(super) fn auth_header(info: Option<&AuthInfo>) -> Option<AuthHeader> {
        info.map(|info| AuthHeader {
            username: info.username.clone(),
            revision: info.revision,
        })
    }

    /// The Auth calls the store core answers without raft.
    pub(super) fn auth_query(&self, call: &AuthCall) -> Result<Response, EtcdError> {
        let response = match call {
            AuthCall::Status => AuthResponse::Status(pb::AuthStatusResponse {
                header: None,
                enabled: self.auth.enabled(),
                auth_revision: self.auth.revision(),
            }),
            AuthCall::PasswordHash(name) => {
                let (hash, revision) = self.auth.password_hash(name)?;
                AuthResponse::PasswordHash { hash, revision }
            }
            AuthCall::Propose(_) => unreachable!("proposed, not queried"),
        };
        Ok(Response::Auth(response))
    }

    /// Applies an Auth RPC of entry `index`; the state is stored with the
    /// commit that holds the entry.
    pub(super) fn apply_auth(&mut self, index: u64, request: AuthRequest) -> Result<Response, EtcdError> {
        let Some(op) = request.request else {
            return Err(EtcdError::InvalidAuthMgmt);
        };
        let before = self.auth.revision();
        let response = self.apply_auth_op(index, op)?;
        if self.auth.revision() != before || matches!(response, AuthResponse::Enable(_)) {
            self.mvcc.set_auth(self.auth.encode());
        }
        Ok(Response::Auth(response))
    }

    fn apply_auth_op(&mut self, index: u64, op: AuthOp) -> Result<AuthResponse, EtcdError> {
        let auth = &mut self.auth;
        Ok(match op {
            AuthOp::Enable(_) => {
                auth.enable()?;
                AuthResponse::Enable(pb::AuthEnableResponse::default())
            }
            AuthOp::Disable(_) => {
                if auth.disable() {
                    self.tokens.clear();
                }
                AuthResponse::Disable(pb::AuthDisableResponse::default())
            }
            AuthOp::Authenticate(entry) => {
                auth.authenticate(&entry.name)?;
                // The password was checked at another revision: the client
                // core checks it again (etcd's retry loop).
                if entry.checked_revision != auth.revision() {
                    return Err(EtcdError::AuthOldRevision);
                }
                let token = if entry.simple_token_prefix.is_empty() {
                    String::new()
                } else {
                    self.tokens
                        .assign(&entry.simple_token_prefix, index, &entry.name, self.now)
                };
                AuthResponse::Authenticate(pb::AuthenticateResponse { header: None, token })
            }
            AuthOp::UserAdd(add) => {
                let no_password = add
                    .options
                    .as_ref()
                    .is_some_and(|options: &UserAddOptions| options.no_password);
                auth.user_add(&add.name, add.hashed_password.into_bytes(), no_password)?;
                AuthResponse::UserAdd(pb::AuthUserAddResponse::default())
            }
            AuthOp::UserDelete(delete) => {
                auth.user_delete(&delete.name)?;
                self.tokens.invalidate_user(&delete.name);
                AuthResponse::UserDelete(pb::AuthUserDeleteResponse::default())
            }
            AuthOp::UserChangePassword(change) => {
                auth.user_change_password(&change.name, change.hashed_password.into_bytes())?;
                self.tokens.invalidate_user(&change.name);
                AuthResponse::UserChangePassword(pb::AuthUserChangePasswordResponse::default())
            }
            AuthOp::UserGrantRole(grant) => {
                auth.user_grant_role(&grant.user, &grant.role)?;
                AuthResponse::UserGrantRole(pb::AuthUserGrantRoleResponse::default())
            }
            AuthOp::UserGet(get) => AuthResponse::UserGet(pb::AuthUserGetResponse {
                header: None,
                roles: auth.user_get(&get.name)?,
            }),
            AuthOp::UserList(_) => AuthResponse::UserList(pb::AuthUserListResponse {
                header: None,
                users: auth.user_list(),
            }),
            AuthOp::UserRevokeRole(revoke) => {
                auth.user_revoke_role(&revoke.name, &revoke.role)?;
                AuthResponse::UserRevokeRole(pb::AuthUserRevokeRoleResponse::default())
            }
            AuthOp::RoleAdd(add) => {
                auth.role_add(&add.name)?;
                AuthResponse::RoleAdd(pb::AuthRoleAddResponse::default())
            }
            AuthOp::RoleGet(get) => AuthResponse::RoleGet(pb::AuthRoleGetResponse {
                header: None,
                perm: auth.role_get(&get.role)?,
            }),
            AuthOp::RoleList(_) => AuthResponse::RoleList(pb::AuthRoleListResponse {
                header: None,
                roles: auth.role_list(),
            }),
            AuthOp::RoleDelete(delete) => {
                auth.role_delete(&delete.role)?;
                AuthResponse::RoleDelete(pb::AuthRoleDeleteResponse::default())
            }
            AuthOp::RoleGrantPermission(grant) => {
                auth.role_grant_permission(&grant.name, grant.perm.unwrap_or_default())?;
                AuthResponse::RoleGrantPermission(pb::AuthRoleGrantPermissionResponse::default())
            }
            AuthOp::RoleRevokePermission(revoke) => {
                auth.role_revoke_permission(&revoke.role, &revoke.key, &revoke.range_end)?;
                AuthResponse::RoleRevokePermission(pb::AuthRoleRevokePermissionResponse::default())
            }
        })
    }
}

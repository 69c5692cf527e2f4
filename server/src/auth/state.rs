//! etcd's auth state (`auth/store.go`'s `authStore`) as an owned state
//! machine: users with their password hashes and roles, roles with their key
//! permissions, the enabled flag and the auth revision. Changed only by
//! applying raft entries, in log order, on every member; each change that
//! etcd counts raises the revision by one, as etcd's `commitRevision` does.

use std::collections::{BTreeMap, HashMap};

use prost::Message;
use ringkv_proto::authpb;
use ringkv_proto::ringkvpb::AuthRecord;

use super::perms::{Access, UserPerms};
use crate::etcd_error::EtcdError;

pub const ROOT_USER: &str = "root";
pub const ROOT_ROLE: &str = "root";

/// Who a request runs as (etcd's `AuthInfo`): a user name and the auth
/// revision its credentials were checked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthInfo {
    pub username: String,
    pub revision: u64,
}

/// A stored record that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("the auth record does not decode: {0}")]
pub struct AuthRecordError(#[from] prost::DecodeError);

#[derive(Debug, Clone, PartialEq, Eq)]
struct User {
    /// The bcrypt hash (Go's `$2a$` form); empty for a `no_password` user.
    password: Vec<u8>,
    /// Sorted, as etcd keeps them (`hasRootRole` searches them).
    roles: Vec<String>,
    no_password: bool,
}

/// etcd's auth store. A new one has revision 1, as etcd's `NewAuthStore`
/// leaves an empty backend.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthState {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    /// Each role's permissions, sorted by key.
    roles: BTreeMap<String, Vec<authpb::Permission>>,
    /// Each user's merged permissions (etcd's `rangePermCache`), rebuilt on
    /// every change, so a request's check is a lookup and a short scan.
    perms: HashMap<String, UserPerms>,
}

impl Default for AuthState {
    fn default() -> AuthState {
        AuthState {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            perms: HashMap::new(),
        }
    }
}

impl AuthState {
    /// The state a stored record holds.
    pub fn decode(bytes: &[u8]) -> Result<AuthState, AuthRecordError> {
        let record = AuthRecord::decode(bytes)?;
        let mut state = AuthState {
            enabled: record.enabled,
            revision: record.revision,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            perms: HashMap::new(),
        };
        for user in record.users {
            let name = String::from_utf8_lossy(&user.name).into_owned();
            let no_password = user.options.is_some_and(|options| options.no_password);
            let mut roles = user.roles;
            roles.sort();
            let user = User {
                password: user.password,
                roles,
                no_password,
            };
            state.users.insert(name, user);
        }
        for role in record.roles {
            let name = String::from_utf8_lossy(&role.name).into_owned();
            state.roles.insert(name, role.key_permission);
        }
        state.refresh_perms();
        Ok(state)
    }

    /// The whole state as etcd keeps it in its auth buckets: the stored
    /// record, and what an etcd-format snapshot needs (users with their
    /// hashes and options, roles with their permissions).
    pub fn record(&self) -> AuthRecord {
        AuthRecord {
            enabled: self.enabled,
            revision: self.revision,
            users: self
                .users
                .iter()
                .map(|(name, user)| authpb::User {
                    name: name.as_bytes().to_vec(),
                    password: user.password.clone(),
                    roles: user.roles.clone(),
                    options: Some(authpb::UserAddOptions {
                        no_password: user.no_password,
                    }),
                })
                .collect(),
            roles: self
                .roles
                .iter()
                .map(|(name, perms)| authpb::Role {
                    name: name.as_bytes().to_vec(),
                    key_permission: perms.clone(),
                })
                .collect(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        self.record().encode_to_vec()
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// etcd's `commitRevision` and `refreshRangePermCache`, after every
    /// change that counts.
    fn changed(&mut self) {
        self.revision += 1;
        self.refresh_perms();
    }

    fn refresh_perms(&mut self) {
        let roles = &self.roles;
        self.perms = self
            .users
            .iter()
            .map(|(name, user)| {
                let granted = user.roles.iter().filter_map(|role| roles.get(role)).flatten();
                (name.clone(), UserPerms::merge(granted))
            })
            .collect();
    }

    fn has_root_role(user: &User) -> bool {
        user.roles.binary_search_by(|role| role.as_str().cmp(ROOT_ROLE)).is_ok()
    }

    /// AuthEnable: needs user root with role root. Enabling what is enabled
    /// changes nothing; enabling keeps the revision (etcd does not count it).
    pub fn enable(&mut self) -> Result<(), EtcdError> {
        if self.enabled {
            return Ok(());
        }
        let root = self.users.get(ROOT_USER).ok_or(EtcdError::RootUserNotExist)?;
        if !Self::has_root_role(root) {
            return Err(EtcdError::RootRoleNotExist);
        }
        self.enabled = true;
        Ok(())
    }

    /// AuthDisable; counted. True if auth was on (every token then ends).
    pub fn disable(&mut self) -> bool {
        if !self.enabled {
            return false;
        }
        self.enabled = false;
        self.changed();
        true
    }

    /// The user Authenticate may give a token to, once its password was
    /// checked: etcd's `Authenticate` at apply.
    pub fn authenticate(&self, name: &str) -> Result<(), EtcdError> {
        if !self.enabled {
            return Err(EtcdError::AuthNotEnabled);
        }
        match self.users.get(name) {
            Some(user) if !user.no_password => Ok(()),
            _ => Err(EtcdError::AuthFailed),
        }
    }

    /// The hash to check a password against and the revision it is checked
    /// at (the first half of etcd's `CheckPassword`; bcrypt runs off the
    /// store core).
    pub fn password_hash(&self, name: &str) -> Result<(Vec<u8>, u64), EtcdError> {
        if !self.enabled {
            return Err(EtcdError::AuthNotEnabled);
        }
        let user = self.users.get(name).ok_or(EtcdError::AuthFailed)?;
        if user.no_password {
            return Err(EtcdError::NoPasswordUser);
        }
        Ok((user.password.clone(), self.revision))
    }

    /// UserAdd with the password already hashed (`hash` empty for
    /// `no_password`).
    pub fn user_add(&mut self, name: &str, hash: Vec<u8>, no_password: bool) -> Result<(), EtcdError> {
        if name.is_empty() {
            return Err(EtcdError::UserEmpty);
        }
        if self.users.contains_key(name) {
            return Err(EtcdError::UserAlreadyExist);
        }
        let user = User {
            password: if no_password { Vec::new() } else { hash },
            roles: Vec::new(),
            no_password,
        };
        self.users.insert(name.to_string(), user);
        self.changed();
        Ok(())
    }

    /// UserDelete; the caller ends the user's tokens.
    pub fn user_delete(&mut self, name: &str) -> Result<(), EtcdError> {
        if self.enabled && name == ROOT_USER {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        self.users.remove(name).ok_or(EtcdError::UserNotFound)?;
        self.changed();
        Ok(())
    }

    /// UserChangePassword with the new password hashed; the caller ends the
    /// user's tokens.
    pub fn user_change_password(&mut self, name: &str, hash: Vec<u8>) -> Result<(), EtcdError> {
        let user = self.users.get_mut(name).ok_or(EtcdError::UserNotFound)?;
        user.password = hash;
        self.changed();
        Ok(())
    }

    /// UserGrantRole. Role root need not exist; granting a role the user has
    /// changes nothing.
    pub fn user_grant_role(&mut self, name: &str, role: &str) -> Result<(), EtcdError> {
        let user = self.users.get_mut(name).ok_or(EtcdError::UserNotFound)?;
        if role != ROOT_ROLE && !self.roles.contains_key(role) {
            return Err(EtcdError::RoleNotFound);
        }
        let Err(at) = user.roles.binary_search_by(|held| held.as_str().cmp(role)) else {
            return Ok(());
        };
        user.roles.insert(at, role.to_string());
        self.changed();
        Ok(())
    }

    /// UserGet: the user's roles (never its password).
    pub fn user_get(&self, name: &str) -> Result<Vec<String>, EtcdError> {
        Ok(self.users.get(name).ok_or(EtcdError::UserNotFound)?.roles.clone())
    }

    /// UserList: every name, in byte order (bbolt's).
    pub fn user_list(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// UserRevokeRole. Root keeps role root while auth is on.
    pub fn user_revoke_role(&mut self, name: &str, role: &str) -> Result<(), EtcdError> {
        if self.enabled && name == ROOT_USER && role == ROOT_ROLE {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        let user = self.users.get_mut(name).ok_or(EtcdError::UserNotFound)?;
        let before = user.roles.len();
        user.roles.retain(|held| held != role);
        if user.roles.len() == before {
            return Err(EtcdError::RoleNotGranted);
        }
        self.changed();
        Ok(())
    }

    pub fn role_add(&mut self, name: &str) -> Result<(), EtcdError> {
        if name.is_empty() {
            return Err(EtcdError::RoleEmpty);
        }
        if self.roles.contains_key(name) {
            return Err(EtcdError::RoleAlreadyExist);
        }
        self.roles.insert(name.to_string(), Vec::new());
        self.changed();
        Ok(())
    }

    /// RoleGet: the role's permissions, sorted by key.
    pub fn role_get(&self, name: &str) -> Result<Vec<authpb::Permission>, EtcdError> {
        self.roles.get(name).cloned().ok_or(EtcdError::RoleNotFound)
    }

    pub fn role_list(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// RoleDelete, and the role is revoked from every user. Role root stays
    /// while auth is on.
    pub fn role_delete(&mut self, name: &str) -> Result<(), EtcdError> {
        if self.enabled && name == ROOT_ROLE {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        self.roles.remove(name).ok_or(EtcdError::RoleNotFound)?;
        for user in self.users.values_mut() {
            user.roles.retain(|held| held != name);
        }
        self.changed();
        Ok(())
    }

    /// RoleGrantPermission. As etcd: the permission whose key is the first
    /// at or after the granted key is updated in place when its key and
    /// range end are the granted ones; otherwise the grant is added and the
    /// list sorted by key again.
    pub fn role_grant_permission(&mut self, name: &str, perm: authpb::Permission) -> Result<(), EtcdError> {
        let perms = self.roles.get_mut(name).ok_or(EtcdError::RoleNotFound)?;
        let at = perms.partition_point(|held| held.key < perm.key);
        match perms.get_mut(at) {
            Some(held) if held.key == perm.key && held.range_end == perm.range_end => {
                held.perm_type = perm.perm_type;
            }
            _ => {
                perms.push(perm);
                perms.sort_by(|a, b| a.key.cmp(&b.key));
            }
        }
        self.changed();
        Ok(())
    }

    /// RoleRevokePermission: every permission on exactly this key and range end.
    pub fn role_revoke_permission(&mut self, name: &str, key: &[u8], range_end: &[u8]) -> Result<(), EtcdError> {
        let perms = self.roles.get_mut(name).ok_or(EtcdError::RoleNotFound)?;
        let before = perms.len();
        perms.retain(|held| held.key != key || held.range_end != range_end);
        if perms.len() == before {
            return Err(EtcdError::PermissionNotGranted);
        }
        self.changed();
        Ok(())
    }

    /// etcd's `HasRole`.
    pub fn has_role(&self, name: &str, role: &str) -> bool {
        self.users
            .get(name)
            .is_some_and(|user| user.roles.iter().any(|held| held == role))
    }

    /// etcd's `isOpPermitted`: may `info` read or write `[key, range_end)`
    /// (one key when `range_end` is empty)? Always, with auth off.
    pub fn check(
        &self,
        info: Option<&AuthInfo>,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        let info = match info {
            Some(info) if info.revision != 0 => info,
            _ => return Err(EtcdError::UserEmpty),
        };
        if info.revision < self.revision {
            return Err(EtcdError::AuthOldRevision);
        }
        let Some(user) = self.users.get(&info.username) else {
            return Err(EtcdError::PermissionDenied);
        };
        if Self::has_root_role(user) {
            return Ok(());
        }
        let permitted = self
            .perms
            .get(&info.username)
            .is_some_and(|perms| perms.permits(key, range_end, access));
        if permitted {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }

    /// etcd's `IsAdminPermitted`: is `info` a user with role root? Always,
    /// with auth off.
    pub fn check_admin(&self, info: Option<&AuthInfo>) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        let info = match info {
            Some(info) if !info.username.is_empty() => info,
            _ => return Err(EtcdError::UserEmpty),
        };
        let user = self.users.get(&info.username).ok_or(EtcdError::UserNotFound)?;
        if Self::has_root_role(user) {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }

    /// etcd 3.4.45's `requireAuthInfo`: with auth on, the call must come as
    /// some user.
    pub fn check_user(&self, info: Option<&AuthInfo>) -> Result<(), EtcdError> {
        if self.enabled && info.is_none() {
            return Err(EtcdError::UserEmpty);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::authpb::permission::Type as PermType;

    fn perm(kind: PermType, key: &[u8], range_end: &[u8]) -> authpb::Permission {
        authpb::Permission {
            perm_type: kind as i32,
            key: key.to_vec(),
            range_end: range_end.to_vec(),
        }
    }

    fn info(name: &str, state: &AuthState) -> AuthInfo {
        AuthInfo {
            username: name.to_string(),
            revision: state.revision(),
        }
    }

    /// Root with role root, alice with role `r` (read-write on prefix `a/`), auth on.
    fn enabled_state() -> AuthState {
        let mut state = AuthState::default();
        state.user_add("root", b"hash".to_vec(), false).unwrap();
        state.user_grant_role("root", ROOT_ROLE).unwrap();
        state.user_add("alice", b"hash".to_vec(), false).unwrap();
        state.role_add("r").unwrap();
        state
            .role_grant_permission("r", perm(PermType::Readwrite, b"a/", b"a0"))
            .unwrap();
        state.user_grant_role("alice", "r").unwrap();
        state.enable().unwrap();
        state
    }

    #[test]
    fn enabling_needs_root_with_role_root_and_does_not_count() {
        let mut state = AuthState::default();
        assert_eq!(state.revision(), 1);
        assert_eq!(state.enable(), Err(EtcdError::RootUserNotExist));
        state.user_add("root", Vec::new(), false).unwrap();
        assert_eq!(state.enable(), Err(EtcdError::RootRoleNotExist));
        state.user_grant_role("root", ROOT_ROLE).unwrap();
        let revision = state.revision();
        state.enable().unwrap();
        assert!(state.enabled());
        assert_eq!(state.revision(), revision);
        assert!(state.disable());
        assert_eq!(state.revision(), revision + 1);
        assert!(!state.disable());
    }

    #[test]
    fn etcds_errors_for_users_and_roles() {
        let mut state = enabled_state();
        assert_eq!(state.user_add("", Vec::new(), false), Err(EtcdError::UserEmpty));
        assert_eq!(
            state.user_add("alice", Vec::new(), false),
            Err(EtcdError::UserAlreadyExist)
        );
        assert_eq!(state.user_delete("root"), Err(EtcdError::InvalidAuthMgmt));
        assert_eq!(state.user_delete("nobody"), Err(EtcdError::UserNotFound));
        assert_eq!(state.user_grant_role("alice", "nope"), Err(EtcdError::RoleNotFound));
        assert_eq!(
            state.user_revoke_role("root", ROOT_ROLE),
            Err(EtcdError::InvalidAuthMgmt)
        );
        assert_eq!(state.user_revoke_role("alice", "nope"), Err(EtcdError::RoleNotGranted));
        assert_eq!(state.role_add(""), Err(EtcdError::RoleEmpty));
        assert_eq!(state.role_add("r"), Err(EtcdError::RoleAlreadyExist));
        assert_eq!(state.role_delete(ROOT_ROLE), Err(EtcdError::InvalidAuthMgmt));
        assert_eq!(state.role_get("nope"), Err(EtcdError::RoleNotFound));
        assert_eq!(
            state.role_revoke_permission("r", b"x", b""),
            Err(EtcdError::PermissionNotGranted)
        );
        assert_eq!(state.authenticate("nobody"), Err(EtcdError::AuthFailed));
    }

    #[test]
    fn failed_and_idempotent_changes_keep_the_revision() {
        let mut state = enabled_state();
        let revision = state.revision();
        let _ = state.user_add("alice", Vec::new(), false);
        let _ = state.role_delete("nope");
        state.user_grant_role("alice", "r").unwrap();
        state.enable().unwrap();
        assert_eq!(state.revision(), revision);
    }

    #[test]
    fn a_users_permissions_follow_its_roles() {
        let mut state = enabled_state();
        let alice = info("alice", &state);
        assert_eq!(state.check(Some(&alice), b"a/x", b"", Access::Write), Ok(()));
        assert_eq!(
            state.check(Some(&alice), b"b", b"", Access::Read),
            Err(EtcdError::PermissionDenied)
        );
        state.role_delete("r").unwrap();
        assert_eq!(state.user_get("alice"), Ok(Vec::new()));
        let alice = info("alice", &state);
        assert_eq!(
            state.check(Some(&alice), b"a/x", b"", Access::Read),
            Err(EtcdError::PermissionDenied)
        );
    }

    #[test]
    fn a_check_at_an_older_revision_is_refused() {
        let mut state = enabled_state();
        let alice = info("alice", &state);
        state.role_add("other").unwrap();
        assert_eq!(
            state.check(Some(&alice), b"a/x", b"", Access::Read),
            Err(EtcdError::AuthOldRevision)
        );
    }

    #[test]
    fn no_user_is_user_empty_and_root_may_do_anything() {
        let state = enabled_state();
        assert_eq!(state.check(None, b"a", b"", Access::Read), Err(EtcdError::UserEmpty));
        assert_eq!(state.check_admin(None), Err(EtcdError::UserEmpty));
        let root = info("root", &state);
        assert_eq!(state.check(Some(&root), b"\0", b"\0", Access::Write), Ok(()));
        assert_eq!(state.check_admin(Some(&root)), Ok(()));
        let alice = info("alice", &state);
        assert_eq!(state.check_admin(Some(&alice)), Err(EtcdError::PermissionDenied));
        let ghost = info("ghost", &state);
        assert_eq!(state.check_admin(Some(&ghost)), Err(EtcdError::UserNotFound));
        assert_eq!(
            state.check(Some(&ghost), b"a", b"", Access::Read),
            Err(EtcdError::PermissionDenied)
        );
    }

    #[test]
    fn with_auth_off_everything_is_allowed() {
        let state = AuthState::default();
        assert_eq!(state.check(None, b"a", b"", Access::Write), Ok(()));
        assert_eq!(state.check_admin(None), Ok(()));
        assert_eq!(state.password_hash("root"), Err(EtcdError::AuthNotEnabled));
    }

    #[test]
    fn a_no_password_user_cannot_authenticate() {
        let mut state = enabled_state();
        state.user_add("cert", b"ignored".to_vec(), true).unwrap();
        assert_eq!(state.password_hash("cert"), Err(EtcdError::NoPasswordUser));
        assert_eq!(state.authenticate("cert"), Err(EtcdError::AuthFailed));
        let record = state.record();
        let cert = record.users.iter().find(|user| user.name == b"cert").unwrap();
        assert!(cert.password.is_empty(), "no hash is kept");
    }

    #[test]
    fn a_grant_on_the_same_range_updates_it_and_others_are_kept_sorted() {
        let mut state = enabled_state();
        state
            .role_grant_permission("r", perm(PermType::Read, b"a/", b"a0"))
            .unwrap();
        state
            .role_grant_permission("r", perm(PermType::Write, b"0", b""))
            .unwrap();
        let perms = state.role_get("r").unwrap();
        assert_eq!(
            perms,
            vec![perm(PermType::Write, b"0", b""), perm(PermType::Read, b"a/", b"a0")]
        );
    }

    #[test]
    fn the_record_reads_back_as_the_same_state() {
        let mut state = enabled_state();
        state.user_add("bob", Vec::new(), true).unwrap();
        let decoded = AuthState::decode(&state.encode()).unwrap();
        assert_eq!(decoded, state);
        assert!(AuthState::decode(&[0xff, 0xff]).is_err());
    }
}

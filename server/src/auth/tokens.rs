//! etcd's simple tokens (`auth/simple_token.go`): a token is given when an
//! Authenticate entry is applied, so every member knows it; it lives
//! `--auth-token-ttl` past its last use on each member, in memory only (a
//! restarted member knows none, as etcd).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The letters of a token's random part and its length, as etcd makes it.
const PREFIX_LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
pub const PREFIX_BYTES: usize = 16;

/// A token's random part (etcd's `genTokenPrefix`), from the OS's generator:
/// bytes past the last whole multiple of the alphabet are drawn again, so
/// every letter is as likely.
pub fn token_prefix() -> String {
    let whole = 256 - 256 % PREFIX_LETTERS.len();
    let mut prefix = String::with_capacity(PREFIX_BYTES);
    while prefix.len() < PREFIX_BYTES {
        let mut random = [0u8; PREFIX_BYTES];
        getrandom::fill(&mut random).expect("the OS random number generator answers");
        for byte in random
            .iter()
            .map(|byte| usize::from(*byte))
            .filter(|byte| *byte < whole)
        {
            if prefix.len() < PREFIX_BYTES {
                prefix.push(PREFIX_LETTERS[byte % PREFIX_LETTERS.len()] as char);
            }
        }
    }
    prefix
}

struct Held {
    user: String,
    expires: Instant,
}

/// The tokens this member knows, each with its user and expiry.
pub struct SimpleTokens {
    ttl: Duration,
    tokens: HashMap<String, Held>,
}

impl SimpleTokens {
    pub fn new(ttl: Duration) -> SimpleTokens {
        SimpleTokens {
            ttl,
            tokens: HashMap::new(),
        }
    }

    /// Gives `user` the token `<prefix>.<index>` (the Authenticate entry's
    /// raft index makes it unique).
    pub fn assign(&mut self, prefix: &str, index: u64, user: &str, now: Instant) -> String {
        let token = format!("{prefix}.{index}");
        let held = Held {
            user: user.to_string(),
            expires: now + self.ttl,
        };
        self.tokens.insert(token.clone(), held);
        token
    }

    /// The user of a live token, whose life starts over (etcd's
    /// `resetSimpleToken`); None for an unknown or expired one.
    pub fn user(&mut self, token: &str, now: Instant) -> Option<&str> {
        let held = self.tokens.get_mut(token)?;
        if held.expires <= now {
            self.tokens.remove(token);
            return None;
        }
        held.expires = now + self.ttl;
        Some(&self.tokens[token].user)
    }

    /// Ends every token of `user` (deleted, or its password changed).
    pub fn invalidate_user(&mut self, user: &str) {
        self.tokens.retain(|_, held| held.user != user);
    }

    /// Ends every token (auth disabled).
    pub fn clear(&mut self) {
        self.tokens.clear();
    }

    /// Forgets expired tokens (etcd sweeps once a second).
    pub fn expire(&mut self, now: Instant) {
        self.tokens.retain(|_, held| held.expires > now);
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_lives_its_ttl_past_its_last_use() {
        let start = Instant::now();
        let mut tokens = SimpleTokens::new(Duration::from_secs(10));
        let token = tokens.assign("abc", 7, "alice", start);
        assert_eq!(token, "abc.7");
        assert_eq!(tokens.user(&token, start + Duration::from_secs(9)), Some("alice"));
        assert_eq!(tokens.user(&token, start + Duration::from_secs(18)), Some("alice"));
        assert_eq!(tokens.user(&token, start + Duration::from_secs(28)), None);
        assert_eq!(tokens.len(), 0);
    }

    #[test]
    fn a_users_tokens_end_with_its_password_and_all_end_with_auth() {
        let now = Instant::now();
        let mut tokens = SimpleTokens::new(Duration::from_secs(10));
        let alice = tokens.assign("a", 1, "alice", now);
        let bob = tokens.assign("b", 2, "bob", now);
        tokens.invalidate_user("alice");
        assert_eq!(tokens.user(&alice, now), None);
        assert_eq!(tokens.user(&bob, now), Some("bob"));
        tokens.clear();
        assert_eq!(tokens.user(&bob, now), None);
    }

    #[test]
    fn the_sweep_forgets_only_expired_tokens() {
        let now = Instant::now();
        let mut tokens = SimpleTokens::new(Duration::from_secs(10));
        tokens.assign("a", 1, "alice", now);
        tokens.assign("b", 2, "bob", now + Duration::from_secs(5));
        tokens.expire(now + Duration::from_secs(12));
        assert_eq!(tokens.len(), 1);
    }

    #[test]
    fn prefixes_are_sixteen_letters() {
        let prefix = token_prefix();
        assert_eq!(prefix.len(), PREFIX_BYTES);
        assert!(prefix.bytes().all(|byte| byte.is_ascii_alphabetic()));
        assert_ne!(prefix, token_prefix());
    }
}

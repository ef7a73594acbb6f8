//! The dashboard's sign-ins. Signing in with a token opens a server-side session: the browser
//! keeps only a random session id (never the token, which would then sit in the browser's
//! cookie store and travel with every request), the session expires, and signing out ends it
//! on the server too. Failed sign-ins are limited per client address, so tokens cannot be
//! guessed at thousands a second.

use crate::auth::Principal;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a session lasts after sign-in.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at once; past it, expired ones go first, then the oldest.
const MAX_SESSIONS: usize = 10_000;
/// Failed sign-ins one client address may make per [`SIGN_IN_WINDOW`].
pub(crate) const MAX_FAILED_SIGN_INS: u32 = 10;
pub(crate) const SIGN_IN_WINDOW: Duration = Duration::from_secs(60);
/// Client addresses whose failures are remembered at once.
const MAX_TRACKED_CLIENTS: usize = 10_000;

struct Session {
    principal: Principal,
    expires: Instant,
}

/// Open sessions, by the SHA-256 of their ids (an id is a bearer secret like a token).
#[derive(Default)]
pub(crate) struct Sessions {
    open: Mutex<HashMap<[u8; 32], Session>>,
    failures: Mutex<HashMap<String, (Instant, u32)>>,
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Opens a session for `principal`; returns its id (64 hex digits).
    pub(crate) fn open(&self, principal: Principal, now: Instant) -> String {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).expect("the system random source failed");
        let id = proto::params::hex(&secret);
        let mut open = lock(&self.open);
        if open.len() >= MAX_SESSIONS {
            open.retain(|_, s| s.expires > now);
        }
        if open.len() >= MAX_SESSIONS {
            if let Some(oldest) = open.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) {
                open.remove(&oldest);
            }
        }
        open.insert(digest(&id), Session { principal, expires: now + SESSION_TTL });
        id
    }

    /// The principal of a live session.
    pub(crate) fn find(&self, id: &str, now: Instant) -> Option<Principal> {
        let mut open = lock(&self.open);
        let key = digest(id);
        match open.get(&key) {
            Some(s) if s.expires > now => Some(s.principal.clone()),
            Some(_) => {
                open.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends a session (sign-out).
    pub(crate) fn end(&self, id: &str) {
        lock(&self.open).remove(&digest(id));
    }

    /// Whether `client` may try to sign in now.
    pub(crate) fn may_try(&self, client: &str, now: Instant) -> bool {
        match lock(&self.failures).get(client) {
            Some(&(since, n)) => now.duration_since(since) >= SIGN_IN_WINDOW || n < MAX_FAILED_SIGN_INS,
            None => true,
        }
    }

    /// Counts a failed sign-in of `client`.
    pub(crate) fn failed(&self, client: &str, now: Instant) {
        let mut failures = lock(&self.failures);
        if failures.len() >= MAX_TRACKED_CLIENTS {
            failures.retain(|_, (since, _)| now.duration_since(*since) < SIGN_IN_WINDOW);
        }
        let entry = failures.entry(client.to_string()).or_insert((now, 0));
        if now.duration_since(entry.0) >= SIGN_IN_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn sessions_expire_and_end_and_failed_sign_ins_are_limited_per_client() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let alice = Principal { role: Role::User, name: "alice".into() };
        let id = sessions.open(alice.clone(), t0);
        assert_eq!(id.len(), 64);
        assert_ne!(id, sessions.open(alice.clone(), t0), "ids are random");
        assert_eq!(sessions.find(&id, t0 + Duration::from_secs(60)), Some(alice.clone()));
        assert_eq!(sessions.find(&id, t0 + SESSION_TTL), None, "expired");
        let id = sessions.open(alice.clone(), t0);
        sessions.end(&id);
        assert_eq!(sessions.find(&id, t0), None, "signed out");

        for _ in 0..MAX_FAILED_SIGN_INS {
            assert!(sessions.may_try("10.0.0.1", t0));
            sessions.failed("10.0.0.1", t0);
        }
        assert!(!sessions.may_try("10.0.0.1", t0 + Duration::from_secs(1)));
        assert!(sessions.may_try("10.0.0.2", t0), "another client is not held back");
        assert!(sessions.may_try("10.0.0.1", t0 + SIGN_IN_WINDOW), "the window passes");
    }
}

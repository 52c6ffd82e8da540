//! Password hashing: Argon2id (the `argon2` crate, its default parameters: 19 MiB, 2
//! passes, 1 lane — the OWASP minimum) with a random 16-byte salt per account, stored as a
//! PHC string, so the parameters travel with each hash and can be raised later without
//! breaking old accounts. Verification is the crate's (constant-time comparison).
//!
//! Why a [`Hasher`] with a semaphore: one hash costs ~19 MiB and tens of milliseconds of
//! CPU, so a burst of sign-ins could otherwise take every core and a lot of memory. At most
//! [`MAX_CONCURRENT_HASHES`] run at once, on the blocking pool (never on an async worker);
//! the rest wait their turn, at most [`MAX_WAITING_HASHES`] of them: past that a request is
//! refused at once (RESOURCE_EXHAUSTED) instead of queueing without bound, so a flood of
//! sign-ins costs its senders, not everyone's memory and latency. A sign-in for an unknown username still verifies (against a
//! hash of a random password made once), so the answer time does not tell whether the
//! name exists.
//!
//! Passwords are never logged, stored or quoted back: [`Password`] redacts itself in
//! `Debug`, and errors name only the rule that failed.

use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use tokio::sync::Semaphore;

use crate::error::{Result, ShopError};

/// Most password hashes computed at once (each takes ~19 MiB and one core).
pub const MAX_CONCURRENT_HASHES: usize = 2;

/// Most sign-ups and sign-ins waiting for a hashing slot; one more is refused at once.
pub const MAX_WAITING_HASHES: usize = 64;

/// A password from a request, redacted in `Debug` so it cannot reach a log by accident.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Wraps a password taken from a request.
    pub fn new(password: String) -> Self {
        Self(password)
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Hashes and verifies passwords, at most [`MAX_CONCURRENT_HASHES`] at a time.
#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// Hashing plus waiting: [`MAX_CONCURRENT_HASHES`] + [`MAX_WAITING_HASHES`].
    admission: Arc<Semaphore>,
}

impl Default for Hasher {
    fn default() -> Self {
        Self {
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_HASHES)),
            admission: Arc::new(Semaphore::new(MAX_CONCURRENT_HASHES + MAX_WAITING_HASHES)),
        }
    }
}

impl Hasher {
    /// Validates a new password's length and returns its PHC string.
    pub async fn hash(&self, password: Password) -> Result<String> {
        crate::validate::password(&password.0)?;
        self.run(move || hash_blocking(&password)).await?
    }

    /// Whether `password` matches `phc` (`None`: the account does not exist; a dummy hash
    /// is checked instead so the time taken is the same).
    pub async fn verify(&self, phc: Option<String>, password: Password) -> Result<bool> {
        self.run(move || {
            let stored: &str = match &phc {
                Some(phc) => phc,
                None => dummy_hash(),
            };
            let matches = verify_blocking(stored, &password)?;
            Ok(phc.is_some() && matches)
        })
        .await?
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let _admitted = self.admission.try_acquire().map_err(|_| {
            ShopError::ResourceExhausted(
                "too many sign-ups and sign-ins at once; retry in a second".into(),
            )
        })?;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ShopError::Unavailable("password hashing has stopped".into()))?;
        Ok(tokio::task::spawn_blocking(work).await?)
    }
}

fn hash_blocking(password: &Password) -> Result<String> {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| ShopError::internal(format!("password salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| ShopError::internal(format!("password hashing failed: {e}")))
}

fn verify_blocking(phc: &str, password: &Password) -> Result<bool> {
    let parsed = PasswordHash::new(phc)
        .map_err(|e| ShopError::internal(format!("stored password hash is corrupt: {e}")))?;
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(ShopError::internal(format!(
            "password verification failed: {e}"
        ))),
    }
}

/// A hash of a random password, made once, for sign-ins of unknown usernames.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let random = Password(concord::secrets::random_token());
        hash_blocking(&random).unwrap_or_else(|e| {
            // Hashing a fixed-size random string with fixed parameters cannot fail short
            // of a broken build; fall back to a parsable hash so sign-in still answers.
            tracing::error!(error = %e, "cannot make the dummy password hash");
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash is a salted Argon2id PHC string that verifies only its own password; an
    /// unknown account never verifies; too short or too long passwords are refused.
    #[tokio::test]
    async fn hash_and_verify() {
        let hasher = Hasher::default();
        let pw = || Password::new("correct horse".into());
        let a = hasher.hash(pw()).await.unwrap();
        let b = hasher.hash(pw()).await.unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "a fresh salt per hash");
        assert!(!a.contains("correct horse"));
        assert!(hasher.verify(Some(a.clone()), pw()).await.unwrap());
        let wrong = Password::new("correct horsE".into());
        assert!(!hasher.verify(Some(a), wrong).await.unwrap());
        assert!(!hasher.verify(None, pw()).await.unwrap());
        for bad in ["short", &"x".repeat(129)] {
            assert!(matches!(
                hasher.hash(Password::new(bad.to_string())).await,
                Err(ShopError::InvalidArgument(_))
            ));
        }
        assert_eq!(format!("{:?}", pw()), "Password(<redacted>)");
        assert!(matches!(
            hasher.verify(Some("not a phc".into()), pw()).await,
            Err(ShopError::Internal(_))
        ));
    }

    /// Past the hashing slots and the waiting room, a request is refused at once with
    /// RESOURCE_EXHAUSTED; once the queue drains, requests are served again.
    #[tokio::test]
    async fn a_full_waiting_room_refuses_at_once() {
        let hasher = Hasher::default();
        let held: Vec<_> = (0..MAX_CONCURRENT_HASHES + MAX_WAITING_HASHES)
            .map(|_| hasher.admission.clone().try_acquire_owned().unwrap())
            .collect();
        // A queueing hasher would wait here for ever (the test's timeout would catch it).
        let refused = hasher
            .verify(None, Password::new("correct horse".into()))
            .await;
        assert!(
            matches!(refused, Err(ShopError::ResourceExhausted(_))),
            "{refused:?}"
        );
        drop(held);
        let served = hasher
            .verify(None, Password::new("correct horse".into()))
            .await;
        assert_eq!(served, Ok(false));
    }
}

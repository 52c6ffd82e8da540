//! Session tokens: a JWT (RFC 7519, the `jsonwebtoken` crate) signed HS256 with the
//! shops' session key, claims `sub` = user id, `iat`, `exp`, and `gen`: the account's
//! session generation when the token was issued.
//!
//! Why a signed token and not a session table: both shops accept it with no shared state
//! beyond the key, so a session stays valid across failover (the key comes from the
//! cluster's `session-key` secret, which `concord up` hands to the shops only). Why the
//! shop still looks the account up on every call (see `service`): a token whose account
//! does not exist — lost in an async failover, or signed for an id never issued — is
//! refused, and user ids are never reissued, so such a token can never open someone
//! else's cart.
//!
//! Verification accepts only HS256 (so `alg: none` and algorithm swaps are refused),
//! requires `sub`, `iat` and `exp`, and allows [`CLOCK_LEEWAY`] of clock skew between the
//! shops. Every refusal is the same `Unauthenticated` message: the caller learns nothing
//! about which check failed.
//!
//! Revocation: sign-out raises the account's session generation (`account`), and the
//! service accepts a token only while its `gen` is the account's current one, checked in
//! the account lookup it does anyway; so a sign-out ends every session of the account, on
//! both shops, with no token table. A token without `gen` (issued before this rule) is
//! generation 0. Non-goals: refresh tokens, key rotation.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ShopError};
use crate::keys::UserId;

/// How long a session token is accepted after sign-in, unless configured otherwise.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Clock skew tolerated on `exp` (the shops' clocks may differ a little).
pub const CLOCK_LEEWAY: Duration = Duration::from_secs(5);
/// Shortest session key accepted, in bytes: HS256 wants at least 256 bits.
pub const MIN_SESSION_KEY_BYTES: usize = 32;

/// The claims of a session token.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The user id (`u-…`).
    sub: String,
    /// Issued at, seconds since the Unix epoch.
    iat: u64,
    /// Expires at, seconds since the Unix epoch.
    exp: u64,
    /// The account's session generation at issue (absent: 0).
    #[serde(default)]
    gen: u64,
}

/// What a verified token says: whose session, and of which session generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// The user the token was issued to.
    pub user: UserId,
    /// The account's session generation when it was issued.
    pub generation: u64,
}

/// A token just issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The JWT.
    pub token: String,
    /// When it expires, ms since the Unix epoch.
    pub expires_at_ms: i64,
}

/// Issues and verifies session tokens with one key.
#[derive(Clone)]
pub struct Sessions {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("key", &"<redacted>")
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Sessions {
    /// Sessions signed with `key` (at least [`MIN_SESSION_KEY_BYTES`]), valid for `ttl`.
    pub fn new(key: &[u8], ttl: Duration) -> Result<Self> {
        if key.len() < MIN_SESSION_KEY_BYTES {
            return Err(ShopError::invalid(format!(
                "the session key must be at least {MIN_SESSION_KEY_BYTES} bytes"
            )));
        }
        if ttl.is_zero() {
            return Err(ShopError::invalid("the session TTL must be positive"));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "iat", "sub"]);
        validation.leeway = CLOCK_LEEWAY.as_secs();
        Ok(Self {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            ttl,
        })
    }

    /// A token for `user` in session `generation`, valid from now for the TTL.
    pub fn issue(&self, user: UserId, generation: u64) -> Result<Issued> {
        let iat = now_s();
        let exp = iat.saturating_add(self.ttl.as_secs().max(1));
        let claims = Claims {
            sub: user.to_string(),
            iat,
            exp,
            gen: generation,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
                .map_err(|e| ShopError::internal(format!("cannot sign a session token: {e}")))?;
        Ok(Issued {
            token,
            expires_at_ms: i64::try_from(exp.saturating_mul(1000)).unwrap_or(i64::MAX),
        })
    }

    /// The session a token stands for, if it is ours, intact and not expired (whether its
    /// generation is still current is the caller's check, against the account).
    pub fn verify(&self, token: &str) -> Result<Session> {
        let refused = || {
            ShopError::Unauthenticated(
                "the session token is invalid or expired; sign in again".into(),
            )
        };
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                tracing::debug!(error = %e, "session token refused");
                refused()
            })?;
        let user = data.claims.sub.parse().map_err(|_| refused())?;
        Ok(Session {
            user,
            generation: data.claims.gen,
        })
    }
}

fn now_s() -> u64 {
    concord::clock::since_epoch().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn sign(key: &[u8], alg: Algorithm, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_secret(key)).unwrap()
    }

    /// Issued tokens verify; forged, tampered, expired, unsigned and malformed ones don't.
    #[test]
    fn verify_table() {
        let sessions = Sessions::new(KEY, Duration::from_secs(60)).unwrap();
        let issued = sessions.issue(UserId(7), 2).unwrap();
        assert_eq!(
            sessions.verify(&issued.token).unwrap(),
            Session {
                user: UserId(7),
                generation: 2
            }
        );
        let now = now_s();
        let old = sign(
            KEY,
            Algorithm::HS256,
            serde_json::json!({"sub": "u-7", "iat": now, "exp": now + 60}),
        );
        assert_eq!(
            sessions.verify(&old).unwrap().generation,
            0,
            "no gen: generation 0"
        );
        let ok = |sub: &str| serde_json::json!({"sub": sub, "iat": now, "exp": now + 60});
        let mut tampered = issued.token.clone();
        tampered.pop();
        tampered.push(if issued.token.ends_with('A') {
            'B'
        } else {
            'A'
        });
        let none = {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!(
                "{}.{}.",
                b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
                b64.encode(ok("u-7").to_string())
            )
        };
        let cases = [
            (
                "wrong key",
                sign(
                    b"another-key-another-key-another-k",
                    Algorithm::HS256,
                    ok("u-7"),
                ),
            ),
            ("HS512", sign(KEY, Algorithm::HS512, ok("u-7"))),
            ("alg none", none),
            ("tampered", tampered),
            (
                "expired",
                sign(
                    KEY,
                    Algorithm::HS256,
                    serde_json::json!({"sub": "u-7", "iat": now - 100, "exp": now - 60}),
                ),
            ),
            (
                "no exp",
                sign(
                    KEY,
                    Algorithm::HS256,
                    serde_json::json!({"sub": "u-7", "iat": now}),
                ),
            ),
            (
                "no sub",
                sign(
                    KEY,
                    Algorithm::HS256,
                    serde_json::json!({"iat": now, "exp": now + 60}),
                ),
            ),
            ("bad sub", sign(KEY, Algorithm::HS256, ok("alice"))),
            ("garbage", "a.b.c".into()),
            ("empty", String::new()),
        ];
        for (label, token) in cases {
            assert!(
                matches!(sessions.verify(&token), Err(ShopError::Unauthenticated(_))),
                "{label}"
            );
        }
        assert!(Sessions::new(b"short", Duration::from_secs(1)).is_err());
        assert!(Sessions::new(KEY, Duration::ZERO).is_err());
    }
}

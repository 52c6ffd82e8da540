//! Bearer tokens: the admin token (shop mutations, promotion), the oracle token
//! (`ReportOutcome`) and per-node credentials (`Stake`/`Unstake`).
//!
//! A node credential is `hex(HMAC-SHA256(cluster_secret, node_id))`: whoever holds the
//! cluster secret (the launcher) can hand each node its own credential, and a node holding
//! only its credential cannot forge another node's. Comparisons are constant-time.

use tonic::metadata::{MetadataMap, MetadataValue};

/// Metadata key that carries `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `authorization: Bearer …` metadata.
    #[error("missing bearer token: send metadata 'authorization: Bearer <token>'")]
    Missing,
    /// A token or credential was sent but it is not the right one.
    #[error("invalid token or credential")]
    Invalid,
    /// No `x-concord-credential` metadata (and no client certificate).
    #[error("missing cluster credential: send metadata 'x-concord-credential: <principal>:<hex>' (see `concord token credential`)")]
    MissingCredential,
    /// A credential or certificate identity that does not parse.
    #[error("malformed credential: {0}")]
    Malformed(String),
    /// The caller proved who it is, but that principal may not do this.
    #[error("{0}")]
    Forbidden(String),
}

impl crate::error::Classify for AuthError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Self::Forbidden(_) => crate::error::ErrorKind::PermissionDenied,
            _ => crate::error::ErrorKind::Unauthenticated,
        }
    }
}

impl From<AuthError> for tonic::Status {
    fn from(err: AuthError) -> Self {
        crate::error::to_status(&err)
    }
}

/// The token of an `authorization: Bearer <token>` entry, if any.
pub fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get(AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim())
}

/// Succeeds when the request carries exactly `expected` as its bearer token.
pub fn require_token(metadata: &MetadataMap, expected: &str) -> Result<(), AuthError> {
    let token = bearer_token(metadata).ok_or(AuthError::Missing)?;
    if constant_time_eq(token.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(AuthError::Invalid)
    }
}

/// The MAC of node `node_id`'s credential under `cluster_secret` (the hex part of its
/// [`crate::identity::Credential`]).
pub fn node_credential(cluster_secret: &str, node_id: &str) -> String {
    crate::identity::mac(
        cluster_secret,
        &crate::identity::Principal::Node(node_id.into()),
    )
}

/// Whether `token` is `node_id`'s credential MAC under `cluster_secret` (checked by
/// `hmac`'s own constant-time verify).
pub fn verify_node_credential(cluster_secret: &str, node_id: &str, token: &str) -> bool {
    crate::identity::verify_mac(
        cluster_secret,
        &crate::identity::Principal::Node(node_id.into()),
        token,
    )
}

/// Adds `authorization: Bearer <token>` to an outgoing request.
pub fn attach_bearer<T>(request: &mut tonic::Request<T>, token: &str) {
    match MetadataValue::try_from(format!("Bearer {token}")) {
        Ok(value) => {
            request.metadata_mut().insert(AUTHORIZATION, value);
        }
        Err(_) => tracing::warn!("token is not valid metadata; request sent without it"),
    }
}

/// Byte equality whose time does not depend on where the inputs differ (`subtle`).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata_with(value: &str) -> MetadataMap {
        let mut map = MetadataMap::new();
        map.insert(AUTHORIZATION, value.parse().expect("ascii"));
        map
    }

    /// Token checks: right, wrong, missing and malformed headers.
    #[test]
    fn require_token_table() {
        let cases = [
            (Some("Bearer s3cret"), Ok(())),
            (Some("bearer s3cret"), Ok(())),
            (Some("Bearer nope"), Err(AuthError::Invalid)),
            (Some("Basic s3cret"), Err(AuthError::Missing)),
            (None, Err(AuthError::Missing)),
        ];
        for (header, want) in cases {
            let metadata = header.map(metadata_with).unwrap_or_default();
            assert_eq!(require_token(&metadata, "s3cret"), want, "{header:?}");
        }
    }

    /// A node's credential verifies for it and for no other node or secret.
    #[test]
    fn node_credentials_are_per_node() {
        let alice = node_credential("secret", "node-1");
        assert!(verify_node_credential("secret", "node-1", &alice));
        assert!(!verify_node_credential("secret", "node-2", &alice));
        assert!(!verify_node_credential("other", "node-1", &alice));
        assert_eq!(alice.len(), 64);
        let secret = crate::identity::ClusterSecret::new("secret").expect("secret");
        let issued = secret.issue(crate::identity::Principal::Node("node-1".into()));
        assert_eq!(
            issued.token(),
            alice,
            "the same MAC as the node's credential"
        );
    }
}

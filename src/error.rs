//! The one place where error categories become `tonic::Status`.
//!
//! Each crate keeps its own `thiserror` enum whose variants are categories a caller can act
//! on, implements [`Classify`] for it, and converts with [`to_status`]. Handlers never build
//! a `Status` by hand, so the same kind of failure gets the same code everywhere, and an
//! internal error is logged with its cause once, here.

use tonic::{metadata::MetadataValue, Code, Status};

/// What a caller can do about an error; each maps to exactly one gRPC code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong; retrying it unchanged will fail again.
    InvalidArgument,
    /// The named thing does not exist.
    NotFound,
    /// The thing to create exists already.
    AlreadyExists,
    /// The system is not in a state that allows this (wrong role, illegal transition).
    FailedPrecondition,
    /// No or bad credentials.
    Unauthenticated,
    /// Valid credentials that may not do this.
    PermissionDenied,
    /// A dependency is down or too few peers answered; retrying later may work.
    Unavailable,
    /// The work did not finish in time.
    DeadlineExceeded,
    /// A bound was hit (queue full, too large).
    ResourceExhausted,
    /// A bug or a storage failure; logged in full on the server.
    Internal,
}

impl ErrorKind {
    /// The gRPC code for this kind.
    pub fn code(self) -> Code {
        match self {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
            ErrorKind::ResourceExhausted => Code::ResourceExhausted,
            ErrorKind::Internal => Code::Internal,
        }
    }

    /// Whether the same call may succeed if retried (possibly elsewhere).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Unavailable | ErrorKind::DeadlineExceeded | ErrorKind::ResourceExhausted
        )
    }
}

/// An error that knows its category, and optionally hints a client can follow.
pub trait Classify: std::error::Error {
    /// The category.
    fn kind(&self) -> ErrorKind;

    /// Metadata to attach to the status, e.g. `("x-concord-primary", "127.0.0.1:50060")`.
    fn hints(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// Converts a classified error into the status sent to the client.
pub fn to_status<E: Classify>(err: &E) -> Status {
    let kind = err.kind();
    if kind == ErrorKind::Internal {
        tracing::error!(error = %err, "internal error");
    }
    let mut status = Status::new(kind.code(), err.to_string());
    for (key, value) in err.hints() {
        match MetadataValue::try_from(value.as_str()) {
            Ok(value) => {
                status.metadata_mut().insert(key, value);
            }
            Err(_) => tracing::warn!(key, "hint is not valid metadata; dropped"),
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("replica: writes go to {0}")]
    struct NotPrimary(String);

    impl Classify for NotPrimary {
        fn kind(&self) -> ErrorKind {
            ErrorKind::FailedPrecondition
        }
        fn hints(&self) -> Vec<(&'static str, String)> {
            vec![("x-concord-primary", self.0.clone())]
        }
    }

    /// A classified error keeps its message and carries its hints as metadata.
    #[test]
    fn status_carries_code_message_and_hints() {
        let status = to_status(&NotPrimary("127.0.0.1:1".into()));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "replica: writes go to 127.0.0.1:1");
        assert_eq!(
            status
                .metadata()
                .get("x-concord-primary")
                .and_then(|v| v.to_str().ok()),
            Some("127.0.0.1:1")
        );
    }

    /// Only transient kinds are retryable.
    #[test]
    fn retryable_kinds() {
        for (kind, retry) in [
            (ErrorKind::Unavailable, true),
            (ErrorKind::DeadlineExceeded, true),
            (ErrorKind::InvalidArgument, false),
            (ErrorKind::FailedPrecondition, false),
            (ErrorKind::Internal, false),
        ] {
            assert_eq!(kind.is_retryable(), retry, "{kind:?}");
        }
    }
}

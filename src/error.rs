//! The one place where error categories become `tonic::Status`.
//!
//! Each crate keeps its own `thiserror` enum whose variants are categories a caller can act
//! on, implements [`Classify`] for it, and converts with [`to_status`]. Handlers never build
//! a `Status` by hand, so the same kind of failure gets the same code everywhere, and an
//! internal error is logged with its cause once, here.
//!
//! Messages that name what the caller sent quote it through [`quote`], which keeps at most
//! [`QUOTE_MAX_CHARS`] characters: a status message travels in an HTTP/2 trailer, and a
//! client with a 16 KB header limit (Python grpcio) cannot even read the error if a 3 MB id
//! is echoed back. [`to_status`] also cuts any message at [`MAX_STATUS_MESSAGE_BYTES`], as a
//! backstop for a message that quotes something unbounded by mistake.

use std::fmt;

use tonic::{metadata::MetadataValue, Code, Status};

/// Most characters of a caller-supplied value an error message repeats.
pub const QUOTE_MAX_CHARS: usize = 64;
/// Longest status message sent to a client, in bytes; longer ones are cut.
pub const MAX_STATUS_MESSAGE_BYTES: usize = 1024;

/// A caller-supplied value, ready to be put into an error message: see [`quote`]. Its
/// `Debug` is its `Display`, so `{:?}` is bounded too.
#[derive(Clone, Copy)]
pub struct Quoted<'a>(&'a str);

/// Renders `value` for an error message: Rust-quoted (`"abc"`, control characters escaped)
/// when it has at most [`QUOTE_MAX_CHARS`] characters; otherwise its first
/// [`QUOTE_MAX_CHARS`] characters (cut on a char boundary), an ellipsis and its full
/// length, e.g. `"aaaa…aaaa"… (3145728 bytes)`. Never copies the whole value.
pub fn quote(value: &str) -> Quoted<'_> {
    Quoted(value)
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(QUOTE_MAX_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `message` cut to at most [`MAX_STATUS_MESSAGE_BYTES`] on a char boundary, with a note
/// of the full length when cut.
fn bounded_message(mut message: String) -> String {
    if message.len() <= MAX_STATUS_MESSAGE_BYTES {
        return message;
    }
    let full = message.len();
    let mut cut = MAX_STATUS_MESSAGE_BYTES;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message.truncate(cut);
    message.push_str(&format!("… (message cut, {full} bytes)"));
    message
}

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
    let mut status = Status::new(kind.code(), bounded_message(err.to_string()));
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

    /// Short values are quoted whole; long ones are cut to QUOTE_MAX_CHARS characters on a
    /// char boundary, with an ellipsis and the full length in bytes.
    #[test]
    fn quote_bounds_what_it_repeats() {
        let long_ascii = "a".repeat(3 * 1024 * 1024);
        let long_multibyte = "é".repeat(100);
        let first = &long_ascii[..QUOTE_MAX_CHARS];
        let cases: &[(&str, String)] = &[
            ("", "\"\"".to_owned()),
            ("node-1", "\"node-1\"".to_owned()),
            ("tab\there", "\"tab\\there\"".to_owned()),
            (first, format!("{first:?}")),
            (
                &long_ascii[..QUOTE_MAX_CHARS + 1],
                format!("{first:?}… (65 bytes)"),
            ),
            (&long_ascii, format!("{first:?}… (3145728 bytes)")),
            (
                &long_multibyte,
                format!("{:?}… (200 bytes)", "é".repeat(QUOTE_MAX_CHARS)),
            ),
        ];
        for (value, want) in cases {
            assert_eq!(quote(value).to_string(), *want, "{} bytes", value.len());
            assert_eq!(format!("{:?}", quote(value)), *want, "Debug is Display");
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("unbounded: {0}")]
    struct Unbounded(String);

    impl Classify for Unbounded {
        fn kind(&self) -> ErrorKind {
            ErrorKind::InvalidArgument
        }
    }

    /// A message that quotes something unbounded by mistake is still cut to a size every
    /// client can read, on a char boundary.
    #[test]
    fn status_message_is_bounded() {
        let status = to_status(&Unbounded("ü".repeat(1024 * 1024)));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().len() <= MAX_STATUS_MESSAGE_BYTES + 64,
            "{} bytes",
            status.message().len()
        );
        assert!(
            status.message().ends_with("(message cut, 2097163 bytes)"),
            "{}",
            &status.message()[status.message().len() - 40..]
        );
        let short = to_status(&Unbounded("x".into()));
        assert_eq!(short.message(), "unbounded: x");
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

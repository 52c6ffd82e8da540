//! The shop role a registry instance publishes: `role` and `term` in its metadata.
//!
//! Why one type: the registry arbitrates primary claims from this metadata, a shop decides
//! whom to follow and whether to promote from it, and the gateway routes writes by it. Three
//! readers with three parsing rules disagree exactly where it matters (a primary without a
//! term, a term that is not a number), so every reader goes through [`PrimaryClaim::parse`]
//! and every writer through [`PrimaryClaim::write`].
//!
//! The rule, once:
//! - no `role` key: the instance makes no claim (`Ok(None)`), whatever `term` says;
//! - `role=primary`: it holds the primary role for `term`;
//! - `role=replica`: it follows the primary of `term`;
//! - any other role is an error ([`ClaimError::UnknownRole`]);
//! - a missing `term` is term 0 (the registry has always read it so); a `term` that is not
//!   a u64 is an error ([`ClaimError::InvalidTerm`]).
//!
//! The registry refuses a registration whose claim does not parse, so a reader that gets an
//! error from a registry's answer may treat the instance as making no claim.
//!
//! **Log position.** A shop also publishes where its log ends, [`LogPosition`] (`log_term`,
//! `log_lsn`), so that the registry can order claims the way Raft's vote rule orders
//! candidates: by the term of the log's last entry, then its last LSN. The registry accepts
//! a claim to a new term only from a shop whose position is at least the newest it knows
//! (`concord_registry`'s lease table), so a shop that missed a term's writes never claims
//! over them. No `log_term` key: position unknown, which counts as the lowest, (0, 0); a
//! `log_lsn` without `log_term` is ignored, a missing `log_lsn` is 0, and a value that is
//! not a u64 is an error ([`ClaimError::InvalidPosition`]).

use std::collections::HashMap;

use thiserror::Error;

use crate::error::quote;

/// Metadata key of a shop instance's role (`primary` or `replica`).
pub const METADATA_ROLE: &str = "role";
/// Metadata key of the term a shop claims (primary) or follows (replica).
pub const METADATA_TERM: &str = "term";
/// `role` value of the instance that holds the primary role.
pub const ROLE_PRIMARY: &str = "primary";
/// `role` value of an instance that follows a primary.
pub const ROLE_REPLICA: &str = "replica";
/// Metadata key of the term of a shop's log (its last entry's, or the term whose log it
/// holds in full: module docs of [`LogPosition`]).
pub const METADATA_LOG_TERM: &str = "log_term";
/// Metadata key of the last LSN of a shop's durable log.
pub const METADATA_LOG_LSN: &str = "log_lsn";

/// A primary term: raised by one at every promotion, arbitrated by the registry.
pub type Term = u64;

/// The role half of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClaimedRole {
    /// Holds the primary role (accepts writes) for the claim's term.
    Primary,
    /// Follows the primary of the claim's term.
    Replica,
}

impl ClaimedRole {
    /// The metadata value of this role.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimedRole::Primary => ROLE_PRIMARY,
            ClaimedRole::Replica => ROLE_REPLICA,
        }
    }
}

/// What an instance publishes about the primary role: it holds it, or follows its holder,
/// at `term`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PrimaryClaim {
    /// Holds or follows.
    pub role: ClaimedRole,
    /// The term held or followed.
    pub term: Term,
}

/// Why a metadata map holds no valid claim.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClaimError {
    /// `role` is neither `primary` nor `replica`.
    #[error("metadata {METADATA_ROLE} {} is neither {ROLE_PRIMARY:?} nor {ROLE_REPLICA:?}", quote(.0))]
    UnknownRole(String),
    /// `term` is not a non-negative integer.
    #[error("metadata {METADATA_TERM} {} is not a non-negative integer", quote(.0))]
    InvalidTerm(String),
    /// `log_term` or `log_lsn` is not a non-negative integer.
    #[error("metadata log position {} is not a non-negative integer", quote(.0))]
    InvalidPosition(String),
}

/// Where a shop's log ends, ordered as Raft orders logs: by `term` first, then `lsn`. The
/// newest position is the log that holds every write any primary acknowledged alone.
///
/// `term` is the term of the last entry, or higher when the shop knows its log is that
/// term's log in full although no entry of it exists yet: it was promoted into the term
/// (its next entry is of that term), or, as a replica, it was caught up with that term's
/// primary. `lsn` is the last durable LSN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPosition {
    /// The term of the log (see the type's docs).
    pub term: Term,
    /// The last durable LSN.
    pub lsn: u64,
}

impl LogPosition {
    /// The position in `metadata` (module docs): `Ok(None)` without `log_term`.
    pub fn parse(metadata: &HashMap<String, String>) -> Result<Option<Self>, ClaimError> {
        let number = |key: &str| -> Result<Option<u64>, ClaimError> {
            metadata
                .get(key)
                .map(|v| {
                    v.parse()
                        .map_err(|_| ClaimError::InvalidPosition(v.clone()))
                })
                .transpose()
        };
        let Some(term) = number(METADATA_LOG_TERM)? else {
            return Ok(None);
        };
        let lsn = number(METADATA_LOG_LSN)?.unwrap_or(0);
        Ok(Some(LogPosition { term, lsn }))
    }

    /// The position `metadata` publishes, the lowest one when it publishes none or an
    /// invalid one (the registry refuses invalid ones before anyone reads them).
    pub fn of(metadata: &HashMap<String, String>) -> Self {
        Self::parse(metadata).ok().flatten().unwrap_or_default()
    }

    /// Writes `log_term` and `log_lsn` into `metadata`.
    pub fn write(&self, metadata: &mut HashMap<String, String>) {
        metadata.insert(METADATA_LOG_TERM.to_owned(), self.term.to_string());
        metadata.insert(METADATA_LOG_LSN.to_owned(), self.lsn.to_string());
    }
}

impl std::fmt::Display for LogPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(term {}, LSN {})", self.term, self.lsn)
    }
}

impl PrimaryClaim {
    /// A claim to hold the primary role for `term`.
    pub fn primary(term: Term) -> Self {
        PrimaryClaim {
            role: ClaimedRole::Primary,
            term,
        }
    }

    /// A replica's claim: it follows the primary of `term`.
    pub fn replica(term: Term) -> Self {
        PrimaryClaim {
            role: ClaimedRole::Replica,
            term,
        }
    }

    /// Reads the claim in `metadata` by the rule of the module docs; `Ok(None)` when it
    /// has no `role`.
    pub fn parse(metadata: &HashMap<String, String>) -> Result<Option<Self>, ClaimError> {
        let role = match metadata.get(METADATA_ROLE).map(String::as_str) {
            None => return Ok(None),
            Some(ROLE_PRIMARY) => ClaimedRole::Primary,
            Some(ROLE_REPLICA) => ClaimedRole::Replica,
            Some(other) => return Err(ClaimError::UnknownRole(other.to_owned())),
        };
        let term = match metadata.get(METADATA_TERM) {
            None => 0,
            Some(term) => term
                .parse()
                .map_err(|_| ClaimError::InvalidTerm(term.clone()))?,
        };
        Ok(Some(PrimaryClaim { role, term }))
    }

    /// The term `metadata` claims the primary role for, if it validly claims it.
    pub fn primary_term_of(metadata: &HashMap<String, String>) -> Option<Term> {
        Self::parse(metadata).ok().flatten()?.primary_term()
    }

    /// The term held, if this claims the primary role.
    pub fn primary_term(&self) -> Option<Term> {
        (self.role == ClaimedRole::Primary).then_some(self.term)
    }

    /// Whether this claims the primary role.
    pub fn is_primary(&self) -> bool {
        self.role == ClaimedRole::Primary
    }

    /// Writes `role` and `term` into `metadata`, replacing what was there.
    pub fn write(&self, metadata: &mut HashMap<String, String>) {
        metadata.insert(METADATA_ROLE.to_owned(), self.role.as_str().to_owned());
        metadata.insert(METADATA_TERM.to_owned(), self.term.to_string());
    }

    /// The metadata map holding just this claim.
    pub fn to_metadata(&self) -> HashMap<String, String> {
        let mut metadata = HashMap::with_capacity(2);
        self.write(&mut metadata);
        metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A metadata map and the claim (or a piece of the error) it parses to.
    type Case = (
        &'static [(&'static str, &'static str)],
        Result<Option<PrimaryClaim>, &'static str>,
    );

    /// The parsing rule of the module docs, case by case.
    #[test]
    fn parse_table() {
        let cases: &[Case] = &[
            (&[], Ok(None)),
            (&[("term", "7")], Ok(None)),
            (&[("node_id", "n1")], Ok(None)),
            (
                &[("role", "primary"), ("term", "3")],
                Ok(Some(PrimaryClaim::primary(3))),
            ),
            (&[("role", "primary")], Ok(Some(PrimaryClaim::primary(0)))),
            (
                &[("role", "replica"), ("term", "2")],
                Ok(Some(PrimaryClaim::replica(2))),
            ),
            (&[("role", "replica")], Ok(Some(PrimaryClaim::replica(0)))),
            (
                &[("role", "primary"), ("term", "18446744073709551615")],
                Ok(Some(PrimaryClaim::primary(u64::MAX))),
            ),
            (
                &[("role", "primary"), ("term", "-1")],
                Err("not a non-negative"),
            ),
            (
                &[("role", "primary"), ("term", "x")],
                Err("not a non-negative"),
            ),
            (
                &[("role", "replica"), ("term", "")],
                Err("not a non-negative"),
            ),
            (
                &[("role", "primary"), ("term", "18446744073709551616")],
                Err("not a non-negative"),
            ),
            (&[("role", "Primary"), ("term", "1")], Err("neither")),
            (&[("role", ""), ("term", "1")], Err("neither")),
        ];
        for (metadata, want) in cases {
            let got = PrimaryClaim::parse(&md(metadata));
            match want {
                Ok(want) => assert_eq!(got.as_ref(), Ok(want), "{metadata:?}"),
                Err(want) => {
                    let err = got.expect_err("invalid claim");
                    assert!(err.to_string().contains(want), "{metadata:?}: {err}");
                }
            }
        }
    }

    /// What is written parses back to the same claim, and replaces an older claim.
    #[test]
    fn write_round_trips() {
        for claim in [
            PrimaryClaim::primary(1),
            PrimaryClaim::replica(9),
            PrimaryClaim::primary(u64::MAX),
        ] {
            let mut metadata = md(&[("role", "replica"), ("term", "1"), ("other", "x")]);
            claim.write(&mut metadata);
            assert_eq!(PrimaryClaim::parse(&metadata), Ok(Some(claim)));
            assert_eq!(metadata["other"], "x");
            assert_eq!(PrimaryClaim::parse(&claim.to_metadata()), Ok(Some(claim)));
        }
    }

    /// Positions parse by the module docs' rule and order by term first, then LSN.
    #[test]
    fn log_positions_table() {
        /// Metadata pairs and the position they parse to (`Err(())`: invalid).
        type PositionCase = (
            &'static [(&'static str, &'static str)],
            Result<Option<LogPosition>, ()>,
        );
        let cases: &[PositionCase] = &[
            (&[], Ok(None)),
            (&[("log_lsn", "9")], Ok(None)),
            (
                &[("log_term", "2")],
                Ok(Some(LogPosition { term: 2, lsn: 0 })),
            ),
            (
                &[("log_term", "2"), ("log_lsn", "17")],
                Ok(Some(LogPosition { term: 2, lsn: 17 })),
            ),
            (&[("log_term", "x")], Err(())),
            (&[("log_term", "1"), ("log_lsn", "-3")], Err(())),
        ];
        for (metadata, want) in cases {
            let got = LogPosition::parse(&md(metadata)).map_err(|_| ());
            assert_eq!(&got, want, "{metadata:?}");
        }
        let p = |term, lsn| LogPosition { term, lsn };
        assert!(p(2, 1) > p(1, 1_000), "a newer term beats any LSN");
        assert!(p(2, 5) > p(2, 4));
        assert_eq!(LogPosition::of(&md(&[("log_term", "x")])), p(0, 0));
        let mut metadata = PrimaryClaim::replica(3).to_metadata();
        p(3, 44).write(&mut metadata);
        assert_eq!(LogPosition::of(&metadata), p(3, 44));
        assert_eq!(
            PrimaryClaim::parse(&metadata),
            Ok(Some(PrimaryClaim::replica(3)))
        );
    }

    /// Only a valid primary claim has a primary term.
    #[test]
    fn primary_term_of_needs_a_valid_primary_claim() {
        assert_eq!(
            PrimaryClaim::primary_term_of(&md(&[("role", "primary"), ("term", "4")])),
            Some(4)
        );
        assert_eq!(
            PrimaryClaim::primary_term_of(&md(&[("role", "replica"), ("term", "4")])),
            None
        );
        assert_eq!(
            PrimaryClaim::primary_term_of(&md(&[("role", "primary"), ("term", "x")])),
            None
        );
        assert_eq!(PrimaryClaim::primary_term_of(&md(&[])), None);
    }
}

//! The part this process plays, as one type.
//!
//! Why a type: the role used to be `Primary | Replica(String)` with `""` meaning "fenced"
//! and the term read separately from the store, so every reader re-derived what a fenced
//! process is and which term a role belongs to. Here each role carries its term, and the
//! three situations a shop can be in are three variants. The role lives in one place, the
//! [`Replicator`](super::Replicator)'s watch channel; the store's write fence is derived
//! from it in `Replicator::set_role` only.

use concord::claim::{PrimaryClaim, Term};

/// This process's part in replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Accepts writes for `term` (once the registry accepted the claim, with a registry).
    Primary {
        /// The term held.
        term: Term,
    },
    /// Follows the primary at `primary`, whose term is `term` as far as this process knows.
    Replica {
        /// The primary's address.
        primary: String,
        /// The highest term seen from that primary (its heartbeats raise it).
        term: Term,
    },
    /// Knows no primary to follow and takes no writes: started while the registry was
    /// unreachable, or its primary claim was refused. Writes get UNAVAILABLE (retryable).
    Fenced {
        /// The term this process last held or followed.
        term: Term,
    },
}

impl Role {
    /// The term of this role.
    pub fn term(&self) -> Term {
        match self {
            Role::Primary { term } | Role::Replica { term, .. } | Role::Fenced { term } => *term,
        }
    }

    /// Whether this process takes writes in this role.
    pub fn is_primary(&self) -> bool {
        matches!(self, Role::Primary { .. })
    }

    /// Whether this process follows nobody and takes no writes.
    pub fn is_fenced(&self) -> bool {
        matches!(self, Role::Fenced { .. })
    }

    /// The primary this process follows, if it is a replica.
    pub fn maybe_primary(&self) -> Option<&str> {
        match self {
            Role::Replica { primary, .. } => Some(primary),
            _ => None,
        }
    }

    /// What this role publishes in the registry: a fenced process follows (nobody) at its
    /// term, like a replica.
    pub fn claim(&self) -> PrimaryClaim {
        match self {
            Role::Primary { term } => PrimaryClaim::primary(*term),
            Role::Replica { term, .. } | Role::Fenced { term } => PrimaryClaim::replica(*term),
        }
    }

    /// The same role at `term`, if that is higher (a replica learning its primary's term).
    pub fn with_higher_term(&self, term: Term) -> Role {
        let mut role = self.clone();
        match &mut role {
            Role::Primary { term: t }
            | Role::Replica { term: t, .. }
            | Role::Fenced { term: t } => *t = (*t).max(term),
        }
        role
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each role publishes the claim the registry expects from it, at its own term.
    #[test]
    fn claims_table() {
        let replica = |t| Role::Replica {
            primary: "p:1".into(),
            term: t,
        };
        let cases = [
            (Role::Primary { term: 3 }, PrimaryClaim::primary(3), true),
            (replica(2), PrimaryClaim::replica(2), false),
            (Role::Fenced { term: 4 }, PrimaryClaim::replica(4), false),
        ];
        for (role, claim, primary) in cases {
            assert_eq!(role.claim(), claim, "{role:?}");
            assert_eq!(role.is_primary(), primary, "{role:?}");
            assert_eq!(role.term(), claim.term, "{role:?}");
        }
    }

    /// A term only grows, whatever the role.
    #[test]
    fn terms_only_grow() {
        let replica = Role::Replica {
            primary: "p:1".into(),
            term: 2,
        };
        assert_eq!(replica.with_higher_term(5).term(), 5);
        assert_eq!(replica.with_higher_term(1).term(), 2);
        assert_eq!(replica.with_higher_term(5).maybe_primary(), Some("p:1"));
        assert_eq!(Role::Fenced { term: 3 }.with_higher_term(2).term(), 3);
    }
}

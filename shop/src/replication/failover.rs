//! The failover decisions as a socket-free state machine: [`Failover::step`] takes what
//! the registry (or the clock) said and returns what to do.
//!
//! Why a core without sockets: every failover bug of earlier rounds was a decision taken
//! on the wrong information (a restarted registry's empty set taken for the primary's
//! death, a promotion retried from the very set it had just lost on, a late watch event
//! after a registry outage). Here each decision is one match over (role, event), tested by
//! a table of scripts; the driver (`registry_watch.rs`) only turns registry answers into
//! [`Event`]s and [`Action`]s into calls.
//!
//! The rules:
//! - **Follow the newest primary.** Any instance set that shows another primary with a
//!   term ≥ ours (a primary: > ours or = ours, since the registry grants one primary per
//!   term and ours lost) makes this process follow it, unless it already does.
//! - **Promote only on fresh state.** A watched set without a primary never promotes by
//!   itself: it makes the core ask for a fresh `Resolve` ([`Action::Resolve`]). Only if
//!   that answer shows no live primary does the replica *claim* the next term
//!   ([`Action::Claim`]); it becomes the primary only once the registry accepted the claim
//!   ([`Event::ClaimAccepted`] → [`Action::BecomePrimary`]). A refused claim
//!   ([`Event::ClaimRefused`]) leaves it a replica of whom it followed: it withdraws the
//!   claim and tries again later ([`Action::RetryLater`] → [`Event::RetryDue`]), never
//!   fencing itself and never raising its stored term for a claim nobody accepted (so its
//!   Hello never claims a term above its primary's: no error loop).
//! - **Only after a primary was seen on the current Watch stream**, or once the set has
//!   stayed empty past the registry's grace. A replica started before its primary, or
//!   watching a registry that restarted and has not yet heard the primary's next
//!   KeepAlive, sees an empty set that says nothing about the primary *for a while*: every
//!   live primary registers (or renews) within the registry's grace (two TTLs). A set that
//!   stays empty that long on one stream ([`Event::GraceOver`]) means no primary is alive,
//!   e.g. both shops were stopped and came back (the double stop): then a shop that has
//!   been part of a cluster (term ≥ 1) asks again (a fresh Resolve, never the late event)
//!   and claims. A brand-new shop (term 0) never claims so: it may hold nothing at all.
//! - **Only the newest log claims.** Every claim carries this shop's log position; the
//!   registry refuses a claim to a new term from a log behind the newest it knows (rule 3
//!   of `concord_registry`'s lease table; positions in `concord::claim::LogPosition`). So a
//!   shop that missed a newer term's writes — stopped while another primary took writes
//!   alone — keeps being refused (and retries every [`PROMOTION_RETRY_INTERVAL`], a
//!   warning each time) until the newest shop is back; that one claims, and the
//!   stale one follows it. The core does not need to know positions: the registry is the
//!   one place the rule is checked, in memory and in etcd alike.
//! - **A held claim refused** (this process is the primary and the registry refused its
//!   claim to its term, e.g. after a registry outage a newer primary exists): step down to
//!   fenced ([`Action::StepDown`]) and promote again only from a newer set than the one it
//!   lost on, which lacks the winner the registry already holds, or once the grace is over
//!   (a fresh Resolve then shows the winner if it lives).
//! - **Terms never climb without end.** The next claim is our term + 1, or + 2 when + 1 was
//!   just refused while no primary was visible (the registry knows that term as taken);
//!   seeing a primary forgets the refusal.
//!
//! Non-goals: time. The core never sleeps; `RetryLater` asks the driver for a
//! [`Event::RetryDue`] after [`PROMOTION_RETRY_INTERVAL`].

use std::time::Duration;

use concord::claim::Term;

use super::role::Role;

/// How long a replica whose claim was refused, or whose fresh lookup failed, waits before
/// it looks again.
pub const PROMOTION_RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// A primary as the registry shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivePrimary {
    /// Its address.
    pub address: String,
    /// The term it holds.
    pub term: Term,
}

/// What the failover core hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The registry watch delivered a new instance set, numbered by the Watch stream it
    /// came on (a registry restart starts a new stream).
    Watched {
        /// The Watch stream's number.
        stream: u64,
        /// The primaries in the set, this process's own address included or not.
        primaries: Vec<LivePrimary>,
    },
    /// The answer to [`Action::Resolve`]: the live primaries right now.
    Resolved(Vec<LivePrimary>),
    /// [`Action::Resolve`] got no answer.
    ResolveFailed,
    /// The registry accepted our claim to `term`.
    ClaimAccepted(Term),
    /// The registry refused our claim to `term` (a pending claim, or the primary's own).
    ClaimRefused(Term),
    /// The wait asked for by [`Action::RetryLater`] is over.
    RetryDue,
    /// Watch stream `stream` has been open for the registry's grace (two lease TTLs): every
    /// live primary has renewed on it by now.
    GraceOver {
        /// The Watch stream's number.
        stream: u64,
    },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Step down (or over) and follow `primary` at `term`.
    Follow {
        /// The primary's address.
        primary: String,
        /// Its term.
        term: Term,
    },
    /// Ask the registry for the live primaries now and report [`Event::Resolved`] or
    /// [`Event::ResolveFailed`].
    Resolve,
    /// Publish a claim to `term` (still a replica: no writes until it is accepted).
    Claim(Term),
    /// Take back the pending claim: publish the replica's metadata again.
    WithdrawClaim,
    /// The claim to `term` was accepted: store the term and take writes.
    BecomePrimary(Term),
    /// Our held claim was refused: stop taking writes and follow nobody.
    StepDown,
    /// Report [`Event::RetryDue`] after [`PROMOTION_RETRY_INTERVAL`].
    RetryLater,
}

/// The failover state of one shop process. The role is not kept here: it lives in the
/// `Replicator` and is passed to every step.
#[derive(Debug, Clone)]
pub struct Failover {
    /// This process's own address (its own registration is never a rival).
    address: String,
    /// The Watch stream on which a primary was last seen.
    seen_primary_on: Option<u64>,
    /// The last instance set watched: (stream, primaries other than us).
    last: Option<(u64, Vec<LivePrimary>)>,
    /// Whether the last set may still lead to a promotion (false once a held claim was
    /// refused on it: it lacks the winner).
    fresh: bool,
    /// A fresh lookup is under way.
    resolving: bool,
    /// The term of our pending claim, if one is published.
    claiming: Option<Term>,
    /// The last claim refused while no primary was visible.
    refused: Option<Term>,
    /// A retry is scheduled.
    retry_armed: bool,
    /// The Watch stream whose grace is over (no primary could still be about to renew).
    grace_over_on: Option<u64>,
}

impl Failover {
    /// The core of the process advertised at `address`.
    pub fn new(address: impl Into<String>) -> Self {
        Failover {
            address: address.into(),
            seen_primary_on: None,
            last: None,
            fresh: true,
            resolving: false,
            claiming: None,
            refused: None,
            retry_armed: false,
            grace_over_on: None,
        }
    }

    /// The term of the pending claim, if any.
    pub fn claiming(&self) -> Option<Term> {
        self.claiming
    }

    /// Takes one event, with the process's current `role`, and returns what to do.
    pub fn step(&mut self, role: &Role, event: Event) -> Vec<Action> {
        match event {
            Event::Watched { stream, primaries } => {
                let others = self.others(primaries);
                self.last = Some((stream, others));
                self.fresh = true;
                self.decide(role)
            }
            Event::RetryDue => {
                self.retry_armed = false;
                self.decide(role)
            }
            Event::GraceOver { stream } => {
                self.grace_over_on = Some(stream);
                self.decide(role)
            }
            Event::Resolved(primaries) => {
                self.resolving = false;
                let others = self.others(primaries);
                if let Some(newest) = newest(&others) {
                    self.refused = None;
                    return self.follow_if_newer(role, newest).into_iter().collect();
                }
                if !self.may_promote(role) {
                    return Vec::new();
                }
                let Some(term) = self.next_claim(role) else {
                    return Vec::new();
                };
                self.claiming = Some(term);
                vec![Action::Claim(term)]
            }
            Event::ResolveFailed => {
                self.resolving = false;
                self.retry()
            }
            Event::ClaimAccepted(term) => {
                if self.claiming != Some(term) {
                    return Vec::new();
                }
                self.claiming = None;
                self.refused = None;
                vec![Action::BecomePrimary(term)]
            }
            Event::ClaimRefused(term) => {
                if self.claiming == Some(term) {
                    self.claiming = None;
                    self.refused = Some(term);
                    let mut actions = vec![Action::WithdrawClaim];
                    actions.extend(self.retry());
                    return actions;
                }
                if *role == (Role::Primary { term }) {
                    // The set we decided on lacks the winner: promote only from a newer one.
                    self.fresh = false;
                    let mut actions = vec![Action::StepDown];
                    let fenced = Role::Fenced { term };
                    actions.extend(self.decide(&fenced));
                    return actions;
                }
                Vec::new()
            }
        }
    }

    /// The primaries other than this process.
    fn others(&self, primaries: Vec<LivePrimary>) -> Vec<LivePrimary> {
        primaries
            .into_iter()
            .filter(|p| p.address != self.address)
            .collect()
    }

    /// Decides on the last watched set.
    fn decide(&mut self, role: &Role) -> Vec<Action> {
        let Some((stream, others)) = self.last.clone() else {
            return Vec::new();
        };
        if let Some(newest) = newest(&others) {
            self.seen_primary_on = Some(stream);
            self.refused = None;
            let mut actions = Vec::new();
            if self.claiming.is_some_and(|claim| newest.term >= claim) {
                self.claiming = None;
                actions.push(Action::WithdrawClaim);
            }
            actions.extend(self.follow_if_newer(role, newest));
            return actions;
        }
        let primary_gone = self.seen_primary_on == Some(stream) && self.fresh;
        // Empty past the grace, and never a primary on this stream: nobody is alive to
        // renew. Only a shop that has been in a cluster (term ≥ 1) claims so; the registry
        // then lets only the newest log win.
        let none_alive = self.grace_over_on == Some(stream)
            && self.seen_primary_on != Some(stream)
            && role.term() > 0;
        if (primary_gone || none_alive) && self.may_promote(role) && !self.resolving {
            self.resolving = true;
            return vec![Action::Resolve];
        }
        Vec::new()
    }

    /// Whether a replica or fenced process with nothing pending may try to promote.
    fn may_promote(&self, role: &Role) -> bool {
        !role.is_primary() && self.claiming.is_none()
    }

    /// The term of the next claim: the one after ours, or one further if exactly that one
    /// was just refused while no primary was visible (the registry knows it as taken by a
    /// holder that is gone). Never further: a registry that keeps refusing makes the claims
    /// alternate between two terms instead of climbing without end.
    fn next_claim(&self, role: &Role) -> Option<Term> {
        let next = role.term().checked_add(1)?;
        match self.refused {
            Some(refused) if refused == next => next.checked_add(1),
            _ => Some(next),
        }
    }

    /// `Follow` when `newest` is a primary this process must follow and does not yet.
    fn follow_if_newer(&self, role: &Role, newest: &LivePrimary) -> Option<Action> {
        let follow = match role {
            Role::Primary { term } => newest.term >= *term,
            Role::Replica { primary, term } => newest.term >= *term && *primary != newest.address,
            Role::Fenced { term } => newest.term >= *term,
        };
        follow.then(|| Action::Follow {
            primary: newest.address.clone(),
            term: newest.term,
        })
    }

    /// `RetryLater`, unless one is already scheduled.
    fn retry(&mut self) -> Vec<Action> {
        if self.retry_armed {
            return Vec::new();
        }
        self.retry_armed = true;
        vec![Action::RetryLater]
    }
}

/// The primary with the highest term.
fn newest(primaries: &[LivePrimary]) -> Option<&LivePrimary> {
    primaries.iter().max_by_key(|p| p.term)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "me:1";

    fn p(address: &str, term: Term) -> LivePrimary {
        LivePrimary {
            address: address.into(),
            term,
        }
    }

    fn watched(stream: u64, primaries: &[(&str, Term)]) -> Event {
        Event::Watched {
            stream,
            primaries: primaries.iter().map(|(a, t)| p(a, *t)).collect(),
        }
    }

    fn resolved(primaries: &[(&str, Term)]) -> Event {
        Event::Resolved(primaries.iter().map(|(a, t)| p(a, *t)).collect())
    }

    fn grace(stream: u64) -> Event {
        Event::GraceOver { stream }
    }

    fn replica(primary: &str, term: Term) -> Role {
        Role::Replica {
            primary: primary.into(),
            term,
        }
    }

    fn follow(primary: &str, term: Term) -> Action {
        Action::Follow {
            primary: primary.into(),
            term,
        }
    }

    /// One step of a script: the role the process has at that moment, the event, and the
    /// actions it must give.
    type Step = (Role, Event, Vec<Action>);

    /// Every transition of the core, as scripts (role at each step, event, actions).
    #[test]
    fn transitions_table() {
        use Action::*;
        let cases: Vec<(&str, Vec<Step>)> = vec![
            (
                "the primary dies: a fresh Resolve, a claim, promotion once accepted",
                vec![
                    (replica("a", 1), watched(1, &[("a", 1)]), vec![]),
                    (replica("a", 1), watched(1, &[]), vec![Resolve]),
                    (replica("a", 1), resolved(&[]), vec![Claim(2)]),
                    (
                        replica("a", 1),
                        Event::ClaimAccepted(2),
                        vec![BecomePrimary(2)],
                    ),
                ],
            ),
            (
                "a late watch event alone never promotes: the fresh Resolve shows the primary",
                vec![
                    (replica("a", 1), watched(1, &[("a", 1)]), vec![]),
                    (replica("a", 1), watched(1, &[]), vec![Resolve]),
                    (replica("a", 1), resolved(&[("a", 1)]), vec![]),
                    (replica("a", 1), Event::RetryDue, vec![Resolve]),
                ],
            ),
            (
                "one Resolve at a time, however many empty sets arrive",
                vec![
                    (replica("a", 1), watched(1, &[("a", 1)]), vec![]),
                    (replica("a", 1), watched(1, &[]), vec![Resolve]),
                    (replica("a", 1), watched(1, &[]), vec![]),
                    (replica("a", 1), resolved(&[]), vec![Claim(2)]),
                    (replica("a", 1), watched(1, &[]), vec![]),
                ],
            ),
            (
                "a refused claim: withdraw it, stay the replica, look again later (no error loop)",
                vec![
                    (replica("a", 1), watched(1, &[("a", 1)]), vec![]),
                    (replica("a", 1), watched(1, &[]), vec![Resolve]),
                    (replica("a", 1), resolved(&[]), vec![Claim(2)]),
                    (
                        replica("a", 1),
                        Event::ClaimRefused(2),
                        vec![WithdrawClaim, RetryLater],
                    ),
                    (replica("a", 1), Event::ClaimRefused(2), vec![]),
                    (replica("a", 1), Event::RetryDue, vec![Resolve]),
                    (replica("a", 1), resolved(&[("a", 1)]), vec![]),
                    (replica("a", 1), watched(1, &[("a", 1)]), vec![]),
                    (replica("a", 1), watched(1, &[]), vec![Resolve]),
                    (replica("a", 1), resolved(&[]), vec![Claim(2)]),
                ],
            ),
            (
                "refused while no primary is visible: the next claim is above the refused term",
                vec![
                    (replica("a", 1), watched(1, &[("a", 1)]), vec![]),
                    (replica("a", 1), watched(1, &[]), vec![Resolve]),
                    (replica("a", 1), resolved(&[]), vec![Claim(2)]),
                    (
                        replica("a", 1),
                        Event::ClaimRefused(2),
                        vec![WithdrawClaim, RetryLater],
                    ),
                    (replica("a", 1), Event::RetryDue, vec![Resolve]),
                    (replica("a", 1), resolved(&[]), vec![Claim(3)]),
                    (
                        replica("a", 1),
                        Event::ClaimAccepted(3),
                        vec![BecomePrimary(3)],
                    ),
                ],
            ),
            (
                "a registry that keeps refusing: claims alternate, they never climb",
                vec![
                    (replica("a", 1), watched(1, &[("a", 1)]), vec![]),
                    (replica("a", 1), watched(1, &[]), vec![Resolve]),
                    (replica("a", 1), resolved(&[]), vec![Claim(2)]),
                    (
                        replica("a", 1),
                        Event::ClaimRefused(2),
                        vec![WithdrawClaim, RetryLater],
                    ),
                    (replica("a", 1), Event::RetryDue, vec![Resolve]),
                    (replica("a", 1), resolved(&[]), vec![Claim(3)]),
                    (
                        replica("a", 1),
                        Event::ClaimRefused(3),
                        vec![WithdrawClaim, RetryLater],
                    ),
                    (replica("a", 1), Event::RetryDue, vec![Resolve]),
                    (replica("a", 1), resolved(&[]), vec![Claim(2)]),
                ],
            ),
            (
                "a failed lookup retries later, without promoting",
                vec![
                    (replica("a", 1), watched(1, &[("a", 1)]), vec![]),
                    (replica("a", 1), watched(1, &[]), vec![Resolve]),
                    (replica("a", 1), Event::ResolveFailed, vec![RetryLater]),
                    (replica("a", 1), Event::RetryDue, vec![Resolve]),
                ],
            ),
            (
                "no primary ever seen (replica started first): never promotes",
                vec![
                    (replica("a", 1), watched(1, &[]), vec![]),
                    (replica("a", 1), Event::RetryDue, vec![]),
                ],
            ),
            (
                "a restarted registry's first, primary-less set is not the primary's death",
                vec![
                    (replica("a", 1), watched(1, &[("a", 1)]), vec![]),
                    (replica("a", 1), watched(2, &[]), vec![]),
                    (replica("a", 1), watched(2, &[("a", 1)]), vec![]),
                    (replica("a", 1), watched(2, &[]), vec![Resolve]),
                ],
            ),
            (
                "the double stop: both shops came back, the set stays empty past the grace: claim",
                vec![
                    (Role::Fenced { term: 2 }, watched(1, &[]), vec![]),
                    (Role::Fenced { term: 2 }, Event::RetryDue, vec![]),
                    (Role::Fenced { term: 2 }, grace(1), vec![Resolve]),
                    (Role::Fenced { term: 2 }, resolved(&[]), vec![Claim(3)]),
                    (
                        Role::Fenced { term: 2 },
                        Event::ClaimAccepted(3),
                        vec![BecomePrimary(3)],
                    ),
                ],
            ),
            (
                "a replica told to follow a stale primary: claims past the grace too",
                vec![
                    (replica("a", 2), watched(1, &[]), vec![]),
                    (replica("a", 2), grace(1), vec![Resolve]),
                    (replica("a", 2), resolved(&[]), vec![Claim(3)]),
                ],
            ),
            (
                "the stale shop's claim is refused (behind the newest log): it keeps asking",
                vec![
                    (Role::Fenced { term: 1 }, watched(1, &[]), vec![]),
                    (Role::Fenced { term: 1 }, grace(1), vec![Resolve]),
                    (Role::Fenced { term: 1 }, resolved(&[]), vec![Claim(2)]),
                    (
                        Role::Fenced { term: 1 },
                        Event::ClaimRefused(2),
                        vec![WithdrawClaim, RetryLater],
                    ),
                    (Role::Fenced { term: 1 }, Event::RetryDue, vec![Resolve]),
                    (Role::Fenced { term: 1 }, resolved(&[]), vec![Claim(3)]),
                    (
                        Role::Fenced { term: 1 },
                        Event::ClaimRefused(3),
                        vec![WithdrawClaim, RetryLater],
                    ),
                    (
                        Role::Fenced { term: 1 },
                        watched(1, &[("b", 3)]),
                        vec![follow("b", 3)],
                    ),
                ],
            ),
            (
                "a held claim refused at start-up: the grace still lets it ask again",
                vec![
                    (Role::Primary { term: 1 }, watched(1, &[(ME, 1)]), vec![]),
                    (
                        Role::Primary { term: 1 },
                        Event::ClaimRefused(1),
                        vec![StepDown],
                    ),
                    (Role::Fenced { term: 1 }, watched(1, &[]), vec![]),
                    (Role::Fenced { term: 1 }, grace(1), vec![Resolve]),
                    (Role::Fenced { term: 1 }, resolved(&[]), vec![Claim(2)]),
                ],
            ),
            (
                "the grace of an older stream says nothing about the current one",
                vec![
                    (replica("a", 1), watched(1, &[]), vec![]),
                    (replica("a", 1), watched(2, &[]), vec![]),
                    (replica("a", 1), grace(1), vec![]),
                    (replica("a", 1), grace(2), vec![Resolve]),
                ],
            ),
            (
                "past the grace, a primary that appears is followed, never claimed over",
                vec![
                    (replica("a", 1), watched(1, &[]), vec![]),
                    (replica("a", 1), grace(1), vec![Resolve]),
                    (replica("a", 1), resolved(&[("b", 2)]), vec![follow("b", 2)]),
                    (replica("b", 2), watched(1, &[("b", 2)]), vec![]),
                    (replica("b", 2), watched(1, &[]), vec![Resolve]),
                ],
            ),
            (
                "a brand-new shop (term 0) never claims on an empty set, past the grace or not",
                vec![
                    (replica("a", 0), watched(1, &[]), vec![]),
                    (replica("a", 0), grace(1), vec![]),
                    (Role::Fenced { term: 0 }, Event::RetryDue, vec![]),
                ],
            ),
            (
                "a primary ignores the grace",
                vec![
                    (Role::Primary { term: 2 }, watched(1, &[]), vec![]),
                    (Role::Primary { term: 2 }, grace(1), vec![]),
                ],
            ),
            (
                "a newer primary: the primary steps down and follows it",
                vec![(
                    Role::Primary { term: 1 },
                    watched(1, &[(ME, 1), ("b", 2)]),
                    vec![follow("b", 2)],
                )],
            ),
            (
                "another primary at our own term: our claim lost, follow the winner",
                vec![(
                    Role::Primary { term: 2 },
                    watched(1, &[("b", 2)]),
                    vec![follow("b", 2)],
                )],
            ),
            (
                "an older primary is not followed; our own registration is no rival",
                vec![
                    (Role::Primary { term: 3 }, watched(1, &[("b", 2)]), vec![]),
                    (Role::Primary { term: 3 }, watched(1, &[(ME, 3)]), vec![]),
                    (Role::Primary { term: 3 }, watched(1, &[]), vec![]),
                ],
            ),
            (
                "a replica moves to a newer primary, not to the one it follows",
                vec![
                    (replica("a", 1), watched(1, &[("a", 1)]), vec![]),
                    (
                        replica("a", 1),
                        watched(1, &[("a", 1), ("b", 2)]),
                        vec![follow("b", 2)],
                    ),
                    (replica("b", 2), watched(1, &[("a", 1), ("b", 2)]), vec![]),
                ],
            ),
            (
                "a primary appearing while we claim: withdraw and follow it",
                vec![
                    (replica("a", 1), watched(1, &[("a", 1)]), vec![]),
                    (replica("a", 1), watched(1, &[]), vec![Resolve]),
                    (replica("a", 1), resolved(&[]), vec![Claim(2)]),
                    (
                        replica("a", 1),
                        watched(1, &[("b", 2)]),
                        vec![WithdrawClaim, follow("b", 2)],
                    ),
                    (replica("b", 2), Event::ClaimAccepted(2), vec![]),
                ],
            ),
            (
                "the Resolve shows a newer primary: follow it instead of claiming",
                vec![
                    (replica("a", 1), watched(1, &[("a", 1)]), vec![]),
                    (replica("a", 1), watched(1, &[]), vec![Resolve]),
                    (replica("a", 1), resolved(&[("b", 2)]), vec![follow("b", 2)]),
                ],
            ),
            (
                "our held claim refused: step down, follow a rival the set shows",
                vec![
                    (Role::Primary { term: 2 }, watched(1, &[(ME, 2)]), vec![]),
                    (
                        Role::Primary { term: 2 },
                        Event::ClaimRefused(2),
                        vec![StepDown],
                    ),
                    (
                        Role::Fenced { term: 2 },
                        watched(1, &[("b", 3)]),
                        vec![follow("b", 3)],
                    ),
                ],
            ),
            (
                "held claim refused: no promotion from the set it lost on, only from a newer one",
                vec![
                    (
                        Role::Primary { term: 1 },
                        watched(1, &[("x", 1)]),
                        vec![follow("x", 1)],
                    ),
                    (replica("x", 1), watched(1, &[]), vec![Resolve]),
                    (replica("x", 1), resolved(&[]), vec![Claim(2)]),
                    (
                        replica("x", 1),
                        Event::ClaimAccepted(2),
                        vec![BecomePrimary(2)],
                    ),
                    (
                        Role::Primary { term: 2 },
                        Event::ClaimRefused(2),
                        vec![StepDown],
                    ),
                    (Role::Fenced { term: 2 }, Event::RetryDue, vec![]),
                    (Role::Fenced { term: 2 }, watched(1, &[]), vec![Resolve]),
                    (Role::Fenced { term: 2 }, resolved(&[]), vec![Claim(3)]),
                ],
            ),
            (
                "a refusal of a claim we do not hold changes nothing",
                vec![
                    (Role::Primary { term: 3 }, Event::ClaimRefused(2), vec![]),
                    (replica("a", 1), Event::ClaimRefused(2), vec![]),
                    (replica("a", 1), Event::ClaimAccepted(2), vec![]),
                ],
            ),
            (
                "a fenced process with a primary visible follows it, even at its own term",
                vec![(
                    Role::Fenced { term: 2 },
                    watched(1, &[("b", 2)]),
                    vec![follow("b", 2)],
                )],
            ),
            (
                "a primary never resolves or claims on an empty set",
                vec![
                    (Role::Primary { term: 1 }, watched(1, &[("b", 0)]), vec![]),
                    (Role::Primary { term: 1 }, watched(1, &[]), vec![]),
                    (Role::Primary { term: 1 }, resolved(&[]), vec![]),
                ],
            ),
            (
                "the largest term cannot be claimed past",
                vec![
                    (
                        replica("a", u64::MAX),
                        watched(1, &[("a", u64::MAX)]),
                        vec![],
                    ),
                    (replica("a", u64::MAX), watched(1, &[]), vec![Resolve]),
                    (replica("a", u64::MAX), resolved(&[]), vec![]),
                ],
            ),
        ];
        for (label, steps) in cases {
            let mut core = Failover::new(ME);
            for (n, (role, event, want)) in steps.into_iter().enumerate() {
                let got = core.step(&role, event.clone());
                assert_eq!(got, want, "{label}, step {n}: {role:?} {event:?}");
            }
        }
    }
}

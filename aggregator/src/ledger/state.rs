//! The state the events build: an [`Account`] per node and the chain's [`Head`] (tip and
//! running [`Totals`]), with the one set of rules that moves them.
//!
//! [`Head::apply`] and [`Account::apply`] are the ledger's state transitions. The write
//! path ([`super::Ledger`]'s `stake`, `unstake`, `score`) builds each event from the
//! state and applies it through them before anything is stored; `verify` replays the
//! stored log through the very same functions from an empty state. So a rule (a balance
//! never goes negative, eject/rejoin alternate, totals stay within [`MAX_SUPPLY`], …) is
//! written once, and a ledger the write path accepts is one `verify` accepts.
//!
//! The rules checked here are the ones an event must satisfy whatever the scoring knobs;
//! *when* the write path ejects a node or how much it rewards is policy
//! ([`crate::policy`]) and not re-derived by a replay.

use serde::{Deserialize, Serialize};

use super::event::{event_hash, Event, EventKind, GENESIS_HASH};
use crate::policy::{update_trust, NodeId, Stake, Trust, INITIAL_TRUST};

/// Trust is persisted as `round(t · TRUST_SCALE)`: exact integers in the ledger.
pub const TRUST_SCALE: u64 = 1_000_000_000;
/// Ceiling of every balance, running total and of the supply `Σ account.stake`: the
/// wire carries them as `uint64`, so nothing above this may ever be stored.
pub const MAX_SUPPLY: Stake = u64::MAX;

/// Why an event cannot follow the state it is applied to: the problem `verify` names
/// for a stored event, and a refusal (or a bug) on the write path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The event is not the next one of the chain.
    #[error("expected event {expected}, found seq {found}")]
    OutOfOrder {
        /// The seq that should come next.
        expected: u64,
        /// The seq the event carries.
        found: u64,
    },
    /// `prev_hash` is not the previous event's hash.
    #[error("prev_hash does not link to the previous event")]
    BrokenLink,
    /// `hash` is not the hash of the event's fields.
    #[error("hash does not match the event's contents")]
    HashMismatch,
    /// A running total, `minted` or the supply would leave `0..=MAX_SUPPLY`.
    #[error("totals out of range: {0}")]
    Totals(String),
    /// Only a `stake` (or a legacy `grant`) opens an account.
    #[error("{} event before the account was opened", .0.as_str())]
    NotOpened(EventKind),
    /// A `grant` is only ever an account's first event.
    #[error("{} event for an account already opened", .0.as_str())]
    AlreadyOpened(EventKind),
    /// The balance would pass [`MAX_SUPPLY`].
    #[error("balance overflow")]
    BalanceOverflow {
        /// Balance before.
        stake: Stake,
        /// Amount added.
        amount: Stake,
    },
    /// The balance would go below zero.
    #[error("balance would go negative")]
    Negative {
        /// Balance before.
        stake: Stake,
        /// Amount taken.
        amount: Stake,
    },
    /// `eject` of a node already ejected.
    #[error("eject of an ejected node")]
    AlreadyEjected,
    /// `rejoin` of a node that is not ejected.
    #[error("rejoin of a node that is not ejected")]
    NotEjected,
    /// The recorded balance is not what the amount gives.
    #[error("stake_after {recorded} but replay gives {replayed}")]
    StakeAfter {
        /// `stake_after` as recorded.
        recorded: Stake,
        /// The balance the event's amount gives.
        replayed: Stake,
    },
    /// Trust is stored in `0..=TRUST_SCALE`.
    #[error("trust above 1")]
    TrustAboveOne,
}

/// A node's balance sheet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The node.
    pub node_id: NodeId,
    /// Current stake in tokens.
    pub stake: Stake,
    /// Trust in parts per billion (see [`Account::trust`]).
    pub trust_ppb: u64,
    /// Out of the weighted consensus until it stakes back above the minimum.
    pub ejected: bool,
    /// Scored answers that were right.
    pub right: u64,
    /// Scored answers that were wrong.
    pub wrong: u64,
    /// Seq of the last event that touched this account.
    pub last_seq: u64,
}

impl Account {
    /// Trust as a float in `[0, 1]`.
    pub fn trust(&self) -> Trust {
        self.trust_ppb as f64 / TRUST_SCALE as f64
    }

    /// The state of an account before its first event: nothing staked, trust 0.5. Not
    /// stored until an event (the first `stake`) is applied to it.
    pub fn unopened(node_id: &str) -> Self {
        Self {
            node_id: node_id.to_string(),
            stake: 0,
            trust_ppb: trust_to_ppb(INITIAL_TRUST),
            ejected: false,
            right: 0,
            wrong: 0,
            last_seq: 0,
        }
    }

    /// Whether any event was applied to this account.
    pub fn is_open(&self) -> bool {
        self.last_seq != 0
    }

    /// The balance after an event of `kind` moving `amount`.
    pub fn balance_after(&self, kind: EventKind, amount: Stake) -> Result<Stake, Violation> {
        let stake = self.stake;
        match kind {
            EventKind::Grant | EventKind::Stake | EventKind::Reward => stake
                .checked_add(amount)
                .ok_or(Violation::BalanceOverflow { stake, amount }),
            EventKind::Unstake | EventKind::Slash => stake
                .checked_sub(amount)
                .ok_or(Violation::Negative { stake, amount }),
            EventKind::Eject if self.ejected => Err(Violation::AlreadyEjected),
            EventKind::Rejoin if !self.ejected => Err(Violation::NotEjected),
            EventKind::Eject | EventKind::Rejoin => Ok(stake),
        }
    }

    /// Applies `e` (an event of this account) or leaves the account unchanged and says
    /// why it cannot follow: it must open the account if nothing did yet, its balance
    /// must follow from its amount, and its trust must be at most 1.
    pub fn apply(&mut self, e: &Event) -> Result<(), Violation> {
        let opens = matches!(e.kind, EventKind::Grant | EventKind::Stake);
        match (self.is_open(), e.kind) {
            (false, kind) if !opens => return Err(Violation::NotOpened(kind)),
            (true, EventKind::Grant) => return Err(Violation::AlreadyOpened(EventKind::Grant)),
            _ => {}
        }
        let replayed = self.balance_after(e.kind, e.amount)?;
        if replayed != e.stake_after {
            return Err(Violation::StakeAfter {
                recorded: e.stake_after,
                replayed,
            });
        }
        if e.trust_after_ppb > TRUST_SCALE {
            return Err(Violation::TrustAboveOne);
        }
        self.stake = replayed;
        self.trust_ppb = e.trust_after_ppb;
        self.last_seq = e.seq;
        match e.kind {
            EventKind::Eject => self.ejected = true,
            EventKind::Rejoin => self.ejected = false,
            EventKind::Reward => self.right += 1,
            EventKind::Slash => self.wrong += 1,
            EventKind::Grant | EventKind::Stake | EventKind::Unstake => {}
        }
        Ok(())
    }
}

/// Converts a float trust to the stored integer form.
pub fn trust_to_ppb(t: Trust) -> u64 {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    // In [0, 1e9]: the cast cannot truncate.
    (t * TRUST_SCALE as f64).round() as u64
}

/// The EMA step on the stored integer: [`update_trust`] rounded to ppb, but always at
/// least one ppb in the direction of the move, so a long run of wrong (right) answers
/// reaches exactly 0 (1) instead of stalling on a rounding fixpoint.
pub fn next_trust_ppb(trust_ppb: u64, correct: bool, alpha: f64) -> u64 {
    let old = trust_ppb.min(TRUST_SCALE);
    let new = trust_to_ppb(update_trust(
        old as f64 / TRUST_SCALE as f64,
        correct,
        alpha,
    ));
    match (correct, new == old) {
        (true, true) if old < TRUST_SCALE => old + 1,
        (false, true) if old > 0 => old - 1,
        _ => new,
    }
}

/// Running totals, kept in the head so `verify` can check them against a replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Σ grant (legacy ledgers only; 0 in a ledger opened since grants ended).
    #[serde(default)]
    pub granted: u64,
    /// Σ reward.
    pub rewarded: u64,
    /// Σ slash.
    pub burned: u64,
    /// Σ stake.
    pub deposited: u64,
    /// Σ unstake.
    pub withdrawn: u64,
}

impl Totals {
    /// `granted + rewarded`.
    pub fn minted(&self) -> u128 {
        u128::from(self.granted) + u128::from(self.rewarded)
    }

    /// `minted + deposited − withdrawn − burned`: what Σ stakes must equal.
    pub fn expected_stake_sum(&self) -> i128 {
        self.minted() as i128 + i128::from(self.deposited)
            - i128::from(self.withdrawn)
            - i128::from(self.burned)
    }

    /// The supply `Σ account.stake` these totals imply; `None` outside `0..=u64::MAX`
    /// (never for totals the ledger built: every addition is range-checked).
    pub fn supply(&self) -> Option<Stake> {
        u64::try_from(self.expected_stake_sum()).ok()
    }

    /// Tokens that may still be minted without any total or the supply passing
    /// [`MAX_SUPPLY`]: what a reward is capped at.
    pub fn mint_headroom(&self) -> Stake {
        let minted = u64::try_from(self.minted()).unwrap_or(MAX_SUPPLY);
        let supply = self.supply().unwrap_or(MAX_SUPPLY);
        (MAX_SUPPLY - self.rewarded)
            .min(MAX_SUPPLY.saturating_sub(minted))
            .min(MAX_SUPPLY.saturating_sub(supply))
    }

    /// Adds one event's amount, refusing (and leaving `self` unchanged) if a running
    /// total, `minted` or the supply would leave `0..=MAX_SUPPLY`.
    fn add(&mut self, kind: EventKind, amount: u64) -> Result<(), Violation> {
        let mut next = *self;
        let (slot, name) = match kind {
            EventKind::Grant => (&mut next.granted, "granted"),
            EventKind::Reward => (&mut next.rewarded, "rewarded"),
            EventKind::Slash => (&mut next.burned, "burned"),
            EventKind::Stake => (&mut next.deposited, "deposited"),
            EventKind::Unstake => (&mut next.withdrawn, "withdrawn"),
            EventKind::Eject | EventKind::Rejoin => return Ok(()),
        };
        *slot = slot.checked_add(amount).ok_or_else(|| {
            Violation::Totals(format!(
                "total {name} {slot} + {amount} would exceed {MAX_SUPPLY}"
            ))
        })?;
        if next.minted() > u128::from(MAX_SUPPLY) {
            return Err(Violation::Totals(format!(
                "total minted {} + {amount} would exceed {MAX_SUPPLY}",
                self.minted()
            )));
        }
        if next.supply().is_none() {
            return Err(Violation::Totals(format!(
                "{} {amount} would take the total stake from {} out of 0..={MAX_SUPPLY}",
                kind.as_str(),
                self.expected_stake_sum()
            )));
        }
        *self = next;
        Ok(())
    }
}

/// The tip of the chain plus totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Seq of the last event (0 when empty).
    pub seq: u64,
    /// Hash of the last event ([`GENESIS_HASH`] when empty).
    pub hash: String,
    /// Running totals.
    pub totals: Totals,
}

impl Default for Head {
    fn default() -> Self {
        Self {
            seq: 0,
            hash: GENESIS_HASH.to_string(),
            totals: Totals::default(),
        }
    }
}

impl Head {
    /// Appends `e` to the chain or leaves the head unchanged and says why it cannot
    /// follow: it must be the next seq, link to the current hash, hash to its own `hash`,
    /// and keep every total within range.
    pub fn apply(&mut self, e: &Event) -> Result<(), Violation> {
        let expected = self.seq + 1;
        if e.seq != expected {
            return Err(Violation::OutOfOrder {
                expected,
                found: e.seq,
            });
        }
        if e.prev_hash != self.hash {
            return Err(Violation::BrokenLink);
        }
        if event_hash(e) != e.hash {
            return Err(Violation::HashMismatch);
        }
        self.totals.add(e.kind, e.amount)?;
        self.seq = e.seq;
        self.hash.clone_from(&e.hash);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, amount: Stake, stake_after: Stake) -> Event {
        Event {
            seq: 1,
            kind,
            node_id: "n".into(),
            amount,
            stake_after,
            trust_after_ppb: TRUST_SCALE / 2,
            request_id: None,
            at_ms: 0,
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        }
    }

    /// Each rule of `Account::apply`, table-driven: (opened with, event, expected result).
    #[test]
    fn account_rules() {
        use EventKind::{Eject, Grant, Rejoin, Reward, Slash, Unstake};
        let cases: Vec<(Option<Stake>, Event, Result<Stake, Violation>)> = vec![
            (None, event(EventKind::Stake, 5, 5), Ok(5)),
            (None, event(Grant, 5, 5), Ok(5)),
            (None, event(Reward, 5, 5), Err(Violation::NotOpened(Reward))),
            (
                Some(5),
                event(Grant, 5, 10),
                Err(Violation::AlreadyOpened(Grant)),
            ),
            (Some(5), event(Unstake, 5, 0), Ok(0)),
            (
                Some(5),
                event(Slash, 6, 0),
                Err(Violation::Negative {
                    stake: 5,
                    amount: 6,
                }),
            ),
            (
                Some(u64::MAX),
                event(Reward, 1, 0),
                Err(Violation::BalanceOverflow {
                    stake: u64::MAX,
                    amount: 1,
                }),
            ),
            (
                Some(5),
                event(EventKind::Stake, 1, 7),
                Err(Violation::StakeAfter {
                    recorded: 7,
                    replayed: 6,
                }),
            ),
            (Some(5), event(Rejoin, 0, 5), Err(Violation::NotEjected)),
            (Some(5), event(Eject, 0, 5), Ok(5)),
        ];
        for (opened, e, want) in cases {
            let mut a = Account::unopened("n");
            if let Some(stake) = opened {
                a.stake = stake;
                a.last_seq = 1;
            }
            let before = a.clone();
            let got = a.apply(&e).map(|()| a.stake);
            assert_eq!(got, want, "{opened:?} {e:?}");
            if got.is_err() {
                assert_eq!(a, before, "a refused event changes nothing");
            }
        }
        let mut a = Account::unopened("n");
        a.apply(&event(EventKind::Stake, 5, 5)).expect("open");
        let mut trust = event(EventKind::Unstake, 1, 4);
        trust.trust_after_ppb = TRUST_SCALE + 1;
        assert_eq!(a.apply(&trust), Err(Violation::TrustAboveOne));
    }

    /// The head takes exactly the next, linked, correctly hashed event.
    #[test]
    fn head_rules() {
        let mut e = event(EventKind::Stake, 5, 5);
        e.hash = event_hash(&e);
        let mut wrong_seq = e.clone();
        wrong_seq.seq = 2;
        let mut wrong_link = e.clone();
        wrong_link.prev_hash = "x".into();
        let mut wrong_hash = e.clone();
        wrong_hash.amount = 6;
        for (bad, want) in [
            (
                wrong_seq,
                Violation::OutOfOrder {
                    expected: 1,
                    found: 2,
                },
            ),
            (wrong_link, Violation::BrokenLink),
            (wrong_hash, Violation::HashMismatch),
        ] {
            let mut head = Head::default();
            assert_eq!(head.apply(&bad), Err(want));
            assert_eq!(head, Head::default());
        }
        let mut head = Head::default();
        head.apply(&e).expect("next event");
        assert_eq!((head.seq, head.totals.deposited), (1, 5));
        assert_eq!(head.hash, e.hash);
    }
}

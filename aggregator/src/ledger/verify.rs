//! [`Ledger::verify`]: replays the stored log from an empty state through the same
//! [`Head::apply`] and [`Account::apply`] the write path uses, then compares the result
//! with what is stored.
//!
//! Checked, in this order, and the first failure reported: every event decodes, is
//! stored under its own seq and follows the chain and the rules ([`Violation`]); the
//! stored head is the replayed tip and its totals the replayed totals; every account
//! record decodes and equals its replayed state; no events belong to a missing account;
//! `Σ account.stake = minted + deposited − withdrawn − burned`. A storage error while
//! reading is an `Err` of `verify`, not an inconsistency.

use std::collections::{BTreeMap, HashSet};

use super::error::LedgerError;
use super::event::Event;
use super::record;
use super::state::{Account, Head, Totals, Violation};
use super::store::{seq_from, Ledger};
use crate::policy::{NodeId, Stake};

/// Result of [`Ledger::verify`].
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyReport {
    /// Events read.
    pub events_checked: u64,
    /// Accounts read.
    pub accounts_checked: u64,
    /// The stored head.
    pub head: Head,
    /// Totals recomputed from the events.
    pub replayed: Totals,
    /// Σ account stakes as stored.
    pub stake_sum: u128,
    /// Σ balances replayed from the events.
    pub replayed_stake_sum: u128,
    /// The first problem found; `None` means the ledger is consistent.
    pub first_inconsistency: Option<Inconsistency>,
}

impl VerifyReport {
    /// True when no inconsistency was found.
    pub fn ok(&self) -> bool {
        self.first_inconsistency.is_none()
    }
}

/// Where the ledger stopped adding up, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}")]
pub struct Inconsistency {
    /// The offending event, if the problem is in the log.
    pub seq: Option<u64>,
    /// The offending account, if any.
    pub node_id: Option<NodeId>,
    /// What is wrong.
    pub problem: Problem,
}

/// What is wrong with the entry an [`Inconsistency`] names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A stored record does not decode.
    #[error("{0}")]
    Undecodable(String),
    /// An event stored under another seq's key.
    #[error("expected event {expected}, found seq {found} under key {key}")]
    Misfiled {
        /// The seq that should come next.
        expected: u64,
        /// The seq the event carries.
        found: u64,
        /// The key it is stored under.
        key: u64,
    },
    /// An event that cannot follow the replayed state.
    #[error(transparent)]
    Event(#[from] Violation),
    /// The stored head is not the tip of the log.
    #[error("head says seq {head} but the log ends at {last}")]
    Head {
        /// Seq in the stored head.
        head: u64,
        /// Seq of the last event.
        last: u64,
    },
    /// The stored totals are not the replayed ones.
    #[error("stored totals {stored:?} differ from replayed {replayed:?}")]
    Totals {
        /// As stored in the head.
        stored: Box<Totals>,
        /// As replayed.
        replayed: Box<Totals>,
    },
    /// An account record stored under another node's key.
    #[error("record names {0:?}")]
    MisfiledAccount(NodeId),
    /// An account record without any event.
    #[error("account has no events")]
    NoEvents,
    /// An account's stored balance is not the replayed one.
    #[error("stake {stored} but events give {replayed}")]
    Balance {
        /// As stored.
        stored: Stake,
        /// As replayed.
        replayed: Stake,
    },
    /// Trust, the ejected flag, the answer counts or `last_seq` differ.
    #[error("trust, ejected flag, answer counts or last_seq differ from the events")]
    Record,
    /// Events name an account that is not stored.
    #[error("events for a missing account")]
    MissingAccount,
    /// The stored balances do not add up to the totals.
    #[error(
        "Σ stakes {stake_sum} ≠ minted {} + deposited {} − withdrawn {} − burned {}",
        .totals.minted(), .totals.deposited, .totals.withdrawn, .totals.burned
    )]
    Supply {
        /// Σ stored balances.
        stake_sum: u128,
        /// The stored totals.
        totals: Box<Totals>,
    },
}

/// Why the replay stopped: storage failed, or the ledger is inconsistent.
enum Stop {
    Storage(LedgerError),
    Found(Inconsistency),
}

impl From<LedgerError> for Stop {
    fn from(e: LedgerError) -> Self {
        Stop::Storage(e)
    }
}

impl From<sled::Error> for Stop {
    fn from(e: sled::Error) -> Self {
        Stop::Storage(e.into())
    }
}

impl From<Inconsistency> for Stop {
    fn from(i: Inconsistency) -> Self {
        Stop::Found(i)
    }
}

fn at(seq: Option<u64>, node_id: Option<&str>, problem: impl Into<Problem>) -> Inconsistency {
    Inconsistency {
        seq,
        node_id: node_id.map(str::to_string),
        problem: problem.into(),
    }
}

/// The state rebuilt from the log so far.
#[derive(Default)]
struct Replay {
    head: Head,
    accounts: BTreeMap<NodeId, Account>,
    events_checked: u64,
}

impl Replay {
    /// Applies the event stored under `key`.
    fn apply(&mut self, key: u64, e: &Event) -> Result<(), Inconsistency> {
        let node = Some(e.node_id.as_str());
        if e.seq != key {
            let expected = self.head.seq + 1;
            let problem = Problem::Misfiled {
                expected,
                found: e.seq,
                key,
            };
            return Err(at(Some(key), node, problem));
        }
        self.head.apply(e).map_err(|v| at(Some(e.seq), node, v))?;
        self.accounts
            .entry(e.node_id.clone())
            .or_insert_with(|| Account::unopened(&e.node_id))
            .apply(e)
            .map_err(|v| at(Some(e.seq), node, v))
    }

    /// Compares a stored account with its replayed state.
    fn check_account(&self, key: &str, stored: &Account) -> Result<(), Inconsistency> {
        let fail = |p| Err(at(None, Some(key), p));
        if stored.node_id != key {
            return fail(Problem::MisfiledAccount(stored.node_id.clone()));
        }
        match self.accounts.get(key) {
            None => fail(Problem::NoEvents),
            Some(r) if r.stake != stored.stake => fail(Problem::Balance {
                stored: stored.stake,
                replayed: r.stake,
            }),
            Some(r) if r != stored => fail(Problem::Record),
            Some(_) => Ok(()),
        }
    }

    /// Replays the log and checks it against the stored head and accounts.
    fn run(
        &mut self,
        ledger: &Ledger,
        head: &Head,
        accounts: &[(String, Result<Account, LedgerError>)],
    ) -> Result<(), Stop> {
        for r in ledger.events.iter() {
            let (k, v) = r?;
            self.events_checked += 1;
            let key = seq_from(&k);
            let e = record::decode_event(&v)
                .map_err(|err| at(Some(key), None, Problem::Undecodable(err.to_string())))?;
            self.apply(key, &e)?;
        }
        let last = self.head.seq;
        if head.seq != last || head.hash != self.head.hash {
            Err(at(
                Some(head.seq),
                None,
                Problem::Head {
                    head: head.seq,
                    last,
                },
            ))?;
        }
        if head.totals != self.head.totals {
            let problem = Problem::Totals {
                stored: Box::new(head.totals),
                replayed: Box::new(self.head.totals),
            };
            Err(at(None, None, problem))?;
        }
        for (key, account) in accounts {
            let account = account
                .as_ref()
                .map_err(|err| at(None, Some(key), Problem::Undecodable(err.to_string())))?;
            self.check_account(key, account)?;
        }
        let stored: HashSet<&str> = accounts.iter().map(|(k, _)| k.as_str()).collect();
        if let Some(id) = self
            .accounts
            .keys()
            .find(|id| !stored.contains(id.as_str()))
        {
            Err(at(None, Some(id), Problem::MissingAccount))?;
        }
        let stake_sum = stake_sum(accounts);
        if stake_sum as i128 != head.totals.expected_stake_sum() {
            let problem = Problem::Supply {
                stake_sum,
                totals: Box::new(head.totals),
            };
            Err(at(None, None, problem))?;
        }
        Ok(())
    }
}

/// Σ balances of the accounts that decode.
fn stake_sum(accounts: &[(String, Result<Account, LedgerError>)]) -> u128 {
    accounts
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok())
        .map(|a| u128::from(a.stake))
        .sum()
}

impl Ledger {
    /// Recomputes the chain, the balances and the totals from the events; see the module
    /// docs. `Err` only when the storage cannot be read.
    pub fn verify(&self) -> Result<VerifyReport, LedgerError> {
        let head = self.head()?;
        let accounts = self
            .accounts
            .iter()
            .map(|r| {
                let (k, v) = r?;
                let key = String::from_utf8_lossy(&k).into_owned();
                Ok((key, record::decode_account(&v)))
            })
            .collect::<Result<Vec<_>, LedgerError>>()?;
        let mut replay = Replay::default();
        let first_inconsistency = match replay.run(self, &head, &accounts) {
            Ok(()) => None,
            Err(Stop::Found(i)) => Some(i),
            Err(Stop::Storage(e)) => return Err(e),
        };
        Ok(VerifyReport {
            events_checked: replay.events_checked,
            accounts_checked: accounts.len() as u64,
            replayed: replay.head.totals,
            stake_sum: stake_sum(&accounts),
            replayed_stake_sum: replay.accounts.values().map(|a| u128::from(a.stake)).sum(),
            head,
            first_inconsistency,
        })
    }
}

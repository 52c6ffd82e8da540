//! The invariants, checked the way an outside checker would: only from what clients were
//! told during the run ([`History`]) and what the cluster shows afterwards
//! ([`Observations`]), never from inside a process. Pure functions, so recorded histories
//! test them.
//!
//! 0. **A primary recovers**: after the run (every fault undone) a shop is the settled
//!    primary within `observe::SETTLE_WAIT`; without one nothing can be read, and the
//!    checks that read are skipped.
//! 1. **Acknowledged writes survive** every failover. Sync: zero loss. Async: the writes
//!    of term T lost are at most the lag the primary of T last reported
//!    (`GetReplicationStatus.lag_entries`) plus the writes it acknowledged after that
//!    report (the same bound `tests/shop_failover.rs` uses).
//! 2. **Replicated means replicated**: an ack whose `WriteInfo.replicated` is true claims
//!    the replica durably held its LSN before the reply, and a primary's
//!    `replica_acked_lsn` only grows within its reign. So a status read *sent after* that
//!    ack, from the same primary in the same term, with no kill, stop or start from a
//!    second before the write was sent until that read (a new process forgets its acks),
//!    reporting `replica_acked_lsn` below the ack's LSN proves the claim false — whether
//!    or not a failover then happens to lose the write. (A replica frozen while the
//!    primary keeps "replicating" into its socket buffer loses nothing on failover, yet
//!    the claim was a lie.)
//! 3. **Orders exactly once**: no idempotency key has two orders, and replaying every
//!    acknowledged key returns the acknowledged order.
//! 4. **Stock conserved**: initial stock = final stock + units in live orders.
//! 5. **One primary per term**: all acks of a term come from one shop, no ack of an older
//!    term arrives after one of a newer term, and the registry never listed two primaries
//!    with the same term.
//! 6. **The ledger verifies** (`Staking.VerifyLedger`).
//! 7. **Liars lose stake**: a node turned liar that answered wrongly while lying ends its
//!    lie with less stake than it started with.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::history::{History, Written};

/// What the cluster shows after the run (gathered by `observe.rs`).
#[derive(Clone, Debug)]
pub struct Observations {
    /// The settled primary read from, or why there was none (then nothing below was
    /// read, and the checks that need the data are skipped).
    pub final_primary: Result<(String, u64), String>,
    /// Acked product ids found on the final primary with the acked name.
    pub products_found: BTreeSet<String>,
    /// Order ids the final primary holds, by idempotency key (all of them, acked or not).
    pub orders_by_key: HashMap<String, Vec<String>>,
    /// Replay of each acked order's key: the order id returned, or the error.
    pub replays: HashMap<String, Result<String, String>>,
    /// Per stock product: (final stock, units in live orders), when it could be read.
    pub stock: HashMap<String, (i64, i64)>,
    /// `VerifyLedger`: Ok, or the problem (None when not asked).
    pub ledger: Option<Result<u64, String>>,
    /// Reads that failed, so the verdict can say the evidence is incomplete.
    pub errors: Vec<String>,
}

impl Default for Observations {
    fn default() -> Self {
        Self {
            final_primary: Err("the cluster was not read".into()),
            products_found: BTreeSet::new(),
            orders_by_key: HashMap::new(),
            replays: HashMap::new(),
            stock: HashMap::new(),
            ledger: None,
            errors: Vec::new(),
        }
    }
}

/// Whether an invariant held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// Held.
    Pass,
    /// Violated.
    Fail,
    /// Not exercised by this run (nothing to check).
    Skip,
}

/// One line of the verdict table.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// The invariant's short name.
    pub invariant: &'static str,
    /// Whether it held.
    pub outcome: Outcome,
    /// Evidence, in words.
    pub detail: String,
}

/// Invariant names, as the verdict table prints them.
pub const PRIMARY_RECOVERS: &str = "a primary recovers";
/// See [`ACKED_WRITES_SURVIVE`].
pub const ACKED_WRITES_SURVIVE: &str = "acknowledged writes survive";
/// See [`ACKED_WRITES_SURVIVE`].
pub const REPLICATED_CLAIMS_HOLD: &str = "replicated claims hold";
/// See [`ACKED_WRITES_SURVIVE`].
pub const ORDERS_EXACTLY_ONCE: &str = "orders exactly once";
/// See [`ACKED_WRITES_SURVIVE`].
pub const STOCK_CONSERVED: &str = "stock conserved";
/// See [`ACKED_WRITES_SURVIVE`].
pub const ONE_PRIMARY_PER_TERM: &str = "one primary per term";
/// See [`ACKED_WRITES_SURVIVE`].
pub const LEDGER_VERIFIES: &str = "ledger verifies";
/// See [`ACKED_WRITES_SURVIVE`].
pub const LIARS_LOSE_STAKE: &str = "liars lose stake";

/// Every verdict, in the order of the module docs.
pub fn check(history: &History, seen: &Observations) -> Vec<Verdict> {
    let unread = |invariant: &'static str, why: &str| Verdict {
        invariant,
        outcome: Outcome::Skip,
        detail: format!("not checked: {why}"),
    };
    let (recovered, read) = match &seen.final_primary {
        Ok((addr, term)) => (
            verdict(PRIMARY_RECOVERS, true, format!("{addr} in term {term}")),
            true,
        ),
        Err(why) => (verdict(PRIMARY_RECOVERS, false, why.clone()), false),
    };
    let why = "no settled primary to read";
    vec![
        recovered,
        match read {
            true => acked_writes_survive(history, seen),
            false => unread(ACKED_WRITES_SURVIVE, why),
        },
        replicated_claims_hold(history),
        match read {
            true => orders_exactly_once(history, seen),
            false => unread(ORDERS_EXACTLY_ONCE, why),
        },
        match read {
            true => stock_conserved(history, seen),
            false => unread(STOCK_CONSERVED, why),
        },
        one_primary_per_term(history),
        ledger_verifies(seen),
        liars_lose_stake(history),
    ]
}

fn verdict(invariant: &'static str, ok: bool, detail: String) -> Verdict {
    let outcome = if ok { Outcome::Pass } else { Outcome::Fail };
    Verdict {
        invariant,
        outcome,
        detail,
    }
}

/// The acked writes that are gone: (index into `history.writes`).
pub fn lost_writes(history: &History, seen: &Observations) -> Vec<usize> {
    history
        .writes
        .iter()
        .enumerate()
        .filter(|(_, w)| match &w.what {
            Written::Product { id, .. } => !seen.products_found.contains(id),
            Written::Order { order_id, key, .. } => !seen
                .orders_by_key
                .get(key)
                .is_some_and(|ids| ids.contains(order_id)),
        })
        .map(|(i, _)| i)
        .collect()
}

fn acked_writes_survive(history: &History, seen: &Observations) -> Verdict {
    let lost = lost_writes(history, seen);
    let acked = history.writes.len();
    let first = |lost: &[usize]| {
        lost.iter()
            .take(3)
            .map(|&i| describe(history, i))
            .collect::<Vec<_>>()
            .join("; ")
    };
    if history.replication != "async" {
        return verdict(
            ACKED_WRITES_SURVIVE,
            lost.is_empty(),
            match lost.is_empty() {
                true => format!(
                    "{acked} acknowledged, 0 lost ({} mode: zero loss)",
                    history.replication
                ),
                false => format!(
                    "{} of {acked} acknowledged writes lost in {} mode (zero allowed), e.g. {}",
                    lost.len(),
                    history.replication,
                    first(&lost)
                ),
            },
        );
    }
    // Async: per term, lost ≤ last reported lag + acks after that report.
    let mut lost_by_term: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for &i in &lost {
        lost_by_term
            .entry(history.writes[i].term)
            .or_default()
            .push(i);
    }
    let mut over = Vec::new();
    for (term, lost) in &lost_by_term {
        let bound = async_loss_bound(history, *term);
        if lost.len() as u64 > bound {
            over.push(format!(
                "term {term}: {} lost > bound {bound} (reported lag + later acks), e.g. {}",
                lost.len(),
                first(lost)
            ));
        }
    }
    verdict(
        ACKED_WRITES_SURVIVE,
        over.is_empty(),
        match over.is_empty() {
            true => format!(
                "{acked} acknowledged, {} lost, each term within the lag the shop reported",
                lost.len()
            ),
            false => over.join("; "),
        },
    )
}

/// Async bound for term `term`: the lag its primary last reported plus the writes it
/// acknowledged after that report.
pub fn async_loss_bound(history: &History, term: u64) -> u64 {
    let last_report = history
        .samples
        .iter()
        .filter_map(|s| s.status.as_ref().map(|p| (s.at_ms, p.term, p.lag_entries)))
        .rfind(|(_, t, _)| *t == term);
    let (since, lag) = last_report.map_or((0, 0), |(at, _, lag)| (at, lag));
    let later = history
        .writes
        .iter()
        .filter(|w| w.term == term && w.at_ms >= since)
        .count() as u64;
    lag + later
}

fn describe(history: &History, i: usize) -> String {
    let w = &history.writes[i];
    let what = match &w.what {
        Written::Product { id, name } => format!("product {id} ({name})"),
        Written::Order { order_id, key, .. } => format!("order {order_id} (key {key})"),
    };
    format!(
        "{what} acked by {} in term {} at LSN {}, t={:.1}s",
        w.host,
        w.term,
        w.lsn,
        w.at_ms as f64 / 1000.0
    )
}

/// Longest a kill or stop sent through the supervisor takes to hit the process.
const RESTART_LANDS_MS: u64 = 1_000;

fn replicated_claims_hold(history: &History) -> Verdict {
    // When a process may have been replaced (a new process forgets its acks) or its
    // registry blinked (a primary that re-takes its term resets them): any kill, stop
    // or start. Conservative: any child's.
    let restarts: Vec<u64> = history
        .faults
        .iter()
        .filter(|f| matches!(f.action.as_str(), "kill" | "stop" | "start"))
        .map(|f| f.at_ms)
        .collect();
    let claims = history.writes.iter().filter(|w| w.replicated).count();
    let mut false_claims = Vec::new();
    for w in history.writes.iter().filter(|w| w.replicated) {
        // From when the write was sent (its reply may have been in flight across a kill),
        // less the time a kill takes to land after it is sent.
        let sent = w.at_ms.saturating_sub(w.latency_ms.ceil() as u64);
        let refuted = history.samples.iter().find(|s| {
            s.at_ms > w.at_ms
                && !restarts
                    .iter()
                    .any(|&r| r + RESTART_LANDS_MS >= sent && r <= s.at_ms)
                && s.status.as_ref().is_some_and(|p| {
                    p.addr == w.host && p.term == w.term && p.replica_acked_lsn < w.lsn
                })
        });
        if let Some(sample) = refuted {
            let acked = sample.status.as_ref().map_or(0, |p| p.replica_acked_lsn);
            false_claims.push(format!(
                "LSN {} (term {}) acknowledged as replicated by {} at t={:.1}s, but at t={:.1}s its replica had acked only LSN {acked}",
                w.lsn,
                w.term,
                w.host,
                w.at_ms as f64 / 1000.0,
                sample.at_ms as f64 / 1000.0
            ));
        }
    }
    if claims == 0 {
        return Verdict {
            invariant: REPLICATED_CLAIMS_HOLD,
            outcome: Outcome::Skip,
            detail: "no write was acknowledged as replicated".into(),
        };
    }
    let ok = false_claims.is_empty();
    let detail = match ok {
        true => format!("{claims} acks said replicated; no later status contradicted one"),
        false => format!(
            "{} of {claims} replicated claims were false, e.g. {}",
            false_claims.len(),
            false_claims
                .into_iter()
                .take(2)
                .collect::<Vec<_>>()
                .join("; ")
        ),
    };
    verdict(REPLICATED_CLAIMS_HOLD, ok, detail)
}

fn orders_exactly_once(history: &History, seen: &Observations) -> Verdict {
    let mut problems = Vec::new();
    for (key, ids) in &seen.orders_by_key {
        if ids.len() > 1 {
            problems.push(format!(
                "key {key} has {} orders: {}",
                ids.len(),
                ids.join(", ")
            ));
        }
    }
    let mut acked = 0;
    for w in &history.writes {
        let Written::Order { order_id, key, .. } = &w.what else {
            continue;
        };
        acked += 1;
        match seen.replays.get(key) {
            Some(Ok(id)) if id == order_id => {}
            Some(Ok(id)) => problems.push(format!(
                "replaying key {key} gave order {id}, not the acknowledged {order_id}"
            )),
            Some(Err(err)) => problems.push(format!("replaying key {key} failed: {err}")),
            None => problems.push(format!("key {key} was not replayed")),
        }
    }
    if acked == 0 && seen.orders_by_key.is_empty() {
        return Verdict {
            invariant: ORDERS_EXACTLY_ONCE,
            outcome: Outcome::Skip,
            detail: "no order was acknowledged".into(),
        };
    }
    let ok = problems.is_empty();
    let detail = match ok {
        true => format!("{acked} acknowledged orders replayed to the same order; no key twice"),
        false => format!(
            "{} problem(s): {}",
            problems.len(),
            problems.into_iter().take(3).collect::<Vec<_>>().join("; ")
        ),
    };
    verdict(ORDERS_EXACTLY_ONCE, ok, detail)
}

fn stock_conserved(history: &History, seen: &Observations) -> Verdict {
    if history.stock.is_empty() {
        return Verdict {
            invariant: STOCK_CONSERVED,
            outcome: Outcome::Skip,
            detail: "no stock product".into(),
        };
    }
    let mut problems = Vec::new();
    let mut ordered_total = 0;
    for item in &history.stock {
        match seen.stock.get(&item.id) {
            None => problems.push(format!("product {} could not be read", item.id)),
            Some((stock, ordered)) => {
                ordered_total += ordered;
                if stock + ordered != item.initial {
                    problems.push(format!(
                        "product {}: initial {} != stock {stock} + ordered {ordered}",
                        item.id, item.initial
                    ));
                }
            }
        }
    }
    let ok = problems.is_empty();
    let detail = match ok {
        true => format!(
            "{} products: initial = stock + {ordered_total} units ordered",
            history.stock.len()
        ),
        false => problems.join("; "),
    };
    verdict(STOCK_CONSERVED, ok, detail)
}

fn one_primary_per_term(history: &History) -> Verdict {
    let mut problems = Vec::new();
    let mut host_of_term: BTreeMap<u64, &str> = BTreeMap::new();
    let mut newest = 0;
    for w in &history.writes {
        let host = *host_of_term.entry(w.term).or_insert(&w.host);
        if host != w.host {
            problems.push(format!(
                "{} and {} both acknowledged writes in term {}",
                host, w.host, w.term
            ));
        }
        if w.term < newest {
            problems.push(format!(
                "{} acknowledged in term {} at t={:.1}s after a term-{newest} ack (split brain)",
                w.host,
                w.term,
                w.at_ms as f64 / 1000.0
            ));
        }
        newest = newest.max(w.term);
    }
    let mut listed: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
    for sample in &history.samples {
        for (addr, term) in &sample.primaries {
            listed.entry(*term).or_default().insert(addr);
        }
        // The same address twice is one shop restarted while its old lease lives on.
        let distinct: BTreeSet<(u64, &str)> = sample
            .primaries
            .iter()
            .map(|(a, t)| (*t, a.as_str()))
            .collect();
        let terms: Vec<u64> = distinct.iter().map(|(t, _)| *t).collect();
        if terms.windows(2).any(|w| w[0] == w[1]) {
            problems.push(format!(
                "the registry listed two primaries of one term at t={:.1}s: {:?}",
                sample.at_ms as f64 / 1000.0,
                sample.primaries
            ));
        }
    }
    for (term, addrs) in &listed {
        if addrs.len() > 1 {
            problems.push(format!("term {term} was held by {addrs:?}"));
        }
    }
    problems.dedup();
    let ok = problems.is_empty();
    let detail = match ok {
        true => format!(
            "terms {:?}, one shop each",
            host_of_term
                .keys()
                .chain(listed.keys())
                .collect::<BTreeSet<_>>()
        ),
        false => problems.into_iter().take(3).collect::<Vec<_>>().join("; "),
    };
    verdict(ONE_PRIMARY_PER_TERM, ok, detail)
}

fn ledger_verifies(seen: &Observations) -> Verdict {
    match &seen.ledger {
        None => Verdict {
            invariant: LEDGER_VERIFIES,
            outcome: Outcome::Skip,
            detail: "the aggregator was not asked".into(),
        },
        Some(Ok(events)) => verdict(
            LEDGER_VERIFIES,
            true,
            format!("{events} events: hash chain and balances check out"),
        ),
        Some(Err(problem)) => verdict(LEDGER_VERIFIES, false, problem.clone()),
    }
}

fn liars_lose_stake(history: &History) -> Verdict {
    let mut checked = Vec::new();
    let mut problems = Vec::new();
    for start in history
        .faults
        .iter()
        .filter(|f| f.action == "liar" && f.error.is_none())
    {
        let end_ms = history
            .faults
            .iter()
            .find(|f| f.action == "honest" && f.target == start.target && f.at_ms >= start.at_ms)
            .map_or(history.duration_ms, |f| f.at_ms);
        let node = start.target.as_str();
        let wrong_at: Vec<u64> = history
            .predictions
            .iter()
            .filter(|p| p.at_ms >= start.at_ms && p.at_ms <= end_ms)
            .filter(|p| p.wrong.iter().any(|n| n == node))
            .map(|p| p.at_ms)
            .collect();
        let (Some(&first_wrong), lied) = (wrong_at.first(), wrong_at.len()) else {
            continue;
        };
        // The stake read last before its first wrong answer arrived (so before the oracle
        // could report it), against the lowest read after: slashing lands when the oracle
        // reports, a moment after the answer, so look a little past the end of the lie.
        let before = history
            .stakes
            .iter()
            .rfind(|s| s.node == node && s.at_ms <= first_wrong)
            .map(|s| s.stake);
        let lowest = history
            .stakes
            .iter()
            .filter(|s| s.node == node && s.at_ms >= first_wrong && s.at_ms <= end_ms + 2_000)
            .map(|s| s.stake)
            .min();
        match (before, lowest) {
            (Some(before), Some(lowest)) if lowest < before => {
                checked.push(format!("{node}: {before} → {lowest} after {lied} wrong answers"))
            }
            (Some(before), Some(lowest)) => problems.push(format!(
                "{node} answered wrongly {lied} times while lying but its stake went {before} → {lowest}"
            )),
            _ => problems.push(format!("{node}: no stake readings around its lie")),
        }
    }
    if checked.is_empty() && problems.is_empty() {
        return Verdict {
            invariant: LIARS_LOSE_STAKE,
            outcome: Outcome::Skip,
            detail: "no node lied and was asked".into(),
        };
    }
    let ok = problems.is_empty();
    verdict(
        LIARS_LOSE_STAKE,
        ok,
        match ok {
            true => checked.join("; "),
            false => problems.join("; "),
        },
    )
}

/// A failover as the clients saw it: the first ack of a newer term after a fault on the
/// primary.
#[derive(Clone, Debug, Serialize)]
pub struct Failover {
    /// The fault (as written in `--faults`).
    pub fault: String,
    /// When it was applied.
    pub fault_at_ms: u64,
    /// Term before.
    pub from_term: u64,
    /// Term of the first ack after it, when one came.
    pub to_term: Option<u64>,
    /// Recovery time: fault → ack of the first write sent after it (of any term).
    pub rto_ms: Option<u64>,
}

/// Every primary fault with its recovery time.
pub fn failovers(history: &History) -> Vec<Failover> {
    history
        .faults
        .iter()
        .filter(|f| f.fault.contains("primary") && matches!(f.action.as_str(), "kill" | "stop"))
        .map(|f| {
            let from_term = history
                .writes
                .iter()
                .filter(|w| w.at_ms <= f.at_ms)
                .map(|w| w.term)
                .max()
                .unwrap_or(0);
            // The first write *sent* after the fault that was acknowledged (a reply in
            // flight across the fault says nothing about recovery).
            let next = history
                .writes
                .iter()
                .find(|w| w.at_ms.saturating_sub(w.latency_ms.ceil() as u64) > f.at_ms);
            Failover {
                fault: f.fault.clone(),
                fault_at_ms: f.at_ms,
                from_term,
                to_term: next.map(|w| w.term),
                rto_ms: next.map(|w| w.at_ms - f.at_ms),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::history::{
        FaultEvent, PredictionAck, PrimaryStatus, Sample, StakeSample, WriteAck,
    };

    fn product(at_ms: u64, host: &str, term: u64, id: &str) -> WriteAck {
        WriteAck {
            at_ms,
            latency_ms: 1.0,
            host: host.into(),
            term,
            lsn: at_ms,
            replicated: true,
            what: Written::Product {
                id: id.into(),
                name: id.into(),
            },
        }
    }

    fn found(ids: &[&str]) -> Observations {
        Observations {
            final_primary: Ok(("a".into(), 1)),
            products_found: ids.iter().map(|s| (*s).to_owned()).collect(),
            ..Observations::default()
        }
    }

    /// Without a settled primary: that is a violation, and the reading checks are skipped.
    #[test]
    fn no_primary_fails_and_skips_reads() {
        let history = History {
            replication: "sync".into(),
            writes: vec![product(1, "a", 1, "p")],
            ..History::default()
        };
        let seen = Observations {
            final_primary: Err("none within 45 s".into()),
            ..Observations::default()
        };
        let verdicts = check(&history, &seen);
        assert_eq!(outcome(&verdicts, PRIMARY_RECOVERS), Outcome::Fail);
        assert_eq!(outcome(&verdicts, ACKED_WRITES_SURVIVE), Outcome::Skip);
        assert_eq!(
            outcome(&check(&history, &found(&["p"])), PRIMARY_RECOVERS),
            Outcome::Pass
        );
    }

    fn outcome(verdicts: &[Verdict], name: &str) -> Outcome {
        verdicts
            .iter()
            .find(|v| v.invariant == name)
            .map(|v| v.outcome)
            .expect("verdict")
    }

    /// Sync: one missing acked write fails, none missing passes; async allows the lag.
    #[test]
    fn loss_table() {
        let writes = vec![product(10, "a", 1, "p1"), product(20, "a", 1, "p2")];
        let lag_sample = Sample {
            at_ms: 30,
            primaries: vec![("a".into(), 1)],
            status: Some(PrimaryStatus {
                addr: "a".into(),
                term: 1,
                replica_acked_lsn: 20,
                lag_entries: 1,
                lag_ms: 5,
            }),
        };
        let cases: &[(&str, &[&str], Outcome)] = &[
            ("sync", &["p1", "p2"], Outcome::Pass),
            ("sync", &["p1"], Outcome::Fail),
            ("async", &["p1"], Outcome::Pass),
            ("async", &[], Outcome::Fail),
        ];
        for (mode, present, want) in cases {
            let history = History {
                replication: (*mode).into(),
                writes: writes.clone(),
                samples: vec![lag_sample.clone()],
                ..History::default()
            };
            let got = outcome(&check(&history, &found(present)), ACKED_WRITES_SURVIVE);
            assert_eq!(got, *want, "{mode} {present:?}");
        }
    }

    /// Two hosts in one term, or an older term after a newer one, is split brain.
    #[test]
    fn split_brain_table() {
        let cases: Vec<(Vec<WriteAck>, Outcome)> = vec![
            (
                vec![product(1, "a", 1, "x"), product(2, "b", 2, "y")],
                Outcome::Pass,
            ),
            (
                vec![product(1, "a", 1, "x"), product(2, "b", 1, "y")],
                Outcome::Fail,
            ),
            (
                vec![
                    product(1, "a", 1, "x"),
                    product(2, "b", 2, "y"),
                    product(3, "a", 1, "z"),
                ],
                Outcome::Fail,
            ),
        ];
        for (writes, want) in cases {
            let history = History {
                replication: "sync".into(),
                writes: writes.clone(),
                ..History::default()
            };
            let got = outcome(
                &check(&history, &Observations::default()),
                ONE_PRIMARY_PER_TERM,
            );
            assert_eq!(got, want, "{writes:?}");
        }
        // The registry: one address twice (a restart) is fine, two addresses are not.
        let listed = |primaries: &[(&str, u64)]| Sample {
            at_ms: 1,
            primaries: primaries
                .iter()
                .map(|(a, t)| ((*a).to_owned(), *t))
                .collect(),
            status: None,
        };
        let cases = [
            (listed(&[("a", 1), ("a", 1)]), Outcome::Pass),
            (listed(&[("a", 1), ("b", 2)]), Outcome::Pass),
            (listed(&[("a", 1), ("b", 1)]), Outcome::Fail),
        ];
        for (sample, want) in cases {
            let history = History {
                replication: "sync".into(),
                samples: vec![sample.clone()],
                ..History::default()
            };
            let got = outcome(
                &check(&history, &Observations::default()),
                ONE_PRIMARY_PER_TERM,
            );
            assert_eq!(got, want, "{sample:?}");
        }
    }

    /// A replay that returns another order, or a key with two orders, breaks exactly-once.
    #[test]
    fn exactly_once_table() {
        let order = WriteAck {
            what: Written::Order {
                order_id: "o1".into(),
                key: "k1".into(),
                user: 0,
            },
            ..product(1, "a", 1, "unused")
        };
        let history = History {
            replication: "sync".into(),
            writes: vec![order],
            ..History::default()
        };
        let cases: Vec<(Vec<&str>, Result<String, String>, Outcome)> = vec![
            (vec!["o1"], Ok("o1".into()), Outcome::Pass),
            (vec!["o1"], Ok("o2".into()), Outcome::Fail),
            (vec!["o1", "o2"], Ok("o1".into()), Outcome::Fail),
            (vec!["o1"], Err("cart is empty".into()), Outcome::Fail),
        ];
        for (ids, replay, want) in cases {
            let seen = Observations {
                final_primary: Ok(("a".into(), 1)),
                orders_by_key: [(
                    "k1".to_owned(),
                    ids.iter().map(|s| (*s).to_owned()).collect(),
                )]
                .into(),
                replays: [("k1".to_owned(), replay.clone())].into(),
                ..Observations::default()
            };
            assert_eq!(
                outcome(&check(&history, &seen), ORDERS_EXACTLY_ONCE),
                want,
                "{ids:?} {replay:?}"
            );
        }
    }

    /// A liar that answered wrongly must end below its stake from before the lie.
    #[test]
    fn liar_table() {
        let fault = |at_ms, action: &str| FaultEvent {
            at_ms,
            fault: "liar-node@1s:5s".into(),
            action: action.into(),
            target: "node-3".into(),
            error: None,
        };
        let stake = |at_ms, stake| StakeSample {
            at_ms,
            node: "node-3".into(),
            stake,
        };
        let cases = [(900, Outcome::Pass), (1000, Outcome::Fail)];
        for (after, want) in cases {
            let history = History {
                replication: "sync".into(),
                duration_ms: 10_000,
                faults: vec![fault(1000, "liar"), fault(6000, "honest")],
                predictions: vec![PredictionAck {
                    at_ms: 2000,
                    latency_ms: 1.0,
                    wrong: vec!["node-3".into()],
                }],
                stakes: vec![stake(500, 1000), stake(3000, after)],
                ..History::default()
            };
            assert_eq!(
                outcome(&check(&history, &Observations::default()), LIARS_LOSE_STAKE),
                want
            );
        }
    }

    /// Stock must add up: initial = final stock + ordered units.
    #[test]
    fn stock_table() {
        let history = History {
            replication: "sync".into(),
            stock: vec![crate::chaos::history::StockItem {
                id: "p".into(),
                initial: 100,
            }],
            ..History::default()
        };
        for ((stock, ordered), want) in [((90, 10), Outcome::Pass), ((91, 10), Outcome::Fail)] {
            let seen = Observations {
                final_primary: Ok(("a".into(), 1)),
                stock: [("p".to_owned(), (stock, ordered))].into(),
                ..Observations::default()
            };
            assert_eq!(outcome(&check(&history, &seen), STOCK_CONSERVED), want);
        }
    }

    /// A later status of the same primary and term below an ack's LSN refutes its
    /// "replicated"; a kill in between, another term or an earlier status does not.
    #[test]
    fn replicated_claims_table() {
        let status = |at_ms, addr: &str, term, acked| Sample {
            at_ms,
            primaries: vec![(addr.into(), term)],
            status: Some(PrimaryStatus {
                addr: addr.into(),
                term,
                replica_acked_lsn: acked,
                lag_entries: 0,
                lag_ms: 0,
            }),
        };
        let kill = FaultEvent {
            at_ms: 150,
            fault: "kill-primary@0ms".into(),
            action: "kill".into(),
            target: "shop-1".into(),
            error: None,
        };
        // The ack: LSN 100, term 1, host a, at 100 ms.
        let cases: Vec<(Sample, Vec<FaultEvent>, Outcome)> = vec![
            (status(200, "a", 1, 100), vec![], Outcome::Pass),
            (status(200, "a", 1, 99), vec![], Outcome::Fail),
            (status(50, "a", 1, 0), vec![], Outcome::Pass),
            (status(200, "a", 2, 0), vec![], Outcome::Pass),
            (status(200, "b", 1, 0), vec![], Outcome::Pass),
            (status(200, "a", 1, 0), vec![kill.clone()], Outcome::Pass),
            // A kill after the sample is no excuse.
            (
                status(200, "a", 1, 0),
                vec![FaultEvent {
                    at_ms: 250,
                    ..kill.clone()
                }],
                Outcome::Fail,
            ),
            // A kill sent just before the reply arrived (in flight): not a refutation.
            (
                status(200, "a", 1, 0),
                vec![FaultEvent { at_ms: 95, ..kill }],
                Outcome::Pass,
            ),
        ];
        for (sample, faults, want) in cases {
            let mut ack = product(100, "a", 1, "p");
            ack.lsn = 100;
            let history = History {
                replication: "sync".into(),
                writes: vec![ack],
                samples: vec![sample.clone()],
                faults,
                ..History::default()
            };
            let got = outcome(&check(&history, &found(&["p"])), REPLICATED_CLAIMS_HOLD);
            assert_eq!(got, want, "{sample:?}");
        }
    }
}

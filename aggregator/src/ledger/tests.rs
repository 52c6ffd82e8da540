//! Tests of the ledger's operations and of `verify` against tampered stores.

use super::tx::HEAD_KEY;
use super::*;
use crate::policy::{NodeId, ScoringParams, Stake, INITIAL_TRUST};
use std::sync::{Arc, Barrier};

/// Rule v1's flat 10 % slash: these tests check the ledger's mechanics with round
/// numbers; the v2 rate itself is tested in `policy.rs` and `simulation.rs`.
fn params() -> ScoringParams {
    ScoringParams {
        slash_bps: 1_000,
        escalation_bps: 0,
        ..ScoringParams::default()
    }
}

/// Opens each account the way a node does: by staking 1000 for itself.
fn fund(l: &Ledger, nodes: &[&str]) {
    for n in nodes {
        l.stake(n, 1000).expect("stake");
    }
}

impl Ledger {
    /// Writes what the code before "no mint on first sight" wrote when it first saw a
    /// node: a `grant` of `amount` opening the account (a legacy ledger).
    fn legacy_grant(&self, node_id: &str, amount: Stake) -> Account {
        let (a, _) = self
            .transact(|tx, _| {
                let mut a = Account::unopened(node_id);
                let trust = a.trust_ppb;
                tx.append(&mut a, EventKind::Grant, amount, trust, None)?;
                tx.put(&a)?;
                Ok(a)
            })
            .expect("legacy grant");
        a
    }
}

/// Attack (sybils): a node the ledger has never seen gets nothing — reading its
/// standing or scoring its answers opens no account and mints nothing; only a stake
/// opens it (ejected while below the minimum), and `open_with_stake` pays once.
#[test]
fn unknown_nodes_get_no_account() {
    let l = Ledger::temporary(params()).expect("open");
    let sybils: Vec<NodeId> = (0..100).map(|i| format!("sybil-{i}")).collect();
    assert!(l
        .accounts(&sybils)
        .expect("read")
        .iter()
        .all(Option::is_none));
    let outcomes: Vec<_> = sybils.iter().map(|n| (n.clone(), true)).collect();
    assert_eq!(l.score("r1", &outcomes).expect("score"), vec![]);
    assert_eq!(l.head().expect("head").seq, 0, "nothing written");
    assert!(l.list_accounts().expect("list").is_empty());

    // A first stake below the minimum opens the account ejected; more stake rejoins.
    let c = l.stake("n1", 50).expect("stake");
    let kinds: Vec<_> = c.events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![EventKind::Stake, EventKind::Eject]);
    assert_eq!((c.account.stake, c.account.ejected), (50, true));
    assert_eq!(c.account.trust(), 0.5);
    let c = l.stake("n1", 50).expect("stake");
    assert!(!c.account.ejected, "{c:?}");

    // The start-up stake is paid once, whatever happens afterwards.
    let c = l.open_with_stake("n2", 1000).expect("open");
    assert_eq!((c.account.stake, c.events.len()), (1000, 1));
    let head = l.head().expect("head");
    assert_eq!(
        l.open_with_stake("n2", 1000),
        Err(LedgerError::AccountExists("n2".into()))
    );
    assert_eq!(
        l.head().expect("head"),
        head,
        "a refused open writes nothing"
    );
    let r = l.verify().expect("verify");
    assert!(r.ok(), "{:?}", r.first_inconsistency);
    assert_eq!((r.replayed.minted(), r.replayed.deposited), (0, 1100));
}

/// A ledger written before grants ended (accounts opened by `grant`) still verifies,
/// keeps working, and counts its grants as minted; a `grant` anywhere but an
/// account's first event is flagged.
#[test]
fn legacy_grants_still_verify() {
    let l = Ledger::temporary(params()).expect("open");
    l.legacy_grant("old", 1000);
    fund(&l, &["new"]);
    l.score("r", &[("old".into(), true), ("new".into(), false)])
        .expect("score");
    l.stake("old", 5).expect("stake");
    l.unstake("new", 100).expect("unstake");
    let r = l.verify().expect("verify");
    assert!(r.ok(), "{:?}", r.first_inconsistency);
    assert_eq!(r.replayed.granted, 1000);
    assert_eq!(r.replayed.minted(), 1010);
    assert_eq!(r.stake_sum, 1015 + 800);
    // A grant for an account that is already open is not something the old code wrote.
    l.legacy_grant("new", 1);
    let bad = l
        .verify()
        .expect("verify")
        .first_inconsistency
        .expect("flagged");
    assert!(bad.to_string().contains("already opened"), "{bad:?}");
}

/// Reward and slash follow the formula; trust follows the EMA.
#[test]
fn scoring_applies_formula() {
    let l = Ledger::temporary(params()).expect("open");
    fund(&l, &["good", "bad"]);
    let c = l
        .score(
            "r1",
            &[
                ("good".into(), true),
                ("bad".into(), false),
                ("good".into(), false),
            ],
        )
        .expect("score");
    assert_eq!(c.len(), 2, "duplicate node scored once");
    assert_eq!((c[0].stake_after, c[0].reward, c[0].slashed), (1010, 10, 0));
    assert!((c[0].trust_after - 0.55).abs() < 1e-9);
    assert_eq!((c[1].stake_after, c[1].reward, c[1].slashed), (900, 0, 100));
    assert!((c[1].trust_after - 0.45).abs() < 1e-9);
    let r = l.verify().expect("verify");
    assert!(r.ok(), "{:?}", r.first_inconsistency);
    assert_eq!((r.replayed.minted(), r.replayed.deposited), (10, 2000));
    assert_eq!(r.replayed.burned, 100);
    assert_eq!(r.stake_sum, 1910);
}

/// A second report for the same request changes nothing and says so.
#[test]
fn second_score_is_rejected() {
    let l = Ledger::temporary(params()).expect("open");
    fund(&l, &["n"]);
    l.score("r1", &[("n".into(), true)]).expect("first");
    let head = l.head().expect("head");
    let err = l.score("r1", &[("n".into(), true)]).expect_err("second");
    assert!(matches!(err, LedgerError::AlreadyScored { .. }), "{err}");
    assert_eq!(l.head().expect("head"), head);
    assert_eq!(l.scored_seq("r1").expect("seq"), Some(head.seq));
}

/// Concurrent scoring of one request counts once.
#[test]
fn concurrent_scores_count_once() {
    let l = Ledger::temporary(params()).expect("open");
    fund(&l, &["a", "b"]);
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let l = l.clone();
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                l.score("same", &[("a".into(), true), ("b".into(), false)])
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("join"))
        .collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    assert!(results
        .iter()
        .all(|r| r.is_ok() || matches!(r, Err(LedgerError::AlreadyScored { .. }))));
    let a = l.account("a").expect("get").expect("exists");
    assert_eq!((a.stake, a.right), (1010, 1));
    let b = l.account("b").expect("get").expect("exists");
    assert_eq!((b.stake, b.wrong), (900, 1));
    assert!(l.verify().expect("verify").ok());
}

/// Stakes never go negative: unstake past zero fails, slashing at zero burns nothing.
#[test]
fn zero_stake_cannot_go_negative() {
    let l = Ledger::temporary(params()).expect("open");
    fund(&l, &["n"]);
    let a = l.unstake("n", 1000).expect("unstake all").account;
    assert_eq!((a.stake, a.ejected), (0, true));
    let err = l.unstake("n", 1).expect_err("negative");
    assert!(matches!(
        err,
        LedgerError::InsufficientStake {
            stake: 0,
            requested: 1,
            ..
        }
    ));
    let c = l.score("r", &[("n".into(), false)]).expect("score");
    assert_eq!(
        (c[0].stake_after, c[0].slashed, c[0].newly_ejected),
        (0, 0, false)
    );
    assert!(matches!(
        l.unstake("ghost", 1),
        Err(LedgerError::NotFound(_))
    ));
    assert!(matches!(
        l.stake("n", 0),
        Err(LedgerError::InvalidArgument(_))
    ));
    l.stake("n", 1).expect("stake");
    assert!(matches!(
        l.stake("n", u64::MAX),
        Err(LedgerError::InvalidArgument(_))
    ));
    assert!(l.verify().expect("verify").ok());
}

fn event_count(l: &Ledger) -> usize {
    l.events_page(0, MAX_PAGE_SIZE, None).expect("page").0.len()
}

/// Stake amounts are bounded per call (INVALID_ARGUMENT) and can never push an
/// account, a total or the supply past u64::MAX (WOULD_OVERFLOW); a refused Stake
/// writes nothing, not even a new account (table-driven). Balances near the ceiling
/// come from legacy grants: staking alone takes ~18 000 maximal calls to get there.
#[test]
fn stake_never_overflows() {
    // (legacy accounts opened first, stake node, amount, expected outcome)
    #[derive(Debug, PartialEq)]
    enum Want {
        Ok(Stake),
        Invalid,
        Overflow(&'static str),
    }
    const NEAR: Stake = u64::MAX - 5;
    const HALF: Stake = u64::MAX / 2;
    type Case = (&'static [(&'static str, Stake)], &'static str, Stake, Want);
    let cases: Vec<Case> = vec![
        (&[("a", 1000)], "a", 0, Want::Invalid),
        (&[("a", 1000)], "a", MAX_STAKE_PER_CALL + 1, Want::Invalid),
        (&[("a", 1000)], "a", u64::MAX, Want::Invalid),
        (&[], "new", MAX_STAKE_PER_CALL + 1, Want::Invalid),
        (
            &[("a", 1000)],
            "a",
            MAX_STAKE_PER_CALL,
            Want::Ok(1000 + MAX_STAKE_PER_CALL),
        ),
        (&[], "new", MAX_STAKE_PER_CALL, Want::Ok(MAX_STAKE_PER_CALL)),
        // The account itself would pass u64::MAX.
        (&[("a", NEAR)], "a", 6, Want::Overflow("largest balance")),
        (&[("a", NEAR)], "a", 5, Want::Ok(u64::MAX)),
        // Each account fits, the sum of all stakes would not.
        (
            &[("a", HALF), ("b", HALF)],
            "a",
            2,
            Want::Overflow("total stake"),
        ),
        (&[("a", HALF), ("b", HALF)], "a", 1, Want::Ok(HALF + 1)),
        // A new node's first stake would pass the ceiling: no account is opened.
        (&[("a", NEAR)], "new", 6, Want::Overflow("total stake")),
        (&[("a", NEAR)], "new", 5, Want::Ok(5)),
    ];
    for (open, node, amount, want) in cases {
        let what = format!("{open:?} {node} {amount}");
        let l = Ledger::temporary(params()).expect("open");
        for (id, stake) in open {
            l.legacy_grant(id, *stake);
        }
        let head = l.head().expect("head");
        let events = event_count(&l);
        match (l.stake(node, amount), want) {
            (Ok(c), Want::Ok(stake)) => assert_eq!(c.account.stake, stake, "{what}"),
            (Err(LedgerError::InvalidArgument(msg)), Want::Invalid) => {
                assert!(msg.contains("1..=1000000000000000"), "{what}: {msg}");
            }
            (Err(LedgerError::WouldOverflow(msg)), Want::Overflow(fragment)) => {
                assert!(msg.contains(fragment), "{what}: {msg}");
            }
            (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
        }
        let report = l.verify().expect("verify");
        assert!(report.ok(), "{what}: {:?}", report.first_inconsistency);
        let supply = report.head.totals.supply().expect("supply fits u64");
        assert_eq!(u128::from(supply), report.stake_sum, "{what}");
        if l.head().expect("head") != head {
            continue; // accepted: a stake event was written
        }
        // Refused: nothing written at all.
        assert_eq!(event_count(&l), events, "{what}");
        assert_eq!(l.account("new").expect("get"), None, "{what}");
    }
}

/// Rewards near the ceiling are capped at the headroom (finally 0) instead of
/// wrapping, panicking or failing the scoring, and the books still balance.
#[test]
fn rewards_are_capped_at_the_supply_ceiling() {
    let l = Ledger::temporary(ScoringParams {
        reward: 10,
        ..params()
    })
    .expect("open");
    l.legacy_grant("a", u64::MAX / 2);
    l.legacy_grant("b", u64::MAX / 2);
    // Supply is u64::MAX - 1: one token of headroom left.
    let rounds = [("r1", 1, u64::MAX / 2 + 1), ("r2", 0, u64::MAX / 2 + 1)];
    for (request, reward, stake) in rounds {
        let c = l.score(request, &[("a".into(), true)]).expect("score");
        assert_eq!(
            (c[0].reward, c[0].stake_after),
            (reward, stake),
            "{request}"
        );
    }
    let report = l.verify().expect("verify");
    assert!(report.ok(), "{:?}", report.first_inconsistency);
    assert_eq!(report.replayed.supply(), Some(u64::MAX));
    assert_eq!(report.replayed.minted(), u128::from(u64::MAX));
    assert_eq!(report.stake_sum, u128::from(u64::MAX));
    // A slash frees supply, but `minted` is cumulative and already at the ceiling:
    // the reward stays 0 rather than letting that total pass u64::MAX.
    l.score("r3", &[("b".into(), false)]).expect("slash");
    let c = l.score("r4", &[("a".into(), true)]).expect("score");
    assert_eq!(c[0].reward, 0);
    assert!(l.verify().expect("verify").ok());
}

/// A log whose stakes summed past u64::MAX (as the unchecked code could write) is
/// reported by verify, not passed with a capped figure.
#[test]
fn verify_flags_totals_beyond_u64() {
    let l = Ledger::temporary(params()).expect("open");
    // Forge what the old code wrote: a = 1000 + (u64::MAX - 1000), b = 1000.
    let mut head = Head::default();
    let steps = [
        ("a", EventKind::Grant, 1000, 1000),
        ("a", EventKind::Stake, u64::MAX - 1000, u64::MAX),
        ("b", EventKind::Grant, 1000, 1000),
    ];
    for (node, kind, amount, stake_after) in steps {
        let mut e = Event {
            seq: head.seq + 1,
            kind,
            node_id: node.into(),
            amount,
            stake_after,
            trust_after_ppb: TRUST_SCALE / 2,
            request_id: None,
            at_ms: 0,
            prev_hash: head.hash.clone(),
            hash: String::new(),
        };
        e.hash = event_hash(&e);
        l.events
            .insert(e.seq.to_be_bytes(), record::encode_event(&e).unwrap())
            .unwrap();
        let account = Account {
            node_id: node.into(),
            stake: stake_after,
            trust_ppb: TRUST_SCALE / 2,
            ejected: false,
            right: 0,
            wrong: 0,
            last_seq: e.seq,
        };
        l.accounts
            .insert(node.as_bytes(), record::encode_account(&account))
            .unwrap();
        match kind {
            EventKind::Grant => head.totals.granted += amount,
            _ => head.totals.deposited += amount,
        }
        head.seq = e.seq;
        head.hash = e.hash;
    }
    l.meta
        .insert(HEAD_KEY, record::encode_head(&head).unwrap())
        .unwrap();
    let report = l.verify().expect("verify");
    let bad = report.first_inconsistency.expect("flagged");
    assert_eq!(bad.seq, Some(3), "{bad:?}");
    assert!(bad.to_string().contains("total stake"), "{bad:?}");
    // And nothing more can be staked on top of it.
    assert!(matches!(
        l.stake("b", 1),
        Err(LedgerError::WouldOverflow(_))
    ));
}

/// Falling under the minimum ejects; staking back above it rejoins; rewards don't.
#[test]
fn eject_and_rejoin() {
    let l = Ledger::temporary(params()).expect("open");
    fund(&l, &["n"]);
    l.unstake("n", 850).expect("unstake"); // 150
    let c = l.score("r1", &[("n".into(), false)]).expect("score"); // 150-15=135
    assert!(!c[0].ejected);
    l.unstake("n", 40).expect("unstake"); // 95 → ejected
    assert!(l.account("n").expect("get").expect("exists").ejected);
    let c = l.score("r2", &[("n".into(), true)]).expect("score"); // 105, still ejected
    assert_eq!((c[0].stake_after, c[0].ejected), (105, true));
    let a = l.stake("n", 1).expect("stake").account;
    assert!(!a.ejected);
    let kinds: Vec<_> = l
        .events_page(0, 100, Some("n"))
        .expect("page")
        .0
        .into_iter()
        .map(|e| e.kind)
        .collect();
    use EventKind::*;
    assert_eq!(
        kinds,
        vec![Stake, Unstake, Slash, Unstake, Eject, Reward, Stake, Rejoin]
    );
    assert!(l.verify().expect("verify").ok());
}

/// Paging walks the log in order and says when it ends.
#[test]
fn paging() {
    let l = Ledger::temporary(params()).expect("open");
    fund(&l, &["a", "b", "c", "d", "e"]);
    let (p1, next) = l.events_page(0, 2, None).expect("page");
    assert_eq!(p1.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    let (p2, next) = l.events_page(next.expect("more"), 2, None).expect("page");
    assert_eq!(p2.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
    let (p3, next) = l.events_page(next.expect("more"), 2, None).expect("page");
    assert_eq!(p3.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5]);
    assert_eq!(next, None);
    let (only_c, _) = l.events_page(0, 10, Some("c")).expect("page");
    assert_eq!(only_c.len(), 1);
}

/// Tampering with an event, an account or the log shape is caught by verify.
#[test]
fn tampering_is_detected() {
    type Tamper = fn(&Ledger);
    let cases: Vec<(&str, Tamper, Option<u64>)> = vec![
        (
            "event amount",
            |l| {
                let mut e: Event =
                    record::decode_event(&l.events.get(2u64.to_be_bytes()).unwrap().unwrap())
                        .unwrap();
                e.amount += 1;
                e.stake_after += 1;
                l.events
                    .insert(2u64.to_be_bytes(), record::encode_event(&e).unwrap())
                    .unwrap();
            },
            Some(2),
        ),
        (
            "event rehashed",
            |l| {
                // Recomputing the hash of the edited event breaks the link of the next one.
                let mut e: Event =
                    record::decode_event(&l.events.get(2u64.to_be_bytes()).unwrap().unwrap())
                        .unwrap();
                e.amount = 1;
                e.stake_after = 1;
                e.hash = event_hash(&e);
                l.events
                    .insert(2u64.to_be_bytes(), record::encode_event(&e).unwrap())
                    .unwrap();
            },
            Some(3),
        ),
        (
            "event deleted",
            |l| {
                l.events.remove(2u64.to_be_bytes()).unwrap();
            },
            Some(3),
        ),
        (
            "account balance",
            |l| {
                let mut a = l.account("a").unwrap().unwrap();
                a.stake += 5;
                l.accounts.insert("a", record::encode_account(&a)).unwrap();
            },
            None,
        ),
    ];
    for (name, tamper, seq) in cases {
        let l = Ledger::temporary(params()).expect("open");
        fund(&l, &["a", "b"]);
        l.score("r", &[("a".into(), true), ("b".into(), false)])
            .expect("score");
        assert!(l.verify().expect("verify").ok());
        tamper(&l);
        let r = l.verify().expect("verify");
        let bad = r
            .first_inconsistency
            .unwrap_or_else(|| panic!("{name}: not detected"));
        assert_eq!(bad.seq, seq, "{name}: {bad:?}");
    }
}

/// Rule v2 in the ledger: each slash of a node escalates with its error rate
/// (2 %, then 2.9 %, then 5.3 % of 1000 → 980 → 951 → 900), and a ledger written
/// under rule v1 (flat 10 %) still verifies when reopened under v2.
#[test]
fn slashes_escalate_and_v1_ledgers_still_verify() {
    let l = Ledger::temporary(ScoringParams::default()).expect("open");
    fund(&l, &["liar"]);
    let slashed: Vec<Stake> = (0..3)
        .map(|i| {
            let c = l
                .score(&format!("r{i}"), &[("liar".into(), false)])
                .expect("score");
            c[0].slashed
        })
        .collect();
    assert_eq!(slashed, vec![20, 29, 51]);
    assert!(l.verify().expect("verify").ok());

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger");
    {
        let v1 = Ledger::open(&path, params()).expect("open v1");
        fund(&v1, &["a", "b"]);
        for i in 0..5 {
            v1.score(&format!("r{i}"), &[("a".into(), true), ("b".into(), false)])
                .expect("score");
        }
    }
    let v2 = Ledger::open(&path, ScoringParams::default()).expect("reopen under v2");
    let r = v2.verify().expect("verify");
    assert!(r.ok(), "{:?}", r.first_inconsistency);
    v2.score("r5", &[("b".into(), false)]).expect("score");
    assert!(v2.verify().expect("verify").ok());
}

/// Balances, trust and the chain survive closing and reopening the db.
#[test]
fn survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger");
    {
        let l = Ledger::open(&path, params()).expect("open");
        fund(&l, &["a", "b"]);
        l.score("r", &[("a".into(), true), ("b".into(), false)])
            .expect("score");
        l.stake("b", 7).expect("stake");
    }
    let l = Ledger::open(&path, params()).expect("reopen");
    let a = l.account("a").expect("get").expect("exists");
    let b = l.account("b").expect("get").expect("exists");
    assert_eq!((a.stake, b.stake), (1010, 907));
    assert!((b.trust() - 0.45).abs() < 1e-9);
    assert!(matches!(
        l.score("r", &[]),
        Err(LedgerError::AlreadyScored { .. })
    ));
    let r = l.verify().expect("verify");
    assert!(r.ok(), "{:?}", r.first_inconsistency);
    assert_eq!(r.events_checked, 5);
}

/// The stored trust reaches exactly 0 and 1 instead of stalling on rounding.
#[test]
fn trust_ppb_reaches_bounds() {
    let (mut lo, mut hi) = (trust_to_ppb(INITIAL_TRUST), trust_to_ppb(INITIAL_TRUST));
    for _ in 0..1000 {
        lo = next_trust_ppb(lo, false, 0.1);
        hi = next_trust_ppb(hi, true, 0.1);
    }
    assert_eq!((lo, hi), (0, TRUST_SCALE));
    assert_eq!(next_trust_ppb(500_000_000, true, 0.1), 550_000_000);
    assert_eq!(next_trust_ppb(500_000_000, false, 0.1), 450_000_000);
}

/// Watchers see committed events in order.
#[test]
fn subscribers_see_events() {
    let l = Ledger::temporary(params()).expect("open");
    let mut rx = l.subscribe();
    l.stake("n", 5).expect("stake");
    let kinds: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, vec![EventKind::Stake, EventKind::Eject]);
}

/// The old format's bytes: what the JSON ledger stored for an event (the field names and
/// the snake-case kind are the old format, written out here rather than derived).
fn old_json_event(
    seq: u64,
    kind: &str,
    node: &str,
    amount: u64,
    stake_after: u64,
    prev: &str,
) -> (serde_json::Value, String) {
    let mut e = Event {
        seq,
        kind: serde_json::from_value(serde_json::json!(kind)).unwrap(),
        node_id: node.into(),
        amount,
        stake_after,
        trust_after_ppb: TRUST_SCALE / 2,
        request_id: None,
        at_ms: 1_700_000_000_000 + seq,
        prev_hash: prev.into(),
        hash: String::new(),
    };
    e.hash = event_hash(&e);
    let json = serde_json::json!({
        "seq": seq, "kind": kind, "node_id": node, "amount": amount,
        "stake_after": stake_after, "trust_after_ppb": TRUST_SCALE / 2,
        "request_id": null, "at_ms": e.at_ms, "prev_hash": prev, "hash": e.hash,
    });
    (json, e.hash)
}

/// Writes a two-event JSON ledger (a stakes 1000, b stakes 500) the way the old code
/// stored it, straight into sled.
fn write_json_ledger(path: &std::path::Path) -> String {
    let db = sled::open(path).unwrap();
    let (accounts, events, meta) = (
        db.open_tree("accounts").unwrap(),
        db.open_tree("events").unwrap(),
        db.open_tree("meta").unwrap(),
    );
    let (e1, h1) = old_json_event(1, "stake", "a", 1000, 1000, GENESIS_HASH);
    let (e2, h2) = old_json_event(2, "stake", "b", 500, 500, &h1);
    for (seq, e) in [(1u64, e1), (2, e2)] {
        events
            .insert(seq.to_be_bytes(), serde_json::to_vec(&e).unwrap())
            .unwrap();
    }
    for (node, stake, seq) in [("a", 1000, 1), ("b", 500, 2)] {
        let a = serde_json::json!({
            "node_id": node, "stake": stake, "trust_ppb": TRUST_SCALE / 2,
            "ejected": false, "right": 0, "wrong": 0, "last_seq": seq,
        });
        accounts
            .insert(node, serde_json::to_vec(&a).unwrap())
            .unwrap();
    }
    let head = serde_json::json!({
        "seq": 2, "hash": h2,
        "totals": {"rewarded": 0, "burned": 0, "deposited": 1500, "withdrawn": 0},
    });
    meta.insert(HEAD_KEY, serde_json::to_vec(&head).unwrap())
        .unwrap();
    db.flush().unwrap();
    h2
}

/// A JSON ledger written by the old code migrates to protobuf on open: every record is
/// rewritten, the hash chain (over fields, not bytes) still verifies with the same head,
/// and the ledger keeps working; reopening migrates nothing more.
#[test]
fn json_ledger_migrates_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger");
    let head_hash = write_json_ledger(&path);
    {
        let l = Ledger::open(&path, params()).expect("open migrates");
        for tree in [&l.events, &l.accounts, &l.meta] {
            for r in tree.iter() {
                let (_, v) = r.unwrap();
                assert_ne!(
                    v.first(),
                    Some(&b'{'),
                    "a JSON record survived the migration"
                );
            }
        }
        let r = l.verify().expect("verify");
        assert!(r.ok(), "{:?}", r.first_inconsistency);
        assert_eq!(
            (r.events_checked, r.head.hash.as_str()),
            (2, head_hash.as_str())
        );
        assert_eq!(l.account("b").unwrap().unwrap().stake, 500);
        l.unstake("a", 100).expect("unstake after migration");
        assert!(l.verify().expect("verify").ok());
    }
    let l = Ledger::open(&path, params()).expect("reopen");
    assert_eq!(l.head().unwrap().seq, 3);
    assert!(l.verify().expect("verify").ok());
}

/// A JSON record that does not decode refuses the open with an error that says what
/// to do, instead of serving a half-read ledger.
#[test]
fn broken_json_ledger_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger");
    write_json_ledger(&path);
    {
        let db = sled::open(&path).unwrap();
        let events = db.open_tree("events").unwrap();
        events
            .insert(2u64.to_be_bytes(), &b"{\"seq\": 2, \"kind\": "[..])
            .unwrap();
        db.flush().unwrap();
    }
    let err = Ledger::open(&path, params()).expect_err("refused");
    let msg = err.to_string();
    assert!(matches!(err, LedgerError::Corrupt(_)), "{err:?}");
    assert!(msg.contains("event") && msg.contains("backup"), "{msg}");
}

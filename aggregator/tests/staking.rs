//! The Staking service over loopback: credentials, scoring once, paging, watching,
//! tampering and restarts, against a real server on 127.0.0.1:0 with a sled db in a tempdir.

use std::path::{Path, PathBuf};
use std::time::Duration;

use concord::auth::{attach_bearer, node_credential};
use concord::identity::{ClusterSecret, Credential, Principal};
use concord::pb::stake::v1::{
    self as pb, staking_client::StakingClient, GetAccountRequest, ListAccountsRequest,
    ListEventsRequest, ReportOutcomeRequest, StakeRequest, UnstakeRequest, VerifyLedgerRequest,
    WatchEventsRequest,
};
use concord_aggregator::book::StakeBook;
use concord_aggregator::ledger::{
    event_hash, record, Account, Event, EventKind, Head, TRUST_SCALE,
};
use concord_aggregator::outcomes::{RecentRequests, DEFAULT_TTL};
use concord_aggregator::policy::{NodeAnswer, Policy, ScoringParams};
use concord_aggregator::staking::serve_staking;
use concord_testkit::{credential, Running, ORACLE_TOKEN as ORACLE};
use tonic::{transport::Channel, Code, Request};

/// The public secret every `concord up` cluster used before secrets were random.
const OLD_DEV_SECRET: &str = "concord-dev-cluster-secret";

/// A Staking server in this process; `stop` shuts it down and joins it.
struct TestStaking {
    server: Running<tonic::transport::Error>,
    book: StakeBook,
}

impl TestStaking {
    async fn start(db: &Path) -> Self {
        Self::start_with(db, ScoringParams::default()).await
    }

    async fn start_with(db: &Path, params: ScoringParams) -> Self {
        let book = StakeBook::open(db, params, 1000, DEFAULT_TTL).expect("open ledger");
        let auth = concord_testkit::staking_auth();
        let served = book.clone();
        let server =
            Running::spawn(|listener, shutdown| serve_staking(served, auth, listener, shutdown))
                .await;
        Self { server, book }
    }

    fn client(&self) -> StakingClient<Channel> {
        StakingClient::new(self.server.channel())
    }

    /// Simulates a consensus request that `answers` (node, label) took part in; a node
    /// without an account first stakes 1000 for itself.
    fn record(&self, request_id: &str, answers: &[(&str, usize)]) {
        let answers: Vec<NodeAnswer> = answers
            .iter()
            .map(|(node, label)| {
                let ledger = self.book.ledger();
                let a = match ledger.account(node).expect("read") {
                    Some(a) => a,
                    None => ledger.stake(node, 1000).expect("stake").account,
                };
                let mut p = vec![0.1; 3];
                p[*label] = 0.8;
                NodeAnswer {
                    node_id: a.node_id.clone(),
                    probabilities: p,
                    trust: a.trust(),
                    stake: a.stake,
                    ejected: a.ejected,
                }
            })
            .collect();
        self.book
            .conclude(request_id, Policy::Stake, &answers)
            .expect("conclude");
    }

    /// Shuts the server down; the sled db is closed once every handle is dropped.
    async fn stop(self) {
        self.server.stop().await;
        drop(self.book);
    }
}

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("ledger")
}

/// Writes a ledger the way the code before "no mint on first sight" left it (in the JSON
/// records of that time, which the ledger migrates on open): each
/// account opened by a `grant` event (trust 0.5), in one sled batch.
fn write_legacy_ledger(path: &Path, grants: &[(String, u64)]) {
    let db = sled::open(path).expect("open raw");
    let accounts = db.open_tree("accounts").expect("tree");
    let events = db.open_tree("events").expect("tree");
    let meta = db.open_tree("meta").expect("tree");
    let mut head = Head::default();
    for (node, amount) in grants {
        let mut e = Event {
            seq: head.seq + 1,
            kind: EventKind::Grant,
            node_id: node.clone(),
            amount: *amount,
            stake_after: *amount,
            trust_after_ppb: TRUST_SCALE / 2,
            request_id: None,
            at_ms: 0,
            prev_hash: head.hash.clone(),
            hash: String::new(),
        };
        e.hash = event_hash(&e);
        let account = Account {
            node_id: node.clone(),
            stake: *amount,
            trust_ppb: TRUST_SCALE / 2,
            ejected: false,
            right: 0,
            wrong: 0,
            last_seq: e.seq,
        };
        events
            .insert(e.seq.to_be_bytes(), serde_json::to_vec(&e).expect("json"))
            .expect("event");
        accounts
            .insert(node.as_bytes(), serde_json::to_vec(&account).expect("json"))
            .expect("account");
        head.totals.granted += amount;
        head.seq = e.seq;
        head.hash = e.hash;
    }
    meta.insert("head", serde_json::to_vec(&head).expect("json"))
        .expect("head");
    db.flush().expect("flush");
}

/// `msg` with the oracle-style bearer token `token`, if any.
fn with_token<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(t) = token {
        attach_bearer(&mut req, t);
    }
    req
}

/// `msg` carrying the cluster credential `cred`, if any.
fn as_node<T>(msg: T, cred: Option<&Credential>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(c) = cred {
        c.attach(&mut req);
    }
    req
}

fn node(id: &str) -> Credential {
    credential(Principal::Node(id.into()))
}

fn stake_req(node: &str, amount: u64, cred: Option<&Credential>) -> Request<StakeRequest> {
    as_node(
        StakeRequest {
            node_id: node.into(),
            amount,
            only_if_new: false,
        },
        cred,
    )
}

fn unstake_req(node: &str, amount: u64, cred: Option<&Credential>) -> Request<UnstakeRequest> {
    as_node(
        UnstakeRequest {
            node_id: node.into(),
            amount,
        },
        cred,
    )
}

fn report_req(request_id: &str, label: u32, token: Option<&str>) -> Request<ReportOutcomeRequest> {
    with_token(
        ReportOutcomeRequest {
            request_id: request_id.into(),
            true_label: label,
        },
        token,
    )
}

async fn account(client: &mut StakingClient<Channel>, node: &str) -> Option<pb::Account> {
    match client
        .get_account(GetAccountRequest {
            node_id: node.into(),
        })
        .await
    {
        Ok(reply) => reply.into_inner().account,
        Err(status) if status.code() == Code::NotFound => None,
        Err(status) => panic!("GetAccount {node}: {status:?}"),
    }
}

async fn head_seq(client: &mut StakingClient<Channel>) -> u64 {
    client
        .list_accounts(ListAccountsRequest {})
        .await
        .expect("list")
        .into_inner()
        .totals
        .expect("totals")
        .events
}

/// Stake/Unstake need the caller's own cluster credential (x-concord-credential): none,
/// garbage, the old bearer form or a credential under another secret is UNAUTHENTICATED;
/// another principal's valid credential is PERMISSION_DENIED. The first stake opens the
/// account (below the minimum: ejected); nothing is granted.
#[tokio::test]
async fn stake_requires_own_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestStaking::start(&db_path(&dir)).await;
    let mut client = server.client();
    let n1 = node("n1");
    let other_secret = ClusterSecret::new("other-secret")
        .expect("secret")
        .issue(Principal::Node("n1".into()));
    let cases: Vec<(&str, Option<Credential>, Option<String>, Code)> = vec![
        ("nothing", None, None, Code::Unauthenticated),
        (
            "old bearer form of n1's MAC",
            None,
            Some(node_credential(concord_testkit::CLUSTER_SECRET, "n1")),
            Code::Unauthenticated,
        ),
        (
            "oracle token",
            None,
            Some(ORACLE.into()),
            Code::Unauthenticated,
        ),
        (
            "another secret",
            Some(other_secret),
            None,
            Code::Unauthenticated,
        ),
        ("node n2", Some(node("n2")), None, Code::PermissionDenied),
        (
            "the gateway",
            Some(credential(Principal::Gateway)),
            None,
            Code::PermissionDenied,
        ),
    ];
    for (what, cred, bearer, code) in cases {
        let mut stake = stake_req("n1", 5, cred.as_ref());
        let mut unstake = unstake_req("n1", 5, cred.as_ref());
        if let Some(token) = &bearer {
            attach_bearer(&mut stake, token);
            attach_bearer(&mut unstake, token);
        }
        let err = client.stake(stake).await.expect_err("refused");
        assert_eq!(err.code(), code, "stake with {what}: {err:?}");
        let err = client.unstake(unstake).await.expect_err("refused");
        assert_eq!(err.code(), code, "unstake with {what}: {err:?}");
    }
    let garbage = {
        let mut req = stake_req("n1", 5, None);
        req.metadata_mut()
            .insert("x-concord-credential", "garbage".parse().expect("ascii"));
        req
    };
    let err = client.stake(garbage).await.expect_err("refused");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // Nothing was written for n1 by the refused calls.
    assert_eq!(account(&mut client, "n1").await, None);
    assert_eq!(head_seq(&mut client).await, 0);

    let reply = client
        .stake(stake_req("n1", 5, Some(&n1)))
        .await
        .expect("own credential")
        .into_inner();
    let opened = reply.account.expect("account");
    assert_eq!((opened.stake, opened.trust, opened.ejected), (5, 0.5, true));
    let kinds: Vec<_> = reply.events.iter().map(|e| e.kind()).collect();
    // The first call opens the account with what was staked: 5 is below the minimum.
    assert_eq!(kinds, vec![pb::EventKind::Stake, pb::EventKind::Eject]);
    server.stop().await;
}

/// Attack (impostor): with node-2's valid credential, a Stake or Unstake for node-1 is
/// PERMISSION_DENIED naming both principals, and node-1's account is untouched.
#[tokio::test]
async fn impostor_cannot_move_another_nodes_stake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestStaking::start(&db_path(&dir)).await;
    let mut client = server.client();
    for id in ["node-1", "node-2"] {
        client
            .stake(stake_req(id, 1000, Some(&node(id))))
            .await
            .expect("own stake");
    }
    let before = account(&mut client, "node-1").await;
    let seq = head_seq(&mut client).await;
    let impostor = node("node-2");
    let err = client
        .unstake(unstake_req("node-1", 1000, Some(&impostor)))
        .await
        .expect_err("impostor unstake");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("node/node-2") && err.message().contains("node/node-1"),
        "{err:?}"
    );
    let err = client
        .stake(stake_req("node-1", 1, Some(&impostor)))
        .await
        .expect_err("impostor stake");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(account(&mut client, "node-1").await, before);
    assert_eq!(head_seq(&mut client).await, seq, "nothing written");
    server.stop().await;
}

/// Attack (public secret): a credential computed from the old public development secret
/// ("concord-dev-cluster-secret"), sent as the credential header or the old bearer
/// token, is UNAUTHENTICATED by an aggregator with a real secret; node-5 keeps its stake.
#[tokio::test]
async fn credential_from_the_public_dev_secret_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestStaking::start(&db_path(&dir)).await;
    let mut client = server.client();
    client
        .stake(stake_req("node-5", 1000, Some(&node("node-5"))))
        .await
        .expect("own stake");
    let before = account(&mut client, "node-5").await;
    let forged = ClusterSecret::new(OLD_DEV_SECRET)
        .expect("secret")
        .issue(Principal::Node("node-5".into()));
    let mut unstake = unstake_req("node-5", 1000, Some(&forged));
    attach_bearer(&mut unstake, forged.token());
    let err = client.unstake(unstake).await.expect_err("forged");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = client
        .stake(stake_req("node-5", 1, Some(&forged)))
        .await
        .expect_err("forged");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(account(&mut client, "node-5").await, before);
    server.stop().await;
}

/// `only_if_new` (a node's start-up stake) opens an account once: a second call, as after
/// a restart or a retry, is ALREADY_EXISTS and writes nothing.
#[tokio::test]
async fn start_up_stake_is_paid_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestStaking::start(&db_path(&dir)).await;
    let mut client = server.client();
    let open = || {
        as_node(
            StakeRequest {
                node_id: "node-1".into(),
                amount: 1000,
                only_if_new: true,
            },
            Some(&node("node-1")),
        )
    };
    let reply = client.stake(open()).await.expect("open").into_inner();
    assert_eq!(reply.account.expect("account").stake, 1000);
    let err = client.stake(open()).await.expect_err("second");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(
        account(&mut client, "node-1").await.expect("account").stake,
        1000
    );
    assert_eq!(head_seq(&mut client).await, 1);
    server.stop().await;
}

/// A node at zero cannot go negative; the refusal is FAILED_PRECONDITION and bad amounts
/// are INVALID_ARGUMENT.
#[tokio::test]
async fn unstake_never_goes_negative() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestStaking::start(&db_path(&dir)).await;
    let mut client = server.client();
    let cred = node("n1");
    client
        .stake(stake_req("n1", 1000, Some(&cred)))
        .await
        .expect("open");
    let reply = client
        .unstake(unstake_req("n1", 1000, Some(&cred)))
        .await
        .expect("to zero")
        .into_inner();
    let account = reply.account.expect("account");
    assert_eq!((account.stake, account.ejected), (0, true));
    let kinds: Vec<_> = reply.events.iter().map(|e| e.kind()).collect();
    assert_eq!(kinds, vec![pb::EventKind::Unstake, pb::EventKind::Eject]);
    let err = client
        .unstake(unstake_req("n1", 1, Some(&cred)))
        .await
        .expect_err("negative");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = client
        .unstake(unstake_req("n1", 0, Some(&cred)))
        .await
        .expect_err("zero");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .stake(stake_req("n1", 0, Some(&cred)))
        .await
        .expect_err("zero");
    assert_eq!(err.code(), Code::InvalidArgument);
    // Staking back above the minimum rejoins.
    let reply = client
        .stake(stake_req("n1", 100, Some(&cred)))
        .await
        .expect("rejoin")
        .into_inner();
    let kinds: Vec<_> = reply.events.iter().map(|e| e.kind()).collect();
    assert_eq!(kinds, vec![pb::EventKind::Stake, pb::EventKind::Rejoin]);
    assert!(!reply.account.expect("account").ejected);
    server.stop().await;
}

/// Large stakes never overflow silently: above the per-call maximum is INVALID_ARGUMENT,
/// past u64::MAX for an account or the total is FAILED_PRECONDITION, a refused Stake
/// writes no event (not even a new account), and the totals that ListAccounts and
/// VerifyLedger report are exact (the review saw them capped at u64::MAX). The balance
/// near the ceiling comes from a legacy ledger (a `grant`), which also shows that old
/// ledgers are still served and verified.
#[tokio::test]
async fn large_stakes_are_refused_and_totals_stay_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    // n1 was granted 5 tokens below the ceiling, so overflow is one call away.
    let near = u64::MAX - 5;
    write_legacy_ledger(&db_path(&dir), &[("n1".into(), near)]);
    let server = TestStaking::start(&db_path(&dir)).await;
    let mut client = server.client();
    let (n1, n2) = (node("n1"), node("n2"));
    let verify = |mut client: StakingClient<Channel>| async move {
        client
            .verify_ledger(VerifyLedgerRequest {})
            .await
            .expect("verify")
            .into_inner()
    };
    // (node, credential, amount, expected code, message fragment)
    let refused = [
        ("n1", &n1, u64::MAX, Code::InvalidArgument, "per call"),
        (
            "n1",
            &n1,
            1_000_000_000_000_001,
            Code::InvalidArgument,
            "per call",
        ),
        ("n1", &n1, 6, Code::FailedPrecondition, "largest balance"),
        // n2's first stake would take the total past u64::MAX: no account is opened.
        ("n2", &n2, 6, Code::FailedPrecondition, "total"),
    ];
    for (node, cred, amount, code, fragment) in refused {
        let err = client
            .stake(stake_req(node, amount, Some(cred)))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), code, "{node} {amount}: {err:?}");
        assert!(err.message().contains(fragment), "{amount}: {err:?}");
        let report = verify(client.clone()).await;
        assert!(report.ok, "{report:?}");
        assert_eq!(report.events_checked, 1, "nothing written: {report:?}");
    }
    assert_eq!(account(&mut client, "n2").await, None);
    // Exactly up to the ceiling is fine, and reported exactly.
    let reply = client
        .stake(stake_req("n1", 5, Some(&n1)))
        .await
        .expect("fits")
        .into_inner();
    assert_eq!(reply.account.expect("account").stake, u64::MAX);
    let list = client
        .list_accounts(ListAccountsRequest {})
        .await
        .expect("list")
        .into_inner();
    let totals = list.totals.expect("totals");
    assert_eq!(list.accounts.len(), 1);
    assert_eq!(
        (
            totals.staked,
            totals.minted,
            totals.deposited,
            totals.events
        ),
        (u64::MAX, near, 5, 2)
    );
    let report = verify(client.clone()).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, 2);
    assert_eq!(report.totals.expect("totals"), totals);
    server.stop().await;
}

/// ReportOutcome: oracle only; concurrent reports of one request count once; a repeat
/// says already_reported; unknown ids are NOT_FOUND.
#[tokio::test]
async fn report_outcome_scores_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestStaking::start(&db_path(&dir)).await;
    server.record("req-1", &[("good", 2), ("bad", 0), ("good2", 2)]);
    let mut client = server.client();

    for (token, code) in [
        (None, Code::Unauthenticated),
        (Some("nope"), Code::Unauthenticated),
    ] {
        let err = client
            .report_outcome(report_req("req-1", 2, token))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), code, "{token:?}");
    }
    // A node that proved who it is still may not report outcomes.
    let err = client
        .report_outcome(as_node(
            ReportOutcomeRequest {
                request_id: "req-1".into(),
                true_label: 2,
            },
            Some(&node("good")),
        ))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let mut c = server.client();
            tokio::spawn(
                async move { c.report_outcome(report_req("req-1", 2, Some(ORACLE))).await },
            )
        })
        .collect();
    let mut scored = Vec::new();
    let mut already = 0;
    for t in tasks {
        let reply = t.await.expect("join").expect("report").into_inner();
        if reply.already_reported {
            assert!(reply.scores.is_empty());
            already += 1;
        } else {
            scored.push(reply);
        }
    }
    assert_eq!((scored.len(), already), (1, 7));
    let reply = &scored[0];
    assert!(reply.consensus_correct);
    let got: Vec<_> = reply
        .scores
        .iter()
        .map(|s| {
            (
                s.node_id.as_str(),
                s.predicted_label,
                s.correct,
                s.stake_delta,
                s.stake_after,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("good", 2, true, 10, 1010),
            // A new account's first mistake costs the base rate, 2 % (rule v2).
            ("bad", 0, false, -20, 980),
            ("good2", 2, true, 10, 1010)
        ]
    );

    let again = client
        .report_outcome(report_req("req-1", 0, Some(ORACLE)))
        .await
        .expect("repeat")
        .into_inner();
    assert!(again.already_reported && again.scores.is_empty());
    let bad = client
        .get_account(GetAccountRequest {
            node_id: "bad".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .account
        .expect("account");
    assert_eq!((bad.stake, bad.wrong, bad.correct), (980, 1, 0));

    let err = client
        .report_outcome(report_req("no-such-request", 0, Some(ORACLE)))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    server.record("req-2", &[("good", 1)]);
    let err = client
        .report_outcome(report_req("req-2", 7, Some(ORACLE)))
        .await
        .expect_err("label");
    assert_eq!(err.code(), Code::InvalidArgument);
    server.stop().await;
}

/// ListEvents pages in order; WatchEvents replays history and then follows live events.
#[tokio::test]
async fn list_and_watch_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestStaking::start(&db_path(&dir)).await;
    let mut client = server.client();
    for n in ["a", "b", "c"] {
        client
            .stake(stake_req(n, 1, Some(&node(n))))
            .await
            .expect("stake");
    }
    // 6 events: stake+eject for each node (1 token is below the minimum).
    let mut seqs = Vec::new();
    let mut after = 0;
    loop {
        let page = client
            .list_events(ListEventsRequest {
                after_seq: after,
                page_size: 4,
                node_id: String::new(),
            })
            .await
            .expect("page")
            .into_inner();
        seqs.extend(page.events.iter().map(|e| e.seq));
        if page.next_after_seq == 0 {
            break;
        }
        after = page.next_after_seq;
    }
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    let only_b = client
        .list_events(ListEventsRequest {
            after_seq: 0,
            page_size: 0,
            node_id: "b".into(),
        })
        .await
        .expect("page")
        .into_inner();
    assert_eq!(
        only_b.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![3, 4]
    );
    let err = client
        .list_events(ListEventsRequest {
            after_seq: 0,
            page_size: 5000,
            node_id: String::new(),
        })
        .await
        .expect_err("too big");
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut watch = client
        .watch_events(WatchEventsRequest { after_seq: 4 })
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(next_event(&mut watch).await.seq, 5);
    assert_eq!(next_event(&mut watch).await.seq, 6);
    let mut writer = server.client();
    writer
        .stake(stake_req("a", 2, Some(&node("a"))))
        .await
        .expect("stake");
    let live = next_event(&mut watch).await;
    assert_eq!(
        (live.seq, live.kind(), live.amount),
        (7, pb::EventKind::Stake, 2)
    );
    drop(watch);
    server.stop().await;
}

/// A watcher that falls behind the live feed (1500 events in one burst, more than the
/// broadcast buffer) still gets every event exactly once, in order.
#[tokio::test]
async fn lagging_watcher_sees_every_event_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 1500 accounts already open (legacy grants: one fast batch instead of 1500 flushes).
    let ids: Vec<String> = (0..1500).map(|i| format!("node-{i:04}")).collect();
    let grants: Vec<(String, u64)> = ids.iter().map(|id| (id.clone(), 1000)).collect();
    write_legacy_ledger(&db_path(&dir), &grants);
    let server = TestStaking::start(&db_path(&dir)).await;
    let mut client = server.client();
    let mut watch = client
        .watch_events(WatchEventsRequest { after_seq: 1500 })
        .await
        .expect("watch")
        .into_inner();
    // Make sure the watcher is live before the burst.
    server.book.ledger().stake("first", 1000).expect("first");
    assert_eq!(next_event(&mut watch).await.seq, 1501);
    // One scoring of all 1500 nodes: 1500 events in one commit.
    let outcomes: Vec<(String, bool)> = ids.iter().map(|id| (id.clone(), true)).collect();
    server
        .book
        .ledger()
        .score("burst", &outcomes)
        .expect("burst");
    for want in 1502..=3001 {
        assert_eq!(next_event(&mut watch).await.seq, want);
    }
    drop(watch);
    drop(client);
    server.stop().await;
}

/// The next watched event, within 5 s.
async fn next_event(watch: &mut tonic::Streaming<pb::WatchEventsResponse>) -> pb::Event {
    tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("event in time")
        .expect("stream ok")
        .expect("stream open")
        .event
        .expect("event")
}

/// Balances, the chain and the scored marker survive a restart (the sled db reopened).
#[tokio::test]
async fn stakes_survive_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestStaking::start(&db_path(&dir)).await;
    server.record("r", &[("a", 1), ("b", 0)]);
    let mut client = server.client();
    client
        .report_outcome(report_req("r", 1, Some(ORACLE)))
        .await
        .expect("report");
    client
        .stake(stake_req("b", 50, Some(&node("b"))))
        .await
        .expect("stake");
    let before = client
        .list_accounts(ListAccountsRequest {})
        .await
        .expect("list")
        .into_inner();
    drop(client);
    server.stop().await;

    let server = TestStaking::start(&db_path(&dir)).await;
    let mut client = server.client();
    let after = client
        .list_accounts(ListAccountsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(after, before);
    let stakes: Vec<_> = after
        .accounts
        .iter()
        .map(|a| (a.node_id.as_str(), a.stake))
        .collect();
    // b: 1000, its first mistake at the 2 % base rate (rule v2), then +50.
    assert_eq!(stakes, vec![("a", 1010), ("b", 1030)]);
    let totals = after.totals.expect("totals");
    assert_eq!(
        totals.staked as i128,
        totals.minted as i128 + totals.deposited as i128
            - totals.withdrawn as i128
            - totals.burned as i128
    );
    // The request memory is gone, but the durable marker still refuses a second score.
    let again = client
        .report_outcome(report_req("r", 1, Some(ORACLE)))
        .await
        .expect("repeat")
        .into_inner();
    assert!(again.already_reported);
    let verify = client
        .verify_ledger(VerifyLedgerRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(verify.ok, "{}", verify.problem);
    assert_eq!(verify.events_checked, 5);
    drop(client);
    server.stop().await;
}

/// An event edited on disk is caught by VerifyLedger, which names the first bad seq.
#[tokio::test]
async fn tampered_event_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestStaking::start(&db_path(&dir)).await;
    server.record("r", &[("a", 1), ("b", 0)]);
    let mut client = server.client();
    client
        .report_outcome(report_req("r", 1, Some(ORACLE)))
        .await
        .expect("report");
    let verify = client
        .verify_ledger(VerifyLedgerRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(verify.ok && verify.first_bad_seq == 0 && verify.problem.is_empty());
    assert_eq!(verify.events_checked, 4);
    drop(client);
    server.stop().await;

    // Give node b's slash (event 4) back to it by editing the stored record.
    {
        let db = sled::open(db_path(&dir)).expect("open raw");
        let events = db.open_tree("events").expect("tree");
        let key = 4u64.to_be_bytes();
        let raw = events.get(key).expect("get").expect("event 4");
        let mut event = record::decode_event(&raw).expect("decode");
        assert_eq!(event.kind, EventKind::Slash);
        event.amount = 0;
        event.stake_after = 1000;
        events
            .insert(key, record::encode_event(&event).expect("encode"))
            .expect("tamper");
        db.flush().expect("flush");
    }

    let server = TestStaking::start(&db_path(&dir)).await;
    let mut client = server.client();
    let verify = client
        .verify_ledger(VerifyLedgerRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(!verify.ok);
    assert_eq!(verify.first_bad_seq, 4, "{}", verify.problem);
    assert!(verify.problem.contains("hash"), "{}", verify.problem);
    drop(client);
    server.stop().await;
}

/// The request memory is bounded: an evicted request id is NOT_FOUND.
#[tokio::test]
async fn evicted_request_is_not_found() {
    concord::telemetry::init_for_tests();
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = concord_aggregator::ledger::Ledger::open(db_path(&dir), ScoringParams::default())
        .expect("ledger");
    let book = StakeBook::new(ledger, RecentRequests::new(2, DEFAULT_TTL));
    let answers = |id: &str| {
        vec![NodeAnswer {
            node_id: id.into(),
            probabilities: vec![1.0, 0.0],
            trust: 0.5,
            stake: 1000,
            ejected: false,
        }]
    };
    for r in ["r1", "r2", "r3"] {
        book.conclude(r, Policy::Mean, &answers("n"))
            .expect("conclude");
    }
    let err = book
        .report_outcome("r1".into(), 0)
        .await
        .expect_err("evicted");
    let status = concord::error::to_status(&err);
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(book.report_outcome("r3".into(), 0).await.is_ok());
}

/// A 3 MB node id or request id is refused as INVALID_ARGUMENT with a short message (a
/// client with a 16 KB header limit must be able to read it), and an unknown request id
/// within the limit is quoted in a bounded form.
#[tokio::test]
async fn huge_ids_get_short_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestStaking::start(&db_path(&dir)).await;
    let mut client = server.client();
    let huge = "x".repeat(3 * 1024 * 1024);
    let short = |status: &tonic::Status| {
        assert!(
            status.message().len() < 300,
            "{} bytes: {:.200}",
            status.message().len(),
            status.message()
        );
    };

    let err = client
        .get_account(GetAccountRequest {
            node_id: huge.clone(),
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    short(&err);
    let err = client
        .stake(stake_req(&huge, 1, None))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    short(&err);
    let err = client
        .list_events(ListEventsRequest {
            after_seq: 0,
            page_size: 0,
            node_id: huge.clone(),
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    short(&err);
    let err = client
        .report_outcome(report_req(&huge, 0, Some(ORACLE)))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    short(&err);

    let long_unknown = "r".repeat(concord_aggregator::ledger::MAX_REQUEST_ID_BYTES);
    let err = client
        .report_outcome(report_req(&long_unknown, 0, Some(ORACLE)))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    short(&err);
    assert!(err.message().contains("… (128 bytes)"), "{}", err.message());
    drop(client);
    server.stop().await;
}

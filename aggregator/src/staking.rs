//! The `concord.stake.v1.Staking` gRPC service: converts requests, checks credentials,
//! calls the ledger ([`crate::ledger`]) and the outcome memory ([`crate::outcomes`]) and
//! converts replies (through [`crate::convert`]). No ledger logic lives here.
//!
//! Authentication:
//! - `Stake`/`Unstake` need the cluster credential of the node named in the request
//!   (metadata `x-concord-credential: node/<id>:<hex>`, checked by
//!   [`concord::identity::authenticate`] against the cluster secret). No credential, a
//!   malformed one or one that does not verify → `UNAUTHENTICATED`; a valid credential of
//!   another principal (another node, the gateway, …) → `PERMISSION_DENIED`, naming both.
//!   Staking is the only way a node gets an account: nothing is minted for a node id the
//!   ledger has never seen, so whoever registers new node ids gains no stake and no weight
//!   (see [`crate::ledger`]). `only_if_new` makes a node's start-up stake idempotent.
//! - `ReportOutcome` needs the oracle token (`authorization: Bearer <token>`): none or a
//!   wrong one → `UNAUTHENTICATED`, unless the caller proved another identity with a valid
//!   credential → `PERMISSION_DENIED`.
//! - Reads (`GetAccount`, `ListAccounts`, `ListEvents`, `WatchEvents`, `VerifyLedger`)
//!   are public.
//!
//! Error mapping (classified once in [`crate::error`], converted by
//! [`concord::error::to_status`]): invalid input →
//! `INVALID_ARGUMENT` (including a stake above
//! [`MAX_STAKE_PER_CALL`](crate::ledger::MAX_STAKE_PER_CALL) per call, wrong in any
//! state); unknown account, unknown or expired request → `NOT_FOUND`; an `only_if_new`
//! stake for an existing account → `ALREADY_EXISTS`; unstake above the
//! balance, or a stake that would push the account, a ledger total or the supply past
//! `u64::MAX` → `FAILED_PRECONDITION` (both depend on the ledger's current state, not
//! only on the request, and nothing is written); storage failure or corrupt record →
//! `INTERNAL` (logged). Totals on the wire are exact: the ledger keeps them within
//! `uint64`, and a stored ledger whose sums do not fit is an `INTERNAL` error on
//! `ListAccounts`, never a capped figure. A repeated `ReportOutcome` is not an error: it returns
//! `already_reported = true` and changes nothing.
//!
//! `WatchEvents` replays the log after `after_seq`, then follows live events. A task feeds
//! a bounded channel ([`WATCH_CHANNEL_CAPACITY`]); when the client is slow the task waits
//! (backpressure), and when it falls more than [`crate::ledger::EVENT_CHANNEL_CAPACITY`]
//! events behind the live feed it re-reads the missed events from the log, so a watcher
//! sees every event exactly once, in order. The task ends when the client goes away or
//! the server shuts down: it belongs to the server's [`Tasks`], which cancels it and
//! joins it before `serve` returns.

use std::future::Future;
use std::pin::Pin;

use concord::auth::AuthError;
use concord::error::{quote, to_status, Classify};
use concord::identity::{authenticate_metadata, ClusterSecret, Principal, Verifier};
use concord::pb::stake::v1 as pb;
use concord::pb::stake::v1::staking_server::{Staking, StakingServer};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::book::{blocking, StakeBook};
use crate::convert::{account_to_pb, event_to_pb, report_to_pb, totals_to_pb, verify_to_pb};
use crate::ledger::{check_node_id, check_request_id, Event, LedgerError};
use crate::outcomes::ReportResult;
use crate::tasks::Tasks;

/// Events buffered per watcher before the feeding task waits for the client.
pub const WATCH_CHANNEL_CAPACITY: usize = 64;
/// Page size of `ListEvents` when the request says 0.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest `ListEvents` page.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Secrets the service checks tokens against.
#[derive(Clone)]
pub struct StakingAuth {
    /// Key of every cluster credential; `Stake`/`Unstake` need the node's own.
    pub cluster_secret: ClusterSecret,
    /// Token `ReportOutcome` requires.
    pub oracle_token: String,
}

impl std::fmt::Debug for StakingAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StakingAuth { .. }")
    }
}

/// Why a call was refused (before any ledger work).
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// No token, or a token that is nobody's.
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// A valid identity that may not do this.
    #[error("permission denied: {0}")]
    Denied(String),
}

fn status<E: Classify>(e: E) -> Status {
    to_status(&e)
}

/// The Staking service. Clone-free: tonic wraps it in an `Arc`.
#[derive(Debug)]
pub struct StakingService {
    book: StakeBook,
    verifier: Verifier,
    oracle_token: String,
    tasks: Tasks,
}

impl StakingService {
    /// Serves `book`; each `WatchEvents` feeder is one of `tasks` and ends when they are
    /// cancelled.
    pub fn new(book: StakeBook, auth: StakingAuth, tasks: Tasks) -> Self {
        Self {
            book,
            verifier: Verifier::Secret(auth.cluster_secret),
            oracle_token: auth.oracle_token,
            tasks,
        }
    }

    /// Wrapped for `Router::add_service`.
    pub fn into_server(self) -> StakingServer<Self> {
        StakingServer::new(self)
    }

    /// `Ok` if the request proves `node_id`'s own principal with its cluster credential.
    fn authorize_node(&self, metadata: &MetadataMap, node_id: &str) -> Result<(), AccessError> {
        let principal = authenticate_metadata(metadata, &self.verifier)?;
        match principal.node_id() {
            Some(id) if id == node_id => Ok(()),
            _ => Err(AccessError::Denied(format!(
                "{} may not stake or unstake for {}",
                principal,
                quote(&Principal::Node(node_id.to_owned()).name())
            ))),
        }
    }

    /// `Ok` if the bearer token is the oracle token.
    fn authorize_oracle(&self, metadata: &MetadataMap) -> Result<(), AccessError> {
        match concord::auth::require_token(metadata, &self.oracle_token) {
            Ok(()) => Ok(()),
            // A caller who proved another identity is known but not allowed.
            Err(e) => match authenticate_metadata(metadata, &self.verifier) {
                Ok(principal) => Err(AccessError::Denied(format!(
                    "{principal} may not report outcomes; the oracle token is required"
                ))),
                Err(_) => Err(e.into()),
            },
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Staking for StakingService {
    #[tracing::instrument(skip_all, fields(node = %quote(&request.get_ref().node_id), amount = request.get_ref().amount))]
    async fn stake(
        &self,
        request: Request<pb::StakeRequest>,
    ) -> Result<Response<pb::StakeResponse>, Status> {
        check_node_id(&request.get_ref().node_id).map_err(status)?;
        self.authorize_node(request.metadata(), &request.get_ref().node_id)
            .map_err(status)?;
        let pb::StakeRequest {
            node_id,
            amount,
            only_if_new,
        } = request.into_inner();
        let ledger = self.book.ledger().clone();
        let change = blocking(move || match only_if_new {
            true => ledger.open_with_stake(&node_id, amount),
            false => ledger.stake(&node_id, amount),
        })
        .await
        .map_err(status)?;
        tracing::info!(node = %change.account.node_id, amount, stake = change.account.stake, "staked");
        Ok(Response::new(pb::StakeResponse {
            account: Some(account_to_pb(&change.account)),
            events: change.events.iter().map(event_to_pb).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(node = %quote(&request.get_ref().node_id), amount = request.get_ref().amount))]
    async fn unstake(
        &self,
        request: Request<pb::UnstakeRequest>,
    ) -> Result<Response<pb::UnstakeResponse>, Status> {
        check_node_id(&request.get_ref().node_id).map_err(status)?;
        self.authorize_node(request.metadata(), &request.get_ref().node_id)
            .map_err(status)?;
        let pb::UnstakeRequest { node_id, amount } = request.into_inner();
        let ledger = self.book.ledger().clone();
        let change = blocking(move || ledger.unstake(&node_id, amount))
            .await
            .map_err(status)?;
        tracing::info!(node = %change.account.node_id, amount, stake = change.account.stake, "unstaked");
        Ok(Response::new(pb::UnstakeResponse {
            account: Some(account_to_pb(&change.account)),
            events: change.events.iter().map(event_to_pb).collect(),
        }))
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        let node_id = request.into_inner().node_id;
        check_node_id(&node_id).map_err(status)?;
        let ledger = self.book.ledger().clone();
        let account = blocking(move || {
            ledger
                .account(&node_id)?
                .ok_or(LedgerError::NotFound(node_id))
        })
        .await
        .map_err(status)?;
        Ok(Response::new(pb::GetAccountResponse {
            account: Some(account_to_pb(&account)),
        }))
    }

    async fn list_accounts(
        &self,
        _request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let ledger = self.book.ledger().clone();
        let (accounts, head) =
            blocking(move || Ok::<_, LedgerError>((ledger.list_accounts()?, ledger.head()?)))
                .await
                .map_err(status)?;
        let staked = accounts.iter().map(|a| u128::from(a.stake)).sum();
        let totals = totals_to_pb(&head.totals, staked, head.seq).map_err(status)?;
        Ok(Response::new(pb::ListAccountsResponse {
            accounts: accounts.iter().map(account_to_pb).collect(),
            totals: Some(totals),
        }))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let pb::ListEventsRequest {
            after_seq,
            page_size,
            node_id,
        } = request.into_inner();
        let page_size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(status(LedgerError::InvalidArgument(format!(
                    "page_size must be 1..={MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"
                ))))
            }
            n => n,
        };
        if !node_id.is_empty() {
            check_node_id(&node_id).map_err(status)?;
        }
        let ledger = self.book.ledger().clone();
        let (events, next) = blocking(move || {
            let filter = (!node_id.is_empty()).then_some(node_id.as_str());
            ledger.events_page(after_seq, page_size as usize, filter)
        })
        .await
        .map_err(status)?;
        Ok(Response::new(pb::ListEventsResponse {
            events: events.iter().map(event_to_pb).collect(),
            next_after_seq: next.unwrap_or(0),
        }))
    }

    type WatchEventsStream = WatchStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let after_seq = request.into_inner().after_seq;
        // Subscribe before reading the log so nothing falls between the two.
        let live_rx = self.book.ledger().subscribe();
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL_CAPACITY);
        self.tasks.spawn(feed_watcher(
            self.book.clone(),
            after_seq,
            live_rx,
            tx,
            self.tasks.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[tracing::instrument(skip_all, fields(request_id = %quote(&request.get_ref().request_id), true_label = request.get_ref().true_label))]
    async fn report_outcome(
        &self,
        request: Request<pb::ReportOutcomeRequest>,
    ) -> Result<Response<pb::ReportOutcomeResponse>, Status> {
        self.authorize_oracle(request.metadata()).map_err(status)?;
        let pb::ReportOutcomeRequest {
            request_id,
            true_label,
        } = request.into_inner();
        check_request_id(&request_id).map_err(status)?;
        let report = self
            .book
            .report_outcome(request_id, true_label)
            .await
            .map_err(status)?;
        if let ReportResult::AlreadyReported { seq } = report.result {
            tracing::info!(seq, "outcome already reported; nothing changed");
        }
        let reply = report_to_pb(&report);
        Ok(Response::new(reply))
    }

    async fn verify_ledger(
        &self,
        _request: Request<pb::VerifyLedgerRequest>,
    ) -> Result<Response<pb::VerifyLedgerResponse>, Status> {
        let ledger = self.book.ledger().clone();
        let report = blocking(move || ledger.verify()).await.map_err(status)?;
        if let Some(bad) = &report.first_inconsistency {
            tracing::error!(seq = ?bad.seq, node = ?bad.node_id, problem = %bad, "ledger verification failed");
        }
        Ok(Response::new(verify_to_pb(&report)))
    }
}

/// Replays the log after `after_seq`, then forwards live events; see the module docs.
async fn feed_watcher(
    book: StakeBook,
    mut last: u64,
    mut live_rx: broadcast::Receiver<Event>,
    tx: mpsc::Sender<Result<pb::WatchEventsResponse, Status>>,
    tasks: Tasks,
) {
    const CATCH_UP_PAGE: usize = 256;
    let send = |e: &Event| {
        let tx = tx.clone();
        let msg = pb::WatchEventsResponse {
            event: Some(event_to_pb(e)),
        };
        async move { tx.send(Ok(msg)).await.is_ok() }
    };
    'catch_up: loop {
        // 1. Everything already in the log.
        loop {
            let ledger = book.ledger().clone();
            let page = blocking(move || ledger.events_page(last, CATCH_UP_PAGE, None)).await;
            let (events, next) = match page {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(status(e))).await;
                    return;
                }
            };
            for e in &events {
                if !send(e).await {
                    return;
                }
                last = e.seq;
            }
            if next.is_none() {
                break;
            }
        }
        // 2. Live events; fall back to the log on a gap or lag.
        loop {
            tokio::select! {
                () = tasks.cancelled() => return,
                () = tx.closed() => return,
                received = live_rx.recv() => match received {
                    Ok(e) if e.seq <= last => {}
                    Ok(e) if e.seq == last + 1 => {
                        if !send(&e).await {
                            return;
                        }
                        last = e.seq;
                    }
                    // Concurrent commits can publish out of order: read the gap from the log.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue 'catch_up,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
            if tasks.is_cancelled() {
                return;
            }
        }
    }
}

/// Serves only the Staking service (plus health and reflection) on `listener` until
/// `shutdown` resolves. The aggregator's own `serve` adds [`StakingService`] next to its
/// Predictor instead; this one is for tests and a stand-alone ledger.
pub async fn serve_staking(
    book: StakeBook,
    auth: StakingAuth,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let tasks = Tasks::new();
    let (router, health) =
        concord::grpc::router(&[concord::pb::stake::v1::staking_server::SERVICE_NAME]);
    health.set_serving::<StakingServer<StakingService>>().await;
    let router = router.add_service(StakingService::new(book, auth, tasks.clone()).into_server());
    tracing::info!(addr = ?listener.local_addr().ok(), "staking serving");
    let stop = tasks.clone();
    let served = concord::grpc::serve(router, listener, async move {
        shutdown.await;
        stop.cancel();
    })
    .await;
    tasks.join().await;
    served
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcomes::OutcomeError;
    use crate::policy::PolicyError;
    use tonic::Code;

    /// Every domain error lands on the documented gRPC code.
    #[test]
    fn error_codes() {
        let cases: Vec<(Status, Code)> = vec![
            (
                status(LedgerError::InvalidArgument("x".into())),
                Code::InvalidArgument,
            ),
            (status(LedgerError::NotFound("n".into())), Code::NotFound),
            (
                status(LedgerError::InsufficientStake {
                    node_id: "n".into(),
                    stake: 0,
                    requested: 1,
                }),
                Code::FailedPrecondition,
            ),
            (
                status(LedgerError::WouldOverflow("x".into())),
                Code::FailedPrecondition,
            ),
            (status(LedgerError::Storage("io".into())), Code::Internal),
            (
                status(OutcomeError::UnknownRequest {
                    request_id: "r".into(),
                    capacity: 1,
                }),
                Code::NotFound,
            ),
            (
                status(OutcomeError::Expired {
                    request_id: "r".into(),
                    ttl: std::time::Duration::from_secs(1),
                }),
                Code::NotFound,
            ),
            (
                status(PolicyError::NoEligibleAnswers { answers: 0 }),
                Code::Unavailable,
            ),
            (
                status(AccessError::from(AuthError::Missing)),
                Code::Unauthenticated,
            ),
            (
                status(AccessError::Denied("x".into())),
                Code::PermissionDenied,
            ),
        ];
        for (s, code) in cases {
            assert_eq!(s.code(), code, "{s:?}");
        }
    }
}

//! The node's start-up stake: `concord node --initial-stake N` deposits `N` tokens for the
//! node itself, with its own cluster credential, so it carries weight under the `trust`
//! and `stake` policies. The ledger mints nothing for a node it has never seen; this
//! deposit is how a node joins.
//!
//! Paid once: the `Stake` request says `only_if_new`, so the ledger opens the account with
//! `N` or answers `ALREADY_EXISTS` (an earlier start, or a retry whose reply was lost) and
//! writes nothing. A restarted node therefore never stakes twice, and a node whose account
//! exists (even at stake 0 after slashes) is left alone: topping up is an operator's call.
//!
//! Finding the aggregator: `Resolve("aggregator")` at the registry, first instance.
//! Failure behaviour: while the registry has no aggregator, or the aggregator is
//! unreachable or answers a transient error (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, …), the
//! task retries by [`RETRY`] (100 ms doubling to 5 s) for
//! at most [`GIVE_UP_AFTER`], then logs an error and ends. A refusal that retrying cannot
//! fix (`UNAUTHENTICATED`, `PERMISSION_DENIED`, `INVALID_ARGUMENT`, …) is logged as an
//! error at once and ends the task. The node keeps serving either way (it just has no
//! weight until someone stakes for it). The task stops at shutdown and its owner joins it.

use std::time::Duration;

use concord::identity::Credential;
use concord::pb::registry::v1::{registry_client::RegistryClient, ResolveRequest};
use concord::pb::stake::v1::{staking_client::StakingClient, StakeRequest};
use concord::retry::RetryPolicy;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;

/// Registry service name of the aggregator (which serves `Staking`).
pub const AGGREGATOR_SERVICE: &str = concord::identity::AGGREGATOR_SERVICE;
/// How the stake is retried: 100 ms after the first failure, doubling to 5 s.
pub const RETRY: RetryPolicy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(5));
/// After this long without an answer the node stops trying (and logs an error).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(120);
/// Time limit of one Resolve or Stake call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// What became of the start-up stake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StakeOutcome {
    /// The account was opened with the stake; its balance now.
    Staked(u64),
    /// The node already had an account: nothing paid.
    AlreadyStaked,
    /// The aggregator refused for good (the status's code and message).
    Refused(Code, String),
    /// No answer within [`GIVE_UP_AFTER`].
    GaveUp,
    /// Shutdown came first.
    Stopped,
}

/// One attempt's result: done, or worth another try.
enum Attempt {
    Done(StakeOutcome),
    Retry(String),
}

/// Stakes `amount` for `node_id` once, through the aggregator found at `registry`; see the
/// module doc. Ends when done, refused, given up, or when `stop` is cancelled.
pub async fn stake_at_start(
    registry: &str,
    node_id: &str,
    credential: &Credential,
    amount: u64,
    stop: CancellationToken,
) -> StakeOutcome {
    // Of a registry list, the first: a one-time stake needs no failover between them.
    let first = concord::discovery::registry_addrs(registry)
        .first()
        .copied()
        .unwrap_or(registry);
    let registry = match concord::grpc::lazy_channel(first) {
        Ok(channel) => RegistryClient::new(channel),
        Err(err) => {
            tracing::error!(%err, "bad registry address; the initial stake is not paid");
            return StakeOutcome::GaveUp;
        }
    };
    let give_up_at = tokio::time::Instant::now() + GIVE_UP_AFTER;
    let mut staking: Option<(String, StakingClient<Channel>)> = None;
    let mut backoff = RETRY.backoff();
    loop {
        let attempt = tokio::select! {
            attempt = try_once(registry.clone(), &mut staking, node_id, credential, amount) => attempt,
            () = stop.cancelled() => return StakeOutcome::Stopped,
        };
        let why = match attempt {
            Attempt::Done(outcome) => {
                log(node_id, amount, &outcome);
                return outcome;
            }
            Attempt::Retry(why) => why,
        };
        let delay = backoff.next_delay();
        if tokio::time::Instant::now() + delay > give_up_at {
            tracing::error!(node_id, amount, last_error = %why, "gave up paying the initial stake; the node has no weight under trust and stake until it stakes");
            return StakeOutcome::GaveUp;
        }
        tracing::debug!(node_id, error = %why, ?delay, "initial stake not paid yet; retrying");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return StakeOutcome::Stopped,
        }
    }
}

/// Resolves the aggregator (reusing the channel while its address stays the same) and
/// sends one `Stake(only_if_new)`.
async fn try_once(
    mut registry: RegistryClient<Channel>,
    staking: &mut Option<(String, StakingClient<Channel>)>,
    node_id: &str,
    credential: &Credential,
    amount: u64,
) -> Attempt {
    let mut resolve = tonic::Request::new(ResolveRequest {
        service: AGGREGATOR_SERVICE.to_owned(),
    });
    resolve.set_timeout(CALL_TIMEOUT);
    credential.attach(&mut resolve);
    let address = match registry.resolve(resolve).await {
        Ok(reply) => match reply.into_inner().instances.into_iter().next() {
            Some(instance) => instance.address,
            None => return Attempt::Retry("no aggregator registered yet".into()),
        },
        Err(status) => return Attempt::Retry(format!("registry: {status}")),
    };
    let client = match staking {
        Some((known, client)) if *known == address => client,
        _ => match concord::grpc::lazy_channel(&address) {
            Ok(channel) => &mut staking.insert((address, StakingClient::new(channel))).1,
            Err(err) => return Attempt::Retry(format!("bad aggregator address: {err}")),
        },
    };
    let mut request = tonic::Request::new(StakeRequest {
        node_id: node_id.to_owned(),
        amount,
        only_if_new: true,
    });
    request.set_timeout(CALL_TIMEOUT);
    credential.attach(&mut request);
    match client.stake(request).await {
        Ok(reply) => Attempt::Done(StakeOutcome::Staked(
            reply.into_inner().account.map_or(amount, |a| a.stake),
        )),
        Err(status) if status.code() == Code::AlreadyExists => {
            Attempt::Done(StakeOutcome::AlreadyStaked)
        }
        Err(status) if retryable(status.code()) => Attempt::Retry(format!("aggregator: {status}")),
        Err(status) => Attempt::Done(StakeOutcome::Refused(
            status.code(),
            status.message().to_owned(),
        )),
    }
}

/// Codes that may clear up by themselves (the aggregator starting, overloaded, restarting).
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Cancelled
            | Code::Internal
    )
}

fn log(node_id: &str, amount: u64, outcome: &StakeOutcome) {
    match outcome {
        StakeOutcome::Staked(stake) => {
            tracing::info!(node_id, amount, stake, "initial stake paid")
        }
        StakeOutcome::AlreadyStaked => {
            tracing::info!(
                node_id,
                "stake account exists; initial stake not paid again"
            )
        }
        StakeOutcome::Refused(code, message) => {
            tracing::error!(
                node_id,
                amount,
                ?code,
                message,
                "the aggregator refused the initial stake"
            )
        }
        StakeOutcome::GaveUp | StakeOutcome::Stopped => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Transient codes are retried; refusals that retrying cannot fix are not.
    #[test]
    fn retry_classification() {
        let cases = [
            (Code::Unavailable, true),
            (Code::DeadlineExceeded, true),
            (Code::Internal, true),
            (Code::Unauthenticated, false),
            (Code::PermissionDenied, false),
            (Code::InvalidArgument, false),
            (Code::FailedPrecondition, false),
            (Code::Unimplemented, false),
        ];
        for (code, want) in cases {
            assert_eq!(retryable(code), want, "{code:?}");
        }
    }
}

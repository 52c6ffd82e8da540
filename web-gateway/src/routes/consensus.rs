//! `/api/predict`, `/api/outcomes`, `/api/stakes`, `/api/ledger`: the aggregator's
//! Predictor and Staking services over HTTP.
//!
//! Everything here is safe to repeat, so every call is retried once on another aggregator
//! after `UNAVAILABLE`: predictions and reads change nothing, and the ledger scores an
//! outcome once per request id (a repeat reports `already_reported`). The oracle's
//! `Authorization: Bearer` header is passed through to `ReportOutcome`.

use std::future::Future;

use axum::{extract::State, Json};
use concord::pb::{
    predict::v1::{predictor_client::PredictorClient, PredictRequest, PredictResponse},
    stake::v1::{self as pb, staking_client::StakingClient},
};
use tonic::transport::Channel;

use crate::{
    backends::{Access, CallContext, AGGREGATOR},
    dto::{LedgerQuery, PredictInput},
    error::{Error, ErrorBody},
    extract::{ApiJson, ApiPath, ApiQuery},
    state::AppState,
};

/// Calls the aggregator's Staking service with the retry rule of `access`.
async fn staking_call<T, F, Fut>(state: &AppState, access: Access, mut rpc: F) -> Result<T, Error>
where
    F: FnMut(StakingClient<Channel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let candidates = state.backends.aggregator_candidates();
    state
        .backends
        .call(AGGREGATOR, candidates, access, |channel| {
            rpc(StakingClient::new(channel))
        })
        .await
}

/// Asks the aggregator for a consensus prediction.
async fn predict(
    state: &AppState,
    ctx: &CallContext,
    input: PredictInput,
) -> Result<PredictResponse, Error> {
    let message = PredictRequest::from(input);
    let candidates = state.backends.aggregator_candidates();
    state
        .backends
        .call(AGGREGATOR, candidates, Access::Read, |channel| {
            let request = ctx.request(message.clone());
            async move { PredictorClient::new(channel).predict(request).await }
        })
        .await
}

/// Classifies one flower given as query parameters.
#[utoipa::path(get, path = "/api/predict", tag = "consensus", params(PredictInput),
    responses((status = 200, body = PredictResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn predict_query(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiQuery(input): ApiQuery<PredictInput>,
) -> Result<Json<PredictResponse>, Error> {
    Ok(Json(predict(&state, &ctx, input).await?))
}

/// Classifies one flower given as a JSON body.
#[utoipa::path(post, path = "/api/predict", tag = "consensus", request_body = PredictInput,
    responses((status = 200, body = PredictResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn predict_body(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiJson(input): ApiJson<PredictInput>,
) -> Result<Json<PredictResponse>, Error> {
    Ok(Json(predict(&state, &ctx, input).await?))
}

/// Reports the true label of a consensus request (oracle bearer token passed through).
#[utoipa::path(post, path = "/api/outcomes", tag = "consensus", request_body = pb::ReportOutcomeRequest,
    security(("bearer" = [])),
    responses((status = 200, body = pb::ReportOutcomeResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn report_outcome(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiJson(message): ApiJson<pb::ReportOutcomeRequest>,
) -> Result<Json<pb::ReportOutcomeResponse>, Error> {
    let reply = staking_call(&state, Access::IdempotentWrite, |mut c| {
        let request = ctx.request(message.clone());
        async move { c.report_outcome(request).await }
    })
    .await?;
    Ok(Json(reply))
}

/// Every node's stake and trust, and the ledger totals.
#[utoipa::path(get, path = "/api/stakes", tag = "consensus",
    responses((status = 200, body = pb::ListAccountsResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn list_stakes(
    State(state): State<AppState>,
    ctx: CallContext,
) -> Result<Json<pb::ListAccountsResponse>, Error> {
    let reply = staking_call(&state, Access::Read, |mut c| {
        let request = ctx.request(pb::ListAccountsRequest {});
        async move { c.list_accounts(request).await }
    })
    .await?;
    Ok(Json(reply))
}

/// One node's stake and trust.
#[utoipa::path(get, path = "/api/stakes/{node_id}", tag = "consensus",
    params(("node_id" = String, Path, description = "Node id")),
    responses((status = 200, body = pb::Account), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn get_stake(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiPath(node_id): ApiPath<String>,
) -> Result<Json<pb::Account>, Error> {
    let message = pb::GetAccountRequest { node_id };
    let reply = staking_call(&state, Access::Read, |mut c| {
        let request = ctx.request(message.clone());
        async move { c.get_account(request).await }
    })
    .await?;
    let account = reply.account.ok_or_else(|| {
        Error::Backend(tonic::Status::internal("aggregator reply without account"))
    })?;
    Ok(Json(account))
}

/// One page of the hash-chained ledger, in sequence order.
#[utoipa::path(get, path = "/api/ledger/events", tag = "consensus", params(LedgerQuery),
    responses((status = 200, body = pb::ListEventsResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn list_ledger_events(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiQuery(query): ApiQuery<LedgerQuery>,
) -> Result<Json<pb::ListEventsResponse>, Error> {
    let message = pb::ListEventsRequest {
        after_seq: query.after_seq,
        page_size: query.page_size,
        node_id: query.node_id,
    };
    let reply = staking_call(&state, Access::Read, |mut c| {
        let request = ctx.request(message.clone());
        async move { c.list_events(request).await }
    })
    .await?;
    Ok(Json(reply))
}

/// Recomputes the ledger's hash chain and balances.
#[utoipa::path(get, path = "/api/ledger/verify", tag = "consensus",
    responses((status = 200, body = pb::VerifyLedgerResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn verify_ledger(
    State(state): State<AppState>,
    ctx: CallContext,
) -> Result<Json<pb::VerifyLedgerResponse>, Error> {
    let reply = staking_call(&state, Access::Read, |mut c| {
        let request = ctx.request(pb::VerifyLedgerRequest {});
        async move { c.verify_ledger(request).await }
    })
    .await?;
    Ok(Json(reply))
}

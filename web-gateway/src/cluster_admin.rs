//! `/api/admin/cluster…`: the browser's live controls (kill, freeze/thaw, stop/start a
//! process, turn a node liar and back), proxied to `concord up`'s supervisor admin API.
//!
//! Why a proxy: the page can only talk to the gateway (same origin, the CSP allows
//! nothing else), and only the supervisor knows the processes. The gateway holds no
//! token: it forwards the browser's `Authorization: Bearer <admin token>` and the
//! supervisor checks it. Without `--supervisor-addr` (a gateway not started by
//! `concord up`) these routes answer 503 saying so.
//!
//! The supervisor's JSON is parsed into this module's own types (the contract in
//! `concord up`'s `up_admin`), so the OpenAPI document describes it and a malformed answer
//! is an error here rather than in the browser. Its statuses become gRPC codes, which
//! [`crate::error`] maps to HTTP like every other backend's.

use std::time::Duration;

use axum::{
    body::Bytes,
    extract::State,
    http::{header::AUTHORIZATION, HeaderMap, StatusCode},
    Json,
};
use serde::{Deserialize, Serialize};
use tonic::{Code, Status};
use utoipa::ToSchema;

use crate::{
    error::{Error, ErrorBody},
    extract::ApiPath,
    state::AppState,
};

/// The supervisor admin API's address and an HTTP client for it.
#[derive(Clone, Debug)]
pub struct SupervisorClient {
    base: String,
    http: reqwest::Client,
}

impl SupervisorClient {
    /// A client for the API at `addr` (`host:port`); each call gets `timeout`.
    pub fn new(addr: &str, timeout: Duration) -> Result<Self, Error> {
        let addr = addr.trim();
        if addr.is_empty() {
            return Err(Error::InvalidConfig("supervisor_addr is empty".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            // Loopback to the launcher: never through an HTTP proxy from the environment.
            .no_proxy()
            .build()
            .map_err(|err| Error::InvalidConfig(format!("supervisor client: {err}")))?;
        Ok(Self {
            base: format!("http://{addr}"),
            http,
        })
    }
}

/// The processes `concord up` supervises.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SupervisedChildren {
    /// Every child, in start order.
    pub children: Vec<SupervisedChild>,
}

/// One supervised process.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SupervisedChild {
    /// Name, e.g. `node-2`, `shop-1`.
    pub name: String,
    /// Role: registry, node, aggregator, shop, gateway, etcd.
    pub role: String,
    /// running, starting, backoff, stopped, frozen or errored.
    pub state: String,
    /// Process id while it runs.
    pub pid: Option<u32>,
    /// Address it announced.
    pub addr: Option<String>,
    /// Times the supervisor restarted it.
    pub restarts: u32,
    /// Nodes only: the behaviour it runs with (honest, inverted, random, `slow:<ms>`, …).
    pub behaviour: Option<String>,
}

/// Body of the `behaviour` action.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BehaviourChange {
    /// Any value `concord node --behaviour` accepts; `honest` turns a liar back.
    pub behaviour: String,
}

/// The supervisor's error body.
#[derive(Debug, Deserialize)]
struct SupervisorError {
    error: String,
}

/// Every process `concord up` supervises, with its state, pid and restarts.
#[utoipa::path(get, path = "/api/admin/cluster", tag = "cluster",
    security(("bearer" = [])),
    responses((status = 200, body = SupervisedChildren), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn list_children(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<SupervisedChildren>, Error> {
    let supervisor = supervisor(&state)?;
    let request = supervisor
        .http
        .get(format!("{}/v1/children", supervisor.base));
    Ok(Json(send(request, &headers).await?))
}

/// Gives a process an order: `kill` (SIGKILL; restarted as after a crash), `freeze` /
/// `thaw` (SIGSTOP / SIGCONT), `stop` / `start` (held down until started), or
/// `behaviour` (a node restarts with the body's behaviour).
#[utoipa::path(post, path = "/api/admin/cluster/{child}/{action}", tag = "cluster",
    security(("bearer" = [])),
    params(("child" = String, Path, description = "Child name, e.g. node-2 or shop-1"),
           ("action" = String, Path, description = "kill, freeze, thaw, stop, start or behaviour")),
    request_body(content = Option<BehaviourChange>, description = "Only for `behaviour`"),
    responses((status = 200, body = SupervisedChild), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn child_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath((child, action)): ApiPath<(String, String)>,
    body: Bytes,
) -> Result<Json<SupervisedChild>, Error> {
    let supervisor = supervisor(&state)?;
    for (what, value) in [("child", &child), ("action", &action)] {
        let plain = !value.is_empty()
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !plain {
            return Err(Error::InvalidArgument(format!(
                "{what} {} must be letters, digits, '-' or '_'",
                concord::error::quote(value)
            )));
        }
    }
    let mut request = supervisor
        .http
        .post(format!("{}/v1/children/{child}/{action}", supervisor.base));
    if action == "behaviour" {
        let change: BehaviourChange = serde_json::from_slice(&body).map_err(|err| {
            Error::InvalidArgument(format!(
                "body must be {{\"behaviour\": \"<behaviour>\"}}: {err}"
            ))
        })?;
        request = request.json(&change);
    }
    Ok(Json(send(request, &headers).await?))
}

fn supervisor(state: &AppState) -> Result<&SupervisorClient, Error> {
    state.supervisor.as_ref().ok_or_else(|| {
        Error::Backend(Status::unavailable(
            "cluster controls are off: this gateway was started without --supervisor-addr \
             (`concord up` passes its supervisor admin API)",
        ))
    })
}

/// Sends `request` with the browser's bearer token and reads the supervisor's answer.
async fn send<T: serde::de::DeserializeOwned>(
    mut request: reqwest::RequestBuilder,
    headers: &HeaderMap,
) -> Result<T, Error> {
    if let Some(auth) = headers.get(AUTHORIZATION) {
        request = request.header(AUTHORIZATION, auth.clone());
    }
    let response = request.send().await.map_err(|err| {
        Error::Backend(Status::unavailable(format!(
            "supervisor admin API unreachable: {err}"
        )))
    })?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|err| {
        Error::Backend(Status::unavailable(format!(
            "supervisor admin API answer cut short: {err}"
        )))
    })?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|err| {
            Error::Backend(Status::internal(format!(
                "supervisor admin API answered unexpected JSON: {err}"
            )))
        });
    }
    let message = serde_json::from_slice::<SupervisorError>(&bytes)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
    Err(Error::Backend(Status::new(
        code_for(status),
        format!("supervisor: {message}"),
    )))
}

/// The gRPC code for a supervisor status, so [`crate::error`] maps it back to HTTP.
fn code_for(status: StatusCode) -> Code {
    match status {
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::BAD_REQUEST => Code::InvalidArgument,
        StatusCode::CONFLICT => Code::FailedPrecondition,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        _ => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The supervisor's statuses come back out of the gateway as the same HTTP statuses.
    #[test]
    fn supervisor_statuses_round_trip() {
        for status in [
            StatusCode::UNAUTHORIZED,
            StatusCode::NOT_FOUND,
            StatusCode::BAD_REQUEST,
            StatusCode::CONFLICT,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            assert_eq!(crate::error::http_status_for(code_for(status)), status);
        }
    }
}

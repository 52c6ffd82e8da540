//! Client of `concord up`'s supervisor admin API (HTTP/1.1 + JSON, bearer admin token):
//! the only way `concord chaos` touches processes, so it can target a cluster it did not
//! start. The contract: `GET /v1/children`, `POST /v1/children/{name}/{kill|freeze|thaw|
//! stop|start}`, `POST /v1/children/{name}/behaviour {"behaviour": …}`; errors are JSON
//! `{"error": …}`, which this client passes on word for word.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use serde::Deserialize;

/// How long one admin call may take (a stop waits for the child's SIGTERM grace).
const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// What went wrong talking to the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No connection, or no answer in time.
    #[error("supervisor admin API at {addr}: {reason}")]
    Unreachable {
        /// The API's base URL.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The API answered with an error status; `message` is its `error` field.
    #[error("supervisor refused {action}: HTTP {status}: {message}")]
    Refused {
        /// The request, e.g. `POST /v1/children/shop-1/kill`.
        action: String,
        /// HTTP status code.
        status: u16,
        /// The API's explanation.
        message: String,
    },
}

/// One supervised child as the API describes it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Child {
    /// Child name (`shop-1`, `node-3`, `registry`).
    pub name: String,
    /// Its role (`shop`, `node`, `registry`, …).
    pub role: String,
    /// `running`, `starting`, `backoff`, `stopped`, `frozen` or `errored`.
    pub state: String,
    /// OS process id while it has one.
    #[serde(default)]
    pub pid: Option<u32>,
    /// The address it serves on, once announced.
    #[serde(default)]
    pub addr: Option<String>,
    /// Restarts so far.
    #[serde(default)]
    pub restarts: u64,
    /// Nodes only: the behaviour it runs with.
    #[serde(default)]
    pub behaviour: Option<String>,
}

#[derive(Deserialize)]
struct Children {
    children: Vec<Child>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// A signal-like action on one child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// SIGKILL; the supervisor restarts it.
    Kill,
    /// SIGSTOP.
    Freeze,
    /// SIGCONT.
    Thaw,
    /// Stop and keep it down.
    Stop,
    /// Start a stopped child.
    Start,
}

impl Action {
    fn path(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Freeze => "freeze",
            Action::Thaw => "thaw",
            Action::Stop => "stop",
            Action::Start => "start",
        }
    }
}

/// Talks to one supervisor; cheap to clone (one connection pool).
#[derive(Clone)]
pub struct SupervisorClient {
    base: String,
    token: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl SupervisorClient {
    /// A client for the API at `addr` (`127.0.0.1:7000` or `http://127.0.0.1:7000`).
    pub fn new(addr: &str, admin_token: &str) -> Self {
        let base = match addr.trim().starts_with("http://") {
            true => addr.trim().trim_end_matches('/').to_owned(),
            false => format!("http://{}", addr.trim()),
        };
        let http = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        Self {
            base,
            token: admin_token.trim().to_owned(),
            http,
        }
    }

    /// Every child with its state.
    pub async fn children(&self) -> Result<Vec<Child>, AdminError> {
        let body = self.call(http::Method::GET, "/v1/children", None).await?;
        let list: Children = serde_json::from_slice(&body).map_err(|e| self.garbled(e))?;
        Ok(list.children)
    }

    /// Applies `action` to the child `name`.
    pub async fn act(&self, name: &str, action: Action) -> Result<Child, AdminError> {
        let path = format!("/v1/children/{name}/{}", action.path());
        let body = self.call(http::Method::POST, &path, None).await?;
        serde_json::from_slice(&body).map_err(|e| self.garbled(e))
    }

    /// Restarts node `name` with `behaviour` (`inverted`, `honest`, …).
    pub async fn set_behaviour(&self, name: &str, behaviour: &str) -> Result<Child, AdminError> {
        let path = format!("/v1/children/{name}/behaviour");
        let json = serde_json::json!({ "behaviour": behaviour }).to_string();
        let body = self.call(http::Method::POST, &path, Some(json)).await?;
        serde_json::from_slice(&body).map_err(|e| self.garbled(e))
    }

    fn garbled(&self, err: serde_json::Error) -> AdminError {
        AdminError::Unreachable {
            addr: self.base.clone(),
            reason: format!("answer is not the contract's JSON: {err}"),
        }
    }

    async fn call(
        &self,
        method: http::Method,
        path: &str,
        json: Option<String>,
    ) -> Result<Bytes, AdminError> {
        let action = format!("{method} {path}");
        let unreachable = |reason: String| AdminError::Unreachable {
            addr: self.base.clone(),
            reason,
        };
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json.unwrap_or_default())))
            .map_err(|e| unreachable(e.to_string()))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(ADMIN_CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer in {ADMIN_CALL_TIMEOUT:?}")))?
            .map_err(unreachable)?;
        if status.is_success() {
            return Ok(body);
        }
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        Err(AdminError::Refused {
            action,
            status: status.as_u16(),
            message,
        })
    }
}

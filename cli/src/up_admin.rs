//! `concord up`'s supervisor admin API: HTTP + JSON orders for the supervised children
//! (kill, freeze/thaw, stop/start, a node's `--behaviour`), for the browser UI (through the
//! gateway) and `concord chaos`.
//!
//! Why in the launcher: only the supervisor knows each child's pid and spec, and a kill
//! must go through it so the restart that follows is the ordinary crash handling (same
//! backoff, same address). Every order is carried out by the child's own supervising task
//! ([`crate::supervisor::Controller`]), so it never races that task's restart loop.
//!
//! Every request needs the cluster's admin token as `Authorization: Bearer`, checked in
//! constant time; the API listens on loopback unless told otherwise. Every order is
//! logged (who, what, child) and counted in `up_admin_actions_total{action,child}`.

use std::{net::SocketAddr, str::FromStr, sync::Arc, sync::OnceLock};

use axum::{
    extract::{rejection::JsonRejection, Path, Request, State},
    http::{header::AUTHORIZATION, HeaderMap, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use prometheus_client::metrics::{counter::Counter, family::Family};
use serde::{Deserialize, Serialize};

use crate::supervisor::{Control, ControlError, Controller};

/// The file under the data directory that holds the API's address (tools find it there).
pub const ADDR_FILE: &str = "supervisor-admin.addr";

/// Why a request failed; the one place that maps errors to HTTP.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No bearer token.
    #[error("missing admin token: send `Authorization: Bearer <token>` (`concord token admin --data-dir <dir>` prints it)")]
    MissingToken,
    /// A bearer token that is not the admin token.
    #[error("invalid admin token")]
    BadToken,
    /// No child by that name.
    #[error("no child named {0:?}; GET /v1/children lists them")]
    UnknownChild(String),
    /// No such action.
    #[error("unknown action {0:?}: expected kill, freeze, thaw, stop, start or behaviour")]
    UnknownAction(String),
    /// `behaviour` on a child that is not a node.
    #[error("{child} is a {role}; only nodes have a behaviour")]
    NotANode {
        /// The child.
        child: String,
        /// Its role.
        role: String,
    },
    /// A body that is not what the action takes.
    #[error("{0}")]
    BadRequest(String),
    /// The supervisor refused the order (wrong state) or has ended.
    #[error(transparent)]
    Refused(#[from] ControlError),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            AdminError::MissingToken | AdminError::BadToken => StatusCode::UNAUTHORIZED,
            AdminError::UnknownChild(_) | AdminError::UnknownAction(_) => StatusCode::NOT_FOUND,
            AdminError::NotANode { .. } | AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Refused(ControlError::Gone { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Refused(_) => StatusCode::CONFLICT,
        };
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

/// `{"error": "..."}`.
#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
}

/// One child in the API.
#[derive(Debug, Serialize)]
pub struct ChildView {
    name: String,
    role: String,
    state: &'static str,
    pid: Option<u32>,
    addr: Option<SocketAddr>,
    restarts: u32,
    /// Nodes only: the `--behaviour` the node runs with.
    behaviour: Option<String>,
}

/// `GET /v1/children`.
#[derive(Debug, Serialize)]
struct ChildrenView {
    children: Vec<ChildView>,
}

/// `POST /v1/children/{name}/behaviour`.
#[derive(Debug, Deserialize)]
struct BehaviourBody {
    behaviour: String,
}

const BEHAVIOUR_FLAG: &str = "--behaviour";

/// The value of `--behaviour` in a node's arguments.
fn behaviour_of(args: &[String]) -> Option<String> {
    let at = args.iter().position(|a| a == BEHAVIOUR_FLAG)?;
    args.get(at + 1).cloned()
}

fn view(child: &Controller) -> ChildView {
    let status = child.status();
    ChildView {
        name: child.name.clone(),
        role: child.role.clone(),
        state: status.state.as_str(),
        pid: status.pid,
        addr: status.address,
        restarts: status.restarts,
        behaviour: match child.role.as_str() {
            "node" => behaviour_of(&child.spec().args),
            _ => None,
        },
    }
}

struct Admin {
    token: String,
    children: Vec<Controller>,
}

impl Admin {
    fn child(&self, name: &str) -> Result<&Controller, AdminError> {
        self.children
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| AdminError::UnknownChild(name.to_owned()))
    }
}

fn actions() -> &'static Family<Vec<(String, String)>, Counter> {
    static ACTIONS: OnceLock<Family<Vec<(String, String)>, Counter>> = OnceLock::new();
    ACTIONS.get_or_init(|| {
        let family = Family::default();
        concord::metrics::register(
            "up_admin_actions",
            "Orders carried out through the supervisor admin API, by action and child.",
            family.clone(),
        );
        family
    })
}

/// The API's router over `children`, guarded by `admin_token`.
pub fn router(admin_token: String, children: Vec<Controller>) -> Router {
    let _ = actions();
    let admin = Arc::new(Admin {
        token: admin_token,
        children,
    });
    Router::new()
        .route("/v1/children", get(list))
        .route("/v1/children/{name}/{action}", post(act))
        .layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            authorize,
        ))
        .with_state(admin)
}

async fn authorize(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Result<Response, AdminError> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or(AdminError::MissingToken)?;
    if !concord::auth::constant_time_eq(token.as_bytes(), admin.token.as_bytes()) {
        tracing::warn!(path = %request.uri().path(), "supervisor admin API: invalid token");
        return Err(AdminError::BadToken);
    }
    Ok(next.run(request).await)
}

async fn list(State(admin): State<Arc<Admin>>) -> Json<ChildrenView> {
    Json(ChildrenView {
        children: admin.children.iter().map(view).collect(),
    })
}

async fn act(
    State(admin): State<Arc<Admin>>,
    Path((name, action)): Path<(String, String)>,
    body: Result<Json<BehaviourBody>, JsonRejection>,
) -> Result<Json<ChildView>, AdminError> {
    let child = admin.child(&name)?;
    let control = match action.as_str() {
        "kill" => Control::Kill,
        "freeze" => Control::Freeze,
        "thaw" => Control::Thaw,
        "stop" => Control::Stop,
        "start" => Control::Start,
        "behaviour" => behaviour_order(child, body)?,
        _ => return Err(AdminError::UnknownAction(action)),
    };
    tracing::info!(who = "admin", action = %action, child = %name, "supervisor admin order");
    match child.send(control).await {
        Ok(()) => {
            actions()
                .get_or_create(&vec![
                    ("action".to_owned(), action.clone()),
                    ("child".to_owned(), name.clone()),
                ])
                .inc();
            Ok(Json(view(child)))
        }
        Err(err) => {
            tracing::warn!(who = "admin", action = %action, child = %name, %err, "supervisor admin order refused");
            Err(err.into())
        }
    }
}

/// The restart order for `behaviour`: the node's arguments with the new `--behaviour`.
fn behaviour_order(
    child: &Controller,
    body: Result<Json<BehaviourBody>, JsonRejection>,
) -> Result<Control, AdminError> {
    if child.role != "node" {
        return Err(AdminError::NotANode {
            child: child.name.clone(),
            role: child.role.clone(),
        });
    }
    let Json(body) = body.map_err(|rejection| {
        AdminError::BadRequest(format!(
            "body must be {{\"behaviour\": \"<behaviour>\"}}: {}",
            rejection.body_text()
        ))
    })?;
    let behaviour = concord_node::Behaviour::from_str(&body.behaviour)
        .map_err(|err| AdminError::BadRequest(err.to_string()))?;
    let mut args = child.spec().args;
    match args.iter().position(|a| a == BEHAVIOUR_FLAG) {
        Some(at) if at + 1 < args.len() => args[at + 1] = behaviour.to_string(),
        _ => args.extend([BEHAVIOUR_FLAG.to_owned(), behaviour.to_string()]),
    }
    Ok(Control::Restart(args))
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if let Err(err) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(%err, "supervisor admin API failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--behaviour`'s value is read from, and only from, the flag's position.
    #[test]
    fn behaviour_of_reads_the_flag() {
        let args: Vec<String> = ["node", "--id", "node-1", "--behaviour", "inverted"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(behaviour_of(&args).as_deref(), Some("inverted"));
        assert_eq!(behaviour_of(&args[..4]), None);
        assert_eq!(behaviour_of(&args[..3]), None);
    }
}

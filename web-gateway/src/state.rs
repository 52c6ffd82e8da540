//! What every handler shares: the backends, the per-call settings and the shutdown signal.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::backends::Backends;

/// Shared handler state; cheap to clone (all `Arc`s and a watch receiver).
#[derive(Clone)]
pub struct AppState {
    /// Registry-discovered backends and their cached channels.
    pub backends: Arc<Backends>,
    /// Deadline of each backend call.
    pub call_timeout: Duration,
    /// How often `/api/events` sends a fresh cluster view even without a registry change.
    pub cluster_refresh: Duration,
    /// Cancelled when the server shuts down; long-lived streams end on it.
    pub shutdown: CancellationToken,
    /// The OpenAPI document, rendered once at start-up.
    pub openapi_json: Arc<String>,
    /// Whether the session cookie is marked `Secure` (HTTPS in front of the gateway).
    pub secure_cookies: bool,
    /// `concord up`'s supervisor admin API, when the gateway was told where it is.
    pub supervisor: Option<crate::cluster_admin::SupervisorClient>,
}

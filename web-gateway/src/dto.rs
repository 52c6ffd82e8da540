//! The JSON shapes of the HTTP API that are not a protobuf message taken as it is.
//!
//! Most replies are the backend's protobuf message itself: `build.rs` derives serde and the
//! OpenAPI schema for them (and for every enum) behind `concord`'s `json` feature, under
//! the HTTP API's schema names (`ProductWrite` is `CreateProductResponse`, …). What is left
//! here really differs: request bodies and queries whose fields come partly from the path,
//! a header or the session, the sign-in reply (the session token stays in the cookie), the
//! predict input (four named features), and the gateway's own cluster view. Enums travel as
//! lower-case words (`"pending"`, `"timed_out"`), prices as integer minor units, times as
//! milliseconds since the Unix epoch. The conversions live in [`crate::convert`].

use concord::pb::{predict::v1 as predict, registry::v1 as registry, shop::v1 as shop};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

// ---------------------------------------------------------------- shop

/// Query of `GET /api/products`.
#[derive(Debug, Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct ProductQuery {
    /// Products per page, 1..=500 (0 or absent means 50).
    #[serde(default)]
    pub page_size: u32,
    /// `next_page_token` of the previous page.
    #[serde(default)]
    pub page_token: String,
    /// Case-insensitive name filter.
    #[serde(default)]
    pub name_contains: String,
}

/// Body of `PATCH /api/products/{id}`: only the fields present change.
#[derive(Debug, Serialize, Deserialize, ToSchema, Default)]
pub struct ProductPatch {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New price in minor units.
    pub price_minor: Option<i64>,
    /// New currency.
    pub currency: Option<String>,
    /// New stock.
    pub stock: Option<i64>,
}

/// Body of `POST /api/carts/{user_id}/items`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NewCartItem {
    /// Product id.
    pub product_id: String,
    /// Units to add, 1..=10000.
    pub quantity: i64,
}

/// Body of `PUT /api/carts/{user_id}/items/{product_id}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CartQuantity {
    /// New quantity, 1..=10000.
    pub quantity: i64,
}

/// Body of `POST /api/orders` (the key comes in the `Idempotency-Key` header).
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct NewOrder {
    /// Whose cart to check out: the session's own (empty or absent), never someone else's.
    #[serde(default)]
    pub user_id: String,
}

/// Body of `PUT /api/orders/{order_id}/status`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NewOrderStatus {
    /// Target status.
    pub status: shop::OrderStatus,
}

/// Query of `GET /api/orders`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderQuery {
    /// Whose orders: the session's own when empty or absent; any user's with the admin token.
    #[serde(default)]
    pub user_id: String,
    /// Orders per page, 1..=500 (0 or absent means 50).
    #[serde(default)]
    pub page_size: u32,
    /// `next_page_token` of the previous page.
    #[serde(default)]
    pub page_token: String,
}

/// Query of `GET /api/admin/orders`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AllOrdersQuery {
    /// Only orders in this status (absent: all).
    #[serde(default)]
    pub status: Option<shop::OrderStatus>,
    /// Orders per page, 1..=500 (0 or absent means 50).
    #[serde(default)]
    pub page_size: u32,
    /// `next_page_token` of the previous page.
    #[serde(default)]
    pub page_token: String,
}

// ---------------------------------------------------------------- accounts

/// Body of `POST /api/signup` and `POST /api/signin`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Credentials {
    /// Username: 3..=64 characters of `[A-Za-z0-9._@-]` (any case at sign-in).
    pub username: String,
    /// Password: 8..=128 characters.
    pub password: String,
}

/// Never prints the password.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Reply of sign-up and sign-in: the account; the session itself travels only in the
/// `HttpOnly` cookie, out of reach of page scripts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SignedIn {
    /// The account signed in.
    pub account: shop::Account,
    /// When the session ends, ms since the epoch.
    pub expires_at_unix_ms: i64,
}

// ---------------------------------------------------------------- predict

/// One flower to classify (query of `GET /api/predict`, body of `POST /api/predict`).
#[derive(Debug, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PredictInput {
    /// Sepal length, cm.
    pub sepal_length: f64,
    /// Sepal width, cm.
    pub sepal_width: f64,
    /// Petal length, cm.
    pub petal_length: f64,
    /// Petal width, cm.
    pub petal_width: f64,
    /// Consensus policy; the server default when absent.
    #[serde(default)]
    pub policy: predict::Policy,
}

// ---------------------------------------------------------------- stake

/// Query of `GET /api/ledger/events`.
#[derive(Debug, Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct LedgerQuery {
    /// Events with seq greater than this (0 for the start).
    #[serde(default)]
    pub after_seq: u64,
    /// Events per page, 1..=1000 (0 or absent means 100).
    #[serde(default)]
    pub page_size: u32,
    /// Only this node's events.
    #[serde(default)]
    pub node_id: String,
}

// ---------------------------------------------------------------- registry / cluster

/// The live instances of one service (`GET /api/services/{name}`).
#[derive(Debug, Serialize, Deserialize, ToSchema, Clone)]
pub struct ServiceInstances {
    /// Service name.
    pub service: String,
    /// Live instances, oldest registration first.
    pub instances: Vec<registry::Instance>,
}

/// Where one shop process stands, from its own `GetReplicationStatus`.
#[derive(Debug, Serialize, Deserialize, ToSchema, Clone)]
pub struct ReplicationStatus {
    /// Role.
    pub role: shop::Role,
    /// Current term.
    pub term: u64,
    /// Highest LSN committed or applied here.
    pub last_lsn: u64,
    /// Primary: highest LSN the replica acked. Replica: its own durable LSN.
    pub replica_acked_lsn: u64,
    /// Lag in entries.
    pub lag_entries: u64,
    /// Age of the oldest unacknowledged entry, ms.
    pub lag_ms: u64,
    /// Replication mode.
    pub mode: shop::ReplicationMode,
    /// Whether the peer is connected.
    pub peer_connected: bool,
    /// Replica: caught up since connecting.
    pub caught_up: bool,
    /// The primary's address as this process knows it.
    pub primary_address: String,
}

/// One shop process in the cluster view.
#[derive(Debug, Serialize, Deserialize, ToSchema, Clone)]
pub struct ShopNode {
    /// Registered address.
    pub address: String,
    /// Role published in the registry.
    pub registered_role: String,
    /// Term published in the registry.
    pub registered_term: u64,
    /// What the process itself says (absent when it did not answer).
    pub replication: Option<ReplicationStatus>,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// The registry's own state in the cluster view.
#[derive(Debug, Serialize, Deserialize, ToSchema, Clone)]
pub struct RegistryStatus {
    /// Configured address.
    pub address: String,
    /// Whether it answered `List`.
    pub up: bool,
    /// Its change counter (0 when down).
    pub revision: u64,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// Everything the cluster panel shows (`GET /api/cluster`, SSE `cluster`).
#[derive(Debug, Serialize, Deserialize, ToSchema, Clone)]
pub struct ClusterStatus {
    /// The registry itself.
    pub registry: RegistryStatus,
    /// Every live instance of every service (the last known ones when the registry is down).
    pub instances: Vec<registry::Instance>,
    /// Each shop process and its replication state.
    pub shops: Vec<ShopNode>,
    /// Address of the current shop primary (the highest-term primary), if any.
    pub primary: Option<String>,
    /// The current primary's term (0 without one).
    pub term: u64,
    /// When this view was taken, ms since the epoch.
    pub at_unix_ms: i64,
}

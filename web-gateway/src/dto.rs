//! The JSON shapes of the HTTP API and their conversions from and to the protobuf messages.
//!
//! The generated `pb` types have no serde or schema derives, so every message the API
//! exposes has a twin here; this is the only module that knows both sides. Enums travel
//! as lower-case words (`"pending"`, `"stake"`), prices as integer minor units, times as
//! milliseconds since the Unix epoch. Unknown protobuf enum values become `"unspecified"`.

use std::collections::HashMap;

use concord::pb::{
    predict::v1 as predict, registry::v1 as registry, shop::v1 as shop, stake::v1 as stake,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

// ---------------------------------------------------------------- shop

/// A product for sale.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Product {
    /// Opaque id assigned by the shop.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Price in minor units (cents).
    pub price_minor: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Units in stock.
    pub stock: i64,
    /// Last change, ms since the epoch.
    pub updated_at_unix_ms: i64,
}

impl From<shop::Product> for Product {
    fn from(p: shop::Product) -> Self {
        Self {
            id: p.id,
            name: p.name,
            description: p.description,
            price_minor: p.price_minor,
            currency: p.currency,
            stock: p.stock,
            updated_at_unix_ms: p.updated_at_unix_ms,
        }
    }
}

/// How a shop write was replicated.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// Not reported.
    Unspecified,
    /// No replica.
    None,
    /// Acknowledged before the replica holds it.
    Async,
    /// Acknowledged after the replica holds it.
    Sync,
}

impl From<i32> for ReplicationMode {
    fn from(v: i32) -> Self {
        match shop::ReplicationMode::try_from(v) {
            Ok(shop::ReplicationMode::None) => Self::None,
            Ok(shop::ReplicationMode::Async) => Self::Async,
            Ok(shop::ReplicationMode::Sync) => Self::Sync,
            _ => Self::Unspecified,
        }
    }
}

/// What a shop write achieved.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WriteInfo {
    /// Log sequence number (0 when nothing changed).
    pub lsn: u64,
    /// Whether the replica durably held it before the reply.
    pub replicated: bool,
    /// The primary's replication mode.
    pub mode: ReplicationMode,
    /// Whether sync mode fell back to local-only.
    pub degraded: bool,
    /// Primary term that accepted the write.
    pub term: u64,
}

impl From<shop::WriteInfo> for WriteInfo {
    fn from(w: shop::WriteInfo) -> Self {
        Self {
            lsn: w.lsn,
            replicated: w.replicated,
            mode: w.mode.into(),
            degraded: w.degraded,
            term: w.term,
        }
    }
}

/// A product together with what the write achieved.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProductWrite {
    /// The product after the write.
    pub product: Option<Product>,
    /// What the write achieved.
    pub write: Option<WriteInfo>,
}

/// A write that returns nothing else (delete).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WriteResult {
    /// What the write achieved.
    pub write: Option<WriteInfo>,
}

/// One page of products.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProductPage {
    /// Products in id order.
    pub products: Vec<Product>,
    /// Token for the next page; empty on the last.
    pub next_page_token: String,
}

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

/// Body of `POST /api/products`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NewProduct {
    /// Display name, 1..=200 characters.
    pub name: String,
    /// Description, at most 2000 characters.
    #[serde(default)]
    pub description: String,
    /// Price in minor units.
    pub price_minor: i64,
    /// ISO 4217 code; "EUR" when empty.
    #[serde(default)]
    pub currency: String,
    /// Initial stock.
    #[serde(default)]
    pub stock: i64,
}

impl From<NewProduct> for shop::CreateProductRequest {
    fn from(p: NewProduct) -> Self {
        Self {
            name: p.name,
            description: p.description,
            price_minor: p.price_minor,
            currency: p.currency,
            stock: p.stock,
        }
    }
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

impl ProductPatch {
    /// The UpdateProduct request for product `id`.
    pub fn into_request(self, id: String) -> shop::UpdateProductRequest {
        shop::UpdateProductRequest {
            id,
            name: self.name,
            description: self.description,
            price_minor: self.price_minor,
            currency: self.currency,
            stock: self.stock,
        }
    }
}

/// A user's cart at current prices.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Cart {
    /// Owner.
    pub user_id: String,
    /// Lines in product id order.
    pub lines: Vec<CartLine>,
    /// Sum of line totals, minor units.
    pub total_minor: i64,
    /// Currency of the total.
    pub currency: String,
}

/// One product in a cart.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CartLine {
    /// Product id.
    pub product_id: String,
    /// Current product name.
    pub name: String,
    /// Units wanted.
    pub quantity: i64,
    /// Current unit price, minor units.
    pub unit_price_minor: i64,
    /// quantity × unit price.
    pub line_total_minor: i64,
    /// Units in stock now.
    pub stock: i64,
}

impl From<shop::Cart> for Cart {
    fn from(c: shop::Cart) -> Self {
        Self {
            user_id: c.user_id,
            lines: c
                .lines
                .into_iter()
                .map(|l| CartLine {
                    product_id: l.product_id,
                    name: l.name,
                    quantity: l.quantity,
                    unit_price_minor: l.unit_price_minor,
                    line_total_minor: l.line_total_minor,
                    stock: l.stock,
                })
                .collect(),
            total_minor: c.total_minor,
            currency: c.currency,
        }
    }
}

/// A cart together with what the write achieved.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CartWrite {
    /// The cart after the write.
    pub cart: Option<Cart>,
    /// What the write achieved.
    pub write: Option<WriteInfo>,
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

/// Where an order is in its life.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Not set.
    Unspecified,
    /// Placed, awaiting payment.
    Pending,
    /// Paid.
    Paid,
    /// Handed to the carrier.
    Shipped,
    /// Received.
    Delivered,
    /// Cancelled; stock restored.
    Cancelled,
}

impl From<i32> for OrderStatus {
    fn from(v: i32) -> Self {
        match shop::OrderStatus::try_from(v) {
            Ok(shop::OrderStatus::Pending) => Self::Pending,
            Ok(shop::OrderStatus::Paid) => Self::Paid,
            Ok(shop::OrderStatus::Shipped) => Self::Shipped,
            Ok(shop::OrderStatus::Delivered) => Self::Delivered,
            Ok(shop::OrderStatus::Cancelled) => Self::Cancelled,
            _ => Self::Unspecified,
        }
    }
}

impl From<OrderStatus> for shop::OrderStatus {
    fn from(s: OrderStatus) -> Self {
        match s {
            OrderStatus::Unspecified => Self::Unspecified,
            OrderStatus::Pending => Self::Pending,
            OrderStatus::Paid => Self::Paid,
            OrderStatus::Shipped => Self::Shipped,
            OrderStatus::Delivered => Self::Delivered,
            OrderStatus::Cancelled => Self::Cancelled,
        }
    }
}

/// A placed order, priced at placement.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Order {
    /// Opaque id.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Lines with price snapshots.
    pub lines: Vec<OrderLine>,
    /// Sum of line totals, minor units.
    pub total_minor: i64,
    /// Currency.
    pub currency: String,
    /// Current status.
    pub status: OrderStatus,
    /// Idempotency key it was placed with.
    pub idempotency_key: String,
    /// Placement time, ms since the epoch.
    pub created_at_unix_ms: i64,
    /// Last status change, ms since the epoch.
    pub updated_at_unix_ms: i64,
}

/// One product of an order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderLine {
    /// Product id.
    pub product_id: String,
    /// Name at placement.
    pub name: String,
    /// Units ordered.
    pub quantity: i64,
    /// Unit price at placement.
    pub unit_price_minor: i64,
    /// quantity × unit price.
    pub line_total_minor: i64,
}

impl From<shop::Order> for Order {
    fn from(o: shop::Order) -> Self {
        Self {
            id: o.id,
            user_id: o.user_id,
            lines: o
                .lines
                .into_iter()
                .map(|l| OrderLine {
                    product_id: l.product_id,
                    name: l.name,
                    quantity: l.quantity,
                    unit_price_minor: l.unit_price_minor,
                    line_total_minor: l.line_total_minor,
                })
                .collect(),
            total_minor: o.total_minor,
            currency: o.currency,
            status: o.status.into(),
            idempotency_key: o.idempotency_key,
            created_at_unix_ms: o.created_at_unix_ms,
            updated_at_unix_ms: o.updated_at_unix_ms,
        }
    }
}

/// Body of `POST /api/orders` (the key comes in the `Idempotency-Key` header).
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct NewOrder {
    /// Whose cart to check out: the session's own (empty or absent), never someone else's.
    #[serde(default)]
    pub user_id: String,
}

/// A placed order and what the write achieved.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderPlaced {
    /// The order (the original one on a replay).
    pub order: Option<Order>,
    /// What the write achieved.
    pub write: Option<WriteInfo>,
    /// True when the key had already placed this order.
    pub replayed: bool,
}

/// An order after a status change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderWrite {
    /// The order after the change.
    pub order: Option<Order>,
    /// What the write achieved.
    pub write: Option<WriteInfo>,
}

/// Body of `PUT /api/orders/{order_id}/status`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NewOrderStatus {
    /// Target status.
    pub status: OrderStatus,
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

/// One page of a user's orders.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderPage {
    /// Orders, newest first.
    pub orders: Vec<Order>,
    /// Token for the next page; empty on the last.
    pub next_page_token: String,
}

/// Query of `GET /api/admin/orders`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AllOrdersQuery {
    /// Only orders in this status (absent: all).
    #[serde(default)]
    pub status: Option<OrderStatus>,
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

/// A customer account (never its password).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CustomerAccount {
    /// Opaque id (`u-…`): the `user_id` of the account's carts and orders.
    pub user_id: String,
    /// Name chosen at sign-up.
    pub username: String,
    /// Creation time, ms since the epoch.
    pub created_at_unix_ms: i64,
}

impl From<shop::Account> for CustomerAccount {
    fn from(a: shop::Account) -> Self {
        Self {
            user_id: a.user_id,
            username: a.username,
            created_at_unix_ms: a.created_at_unix_ms,
        }
    }
}

/// Reply of sign-up and sign-in: the account; the session itself travels only in the
/// `HttpOnly` cookie, out of reach of page scripts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SignedIn {
    /// The account signed in.
    pub account: CustomerAccount,
    /// When the session ends, ms since the epoch.
    pub expires_at_unix_ms: i64,
}

// ---------------------------------------------------------------- predict

/// How the aggregator weighs node answers.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq, Clone, Copy, Default)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// The server's default (stake).
    #[default]
    Unspecified,
    /// Plain average.
    Mean,
    /// Weight = trust.
    Trust,
    /// Weight = trust × stake.
    Stake,
}

impl From<Policy> for predict::Policy {
    fn from(p: Policy) -> Self {
        match p {
            Policy::Unspecified => Self::Unspecified,
            Policy::Mean => Self::Mean,
            Policy::Trust => Self::Trust,
            Policy::Stake => Self::Stake,
        }
    }
}

impl From<i32> for Policy {
    fn from(v: i32) -> Self {
        match predict::Policy::try_from(v) {
            Ok(predict::Policy::Mean) => Self::Mean,
            Ok(predict::Policy::Trust) => Self::Trust,
            Ok(predict::Policy::Stake) => Self::Stake,
            _ => Self::Unspecified,
        }
    }
}

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
    pub policy: Policy,
}

impl From<PredictInput> for predict::PredictRequest {
    fn from(p: PredictInput) -> Self {
        Self {
            features: vec![p.sepal_length, p.sepal_width, p.petal_length, p.petal_width],
            policy: predict::Policy::from(p.policy).into(),
        }
    }
}

/// What became of one node's part in a consensus.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum VoteStatus {
    /// Not set.
    Unspecified,
    /// Answered in time; the vote counts.
    Answered,
    /// Too slow; ignored.
    TimedOut,
    /// The call failed; ignored.
    Failed,
    /// Ejected (stake below the minimum); not asked.
    Ejected,
}

impl From<i32> for VoteStatus {
    fn from(v: i32) -> Self {
        match predict::VoteStatus::try_from(v) {
            Ok(predict::VoteStatus::Answered) => Self::Answered,
            Ok(predict::VoteStatus::TimedOut) => Self::TimedOut,
            Ok(predict::VoteStatus::Failed) => Self::Failed,
            Ok(predict::VoteStatus::Ejected) => Self::Ejected,
            _ => Self::Unspecified,
        }
    }
}

/// One node's vote in a consensus.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeVote {
    /// Node id.
    pub node_id: String,
    /// Address the aggregator called.
    pub address: String,
    /// What became of the call.
    pub status: VoteStatus,
    /// The node's class (valid when answered).
    pub label: u32,
    /// The node's class probabilities.
    pub probabilities: Vec<f64>,
    /// Round-trip time, ms.
    pub latency_ms: f64,
    /// Trust (0..1) when combined.
    pub trust: f64,
    /// Stake when combined.
    pub stake: u64,
    /// Normalised weight of the vote (0..1).
    pub weight: f64,
    /// Why the call failed, when it did.
    pub error: String,
}

/// A (consensus) classification.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Prediction {
    /// Winning class: 0 setosa, 1 versicolor, 2 virginica.
    pub label: u32,
    /// Name of the winning class.
    pub class_name: String,
    /// Probability of each class.
    pub probabilities: Vec<f64>,
    /// Who answered ("aggregator" for a consensus).
    pub node_id: String,
    /// Description of the model or consensus.
    pub model: String,
    /// Id to quote in `POST /api/outcomes`.
    pub request_id: String,
    /// The policy applied.
    pub policy: Policy,
    /// Every known node's vote.
    pub votes: Vec<NodeVote>,
    /// Nodes that answered in time.
    pub answered: u32,
    /// Nodes asked.
    pub asked: u32,
}

impl From<predict::PredictResponse> for Prediction {
    fn from(p: predict::PredictResponse) -> Self {
        Self {
            label: p.label,
            class_name: p.class_name,
            probabilities: p.probabilities,
            node_id: p.node_id,
            model: p.model,
            request_id: p.request_id,
            policy: p.policy.into(),
            votes: p
                .votes
                .into_iter()
                .map(|v| NodeVote {
                    node_id: v.node_id,
                    address: v.address,
                    status: v.status.into(),
                    label: v.label,
                    probabilities: v.probabilities,
                    latency_ms: v.latency_ms,
                    trust: v.trust,
                    stake: v.stake,
                    weight: v.weight,
                    error: v.error,
                })
                .collect(),
            answered: p.answered,
            asked: p.asked,
        }
    }
}

// ---------------------------------------------------------------- stake

/// Body of `POST /api/outcomes`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Outcome {
    /// `request_id` of a consensus prediction.
    pub request_id: String,
    /// True class: 0 setosa, 1 versicolor, 2 virginica.
    pub true_label: u32,
}

/// What one outcome did to one node.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeScore {
    /// Node id.
    pub node_id: String,
    /// The node's answer.
    pub predicted_label: u32,
    /// Whether it was right.
    pub correct: bool,
    /// Tokens gained (+) or slashed (−).
    pub stake_delta: i64,
    /// Stake after scoring.
    pub stake_after: u64,
    /// Trust after scoring.
    pub trust_after: f64,
    /// Whether the node is now ejected.
    pub ejected: bool,
}

/// What an outcome report did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OutcomeResult {
    /// True when this request was already scored; nothing changed.
    pub already_reported: bool,
    /// One score per node that answered.
    pub scores: Vec<NodeScore>,
    /// Whether the consensus was right.
    pub consensus_correct: bool,
}

impl From<stake::ReportOutcomeResponse> for OutcomeResult {
    fn from(r: stake::ReportOutcomeResponse) -> Self {
        Self {
            already_reported: r.already_reported,
            scores: r
                .scores
                .into_iter()
                .map(|s| NodeScore {
                    node_id: s.node_id,
                    predicted_label: s.predicted_label,
                    correct: s.correct,
                    stake_delta: s.stake_delta,
                    stake_after: s.stake_after,
                    trust_after: s.trust_after,
                    ejected: s.ejected,
                })
                .collect(),
            consensus_correct: r.consensus_correct,
        }
    }
}

/// One node's standing.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Account {
    /// Node id.
    pub node_id: String,
    /// Tokens staked.
    pub stake: u64,
    /// Trust, 0..1.
    pub trust: f64,
    /// Whether the node is ejected.
    pub ejected: bool,
    /// Outcomes it got right.
    pub correct: u64,
    /// Outcomes it got wrong.
    pub wrong: u64,
    /// Last event that touched the account.
    pub last_event_seq: u64,
}

impl From<stake::Account> for Account {
    fn from(a: stake::Account) -> Self {
        Self {
            node_id: a.node_id,
            stake: a.stake,
            trust: a.trust,
            ejected: a.ejected,
            correct: a.correct,
            wrong: a.wrong,
            last_event_seq: a.last_event_seq,
        }
    }
}

/// Ledger-wide token counts.
#[derive(Debug, Serialize, Deserialize, ToSchema, Default)]
pub struct Totals {
    /// Sum of all stakes.
    pub staked: u64,
    /// Tokens minted (grants, rewards).
    pub minted: u64,
    /// Tokens burned (slashes).
    pub burned: u64,
    /// Tokens deposited (stakes).
    pub deposited: u64,
    /// Tokens withdrawn (unstakes).
    pub withdrawn: u64,
    /// Number of events.
    pub events: u64,
}

impl From<stake::Totals> for Totals {
    fn from(t: stake::Totals) -> Self {
        Self {
            staked: t.staked,
            minted: t.minted,
            burned: t.burned,
            deposited: t.deposited,
            withdrawn: t.withdrawn,
            events: t.events,
        }
    }
}

/// Every account and the totals (`GET /api/stakes`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Stakes {
    /// Accounts by node id.
    pub accounts: Vec<Account>,
    /// Ledger totals.
    pub totals: Totals,
}

/// What a ledger event did.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Not set.
    Unspecified,
    /// Initial stake.
    Grant,
    /// Tokens added.
    Stake,
    /// Tokens withdrawn.
    Unstake,
    /// Right answer.
    Reward,
    /// Wrong answer.
    Slash,
    /// Left the consensus.
    Eject,
    /// Rejoined the consensus.
    Rejoin,
}

impl From<i32> for EventKind {
    fn from(v: i32) -> Self {
        match stake::EventKind::try_from(v) {
            Ok(stake::EventKind::Grant) => Self::Grant,
            Ok(stake::EventKind::Stake) => Self::Stake,
            Ok(stake::EventKind::Unstake) => Self::Unstake,
            Ok(stake::EventKind::Reward) => Self::Reward,
            Ok(stake::EventKind::Slash) => Self::Slash,
            Ok(stake::EventKind::Eject) => Self::Eject,
            Ok(stake::EventKind::Rejoin) => Self::Rejoin,
            _ => Self::Unspecified,
        }
    }
}

/// One hash-chained ledger entry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LedgerEvent {
    /// Position in the ledger, from 1.
    pub seq: u64,
    /// Write time, ms since the epoch.
    pub at_unix_ms: i64,
    /// Account changed.
    pub node_id: String,
    /// What happened.
    pub kind: EventKind,
    /// Tokens moved.
    pub amount: u64,
    /// Stake after the event.
    pub stake_after: u64,
    /// Trust after the event.
    pub trust_after: f64,
    /// Consensus request scored (reward/slash).
    pub request_id: String,
    /// Hash of the previous event.
    pub prev_hash: String,
    /// Hash of this event.
    pub hash: String,
}

impl From<stake::Event> for LedgerEvent {
    fn from(e: stake::Event) -> Self {
        Self {
            seq: e.seq,
            at_unix_ms: e.at_unix_ms,
            node_id: e.node_id,
            kind: e.kind.into(),
            amount: e.amount,
            stake_after: e.stake_after,
            trust_after: e.trust_after,
            request_id: e.request_id,
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

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

/// One page of ledger events.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LedgerPage {
    /// Events in sequence order.
    pub events: Vec<LedgerEvent>,
    /// Pass as `after_seq` for the next page; 0 when there is none.
    pub next_after_seq: u64,
}

/// The ledger audit result.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LedgerVerification {
    /// Whether the chain and every balance check out.
    pub ok: bool,
    /// Events checked.
    pub events_checked: u64,
    /// Hash of the last event.
    pub head_hash: String,
    /// First bad event (0 when ok).
    pub first_bad_seq: u64,
    /// What is wrong (empty when ok).
    pub problem: String,
    /// Totals recomputed from the events.
    pub totals: Totals,
}

impl From<stake::VerifyLedgerResponse> for LedgerVerification {
    fn from(v: stake::VerifyLedgerResponse) -> Self {
        Self {
            ok: v.ok,
            events_checked: v.events_checked,
            head_hash: v.head_hash,
            first_bad_seq: v.first_bad_seq,
            problem: v.problem,
            totals: v.totals.map(Totals::from).unwrap_or_default(),
        }
    }
}

// ---------------------------------------------------------------- registry / cluster

/// One live registration.
#[derive(Debug, Serialize, Deserialize, ToSchema, Clone, PartialEq)]
pub struct Instance {
    /// Service name.
    pub service: String,
    /// host:port to dial.
    pub address: String,
    /// Labels such as role=primary, term=3.
    pub metadata: HashMap<String, String>,
    /// Registration time, ms since the epoch.
    pub registered_at_unix_ms: i64,
    /// Lease expiry unless renewed, ms since the epoch.
    pub expires_at_unix_ms: i64,
}

impl From<registry::Instance> for Instance {
    fn from(i: registry::Instance) -> Self {
        Self {
            service: i.service,
            address: i.address,
            metadata: i.metadata,
            registered_at_unix_ms: i.registered_at_unix_ms,
            expires_at_unix_ms: i.expires_at_unix_ms,
        }
    }
}

/// The live instances of one service (`GET /api/services/{name}`).
#[derive(Debug, Serialize, Deserialize, ToSchema, Clone)]
pub struct ServiceInstances {
    /// Service name.
    pub service: String,
    /// Live instances, oldest registration first.
    pub instances: Vec<Instance>,
}

/// A shop process's replication role.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Not reported.
    Unspecified,
    /// Accepts writes.
    Primary,
    /// Serves reads, applies the primary's stream.
    Replica,
}

impl From<i32> for Role {
    fn from(v: i32) -> Self {
        match shop::Role::try_from(v) {
            Ok(shop::Role::Primary) => Self::Primary,
            Ok(shop::Role::Replica) => Self::Replica,
            _ => Self::Unspecified,
        }
    }
}

/// Where one shop process stands, from its own `GetReplicationStatus`.
#[derive(Debug, Serialize, Deserialize, ToSchema, Clone)]
pub struct ReplicationStatus {
    /// Role.
    pub role: Role,
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
    pub mode: ReplicationMode,
    /// Whether the peer is connected.
    pub peer_connected: bool,
    /// Replica: caught up since connecting.
    pub caught_up: bool,
    /// The primary's address as this process knows it.
    pub primary_address: String,
}

impl From<shop::GetReplicationStatusResponse> for ReplicationStatus {
    fn from(s: shop::GetReplicationStatusResponse) -> Self {
        Self {
            role: s.role.into(),
            term: s.term,
            last_lsn: s.last_lsn,
            replica_acked_lsn: s.replica_acked_lsn,
            lag_entries: s.lag_entries,
            lag_ms: s.lag_ms,
            mode: s.mode.into(),
            peer_connected: s.peer_connected,
            caught_up: s.caught_up,
            primary_address: s.primary_address,
        }
    }
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
    pub instances: Vec<Instance>,
    /// Each shop process and its replication state.
    pub shops: Vec<ShopNode>,
    /// Address of the current shop primary (the highest-term primary), if any.
    pub primary: Option<String>,
    /// The current primary's term (0 without one).
    pub term: u64,
    /// When this view was taken, ms since the epoch.
    pub at_unix_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Enum values travel as the lower-case words the UI and OpenAPI document show.
    #[test]
    fn enum_wire_names() {
        let cases = [
            (
                serde_json::to_value(OrderStatus::from(shop::OrderStatus::Shipped as i32)),
                "shipped",
            ),
            (serde_json::to_value(Policy::from(2)), "trust"),
            (serde_json::to_value(VoteStatus::from(2)), "timed_out"),
            (serde_json::to_value(EventKind::from(5)), "slash"),
            (serde_json::to_value(Role::from(99)), "unspecified"),
        ];
        for (value, want) in cases {
            assert_eq!(value.expect("serialises"), serde_json::json!(want));
        }
    }

    /// A predict input becomes the four features in the documented order.
    #[test]
    fn predict_input_feature_order() {
        let request = predict::PredictRequest::from(PredictInput {
            sepal_length: 1.0,
            sepal_width: 2.0,
            petal_length: 3.0,
            petal_width: 4.0,
            policy: Policy::Mean,
        });
        assert_eq!(request.features, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(request.policy, predict::Policy::Mean as i32);
    }
}

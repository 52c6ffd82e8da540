//! pb ↔ domain conversions and the one mapping from [`ShopError`] to `tonic::Status`.
//!
//! Incoming: ids are parsed here (malformed → `InvalidArgument`), an unset enum is
//! `InvalidArgument`; everything else is validated by the domain. Outgoing: domain types
//! become their proto messages; unsigned quantities become the proto's `int64`.

use concord::error::{Classify, ErrorKind};
use concord::pb::shop::v1 as pb;

use crate::account::Account;
use crate::cart::{CartLine, CartView};
use crate::catalog::Product;
use crate::error::ShopError;
use crate::keys::{OrderId, ProductId};
use crate::order::{Order, OrderLine, OrderStatus};

impl Classify for ShopError {
    fn kind(&self) -> ErrorKind {
        match self {
            ShopError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            ShopError::NotFound(_) => ErrorKind::NotFound,
            ShopError::FailedPrecondition(_) | ShopError::NotPrimary(_) => {
                ErrorKind::FailedPrecondition
            }
            ShopError::Unauthenticated(_) => ErrorKind::Unauthenticated,
            ShopError::PermissionDenied(_) => ErrorKind::PermissionDenied,
            ShopError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            ShopError::ResourceExhausted(_) => ErrorKind::ResourceExhausted,
            ShopError::Unavailable(_) | ShopError::Fenced(_) => ErrorKind::Unavailable,
            ShopError::Internal(_) => ErrorKind::Internal,
        }
    }

    fn hints(&self) -> Vec<(&'static str, String)> {
        match self {
            // Its presence tells a client "refused before doing anything; safe to send
            // elsewhere", which a plain FAILED_PRECONDITION (an illegal transition) or
            // UNAVAILABLE (a write that may have been applied) does not.
            ShopError::NotPrimary(primary) => vec![(PRIMARY_HINT_HEADER, primary.clone())],
            ShopError::Fenced(_) => vec![(PRIMARY_HINT_HEADER, String::new())],
            _ => Vec::new(),
        }
    }
}

/// Metadata key on a write refused before doing anything: by a replica, naming the primary
/// (with FAILED_PRECONDITION), or by a fenced process that knows none (empty, with
/// UNAVAILABLE). Present only on such refusals.
pub const PRIMARY_HINT_HEADER: &str = "x-concord-primary";

impl From<ShopError> for tonic::Status {
    fn from(err: ShopError) -> Self {
        concord::error::to_status(&err)
    }
}

/// Parses a product id from a request field.
pub fn product_id(raw: &str) -> Result<ProductId, ShopError> {
    raw.parse()
}

/// Parses an order id from a request field.
pub fn order_id(raw: &str) -> Result<OrderId, ShopError> {
    raw.parse()
}

/// Converts a requested status; UNSPECIFIED or an unknown number is `InvalidArgument`.
pub fn order_status_from_pb(raw: i32) -> Result<OrderStatus, ShopError> {
    match pb::OrderStatus::try_from(raw) {
        Ok(pb::OrderStatus::Pending) => Ok(OrderStatus::Pending),
        Ok(pb::OrderStatus::Paid) => Ok(OrderStatus::Paid),
        Ok(pb::OrderStatus::Shipped) => Ok(OrderStatus::Shipped),
        Ok(pb::OrderStatus::Delivered) => Ok(OrderStatus::Delivered),
        Ok(pb::OrderStatus::Cancelled) => Ok(OrderStatus::Cancelled),
        Ok(pb::OrderStatus::Unspecified) => Err(ShopError::invalid("order status must be set")),
        Err(_) => Err(ShopError::invalid(format!("unknown order status {raw}"))),
    }
}

/// Converts a status filter: UNSPECIFIED means "every status" (`None`).
pub fn status_filter_from_pb(raw: i32) -> Result<Option<OrderStatus>, ShopError> {
    if raw == pb::OrderStatus::Unspecified as i32 {
        return Ok(None);
    }
    order_status_from_pb(raw).map(Some)
}

/// The proto value of a status.
pub fn order_status_to_pb(status: OrderStatus) -> pb::OrderStatus {
    match status {
        OrderStatus::Pending => pb::OrderStatus::Pending,
        OrderStatus::Paid => pb::OrderStatus::Paid,
        OrderStatus::Shipped => pb::OrderStatus::Shipped,
        OrderStatus::Delivered => pb::OrderStatus::Delivered,
        OrderStatus::Cancelled => pb::OrderStatus::Cancelled,
    }
}

fn to_i64(v: u64) -> i64 {
    // Stock is bounded by MAX_STOCK (plus cancelled restocks): far below i64::MAX.
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Never carries the password hash.
impl From<Account> for pb::Account {
    fn from(a: Account) -> Self {
        pb::Account {
            user_id: a.id.to_string(),
            username: a.username,
            created_at_unix_ms: a.created_at_ms,
        }
    }
}

impl From<crate::session::Issued> for pb::Session {
    fn from(s: crate::session::Issued) -> Self {
        pb::Session {
            token: s.token,
            expires_at_unix_ms: s.expires_at_ms,
        }
    }
}

impl From<Product> for pb::Product {
    fn from(p: Product) -> Self {
        pb::Product {
            id: p.id.to_string(),
            name: p.name,
            description: p.description,
            price_minor: p.price_minor,
            currency: p.currency,
            stock: to_i64(p.stock),
            updated_at_unix_ms: p.updated_at_ms,
        }
    }
}

impl From<CartLine> for pb::CartLine {
    fn from(l: CartLine) -> Self {
        pb::CartLine {
            product_id: l.product_id.to_string(),
            name: l.name,
            quantity: i64::from(l.quantity),
            unit_price_minor: l.unit_price_minor,
            line_total_minor: l.line_total_minor,
            stock: to_i64(l.stock),
        }
    }
}

impl From<CartView> for pb::Cart {
    fn from(c: CartView) -> Self {
        pb::Cart {
            user_id: c.user_id,
            lines: c.lines.into_iter().map(Into::into).collect(),
            total_minor: c.total_minor,
            currency: c.currency,
        }
    }
}

impl From<OrderLine> for pb::OrderLine {
    fn from(l: OrderLine) -> Self {
        pb::OrderLine {
            product_id: l.product_id.to_string(),
            name: l.name,
            quantity: i64::from(l.quantity),
            unit_price_minor: l.unit_price_minor,
            line_total_minor: l.line_total_minor,
        }
    }
}

impl From<Order> for pb::Order {
    fn from(o: Order) -> Self {
        pb::Order {
            id: o.id.to_string(),
            user_id: o.user_id,
            lines: o.lines.into_iter().map(Into::into).collect(),
            total_minor: o.total_minor,
            currency: o.currency,
            status: order_status_to_pb(o.status) as i32,
            idempotency_key: o.idempotency_key,
            created_at_unix_ms: o.created_at_ms,
            updated_at_unix_ms: o.updated_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every domain status round-trips; unset and unknown values are InvalidArgument.
    #[test]
    fn status_round_trip() {
        for s in OrderStatus::ALL {
            assert_eq!(
                order_status_from_pb(order_status_to_pb(s) as i32).unwrap(),
                s
            );
        }
        assert!(matches!(
            order_status_from_pb(0),
            Err(ShopError::InvalidArgument(_))
        ));
        assert!(matches!(
            order_status_from_pb(99),
            Err(ShopError::InvalidArgument(_))
        ));
    }

    /// Error categories map to the documented codes.
    #[test]
    fn error_codes() {
        use tonic::Code;
        let cases = [
            (ShopError::invalid("x"), Code::InvalidArgument),
            (ShopError::not_found("x"), Code::NotFound),
            (ShopError::precondition("x"), Code::FailedPrecondition),
            (
                ShopError::Unauthenticated("x".into()),
                Code::Unauthenticated,
            ),
            (
                ShopError::PermissionDenied("x".into()),
                Code::PermissionDenied,
            ),
            (ShopError::AlreadyExists("x".into()), Code::AlreadyExists),
            (
                ShopError::ResourceExhausted("x".into()),
                Code::ResourceExhausted,
            ),
            (ShopError::Unavailable("x".into()), Code::Unavailable),
            (ShopError::internal("x"), Code::Internal),
        ];
        for (err, code) in cases {
            assert_eq!(tonic::Status::from(err).code(), code);
        }
    }
}

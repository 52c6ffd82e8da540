//! HTTP ↔ protobuf: the one place that maps the gateway's own JSON shapes ([`crate::dto`])
//! to and from the protobuf messages.
//!
//! Everything else needs no mapping: replies that are a protobuf message as it is are
//! serialised by the derives `build.rs` adds (enum fields through
//! `concord::pb::json::EnumField`, one rule for every enum: its snake_case word, and
//! `unspecified` for a value this build does not know). The tests below pin those words.

use concord::pb::{predict::v1 as predict, shop::v1 as shop};

use crate::dto::{PredictInput, ProductPatch, ReplicationStatus};

impl From<PredictInput> for predict::PredictRequest {
    fn from(p: PredictInput) -> Self {
        Self {
            features: vec![p.sepal_length, p.sepal_width, p.petal_length, p.petal_width],
            policy: p.policy.into(),
        }
    }
}

impl ProductPatch {
    /// The UpdateProduct request for product `id` (from the path).
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

/// The cluster panel's part of a shop's status (its WAL and promotion LSNs are for
/// `concord status`, not the panel).
impl From<shop::GetReplicationStatusResponse> for ReplicationStatus {
    fn from(s: shop::GetReplicationStatusResponse) -> Self {
        Self {
            role: s.role(),
            term: s.term,
            last_lsn: s.last_lsn,
            replica_acked_lsn: s.replica_acked_lsn,
            lag_entries: s.lag_entries,
            lag_ms: s.lag_ms,
            mode: s.mode(),
            peer_connected: s.peer_connected,
            caught_up: s.caught_up,
            primary_address: s.primary_address,
        }
    }
}

#[cfg(test)]
mod tests {
    use concord::pb::{registry::v1 as registry, stake::v1 as stake};
    use serde_json::{json, Value};

    use super::*;

    /// Serialises `value`, which the test builds itself.
    fn to_json(value: impl serde::Serialize) -> Value {
        serde_json::to_value(value).expect("serialises")
    }

    /// Every enum travels as its lower-case word, in a message field as on its own; a value
    /// this build does not know is `unspecified`.
    #[test]
    fn enum_words() {
        let order = |status| shop::Order {
            status,
            ..Default::default()
        };
        let vote = |status| predict::NodeVote {
            status,
            ..Default::default()
        };
        let cases = [
            (
                to_json(order(shop::OrderStatus::Shipped.into()))["status"].clone(),
                "shipped",
            ),
            (to_json(order(99))["status"].clone(), "unspecified"),
            (
                to_json(vote(predict::VoteStatus::TimedOut.into()))["status"].clone(),
                "timed_out",
            ),
            (to_json(predict::Policy::Trust), "trust"),
            (to_json(stake::EventKind::Slash), "slash"),
            (to_json(shop::Role::Replica), "replica"),
            (to_json(shop::ReplicationMode::None), "none"),
            (
                to_json(shop::WriteInfo {
                    mode: shop::ReplicationMode::Sync.into(),
                    ..Default::default()
                })["mode"]
                    .clone(),
                "sync",
            ),
            (
                to_json(ReplicationStatus::from(
                    shop::GetReplicationStatusResponse {
                        role: 7,
                        ..Default::default()
                    },
                ))["role"]
                    .clone(),
                "unspecified",
            ),
        ];
        for (value, want) in cases {
            assert_eq!(value, json!(want));
        }
    }

    /// A word reads back as the enum's number; an unknown word is refused.
    #[test]
    fn enum_words_parse() {
        let body: Result<shop::UpdateOrderStatusResponse, _> =
            serde_json::from_value(json!({"order": {"id": "o", "user_id": "u", "lines": [],
                "total_minor": 0, "currency": "EUR", "status": "paid", "idempotency_key": "k",
                "created_at_unix_ms": 0, "updated_at_unix_ms": 0}, "write": null}));
        let status = body.expect("parses").order.map(|o| o.status());
        assert_eq!(status, Some(shop::OrderStatus::Paid));
        let bad: Result<shop::OrderStatus, _> = serde_json::from_value(json!("lost"));
        assert!(bad.is_err());
    }

    /// The shapes that are not one-to-one: totals always an object, the lease id never
    /// shown, a new product's optional fields.
    #[test]
    fn field_rules() {
        let stakes = to_json(stake::ListAccountsResponse::default());
        assert_eq!(stakes["totals"]["events"], json!(0));
        let verified = to_json(stake::VerifyLedgerResponse::default());
        assert!(verified["totals"].is_object());
        let instance = to_json(registry::Instance {
            lease_id: "secret-lease".into(),
            ..Default::default()
        });
        assert!(instance.get("lease_id").is_none(), "{instance}");
        let product: shop::CreateProductRequest =
            serde_json::from_value(json!({"name": "Tea", "price_minor": 300}))
                .expect("optional fields");
        assert_eq!((product.stock, product.currency.as_str()), (0, ""));
        let missing: Result<shop::CreateProductRequest, _> =
            serde_json::from_value(json!({"name": "Tea"}));
        assert!(missing.is_err(), "price_minor is required");
    }

    /// A predict input becomes the four features in the documented order.
    #[test]
    fn predict_input_feature_order() {
        let request = predict::PredictRequest::from(PredictInput {
            sepal_length: 1.0,
            sepal_width: 2.0,
            petal_length: 3.0,
            petal_width: 4.0,
            policy: predict::Policy::Mean,
        });
        assert_eq!(request.features, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(request.policy, predict::Policy::Mean as i32);
    }
}

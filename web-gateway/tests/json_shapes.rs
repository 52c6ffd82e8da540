//! Pins the JSON every route answers, and the schemas and operations of the OpenAPI
//! document, against `tests/json_shapes.golden.json`: the field names, the value shapes (integers as numbers,
//! enums as lower-case words, absent messages as `null`) and the values themselves, with
//! the ones that change from run to run (ids, times, hashes, addresses, latencies) masked
//! as `"<string>"` / `"<number>"`. The JSON types are derived from the protobuf messages;
//! this test is what keeps clients (the UI's script.js, the Python client, the OpenAPI
//! document) from seeing the difference.
//!
//! Run with `PIN_JSON_RECORD=1` to rewrite the golden file after an intended change, and
//! review its diff.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use concord_testkit::gateway::*;
use serde_json::{json, Value};

/// Keys whose values differ between runs; their values are replaced by their type.
const VOLATILE: &[&str] = &[
    "id",
    "user_id",
    "product_id",
    "request_id",
    "hash",
    "prev_hash",
    "head_hash",
    "address",
    "primary_address",
    "latency_ms",
    "lease_id",
    "error",
    "grpc_address",
    "lag_ms",
    "primary",
    "revision",
];

/// The golden file, next to this test.
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/json_shapes.golden.json");

/// Replaces volatile values (see [`VOLATILE`], `*_unix_ms`, registry metadata) by a type
/// marker and sorts arrays whose order depends on timing.
fn mask(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, v)| {
                    let volatile = VOLATILE.contains(&key.as_str())
                        || key.ends_with("unix_ms")
                        || key == "metadata";
                    let v = if volatile { marker(&v) } else { mask(v) };
                    (key, v)
                })
                .collect(),
        ),
        Value::Array(items) => {
            let mut items: Vec<Value> = items.into_iter().map(mask).collect();
            items.sort_by_key(Value::to_string);
            Value::Array(items)
        }
        other => other,
    }
}

/// The type of `value` in place of the value (objects keep their keys, masked).
fn marker(value: &Value) -> Value {
    match value {
        Value::Null => Value::Null,
        Value::Bool(_) => json!("<bool>"),
        Value::Number(_) => json!("<number>"),
        Value::String(_) => json!("<string>"),
        Value::Array(_) => json!("<array>"),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), marker(v))).collect())
        }
    }
}

/// The OpenAPI component schemas without their prose (descriptions may follow the
/// `.proto` comments; names, types, formats, required lists and enums may not change).
fn schemas_without_prose(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                // Prose is a string; a property named `description` is an object.
                .filter(|(k, v)| !(k == "description" && v.is_string()))
                .map(|(k, v)| (k, schemas_without_prose(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(schemas_without_prose).collect()),
        other => other,
    }
}

/// What the test saw, by "METHOD path (case)".
#[derive(Default)]
struct Seen(BTreeMap<String, Value>);

impl Seen {
    /// Records the status and masked JSON body of `response` under `label`.
    async fn record(&mut self, label: &str, response: reqwest::Response) -> Result<Value> {
        let status = response.status().as_u16();
        let body: Value = response.json().await.with_context(|| label.to_owned())?;
        self.0.insert(
            label.to_owned(),
            json!({"status": status, "body": mask(body.clone())}),
        );
        Ok(body)
    }
}

/// Every JSON route (shop, accounts, consensus, cluster, events) and the OpenAPI schemas
/// answer exactly the JSON pinned in the golden file.
#[tokio::test]
async fn every_route_answers_the_pinned_json() -> Result<()> {
    let h = Harness::start().await?;
    let shop = start_shop(&h.registry_addr()).await?;
    let consensus = start_consensus(&h.registry_addr(), 3).await?;
    let mut seen = Seen::default();
    let http = &h.http;

    // Shop: products.
    assert_eq!(wait_until_served(&h, "/api/products").await?.status(), 200);
    let created = seen
        .record(
            "POST /api/products",
            http.post(h.url("/api/products"))
                .bearer_auth(ADMIN)
                .json(&json!({"name": "Teapot", "price_minor": 1250, "stock": 5}))
                .send()
                .await?,
        )
        .await?;
    let id = created["product"]["id"].as_str().context("id")?.to_owned();
    seen.record(
        "PATCH /api/products/{id}",
        http.patch(h.url(&format!("/api/products/{id}")))
            .bearer_auth(ADMIN)
            .json(&json!({"stock": 10, "description": "short and stout"}))
            .send()
            .await?,
    )
    .await?;
    seen.record(
        "GET /api/products/{id}",
        h.get(&format!("/api/products/{id}")).await?,
    )
    .await?;
    seen.record(
        "GET /api/products",
        h.get("/api/products?name_contains=teap&page_size=5")
            .await?,
    )
    .await?;
    let spare = http
        .post(h.url("/api/products"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "Spare", "price_minor": 1, "currency": "USD"}))
        .send()
        .await?
        .json::<Value>()
        .await?;
    let spare = spare["product"]["id"].as_str().context("id")?.to_owned();
    seen.record(
        "DELETE /api/products/{id}",
        http.delete(h.url(&format!("/api/products/{spare}")))
            .bearer_auth(ADMIN)
            .send()
            .await?,
    )
    .await?;

    // Accounts.
    let credentials = json!({"username": "alice", "password": PASSWORD});
    let response = http
        .post(h.url("/api/signup"))
        .json(&credentials)
        .send()
        .await?;
    let cookie = session_cookie(&response).context("cookie")?;
    seen.record("POST /api/signup", response).await?;
    seen.record(
        "POST /api/signin",
        http.post(h.url("/api/signin"))
            .json(&credentials)
            .send()
            .await?,
    )
    .await?;
    seen.record(
        "GET /api/account",
        http.get(h.url("/api/account"))
            .header("cookie", &cookie)
            .send()
            .await?,
    )
    .await?;

    // Shop: cart and orders.
    let as_alice = |request: reqwest::RequestBuilder| request.header("cookie", &cookie);
    seen.record(
        "POST /api/carts/{user_id}/items",
        as_alice(http.post(h.url("/api/carts/me/items")))
            .json(&json!({"product_id": id, "quantity": 2}))
            .send()
            .await?,
    )
    .await?;
    seen.record(
        "PUT /api/carts/{user_id}/items/{product_id}",
        as_alice(http.put(h.url(&format!("/api/carts/me/items/{id}"))))
            .json(&json!({"quantity": 3}))
            .send()
            .await?,
    )
    .await?;
    seen.record(
        "GET /api/carts/{user_id}",
        as_alice(http.get(h.url("/api/carts/me"))).send().await?,
    )
    .await?;
    let place = || {
        as_alice(http.post(h.url("/api/orders")))
            .header("idempotency-key", "pin-1")
            .json(&json!({}))
            .send()
    };
    let placed = seen.record("POST /api/orders", place().await?).await?;
    seen.record("POST /api/orders (replay)", place().await?)
        .await?;
    let order_id = placed["order"]["id"]
        .as_str()
        .context("order id")?
        .to_owned();
    seen.record(
        "GET /api/orders",
        as_alice(http.get(h.url("/api/orders"))).send().await?,
    )
    .await?;
    seen.record(
        "GET /api/orders/{order_id}",
        as_alice(http.get(h.url(&format!("/api/orders/{order_id}"))))
            .send()
            .await?,
    )
    .await?;
    seen.record(
        "PUT /api/orders/{order_id}/status",
        http.put(h.url(&format!("/api/orders/{order_id}/status")))
            .bearer_auth(ADMIN)
            .json(&json!({"status": "paid"}))
            .send()
            .await?,
    )
    .await?;
    seen.record(
        "GET /api/admin/orders",
        http.get(h.url("/api/admin/orders?status=paid"))
            .bearer_auth(ADMIN)
            .send()
            .await?,
    )
    .await?;
    seen.record(
        "GET /api/admin/orders (none shipped)",
        http.get(h.url("/api/admin/orders?status=shipped"))
            .bearer_auth(ADMIN)
            .send()
            .await?,
    )
    .await?;
    as_alice(http.post(h.url("/api/carts/me/items")))
        .json(&json!({"product_id": id, "quantity": 1}))
        .send()
        .await?;
    seen.record(
        "DELETE /api/carts/{user_id}/items/{product_id}",
        as_alice(http.delete(h.url(&format!("/api/carts/me/items/{id}"))))
            .send()
            .await?,
    )
    .await?;
    seen.record(
        "DELETE /api/carts/{user_id}",
        as_alice(http.delete(h.url("/api/carts/me"))).send().await?,
    )
    .await?;

    // Consensus: the nodes stake in a fixed order, so the first events are fixed.
    let query = "/api/predict?sepal_length=5.1&sepal_width=3.5&petal_length=1.4&petal_width=0.2&policy=trust";
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let response = wait_until_served(&h, query).await?;
        let ready = response.status() == 200
            && response.json::<Value>().await?["answered"].as_u64() == Some(3);
        if ready || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    seen.record("GET /api/predict", h.get(query).await?).await?;
    let prediction = seen
        .record(
            "POST /api/predict",
            http.post(h.url("/api/predict"))
                .json(&json!({"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5}))
                .send()
                .await?,
        )
        .await?;
    let request_id = prediction["request_id"].as_str().context("request id")?;
    seen.record(
        "POST /api/outcomes",
        http.post(h.url("/api/outcomes"))
            .bearer_auth(concord_testkit::ORACLE_TOKEN)
            .json(&json!({"request_id": request_id, "true_label": 2}))
            .send()
            .await?,
    )
    .await?;
    let stakes = seen
        .record("GET /api/stakes", h.get("/api/stakes").await?)
        .await?;
    let node = stakes["accounts"][0]["node_id"]
        .as_str()
        .context("node id")?
        .to_owned();
    seen.record(
        "GET /api/stakes/{node_id}",
        h.get(&format!("/api/stakes/{node}")).await?,
    )
    .await?;
    seen.record(
        "GET /api/ledger/events",
        h.get("/api/ledger/events?page_size=1").await?,
    )
    .await?;
    seen.record("GET /api/ledger/verify", h.get("/api/ledger/verify").await?)
        .await?;

    // Malformed bodies and queries: the parser's reason names the same fields and words.
    let bad: &[(&str, reqwest::RequestBuilder)] = &[
        (
            "POST /api/products (no price)",
            http.post(h.url("/api/products"))
                .bearer_auth(ADMIN)
                .json(&json!({"name": "Teapot"})),
        ),
        (
            "PUT /api/orders/{order_id}/status (unknown status)",
            http.put(h.url(&format!("/api/orders/{order_id}/status")))
                .bearer_auth(ADMIN)
                .json(&json!({"status": "lost"})),
        ),
        (
            "POST /api/outcomes (label as text)",
            http.post(h.url("/api/outcomes"))
                .bearer_auth(concord_testkit::ORACLE_TOKEN)
                .json(&json!({"request_id": "r", "true_label": "two"})),
        ),
        (
            "GET /api/predict (unknown policy)",
            http.get(h.url(
                "/api/predict?sepal_length=1&sepal_width=1&petal_length=1&petal_width=1&policy=vote",
            )),
        ),
        (
            "GET /api/admin/orders (unknown status)",
            http.get(h.url("/api/admin/orders?status=lost"))
                .bearer_auth(ADMIN),
        ),
    ];
    for (label, request) in bad {
        let request = request.try_clone().context("clonable request")?;
        seen.record(label, request.send().await?).await?;
    }

    // Cluster.
    seen.record(
        "GET /api/services/{name}",
        h.get("/api/services/shop").await?,
    )
    .await?;
    seen.record("GET /api/cluster", h.get("/api/cluster").await?)
        .await?;
    let frames = read_sse(h.get("/api/events").await?, |frames| {
        frames.iter().any(|f| f.0 == "cluster") && frames.iter().any(|f| f.0 == "ledger")
    })
    .await?;
    for kind in ["cluster", "ledger"] {
        let frame = frames.iter().find(|f| f.0 == kind).context("frame")?;
        let data: Value = serde_json::from_str(&frame.1)?;
        seen.0.insert(format!("SSE /api/events {kind}"), mask(data));
    }

    // The OpenAPI schemas and operations (parameters, bodies, replies), without prose.
    let doc: Value = h.get("/api/openapi.json").await?.json().await?;
    seen.0.insert(
        "OpenAPI components.schemas".into(),
        schemas_without_prose(doc["components"]["schemas"].clone()),
    );
    seen.0.insert(
        "OpenAPI paths".into(),
        schemas_without_prose(doc["paths"].clone()),
    );

    consensus.stop().await;
    shop.stop().await;
    h.stop().await?;

    let actual = serde_json::to_string_pretty(&seen.0)? + "\n";
    if std::env::var_os("PIN_JSON_RECORD").is_some() {
        std::fs::write(GOLDEN, &actual)?;
        return Ok(());
    }
    let golden = std::fs::read_to_string(GOLDEN).context(GOLDEN)?;
    let golden: BTreeMap<String, Value> = serde_json::from_str(&golden)?;
    for (label, want) in &golden {
        assert_eq!(seen.0.get(label), Some(want), "{label}");
    }
    assert_eq!(
        seen.0.keys().collect::<Vec<_>>(),
        golden.keys().collect::<Vec<_>>(),
        "the same cases"
    );
    Ok(())
}

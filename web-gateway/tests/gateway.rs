//! End-to-end tests of the gateway over real sockets: an in-process registry and gateway on
//! `127.0.0.1:0`, and where a backend is needed a small fake aggregator (Predictor +
//! Staking) or the real shop registered in that registry.

use std::{collections::HashMap, time::Duration};

use anyhow::{Context, Result};
use concord_testkit::gateway::*;
use concord_web_gateway::error::ErrorBody;
use futures::StreamExt;
use serde_json::Value;

/// `GET /hello` answers the greeting, with a request id on the reply.
#[tokio::test]
async fn hello_answers_greeting() -> Result<()> {
    let h = Harness::start().await?;
    let response = h.get("/hello").await?;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(response.text().await?, "Hello, World!");
    h.stop().await
}

/// The UI and its assets are served from the binary.
#[tokio::test]
async fn static_ui_is_served() -> Result<()> {
    let h = Harness::start().await?;
    for (path, content_type) in [
        ("/", "text/html"),
        ("/script.js", "text/javascript"),
        ("/style.css", "text/css"),
    ] {
        let response = h.get(path).await?;
        assert_eq!(response.status(), 200, "{path}");
        let ct = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(ct.starts_with(content_type), "{path}: {ct}");
        assert!(!response.text().await?.is_empty(), "{path}");
    }
    h.stop().await
}

/// `GET /api/services/{name}` lists exactly the live registrations of that service.
#[tokio::test]
async fn service_lookup_lists_live_instances() -> Result<()> {
    let h = Harness::start().await?;
    let keeper = h
        .register("predictor", "127.0.0.1:4242", &[("model", "knn")])
        .await?;
    let body: Value = h.get("/api/services/predictor").await?.json().await?;
    assert_eq!(body["service"], "predictor");
    let instances = body["instances"].as_array().context("instances")?;
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0]["address"], "127.0.0.1:4242");
    assert_eq!(instances[0]["metadata"]["model"], "knn");

    let empty: Value = h.get("/api/services/nothing-here").await?.json().await?;
    assert_eq!(empty["instances"], serde_json::json!([]));

    keeper.deregister().await;
    let gone: Value = h.get("/api/services/predictor").await?.json().await?;
    assert_eq!(gone["instances"], serde_json::json!([]));
    h.stop().await
}

/// Malformed JSON, a wrongly typed field, a bad query and a bad enum are 400s that say why.
#[tokio::test]
async fn malformed_input_is_400_with_reason() -> Result<()> {
    let h = Harness::start().await?;
    let cases = [
        ("/api/predict", "{not json", "line 1"),
        ("/api/predict", r#"{"sepal_length": "x"}"#, "sepal_length"),
        (
            "/api/predict",
            r#"{"sepal_length":1,"sepal_width":1,"petal_length":1,"petal_width":1,"policy":"bogus"}"#,
            "policy",
        ),
        ("/api/products", r#"{"name": 5, "price_minor": 1}"#, "name"),
    ];
    for (path, body, mentions) in cases {
        let response = h
            .http
            .post(h.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let err = expect_error(response, 400, "invalid_argument").await?;
        assert!(
            err.message.to_lowercase().contains(mentions),
            "{path} {body}: {}",
            err.message
        );
    }
    let response = h.get("/api/predict?sepal_length=abc").await?;
    expect_error(response, 400, "invalid_argument").await?;
    h.stop().await
}

/// Oversized bodies, a missing Idempotency-Key and unknown paths get JSON errors too.
#[tokio::test]
async fn request_shape_errors_are_json() -> Result<()> {
    let h = Harness::start().await?;
    let big = format!(r#"{{"name":"{}","price_minor":1}}"#, "x".repeat(4096));
    let response = h
        .http
        .post(h.url("/api/products"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await?;
    expect_error(response, 413, "payload_too_large").await?;

    let response = h
        .http
        .post(h.url("/api/orders"))
        .json(&serde_json::json!({"user_id": "alice"}))
        .send()
        .await?;
    let err = expect_error(response, 400, "invalid_argument").await?;
    assert!(err.message.contains("Idempotency-Key"), "{}", err.message);

    expect_error(h.get("/api/nope").await?, 404, "no_route").await?;
    h.stop().await
}

/// Error responses axum or hyper-level limits would send with an empty body — a method the
/// path does not serve (405) and an over-long request target (414) — are JSON too.
#[tokio::test]
async fn method_and_uri_errors_are_json() -> Result<()> {
    let h = Harness::start().await?;
    let response = h.http.delete(h.url("/api/predict")).send().await?;
    let allow = response
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        allow.contains("GET") && allow.contains("POST"),
        "Allow: {allow}"
    );
    let err = expect_error(response, 405, "method_not_allowed").await?;
    assert!(err.message.contains("DELETE"), "{}", err.message);

    let response = h.http.patch(h.url("/api/orders")).send().await?;
    expect_error(response, 405, "method_not_allowed").await?;

    let long = "x".repeat(concord_web_gateway::error::MAX_URI_BYTES + 1);
    let response = h
        .get(&format!("/api/products?name_contains={long}"))
        .await?;
    let err = expect_error(response, 414, "uri_too_long").await?;
    assert!(err.message.contains("limit"), "{}", err.message);
    h.stop().await
}

/// With no shop or aggregator registered, calls are 503 JSON errors naming the service.
#[tokio::test]
async fn missing_backend_is_503() -> Result<()> {
    let h = Harness::start().await?;
    for (path, service) in [
        ("/api/products", "shop"),
        ("/api/carts/alice", "shop"),
        ("/api/stakes", "aggregator"),
        (
            "/api/predict?sepal_length=5.1&sepal_width=3.5&petal_length=1.4&petal_width=0.2",
            "aggregator",
        ),
    ] {
        let err = expect_error(h.get(path).await?, 503, "unavailable").await?;
        assert!(err.message.contains(service), "{path}: {}", err.message);
    }
    h.stop().await
}

/// A prediction whose first aggregator is dead is retried on the live one, by GET and POST.
#[tokio::test]
async fn predict_fails_over_to_a_live_aggregator() -> Result<()> {
    let h = Harness::start().await?;
    let dead = h
        .register("aggregator", &dead_address().await?, &[])
        .await?;
    let fake = start_fake_aggregator("fake-consensus").await?;
    let live = h
        .register("aggregator", &fake.addr.to_string(), &[])
        .await?;

    let path = "/api/predict?sepal_length=6.3&sepal_width=3.3&petal_length=6.0&petal_width=2.5&policy=trust";
    // Wait until the gateway's watch has seen both instances (the dead one is tried first).
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let body: Value = loop {
        let response = wait_until_served(&h, path).await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if status == 200 || tokio::time::Instant::now() > deadline {
            assert_eq!(status, 200, "{body}");
            break body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["class_name"], "virginica");
    assert_eq!(body["policy"], "trust");
    assert_eq!(body["model"], "fake-consensus");
    assert_eq!(body["votes"][0]["status"], "answered");

    let response = h
        .http
        .post(h.url("/api/predict"))
        .json(&serde_json::json!({"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await?;
    assert_eq!(body["request_id"], "req-1");
    assert_eq!(body["policy"], "unspecified");

    drop(dead);
    drop(live);
    fake.stop().await;
    h.stop().await
}

/// The oracle's bearer token and the request id reach the Staking service; backend codes
/// map to HTTP codes.
#[tokio::test]
async fn outcome_passes_bearer_through() -> Result<()> {
    let h = Harness::start().await?;
    let fake = start_fake_aggregator("fake").await?;
    let _keeper = h
        .register("aggregator", &fake.addr.to_string(), &[])
        .await?;
    wait_until_served(&h, "/api/stakes/node-9").await?;

    let outcome = serde_json::json!({"request_id": "req-1", "true_label": 2});
    let response = h
        .http
        .post(h.url("/api/outcomes"))
        .json(&outcome)
        .send()
        .await?;
    expect_error(response, 401, "unauthenticated").await?;

    let response = h
        .http
        .post(h.url("/api/outcomes"))
        .bearer_auth(ORACLE)
        .json(&outcome)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await?;
    assert_eq!(body["consensus_correct"], true);

    let response = h
        .http
        .post(h.url("/api/outcomes"))
        .bearer_auth(ORACLE)
        .json(&serde_json::json!({"request_id": "other", "true_label": 0}))
        .send()
        .await?;
    expect_error(response, 404, "not_found").await?;
    let response = h
        .http
        .get(h.url("/api/stakes/node-9"))
        .header("x-request-id", "rid-42")
        .send()
        .await?;
    assert_eq!(
        response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("rid-42"),
        "request id echoed"
    );
    let err = expect_error(response, 404, "not_found").await?;
    assert!(
        err.message.contains("rid-42"),
        "request id forwarded: {}",
        err.message
    );
    expect_error(h.get("/api/ledger/verify").await?, 501, "unimplemented").await?;

    fake.stop().await;
    h.stop().await
}

/// `/api/events` sends the cluster view and ledger events (resuming after Last-Event-ID),
/// and the stream ends when the server shuts down.
#[tokio::test]
async fn events_stream_cluster_and_ledger_until_shutdown() -> Result<()> {
    let h = Harness::start().await?;
    let fake = start_fake_aggregator("fake").await?;
    let _keeper = h
        .register("aggregator", &fake.addr.to_string(), &[])
        .await?;

    let response = h
        .http
        .get(h.url("/api/events"))
        .header("last-event-id", "1")
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let seen = read_sse(response, |seen| {
        seen.iter()
            .any(|e| e.0 == "cluster" && e.1.contains("aggregator"))
            && seen.iter().filter(|e| e.0 == "ledger").count() >= 2
    })
    .await?;
    let ledger: Vec<&str> = seen
        .iter()
        .filter(|e| e.0 == "ledger")
        .map(|e| e.2.as_str())
        .collect();
    assert_eq!(ledger, vec!["2", "3"], "resumes after Last-Event-ID 1");
    let cluster = seen
        .iter()
        .find(|e| e.0 == "cluster")
        .context("cluster event")?;
    let view: Value = serde_json::from_str(&cluster.1)?;
    assert_eq!(view["registry"]["up"], true);

    // A second client stays connected until shutdown, then its stream ends.
    let response = h.get("/api/events").await?;
    let Harness {
        registry,
        gateway,
        http: _,
    } = h;
    let reader = tokio::spawn(async move {
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            if chunk.is_err() {
                break;
            }
        }
    });
    gateway.stop().await;
    tokio::time::timeout(DEADLINE, reader)
        .await
        .context("event stream did not end on shutdown")??;
    fake.stop().await;
    registry.stop().await;
    Ok(())
}

/// Every route the gateway serves is in the OpenAPI document, and every documented
/// operation is routed (not the JSON 404 fallback, not 405).
#[tokio::test]
async fn openapi_documents_every_route() -> Result<()> {
    let h = Harness::start().await?;
    let doc: Value = h.get("/api/openapi.json").await?.json().await?;
    assert!(doc["openapi"]
        .as_str()
        .unwrap_or_default()
        .starts_with("3."));
    let paths = doc["paths"].as_object().context("paths")?;

    let served: &[(&str, &str)] = &[
        ("get", "/hello"),
        ("get", "/"),
        ("get", "/script.js"),
        ("get", "/style.css"),
        ("get", "/api/openapi.json"),
        ("get", "/api/products"),
        ("post", "/api/products"),
        ("get", "/api/products/{id}"),
        ("patch", "/api/products/{id}"),
        ("delete", "/api/products/{id}"),
        ("get", "/api/carts/{user_id}"),
        ("delete", "/api/carts/{user_id}"),
        ("post", "/api/carts/{user_id}/items"),
        ("put", "/api/carts/{user_id}/items/{product_id}"),
        ("delete", "/api/carts/{user_id}/items/{product_id}"),
        ("post", "/api/orders"),
        ("get", "/api/orders"),
        ("get", "/api/orders/{order_id}"),
        ("put", "/api/orders/{order_id}/status"),
        ("get", "/api/admin/orders"),
        ("post", "/api/signup"),
        ("post", "/api/signin"),
        ("post", "/api/signout"),
        ("get", "/api/account"),
        ("get", "/api/predict"),
        ("post", "/api/predict"),
        ("post", "/api/outcomes"),
        ("get", "/api/stakes"),
        ("get", "/api/stakes/{node_id}"),
        ("get", "/api/ledger/events"),
        ("get", "/api/ledger/verify"),
        ("get", "/api/services/{name}"),
        ("get", "/api/cluster"),
        ("get", "/api/events"),
        ("get", "/api/admin/cluster"),
        ("post", "/api/admin/cluster/{child}/{action}"),
    ];
    let mut documented = 0;
    for (path, item) in paths {
        for method in item.as_object().context("path item")?.keys() {
            documented += 1;
            assert!(
                served.contains(&(method.as_str(), path.as_str())),
                "{method} {path} is documented but not in the served list"
            );
        }
    }
    assert_eq!(documented, served.len(), "documented operation count");

    for (method, path) in served {
        assert!(
            paths.get(*path).and_then(|p| p.get(*method)).is_some(),
            "{method} {path} missing from OpenAPI"
        );
        let concrete = path
            .replace("{id}", "p-1")
            .replace("{user_id}", "alice")
            .replace("{product_id}", "p-1")
            .replace("{order_id}", "o-1")
            .replace("{node_id}", "node-1")
            .replace("{name}", "shop")
            .replace("{child}", "node-1")
            .replace("{action}", "kill");
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes())?;
        let response = h
            .http
            .request(method.clone(), h.url(&concrete))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await?;
        let status = response.status().as_u16();
        assert_ne!(status, 405, "{method} {concrete}");
        if status == 404 {
            let body: ErrorBody = response.json().await?;
            assert_ne!(body.code, "no_route", "{method} {concrete} not routed");
        }
    }
    h.stop().await
}

/// Registry metadata (`role`, `term`) decides the primary shown in `/api/cluster` (the
/// registry admits one live primary: here a replica at term 1 and the primary of term 2),
/// and an unreachable shop is reported with its error instead of failing the view.
#[tokio::test]
async fn cluster_view_names_highest_term_primary() -> Result<()> {
    let h = Harness::start().await?;
    let old = dead_address().await?;
    let new = dead_address().await?;
    let _a = h
        .register("shop", &old, &[("role", "replica"), ("term", "1")])
        .await?;
    let _b = h
        .register("shop", &new, &[("role", "primary"), ("term", "2")])
        .await?;
    let view: Value = h.get("/api/cluster").await?.json().await?;
    assert_eq!(view["registry"]["up"], true);
    assert_eq!(view["primary"], new.as_str());
    assert_eq!(view["term"], 2);
    let shops = view["shops"].as_array().context("shops")?;
    assert_eq!(shops.len(), 2);
    assert!(shops.iter().all(|s| s["error"].is_string()), "{view}");
    let services: HashMap<String, usize> = view["instances"]
        .as_array()
        .context("instances")?
        .iter()
        .fold(HashMap::new(), |mut acc, i| {
            *acc.entry(i["service"].as_str().unwrap_or("").to_owned())
                .or_default() += 1;
            acc
        });
    assert_eq!(services.get("shop"), Some(&2));
    h.stop().await
}

/// Products, cart and orders round-trip through HTTP to the real shop: admin auth passed
/// through, idempotent placement, the order state machine, and codes mapped to HTTP.
#[tokio::test]
async fn shop_round_trip_through_http() -> Result<()> {
    let h = Harness::start().await?;
    let shop = start_shop(&h.registry_addr()).await?;
    let response = wait_until_served(&h, "/api/products").await?;
    assert_eq!(
        response.status(),
        200,
        "shop reachable through the registry"
    );

    let new_product = serde_json::json!({"name": "Teapot", "description": "short and stout",
        "price_minor": 1250, "currency": "EUR", "stock": 5});
    let response = h
        .http
        .post(h.url("/api/products"))
        .json(&new_product)
        .send()
        .await?;
    expect_error(response, 401, "unauthenticated").await?;
    let response = h
        .http
        .post(h.url("/api/products"))
        .bearer_auth(ADMIN)
        .json(&new_product)
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await?;
    let id = created["product"]["id"]
        .as_str()
        .context("product id")?
        .to_owned();
    assert!(
        created["write"]["lsn"].as_u64().unwrap_or(0) > 0,
        "{created}"
    );

    let response = h
        .http
        .patch(h.url(&format!("/api/products/{id}")))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"stock": 10}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let product: Value = h.get(&format!("/api/products/{id}")).await?.json().await?;
    assert_eq!(product["stock"], 10);
    assert_eq!(product["name"], "Teapot");
    let page: Value = h
        .get("/api/products?name_contains=teap")
        .await?
        .json()
        .await?;
    assert_eq!(page["products"].as_array().map(Vec::len), Some(1));

    let alice = sign_up(&h, "alice").await?;
    let response = h
        .http
        .post(h.url("/api/carts/me/items"))
        .header("cookie", &alice.cookie)
        .json(&serde_json::json!({"product_id": id, "quantity": 2}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let response = h
        .http
        .put(h.url(&format!("/api/carts/{}/items/{id}", alice.user_id)))
        .header("cookie", &alice.cookie)
        .json(&serde_json::json!({"quantity": 3}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let get_as = |path: String, cookie: String| {
        let request = h.http.get(h.url(&path)).header("cookie", cookie);
        async move { Ok::<_, anyhow::Error>(request.send().await?) }
    };
    let cart: Value = get_as("/api/carts/me".into(), alice.cookie.clone())
        .await?
        .json()
        .await?;
    assert_eq!(cart["total_minor"], 3750);
    assert_eq!(cart["lines"][0]["quantity"], 3);
    assert_eq!(cart["user_id"], alice.user_id.as_str());

    let place = || {
        h.http
            .post(h.url("/api/orders"))
            .header("cookie", &alice.cookie)
            .header("idempotency-key", "checkout-1")
            .json(&serde_json::json!({}))
            .send()
    };
    let response = place().await?;
    assert_eq!(response.status(), 201);
    let placed: Value = response.json().await?;
    let order_id = placed["order"]["id"]
        .as_str()
        .context("order id")?
        .to_owned();
    assert_eq!(placed["order"]["status"], "pending");
    assert_eq!(placed["order"]["total_minor"], 3750);
    let response = place().await?;
    assert_eq!(response.status(), 200, "same key replays");
    let replay: Value = response.json().await?;
    assert_eq!(replay["replayed"], true);
    assert_eq!(replay["order"]["id"], order_id.as_str());

    let cart: Value = get_as("/api/carts/me".into(), alice.cookie.clone())
        .await?
        .json()
        .await?;
    assert_eq!(
        cart["lines"],
        serde_json::json!([]),
        "placing clears the cart"
    );
    let product: Value = h.get(&format!("/api/products/{id}")).await?.json().await?;
    assert_eq!(product["stock"], 7, "placing takes stock");

    let orders: Value = get_as("/api/orders".into(), alice.cookie.clone())
        .await?
        .json()
        .await?;
    assert_eq!(orders["orders"].as_array().map(Vec::len), Some(1));
    let order: Value = get_as(format!("/api/orders/{order_id}"), alice.cookie.clone())
        .await?
        .json()
        .await?;
    assert_eq!(order["idempotency_key"], "checkout-1");

    let status_url = h.url(&format!("/api/orders/{order_id}/status"));
    // Changing an order's status is an admin action: no token or a wrong one is a 401, a
    // customer's session a 403, and the order stays pending.
    let response = h
        .http
        .put(&status_url)
        .json(&serde_json::json!({"status": "paid"}))
        .send()
        .await?;
    expect_error(response, 401, "unauthenticated").await?;
    let response = h
        .http
        .put(&status_url)
        .bearer_auth("not-the-admin")
        .json(&serde_json::json!({"status": "paid"}))
        .send()
        .await?;
    expect_error(response, 401, "unauthenticated").await?;
    let response = h
        .http
        .put(&status_url)
        .header("cookie", &alice.cookie)
        .json(&serde_json::json!({"status": "paid"}))
        .send()
        .await?;
    expect_error(response, 403, "permission_denied").await?;
    let order: Value = get_as(format!("/api/orders/{order_id}"), alice.cookie.clone())
        .await?
        .json()
        .await?;
    assert_eq!(order["status"], "pending");
    let response = h
        .http
        .put(&status_url)
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"status": "paid"}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let paid: Value = response.json().await?;
    assert_eq!(paid["order"]["status"], "paid");
    let response = h
        .http
        .put(&status_url)
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"status": "pending"}))
        .send()
        .await?;
    expect_error(response, 409, "failed_precondition").await?;

    expect_error(
        get_as("/api/orders/o-999999".into(), alice.cookie.clone()).await?,
        404,
        "not_found",
    )
    .await?;
    expect_error(
        get_as("/api/orders/bogus".into(), alice.cookie.clone()).await?,
        400,
        "invalid_argument",
    )
    .await?;
    let response = h
        .http
        .delete(h.url(&format!("/api/products/{id}")))
        .bearer_auth(ADMIN)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    expect_error(
        h.get(&format!("/api/products/{id}")).await?,
        404,
        "not_found",
    )
    .await?;

    let view: Value = h.get("/api/cluster").await?.json().await?;
    assert_eq!(view["primary"], shop.addr.to_string().as_str(), "{view}");
    assert_eq!(view["shops"][0]["replication"]["role"], "primary", "{view}");

    shop.stop().await;
    h.stop().await
}

/// Customer accounts over HTTP: the session cookie's attributes, 409 for a taken name, 401
/// for a wrong password or no session, 403 for another user's cart or a customer on an
/// admin route, 404 for another customer's order, cross-site cookie writes refused,
/// sign-out, and the admin's list.
#[tokio::test]
async fn accounts_through_http() -> Result<()> {
    let h = Harness::start().await?;
    let shop = start_shop(&h.registry_addr()).await?;
    assert_eq!(wait_until_served(&h, "/api/products").await?.status(), 200);
    let response = h
        .http
        .post(h.url("/api/products"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"name": "Tea", "price_minor": 300, "stock": 9}))
        .send()
        .await?;
    let created: Value = response.json().await?;
    let id = created["product"]["id"].as_str().context("id")?.to_owned();

    let response = h
        .http
        .post(h.url("/api/signup"))
        .json(&serde_json::json!({"username": "Alice", "password": PASSWORD}))
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .context("set-cookie")?
        .to_owned();
    for want in [
        "concord_session=",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=",
    ] {
        assert!(set_cookie.contains(want), "{want} in {set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    let body: Value = response.json().await?;
    assert_eq!(body["account"]["username"], "Alice");
    assert!(body.get("token").is_none() && !body.to_string().contains(PASSWORD));
    let alice = Customer {
        user_id: body["account"]["user_id"]
            .as_str()
            .context("id")?
            .to_owned(),
        cookie: set_cookie.split(';').next().unwrap_or_default().to_owned(),
    };

    let response = h
        .http
        .post(h.url("/api/signup"))
        .json(&serde_json::json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await?;
    expect_error(response, 409, "already_exists").await?;
    let response = h
        .http
        .post(h.url("/api/signin"))
        .json(&serde_json::json!({"username": "alice", "password": "not the password"}))
        .send()
        .await?;
    expect_error(response, 401, "unauthenticated").await?;
    let response = h
        .http
        .post(h.url("/api/signin"))
        .json(&serde_json::json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let fresh = session_cookie(&response).context("sign-in sets the cookie")?;
    let me: Value = h
        .http
        .get(h.url("/api/account"))
        .header("cookie", &fresh)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(me["user_id"], alice.user_id.as_str());
    expect_error(h.get("/api/account").await?, 401, "unauthenticated").await?;
    expect_error(h.get("/api/carts/me").await?, 401, "unauthenticated").await?;

    let response = h
        .http
        .post(h.url("/api/carts/me/items"))
        .header("cookie", &alice.cookie)
        .json(&serde_json::json!({"product_id": id, "quantity": 1}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    // The same cookie write from another site's page is refused before the shop sees it.
    let response = h
        .http
        .post(h.url("/api/carts/me/items"))
        .header("cookie", &alice.cookie)
        .header("sec-fetch-site", "cross-site")
        .json(&serde_json::json!({"product_id": id, "quantity": 1}))
        .send()
        .await?;
    expect_error(response, 403, "permission_denied").await?;
    let response = h
        .http
        .post(h.url("/api/orders"))
        .header("cookie", &alice.cookie)
        .header("idempotency-key", "a-1")
        .json(&serde_json::json!({}))
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    let placed: Value = response.json().await?;
    let order_id = placed["order"]["id"].as_str().context("order")?.to_owned();

    let bob = sign_up(&h, "bob").await?;
    let as_bob = |path: String| {
        h.http
            .get(h.url(&path))
            .header("cookie", &bob.cookie)
            .send()
    };
    expect_error(
        as_bob(format!("/api/orders/{order_id}")).await?,
        404,
        "not_found",
    )
    .await?;
    expect_error(
        as_bob(format!("/api/carts/{}", alice.user_id)).await?,
        403,
        "permission_denied",
    )
    .await?;
    expect_error(
        as_bob(format!("/api/orders?user_id={}", alice.user_id)).await?,
        403,
        "permission_denied",
    )
    .await?;
    let response = h
        .http
        .post(h.url("/api/orders"))
        .header("cookie", &bob.cookie)
        .header("idempotency-key", "steal")
        .json(&serde_json::json!({"user_id": alice.user_id}))
        .send()
        .await?;
    expect_error(response, 403, "permission_denied").await?;

    let all: Value = h
        .http
        .get(h.url("/api/admin/orders?status=pending"))
        .bearer_auth(ADMIN)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(all["orders"][0]["id"], order_id.as_str(), "{all}");
    let response = as_bob("/api/admin/orders".into()).await?;
    expect_error(response, 403, "permission_denied").await?;

    let response = h
        .http
        .post(h.url("/api/signout"))
        .header("cookie", &alice.cookie)
        .send()
        .await?;
    assert_eq!(response.status(), 204);
    let cleared = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        cleared.starts_with("concord_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    // The session itself ended on the shop: a copy of the old cookie opens nothing, and
    // signing out with it again only clears the cookie.
    let replayed = h
        .http
        .get(h.url("/api/account"))
        .header("cookie", &alice.cookie)
        .send()
        .await?;
    expect_error(replayed, 401, "unauthenticated").await?;
    let again = h
        .http
        .post(h.url("/api/signout"))
        .header("cookie", &alice.cookie)
        .send()
        .await?;
    assert_eq!(again.status(), 204);

    shop.stop().await;
    h.stop().await
}

/// Polls `GET path` until `ok` accepts the JSON body, or fails at the deadline.
async fn poll_json(h: &Harness, path: &str, ok: impl Fn(u16, &Value) -> bool) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let response = h.get(path).await?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if ok(status, &body) {
            return Ok(body);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("GET {path}: condition not met; last {status} {body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A clean primary stop (it deregisters): the gateway follows the promoted replica.
#[tokio::test]
async fn shop_failover_after_clean_stop() -> Result<()> {
    shop_failover_is_followed(false).await
}

/// A primary crash (its lease must expire): reads are retried on the replica at once,
/// and writes reach the replica once it has promoted itself.
#[tokio::test]
async fn shop_failover_after_crash() -> Result<()> {
    shop_failover_is_followed(true).await
}

/// When the shop primary goes away, the gateway follows the promoted replica: reads keep
/// working, writes go to the new primary, and an order retried with its idempotency key
/// is replayed, not placed twice.
async fn shop_failover_is_followed(crash: bool) -> Result<()> {
    let h = Harness::start().await?;
    let primary = start_shop_with(
        &h.registry_addr(),
        concord_shop::ReplicationConfig {
            mode: concord_shop::ReplicationMode::Async,
            ..Default::default()
        },
    )
    .await?;
    let primary_addr = primary.addr.to_string();
    poll_json(&h, "/api/cluster", |_, v| {
        v["primary"] == primary_addr.as_str()
    })
    .await?;
    let replica = start_shop_with(
        &h.registry_addr(),
        concord_shop::ReplicationConfig {
            mode: concord_shop::ReplicationMode::Async,
            primary_addr: Some(primary_addr.clone()),
            replica_id: "replica-1".into(),
            ..Default::default()
        },
    )
    .await?;
    let replica_addr = replica.addr.to_string();
    poll_json(&h, "/api/services/shop", |_, v| {
        v["instances"].as_array().map(Vec::len) == Some(2)
    })
    .await?;

    let response = h
        .http
        .post(h.url("/api/products"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"name": "Kettle", "price_minor": 999, "stock": 9}))
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await?;
    let id = created["product"]["id"].as_str().context("id")?.to_owned();
    // Bob's session is signed by the primary; both shops share the key, so it stays valid
    // after the failover (his account replicated like every write).
    let bob = sign_up(&h, "bob").await?;
    let add = |quantity: i64| {
        h.http
            .post(h.url("/api/carts/me/items"))
            .header("cookie", &bob.cookie)
            .json(&serde_json::json!({"product_id": id, "quantity": quantity}))
            .send()
    };
    assert_eq!(add(1).await?.status(), 200);
    let place = |key: &'static str| {
        h.http
            .post(h.url("/api/orders"))
            .header("cookie", &bob.cookie)
            .header("idempotency-key", key)
            .json(&serde_json::json!({}))
            .send()
    };
    let get_bobs = |path: String| {
        h.http
            .get(h.url(&path))
            .header("cookie", &bob.cookie)
            .send()
    };
    let response = place("bob-1").await?;
    assert_eq!(response.status(), 201);
    let first: Value = response.json().await?;
    let order_id = first["order"]["id"]
        .as_str()
        .context("order id")?
        .to_owned();

    // Wait until the replica holds everything the primary committed.
    poll_json(&h, "/api/cluster", |_, v| {
        let shops = v["shops"].as_array().cloned().unwrap_or_default();
        let lsn = |addr: &str| {
            shops
                .iter()
                .find(|s| s["address"] == addr)
                .and_then(|s| s["replication"]["last_lsn"].as_u64())
        };
        lsn(&primary_addr).is_some() && lsn(&primary_addr) == lsn(&replica_addr)
    })
    .await?;

    let order_path = format!("/api/orders/{order_id}");
    if crash {
        let _crashed_files = primary.abort();
        // The registry still lists the dead primary first (its lease has up to 1 s left):
        // the read fails there with UNAVAILABLE and is retried on the replica.
        let response = get_bobs(order_path.clone()).await?;
        assert_eq!(response.status(), 200, "read retried on the replica");
        // A write has nowhere to go until the replica promotes itself: 503, not 409.
        let response = place("bob-during-failover").await?;
        expect_error(response, 503, "unavailable").await?;
    } else {
        primary.stop().await;
    }
    poll_json(&h, "/api/products", |status, _| status == 200).await?;
    assert_eq!(get_bobs(order_path.clone()).await?.status(), 200);
    let view = poll_json(&h, "/api/cluster", |_, v| {
        v["primary"] == replica_addr.as_str() && v["term"].as_u64() > Some(1)
    })
    .await?;
    assert_eq!(view["shops"].as_array().map(Vec::len), Some(1), "{view}");

    // Writes reach the promoted replica; the old key replays the original order. The
    // registry lists the new primary as soon as it accepted the claim, a moment before the
    // shop has begun its term: in that window the write is a 503 + Retry-After, which a
    // client retries (bounded here).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let response = loop {
        let response = place("bob-1").await?;
        if response.status() != 503 || tokio::time::Instant::now() > deadline {
            break response;
        }
        assert!(
            response.headers().contains_key("retry-after"),
            "503 names a wait"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(response.status(), 200, "replayed on the new primary");
    let replay: Value = response.json().await?;
    assert_eq!(replay["order"]["id"], order_id.as_str());
    assert_eq!(add(2).await?.status(), 200);
    let response = place("bob-2").await?;
    assert_eq!(response.status(), 201);
    let second: Value = response.json().await?;
    assert_ne!(second["order"]["id"], order_id.as_str());
    let orders: Value = get_bobs("/api/orders".into()).await?.json().await?;
    assert_eq!(orders["orders"].as_array().map(Vec::len), Some(2));

    replica.stop().await;
    h.stop().await
}

/// A write sent to a replica (the registry still lists it as primary) is re-sent to the
/// primary it names, even a plain non-idempotent write: the replica did nothing. The hint is
/// followed only to a shop the registry lists: the request carries the admin token, and a
/// hint is a claim inside a message.
#[tokio::test]
async fn write_refused_by_a_replica_follows_its_hint() -> Result<()> {
    let h = Harness::start().await?;
    let primary = start_unregistered_shop(any_port(), Default::default()).await?;
    let replica =
        start_unregistered_shop(any_port(), replica_of(&primary.addr.to_string())).await?;
    let _stale = h
        .register(
            "shop",
            &replica.addr.to_string(),
            &[("role", "primary"), ("term", "1")],
        )
        .await?;
    assert_eq!(wait_until_served(&h, "/api/products").await?.status(), 200);

    // The hinted primary is not in the registry: the token is not sent there.
    let response = h
        .http
        .post(h.url("/api/products"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"name": "Mug", "price_minor": 500, "stock": 3}))
        .send()
        .await?;
    assert_eq!(
        response.status(),
        503,
        "an unlisted hinted primary is never called"
    );

    // Listed (the registry's view is stale: it calls it a replica), the hint is followed.
    let _listed = h
        .register(
            "shop",
            &primary.addr.to_string(),
            &[("role", "replica"), ("term", "1")],
        )
        .await?;
    poll_json(&h, "/api/services/shop", |_, v| {
        v["instances"].as_array().map(Vec::len) == Some(2)
    })
    .await
    .context("the gateway never saw both shops")?;

    let response = h
        .http
        .post(h.url("/api/products"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"name": "Mug", "price_minor": 500, "stock": 3}))
        .send()
        .await?;
    assert_eq!(response.status(), 201, "created on the hinted primary");
    let created: Value = response.json().await?;
    let id = created["product"]["id"].as_str().context("id")?.to_owned();
    let carol = sign_up(&h, "carol").await?;
    let response = h
        .http
        .post(h.url("/api/carts/me/items"))
        .header("cookie", &carol.cookie)
        .json(&serde_json::json!({"product_id": id, "quantity": 1}))
        .send()
        .await?;
    assert_eq!(response.status(), 200, "cart write followed the hint");

    replica.stop().await;
    primary.stop().await;
    h.stop().await
}

/// Mid-failover (the second one: the promoted primary was killed and restarted as a
/// replica) the registry's stale primary and the other replica name each other: writes get
/// 503 + Retry-After ("retry shortly"), never the replica's 409.
#[tokio::test]
async fn writes_with_no_primary_are_503_with_retry_after() -> Result<()> {
    let h = Harness::start().await?;
    let b_addr = concord_testkit::free_addr().await;
    let a = start_unregistered_shop(any_port(), replica_of(&b_addr.to_string())).await?;
    let a_addr = a.addr.to_string();
    let b = start_unregistered_shop(b_addr, replica_of(&a_addr)).await?;
    let _stale_primary = h
        .register("shop", &a_addr, &[("role", "primary"), ("term", "2")])
        .await?;
    let _other = h
        .register(
            "shop",
            &b_addr.to_string(),
            &[("role", "replica"), ("term", "2")],
        )
        .await?;
    assert_eq!(wait_until_served(&h, "/api/products").await?.status(), 200);

    let writes = [
        h.http
            .post(h.url("/api/carts/dave/items"))
            .json(&serde_json::json!({"product_id": "p-000000000001", "quantity": 1})),
        h.http
            .post(h.url("/api/orders"))
            .header("idempotency-key", "dave-1")
            .json(&serde_json::json!({"user_id": "dave"})),
        h.http
            .post(h.url("/api/products"))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({"name": "Mug", "price_minor": 500})),
    ];
    for write in writes {
        let response = write.send().await?;
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let err = expect_error(response, 503, "unavailable").await?;
        assert!(err.message.contains("primary"), "{}", err.message);
        assert_eq!(
            retry_after,
            Some(concord_web_gateway::error::RETRY_AFTER_FAILOVER_SECS)
        );
    }

    b.stop().await;
    a.stop().await;
    h.stop().await
}

/// When the browser goes away, its `/api/events` stream is dropped and with it the
/// gateway's `WatchEvents` stream to the aggregator.
#[tokio::test]
async fn events_stream_is_released_when_client_leaves() -> Result<()> {
    let h = Harness::start().await?;
    let (fake, watchers) = start_fake_aggregator_counting("fake").await?;
    let _keeper = h
        .register("aggregator", &fake.addr.to_string(), &[])
        .await?;

    let response = h.get("/api/events").await?;
    read_sse(response, |seen| {
        seen.iter().filter(|e| e.0 == "ledger").count() >= 3
    })
    .await?;
    // read_sse consumed and dropped the response: the connection is closed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while watchers.load(std::sync::atomic::Ordering::SeqCst) != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "WatchEvents stream still open after the client left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fake.stop().await;
    h.stop().await
}

/// The real nodes and aggregator behind HTTP: a stake-weighted consensus with every
/// node's vote, the oracle's outcome scored once, stakes, the ledger (listed, verified and
/// streamed over SSE).
#[tokio::test]
async fn consensus_round_trip_through_http() -> Result<()> {
    let h = Harness::start().await?;
    let consensus = start_consensus(&h.registry_addr(), 3).await?;
    let setosa = "/api/predict?sepal_length=5.1&sepal_width=3.5&petal_length=1.4&petal_width=0.2";
    let prediction = poll_json(&h, setosa, |status, v| {
        status == 200 && v["answered"].as_u64() == Some(3)
    })
    .await?;
    assert_eq!(prediction["class_name"], "setosa", "{prediction}");
    assert_eq!(prediction["policy"], "stake");
    let votes = prediction["votes"].as_array().context("votes")?;
    assert_eq!(votes.len(), 3);
    for vote in votes {
        assert_eq!(vote["status"], "answered", "{vote}");
        assert!(vote["stake"].as_u64() > Some(0), "{vote}");
        assert!(vote["trust"].as_f64() > Some(0.0), "{vote}");
        assert!(vote["weight"].as_f64() > Some(0.0), "{vote}");
    }
    let request_id = prediction["request_id"].as_str().context("request id")?;

    let outcome = serde_json::json!({"request_id": request_id, "true_label": 0});
    let report = || {
        h.http
            .post(h.url("/api/outcomes"))
            .bearer_auth(concord_testkit::ORACLE_TOKEN)
            .json(&outcome)
            .send()
    };
    let response = report().await?;
    assert_eq!(response.status(), 200);
    let scored: Value = response.json().await?;
    assert_eq!(scored["consensus_correct"], true, "{scored}");
    assert_eq!(
        scored["scores"].as_array().map(Vec::len),
        Some(3),
        "{scored}"
    );
    let again: Value = report().await?.json().await?;
    assert_eq!(again["already_reported"], true, "scored once");

    let stakes: Value = h.get("/api/stakes").await?.json().await?;
    assert_eq!(
        stakes["accounts"].as_array().map(Vec::len),
        Some(3),
        "{stakes}"
    );
    let events_total = stakes["totals"]["events"].as_u64().context("events")?;
    assert!(
        events_total >= 6,
        "3 stakes and 3 rewards at least: {stakes}"
    );
    let page: Value = h
        .get("/api/ledger/events?page_size=1000")
        .await?
        .json()
        .await?;
    assert_eq!(
        page["events"].as_array().map(Vec::len),
        Some(events_total as usize)
    );
    let verified: Value = h.get("/api/ledger/verify").await?.json().await?;
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["events_checked"], events_total);

    let response = h.get("/api/events").await?;
    let seen = read_sse(response, |seen| {
        seen.iter().filter(|e| e.0 == "ledger").count() as u64 >= events_total
    })
    .await?;
    let kinds: Vec<String> = seen
        .iter()
        .filter(|e| e.0 == "ledger")
        .filter_map(|e| serde_json::from_str::<Value>(&e.1).ok())
        .filter_map(|v| v["kind"].as_str().map(str::to_owned))
        .collect();
    assert!(kinds.iter().any(|k| k == "reward"), "{kinds:?}");

    consensus.stop().await;
    h.stop().await
}

/// Without `--supervisor-addr` the live controls answer 503 with a message that says so,
/// for reads and orders alike.
#[tokio::test]
async fn cluster_controls_without_supervisor_are_503() -> Result<()> {
    let h = Harness::start().await?;
    let body = expect_error(h.get("/api/admin/cluster").await?, 503, "unavailable").await?;
    assert!(
        body.message.contains("--supervisor-addr"),
        "{}",
        body.message
    );
    let response = h
        .http
        .post(h.url("/api/admin/cluster/node-1/kill"))
        .send()
        .await?;
    let body = expect_error(response, 503, "unavailable").await?;
    assert!(
        body.message.contains("--supervisor-addr"),
        "{}",
        body.message
    );
    h.stop().await
}

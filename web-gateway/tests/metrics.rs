//! The gateway's own `/metrics`: requests by route template and status, scraped over HTTP
//! from a real gateway after real requests.

use anyhow::Result;
use concord_testkit::gateway::Harness;
use concord_testkit::metrics::Page;

/// Requests are counted under their matched template (not the raw path), unmatched and
/// cross-site-refused ones under `unmatched`, and the page parses as Prometheus text.
#[tokio::test]
async fn requests_by_route_template_and_status() -> Result<()> {
    let h = Harness::start().await?;
    for _ in 0..2 {
        assert_eq!(h.get("/hello").await?.status(), 200);
    }
    for id in ["1", "2", "3"] {
        // No shop registered: 503, still under the template.
        let status = h.get(&format!("/api/products/{id}")).await?.status();
        assert_eq!(status, 503);
    }
    assert_eq!(h.get("/no/such/page").await?.status(), 404);
    let refused = h
        .http
        .post(h.url("/api/orders"))
        .header("sec-fetch-site", "cross-site")
        .body("{}")
        .send()
        .await?;
    assert_eq!(refused.status(), 403);

    let response = h.get("/metrics").await?;
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let page = Page::parse(&response.text().await?);
    let requests = |route: &str, status: &str| {
        page.value(
            "concord_gateway_http_requests_total",
            &[("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("/hello", "200"), 2.0);
    assert_eq!(requests("/api/products/{id}", "503"), 3.0);
    assert_eq!(requests("unmatched", "404"), 1.0);
    assert_eq!(requests("unmatched", "403"), 1.0);
    assert!(
        page.value(
            "concord_gateway_http_request_seconds_count",
            &[("method", "GET"), ("route", "/api/products/{id}")]
        ) >= 3.0
    );
    assert!(!page.text.contains("/no/such/page"), "{}", page.text);
    assert!(!page.text.contains("/api/products/1"), "{}", page.text);
    h.stop().await
}

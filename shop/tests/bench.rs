//! Benchmarks over loopback gRPC, ignored by default; run with
//! `cargo test -p concord-shop --release --test bench -- --ignored --nocapture --test-threads 1`.
//! The official figures come from `concord bench shop`; these are the crate's own checks.

use std::time::{Duration, Instant};

use concord::pb::shop::v1 as pb;
use concord_testkit::shop::{admin, new_product, start};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

async fn create_load(
    shop: &concord_testkit::shop::TestShop,
    concurrency: usize,
    duration: Duration,
) -> (usize, Vec<Duration>) {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let mut c = shop.client();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0;
                while Instant::now() < deadline {
                    let started = Instant::now();
                    c.create_product(admin(new_product(&format!("bench {t}-{i}"), 100, 10)))
                        .await
                        .expect("create");
                    lat.push(started.elapsed());
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort_unstable();
    (all.len(), all)
}

/// Durable product creations per second at concurrency 16.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark"]
async fn bench_create_products_c16() {
    let dir = tempfile::tempdir().unwrap();
    let shop = start(dir.path(), |_| {}).await;
    let secs = 5.0;
    let cpu_before = concord_testkit::process_cpu_seconds();
    let (n, lat) = create_load(&shop, 16, Duration::from_secs_f64(secs)).await;
    tracing::warn!(
        cpu_cores_busy = (concord_testkit::process_cpu_seconds() - cpu_before) / secs,
        "process CPU"
    );
    tracing::warn!(
        writes_per_s = (n as f64 / secs).round(),
        p50_us = percentile(&lat, 0.5).as_micros() as u64,
        p99_us = percentile(&lat, 0.99).as_micros() as u64,
        "create_product c=16"
    );
    shop.stop().await;
}

async fn list_latency(
    shop: &concord_testkit::shop::TestShop,
    token: &str,
    filter: &str,
) -> (Duration, Duration) {
    let mut c = shop.client();
    let mut lat = Vec::new();
    for _ in 0..500 {
        let started = Instant::now();
        c.list_products(pb::ListProductsRequest {
            page_size: 50,
            page_token: token.into(),
            name_contains: filter.into(),
        })
        .await
        .expect("list");
        lat.push(started.elapsed());
    }
    lat.sort_unstable();
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

/// ListProducts latency (page of 50) with 1k and 100k products: first page, a deep page
/// and a filter that matches nothing (bounded scan).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark"]
async fn bench_list_products_1k_vs_100k() {
    let dir = tempfile::tempdir().unwrap();
    let shop = start(dir.path(), |_| {}).await;
    let mut created = 0;
    for target in [1_000usize, 100_000] {
        while created < target {
            let batch = (target - created).min(2_000);
            let tasks: Vec<_> = (0..16)
                .map(|t| {
                    let mut c = shop.client();
                    tokio::spawn(async move {
                        for i in (t..batch).step_by(16) {
                            c.create_product(admin(new_product(&format!("item {i}"), 100, 10)))
                                .await
                                .expect("create");
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            created += batch;
        }
        let deep = format!("p-{:012}", target / 2);
        for (label, token, filter) in [
            ("first page", "", ""),
            ("deep page", deep.as_str(), ""),
            ("filter, no match", "", "zzz"),
        ] {
            let (p50, p99) = list_latency(&shop, token, filter).await;
            tracing::warn!(
                products = target,
                case = label,
                p50_us = p50.as_micros() as u64,
                p99_us = p99.as_micros() as u64,
                "list_products"
            );
        }
    }
    shop.stop().await;
}

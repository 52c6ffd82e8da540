//! The shop's metrics page, scraped from a real served shop after real writes.

use concord_testkit::metrics::{scrape, serve};
use concord_testkit::shop::{create, start};

/// After five product writes a primary's page shows its role, term and LSNs at the
/// write's LSN, WAL syncs observed in both histograms, and the writes counted per method
/// and code by the gRPC layer.
#[tokio::test]
async fn primary_page_after_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = start(dir.path(), |_| {}).await;
    let mut client = shop.client();
    for i in 0..5 {
        create(&mut client, &format!("tea {i}"), 450, 10).await;
    }
    let last_lsn = shop.last_lsn().await as f64;
    assert!(last_lsn >= 5.0);
    let (metrics_addr, _stop) = serve().await;
    let page = scrape(metrics_addr).await;

    assert_eq!(page.value("concord_shop_role", &[("role", "primary")]), 1.0);
    assert_eq!(page.value("concord_shop_role", &[("role", "replica")]), 0.0);
    assert!(page.value("concord_shop_term", &[]) >= 1.0);
    for lsn in [
        "concord_shop_last_lsn",
        "concord_shop_applied_lsn",
        "concord_shop_durable_lsn",
    ] {
        assert_eq!(page.value(lsn, &[]), last_lsn, "{lsn}");
    }
    // The page says what GetReplicationStatus says (no replica here: nothing acked).
    let status = shop.status().await;
    assert_eq!(
        page.value("concord_shop_replication_lag_entries", &[]),
        status.lag_entries as f64
    );
    assert_eq!(
        page.value("concord_shop_replica_acked_lsn", &[]),
        status.replica_acked_lsn as f64
    );
    assert!(page.value("concord_shop_wal_sync_seconds_count", &[]) >= 5.0);
    assert!(page.value("concord_shop_wal_group_size_count", &[]) >= 5.0);
    assert!(page.value("concord_shop_wal_group_size_sum", &[]) >= 5.0);
    assert_eq!(
        page.value(
            "concord_grpc_server_handled_total",
            &[
                ("service", "concord.shop.v1.Shop"),
                ("method", "CreateProduct"),
                ("code", "OK")
            ]
        ),
        5.0
    );
    shop.stop().await;
}

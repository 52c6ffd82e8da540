//! The shop's Prometheus families, read at scrape time from what the shop already exposes.
//!
//! Why a collector and not counters in the replication code: role, term, LSNs and lag
//! already exist as one consistent reply, `GetReplicationStatus` ([`Replicator::status`]);
//! reading it on each scrape keeps the page equal to what `concord status` and the UI show,
//! and leaves the replication state machine untouched. Only the WAL sync, which happens in
//! the store's write path, observes two histograms itself ([`WalHistograms`]).
//!
//! Families (after the `concord_` prefix; gauges unless noted):
//! - `shop_role{role}`: 1 for the current role (`primary`/`replica`), 0 for the other;
//! - `shop_term`; `shop_last_lsn` (the status reply's), `shop_applied_lsn`,
//!   `shop_durable_lsn`, `shop_checkpointed_lsn`, `shop_replica_acked_lsn` (a primary: the
//!   replica's acked LSN; a replica: its own durable LSN, as in the status reply);
//! - `shop_replication_lag_entries`, `shop_replication_lag_seconds` (age of the oldest
//!   entry not yet on the other side), `shop_replica_connected`, `shop_caught_up`;
//! - `shop_wal_sync_seconds` (histogram): time to append a batch to the WAL and sync it;
//! - `shop_wal_group_size` (histogram): entries made durable by one sync (group commit).
//!
//! A shop that has stopped reports nothing (the collector holds `Weak` references).

use std::sync::{Arc, Weak};
use std::time::Duration;

use concord::metrics::prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{histogram::Histogram, MetricType},
    registry::Unit,
};

use crate::{Replicator, Store};

/// Histograms the store's write path observes on every WAL sync.
#[derive(Debug, Clone)]
pub struct WalHistograms {
    /// Seconds to append and sync one batch.
    sync_seconds: Histogram,
    /// Entries per sync.
    group_size: Histogram,
}

impl Default for WalHistograms {
    fn default() -> Self {
        WalHistograms {
            // fdatasync: tens of µs on a fast SSD to tens of ms on a busy disk.
            sync_seconds: Histogram::new(
                concord::metrics::prometheus_client::metrics::histogram::exponential_buckets(
                    0.000_025, 2.0, 16,
                ),
            ),
            group_size: Histogram::new(
                concord::metrics::prometheus_client::metrics::histogram::exponential_buckets(
                    1.0, 2.0, 12,
                ),
            ),
        }
    }
}

impl WalHistograms {
    /// Records one sync that took `elapsed` and made `entries` entries durable.
    pub fn observe(&self, elapsed: Duration, entries: usize) {
        self.sync_seconds.observe(elapsed.as_secs_f64());
        self.group_size.observe(entries as f64);
    }
}

/// Reports one running shop (see the module doc).
pub struct ShopCollector {
    replicator: Weak<Replicator>,
    store: Weak<Store>,
}

impl std::fmt::Debug for ShopCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShopCollector").finish_non_exhaustive()
    }
}

impl ShopCollector {
    /// Adds a collector for this shop to the process's metrics page.
    pub fn register(replicator: &Arc<Replicator>, store: &Arc<Store>) {
        concord::metrics::register_collector(Box::new(ShopCollector {
            replicator: Arc::downgrade(replicator),
            store: Arc::downgrade(store),
        }));
    }
}

impl Collector for ShopCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (Some(replicator), Some(store)) = (self.replicator.upgrade(), self.store.upgrade())
        else {
            return Ok(());
        };
        let status = match replicator.status() {
            Ok(status) => status,
            Err(err) => {
                tracing::error!(%err, "shop metrics: status unavailable; leaving them out");
                return Ok(());
            }
        };
        let primary = status.role == concord::pb::shop::v1::Role::Primary as i32;
        let role = [
            (vec![("role", "primary")], f64::from(u8::from(primary))),
            (vec![("role", "replica")], f64::from(u8::from(!primary))),
        ];
        concord::metrics::encode_gauges(
            &mut encoder,
            "shop_role",
            "1 for the shop's current role.",
            &role,
        )?;
        let applied = store.last_lsn().unwrap_or(status.last_lsn);
        for (name, help, value) in [
            ("shop_term", "Current term.", status.term as f64),
            (
                "shop_last_lsn",
                "Last LSN (GetReplicationStatus).",
                status.last_lsn as f64,
            ),
            (
                "shop_applied_lsn",
                "Last LSN applied to the trees.",
                applied as f64,
            ),
            (
                "shop_durable_lsn",
                "Highest LSN synced to the WAL.",
                store.durable_lsn() as f64,
            ),
            (
                "shop_checkpointed_lsn",
                "Highest LSN flushed by sled (start-up replays the WAL above it).",
                store.checkpointed_lsn() as f64,
            ),
            (
                "shop_replica_acked_lsn",
                "Primary: the replica's acked LSN; replica: its own durable LSN.",
                status.replica_acked_lsn as f64,
            ),
            (
                "shop_replication_lag_entries",
                "Entries not yet on the other side.",
                status.lag_entries as f64,
            ),
            (
                "shop_replication_lag_seconds",
                "Age of the oldest entry not yet on the other side.",
                status.lag_ms as f64 / 1000.0,
            ),
            (
                "shop_replica_connected",
                "1 while the replication stream is up.",
                f64::from(u8::from(status.peer_connected)),
            ),
            (
                "shop_caught_up",
                "1 once the replica has everything the primary had when it connected.",
                f64::from(u8::from(status.caught_up)),
            ),
        ] {
            concord::metrics::encode_gauges(
                &mut encoder,
                name,
                help,
                &[(Vec::<(&str, &str)>::new(), value)],
            )?;
        }
        let histograms = store.wal_histograms();
        histograms.sync_seconds.encode(encoder.encode_descriptor(
            "shop_wal_sync",
            "Time to append one batch to the WAL and sync it",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?)?;
        histograms.group_size.encode(encoder.encode_descriptor(
            "shop_wal_group_size",
            "Entries made durable by one WAL sync (group commit)",
            None,
            MetricType::Histogram,
        )?)?;
        Ok(())
    }
}

//! The registry's Prometheus families, read from the lease table at scrape time.
//!
//! - `registry_leases{service}`: live leases (instances) per service;
//! - `registry_watchers`: open `Watch` streams;
//! - `registry_revision`: the table's change counter (a counter: it only moves forward
//!   while the registry runs; it restarts at 0 with the registry, as every lease does);
//! - `registry_leases_expired_total`: leases dropped because their TTL passed unrenewed
//!   (a process died or stalled), counted by the sweeper.
//!
//! Service names are bounded: only authenticated principals register, each only under
//! its role's service.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, Weak};

use prometheus_client::{
    collector::Collector, encoding::DescriptorEncoder, metrics::counter::Counter,
};

use crate::service::Shared;

/// Counts a lease that expired.
pub(crate) fn lease_expired() {
    expired_counter().inc();
}

/// The expiry counter, registered on first use.
fn expired_counter() -> &'static Counter {
    static EXPIRED: OnceLock<Counter> = OnceLock::new();
    EXPIRED.get_or_init(|| {
        let counter = Counter::default();
        concord::metrics::register(
            "registry_leases_expired",
            "Leases dropped because their TTL passed unrenewed.",
            counter.clone(),
        );
        counter
    })
}

/// Reads a running registry's table at scrape time.
pub(crate) struct RegistryCollector {
    shared: Weak<Shared>,
}

impl std::fmt::Debug for RegistryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCollector").finish_non_exhaustive()
    }
}

impl RegistryCollector {
    /// Puts `shared`'s table on the process's metrics page.
    pub(crate) fn register(shared: &Arc<Shared>) {
        // Registered up front, so the counter shows (at 0) from the first scrape.
        expired_counter();
        concord::metrics::register_collector(Box::new(RegistryCollector {
            shared: Arc::downgrade(shared),
        }));
    }
}

impl Collector for RegistryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(shared) = self.shared.upgrade() else {
            return Ok(());
        };
        let (instances, revision) = shared.snapshot();
        let mut per_service: BTreeMap<String, u64> = BTreeMap::new();
        for instance in instances {
            *per_service.entry(instance.service).or_default() += 1;
        }
        let leases: Vec<_> = per_service
            .into_iter()
            .map(|(service, n)| (vec![("service", service)], n as f64))
            .collect();
        concord::metrics::encode_gauges(
            &mut encoder,
            "registry_leases",
            "Live leases (instances) per service.",
            &leases,
        )?;
        let none = Vec::<(&str, &str)>::new;
        concord::metrics::encode_gauges(
            &mut encoder,
            "registry_watchers",
            "Open Watch streams.",
            &[(none(), shared.watchers() as f64)],
        )?;
        concord::metrics::encode_counters(
            &mut encoder,
            "registry_revision",
            "Changes to the lease table since the registry started.",
            &[(none(), revision)],
        )?;
        Ok(())
    }
}

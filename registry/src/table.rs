//! The lease table: who is registered, until when. Pure data; the caller passes the time,
//! so expiry is tested without sleeping.
//!
//! Invariants: a lease id is in the table at most once; every entry's expiry is in the
//! future relative to the last `expire` call; `revision` grows by one on every change a
//! watcher could see (register, metadata change, deregister, expiry) and never otherwise.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use concord::{error::quote, pb::registry::v1::Instance};

use crate::RegistryError;

/// Shortest TTL a lease may ask for.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest TTL a lease may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// Longest service name, in bytes.
pub const MAX_SERVICE_NAME_BYTES: usize = 64;
/// Longest address, in bytes.
pub const MAX_ADDRESS_BYTES: usize = 256;
/// Most metadata entries per instance.
pub const MAX_METADATA_ENTRIES: usize = 32;
/// Longest metadata key or value, in bytes.
pub const MAX_METADATA_BYTES: usize = 256;
/// Longest lease id KeepAlive/Deregister accept, in bytes (ours are 32 hex digits); a
/// longer one is a malformed request, not an unknown lease.
pub const MAX_LEASE_ID_BYTES: usize = 64;

struct Lease {
    instance: Instance,
    expires_at: Instant,
    ttl: Duration,
    /// Registration order, to list oldest first.
    order: u64,
}

/// Live leases and the change counter watchers follow.
#[derive(Default)]
pub struct LeaseTable {
    leases: HashMap<String, Lease>,
    revision: u64,
    next_order: u64,
}

impl LeaseTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The change counter.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Adds an instance under a new lease that expires `ttl` after `now`.
    pub fn register(
        &mut self,
        service: &str,
        address: &str,
        metadata: HashMap<String, String>,
        ttl: Duration,
        now: Instant,
    ) -> Result<Instance, RegistryError> {
        validate_service(service)?;
        validate_address(address)?;
        validate_metadata(&metadata)?;
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(RegistryError::InvalidArgument(format!(
                "ttl_ms {} is outside {}..={}",
                ttl.as_millis(),
                MIN_TTL.as_millis(),
                MAX_TTL.as_millis()
            )));
        }
        let lease_id = uuid::Uuid::new_v4().simple().to_string();
        let wall = unix_ms();
        let instance = Instance {
            service: service.to_owned(),
            address: address.to_owned(),
            metadata,
            lease_id: lease_id.clone(),
            registered_at_unix_ms: wall,
            expires_at_unix_ms: wall + millis(ttl),
        };
        self.next_order += 1;
        self.leases.insert(
            lease_id,
            Lease {
                instance: instance.clone(),
                expires_at: now + ttl,
                ttl,
                order: self.next_order,
            },
        );
        self.revision += 1;
        Ok(instance)
    }

    /// Renews a lease for another TTL, replacing its metadata when given one.
    pub fn keep_alive(
        &mut self,
        lease_id: &str,
        metadata: Option<HashMap<String, String>>,
        now: Instant,
    ) -> Result<Instance, RegistryError> {
        check_lease_id(lease_id)?;
        if let Some(metadata) = &metadata {
            validate_metadata(metadata)?;
        }
        let lease = match self.leases.get_mut(lease_id) {
            Some(lease) if lease.expires_at > now => lease,
            _ => return Err(RegistryError::LeaseNotFound(lease_id.to_owned())),
        };
        lease.expires_at = now + lease.ttl;
        lease.instance.expires_at_unix_ms = unix_ms() + millis(lease.ttl);
        if let Some(metadata) = metadata {
            if metadata != lease.instance.metadata {
                lease.instance.metadata = metadata;
                self.revision += 1;
            }
        }
        Ok(lease.instance.clone())
    }

    /// Removes a lease at once.
    pub fn deregister(&mut self, lease_id: &str) -> Result<Instance, RegistryError> {
        check_lease_id(lease_id)?;
        let lease = self
            .leases
            .remove(lease_id)
            .ok_or_else(|| RegistryError::LeaseNotFound(lease_id.to_owned()))?;
        self.revision += 1;
        Ok(lease.instance)
    }

    /// Drops every lease that expired at or before `now`; returns the expired instances.
    pub fn expire(&mut self, now: Instant) -> Vec<Instance> {
        let expired: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.expires_at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let mut gone = Vec::with_capacity(expired.len());
        for id in expired {
            if let Some(lease) = self.leases.remove(&id) {
                gone.push(lease.instance);
            }
        }
        if !gone.is_empty() {
            self.revision += 1;
        }
        gone
    }

    /// Live instances of `service`, oldest registration first.
    pub fn resolve(&self, service: &str) -> Vec<Instance> {
        let mut found: Vec<&Lease> = self
            .leases
            .values()
            .filter(|lease| lease.instance.service == service)
            .collect();
        found.sort_by_key(|lease| lease.order);
        found.into_iter().map(|l| l.instance.clone()).collect()
    }

    /// Every live instance, by service name, then registration order.
    pub fn list(&self) -> Vec<Instance> {
        let mut all: Vec<&Lease> = self.leases.values().collect();
        all.sort_by(|a, b| {
            a.instance
                .service
                .cmp(&b.instance.service)
                .then(a.order.cmp(&b.order))
        });
        all.into_iter().map(|l| l.instance.clone()).collect()
    }
}

/// Checks a service name: 1..=64 bytes of `[A-Za-z0-9._-]`.
pub fn validate_service(service: &str) -> Result<(), RegistryError> {
    if service.is_empty() {
        return Err(RegistryError::InvalidArgument(
            "service name is empty".into(),
        ));
    }
    if service.len() > MAX_SERVICE_NAME_BYTES {
        return Err(RegistryError::InvalidArgument(format!(
            "service name is {} bytes; the limit is {MAX_SERVICE_NAME_BYTES}",
            service.len()
        )));
    }
    if let Some(bad) = service
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(RegistryError::InvalidArgument(format!(
            "service name {} contains {bad:?}; use letters, digits, '.', '_' or '-'",
            quote(service)
        )));
    }
    Ok(())
}

fn check_lease_id(lease_id: &str) -> Result<(), RegistryError> {
    if lease_id.len() > MAX_LEASE_ID_BYTES {
        return Err(RegistryError::InvalidArgument(format!(
            "lease id is {} bytes; the limit is {MAX_LEASE_ID_BYTES}",
            lease_id.len()
        )));
    }
    Ok(())
}

fn validate_address(address: &str) -> Result<(), RegistryError> {
    let invalid = || {
        RegistryError::InvalidArgument(format!(
            "address {} is not host:port (e.g. 127.0.0.1:50052)",
            quote(address)
        ))
    };
    if address.len() > MAX_ADDRESS_BYTES {
        return Err(invalid());
    }
    if address.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = address.rsplit_once(':').ok_or_else(invalid)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(invalid())
    }
}

fn validate_metadata(metadata: &HashMap<String, String>) -> Result<(), RegistryError> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(RegistryError::InvalidArgument(format!(
            "{} metadata entries; the limit is {MAX_METADATA_ENTRIES}",
            metadata.len()
        )));
    }
    for (key, value) in metadata {
        if key.is_empty() || key.len() > MAX_METADATA_BYTES || value.len() > MAX_METADATA_BYTES {
            return Err(RegistryError::InvalidArgument(format!(
                "metadata entry {} must have a 1..={MAX_METADATA_BYTES} byte key and a value of at most {MAX_METADATA_BYTES} bytes",
                quote(key)
            )));
        }
    }
    Ok(())
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(2);

    fn register(table: &mut LeaseTable, service: &str, now: Instant) -> Instance {
        table
            .register(service, "127.0.0.1:1", HashMap::new(), TTL, now)
            .expect("valid registration")
    }

    /// A lease lives exactly its TTL unless renewed, and renewal extends it.
    #[test]
    fn leases_expire_unless_renewed() {
        let t0 = Instant::now();
        let mut table = LeaseTable::new();
        let a = register(&mut table, "svc", t0);
        let b = register(&mut table, "svc", t0);
        table
            .keep_alive(&a.lease_id, None, t0 + Duration::from_millis(1500))
            .expect("a renewed in time");
        assert!(table.expire(t0 + Duration::from_millis(1999)).is_empty());
        let gone = table.expire(t0 + TTL);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].lease_id, b.lease_id);
        assert_eq!(table.resolve("svc").len(), 1);
        assert_eq!(
            table.keep_alive(&b.lease_id, None, t0 + TTL),
            Err(RegistryError::LeaseNotFound(b.lease_id.clone()))
        );
        assert_eq!(table.expire(t0 + Duration::from_millis(3500)).len(), 1);
        assert!(table.resolve("svc").is_empty());
    }

    /// Every visible change bumps the revision once; a no-op renewal does not.
    #[test]
    fn revision_counts_visible_changes() {
        let t0 = Instant::now();
        let mut table = LeaseTable::new();
        let a = register(&mut table, "svc", t0);
        assert_eq!(table.revision(), 1);
        table.keep_alive(&a.lease_id, None, t0).expect("renew");
        assert_eq!(table.revision(), 1);
        let md = HashMap::from([("role".to_owned(), "primary".to_owned())]);
        table
            .keep_alive(&a.lease_id, Some(md.clone()), t0)
            .expect("renew with metadata");
        assert_eq!(table.revision(), 2);
        table.keep_alive(&a.lease_id, Some(md), t0).expect("same");
        assert_eq!(table.revision(), 2);
        table.deregister(&a.lease_id).expect("deregister");
        assert_eq!(table.revision(), 3);
    }

    /// Bad registrations are refused with a reason and change nothing.
    #[test]
    fn bad_input_table() {
        let now = Instant::now();
        let long = "x".repeat(65);
        let cases: &[(&str, &str, Duration, &str)] = &[
            ("", "127.0.0.1:1", TTL, "empty"),
            (&long, "127.0.0.1:1", TTL, "limit is 64"),
            ("bad name", "127.0.0.1:1", TTL, "contains ' '"),
            ("svc", "nowhere", TTL, "not host:port"),
            ("svc", "host:0", TTL, "not host:port"),
            ("svc", "host:99999", TTL, "not host:port"),
            ("svc", ":80", TTL, "not host:port"),
            ("svc", "127.0.0.1:1", Duration::from_millis(999), "outside"),
            ("svc", "127.0.0.1:1", Duration::from_secs(3601), "outside"),
        ];
        let mut table = LeaseTable::new();
        for (service, address, ttl, want) in cases {
            let err = table
                .register(service, address, HashMap::new(), *ttl, now)
                .expect_err("must be refused");
            assert!(
                err.to_string().contains(want),
                "{service:?} {address:?} {ttl:?}: {err}"
            );
        }
        assert_eq!(table.revision(), 0);
        assert!(table.list().is_empty());
        for ok in ["localhost:80", "shop-1.internal:50060", "[::1]:50050"] {
            assert!(
                table.register("svc", ok, HashMap::new(), TTL, now).is_ok(),
                "{ok}"
            );
        }
    }

    /// Resolve keeps registration order and separates services.
    #[test]
    fn resolve_orders_by_registration() {
        let now = Instant::now();
        let mut table = LeaseTable::new();
        let first = register(&mut table, "a", now);
        register(&mut table, "b", now);
        let third = register(&mut table, "a", now);
        let ids: Vec<String> = table.resolve("a").into_iter().map(|i| i.lease_id).collect();
        assert_eq!(ids, vec![first.lease_id, third.lease_id]);
        let services: Vec<String> = table.list().into_iter().map(|i| i.service).collect();
        assert_eq!(services, vec!["a", "a", "b"]);
    }

    /// Huge lease ids, addresses, service names and metadata keys are refused with a short
    /// message (never echoed whole); an empty lease id stays an unknown lease.
    #[test]
    fn huge_input_gets_a_short_message() {
        let now = Instant::now();
        let mut table = LeaseTable::new();
        let huge = "a".repeat(3 * 1024 * 1024);
        let errors = [
            table.keep_alive(&huge, None, now).expect_err("lease id"),
            table.deregister(&huge).expect_err("lease id"),
            table
                .register("svc", &huge, HashMap::new(), TTL, now)
                .expect_err("address"),
            table
                .register(&huge, "127.0.0.1:1", HashMap::new(), TTL, now)
                .expect_err("service"),
            table
                .register(
                    "svc",
                    "127.0.0.1:1",
                    HashMap::from([(huge.clone(), String::new())]),
                    TTL,
                    now,
                )
                .expect_err("metadata key"),
        ];
        for err in errors {
            assert!(
                matches!(err, RegistryError::InvalidArgument(_)),
                "{err:.200}"
            );
            assert!(err.to_string().len() < 300, "{:.200}", err.to_string());
        }
        assert!(matches!(
            table.keep_alive("", None, now),
            Err(RegistryError::LeaseNotFound(_))
        ));
    }
}

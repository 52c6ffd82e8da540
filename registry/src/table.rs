//! The lease table: who is registered, until when. Pure data; the caller passes the time,
//! so expiry is tested without sleeping.
//!
//! Invariants: a lease id is in the table at most once; every entry's expiry is in the
//! future relative to the last `expire` call; `revision` grows by one on every change a
//! watcher could see (register, metadata change, deregister, expiry) and never otherwise.
//!
//! **Primary claims.** An instance whose metadata says `role=primary` claims to be its
//! service's primary for the `term` it names (missing = 0). The table is the arbiter: a
//! claim is accepted only if its term is greater than that of every other live primary of
//! the same service at another address (a process restarted at the same address may renew
//! its own claim). So two replicas that promote themselves at once cannot both win the
//! same term: the second gets `FAILED_PRECONDITION` and must not take writes (the shop
//! only takes writes once the registry has accepted its claim). This is what keeps a
//! failover from splitting the data, whoever registers what.

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
        self.check_primary_claim(service, address, None, &metadata, now)?;
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
        let (service, address) = match self.leases.get(lease_id) {
            Some(lease) if lease.expires_at > now => (
                lease.instance.service.clone(),
                lease.instance.address.clone(),
            ),
            _ => return Err(RegistryError::LeaseNotFound(lease_id.to_owned())),
        };
        if let Some(metadata) = &metadata {
            self.check_primary_claim(&service, &address, Some(lease_id), metadata, now)?;
        }
        let lease = match self.leases.get_mut(lease_id) {
            Some(lease) => lease,
            None => return Err(RegistryError::LeaseNotFound(lease_id.to_owned())),
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

    /// Refuses `metadata` if it claims the primary role of `service` for a term that another
    /// live primary of the service (other lease, other address) already holds or exceeds
    /// (module docs, "Primary claims").
    fn check_primary_claim(
        &self,
        service: &str,
        address: &str,
        lease_id: Option<&str>,
        metadata: &HashMap<String, String>,
        now: Instant,
    ) -> Result<(), RegistryError> {
        let Some(term) = primary_claim(metadata)? else {
            return Ok(());
        };
        let holder = self.leases.iter().find_map(|(id, lease)| {
            let other = &lease.instance;
            let live_rival = Some(id.as_str()) != lease_id
                && lease.expires_at > now
                && other.service == service
                && other.address != address;
            let their_term = if live_rival {
                primary_claim(&other.metadata).ok().flatten()?
            } else {
                return None;
            };
            (their_term >= term).then(|| (other.address.clone(), their_term))
        });
        match holder {
            None => Ok(()),
            Some((holder, their_term)) => Err(RegistryError::PrimaryTaken(format!(
                "{service} already has a primary for term {their_term} at {holder}; \
                 a primary claim needs a higher term than {their_term}, or follow {holder}"
            ))),
        }
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

/// The term a metadata set claims the primary role for: `None` when it does not say
/// `role=primary`; a missing `term` counts as 0; a `term` that is not a u64 is refused.
fn primary_claim(metadata: &HashMap<String, String>) -> Result<Option<u64>, RegistryError> {
    if metadata.get("role").map(String::as_str) != Some("primary") {
        return Ok(None);
    }
    match metadata.get("term") {
        None => Ok(Some(0)),
        Some(term) => term.parse().map(Some).map_err(|_| {
            RegistryError::InvalidArgument(format!(
                "metadata term {term:?} of a primary is not a non-negative integer"
            ))
        }),
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

    fn role(role: &str, term: &str) -> HashMap<String, String> {
        HashMap::from([
            ("role".to_owned(), role.to_owned()),
            ("term".to_owned(), term.to_owned()),
        ])
    }

    /// One primary per term and service: a rival claim for the same or a lower term is
    /// refused and changes nothing; a higher term wins; the holder's own address may
    /// register again (a restart); expired leases and other services do not count.
    #[test]
    fn primary_claims_are_arbitrated_by_term() {
        let now = Instant::now();
        let mut table = LeaseTable::new();
        let a = table
            .register("shop", "127.0.0.1:1", role("primary", "2"), TTL, now)
            .expect("first claim");
        for term in ["2", "1"] {
            let err = table
                .register("shop", "127.0.0.1:2", role("primary", term), TTL, now)
                .expect_err("rival claim");
            assert!(matches!(err, RegistryError::PrimaryTaken(_)), "{err}");
            assert!(err.to_string().contains("term 2 at 127.0.0.1:1"), "{err}");
        }
        let b = table
            .register("shop", "127.0.0.1:2", role("replica", "2"), TTL, now)
            .expect("a replica claims nothing");
        let revision = table.revision();
        table
            .keep_alive(&b.lease_id, Some(role("primary", "2")), now)
            .expect_err("promotion to a held term");
        assert_eq!(table.revision(), revision);
        assert_eq!(table.resolve("shop")[1].metadata, role("replica", "2"));
        table
            .keep_alive(&b.lease_id, Some(role("primary", "3")), now)
            .expect("a higher term wins");
        table
            .keep_alive(&a.lease_id, Some(role("primary", "2")), now)
            .expect_err("the old primary cannot re-assert its term");
        table
            .register("shop", "127.0.0.1:2", role("primary", "3"), TTL, now)
            .expect("the holder restarted at its address");
        table
            .register("other", "127.0.0.1:7", role("primary", "0"), TTL, now)
            .expect("another service");
        table
            .register("shop", "127.0.0.1:9", role("primary", "1"), TTL, now + TTL)
            .expect("every rival has expired");
        let err = table
            .register(
                "shop",
                "127.0.0.1:8",
                role("primary", "x"),
                TTL,
                now + TTL * 3,
            )
            .expect_err("bad term");
        assert!(matches!(err, RegistryError::InvalidArgument(_)), "{err}");
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

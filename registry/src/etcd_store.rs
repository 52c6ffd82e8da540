//! The registry's leases in etcd, so that several registry instances serve one cluster and
//! a client moving from one to another keeps its lease.
//!
//! **Layout** (under a root prefix, `/concord/registry/` by default):
//! - `leases/<id>`: one registration ([`LeaseRecord`]: the published instance, the owner
//!   principal, the TTL, the etcd lease). The key is attached to its own etcd lease, so
//!   etcd deletes it when the lease is not kept alive: registry lease ↔ etcd lease. `<id>` is
//!   the random id the holder renews with (never published); the owner is stored, so a
//!   lease answers only its owner on every registry instance.
//! - `terms/<service>`: the highest primary term known, whose claim it was, and the newest
//!   shop log position known ([`TermRecord`]), so every registry instance orders claims
//!   by the same positions (`LeaseTable`, "Primary claims").
//! - `guard`: rewritten by every change, so one compare on it orders all changes.
//!
//! **Changes** (Register, KeepAlive with new metadata): read everything under the root
//! (linearizable), rebuild a `LeaseTable` from it, let the table decide with its rules
//! (authorization, one node one place, caps, primary claims), then write the outcome in
//! one etcd transaction that compares `guard`'s and `terms/<service>`'s mod revisions with
//! the ones read. If another registry changed anything meanwhile, the compare fails and the
//! change is decided again on the new state (at most [`MAX_ATTEMPTS`] times, then
//! `UNAVAILABLE`). So two registry instances racing two claims for one term cannot both
//! succeed: the second re-reads, sees a live primary, and is refused.
//!
//! **Renewals** (KeepAlive without a change) only read the lease's key (owner check) and
//! renew its etcd lease; nothing is written, so watchers hear nothing. **Expiry** is etcd's:
//! etcd deletes the key when its lease runs out (the leader keeps time; a new leader gives
//! every lease a fresh TTL, so an etcd election never expires anyone). **Watch** is an etcd
//! watch on the root prefix, reopened on another member when it breaks.
//!
//! **A silent registry expires nothing — on etcd too.** etcd expires a lease whose holder
//! stops renewing, but it cannot tell a dead holder from registries cut off from their
//! clients (issue 15: both registries cut off from the shops, still reaching etcd; etcd
//! would expire the live primary, and after the heal the replica would be promoted past a
//! primary that never died). The memory store's rule (`table`, "A silent registry expires
//! nothing") is per process; on etcd it is shared through etcd itself, per service:
//! - a registry *hears* a service while a client of it (Register, KeepAlive, Deregister)
//!   reached it within half the service's shortest TTL; while it does, it keeps a key
//!   `hearing/<service>/<registry id>` on an etcd lease of its own ([`HEARING_TTL`], so a
//!   killed registry's keys go away by themselves), and deletes the key when it stops
//!   hearing;
//! - a registry that stopped hearing a service *holds* it: every [`HOLD_TICK`] it renews, in
//!   etcd, every lease of that service — but only while no registry has a `hearing/` key
//!   for it (nobody hears it: the silence is about the registries' links, not the holders)
//!   and the service has leases at two or more addresses (a lone holder's silence says
//!   nothing about anyone's links), and at most [`MAX_HOLD`] after it last heard it;
//! - when it hears the service again after holding it, it goes on renewing all of its
//!   leases for one more TTL (a holder back from the cut needs a moment to reconnect), so
//!   only holders that then stay silent expire, about two TTLs after the heal.
//!
//! The cases: *both registries cut off from the shops* — neither hears the shops, both
//! hold, nobody expires, no promotion after the heal. *One registry cut off* — the shops
//! move to the other one, which hears them and keeps its `hearing/` key, so the silent one
//! holds nothing and a shop that really died expires on time. *A shop died during a cut of
//! both* — held until the heal, then expires a TTL or two later (the memory store's cost).
//! *The primary cut off from the registries only* — the registries still hear the replica,
//! nothing is held, the primary expires and the replica is promoted as before. A registry
//! that never heard a service does not hold it.
//!
//! etcd counts TTLs in whole seconds and has a minimum (1.5 × its election timeout): a
//! lease may get a longer TTL than asked, never a shorter one, and KeepAlive answers the TTL
//! granted. Published `expires_at_unix_ms` is the expiry at registration (renewals are not
//! written to etcd); the holder's KeepAlive answer has the current one.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use concord::{
    claim::LogPosition,
    clock::{millis, unix_ms},
    etcd::{txn, Etcd, EtcdError, KeyValue, LeaseId},
    identity::Principal,
    pb::registry::v1::Instance,
    retry::RetryPolicy,
};
use prost::Message;
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    store::NewLease,
    table::{check_lease_id, KnownTerm},
    LeaseTable, RegistryError,
};

/// The default root prefix of the registry's keys.
pub const DEFAULT_ROOT: &str = "/concord/registry/";
/// How often a change is decided again after another registry changed the state first.
pub const MAX_ATTEMPTS: usize = 8;
/// How a broken etcd watch is reopened: the registry clients' first wait, at most 1 s.
const WATCH_RETRY: RetryPolicy =
    RetryPolicy::new(concord::discovery::MIN_BACKOFF, Duration::from_secs(1));

/// How often a registry checks which services it hears and renews the ones it holds
/// (module docs, "A silent registry"): well under a sixth of the shortest TTL (1 s), so a
/// hold starts before a lease renewed just before the cut runs out.
pub const HOLD_TICK: Duration = Duration::from_millis(150);
/// The TTL of a registry's `hearing/` keys: a registry killed while it heard a service
/// stops counting as hearing it this long after.
pub const HEARING_TTL: Duration = Duration::from_secs(2);
/// How long after it last heard a service a silent registry may hold that service's
/// leases: long cuts (the partition tests cut for 30 s) are held, a registry cut off for
/// good lets etcd expire them in the end.
pub const MAX_HOLD: Duration = Duration::from_secs(120);

/// One registration as stored in etcd.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseRecord {
    /// The published instance (`lease_id` empty).
    #[prost(message, optional, tag = "1")]
    pub instance: Option<Instance>,
    /// The owner principal's name (`Principal::name`).
    #[prost(string, tag = "2")]
    pub owner: String,
    /// The TTL asked for, in milliseconds.
    #[prost(uint64, tag = "3")]
    pub ttl_ms: u64,
    /// The etcd lease the key is attached to.
    #[prost(int64, tag = "4")]
    pub etcd_lease: i64,
}

/// The highest primary term known for one service.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TermRecord {
    /// The term.
    #[prost(uint64, tag = "1")]
    pub term: u64,
    /// The address whose claim to it was accepted; absent when only learned.
    #[prost(string, optional, tag = "2")]
    pub holder: Option<String>,
    /// The term of the newest log position known (`LeaseTable` rule 3).
    #[prost(uint64, tag = "3")]
    pub log_term: u64,
    /// The LSN of the newest log position known.
    #[prost(uint64, tag = "4")]
    pub log_lsn: u64,
}

/// The registry's leases in etcd.
pub(crate) struct EtcdStore {
    etcd: Etcd,
    root: String,
    changes_rx: watch::Receiver<u64>,
    /// Which services this registry hears (module docs, "A silent registry").
    hearing: Arc<Hearing>,
}

/// When this registry last heard a client of each service, and the shortest TTL it saw
/// asked for it.
#[derive(Default)]
struct Hearing {
    services: Mutex<HashMap<String, Heard>>,
}

#[derive(Clone, Copy, Debug)]
struct Heard {
    last: Instant,
    shortest_ttl: Duration,
}

impl Heard {
    /// Whether a client of the service reached this registry recently enough.
    fn hears(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last) < self.shortest_ttl / 2
    }
}

impl Hearing {
    fn heard(&self, service: &str, ttl: Duration, now: Instant) {
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let entry = services.entry(service.to_owned()).or_insert(Heard {
            last: now,
            shortest_ttl: ttl,
        });
        entry.last = entry.last.max(now);
        entry.shortest_ttl = entry.shortest_ttl.min(ttl);
    }

    fn all(&self) -> Vec<(String, Heard)> {
        let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        services.iter().map(|(s, h)| (s.clone(), *h)).collect()
    }
}

/// Everything under the root, rebuilt as a lease table.
struct Snapshot {
    table: LeaseTable,
    /// `guard`'s mod revision (0 = never written).
    guard: i64,
    /// Each `terms/<service>` key's mod revision.
    term_revisions: HashMap<String, i64>,
    /// Each lease id's record.
    records: HashMap<String, LeaseRecord>,
}

impl EtcdStore {
    /// A store in the etcd cluster `etcd` under `root`; the task that follows etcd's
    /// changes for watchers runs on `tasks` until `stop` is cancelled.
    pub(crate) fn start(
        etcd: Etcd,
        root: &str,
        stop: CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        let (changes_tx, changes_rx) = watch::channel(0);
        tasks.spawn(follow_changes(
            etcd.clone(),
            root.as_bytes().to_vec(),
            changes_tx,
            stop.clone(),
        ));
        let hearing = Arc::new(Hearing::default());
        tasks.spawn(
            Holder {
                etcd: etcd.clone(),
                root: root.to_owned(),
                id: uuid::Uuid::new_v4().simple().to_string(),
                hearing: hearing.clone(),
                lease: None,
                published: HashSet::new(),
                held: HashSet::new(),
                grace: HashMap::new(),
            }
            .run(stop),
        );
        Self {
            etcd,
            root: root.to_owned(),
            changes_rx,
            hearing,
        }
    }

    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changes_rx.clone()
    }

    fn lease_key(&self, lease_id: &str) -> Vec<u8> {
        format!("{}leases/{lease_id}", self.root).into_bytes()
    }

    fn term_key(&self, service: &str) -> Vec<u8> {
        format!("{}terms/{service}", self.root).into_bytes()
    }

    fn guard_key(&self) -> Vec<u8> {
        format!("{}guard", self.root).into_bytes()
    }

    /// Reads everything under the root and rebuilds the table, every lease live for its
    /// TTL from `now` (etcd has already deleted the expired ones).
    async fn snapshot(&self, now: Instant) -> Result<Snapshot, RegistryError> {
        let range = self
            .etcd
            .range_prefix(self.root.as_bytes())
            .await
            .map_err(unavailable)?;
        let mut leases: Vec<(i64, String, LeaseRecord)> = Vec::new();
        let mut snapshot = Snapshot {
            table: LeaseTable::new(),
            guard: 0,
            term_revisions: HashMap::new(),
            records: HashMap::new(),
        };
        for kv in range.kvs {
            let Some(name) = kv
                .key
                .strip_prefix(self.root.as_bytes())
                .and_then(|k| std::str::from_utf8(k).ok())
            else {
                continue;
            };
            if name == "guard" {
                snapshot.guard = kv.mod_revision;
            } else if let Some(id) = name.strip_prefix("leases/") {
                if let Some(record) = decode_lease(&kv) {
                    leases.push((kv.create_revision, id.to_owned(), record));
                }
            } else if let Some(service) = name.strip_prefix("terms/") {
                match TermRecord::decode(kv.value.as_slice()) {
                    Ok(term) => {
                        let known = KnownTerm {
                            term: term.term,
                            holder: term.holder,
                            newest: LogPosition {
                                term: term.log_term,
                                lsn: term.log_lsn,
                            },
                        };
                        snapshot.table.restore_term(service, known);
                        snapshot
                            .term_revisions
                            .insert(service.to_owned(), kv.mod_revision);
                    }
                    Err(err) => {
                        tracing::error!(%service, %err, "undecodable term record in etcd; ignored")
                    }
                }
            }
        }
        leases.sort_by_key(|(created, _, _)| *created);
        for (_, id, record) in leases {
            let Ok(owner) = Principal::parse(&record.owner) else {
                tracing::error!(lease = %id, owner = %record.owner, "lease record with an unknown owner in etcd; ignored");
                continue;
            };
            let Some(instance) = record.instance.clone() else {
                continue;
            };
            let ttl = Duration::from_millis(record.ttl_ms);
            snapshot
                .table
                .restore(id.clone(), instance, owner, ttl, now);
            snapshot.records.insert(id, record);
        }
        Ok(snapshot)
    }

    /// The transaction that writes a change decided on `snapshot`: it applies only if
    /// nothing changed since (the guard and `service`'s term key), and also writes the term
    /// the table now knows when it moved.
    fn commit(
        &self,
        snapshot: &Snapshot,
        service: &str,
        term_before: Option<KnownTerm>,
        mut ops: Vec<concord::etcd::pb::etcdserverpb::RequestOp>,
    ) -> concord::etcd::pb::etcdserverpb::TxnRequest {
        let term_key = self.term_key(service);
        let term_after = snapshot.table.known_term(service);
        if term_after != term_before {
            if let Some(known) = term_after {
                let record = TermRecord {
                    term: known.term,
                    holder: known.holder,
                    log_term: known.newest.term,
                    log_lsn: known.newest.lsn,
                };
                ops.push(txn::put(&term_key, record.encode_to_vec(), 0));
            }
        }
        ops.push(txn::put(&self.guard_key(), Vec::new(), 0));
        let term_revision = snapshot.term_revisions.get(service).copied().unwrap_or(0);
        txn::when(
            vec![
                txn::mod_revision_is(&self.guard_key(), snapshot.guard),
                txn::mod_revision_is(&term_key, term_revision),
            ],
            ops,
        )
    }

    pub(crate) async fn register(&self, lease: NewLease<'_>) -> Result<Instance, RegistryError> {
        if crate::table::validate_service(lease.service).is_ok()
            && (crate::MIN_TTL..=crate::MAX_TTL).contains(&lease.ttl)
        {
            self.hearing.heard(lease.service, lease.ttl, Instant::now());
        }
        for _ in 0..MAX_ATTEMPTS {
            let now = Instant::now();
            let mut snapshot = self.snapshot(now).await?;
            let before = snapshot.table.lease_ids();
            let term_before = snapshot.table.known_term(lease.service);
            let mut instance = snapshot.table.register(
                lease.owner,
                lease.service,
                lease.address,
                lease.metadata.clone(),
                lease.ttl,
                now,
            )?;
            let replaced: Vec<String> = before
                .difference(&snapshot.table.lease_ids())
                .cloned()
                .collect();
            let (etcd_lease, granted) = self.etcd.grant(lease.ttl).await.map_err(unavailable)?;
            let granted = granted.max(lease.ttl);
            instance.expires_at_unix_ms = instance.registered_at_unix_ms + millis(granted);
            let record = LeaseRecord {
                instance: Some(Instance {
                    lease_id: String::new(),
                    ..instance.clone()
                }),
                owner: lease.owner.name(),
                ttl_ms: u64::try_from(lease.ttl.as_millis()).unwrap_or(u64::MAX),
                etcd_lease,
            };
            let mut ops = vec![txn::put(
                &self.lease_key(&instance.lease_id),
                record.encode_to_vec(),
                etcd_lease,
            )];
            ops.extend(replaced.iter().map(|id| txn::delete(&self.lease_key(id))));
            let request = self.commit(&snapshot, lease.service, term_before, ops);
            let committed = self.etcd.txn(request).await;
            match committed {
                Ok(reply) if reply.succeeded => {
                    for id in &replaced {
                        if let Some(old) = snapshot.records.get(id) {
                            self.revoke_quietly(old.etcd_lease).await;
                        }
                    }
                    return Ok(instance);
                }
                Ok(_) => {
                    tracing::debug!(service = %lease.service, "registry state changed meanwhile; deciding again");
                    self.revoke_quietly(etcd_lease).await;
                }
                Err(err) => {
                    self.revoke_quietly(etcd_lease).await;
                    return Err(unavailable(err));
                }
            }
        }
        Err(contended())
    }

    pub(crate) async fn keep_alive(
        &self,
        owner: &Principal,
        lease_id: &str,
        metadata: Option<HashMap<String, String>>,
    ) -> Result<Instance, RegistryError> {
        check_lease_id(lease_id)?;
        let record = self.owned_record(owner, lease_id).await?;
        self.heard_from(&record);
        let not_found = || RegistryError::LeaseNotFound(lease_id.to_owned());
        let ttl = self
            .etcd
            .keep_alive_once(record.etcd_lease)
            .await
            .map_err(unavailable)?
            .ok_or_else(not_found)?;
        let mut instance = record.instance.clone().ok_or_else(not_found)?;
        if let Some(metadata) = metadata.filter(|m| *m != instance.metadata) {
            instance = self.change_metadata(owner, lease_id, metadata).await?;
        }
        instance.lease_id = lease_id.to_owned();
        instance.expires_at_unix_ms = unix_ms() + millis(ttl);
        Ok(instance)
    }

    /// Replaces a lease's metadata through the table's rules (a primary claim among them).
    async fn change_metadata(
        &self,
        owner: &Principal,
        lease_id: &str,
        metadata: HashMap<String, String>,
    ) -> Result<Instance, RegistryError> {
        for _ in 0..MAX_ATTEMPTS {
            let now = Instant::now();
            let mut snapshot = self.snapshot(now).await?;
            let Some(record) = snapshot.records.get(lease_id).cloned() else {
                return Err(RegistryError::LeaseNotFound(lease_id.to_owned()));
            };
            let Some(stored) = record.instance.clone() else {
                return Err(RegistryError::LeaseNotFound(lease_id.to_owned()));
            };
            let term_before = snapshot.table.known_term(&stored.service);
            snapshot
                .table
                .keep_alive(owner, lease_id, Some(metadata.clone()), now)?;
            let instance = Instance {
                metadata: metadata.clone(),
                ..stored.clone()
            };
            let updated = LeaseRecord {
                instance: Some(instance.clone()),
                ..record.clone()
            };
            let ops = vec![txn::put(
                &self.lease_key(lease_id),
                updated.encode_to_vec(),
                record.etcd_lease,
            )];
            let request = self.commit(&snapshot, &stored.service, term_before, ops);
            match self.etcd.txn(request).await {
                Ok(reply) if reply.succeeded => return Ok(instance),
                Ok(_) => {
                    tracing::debug!(lease = %lease_id, "registry state changed meanwhile; deciding again");
                }
                // The lease ran out between the renewal and the write.
                Err(EtcdError::Refused(message)) if message.contains("lease not found") => {
                    return Err(RegistryError::LeaseNotFound(lease_id.to_owned()))
                }
                Err(err) => return Err(unavailable(err)),
            }
        }
        Err(contended())
    }

    pub(crate) async fn deregister(
        &self,
        owner: &Principal,
        lease_id: &str,
    ) -> Result<Instance, RegistryError> {
        check_lease_id(lease_id)?;
        let record = self.owned_record(owner, lease_id).await?;
        self.heard_from(&record);
        self.etcd
            .revoke(record.etcd_lease)
            .await
            .map_err(unavailable)?;
        record
            .instance
            .ok_or_else(|| RegistryError::LeaseNotFound(lease_id.to_owned()))
    }

    /// Notes that the holder of `record` reached this registry.
    fn heard_from(&self, record: &LeaseRecord) {
        if let Some(instance) = &record.instance {
            let ttl = Duration::from_millis(record.ttl_ms).max(crate::MIN_TTL);
            self.hearing.heard(&instance.service, ttl, Instant::now());
        }
    }

    /// `lease_id`'s record if `owner` holds it; anyone else's is `LeaseNotFound`, as an
    /// unknown one.
    async fn owned_record(
        &self,
        owner: &Principal,
        lease_id: &str,
    ) -> Result<LeaseRecord, RegistryError> {
        let not_found = || RegistryError::LeaseNotFound(lease_id.to_owned());
        if lease_id.is_empty() {
            return Err(not_found());
        }
        let (_, kv) = self
            .etcd
            .get(&self.lease_key(lease_id))
            .await
            .map_err(unavailable)?;
        let record = kv.as_ref().and_then(decode_lease).ok_or_else(not_found)?;
        if record.owner != owner.name() {
            return Err(not_found());
        }
        Ok(record)
    }

    /// Live instances (of `service`, or all by service name), oldest registration first.
    pub(crate) async fn instances(
        &self,
        service: Option<&str>,
    ) -> Result<(Vec<Instance>, u64), RegistryError> {
        let prefix = format!("{}leases/", self.root);
        let range = self
            .etcd
            .range_prefix(prefix.as_bytes())
            .await
            .map_err(unavailable)?;
        let mut found: Vec<(i64, Instance)> = range
            .kvs
            .iter()
            .filter_map(|kv| Some((kv.create_revision, decode_lease(kv)?.instance?)))
            .filter(|(_, i)| service.is_none_or(|s| i.service == s))
            .collect();
        found.sort_by(|(a_created, a), (b_created, b)| {
            a.service.cmp(&b.service).then(a_created.cmp(b_created))
        });
        let revision = u64::try_from(range.revision).unwrap_or(0);
        Ok((found.into_iter().map(|(_, i)| i).collect(), revision))
    }

    async fn revoke_quietly(&self, lease: LeaseId) {
        if let Err(err) = self.etcd.revoke(lease).await {
            tracing::warn!(lease, %err, "could not revoke an unused etcd lease; it expires on its own");
        }
    }
}

/// Follows every change under `root` with an etcd watch and moves the change counter, until
/// `stop` is cancelled. A broken watch is reopened (on another member, if need be) from
/// the revision after the last one seen, and the counter moves once then, in case changes
/// were missed.
async fn follow_changes(
    etcd: Etcd,
    root: Vec<u8>,
    changes_tx: watch::Sender<u64>,
    stop: CancellationToken,
) {
    let mut next_revision = 0i64;
    let mut backoff = WATCH_RETRY.backoff();
    loop {
        match etcd.watch_prefix(&root, next_revision).await {
            Ok(mut stream) => {
                changes_tx.send_modify(|c| *c += 1);
                loop {
                    tokio::select! {
                        reply = stream.next() => match reply {
                            Ok(Some(reply)) => {
                                backoff.reset();
                                if let Some(header) = &reply.header {
                                    next_revision = header.revision + 1;
                                }
                                if !reply.events.is_empty() {
                                    changes_tx.send_modify(|c| *c += 1);
                                }
                            }
                            Ok(None) => break,
                            Err(err) => {
                                tracing::warn!(%err, "etcd watch broke; reopening");
                                break;
                            }
                        },
                        () = stop.cancelled() => return,
                    }
                }
            }
            Err(err) => {
                tracing::warn!(%err, "cannot open the etcd watch; retrying");
                // A compacted start revision: start from now (the counter moves anyway).
                if matches!(err, EtcdError::Refused(_)) {
                    next_revision = 0;
                }
            }
        }
        tokio::select! {
            () = backoff.wait() => {}
            () = stop.cancelled() => return,
        }
    }
}

/// The task that publishes which services this registry hears and holds the leases of
/// the ones nobody hears (module docs, "A silent registry").
struct Holder {
    etcd: Etcd,
    root: String,
    /// This registry's id in `hearing/` keys.
    id: String,
    hearing: Arc<Hearing>,
    /// The etcd lease of this registry's `hearing/` keys.
    lease: Option<LeaseId>,
    /// The services whose `hearing/` key this registry has written.
    published: HashSet<String>,
    /// The services this registry is holding.
    held: HashSet<String>,
    /// Services heard again after a hold, renewed until the instant given.
    grace: HashMap<String, Instant>,
}

impl Holder {
    async fn run(mut self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(HOLD_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lease_renewed = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => break,
            }
            let now = Instant::now();
            if let Some(lease) = self.lease {
                if now.saturating_duration_since(lease_renewed) >= HEARING_TTL / 4 {
                    match self.etcd.keep_alive_once(lease).await {
                        Ok(Some(_)) => lease_renewed = now,
                        Ok(None) => {
                            // Expired (this registry was cut off from etcd): start over.
                            self.lease = None;
                            self.published.clear();
                        }
                        Err(err) => tracing::debug!(%err, "cannot renew the hearing lease"),
                    }
                }
            }
            for (service, heard) in self.hearing.all() {
                let step = if heard.hears(now) {
                    self.hearing_service(&service, heard, now).await
                } else {
                    self.silent_service(&service, heard, now).await
                };
                if let Err(err) = step {
                    tracing::debug!(%service, %err, "etcd unavailable for the silent-registry hold");
                }
            }
        }
        if let Some(lease) = self.lease {
            if let Err(err) = self.etcd.revoke(lease).await {
                tracing::debug!(%err, "could not revoke the hearing lease; it expires on its own");
            }
        }
    }

    fn hearing_key(&self, service: &str) -> Vec<u8> {
        format!("{}hearing/{service}/{}", self.root, self.id).into_bytes()
    }

    /// A client of `service` reached this registry lately: say so in etcd, and renew the
    /// service's leases for a while if it was held.
    async fn hearing_service(
        &mut self,
        service: &str,
        heard: Heard,
        now: Instant,
    ) -> Result<(), EtcdError> {
        if self.held.remove(service) {
            tracing::info!(%service, "hearing the service again; renewing its leases for one more TTL");
            self.grace
                .insert(service.to_owned(), now + heard.shortest_ttl);
        }
        if !self.published.contains(service) {
            let lease = match self.lease {
                Some(lease) => lease,
                None => {
                    let (lease, _) = self.etcd.grant(HEARING_TTL).await?;
                    self.lease = Some(lease);
                    lease
                }
            };
            let key = self.hearing_key(service);
            self.etcd
                .txn(txn::when(
                    Vec::new(),
                    vec![txn::put(&key, Vec::new(), lease)],
                ))
                .await?;
            self.published.insert(service.to_owned());
        }
        match self.grace.get(service) {
            Some(until) if *until > now => {
                self.renew_service(service).await?;
            }
            Some(_) => {
                self.grace.remove(service);
            }
            None => {}
        }
        Ok(())
    }

    /// No client of `service` reached this registry for half its TTL: withdraw the
    /// `hearing/` key, and hold the service's leases while nobody else hears it.
    async fn silent_service(
        &mut self,
        service: &str,
        heard: Heard,
        now: Instant,
    ) -> Result<(), EtcdError> {
        self.grace.remove(service);
        if self.published.contains(service) {
            let key = self.hearing_key(service);
            self.etcd
                .txn(txn::when(Vec::new(), vec![txn::delete(&key)]))
                .await?;
            self.published.remove(service);
        }
        if now.saturating_duration_since(heard.last) > MAX_HOLD {
            if self.held.remove(service) {
                tracing::warn!(%service, max_hold_ms = millis(MAX_HOLD), "silent for too long; no longer holding the service's leases");
            }
            return Ok(());
        }
        let others = format!("{}hearing/{service}/", self.root);
        if !self
            .etcd
            .range_prefix(others.as_bytes())
            .await?
            .kvs
            .is_empty()
        {
            if self.held.remove(service) {
                tracing::info!(%service, "another registry hears the service; no longer holding it");
            }
            return Ok(());
        }
        let holding = self.renew_service(service).await?;
        if holding && self.held.insert(service.to_owned()) {
            tracing::warn!(%service, "no registry hears this service: holding its leases in etcd until clients are heard again");
        }
        Ok(())
    }

    /// Renews every lease of `service` in etcd if they are at two or more addresses;
    /// returns whether it did.
    async fn renew_service(&self, service: &str) -> Result<bool, EtcdError> {
        let prefix = format!("{}leases/", self.root);
        let range = self.etcd.range_prefix(prefix.as_bytes()).await?;
        let records: Vec<LeaseRecord> = range
            .kvs
            .iter()
            .filter_map(decode_lease)
            .filter(|r| r.instance.as_ref().is_some_and(|i| i.service == service))
            .collect();
        let addresses: HashSet<&str> = records
            .iter()
            .filter_map(|r| r.instance.as_ref().map(|i| i.address.as_str()))
            .collect();
        if addresses.len() < 2 {
            return Ok(false);
        }
        for record in &records {
            self.etcd.keep_alive_once(record.etcd_lease).await?;
        }
        Ok(true)
    }
}

fn decode_lease(kv: &KeyValue) -> Option<LeaseRecord> {
    match LeaseRecord::decode(kv.value.as_slice()) {
        Ok(record) => Some(record),
        Err(err) => {
            tracing::error!(key = %String::from_utf8_lossy(&kv.key), %err, "undecodable lease record in etcd; ignored");
            None
        }
    }
}

fn unavailable(err: EtcdError) -> RegistryError {
    RegistryError::Unavailable(err.to_string())
}

fn contended() -> RegistryError {
    RegistryError::Unavailable(format!(
        "the registry state kept changing during {MAX_ATTEMPTS} attempts; try again"
    ))
}

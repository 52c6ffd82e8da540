//! The lease table: who is registered, by whom, until when. Pure data; the caller passes
//! the time and the authenticated principal, so every rule is tested without sockets or
//! sleeping.
//!
//! Invariants: a lease id is in the table at most once and is known only to the principal
//! that registered it (instances are stored and published with `lease_id` empty);
//! `revision` grows by one on every change a watcher could see (register, metadata change,
//! deregister, expiry) and never otherwise; the highest primary term known per service
//! never goes down while the table lives.
//!
//! **Who may register what** ([`authorize`]). The caller is the [`Principal`] its
//! credential proves. The registry itself registers nothing. Service `predictor` takes only
//! a node, whose metadata `node_id` must be its own id; `shop`, `aggregator` and `gateway`
//! take only their role; any other service takes any principal. Metadata naming a
//! `node_id`, in any service, must be the caller's own id. Only a shop may publish
//! `role=primary`. A lease belongs to the principal that registered it: `KeepAlive` and
//! `Deregister` from anyone else answer `NOT_FOUND`, exactly as for an unknown lease, so a
//! caller learns nothing about leases it does not hold, and nothing changes.
//!
//! **One node, one place.** While a `predictor` lease for `node_id=X` lives, another
//! registration of X at another address is refused (`FAILED_PRECONDITION`, naming the
//! holder's address): a second `concord node --id X` cannot take X's traffic. X registering
//! again at the *same* address (a restart whose old lease has not expired yet) replaces
//! the old lease, so the instance is never listed twice.
//!
//! **Primary claims.** An instance whose metadata says `role=primary` claims to be its
//! service's primary for the `term` it names (missing = 0). The table is the arbiter:
//! 1. a claim is refused while another live primary of the service, at another address,
//!    holds a lease, whatever its term: the claim is a lease the registry honours, so no
//!    replica is promoted past a primary that still renews (one primary per term, and no
//!    term + 1 while term's holder lives; a process restarted at its own address may renew
//!    its own claim);
//! 2. a claim must be for exactly `current + 1`, where `current` is the highest term the
//!    table has accepted for the service (or learned from a live shop registration's
//!    `term` while it had accepted none, e.g. replicas after a registry restart); the
//!    current term itself may be claimed again only by the address that holds it (a
//!    renewal, a restart) or, when no claim to it was accepted yet, by anyone. A jump
//!    (`current + 100`, `u64::MAX`) is `FAILED_PRECONDITION` naming the expected term, so
//!    nobody can fence a shop out of every future term. With nothing known (a fresh or
//!    restarted registry) any term is accepted.
//!
//! 3. a claim that opens a new term (`current + 1`; not the current term claimed again,
//!    which only its holder does) must come from a log at least as new as the newest the table
//!    knows: the [`LogPosition`] (`log_term`, `log_lsn`) in the claim's metadata, ordered
//!    by term, then LSN, as Raft's vote rule orders candidates. The table learns positions
//!    from every shop registration that names one, and an accepted claim to term T at
//!    LSN l that opened T above a known term (a promotion) counts as position (T, l):
//!    its holder's next entry is of term T, before it may have published that. The first
//!    claim a table accepts with nothing known (a fresh start, a restarted in-memory
//!    registry) counts only as the position it names. A claim naming no position is at
//!    (0, 0). So a shop that was down while another primary took
//!    writes in a newer term, and has not caught up with it since, never claims a term
//!    over those writes, whichever shop stopped first: in async mode they may have been
//!    acknowledged by that primary alone. Positions are kept with the term (in etcd too).
//!
//! So two replicas that promote themselves at once cannot both win the same term: the
//! second gets `FAILED_PRECONDITION` and must not take writes (the shop only takes writes
//! once the registry has accepted its claim). A shop's promotion goes T → T+1, and only
//! the newest log may make it. What the table cannot know: writes after the last position
//! a shop published (an async primary's tail) — that is async mode's bounded loss, as
//! before; and after an in-memory registry restart it knows only what the live shops
//! publish again (the etcd store forgets nothing).
//!
//! **A silent registry expires nothing** ([`LeaseTable::is_isolated`], [`LeaseTable::heard`],
//! [`LeaseTable::grace`]). A lease expires because its holder stopped renewing, but the
//! table cannot tell that from *its own* links being cut or its process being stalled: then
//! every holder looks dead at once, and expiring them (issue 15: the registry cut off for
//! 5 s) lets a replica promote past a primary that never died. So when the table holds
//! leases at two or more addresses and has heard from nobody for half the shortest TTL, it
//! counts itself isolated and expires nothing; the first call after that, or a stall of the
//! sweeper itself, gives every lease two fresh TTLs from that moment, so only holders that then
//! stay silent expire, two TTLs later. Cost: a lease may outlive its holder by up to the
//! longest renewal period among the other holders plus two TTLs when everyone else is quiet.
//!
//! **Bounds.** So that `List` and every `Watch` message stay under the 4 MiB gRPC message
//! limit ([`concord::grpc::MAX_MESSAGE_BYTES`]) whatever is registered, the table holds at
//! most [`MAX_INSTANCES`] leases, [`MAX_INSTANCES_PER_SERVICE`] per service, and a
//! principal at most [`MAX_LEASES_PER_PRINCIPAL_PER_SERVICE`] per service and
//! [`MAX_LEASES_PER_PRINCIPAL`] in all (so one credential cannot fill the registry for
//! everyone); one more is `RESOURCE_EXHAUSTED`. An instance's metadata has at most
//! [`MAX_METADATA_ENTRIES`] entries of at most [`MAX_METADATA_BYTES`] per key or value and
//! at most [`MAX_METADATA_TOTAL_BYTES`] of keys and values together. The worst-case
//! encoded instance (protobuf, a tag and a length prefix per field) is:
//!
//! ```text
//!   service    1 + 1 + 64                                   =    66
//!   address    1 + 2 + 256                                  =   259
//!   metadata   2048 bytes of keys and values
//!              + 32 entries × (1+2 entry, 1+2 key, 1+2 value) = 2 336
//!   lease_id   empty, not encoded                           =     0
//!   two int64 timestamps  2 × (1 + 10)                      =    22
//!   framing in the repeated field  1 + 2                    =     3
//!                                                    total  ≤ 2 686 bytes
//! ```
//!
//! so a `List` of all 1024 instances is ≤ 1024 × 2 686 + 11 (revision) = 2 750 475 bytes
//! (2.63 MiB) and a `Watch`/`Resolve` of one service ≤ 256 × 2 686 + 11 = 687 627 bytes,
//! both under 4 MiB (4 194 304). The unit test `caps_keep_every_answer_under_the_message_limit`
//! fills every cap with maximal instances and checks the encoded sizes.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use concord::{
    claim::{LogPosition, PrimaryClaim, ROLE_PRIMARY},
    clock::{millis, unix_ms},
    error::quote,
    identity::Principal,
    pb::registry::v1::Instance,
};

use crate::RegistryError;

/// Shortest TTL a lease may ask for.
/// TTLs of grace every lease gets when a cut-off or stalled table resumes ([`LeaseTable::grace`]).
const GRACE_TTLS: u32 = 2;

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
/// Most bytes of metadata keys and values together per instance.
pub const MAX_METADATA_TOTAL_BYTES: usize = 2048;
/// Most live instances of one service (bounds a `Watch`/`Resolve` message).
pub const MAX_INSTANCES_PER_SERVICE: usize = 256;
/// Most live instances in all (bounds a `List` message).
pub const MAX_INSTANCES: usize = 1024;
/// Most live leases one principal holds in one service.
pub const MAX_LEASES_PER_PRINCIPAL_PER_SERVICE: usize = 8;
/// Most live leases one principal holds in all services.
pub const MAX_LEASES_PER_PRINCIPAL: usize = 64;
/// Longest lease id KeepAlive/Deregister accept, in bytes (ours are 32 hex digits); a
/// longer one is a malformed request, not an unknown lease.
pub const MAX_LEASE_ID_BYTES: usize = 64;

pub use concord::identity::PREDICTOR_SERVICE;
/// Metadata key naming a prediction node (`concord_node::METADATA_NODE_ID`).
pub const METADATA_NODE_ID: &str = "node_id";
/// Metadata keys of a shop's role and term, parsed by [`PrimaryClaim`].
pub use concord::claim::{METADATA_ROLE, METADATA_TERM};

struct Lease {
    /// What is published: `lease_id` is always empty here.
    instance: Instance,
    /// Who registered it; the only principal that may renew or remove it.
    owner: Principal,
    expires_at: Instant,
    ttl: Duration,
    /// Registration order, to list oldest first.
    order: u64,
}

impl Lease {
    fn is_live(&self, now: Instant) -> bool {
        self.expires_at > now
    }

    fn node_id(&self) -> Option<&str> {
        self.instance
            .metadata
            .get(METADATA_NODE_ID)
            .map(String::as_str)
    }
}

/// The highest primary term known for one service, and the newest log position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KnownTerm {
    /// The term.
    pub(crate) term: u64,
    /// The address whose claim to `term` was accepted; `None` when the term was only
    /// learned from a shop that follows it.
    pub(crate) holder: Option<String>,
    /// The newest log position any shop of the service published or claimed at (module
    /// docs, "Primary claims", rule 3); never above `term`.
    pub(crate) newest: LogPosition,
}

impl KnownTerm {
    fn new(term: u64) -> Self {
        KnownTerm {
            term,
            holder: None,
            newest: LogPosition::default(),
        }
    }

    /// Raises `newest` to `position`, its term capped at the known term (a position
    /// naming a term nobody claimed is not believed beyond what is known).
    fn learn_position(&mut self, position: LogPosition) {
        let capped = LogPosition {
            term: position.term.min(self.term),
            lsn: position.lsn,
        };
        self.newest = self.newest.max(capped);
    }
}

/// Live leases, the terms they claimed, and the change counter watchers follow.
#[derive(Default)]
pub struct LeaseTable {
    leases: HashMap<String, Lease>,
    terms: HashMap<String, KnownTerm>,
    revision: u64,
    next_order: u64,
    /// When a client last reached the table (Register or KeepAlive), to tell the registry's
    /// own isolation from its clients' deaths.
    last_heard: Option<Instant>,
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

    /// Adds an instance registered by `owner` under a new lease that expires `ttl` after
    /// `now`. The returned instance is the holder's copy: the only one carrying the lease id.
    pub fn register(
        &mut self,
        owner: &Principal,
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
        authorize(owner, service, &metadata)?;
        self.heard(now);
        let replaced = self.check_node_place(service, address, &metadata, now)?;
        self.check_primary_claim(service, address, None, &metadata, now)?;
        self.check_caps(owner, service, &replaced, now)?;

        for id in &replaced {
            self.leases.remove(id);
        }
        self.learn_term(owner, service, address, &metadata);
        let lease_id = uuid::Uuid::new_v4().simple().to_string();
        let wall = unix_ms();
        let instance = Instance {
            service: service.to_owned(),
            address: address.to_owned(),
            metadata,
            lease_id: String::new(),
            registered_at_unix_ms: wall,
            expires_at_unix_ms: wall + millis(ttl),
        };
        self.next_order += 1;
        self.leases.insert(
            lease_id.clone(),
            Lease {
                instance: instance.clone(),
                owner: owner.clone(),
                expires_at: now + ttl,
                ttl,
                order: self.next_order,
            },
        );
        self.revision += 1;
        Ok(Instance {
            lease_id,
            ..instance
        })
    }

    /// Renews `owner`'s lease for another TTL, replacing its metadata when given one.
    /// Someone else's lease is `LeaseNotFound`, as an unknown one.
    pub fn keep_alive(
        &mut self,
        owner: &Principal,
        lease_id: &str,
        metadata: Option<HashMap<String, String>>,
        now: Instant,
    ) -> Result<Instance, RegistryError> {
        check_lease_id(lease_id)?;
        self.heard(now);
        let (service, address) = match self.leases.get(lease_id) {
            Some(lease) if lease.is_live(now) && lease.owner == *owner => (
                lease.instance.service.clone(),
                lease.instance.address.clone(),
            ),
            _ => return Err(RegistryError::LeaseNotFound(lease_id.to_owned())),
        };
        if let Some(metadata) = &metadata {
            validate_metadata(metadata)?;
            authorize(owner, &service, metadata)?;
            self.check_primary_claim(&service, &address, Some(lease_id), metadata, now)?;
            self.learn_term(owner, &service, &address, metadata);
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
        Ok(Instance {
            lease_id: lease_id.to_owned(),
            ..lease.instance.clone()
        })
    }

    /// The leases a `predictor` registration of its `node_id` at `address` replaces (the
    /// same node restarted at the same address); refuses it while the node is live at
    /// another address (module docs, "One node, one place").
    fn check_node_place(
        &self,
        service: &str,
        address: &str,
        metadata: &HashMap<String, String>,
        now: Instant,
    ) -> Result<Vec<String>, RegistryError> {
        let Some(node_id) = metadata.get(METADATA_NODE_ID) else {
            return Ok(Vec::new());
        };
        if service != PREDICTOR_SERVICE {
            return Ok(Vec::new());
        }
        let mut replaced = Vec::new();
        for (id, lease) in &self.leases {
            if lease.instance.service != service
                || !lease.is_live(now)
                || lease.node_id() != Some(node_id)
            {
                continue;
            }
            if lease.instance.address != address {
                return Err(RegistryError::NodeTaken(format!(
                    "node {} is registered at {} until its lease expires; \
                     a node id can serve from one address at a time",
                    quote(node_id),
                    quote(&lease.instance.address)
                )));
            }
            replaced.push(id.clone());
        }
        Ok(replaced)
    }

    /// Refuses a registration beyond any of the caps (module docs, "Bounds"); `replaced`
    /// leases are about to go and do not count.
    fn check_caps(
        &self,
        owner: &Principal,
        service: &str,
        replaced: &[String],
        now: Instant,
    ) -> Result<(), RegistryError> {
        let (mut total, mut in_service, mut by_owner, mut by_owner_in_service) = (0, 0, 0, 0);
        for (id, lease) in &self.leases {
            if !lease.is_live(now) || replaced.contains(id) {
                continue;
            }
            let same_service = lease.instance.service == service;
            let same_owner = lease.owner == *owner;
            total += 1;
            in_service += usize::from(same_service);
            by_owner += usize::from(same_owner);
            by_owner_in_service += usize::from(same_service && same_owner);
        }
        let full = if total >= MAX_INSTANCES {
            format!("the registry holds {MAX_INSTANCES} instances, its limit")
        } else if in_service >= MAX_INSTANCES_PER_SERVICE {
            format!("{service} has {MAX_INSTANCES_PER_SERVICE} instances, the limit per service")
        } else if by_owner_in_service >= MAX_LEASES_PER_PRINCIPAL_PER_SERVICE {
            format!(
                "{owner} holds {MAX_LEASES_PER_PRINCIPAL_PER_SERVICE} leases in {service}, \
                 the limit per principal and service"
            )
        } else if by_owner >= MAX_LEASES_PER_PRINCIPAL {
            format!("{owner} holds {MAX_LEASES_PER_PRINCIPAL} leases, the limit per principal")
        } else {
            return Ok(());
        };
        Err(RegistryError::Exhausted(format!(
            "{full}; deregister or let a lease expire first"
        )))
    }

    /// Refuses `metadata` if it claims the primary role of `service` against the rules of
    /// the module docs ("Primary claims"): a live rival at another address with the same
    /// or a higher term, or a term other than the next one (or the current one, for its
    /// holder).
    fn check_primary_claim(
        &self,
        service: &str,
        address: &str,
        lease_id: Option<&str>,
        metadata: &HashMap<String, String>,
        now: Instant,
    ) -> Result<(), RegistryError> {
        // A position that does not parse is refused from anyone, claiming or not.
        let position = LogPosition::parse(metadata)
            .map_err(|err| RegistryError::InvalidArgument(err.to_string()))?
            .unwrap_or_default();
        let Some(term) = primary_claim(metadata)? else {
            return Ok(());
        };
        let holder = self.leases.iter().find_map(|(id, lease)| {
            let other = &lease.instance;
            let live_rival = Some(id.as_str()) != lease_id
                && lease.is_live(now)
                && other.service == service
                && other.address != address;
            let their_term = if live_rival {
                primary_claim(&other.metadata).ok().flatten()?
            } else {
                return None;
            };
            Some((other.address.clone(), their_term))
        });
        if let Some((holder, their_term)) = &holder {
            if *their_term >= term {
                return Err(RegistryError::PrimaryTaken(format!(
                    "{service} already has a primary for term {their_term} at {holder}; \
                     a primary claim needs a higher term than {their_term}, or follow {holder}"
                )));
            }
        }
        // The claim is a lease the registry honours: no promotion past a live primary (after
        // the term checks below, so that a jump is still told the term it should claim).
        let honour_live_primary = || match &holder {
            Some((holder, their_term)) => Err(RegistryError::PrimaryTaken(format!(
                "primary claim for term {term} refused: the primary of term {their_term} at \
                 {holder} holds a live lease; a new term may be claimed only once that lease \
                 expired or its holder stepped down"
            ))),
            None => Ok(()),
        };
        let Some(known) = self.terms.get(service) else {
            return honour_live_primary();
        };
        let next = known.term.checked_add(1);
        let by_holder = term == known.term && known.holder.as_deref() == Some(address);
        let renewal = by_holder || (term == known.term && known.holder.is_none());
        if Some(term) == next || renewal {
            honour_live_primary()?;
            // Claiming the current term again opens nothing: its holder after a restart of
            // either side. Its published position may trail its replica's (positions are
            // republished lazily), so rule 3 would refuse the very primary the replica
            // follows after an in-memory registry restart.
            if renewal {
                return Ok(());
            }
            // Rule 3: only the newest log may open a term.
            if position < known.newest {
                return Err(RegistryError::PrimaryTaken(format!(
                    "primary claim for term {term} refused: this shop's log ends at {position}, \
                     behind the newest log of {service} at {}; only a shop holding that log may \
                     claim, so follow it (or wait for it) to lose none of its writes",
                    known.newest
                )));
            }
            return Ok(());
        }
        let expected = match next {
            Some(next) => format!("term {next}"),
            None => "no term (the current one is the largest possible)".to_owned(),
        };
        let why = if term > known.term {
            "a claim may not skip terms"
        } else {
            "a claim must be newer than the current term"
        };
        let current = match &known.holder {
            Some(holder) => format!(
                "the current term of {service} is {} (held by {holder})",
                known.term
            ),
            None => format!("the current term of {service} is {}", known.term),
        };
        Err(RegistryError::PrimaryTaken(format!(
            "primary claim for term {term} refused: {current}; {why}, so the expected claim is {expected}"
        )))
    }

    /// Records the term `metadata` claims (accepted by now) or, from a shop while no claim
    /// was accepted, the term it follows (module docs, "Primary claims").
    fn learn_term(
        &mut self,
        owner: &Principal,
        service: &str,
        address: &str,
        metadata: &HashMap<String, String>,
    ) {
        let position = LogPosition::parse(metadata).ok().flatten();
        if let Ok(Some(term)) = primary_claim(metadata) {
            // A promotion: the claim opened a term above one already known.
            let opened = self
                .terms
                .get(service)
                .is_some_and(|known| term > known.term);
            let known = self
                .terms
                .entry(service.to_owned())
                .or_insert_with(|| KnownTerm::new(term));
            if term >= known.term {
                known.term = term;
                known.holder = Some(address.to_owned());
            }
            if let Some(position) = position {
                known.learn_position(position);
                if opened {
                    // The promoted holder's next entry is of `term` (rule 3).
                    known.learn_position(LogPosition {
                        term,
                        lsn: position.lsn,
                    });
                }
            }
            return;
        }
        if *owner != Principal::Shop {
            return;
        }
        // A replica that names no term follows nothing known yet: it must not pin term 0.
        let Ok(Some(PrimaryClaim { term, .. })) = PrimaryClaim::parse(metadata) else {
            return;
        };
        if !metadata.contains_key(METADATA_TERM) {
            return;
        }
        let known = self
            .terms
            .entry(service.to_owned())
            .or_insert_with(|| KnownTerm::new(term));
        if known.holder.is_none() && term > known.term {
            known.term = term;
        }
        if let Some(position) = position {
            known.learn_position(position);
        }
    }

    /// Removes `owner`'s lease at once. Someone else's lease is `LeaseNotFound`.
    pub fn deregister(
        &mut self,
        owner: &Principal,
        lease_id: &str,
    ) -> Result<Instance, RegistryError> {
        check_lease_id(lease_id)?;
        if self
            .leases
            .get(lease_id)
            .is_none_or(|lease| lease.owner != *owner)
        {
            return Err(RegistryError::LeaseNotFound(lease_id.to_owned()));
        }
        let lease = self
            .leases
            .remove(lease_id)
            .ok_or_else(|| RegistryError::LeaseNotFound(lease_id.to_owned()))?;
        self.revision += 1;
        Ok(lease.instance)
    }

    /// Records that a client reached the table at `now`. If the table had been isolated
    /// (module docs, "A silent registry expires nothing"), every lease first gets a fresh
    /// TTL; returns whether it did.
    pub fn heard(&mut self, now: Instant) -> bool {
        let isolated = self.is_isolated(now);
        if isolated {
            self.grace(now);
        }
        self.last_heard = Some(now);
        isolated
    }

    /// Whether the table has heard from nobody for half its shortest lease TTL while it
    /// holds leases at two or more addresses: their silence then says more about the
    /// registry's own links than about their holders, so nothing may expire.
    pub fn is_isolated(&self, now: Instant) -> bool {
        let Some(last_heard) = self.last_heard else {
            return false;
        };
        let Some(shortest) = self.leases.values().map(|lease| lease.ttl).min() else {
            return false;
        };
        let mut addresses = self.leases.values().map(|l| l.instance.address.as_str());
        let first = addresses.next();
        if addresses.all(|address| Some(address) == first) {
            return false;
        }
        now.saturating_duration_since(last_heard) >= shortest / 2
    }

    /// Gives every lease two fresh TTLs from `now` (never a shorter one): after the registry
    /// was stalled or cut off it could not have seen the renewals, so it may not expire
    /// anything for that silence.
    pub fn grace(&mut self, now: Instant) {
        let wall = unix_ms();
        for lease in self.leases.values_mut() {
            // Two TTLs: links heal one at a time and a holder may be between two retries
            // when its own comes back, so one TTL from the first call heard is too tight.
            let grace = lease.ttl * GRACE_TTLS;
            if lease.expires_at < now + grace {
                lease.expires_at = now + grace;
                lease.instance.expires_at_unix_ms = wall + millis(grace);
            }
        }
    }

    /// Puts back a lease read from a shared store (the etcd store rebuilds a table from
    /// etcd before each change, so the same rules decide): live for `ttl` from `now`,
    /// listed after every lease restored before it.
    pub(crate) fn restore(
        &mut self,
        lease_id: String,
        instance: Instance,
        owner: Principal,
        ttl: Duration,
        now: Instant,
    ) {
        self.next_order += 1;
        self.leases.insert(
            lease_id,
            Lease {
                instance,
                owner,
                expires_at: now + ttl,
                ttl,
                order: self.next_order,
            },
        );
    }

    /// Puts back the highest primary term known for `service`, whose claim it was, and
    /// the newest log position.
    pub(crate) fn restore_term(&mut self, service: &str, known: KnownTerm) {
        self.terms.insert(service.to_owned(), known);
    }

    /// The highest primary term known for `service`, whose claim it was, and the newest
    /// log position.
    pub(crate) fn known_term(&self, service: &str) -> Option<KnownTerm> {
        self.terms.get(service).cloned()
    }

    /// The ids of every lease in the table.
    pub(crate) fn lease_ids(&self) -> std::collections::HashSet<String> {
        self.leases.keys().cloned().collect()
    }

    /// Drops every lease that expired at or before `now`; returns the expired instances.
    pub fn expire(&mut self, now: Instant) -> Vec<Instance> {
        let expired: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, lease)| !lease.is_live(now))
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

    /// Live instances of `service`, oldest registration first (without lease ids).
    pub fn resolve(&self, service: &str) -> Vec<Instance> {
        let mut found: Vec<&Lease> = self
            .leases
            .values()
            .filter(|lease| lease.instance.service == service)
            .collect();
        found.sort_by_key(|lease| lease.order);
        found.into_iter().map(|l| l.instance.clone()).collect()
    }

    /// Every live instance, by service name, then registration order (without lease ids).
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

/// Whether `owner` may publish `metadata` in `service` (module docs, "Who may register
/// what"); `Forbidden` names the rule otherwise.
pub fn authorize(
    owner: &Principal,
    service: &str,
    metadata: &HashMap<String, String>,
) -> Result<(), RegistryError> {
    let forbidden = |why: String| Err(RegistryError::Forbidden(format!("{owner} {why}")));
    let required = Principal::for_service(service);
    if *owner == Principal::Registry {
        return forbidden("may not register any service".into());
    }
    if let Some(required) = required {
        if *owner != required {
            return forbidden(format!("may not register {service}: only {required} may"));
        }
    }
    let node_id = metadata.get(METADATA_NODE_ID);
    if service == PREDICTOR_SERVICE {
        let Principal::Node(own) = owner else {
            return forbidden(format!("may not register {service}: only a node may"));
        };
        if node_id != Some(own) {
            return forbidden(format!(
                "must register {service} with metadata {METADATA_NODE_ID}={own}"
            ));
        }
    }
    if let Some(node_id) = node_id {
        if owner.node_id() != Some(node_id.as_str()) {
            return forbidden(format!(
                "may not publish {METADATA_NODE_ID}={}: only that node may",
                quote(node_id)
            ));
        }
    }
    if metadata.get(METADATA_ROLE).map(String::as_str) == Some(ROLE_PRIMARY)
        && *owner != Principal::Shop
    {
        return forbidden("may not claim role=primary: only a shop may".into());
    }
    Ok(())
}

/// The term a metadata set claims the primary role for (`None` when it claims none), by
/// the one rule of [`PrimaryClaim::parse`]; a claim that does not parse is refused.
fn primary_claim(metadata: &HashMap<String, String>) -> Result<Option<u64>, RegistryError> {
    PrimaryClaim::parse(metadata)
        .map(|claim| claim.and_then(|c| c.primary_term()))
        .map_err(|err| RegistryError::InvalidArgument(err.to_string()))
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

/// Refuses a lease id longer than any the registry hands out.
pub(crate) fn check_lease_id(lease_id: &str) -> Result<(), RegistryError> {
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
    let mut total = 0;
    for (key, value) in metadata {
        total += key.len() + value.len();
        if key.is_empty() || key.len() > MAX_METADATA_BYTES || value.len() > MAX_METADATA_BYTES {
            return Err(RegistryError::InvalidArgument(format!(
                "metadata entry {} must have a 1..={MAX_METADATA_BYTES} byte key and a value of at most {MAX_METADATA_BYTES} bytes",
                quote(key)
            )));
        }
    }
    if total > MAX_METADATA_TOTAL_BYTES {
        return Err(RegistryError::InvalidArgument(format!(
            "metadata keys and values total {total} bytes; the limit is {MAX_METADATA_TOTAL_BYTES}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(2);
    /// The primary's address in the claim tests.
    const A: &str = "127.0.0.1:1";
    /// The replica's address in the claim tests.
    const B: &str = "127.0.0.1:2";

    fn shop() -> Principal {
        Principal::Shop
    }

    fn node(id: &str) -> Principal {
        Principal::Node(id.to_owned())
    }

    fn other() -> Principal {
        Principal::Gateway
    }

    fn register(table: &mut LeaseTable, service: &str, now: Instant) -> Instance {
        table
            .register(&other(), service, "127.0.0.1:1", HashMap::new(), TTL, now)
            .expect("valid registration")
    }

    fn role(role: &str, term: &str) -> HashMap<String, String> {
        HashMap::from([
            ("role".to_owned(), role.to_owned()),
            ("term".to_owned(), term.to_owned()),
        ])
    }

    /// One primary per term and service: a rival claim for the same or a lower term is
    /// refused and changes nothing, a higher one too while the primary lives; the next
    /// term wins once it stepped down; the holder's own address may
    /// register again (a restart); other services do not count; an old term stays refused
    /// after its holders expired.
    #[test]
    fn primary_claims_are_arbitrated_by_term() {
        let now = Instant::now();
        let mut table = LeaseTable::new();
        let a = table
            .register(
                &shop(),
                "shop",
                "127.0.0.1:1",
                role("primary", "2"),
                TTL,
                now,
            )
            .expect("first claim");
        for term in ["2", "1"] {
            let err = table
                .register(
                    &shop(),
                    "shop",
                    "127.0.0.1:2",
                    role("primary", term),
                    TTL,
                    now,
                )
                .expect_err("rival claim");
            assert!(matches!(err, RegistryError::PrimaryTaken(_)), "{err}");
            assert!(err.to_string().contains("term 2 at 127.0.0.1:1"), "{err}");
        }
        let b = table
            .register(
                &shop(),
                "shop",
                "127.0.0.1:2",
                role("replica", "2"),
                TTL,
                now,
            )
            .expect("a replica claims nothing");
        let revision = table.revision();
        table
            .keep_alive(&shop(), &b.lease_id, Some(role("primary", "2")), now)
            .expect_err("promotion to a held term");
        assert_eq!(table.revision(), revision);
        assert_eq!(table.resolve("shop")[1].metadata, role("replica", "2"));
        let err = table
            .keep_alive(&shop(), &b.lease_id, Some(role("primary", "3")), now)
            .expect_err("no higher term while the primary's lease lives");
        assert!(err.to_string().contains("holds a live lease"), "{err}");
        table
            .keep_alive(&shop(), &a.lease_id, Some(role("replica", "2")), now)
            .expect("the primary steps down");
        table
            .keep_alive(&shop(), &b.lease_id, Some(role("primary", "3")), now)
            .expect("a higher term wins");
        table
            .keep_alive(&shop(), &a.lease_id, Some(role("primary", "2")), now)
            .expect_err("the old primary cannot re-assert its term");
        table
            .register(
                &shop(),
                "shop",
                "127.0.0.1:2",
                role("primary", "3"),
                TTL,
                now,
            )
            .expect("the holder restarted at its address");
        table
            .register(
                &shop(),
                "other",
                "127.0.0.1:7",
                role("primary", "0"),
                TTL,
                now,
            )
            .expect("another service");
        table.expire(now + TTL);
        let err = table
            .register(
                &shop(),
                "shop",
                "127.0.0.1:9",
                role("primary", "1"),
                TTL,
                now + TTL,
            )
            .expect_err("every rival has expired, but term 1 is old");
        assert!(
            err.to_string().contains("expected claim is term 4"),
            "{err}"
        );
        table
            .register(
                &shop(),
                "shop",
                "127.0.0.1:9",
                role("primary", "4"),
                TTL,
                now + TTL,
            )
            .expect("every rival has expired");
        let err = table
            .register(
                &shop(),
                "shop",
                "127.0.0.1:8",
                role("primary", "x"),
                TTL,
                now + TTL * 3,
            )
            .expect_err("bad term");
        assert!(matches!(err, RegistryError::InvalidArgument(_)), "{err}");
    }

    /// Shop metadata with a claim and a log position.
    fn at(role_name: &str, term: u64, log_term: u64, log_lsn: u64) -> HashMap<String, String> {
        let mut metadata = role(role_name, &term.to_string());
        LogPosition {
            term: log_term,
            lsn: log_lsn,
        }
        .write(&mut metadata);
        metadata
    }

    /// Rule 3, step by step: only the newest log opens a term. The double stop (the
    /// primary stopped, its replica took writes in term 2 and stopped too, the stale old
    /// primary came back first) never lets the stale shop claim over term 2; the holder of
    /// term 2 claims it again; a replica caught up with a quiet term may succeed it; a
    /// position naming a term nobody claimed is not believed.
    #[test]
    fn claims_are_ordered_by_log_position() {
        enum Op {
            Register(&'static str, HashMap<String, String>),
            Renew(&'static str, HashMap<String, String>),
            Stop(&'static str),
        }
        use Op::*;
        // (what happens, the error it must give: None = accepted)
        let steps: Vec<(Op, Option<&str>)> = vec![
            (Register(A, at("primary", 1, 0, 0)), None),
            (Register(B, at("replica", 1, 1, 10)), None),
            // The primary stops; the caught-up replica claims term 2.
            (Stop(A), None),
            (Renew(B, at("primary", 2, 1, 10)), None),
            // It takes writes alone, then stops too; the stale primary comes back.
            (Stop(B), None),
            (Register(A, at("primary", 1, 1, 8)), Some("must be newer")),
            (Register(A, at("replica", 1, 1, 8)), None),
            (Renew(A, at("primary", 2, 1, 8)), Some("must be newer")),
            (
                Renew(A, at("primary", 3, 1, 8)),
                Some("behind the newest log"),
            ),
            // A claim without a position is at (0, 0): behind as well.
            (
                Renew(A, role("primary", "3")),
                Some("behind the newest log"),
            ),
            // The newest shop comes back: as the holder it claims term 2 again.
            (Register(B, at("primary", 2, 2, 30)), None),
            (Renew(A, at("replica", 2, 1, 8)), None),
            // The stale shop catches up (a quiet stretch of term 2: caught up, no entry
            // of its own of term 2 needed) and may succeed the holder.
            (Renew(A, at("replica", 2, 2, 30)), None),
            (Stop(B), None),
            (Renew(A, at("primary", 3, 2, 30)), None),
            // Term 3's holder stops; B returns with only term 2 at a longer LSN: term
            // first, so it is behind (3, 30).
            (Stop(A), None),
            (Register(B, at("replica", 3, 2, 99)), None),
            (
                Renew(B, at("primary", 4, 2, 99)),
                Some("behind the newest log"),
            ),
            // A position naming a term nobody claimed is capped at the known term.
            (Register("127.0.0.1:3", at("replica", 3, 50, 0)), None),
            (Register(A, at("primary", 3, 3, 30)), None),
        ];
        let now = Instant::now();
        let mut table = LeaseTable::new();
        let mut leases: HashMap<&str, String> = HashMap::new();
        for (n, (op, want)) in steps.into_iter().enumerate() {
            let got = match op {
                Register(address, metadata) => table
                    .register(&shop(), "shop", address, metadata, TTL, now)
                    .map(|i| {
                        leases.insert(address, i.lease_id);
                    }),
                Renew(address, metadata) => table
                    .keep_alive(&shop(), &leases[address], Some(metadata), now)
                    .map(|_| ()),
                Stop(address) => table.deregister(&shop(), &leases[address]).map(|_| ()),
            };
            match (got, want) {
                (Ok(()), None) => {}
                (Err(err), Some(want)) => {
                    assert!(
                        matches!(err, RegistryError::PrimaryTaken(_)),
                        "step {n}: {err}"
                    );
                    assert!(err.to_string().contains(want), "step {n}: {err}");
                }
                (got, want) => panic!("step {n}: got {got:?}, want {want:?}"),
            }
        }
        let known = table.known_term("shop").expect("a term is known");
        assert_eq!(known.term, 3);
        assert_eq!(known.newest, LogPosition { term: 3, lsn: 30 });

        // The first claim of a fresh table is only the position it names: a replica with
        // the same (empty) log succeeds it, without having heard from it.
        let mut table = LeaseTable::new();
        let a = table
            .register(&shop(), "shop", A, at("primary", 1, 0, 0), TTL, now)
            .expect("first claim");
        let b = table
            .register(&shop(), "shop", B, at("replica", 1, 0, 0), TTL, now)
            .expect("replica");
        table.deregister(&shop(), &a.lease_id).expect("stop");
        table
            .keep_alive(&shop(), &b.lease_id, Some(at("primary", 2, 0, 0)), now)
            .expect("an equal log succeeds the first primary");
        assert_eq!(
            table.known_term("shop").map(|k| k.newest),
            Some(LogPosition { term: 2, lsn: 0 }),
            "a promotion counts as its term's log"
        );

        // A restarted (empty) table hears the replica first, with a newer published
        // position than its primary's (published lazily): the primary claims its own
        // term again and is accepted; it opens nothing.
        let mut table = LeaseTable::new();
        table
            .register(&shop(), "shop", B, at("replica", 1, 1, 10), TTL, now)
            .expect("replica");
        table
            .register(&shop(), "shop", A, at("primary", 1, 1, 4), TTL, now)
            .expect("the primary of the current term re-registers after a registry restart");
        assert_eq!(table.known_term("shop").map(|k| k.term), Some(1));
    }

    /// An unparsable position in a shop's metadata is refused as invalid input.
    #[test]
    fn invalid_positions_are_refused() {
        let now = Instant::now();
        let mut table = LeaseTable::new();
        table
            .register(&shop(), "shop", A, at("primary", 1, 0, 0), TTL, now)
            .expect("first claim");
        for claim in ["primary", "replica"] {
            let mut metadata = role(claim, "1");
            metadata.insert("log_term".into(), "x".into());
            let err = table
                .register(&shop(), "shop", B, metadata, TTL, now)
                .expect_err("bad position");
            assert!(matches!(err, RegistryError::InvalidArgument(_)), "{err}");
            assert!(err.to_string().contains("log position"), "{err}");
        }
    }

    /// A lease lives exactly its TTL unless renewed, and renewal extends it.
    #[test]
    fn leases_expire_unless_renewed() {
        let t0 = Instant::now();
        let mut table = LeaseTable::new();
        let a = register(&mut table, "svc", t0);
        let b = register(&mut table, "svc", t0);
        table
            .keep_alive(
                &other(),
                &a.lease_id,
                None,
                t0 + Duration::from_millis(1500),
            )
            .expect("a renewed in time");
        assert!(table.expire(t0 + Duration::from_millis(1999)).is_empty());
        let gone = table.expire(t0 + TTL);
        assert_eq!(gone.len(), 1);
        assert_eq!(table.resolve("svc").len(), 1);
        assert_eq!(
            table.keep_alive(&other(), &b.lease_id, None, t0 + TTL),
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
        table
            .keep_alive(&other(), &a.lease_id, None, t0)
            .expect("renew");
        assert_eq!(table.revision(), 1);
        let md = HashMap::from([("model".to_owned(), "knn".to_owned())]);
        table
            .keep_alive(&other(), &a.lease_id, Some(md.clone()), t0)
            .expect("renew with metadata");
        assert_eq!(table.revision(), 2);
        table
            .keep_alive(&other(), &a.lease_id, Some(md), t0)
            .expect("same");
        assert_eq!(table.revision(), 2);
        table.deregister(&other(), &a.lease_id).expect("deregister");
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
                .register(&other(), service, address, HashMap::new(), *ttl, now)
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
                table
                    .register(&other(), "svc", ok, HashMap::new(), TTL, now)
                    .is_ok(),
                "{ok}"
            );
        }
    }

    /// Resolve keeps registration order and separates services.
    #[test]
    fn resolve_orders_by_registration() {
        let now = Instant::now();
        let mut table = LeaseTable::new();
        for (service, address) in [
            ("a", "127.0.0.1:3"),
            ("b", "127.0.0.1:2"),
            ("a", "127.0.0.1:1"),
        ] {
            table
                .register(&other(), service, address, HashMap::new(), TTL, now)
                .expect("valid");
        }
        let order: Vec<String> = table.resolve("a").into_iter().map(|i| i.address).collect();
        assert_eq!(order, vec!["127.0.0.1:3", "127.0.0.1:1"]);
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
            table
                .keep_alive(&other(), &huge, None, now)
                .expect_err("lease id"),
            table.deregister(&other(), &huge).expect_err("lease id"),
            table
                .register(&other(), "svc", &huge, HashMap::new(), TTL, now)
                .expect_err("address"),
            table
                .register(&other(), &huge, "127.0.0.1:1", HashMap::new(), TTL, now)
                .expect_err("service"),
            table
                .register(
                    &other(),
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
            table.keep_alive(&other(), "", None, now),
            Err(RegistryError::LeaseNotFound(_))
        ));
    }

    fn md(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Who may publish what where: roles own their services, a node only its own node_id,
    /// only a shop role=primary, the registry nothing.
    #[test]
    fn authorization_table() {
        /// (caller, service, metadata, refusal naming this or `None` for allowed)
        type Case<'a> = (
            Principal,
            &'a str,
            &'a [(&'a str, &'a str)],
            Option<&'a str>,
        );
        let cases: &[Case] = &[
            (node("n1"), "predictor", &[("node_id", "n1")], None),
            (
                node("n1"),
                "predictor",
                &[("node_id", "n2")],
                Some("node_id=n1"),
            ),
            (node("n1"), "predictor", &[], Some("node_id=n1")),
            (
                shop(),
                "predictor",
                &[("node_id", "n1")],
                Some("only a node"),
            ),
            (shop(), "shop", &[("role", "primary"), ("term", "1")], None),
            (shop(), "shop", &[("role", "replica")], None),
            (node("n1"), "shop", &[], Some("only shop may")),
            (Principal::Gateway, "shop", &[], Some("only shop may")),
            (Principal::Aggregator, "aggregator", &[], None),
            (shop(), "aggregator", &[], Some("only aggregator may")),
            (Principal::Gateway, "gateway", &[], None),
            (node("n1"), "gateway", &[], Some("only gateway may")),
            (node("n1"), "misc", &[], None),
            (node("n1"), "misc", &[("node_id", "n1")], None),
            (
                Principal::Gateway,
                "misc",
                &[("node_id", "n1")],
                Some("only that node"),
            ),
            (
                node("n1"),
                "misc",
                &[("role", "primary")],
                Some("only a shop"),
            ),
            (
                Principal::Gateway,
                "misc",
                &[("role", "primary")],
                Some("only a shop"),
            ),
            (shop(), "misc", &[("role", "primary")], None),
            (Principal::Registry, "misc", &[], Some("may not register")),
        ];
        for (owner, service, metadata, want) in cases {
            let got = authorize(owner, service, &md(metadata));
            match want {
                None => assert_eq!(got, Ok(()), "{owner} {service} {metadata:?}"),
                Some(want) => {
                    let err = got.expect_err("forbidden");
                    assert!(matches!(err, RegistryError::Forbidden(_)), "{err}");
                    assert!(err.to_string().contains(want), "{owner} {service}: {err}");
                }
            }
        }
    }

    /// The term rule, with nothing live to rival: the next term, the holder's own current
    /// term, an unheld current term, or anything when nothing is known; never a jump or an
    /// old term.
    #[test]
    fn term_rule_table() {
        /// (known term and holder, claimed term, claimant, refusal naming this or `None`)
        type Case<'a> = (
            Option<(u64, Option<&'a str>)>,
            u64,
            &'a str,
            Option<&'a str>,
        );
        let cases: &[Case] = &[
            (None, 0, A, None),
            (None, u64::MAX, A, None),
            (Some((3, Some(A))), 4, B, None),
            (Some((3, Some(A))), 3, A, None),
            (Some((3, Some(A))), 3, B, Some("held by 127.0.0.1:1")),
            (Some((3, None)), 3, B, None),
            (Some((3, Some(A))), 2, A, Some("must be newer")),
            (Some((3, Some(A))), 5, A, Some("expected claim is term 4")),
            (Some((3, Some(A))), 103, B, Some("expected claim is term 4")),
            (
                Some((3, None)),
                u64::MAX,
                B,
                Some("expected claim is term 4"),
            ),
            (Some((u64::MAX, Some(A))), u64::MAX, A, None),
            (
                Some((u64::MAX, Some(A))),
                u64::MAX,
                B,
                Some("largest possible"),
            ),
        ];
        let now = Instant::now();
        for (known, term, address, want) in cases {
            let mut table = LeaseTable::new();
            if let Some((term, holder)) = known {
                table.terms.insert(
                    "shop".into(),
                    KnownTerm {
                        holder: holder.map(str::to_owned),
                        ..KnownTerm::new(*term)
                    },
                );
            }
            let got = table.register(
                &shop(),
                "shop",
                address,
                role("primary", &term.to_string()),
                TTL,
                now,
            );
            match want {
                None => {
                    got.unwrap_or_else(|err| panic!("{known:?} {term} {address}: {err}"));
                    let known = &table.terms["shop"];
                    assert_eq!(
                        (known.term, known.holder.as_deref()),
                        (*term, Some(*address))
                    );
                }
                Some(want) => {
                    let err = got.expect_err("refused");
                    assert!(matches!(err, RegistryError::PrimaryTaken(_)), "{err}");
                    assert!(err.to_string().contains(want), "{known:?} {term}: {err}");
                    assert!(table.list().is_empty());
                }
            }
        }
    }

    /// After a restart the table learns the current term from shops that follow it (and
    /// from nobody else), and holds it even when every lease has expired.
    #[test]
    fn terms_are_learned_from_shops_and_never_lowered() {
        let now = Instant::now();
        let mut table = LeaseTable::new();
        table
            .register(
                &other(),
                "shop-x",
                "127.0.0.1:5",
                role("replica", "90"),
                TTL,
                now,
            )
            .expect("a gateway may publish a term in an open service");
        assert!(
            !table.terms.contains_key("shop-x"),
            "only shops teach terms"
        );
        table
            .register(
                &shop(),
                "shop",
                "127.0.0.1:2",
                role("replica", "5"),
                TTL,
                now,
            )
            .expect("replica");
        let err = table
            .register(
                &shop(),
                "shop",
                "127.0.0.1:1",
                role("primary", "4"),
                TTL,
                now,
            )
            .expect_err("an old primary after a registry restart");
        assert!(
            err.to_string().contains("expected claim is term 6"),
            "{err}"
        );
        table
            .register(
                &shop(),
                "shop",
                "127.0.0.1:1",
                role("primary", "5"),
                TTL,
                now,
            )
            .expect("the primary of term 5 re-registers");
        table
            .register(
                &shop(),
                "shop",
                "127.0.0.1:3",
                role("replica", "9"),
                TTL,
                now,
            )
            .expect("a replica's term is only a label once a claim was accepted");
        assert_eq!(table.terms["shop"].term, 5);
        table.expire(now + TTL);
        assert!(table.list().is_empty());
        let err = table
            .register(
                &shop(),
                "shop",
                "127.0.0.1:2",
                role("primary", "5"),
                TTL,
                now + TTL,
            )
            .expect_err("term 5 belongs to 127.0.0.1:1");
        assert!(err.to_string().contains("held by 127.0.0.1:1"), "{err}");
        table
            .register(
                &shop(),
                "shop",
                "127.0.0.1:2",
                role("primary", "6"),
                TTL,
                now + TTL,
            )
            .expect("T+1");
    }

    /// A node id is live at one address: elsewhere it is refused naming the holder; at
    /// the same address it replaces the old lease; once that expired, anywhere.
    #[test]
    fn a_node_id_serves_from_one_address() {
        let now = Instant::now();
        let mut table = LeaseTable::new();
        let n1 = md(&[("node_id", "n1")]);
        table
            .register(
                &node("n1"),
                "predictor",
                "127.0.0.1:1",
                n1.clone(),
                TTL,
                now,
            )
            .expect("n1");
        let revision = table.revision();
        let err = table
            .register(
                &node("n1"),
                "predictor",
                "127.0.0.1:2",
                n1.clone(),
                TTL,
                now,
            )
            .expect_err("n1 elsewhere");
        assert!(matches!(err, RegistryError::NodeTaken(_)), "{err}");
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
        assert_eq!(table.revision(), revision);
        table
            .register(
                &node("n1"),
                "predictor",
                "127.0.0.1:1",
                n1.clone(),
                TTL,
                now,
            )
            .expect("n1 restarted in place");
        assert_eq!(table.resolve("predictor").len(), 1);
        table
            .register(&node("n1"), "predictor", "127.0.0.1:2", n1, TTL, now + TTL)
            .expect("the old lease expired");
    }

    /// A lease answers only to its owner: anyone else's KeepAlive (with or without new
    /// metadata) and Deregister are "not found" and change nothing.
    #[test]
    fn leases_answer_only_their_owner() {
        let now = Instant::now();
        let mut table = LeaseTable::new();
        let primary = table
            .register(
                &shop(),
                "shop",
                "127.0.0.1:1",
                role("primary", "1"),
                TTL,
                now,
            )
            .expect("primary");
        let before = table.list();
        let revision = table.revision();
        for thief in [node("n1"), other(), Principal::Aggregator] {
            for metadata in [None, Some(role("replica", "1"))] {
                assert_eq!(
                    table.keep_alive(&thief, &primary.lease_id, metadata, now),
                    Err(RegistryError::LeaseNotFound(primary.lease_id.clone()))
                );
            }
            assert_eq!(
                table.deregister(&thief, &primary.lease_id),
                Err(RegistryError::LeaseNotFound(primary.lease_id.clone()))
            );
        }
        assert_eq!(table.list(), before);
        assert_eq!(table.revision(), revision);
        assert!(!primary.lease_id.is_empty(), "the holder's copy has the id");
        assert!(
            before.iter().all(|i| i.lease_id.is_empty()),
            "published copies do not"
        );
        table
            .deregister(&shop(), &primary.lease_id)
            .expect("the owner");
    }

    /// Each cap refuses the first registration beyond it with RESOURCE_EXHAUSTED and a
    /// message naming it; expired leases free their place.
    #[test]
    fn caps_table() {
        let now = Instant::now();
        let addr = |i: usize| format!("127.0.0.1:{}", 1000 + i);
        // Per principal and service.
        let mut table = LeaseTable::new();
        for i in 0..MAX_LEASES_PER_PRINCIPAL_PER_SERVICE {
            table
                .register(&other(), "s", &addr(i), HashMap::new(), TTL, now)
                .expect("under the cap");
        }
        let err = table
            .register(&other(), "s", &addr(99), HashMap::new(), TTL, now)
            .expect_err("9th");
        assert!(
            err.to_string().contains("limit per principal and service"),
            "{err}"
        );
        assert!(matches!(err, RegistryError::Exhausted(_)));
        table.expire(now + TTL);
        table
            .register(&other(), "s", &addr(99), HashMap::new(), TTL, now + TTL)
            .expect("after expiry");
        // Per principal.
        let mut table = LeaseTable::new();
        for i in 0..MAX_LEASES_PER_PRINCIPAL {
            let service = format!("s{}", i / MAX_LEASES_PER_PRINCIPAL_PER_SERVICE);
            table
                .register(&other(), &service, &addr(i), HashMap::new(), TTL, now)
                .expect("under the cap");
        }
        let err = table
            .register(&other(), "fresh", &addr(99), HashMap::new(), TTL, now)
            .expect_err("65th");
        assert!(err.to_string().contains("the limit per principal"), "{err}");
        // Per service and in all.
        let mut table = LeaseTable::new();
        let full = fill(&mut table, now, &HashMap::new());
        assert_eq!(table.list().len(), MAX_INSTANCES);
        for (service, want) in [(full[0].as_str(), "its limit"), ("fresh", "its limit")] {
            let err = table
                .register(&node("fresh"), service, &addr(1), HashMap::new(), TTL, now)
                .expect_err("full");
            assert!(err.to_string().contains(want), "{err}");
        }
        let mut table = LeaseTable::new();
        for i in 0..MAX_INSTANCES_PER_SERVICE {
            let owner = node(&format!("n{}", i / MAX_LEASES_PER_PRINCIPAL_PER_SERVICE));
            table
                .register(&owner, "busy", &addr(i), HashMap::new(), TTL, now)
                .expect("under the cap");
        }
        let err = table
            .register(&node("fresh"), "busy", &addr(999), HashMap::new(), TTL, now)
            .expect_err("257th");
        assert!(err.to_string().contains("the limit per service"), "{err}");
    }

    /// Fills `table` to [`MAX_INSTANCES`]: every service at [`MAX_INSTANCES_PER_SERVICE`],
    /// every principal at its per-service cap, each instance with the longest service name
    /// and address and `metadata`. Returns the service names.
    fn fill(
        table: &mut LeaseTable,
        now: Instant,
        metadata: &HashMap<String, String>,
    ) -> Vec<String> {
        let services: Vec<String> = (0..MAX_INSTANCES / MAX_INSTANCES_PER_SERVICE)
            .map(|s| format!("{s}{}", "s".repeat(MAX_SERVICE_NAME_BYTES - 1)))
            .collect();
        for (s, service) in services.iter().enumerate() {
            for i in 0..MAX_INSTANCES_PER_SERVICE {
                let owner = node(&format!(
                    "n{s}-{}",
                    i / MAX_LEASES_PER_PRINCIPAL_PER_SERVICE
                ));
                let port = format!(":{}", 10_000 + i);
                let host = "h".repeat(MAX_ADDRESS_BYTES - port.len());
                table
                    .register(
                        &owner,
                        service,
                        &format!("{host}{port}"),
                        metadata.clone(),
                        MAX_TTL,
                        now,
                    )
                    .expect("under every cap");
            }
        }
        services
    }

    /// With every cap full of maximal instances (most entries, most bytes, and the
    /// fewest, longest entries), List and a service's Watch encode under the gRPC message
    /// limit, with room to spare (module docs, "Bounds").
    #[test]
    fn caps_keep_every_answer_under_the_message_limit() {
        use concord::pb::registry::v1::{ListResponse, WatchResponse};
        use prost::Message;

        let per_entry = MAX_METADATA_TOTAL_BYTES / MAX_METADATA_ENTRIES / 2;
        let many: HashMap<String, String> = (0..MAX_METADATA_ENTRIES)
            .map(|k| (format!("{k:0per_entry$}"), "v".repeat(per_entry)))
            .collect();
        let long: HashMap<String, String> = (0..MAX_METADATA_TOTAL_BYTES / MAX_METADATA_BYTES / 2)
            .map(|k| {
                (
                    format!("{k:0w$}", w = MAX_METADATA_BYTES),
                    "v".repeat(MAX_METADATA_BYTES),
                )
            })
            .collect();
        for metadata in [many, long] {
            assert_eq!(validate_metadata(&metadata), Ok(()));
            let total: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
            assert_eq!(total, MAX_METADATA_TOTAL_BYTES);
            let now = Instant::now();
            let mut table = LeaseTable::new();
            let services = fill(&mut table, now, &metadata);
            let list = ListResponse {
                instances: table.list(),
                revision: u64::MAX,
            };
            let watch = WatchResponse {
                instances: table.resolve(&services[0]),
                revision: u64::MAX,
            };
            assert_eq!(list.instances.len(), MAX_INSTANCES);
            assert_eq!(watch.instances.len(), MAX_INSTANCES_PER_SERVICE);
            // The documented bound per instance, and both answers under the limit.
            let per_instance = 2_686;
            assert!(
                list.encoded_len() <= MAX_INSTANCES * per_instance + 11,
                "{}",
                list.encoded_len()
            );
            assert!(watch.encoded_len() <= MAX_INSTANCES_PER_SERVICE * per_instance + 11);
            assert!(list.encoded_len() < concord::grpc::MAX_MESSAGE_BYTES);
            assert!(watch.encoded_len() < concord::grpc::MAX_MESSAGE_BYTES);
        }
    }

    /// The registry-cut split brain of issue 15, stepped without sockets: primary and
    /// replica go silent for more than a TTL because the registry was cut off; the table
    /// holds both leases, the first call after the heal gives every lease a fresh TTL, and
    /// the replica cannot claim term + 1 while the primary renews; once the primary
    /// really stops, its lease expires and the claim is accepted.
    #[test]
    fn a_cut_off_registry_honours_the_primarys_claim() {
        let t0 = Instant::now();
        let mut table = LeaseTable::new();
        let primary = table
            .register(&shop(), "shop", A, role("primary", "1"), TTL, t0)
            .expect("primary");
        let replica = table
            .register(&shop(), "shop", B, role("replica", "1"), TTL, t0)
            .expect("replica");
        // Cut off for 1.5 TTL: nobody reaches the table.
        let healed = t0 + TTL * 3 / 2;
        assert!(table.is_isolated(t0 + TTL / 2));
        assert!(table.is_isolated(healed));
        assert_eq!(table.resolve("shop").len(), 2, "nothing expired yet");
        // The replica's call after the heal: a fresh TTL for both, and its claim refused.
        let err = table
            .keep_alive(
                &shop(),
                &replica.lease_id,
                Some(role("primary", "2")),
                healed,
            )
            .expect_err("the primary lives");
        assert!(err.to_string().contains("holds a live lease"), "{err}");
        assert!(matches!(err, RegistryError::PrimaryTaken(_)));
        assert!(table.expire(healed + TTL / 2).is_empty(), "fresh TTLs");
        table
            .keep_alive(&shop(), &primary.lease_id, None, healed + TTL / 2)
            .expect("the primary renews after the heal");
        // Now the primary dies; the replica keeps renewing, so the table is not isolated.
        let mut now = healed + TTL / 2;
        for _ in 0..4 {
            now += TTL / 3;
            table
                .keep_alive(&shop(), &replica.lease_id, None, now)
                .expect("replica renews");
            assert!(!table.is_isolated(now));
            table.expire(now);
        }
        assert_eq!(table.resolve("shop").len(), 1, "the primary expired");
        table
            .keep_alive(&shop(), &replica.lease_id, Some(role("primary", "2")), now)
            .expect("term 2 once term 1's holder is gone");
    }

    /// One holder alone never counts as isolation (its death must expire it), a lease
    /// table that heard nothing yet neither; grace never shortens a lease.
    #[test]
    fn isolation_needs_two_addresses_and_grace_only_extends() {
        let t0 = Instant::now();
        let mut table = LeaseTable::new();
        assert!(!table.is_isolated(t0 + TTL * 10));
        table
            .register(&shop(), "shop", A, role("primary", "1"), TTL, t0)
            .expect("primary");
        assert!(!table.is_isolated(t0 + TTL * 10));
        table
            .register(&other(), "s", B, HashMap::new(), TTL * 10, t0)
            .expect("a long lease");
        assert!(!table.is_isolated(t0 + TTL / 4));
        assert!(table.is_isolated(t0 + TTL / 2));
        table.grace(t0 + TTL);
        assert!(table
            .expire(t0 + TTL * 3 - Duration::from_millis(1))
            .is_empty());
        assert_eq!(table.expire(t0 + TTL * 3).len(), 1, "only the short lease");
        assert_eq!(
            table.resolve("s").len(),
            1,
            "the long lease kept its expiry"
        );
    }

    /// Metadata over the total byte limit is refused even when every entry is in bounds.
    #[test]
    fn metadata_total_is_bounded() {
        let metadata: HashMap<String, String> =
            (0..9).map(|k| (format!("k{k}"), "v".repeat(250))).collect();
        let err = validate_metadata(&metadata).expect_err("2268 bytes");
        assert!(err.to_string().contains("limit is 2048"), "{err}");
    }
}

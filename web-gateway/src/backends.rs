//! Where the gateway sends each call: backends found through the registry, one cached
//! `Channel` per address, and the retry rule.
//!
//! - **Discovery.** A [`ServiceWatch`] follows each of "shop", "aggregator" and "predictor"
//!   (a `Watch` stream, not a lookup per request). While the registry is down the last known
//!   set is kept, so the gateway keeps serving.
//! - **Channels.** One lazily connected `Channel` per address, created on first use and
//!   reused by every later call; tonic reconnects it by itself when the process comes back.
//!   Entries for addresses that left the registry are kept: a lazy channel to a dead address
//!   costs nothing until it is used, and a restart on the same port reuses it.
//! - **Shop routing.** Shop instances publish `role=primary|replica` and `term=N`. The
//!   candidates are ordered primaries first, highest term first, then the rest, so writes go
//!   to the current primary and reads see the primary's (freshest) data when it is up.
//! - **Retry** ([`retry_target`]): at most [`MAX_ATTEMPTS`] attempts. A call that failed
//!   with `UNAVAILABLE` (or `CANCELLED`, which tonic reports when the connection dies under
//!   a request in flight) is tried once more on the next candidate when it is safe to repeat
//!   ([`Access::Read`], and [`Access::IdempotentWrite`] such as order placement with its
//!   idempotency key, or an outcome report that the ledger scores once). A plain write is
//!   never repeated after `UNAVAILABLE`: it may have been applied.
//! - **Writes refused by a replica.** A shop replica refuses a write with
//!   `FAILED_PRECONDITION` + `x-concord-primary: <primary>` (followed only when that
//!   address is a shop the registry lists), and a fenced shop (one that
//!   stepped down and knows no primary yet) with `UNAVAILABLE` + `x-concord-primary: ""`,
//!   both *before doing anything*, so re-sending ANY write (idempotent or not) is safe. The gateway sends it once more: to the
//!   hinted primary when it has not been tried, else to a primary it re-resolves from the
//!   registry (a fresh `Resolve`, not the watch, which may lag). If that answer is again a
//!   replica's refusal — or there is no untried primary — no primary accepts writes right
//!   now: during a failover the replicas point at each other or at the dead primary until
//!   one promotes itself (≈ one lease TTL). The caller gets [`Error::NoPrimary`]: `503` with
//!   `Retry-After`, never the replica's `409`.
//!
//! Non-goals: load balancing across replicas, hedged requests, circuit breaking.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use concord::{
    claim::PrimaryClaim,
    discovery::{ServiceWatch, WatchSnapshot},
    pb::registry::v1::{registry_client::RegistryClient, Instance, ResolveRequest},
};
use tokio::sync::watch;
use tonic::{metadata::MetadataValue, transport::Channel, Code, Status};

use crate::error::Error;

/// Registry name of the shop service (metadata `role`, `term`).
pub const SHOP: &str = concord::identity::SHOP_SERVICE;
/// Registry name of the aggregator (serves Predictor + Staking).
pub const AGGREGATOR: &str = concord::identity::AGGREGATOR_SERVICE;
/// Registry name of the prediction nodes.
pub const PREDICTOR: &str = concord::identity::PREDICTOR_SERVICE;
/// Name under which the configured registry itself is reported.
pub const REGISTRY: &str = "registry";
/// Metadata keys of a shop instance's role and term and the primary's role value (parsed
/// by [`PrimaryClaim`]).
pub use concord::claim::{METADATA_ROLE as ROLE_KEY, METADATA_TERM as TERM_KEY, ROLE_PRIMARY};
/// Status metadata a replica attaches to a refused write, naming the primary.
pub const PRIMARY_HINT: &str = "x-concord-primary";
/// Metadata key of the request id forwarded to backends.
pub const REQUEST_ID: &str = concord::grpc::REQUEST_ID_HEADER;
/// Most attempts one gateway call makes (the first try plus one retry).
pub const MAX_ATTEMPTS: usize = 2;
/// Time limit of the registry lookup that re-resolves the primary after a refused write.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(1);

/// How safe a call is to repeat; decides [`retry_target`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Changes nothing: any instance may answer, and retrying is always safe.
    Read,
    /// Changes state and may not be repeated once it might have been applied.
    Write,
    /// Changes state but is deduplicated by the backend (idempotency key, once-per-id).
    IdempotentWrite,
}

/// Per-call settings taken from the HTTP request: its id, the caller's bearer token and
/// the deadline.
#[derive(Clone, Debug)]
pub struct CallContext {
    /// The HTTP request id, forwarded as `x-request-id` so backend logs can be joined.
    pub request_id: Option<String>,
    /// Bearer token from the HTTP `Authorization` header, passed through unchanged.
    pub bearer: Option<String>,
    /// Deadline of each backend attempt.
    pub timeout: Duration,
}

impl CallContext {
    /// Wraps `message` in a tonic request carrying the deadline, request id, token and the
    /// current span's trace context.
    pub fn request<M>(&self, message: M) -> tonic::Request<M> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        if let Some(id) = &self.request_id {
            if let Ok(value) = MetadataValue::try_from(id.as_str()) {
                request.metadata_mut().insert(REQUEST_ID, value);
            }
        }
        if let Some(token) = &self.bearer {
            concord::auth::attach_bearer(&mut request, token);
        }
        // The HTTP request's span: the backend's span becomes its child.
        concord::telemetry::inject(request.metadata_mut());
        request
    }
}

/// The gateway's view of its backends; shared by every handler.
pub struct Backends {
    registry_addr: String,
    registry: Channel,
    shop: ServiceWatch,
    aggregator: ServiceWatch,
    predictor: ServiceWatch,
    /// One channel per (service, address): the service decides whom the server must prove
    /// to be over TLS.
    channels: Mutex<HashMap<(String, String), Channel>>,
}

impl Backends {
    /// Starts watching the backend services at the registry at `registry_addr`.
    pub fn start(registry_addr: &str) -> Result<Arc<Self>, Error> {
        let bad = |err: tonic::transport::Error| {
            Error::InvalidConfig(format!("registry address {registry_addr:?}: {err}"))
        };
        Ok(Arc::new(Self {
            registry_addr: registry_addr.to_owned(),
            // Of a registry list, the first (Resolve/List for the cluster view); the watches
            // below move between all of them.
            registry: concord::grpc::lazy_channel_to(
                concord::discovery::registry_addrs(registry_addr)
                    .first()
                    .copied()
                    .unwrap_or(registry_addr),
                &concord::identity::Principal::Registry,
            )
            .map_err(bad)?,
            shop: ServiceWatch::spawn(registry_addr, SHOP).map_err(bad)?,
            aggregator: ServiceWatch::spawn(registry_addr, AGGREGATOR).map_err(bad)?,
            predictor: ServiceWatch::spawn(registry_addr, PREDICTOR).map_err(bad)?,
            channels: Mutex::new(HashMap::new()),
        }))
    }

    /// The configured registry address.
    pub fn registry_addr(&self) -> &str {
        &self.registry_addr
    }

    /// A client of the registry (one shared channel).
    pub fn registry(&self) -> RegistryClient<Channel> {
        RegistryClient::new(self.registry.clone())
    }

    /// Receivers of the watched services' instance sets, by service name.
    pub fn watches(&self) -> [(&'static str, watch::Receiver<WatchSnapshot>); 3] {
        [
            (SHOP, self.shop.subscribe()),
            (AGGREGATOR, self.aggregator.subscribe()),
            (PREDICTOR, self.predictor.subscribe()),
        ]
    }

    /// The last known instances of every watched service (the fallback when List fails).
    pub fn known_instances(&self) -> Vec<Instance> {
        let mut all = self.shop.current();
        all.extend(self.aggregator.current());
        all.extend(self.predictor.current());
        all
    }

    /// Shop addresses in the order calls should try them (primary first).
    pub fn shop_candidates(&self) -> Vec<String> {
        order_shop_instances(&self.shop.current())
    }

    /// Aggregator addresses, oldest registration first.
    pub fn aggregator_candidates(&self) -> Vec<String> {
        self.aggregator
            .current()
            .into_iter()
            .map(|i| i.address)
            .collect()
    }

    /// The cached channel to `service` at `addr`, created (lazily connected) on first use.
    ///
    /// Over TLS the server must prove it is `service`'s principal (a shop, the aggregator)
    /// before any request, so a bearer token never reaches an impostor registered at a
    /// shop's name.
    pub fn channel(&self, service: &str, addr: &str) -> Result<Channel, Error> {
        // Short critical section without .await: a std Mutex is right here.
        let mut channels = self.channels.lock().expect("channel cache lock poisoned");
        let key = (service.to_owned(), addr.to_owned());
        if let Some(channel) = channels.get(&key) {
            return Ok(channel.clone());
        }
        let server = concord::identity::Principal::for_service(service);
        let channel = match &server {
            Some(server) => concord::grpc::lazy_channel_to(addr, server),
            None => concord::grpc::lazy_channel(addr),
        }
        .map_err(|err| {
            Error::Backend(Status::unavailable(format!(
                "registered address {addr:?} is not dialable: {err}"
            )))
        })?;
        channels.insert(key, channel.clone());
        Ok(channel)
    }

    /// Calls `rpc` on the first candidate of `service`, retrying per [`retry_target`]; a
    /// write a replica refused goes to the hinted or re-resolved primary (module doc).
    pub async fn call<T, F, Fut>(
        &self,
        service: &str,
        candidates: Vec<String>,
        access: Access,
        mut rpc: F,
    ) -> Result<T, Error>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let Some(first) = candidates.first().cloned() else {
            return Err(Error::NoBackend(service.to_owned()));
        };
        let mut tried: Vec<String> = Vec::with_capacity(MAX_ATTEMPTS);
        let mut addr = first;
        loop {
            let channel = self.channel(service, &addr)?;
            let status = match rpc(channel).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => status,
            };
            tried.push(addr.clone());
            let mut next = None;
            if tried.len() < MAX_ATTEMPTS {
                next = retry_target(&status, access, &candidates, &tried);
                if next.is_none() && refused_by_replica(&status) {
                    next = self.resolve_primary(service, &tried).await;
                }
            }
            match next {
                Some(next) => {
                    tracing::info!(service, failed = %addr, retry = %next, code = ?status.code(), message = status.message(), "retrying on another instance");
                    addr = next;
                }
                None => return Err(final_error(service, status, &tried)),
            }
        }
    }

    /// A registered primary of `service` not in `tried`, from a fresh registry lookup
    /// (the watch may not have seen the latest registration yet); `None` when the lookup
    /// fails or names no such primary.
    async fn resolve_primary(&self, service: &str, tried: &[String]) -> Option<String> {
        let request = ResolveRequest {
            service: service.to_owned(),
        };
        let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, self.registry().resolve(request)).await;
        let instances = match lookup {
            Ok(Ok(reply)) => reply.into_inner().instances,
            Ok(Err(status)) => {
                tracing::warn!(service, %status, "re-resolving the primary failed; using the last known instances");
                self.shop.current()
            }
            Err(_) => {
                tracing::warn!(
                    service,
                    "re-resolving the primary timed out; using the last known instances"
                );
                self.shop.current()
            }
        };
        let primaries: Vec<Instance> = instances.into_iter().filter(is_primary).collect();
        let found = order_shop_instances(&primaries)
            .into_iter()
            .find(|addr| !tried.contains(addr));
        tracing::debug!(service, ?found, ?tried, "re-resolved the primary");
        found
    }
}

/// Where to send a failed call next, or `None` when it must not be retried (or, for a
/// write a replica refused, when its hint is of no use: see [`Backends::call`]).
pub fn retry_target(
    status: &Status,
    access: Access,
    candidates: &[String],
    tried: &[String],
) -> Option<String> {
    match status.code() {
        Code::Unavailable | Code::Cancelled if access != Access::Write => candidates
            .iter()
            .find(|addr| !tried.contains(addr))
            .cloned(),
        // A hint is followed only to a shop the registry lists (it authenticated that
        // registration): the request may carry the caller's admin token, and a hint is
        // a claim inside a message. Any other hint falls back to a fresh registry lookup.
        Code::FailedPrecondition if access != Access::Read => primary_hint(status)
            .filter(|primary| {
                !primary.is_empty()
                    && !tried.iter().any(|t| t == primary)
                    && candidates.iter().any(|c| c == primary)
            })
            .map(str::to_owned),
        _ => None,
    }
}

/// The primary a replica named when it refused a write (`""`: it is fenced and knows none);
/// `None` when the status is not such a refusal.
pub fn primary_hint(status: &Status) -> Option<&str> {
    if !matches!(status.code(), Code::FailedPrecondition | Code::Unavailable) {
        return None;
    }
    status
        .metadata()
        .get(PRIMARY_HINT)
        .map(|v| v.to_str().unwrap_or_default())
}

/// Whether a replica refused the call because it is not the primary. It did nothing, so
/// the call may be sent elsewhere whatever its [`Access`].
pub fn refused_by_replica(status: &Status) -> bool {
    primary_hint(status).is_some()
}

/// The error to report after the last attempt failed with `last`.
///
/// A replica's refusal of the last attempt means no instance we could find accepts writes
/// (during a failover the replicas name each other or the dead primary): the caller hears
/// "unavailable, retry shortly" (503 + `Retry-After`), not that its write conflicts (409).
/// A failure of the connection itself names the instance, since tonic's message alone
/// ("tcp connect error") does not say what could not be reached.
fn final_error(service: &str, last: Status, tried: &[String]) -> Error {
    if refused_by_replica(&last) {
        tracing::warn!(
            service,
            ?tried,
            message = last.message(),
            "no primary accepts writes; answering 503"
        );
        return Error::NoPrimary {
            service: service.to_owned(),
            detail: last.message().to_owned(),
        };
    }
    if let (true, Some(addr)) = (is_transport_failure(&last), tried.last()) {
        let message = format!(
            "{service} at {addr} could not be reached ({}); retry in a moment",
            last.message()
        );
        return Error::Backend(Status::new(last.code(), message));
    }
    Error::Backend(last)
}

/// Whether `status` was made on our side of the connection (connect refused, connection
/// reset, timeout) rather than sent by the backend: tonic attaches the transport error as
/// its source, and a status decoded from a response has none.
fn is_transport_failure(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// Orders shop instances: `role=primary` by descending term, then the others as registered.
pub fn order_shop_instances(instances: &[Instance]) -> Vec<String> {
    let mut ranked: Vec<(bool, u64, usize, &Instance)> = instances
        .iter()
        .enumerate()
        .map(|(pos, i)| (is_primary(i), term_of(i), pos, i))
        .collect();
    ranked.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then(if a.0 && b.0 {
                b.1.cmp(&a.1)
            } else {
                std::cmp::Ordering::Equal
            })
            .then(a.2.cmp(&b.2))
    });
    ranked.into_iter().map(|r| r.3.address.clone()).collect()
}

/// Whether a shop instance validly claims the primary role ([`PrimaryClaim`]).
pub fn is_primary(instance: &Instance) -> bool {
    PrimaryClaim::primary_term_of(&instance.metadata).is_some()
}

/// A shop instance's published term, primary or replica (0 when it publishes no valid
/// claim; the registry refuses invalid ones).
pub fn term_of(instance: &Instance) -> u64 {
    match PrimaryClaim::parse(&instance.metadata) {
        Ok(Some(claim)) => claim.term,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shop(address: &str, role: &str, term: &str) -> Instance {
        let mut metadata = HashMap::new();
        if !role.is_empty() {
            metadata.insert(ROLE_KEY.to_owned(), role.to_owned());
        }
        if !term.is_empty() {
            metadata.insert(TERM_KEY.to_owned(), term.to_owned());
        }
        Instance {
            service: SHOP.into(),
            address: address.into(),
            metadata,
            ..Default::default()
        }
    }

    /// The primary with the highest term goes first; stale primaries and replicas follow.
    #[test]
    fn shop_instances_order_table() {
        let cases: Vec<(Vec<Instance>, Vec<&str>)> = vec![
            (vec![], vec![]),
            (vec![shop("a", "", "")], vec!["a"]),
            (
                vec![shop("r", "replica", "3"), shop("p", "primary", "3")],
                vec!["p", "r"],
            ),
            (
                vec![
                    shop("old", "primary", "2"),
                    shop("new", "primary", "10"),
                    shop("r", "replica", "10"),
                ],
                vec!["new", "old", "r"],
            ),
            (
                vec![shop("x", "replica", "1"), shop("y", "", "bad")],
                vec!["x", "y"],
            ),
        ];
        for (instances, want) in cases {
            assert_eq!(order_shop_instances(&instances), want, "{instances:?}");
        }
    }

    /// A replica's refusal of the last attempt is "no primary" (503); anything else is the
    /// backend's own answer.
    #[test]
    fn final_error_table() {
        let tried = vec!["a".to_owned(), "b".to_owned()];
        let cases = [
            (hinted("a"), 503, "unavailable"),
            (hinted("c"), 503, "unavailable"),
            (hinted(""), 503, "unavailable"),
            (Status::unavailable("a down"), 503, "unavailable"),
            (
                Status::failed_precondition("bad transition"),
                409,
                "failed_precondition",
            ),
            (Status::not_found("x"), 404, "not_found"),
        ];
        for (last, http, code) in cases {
            let err = final_error(SHOP, last.clone(), &tried);
            assert_eq!(err.http_status().as_u16(), http, "{last:?}");
            assert_eq!(err.code(), code, "{last:?}");
        }
        assert!(matches!(
            final_error(SHOP, hinted("a"), &tried),
            Error::NoPrimary { .. }
        ));
        // A connection failure names the instance that could not be reached.
        let mut refused = Status::unavailable("tcp connect error");
        refused.set_source(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        let err = final_error(SHOP, refused, &tried);
        assert_eq!(err.http_status().as_u16(), 503);
        assert_eq!(
            err.to_string(),
            "shop at b could not be reached (tcp connect error); retry in a moment"
        );
    }

    /// Only a FAILED_PRECONDITION (replica) or UNAVAILABLE (fenced) carrying the hint
    /// header is a refusal that did nothing.
    #[test]
    fn refused_by_replica_table() {
        let mut fenced = Status::unavailable("fenced");
        fenced
            .metadata_mut()
            .insert(PRIMARY_HINT, "".parse().expect("ascii"));
        let mut wrong_code = Status::not_found("x");
        wrong_code
            .metadata_mut()
            .insert(PRIMARY_HINT, "a".parse().expect("ascii"));
        let cases = [
            (hinted("a"), Some("a")),
            (hinted(""), Some("")),
            (fenced, Some("")),
            (Status::failed_precondition("bad transition"), None),
            (Status::unavailable("down"), None),
            (wrong_code, None),
        ];
        for (status, want) in cases {
            assert_eq!(primary_hint(&status), want, "{status:?}");
            assert_eq!(refused_by_replica(&status), want.is_some(), "{status:?}");
        }
    }

    fn hinted(primary: &str) -> Status {
        let mut status = Status::failed_precondition("replica");
        status
            .metadata_mut()
            .insert(PRIMARY_HINT, primary.parse().expect("ascii"));
        status
    }

    /// Retries happen only when repeating the call is safe.
    #[test]
    fn retry_target_table() {
        let candidates = vec!["a".to_owned(), "b".to_owned()];
        let tried_a = vec!["a".to_owned()];
        let cases = [
            (Status::unavailable("down"), Access::Read, Some("b")),
            (
                Status::unavailable("down"),
                Access::IdempotentWrite,
                Some("b"),
            ),
            (Status::unavailable("down"), Access::Write, None),
            (Status::cancelled("conn reset"), Access::Read, Some("b")),
            (Status::cancelled("conn reset"), Access::Write, None),
            (Status::not_found("x"), Access::Read, None),
            (Status::deadline_exceeded("slow"), Access::Read, None),
            (hinted("b"), Access::Write, Some("b")),
            (hinted("b"), Access::IdempotentWrite, Some("b")),
            (hinted("b"), Access::Read, None),
            // Not a registered shop: never handed the request (and its token).
            (hinted("c"), Access::Write, None),
            (hinted("evil:1"), Access::IdempotentWrite, None),
            (hinted("a"), Access::Write, None),
            (hinted(""), Access::Write, None),
            (
                Status::failed_precondition("bad transition"),
                Access::Write,
                None,
            ),
        ];
        for (status, access, want) in cases {
            assert_eq!(
                retry_target(&status, access, &candidates, &tried_a).as_deref(),
                want,
                "{status:?} {access:?}"
            );
        }
        let all_tried = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(
            retry_target(
                &Status::unavailable("x"),
                Access::Read,
                &candidates,
                &all_tried
            ),
            None
        );
    }
}

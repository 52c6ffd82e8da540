//! The registry side of failover: the start-up fence and the driver that feeds the
//! [`Failover`] core with what the registry says and carries out its [`Action`]s.
//!
//! Why separate from the core: everything here is I/O (a Watch stream, Resolve calls with a
//! time limit, the lease keeper's accepted and refused metadata, timers); everything that
//! decides is in `failover.rs` and tested without sockets. A failed registry call never
//! changes the role here: it becomes an event the core answers with a later retry.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use concord::claim::PrimaryClaim;
use concord::discovery::Rejection;
use concord::pb::registry::v1::Instance;
use tokio::sync::watch;

use super::failover::{Action, Event, Failover, LivePrimary, PROMOTION_RETRY_INTERVAL};
use super::role::Role;
use super::{Replicator, FENCE_LOOKUP_TIMEOUT, RECONNECT_RETRY};

/// What the registry says to a process about to act as primary (module docs, "Fence").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    /// No registered primary has a higher term: take writes.
    Clear,
    /// A primary with a higher term is registered: start as its replica.
    Follow {
        /// The newer primary's address.
        primary: String,
        /// Its term.
        term: u64,
    },
    /// The registry did not answer: refuse writes until it does.
    Unknown,
}

/// Asks the registry for `service`'s live instances, within [`FENCE_LOOKUP_TIMEOUT`];
/// `None` when it does not answer.
async fn resolve(registry: &str, service: &str) -> Option<Vec<Instance>> {
    // `registry` may list several registries: the first that answers decides.
    let registries = match concord::discovery::Registries::connect(registry) {
        Ok(registries) => registries,
        Err(e) => {
            tracing::warn!(%registry, error = %e, "cannot reach the registry");
            return None;
        }
    };
    match registries.resolve(service, FENCE_LOOKUP_TIMEOUT).await {
        Ok(instances) => Some(instances),
        Err(status) => {
            tracing::warn!(%registry, %status, "registry lookup failed");
            None
        }
    }
}

/// The primaries among `instances` ([`PrimaryClaim`]'s rule).
fn primaries(instances: &[Instance]) -> Vec<LivePrimary> {
    instances
        .iter()
        .filter_map(|i| {
            Some(LivePrimary {
                term: PrimaryClaim::primary_term_of(&i.metadata)?,
                address: i.address.clone(),
            })
        })
        .collect()
}

/// Asks the registry once whether another `service` instance is registered as primary
/// with a term above `our_term` (instances at `own_address` are ignored).
pub async fn check_fence(registry: &str, service: &str, own_address: &str, our_term: u64) -> Fence {
    let Some(instances) = resolve(registry, service).await else {
        return Fence::Unknown;
    };
    primaries(&instances)
        .into_iter()
        .filter(|p| p.address != own_address && p.term > our_term)
        .max_by_key(|p| p.term)
        .map_or(Fence::Clear, |p| Fence::Follow {
            primary: p.address,
            term: p.term,
        })
}

/// Whether the primary this process was told to follow (`told`, its start-up flag) is
/// registered with a term below `our_term` while no other shop claims the primary role
/// at `our_term` or above. Then following it is wrong twice over: it would refuse our
/// stream ("replica claims a term above ours"), and our log may hold writes of a newer
/// term it lacks (we were its successor). Such a process must (re)claim instead: as the
/// holder of its stored term the registry lets it claim that term again; otherwise the
/// registry refuses and it falls back to the failover rules. `false` when the registry
/// does not answer, or for a shop that was never in a cluster (term 0).
pub async fn told_primary_is_stale(
    registry: &str,
    service: &str,
    own_address: &str,
    told: &str,
    our_term: u64,
) -> bool {
    if our_term == 0 {
        return false;
    }
    match resolve(registry, service).await {
        Some(instances) => is_stale(&instances, own_address, told, our_term),
        None => false,
    }
}

/// [`told_primary_is_stale`]'s rule on the registry's answer `instances`.
fn is_stale(instances: &[Instance], own_address: &str, told: &str, our_term: u64) -> bool {
    if our_term == 0 {
        return false;
    }
    let newer_primary = primaries(instances)
        .iter()
        .any(|p| p.address != own_address && p.term >= our_term);
    if newer_primary {
        return false;
    }
    instances
        .iter()
        .filter(|i| i.address == told)
        .filter_map(|i| PrimaryClaim::parse(&i.metadata).ok().flatten())
        .any(|claim| claim.term < our_term)
}

/// A process that started fenced (registry unreachable) keeps asking the registry with
/// backoff; once it answers, this process becomes the primary (same term) or follows the
/// newer one. Returns then, or on shutdown, or when something else (the failover watch)
/// already gave it a role.
pub async fn run_fence(rep: Arc<Replicator>, registry: String, service: String) {
    let stop = rep.stop.clone();
    let mut backoff = RECONNECT_RETRY.backoff();
    loop {
        if !rep.role().is_fenced() {
            return;
        }
        match check_fence(&registry, &service, &rep.address, rep.store.term()).await {
            Fence::Clear => {
                let term = rep.store.term();
                let lifted = rep.set_role_if(Role::Primary { term }, Role::is_fenced);
                if lifted {
                    tracing::info!(term, "registry reached, no newer primary: taking writes");
                }
                return;
            }
            Fence::Follow { primary, term } => {
                if let Err(e) = rep.follow(primary, term).await {
                    tracing::error!(error = %e, "cannot follow the newer primary");
                }
                return;
            }
            Fence::Unknown => {}
        }
        tokio::select! {
            () = backoff.wait() => {}
            () = stop.cancelled() => return,
        }
    }
}

/// What the lease keeper tells the failover driver about this process's registrations.
pub struct KeeperFeed {
    /// The metadata the registry last accepted from this process.
    pub accepted: watch::Receiver<HashMap<String, String>>,
    /// The metadata it last refused.
    pub rejected: watch::Receiver<Option<Rejection>>,
}

/// With a registry: watches the `service` instances and drives the [`Failover`] core
/// (module docs of `failover.rs`): follow a newer primary, promote on a fresh Resolve that
/// shows none, step down when our held claim is refused. `grace` is the registry's grace
/// (two lease TTLs): a Watch stream open that long reports [`Event::GraceOver`]. Returns
/// on shutdown.
pub async fn run_failover_watch(
    rep: Arc<Replicator>,
    registry: String,
    service: String,
    mut keeper: KeeperFeed,
    grace: std::time::Duration,
) {
    let watch = match concord::discovery::ServiceWatch::spawn(&registry, &service) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the registry; automatic failover disabled");
            return;
        }
    };
    let mut instances_rx = watch.subscribe();
    let stop = rep.stop.clone();
    let mut core = Failover::new(rep.address.clone());
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut events = VecDeque::new();
    let snapshot = instances_rx.borrow_and_update().clone();
    // The stream whose grace is being timed, and when it is over.
    let mut grace_for: (u64, Option<tokio::time::Instant>) =
        (snapshot.stream, Some(tokio::time::Instant::now() + grace));
    events.push_back(Event::Watched {
        stream: snapshot.stream,
        primaries: primaries(&snapshot.instances),
    });
    loop {
        while let Some(event) = events.pop_front() {
            for action in core.step(&rep.role(), event) {
                if let Some(next) = act(&rep, &registry, &service, action, &mut retry_at).await {
                    events.push_back(next);
                }
            }
        }
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let grace_over = async {
            match grace_for.1 {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            changed = instances_rx.changed() => {
                if changed.is_err() { return }
                let snapshot = instances_rx.borrow_and_update().clone();
                if snapshot.stream != grace_for.0 {
                    // A new stream (the registry restarted or we moved): its own grace.
                    grace_for = (snapshot.stream, Some(tokio::time::Instant::now() + grace));
                }
                Event::Watched { stream: snapshot.stream, primaries: primaries(&snapshot.instances) }
            }
            () = grace_over => {
                grace_for.1 = None;
                Event::GraceOver { stream: grace_for.0 }
            }
            changed = keeper.accepted.changed() => {
                if changed.is_err() { return }
                let accepted = PrimaryClaim::primary_term_of(&keeper.accepted.borrow_and_update());
                match (accepted, core.claiming()) {
                    (Some(term), Some(claim)) if term == claim => Event::ClaimAccepted(term),
                    _ => continue,
                }
            }
            changed = keeper.rejected.changed() => {
                if changed.is_err() { return }
                let refused = keeper.rejected.borrow_and_update().clone();
                match refused {
                    Some(rejection) => match PrimaryClaim::primary_term_of(&rejection.metadata) {
                        Some(term) => {
                            tracing::warn!(term, reason = %rejection.message, "the registry refused a primary claim");
                            Event::ClaimRefused(term)
                        }
                        None => continue,
                    },
                    None => continue,
                }
            }
            () = retry => {
                retry_at = None;
                Event::RetryDue
            }
            () = stop.cancelled() => return,
        };
        events.push_back(event);
    }
}

/// Carries out one action of the core; returns the event it leads to, if any.
async fn act(
    rep: &Replicator,
    registry: &str,
    service: &str,
    action: Action,
    retry_at: &mut Option<tokio::time::Instant>,
) -> Option<Event> {
    match action {
        Action::Follow { primary, term } => {
            if let Err(e) = rep.follow(primary, term).await {
                tracing::error!(error = %e, "cannot follow the newer primary");
            }
        }
        Action::Resolve => {
            return Some(match resolve(registry, service).await {
                Some(instances) => Event::Resolved(primaries(&instances)),
                None => Event::ResolveFailed,
            });
        }
        Action::Claim(term) => {
            tracing::warn!(
                term,
                "no live shop primary in a fresh registry lookup; claiming the primary role"
            );
            rep.set_claim(Some(term));
        }
        Action::WithdrawClaim => {
            tracing::info!("primary claim withdrawn; staying a replica");
            rep.set_claim(None);
        }
        Action::BecomePrimary(term) => {
            if let Err(e) = rep.become_primary(term).await {
                tracing::error!(error = %e, term, "cannot take the primary role");
                rep.set_claim(None);
            }
        }
        Action::StepDown => rep.step_down("the registry refused our claim to our own term"),
        Action::RetryLater => {
            *retry_at = Some(tokio::time::Instant::now() + PROMOTION_RETRY_INTERVAL);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shop(address: &str, claim: PrimaryClaim) -> Instance {
        Instance {
            service: "shop".into(),
            address: address.into(),
            metadata: claim.to_metadata(),
            ..Instance::default()
        }
    }

    /// When a restarted replica must claim instead of following the primary its flags
    /// name ("told"), by what the registry shows.
    #[test]
    fn stale_told_primary_table() {
        let (told, me, other) = ("told:1", "me:1", "other:1");
        let cases: Vec<(&str, Vec<Instance>, u64, bool)> = vec![
            (
                "the double stop: told is back fenced below our term",
                vec![shop(told, PrimaryClaim::replica(1))],
                2,
                true,
            ),
            (
                "told claims a lower term as primary",
                vec![shop(told, PrimaryClaim::primary(1))],
                2,
                true,
            ),
            (
                "told is primary at our term: follow it",
                vec![shop(told, PrimaryClaim::primary(2))],
                2,
                false,
            ),
            (
                "another primary at our term or above: follow the watch's choice",
                vec![
                    shop(told, PrimaryClaim::replica(1)),
                    shop(other, PrimaryClaim::primary(2)),
                ],
                2,
                false,
            ),
            (
                "our own old registration is no rival",
                vec![
                    shop(told, PrimaryClaim::replica(1)),
                    shop(me, PrimaryClaim::primary(2)),
                ],
                2,
                true,
            ),
            ("told is not registered: nothing known", vec![], 2, false),
            (
                "a brand-new shop never claims so",
                vec![shop(told, PrimaryClaim::replica(0))],
                0,
                false,
            ),
        ];
        for (label, instances, our_term, want) in cases {
            assert_eq!(is_stale(&instances, me, told, our_term), want, "{label}");
        }
    }
}

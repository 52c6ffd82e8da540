//! The fault menu, the schedule, and the injector that applies it through the supervisor
//! admin API ([`super::admin`]).
//!
//! A schedule is a comma-separated list of `<fault>@<start>[:<length>]`, times from the
//! start of the workload: `kill-primary@5s,freeze-replica@12s:3s,liar-node@8s:6s`. Faults
//! with a length are undone at its end (thaw, start, back to honest). Or
//! `--random-faults N --seed S` draws N faults over the run from the same menu, the same
//! ones for the same seed. Which shop is the primary is decided when the fault fires, from
//! the registry (the highest-term `role=primary` instance), not at parse time.

use std::time::Duration;

use rand::{Rng, SeedableRng};

use super::admin::{Action, SupervisorClient};
use super::history::{FaultEvent, Recorder};
use super::probe::Probe;

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// kill -9 of the shop primary (the supervisor restarts it).
    KillPrimary,
    /// Stop the primary and keep it down for the length (a host that is gone a while).
    StopPrimary,
    /// SIGSTOP of the shop replica for the length, then SIGCONT.
    FreezeReplica,
    /// SIGSTOP of the shop primary for the length (a stalled host: its lease lapses and
    /// the replica takes over), then SIGCONT (it must step down).
    FreezePrimary,
    /// kill -9 of a prediction node.
    KillNode,
    /// A node restarted as a liar (`inverted`) for the length, then honest again.
    LiarNode,
    /// kill -9 of the registry (the supervisor restarts it with no leases).
    RestartRegistry,
}

/// Every fault kind with its schedule name and the length it gets by default.
const MENU: &[(FaultKind, &str, Option<Duration>)] = &[
    (FaultKind::KillPrimary, "kill-primary", None),
    (
        FaultKind::StopPrimary,
        "stop-primary",
        Some(Duration::from_secs(4)),
    ),
    (
        FaultKind::FreezeReplica,
        "freeze-replica",
        Some(Duration::from_secs(3)),
    ),
    (
        FaultKind::FreezePrimary,
        "freeze-primary",
        Some(Duration::from_secs(4)),
    ),
    (FaultKind::KillNode, "kill-node", None),
    (
        FaultKind::LiarNode,
        "liar-node",
        Some(Duration::from_secs(6)),
    ),
    (FaultKind::RestartRegistry, "restart-registry", None),
];

/// One scheduled fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// What.
    pub kind: FaultKind,
    /// When, from the start of the workload.
    pub at: Duration,
    /// How long, for faults that are undone.
    pub length: Option<Duration>,
}

impl Fault {
    fn name(&self) -> &'static str {
        MENU.iter()
            .find(|(k, _, _)| *k == self.kind)
            .map_or("?", |(_, n, _)| n)
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}ms", self.name(), self.at.as_millis())?;
        if let Some(length) = self.length {
            write!(f, ":{}ms", length.as_millis())?;
        }
        Ok(())
    }
}

/// Parses a schedule (module docs).
pub fn parse_schedule(text: &str) -> Result<Vec<Fault>, String> {
    let mut faults = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, when) = item
            .split_once('@')
            .ok_or_else(|| format!("{item:?}: expected <fault>@<time>, e.g. kill-primary@5s"))?;
        let &(kind, _, default_length) =
            MENU.iter().find(|(_, n, _)| *n == name).ok_or_else(|| {
                let names: Vec<&str> = MENU.iter().map(|(_, n, _)| *n).collect();
                format!("{name:?} is not a fault; the menu: {}", names.join(", "))
            })?;
        let (at, length) = match when.split_once(':') {
            Some((at, length)) => (at, Some(concord::config::parse_duration(length)?)),
            None => (when, default_length),
        };
        let at = concord::config::parse_duration(at)?;
        if default_length.is_none() && length.is_some() {
            return Err(format!("{item:?}: {name} takes no length"));
        }
        faults.push(Fault { kind, at, length });
    }
    faults.sort_by_key(|f| f.at);
    Ok(faults)
}

/// `count` faults drawn from the menu with `seed`, spread over `duration` (leaving the
/// first and last fifth quiet, so the run starts and ends healthy).
pub fn random_schedule(count: usize, seed: u64, duration: Duration) -> Vec<Fault> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let span = duration.as_millis() as u64;
    let (from, to) = (span / 5, span - span / 5);
    let mut faults: Vec<Fault> = (0..count)
        .map(|_| {
            let &(kind, _, length) = &MENU[rng.gen_range(0..MENU.len())];
            Fault {
                kind,
                at: Duration::from_millis(rng.gen_range(from..to.max(from + 1))),
                length,
            }
        })
        .collect();
    faults.sort_by_key(|f| f.at);
    faults
}

/// A step of the schedule: a fault starting, or ending.
struct Step {
    at: Duration,
    fault: Fault,
    undo: Option<String>,
}

/// Applies `faults` at their times (from `recorder`'s start), recording each in the
/// history; undoes each at its end. Returns when the last step is done.
pub async fn inject(
    faults: Vec<Fault>,
    admin: SupervisorClient,
    probe: Probe,
    recorder: Recorder,
    seed: u64,
) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let mut steps: Vec<Step> = faults
        .into_iter()
        .map(|fault| Step {
            at: fault.at,
            fault,
            undo: None,
        })
        .collect();
    let mut done = 0;
    while done < steps.len() {
        steps[done..].sort_by_key(|s| s.at);
        let step = &steps[done];
        tokio::time::sleep_until((recorder.started() + step.at).into()).await;
        let fault = step.fault.clone();
        let label = fault.to_string();
        // When the action was sent (a stop can take its SIGTERM grace to return).
        let at_ms = recorder.now_ms();
        let result = match step.undo.clone() {
            Some(target) => undo(&admin, &fault, &target)
                .await
                .map(|action| (action, target)),
            None => apply(&admin, &fault, &probe, &mut rng).await,
        };
        let event = match result {
            Ok((action, target)) => {
                tracing::info!(fault = %label, action, target, "fault applied");
                if step.undo.is_none() {
                    if let Some(length) = fault.length {
                        steps.push(Step {
                            at: step.at + length,
                            fault: fault.clone(),
                            undo: Some(target.clone()),
                        });
                    }
                }
                FaultEvent {
                    at_ms,
                    fault: label,
                    action: action.to_owned(),
                    target,
                    error: None,
                }
            }
            Err((action, target, error)) => {
                tracing::warn!(fault = %label, action, target, error, "fault not applied");
                FaultEvent {
                    at_ms,
                    fault: label,
                    action: action.to_owned(),
                    target,
                    error: Some(error),
                }
            }
        };
        recorder.record(|h| h.faults.push(event));
        done += 1;
    }
}

type Applied = Result<(&'static str, String), (&'static str, String, String)>;

async fn apply(
    admin: &SupervisorClient,
    fault: &Fault,
    probe: &Probe,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Applied {
    let action = match fault.kind {
        FaultKind::KillPrimary | FaultKind::KillNode | FaultKind::RestartRegistry => "kill",
        FaultKind::StopPrimary => "stop",
        FaultKind::FreezeReplica | FaultKind::FreezePrimary => "freeze",
        FaultKind::LiarNode => "liar",
    };
    let children = admin
        .children()
        .await
        .map_err(|e| (action, String::new(), e.to_string()))?;
    let running = |role: &str| -> Vec<String> {
        children
            .iter()
            .filter(|c| c.role == role && c.state == "running")
            .map(|c| c.name.clone())
            .collect()
    };
    let pick = |names: Vec<String>, rng: &mut rand_chacha::ChaCha8Rng| {
        (!names.is_empty()).then(|| names[rng.gen_range(0..names.len())].clone())
    };
    let target = match fault.kind {
        FaultKind::KillPrimary | FaultKind::StopPrimary | FaultKind::FreezePrimary => {
            probe.shop_roles(&children).await.0
        }
        FaultKind::FreezeReplica => probe.shop_roles(&children).await.1,
        FaultKind::KillNode => pick(running("node"), rng),
        FaultKind::LiarNode => pick(
            children
                .iter()
                .filter(|c| {
                    c.role == "node"
                        && c.state == "running"
                        && c.behaviour.as_deref() != Some("inverted")
                })
                .map(|c| c.name.clone())
                .collect(),
            rng,
        ),
        FaultKind::RestartRegistry => pick(running("registry"), rng),
    };
    let Some(target) = target else {
        return Err((
            action,
            String::new(),
            "no child in the right state to hit".into(),
        ));
    };
    let result = match fault.kind {
        FaultKind::KillPrimary | FaultKind::KillNode | FaultKind::RestartRegistry => {
            admin.act(&target, Action::Kill).await
        }
        FaultKind::StopPrimary => admin.act(&target, Action::Stop).await,
        FaultKind::FreezeReplica | FaultKind::FreezePrimary => {
            admin.act(&target, Action::Freeze).await
        }
        FaultKind::LiarNode => admin.set_behaviour(&target, "inverted").await,
    };
    match result {
        Ok(_) => Ok((action, target)),
        Err(e) => Err((action, target, e.to_string())),
    }
}

async fn undo(
    admin: &SupervisorClient,
    fault: &Fault,
    target: &str,
) -> Result<&'static str, (&'static str, String, String)> {
    let (action, result) = match fault.kind {
        FaultKind::StopPrimary => ("start", admin.act(target, Action::Start).await),
        FaultKind::FreezeReplica | FaultKind::FreezePrimary => {
            ("thaw", admin.act(target, Action::Thaw).await)
        }
        FaultKind::LiarNode => ("honest", admin.set_behaviour(target, "honest").await),
        _ => return Ok("none"),
    };
    result
        .map(|_| action)
        .map_err(|e| (action, target.to_owned(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Schedules: names, times, lengths (given or default), and refusals.
    #[test]
    fn parse_schedule_table() {
        let s = Duration::from_secs;
        let ok: &[(&str, Vec<Fault>)] = &[
            (
                "kill-primary@5s, freeze-replica@2s:3s",
                vec![
                    Fault {
                        kind: FaultKind::FreezeReplica,
                        at: s(2),
                        length: Some(s(3)),
                    },
                    Fault {
                        kind: FaultKind::KillPrimary,
                        at: s(5),
                        length: None,
                    },
                ],
            ),
            (
                "liar-node@1s",
                vec![Fault {
                    kind: FaultKind::LiarNode,
                    at: s(1),
                    length: Some(s(6)),
                }],
            ),
            ("", vec![]),
        ];
        for (text, want) in ok {
            assert_eq!(parse_schedule(text).as_ref(), Ok(want), "{text}");
        }
        for bad in [
            "kill-primary",
            "nuke@1s",
            "kill-primary@1s:2s",
            "freeze-replica@x",
        ] {
            assert!(parse_schedule(bad).is_err(), "{bad}");
        }
    }

    /// The same seed draws the same faults, inside the middle of the run.
    #[test]
    fn random_schedule_is_seeded() {
        let d = Duration::from_secs(30);
        let a = random_schedule(5, 7, d);
        assert_eq!(a, random_schedule(5, 7, d));
        assert_ne!(a, random_schedule(5, 8, d));
        assert!(a.iter().all(|f| f.at >= d / 5 && f.at < d - d / 5));
    }
}

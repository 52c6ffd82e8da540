//! Fan-out: who the prediction nodes are, and asking all of them at once with a deadline.
//!
//! [`Fleet`] follows the registry's `predictor` instance set (a `Watch`, via
//! `concord::discovery::ServiceWatch`) and keeps **one** lazily connected tonic `Channel`
//! per node, reused by every request; a channel reconnects by itself, and is dropped when
//! its node leaves the registry. Readers take a cheap snapshot (`Arc<[Member]>`), so a
//! request never holds a lock across an `.await`.
//!
//! [`ask_all`] / [`ask_all_batch`] call every member concurrently, each bounded by the same
//! deadline (also sent as `grpc-timeout`, so the node can give up too). Single
//! predictions go through the node's coalescing [`Batcher`] (see `batcher.rs`). A node
//! that is slow, killed or erroring yields a [`CallResult::TimedOut`] / [`CallResult::Failed`]
//! and never fails the request by itself; whether enough nodes answered is decided by
//! the caller. A fan-out therefore never takes longer than the deadline (plus scheduling).
//!
//! Identity: a node is known by its registry metadata `node_id` (stable across restarts;
//! the ledger keys accounts by it), or by its address if it published none. If two live
//! instances claim the same id (a restarted node whose old lease has not expired yet) the
//! newest registration wins, so one node never votes twice.
//!
//! Observability: every call is one `node_call` span (a child of the request's, carried to
//! the node as `traceparent`) and is counted in `crate::metrics` (latency, result per
//! node).
//!
//! Non-goals: load balancing, retries (a retry would blow the deadline), hedging.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use concord::discovery::ServiceWatch;
use concord::pb::predict::v1::{predictor_client::PredictorClient, PredictBatchRequest, Row};
use concord::pb::registry::v1::Instance;
use concord_node::{METADATA_NODE_ID, PREDICTOR_SERVICE};
use futures::future::join_all;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Request;
use tracing::Instrument;

use crate::batcher::Batcher;
use crate::error::{Error, Result};
use crate::policy::NodeId;
use crate::tasks::Tasks;

/// One prediction node as the aggregator knows it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Stable node id (registry metadata `node_id`, else the address).
    pub node_id: NodeId,
    /// Address the aggregator dials.
    pub address: String,
    /// Client over the node's one shared channel; cloning it is cheap.
    client: PredictorClient<Channel>,
    /// Coalesces single predictions for this node into batches.
    batcher: Batcher,
}

impl Member {
    /// A member dialling `address` lazily (nothing is connected until the first call);
    /// its batcher task belongs to `tasks`.
    pub fn new(
        node_id: impl Into<NodeId>,
        address: impl Into<String>,
        tasks: &Tasks,
    ) -> Result<Self> {
        let address = address.into();
        let node_id = node_id.into();
        // Over TLS the node must prove it is this node id (its certificate), so no other
        // node's answers are ever scored as this one's.
        let channel = if concord::identity::valid_node_id(&node_id) {
            let node = concord::identity::Principal::Node(node_id.clone());
            concord::grpc::lazy_channel_to(&address, &node)
        } else {
            concord::grpc::lazy_channel(&address)
        }
        .map_err(|e| Error::Config(format!("bad node address {address:?}: {e}")))?;
        let client = PredictorClient::new(channel);
        Ok(Member {
            node_id,
            address,
            batcher: Batcher::spawn(client.clone(), tasks),
            client,
        })
    }
}

/// What became of one call to one node.
#[derive(Debug, Clone, PartialEq)]
pub enum CallResult {
    /// The node answered in time.
    Answered {
        /// The node's own label.
        label: u32,
        /// The node's class probabilities, as sent (checked later by the policy).
        probabilities: Vec<f64>,
    },
    /// No answer before the deadline.
    TimedOut,
    /// The call failed (connection refused, error status, malformed reply).
    Failed(String),
}

/// One node's call and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Call<T = CallResult> {
    /// Who was called.
    pub node_id: NodeId,
    /// Where.
    pub address: String,
    /// What came back.
    pub result: T,
    /// Time from sending to the answer, or to giving up.
    pub latency: Duration,
}

/// One node's answers to a whole batch: one `(label, probabilities)` per row, or why not.
pub type BatchCall = Call<std::result::Result<Vec<(u32, Vec<f64>)>, CallResult>>;

/// The live set of prediction nodes, kept current from the registry by a background task.
pub struct Fleet {
    /// Latest snapshot of the members.
    members_rx: watch::Receiver<Arc<[Member]>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("members", &self.members_rx.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Follows the `predictor` service in the registry at `registry_addr` until `tasks`
    /// is cancelled; the follower and every member's batcher belong to `tasks`, which
    /// joins them.
    pub fn follow(registry_addr: &str, tasks: &Tasks) -> Result<Self> {
        let watch = ServiceWatch::spawn(registry_addr, PREDICTOR_SERVICE)
            .map_err(|e| Error::Config(format!("bad registry address {registry_addr:?}: {e}")))?;
        let (members_tx, members_rx) = watch::channel(Arc::from(Vec::new()));
        tasks.spawn(follow_registry(watch, members_tx, tasks.clone()));
        Ok(Fleet { members_rx })
    }

    /// A fleet that never changes (tests, benches, a registry-less setup).
    pub fn fixed(members: Vec<Member>) -> Self {
        let (_members_tx, members_rx) = watch::channel(Arc::from(members));
        Fleet { members_rx }
    }

    /// The current members; a snapshot, cheap to take (one `Arc` clone).
    pub fn members(&self) -> Arc<[Member]> {
        self.members_rx.borrow().clone()
    }

    /// Waits until `ready` holds for the member set or `timeout` passes; true if it held.
    pub async fn wait_until(&self, timeout: Duration, ready: impl Fn(&[Member]) -> bool) -> bool {
        let mut rx = self.members_rx.clone();
        tokio::time::timeout(timeout, rx.wait_for(|m| ready(m)))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

async fn follow_registry(
    watch: ServiceWatch,
    members_tx: watch::Sender<Arc<[Member]>>,
    tasks: Tasks,
) {
    let mut instances_rx = watch.subscribe();
    loop {
        let instances = instances_rx.borrow_and_update().instances.clone();
        let previous = members_tx.borrow().clone();
        let next = rebuild(&previous, &instances, &tasks);
        if next.len() != previous.len()
            || next
                .iter()
                .zip(previous.iter())
                .any(|(a, b)| a.address != b.address || a.node_id != b.node_id)
        {
            let ids: Vec<&str> = next.iter().map(|m| m.node_id.as_str()).collect();
            tracing::info!(nodes = next.len(), ?ids, "prediction fleet changed");
            members_tx.send_replace(Arc::from(next));
        }
        let watch_ended = tokio::select! {
            changed = instances_rx.changed() => changed.is_err(),
            () = tasks.cancelled() => return,
        };
        if watch_ended {
            tracing::error!("registry watch ended; keeping the last fleet");
            tasks.cancelled().await;
            return;
        }
    }
}

/// The member list for `instances`, reusing the channels of `previous` members at the same
/// address with the same id. Sorted by node id so replies list nodes in a stable order.
fn rebuild(previous: &[Member], instances: &[Instance], tasks: &Tasks) -> Vec<Member> {
    let mut newest: HashMap<NodeId, &Instance> = HashMap::new();
    for instance in instances {
        let id = instance_node_id(instance);
        match newest.get(&id) {
            Some(seen) if seen.registered_at_unix_ms >= instance.registered_at_unix_ms => {}
            _ => {
                newest.insert(id, instance);
            }
        }
    }
    let mut members: Vec<Member> = newest
        .into_iter()
        .filter_map(|(node_id, instance)| {
            if let Some(old) = previous
                .iter()
                .find(|m| m.node_id == node_id && m.address == instance.address)
            {
                return Some(old.clone());
            }
            match Member::new(node_id, instance.address.clone(), tasks) {
                Ok(member) => Some(member),
                Err(err) => {
                    tracing::error!(%err, address = %instance.address, "ignoring a node we cannot dial");
                    None
                }
            }
        })
        .collect();
    members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    members
}

fn instance_node_id(instance: &Instance) -> NodeId {
    instance
        .metadata
        .get(METADATA_NODE_ID)
        .filter(|id| !id.is_empty())
        .cloned()
        .unwrap_or_else(|| instance.address.clone())
}

/// Asks every member to predict `features`, concurrently, each call bounded by
/// `deadline`; returns one [`Call`] per member, in member order. Calls go through each
/// node's [`Batcher`], so concurrent requests share `PredictBatch` RPCs.
pub async fn ask_all(members: &[Member], features: &[f64], deadline: Duration) -> Vec<Call> {
    let traced = concord::telemetry::in_trace();
    join_all(members.iter().map(|member| {
        let span = node_call_span(member, traced);
        async move {
        let start = Instant::now();
        let result = match member.batcher.submit(features.to_vec(), deadline) {
            Err(failed) => failed,
            Ok(reply_rx) => match tokio::time::timeout(deadline, reply_rx).await {
                Ok(Ok(Ok((label, probabilities)))) => CallResult::Answered {
                    label,
                    probabilities,
                },
                Ok(Ok(Err(failure))) => failure,
                Ok(Err(_)) => CallResult::Failed("node batcher stopped".into()),
                Err(_) => CallResult::TimedOut,
            },
        };
        let latency = start.elapsed();
        crate::metrics::node_call(&member.node_id, &result, latency);
        if !matches!(result, CallResult::Answered { .. }) {
            tracing::debug!(node_id = %member.node_id, address = %member.address, ?result, ?latency, "node did not answer");
        }
        Call {
            node_id: member.node_id.clone(),
            address: member.address.clone(),
            result,
            latency,
        }
    }
        .instrument(span)
    }))
    .await
}

/// The span of one node call: a child of the request's span, so that in a trace every
/// node the consensus asked shows as its own span (and the node's server span below it).
/// Outside a trace (`traced` false: nothing exported, no caller's trace; see
/// [`concord::telemetry::in_trace`], asked once per request) it is a span for logs only,
/// so each node call does not start a trace of its own.
fn node_call_span(member: &Member, traced: bool) -> tracing::Span {
    if !traced {
        return tracing::debug_span!(target: "concord_aggregator::logs", "node_call", node_id = %member.node_id, address = %member.address);
    }
    tracing::debug_span!("node_call", node_id = %member.node_id, address = %member.address)
}

/// Asks every member to predict all `rows` in one `PredictBatch` each; a node's result is
/// one `(label, probabilities)` per row, or its failure. A reply with the wrong number of
/// rows counts as a failure.
pub async fn ask_all_batch(members: &[Member], rows: &[Row], deadline: Duration) -> Vec<BatchCall> {
    let traced = concord::telemetry::in_trace();
    join_all(members.iter().map(|member| {
        let mut client = member.client.clone();
        let mut request = Request::new(PredictBatchRequest {
            rows: rows.to_vec(),
            policy: 0,
        });
        request.set_timeout(deadline);
        let expected = rows.len();
        let span = node_call_span(member, traced);
        async move {
            concord::telemetry::inject(request.metadata_mut());
            let call = timed(member, deadline, async move {
                let reply = client.predict_batch(request).await?.into_inner();
                if reply.predictions.len() != expected {
                    return Ok(Err(CallResult::Failed(format!(
                        "answered {} of {expected} rows",
                        reply.predictions.len()
                    ))));
                }
                Ok(Ok(reply
                    .predictions
                    .into_iter()
                    .map(|p| (p.label, p.probabilities))
                    .collect()))
            })
            .await;
            Call {
                node_id: call.node_id,
                address: call.address,
                latency: call.latency,
                result: match call.result {
                    Ok(Ok(rows)) => Ok(rows),
                    Ok(Err(failed)) | Err(failed) => Err(failed),
                },
            }
        }
        .instrument(span)
    }))
    .await
}

/// What [`timed`] records for a call that answered (the answer itself is not needed).
const ANSWERED: CallResult = CallResult::Answered {
    label: 0,
    probabilities: Vec::new(),
};

/// Runs one call with the deadline and classifies the outcome.
async fn timed<T>(
    member: &Member,
    deadline: Duration,
    call: impl std::future::Future<Output = std::result::Result<T, tonic::Status>>,
) -> Call<std::result::Result<T, CallResult>> {
    let start = Instant::now();
    let result = match tokio::time::timeout(deadline, call).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(status)) => Err(classify_status(&status)),
        Err(_) => Err(CallResult::TimedOut),
    };
    let latency = start.elapsed();
    let answered = ANSWERED;
    crate::metrics::node_call(
        &member.node_id,
        match &result {
            Ok(_) => &answered,
            Err(failure) => failure,
        },
        latency,
    );
    if let Err(failure) = &result {
        tracing::debug!(node_id = %member.node_id, address = %member.address, ?failure, ?latency, "node did not answer");
    }
    Call {
        node_id: member.node_id.clone(),
        address: member.address.clone(),
        result,
        latency,
    }
}

/// A failed call's status as a [`CallResult`]: deadline-like codes are `TimedOut`.
pub(crate) fn classify_status(status: &tonic::Status) -> CallResult {
    match status.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => CallResult::TimedOut,
        // A lying node may send anything: repeat a bounded part of its message.
        code => CallResult::Failed(format!(
            "{code:?}: {}",
            concord::error::quote(status.message())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(address: &str, node_id: Option<&str>, registered_at: i64) -> Instance {
        Instance {
            service: PREDICTOR_SERVICE.into(),
            address: address.into(),
            metadata: node_id
                .map(|id| HashMap::from([(METADATA_NODE_ID.to_owned(), id.to_owned())]))
                .unwrap_or_default(),
            lease_id: format!("lease-{address}"),
            registered_at_unix_ms: registered_at,
            expires_at_unix_ms: 0,
        }
    }

    fn ids(members: &[Member]) -> Vec<(&str, &str)> {
        members
            .iter()
            .map(|m| (m.node_id.as_str(), m.address.as_str()))
            .collect()
    }

    /// Members are sorted by id, fall back to the address as id, and a duplicated id keeps
    /// only its newest registration (table-driven).
    #[tokio::test]
    async fn rebuild_identity_and_duplicates() {
        type Case = (Vec<Instance>, Vec<(&'static str, &'static str)>);
        let cases: Vec<Case> = vec![
            (vec![], vec![]),
            (
                vec![
                    instance("127.0.0.1:2", Some("node-2"), 1),
                    instance("127.0.0.1:1", Some("node-1"), 1),
                ],
                vec![("node-1", "127.0.0.1:1"), ("node-2", "127.0.0.1:2")],
            ),
            (
                vec![instance("127.0.0.1:3", None, 1)],
                vec![("127.0.0.1:3", "127.0.0.1:3")],
            ),
            (
                vec![
                    instance("127.0.0.1:1", Some("node-1"), 5),
                    instance("127.0.0.1:9", Some("node-1"), 7),
                ],
                vec![("node-1", "127.0.0.1:9")],
            ),
        ];
        for (instances, want) in cases {
            let members = rebuild(&[], &instances, &Tasks::new());
            assert_eq!(ids(&members), want);
        }
    }

    /// A node that leaves the registry leaves the fleet.
    #[tokio::test]
    async fn rebuild_reuses_channels() {
        let tasks = Tasks::new();
        let first = rebuild(
            &[],
            &[
                instance("127.0.0.1:1", Some("a"), 1),
                instance("127.0.0.1:2", Some("b"), 1),
            ],
            &tasks,
        );
        let second = rebuild(&first, &[instance("127.0.0.1:1", Some("a"), 1)], &tasks);
        assert_eq!(ids(&second), vec![("a", "127.0.0.1:1")]);
    }

    /// A node nobody listens on fails fast, and an empty fleet returns no calls.
    #[tokio::test]
    async fn unreachable_node_fails_within_deadline() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let members = vec![Member::new("gone", addr.to_string(), &Tasks::new()).unwrap()];
        let deadline = Duration::from_millis(300);
        let calls = ask_all(&members, &[1.0; 4], deadline).await;
        assert_eq!(calls.len(), 1);
        assert!(matches!(
            calls[0].result,
            CallResult::Failed(_) | CallResult::TimedOut
        ));
        assert!(calls[0].latency <= deadline + Duration::from_millis(50));
        assert!(ask_all(&[], &[1.0; 4], deadline).await.is_empty());
    }
}

//! Opportunistic coalescing of single predictions into one `PredictBatch` per node.
//!
//! Why: a consensus request costs one RPC per node, so at concurrency 64 over five nodes
//! the aggregator would make 320 tiny RPCs where the KNN work is microseconds and the
//! gRPC framing is everything. Each node gets a [`Batcher`]: a task that takes whatever
//! single predictions are queued for that node *right now* (up to
//! [`MAX_COALESCED_ROWS`]) and sends them as one `PredictBatch`. It never waits to fill
//! a batch, so an idle aggregator adds no latency (a lone request is a batch of one);
//! under load, requests that arrive while earlier batches are in flight share the next.
//!
//! Bounds and failure behaviour:
//! - The queue holds [`QUEUE_CAPACITY`] rows; when it is full (a node far slower than
//!   the load), new requests get `Failed("queue full")` for that node at once.
//! - At most [`MAX_IN_FLIGHT_BATCHES`] batch calls per node run at a time; a slow node
//!   therefore fills its queue instead of piling up connections.
//! - A batch call gets the latest deadline of its rows; each row's caller also enforces
//!   its own deadline, so one slow batch never delays a request past its deadline.
//! - A failed batch call fails every row in it for that node only (other nodes still
//!   answer those requests). Rows whose caller already gave up are not sent.
//! - Rows of different requests share a call, so one bad row must not sink the others:
//!   the aggregator validates every row with the node's own `validate_sample` before
//!   queueing it, so a node never sees a row it would reject.
//! - Tracing: a batch call carries the W3C trace context of its first row (rows of other
//!   requests in the same batch are not linked to it); a lone request's call is therefore
//!   a child of that request's node-call span.
//! - The task ends when the last handle to its queue is dropped (the node left the
//!   fleet and no request still holds it) or at shutdown ([`Tasks`], which joins it and
//!   its batch calls); in-flight calls end by their deadline.

use std::sync::Arc;
use std::time::Duration;

use concord::pb::predict::v1::{predictor_client::PredictorClient, PredictBatchRequest, Row};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Request;

use crate::fanout::{classify_status, CallResult};
use crate::tasks::Tasks;

/// Most rows sent in one coalesced `PredictBatch`; nodes must accept batches this large
/// (their default `max_batch` is 1024, the proto's bound).
pub const MAX_COALESCED_ROWS: usize = 256;
/// Rows queued per node before new requests fail fast for that node.
pub const QUEUE_CAPACITY: usize = 4096;
/// Batch calls in flight per node.
pub const MAX_IN_FLIGHT_BATCHES: usize = 8;
/// Least time a row must have left before its deadline to be sent at all; rows with less
/// are answered `TimedOut` at once (no node call can usefully finish in that time).
pub const MIN_CALL_BUDGET: Duration = Duration::from_millis(1);

/// One row's answer from a node: `(label, probabilities)` or why not.
pub type RowAnswer = Result<(u32, Vec<f64>), CallResult>;

/// A queued single prediction.
struct Pending {
    /// The four features.
    features: Vec<f64>,
    /// When the caller stops waiting.
    deadline_at: Instant,
    /// Where the answer goes.
    reply_tx: oneshot::Sender<RowAnswer>,
    /// The submitting span's W3C trace context: the batch call carries its first row's,
    /// so a lone request's node call is a child of that request's node-call span.
    traceparent: Option<String>,
}

/// Handle to one node's coalescing task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Batcher {
    /// The node's queue; bounded, see [`QUEUE_CAPACITY`].
    queue_tx: mpsc::Sender<Pending>,
}

impl Batcher {
    /// Starts the coalescing task for the node behind `client`, owned by `tasks`.
    pub fn spawn(client: PredictorClient<Channel>, tasks: &Tasks) -> Self {
        let (queue_tx, queue_rx) = mpsc::channel(QUEUE_CAPACITY);
        tasks.spawn(run(client, queue_rx, tasks.clone()));
        Batcher { queue_tx }
    }

    /// Queues one prediction; the receiver yields the node's answer. Fails at once with
    /// `Failed` when the node's queue is full or its task has stopped.
    pub fn submit(
        &self,
        features: Vec<f64>,
        deadline: Duration,
    ) -> Result<oneshot::Receiver<RowAnswer>, CallResult> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let pending = Pending {
            features,
            deadline_at: Instant::now() + deadline,
            reply_tx,
            traceparent: concord::telemetry::current_traceparent(),
        };
        match self.queue_tx.try_send(pending) {
            Ok(()) => Ok(reply_rx),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Err(CallResult::Failed("node queue full".into()))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(CallResult::Failed("node batcher stopped".into()))
            }
        }
    }
}

async fn run(
    client: PredictorClient<Channel>,
    mut queue_rx: mpsc::Receiver<Pending>,
    tasks: Tasks,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_BATCHES));
    loop {
        let first = tokio::select! {
            () = tasks.cancelled() => return,
            pending = queue_rx.recv() => match pending {
                Some(pending) => pending,
                None => return,
            },
        };
        // Wait for a call slot first, so rows queued meanwhile join this batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return; // never closed while we hold it
        };
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_COALESCED_ROWS {
            match queue_rx.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        // Rows whose caller gave up, or whose deadline is (nearly) over, are not worth a
        // call: a slow node must not be sent new batches for requests already timed out.
        let now = Instant::now();
        batch.retain(|p| !p.reply_tx.is_closed());
        let (live, expired): (Vec<Pending>, Vec<Pending>) = batch
            .into_iter()
            .partition(|p| p.deadline_at.saturating_duration_since(now) >= MIN_CALL_BUDGET);
        for pending in expired {
            let _ = pending.reply_tx.send(Err(CallResult::TimedOut));
        }
        let batch = live;
        if batch.is_empty() {
            continue;
        }
        let mut client = client.clone();
        tasks.spawn(async move {
            let _permit = permit;
            call_batch(&mut client, batch).await;
        });
    }
}

async fn call_batch(client: &mut PredictorClient<Channel>, batch: Vec<Pending>) {
    let deadline_at = batch
        .iter()
        .map(|p| p.deadline_at)
        .max()
        .unwrap_or_else(Instant::now);
    let mut rows = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    let traceparent = batch.first().and_then(|p| p.traceparent.clone());
    for pending in batch {
        rows.push(Row {
            features: pending.features,
        });
        replies.push(pending.reply_tx);
    }
    let expected = rows.len();
    let timeout = deadline_at.saturating_duration_since(Instant::now());
    let mut request = Request::new(PredictBatchRequest { rows, policy: 0 });
    request.set_timeout(timeout);
    concord::telemetry::insert_traceparent(request.metadata_mut(), traceparent.as_deref());
    let outcome = match tokio::time::timeout(timeout, client.predict_batch(request)).await {
        Ok(Ok(reply)) => {
            let predictions = reply.into_inner().predictions;
            if predictions.len() == expected {
                for (reply_tx, p) in replies.into_iter().zip(predictions) {
                    // The caller may have given up; that is fine.
                    let _ = reply_tx.send(Ok((p.label, p.probabilities)));
                }
                return;
            }
            CallResult::Failed(format!("answered {} of {expected} rows", predictions.len()))
        }
        Ok(Err(status)) => classify_status(&status),
        Err(_) => CallResult::TimedOut,
    };
    for reply_tx in replies {
        let _ = reply_tx.send(Err(outcome.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use concord::pb::predict::v1::{
        predictor_server::{Predictor, PredictorServer},
        GetModelInfoRequest, GetModelInfoResponse, PredictBatchResponse, PredictRequest,
        PredictResponse,
    };
    use tonic::{Response, Status};

    use super::*;
    use crate::fanout::{ask_all, Member};

    /// A node that answers every row with class 0 after `delay`, counting calls and rows.
    #[derive(Default)]
    struct Counting {
        delay: Duration,
        calls: Arc<AtomicUsize>,
        rows: Arc<AtomicUsize>,
    }

    #[tonic::async_trait]
    impl Predictor for Counting {
        async fn predict(
            &self,
            _: Request<PredictRequest>,
        ) -> Result<Response<PredictResponse>, Status> {
            Err(Status::unimplemented("batches only"))
        }

        async fn predict_batch(
            &self,
            request: Request<PredictBatchRequest>,
        ) -> Result<Response<PredictBatchResponse>, Status> {
            let rows = request.into_inner().rows.len();
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.rows.fetch_add(rows, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            let answer = PredictResponse {
                probabilities: vec![1.0, 0.0, 0.0],
                ..Default::default()
            };
            Ok(Response::new(PredictBatchResponse {
                predictions: vec![answer; rows],
            }))
        }

        async fn get_model_info(
            &self,
            _: Request<GetModelInfoRequest>,
        ) -> Result<Response<GetModelInfoResponse>, Status> {
            Ok(Response::new(GetModelInfoResponse::default()))
        }
    }

    /// Starts a counting node; returns a member for it and its counters.
    async fn counting_node(delay: Duration) -> (Member, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let node = Counting {
            delay,
            ..Default::default()
        };
        let (calls, rows) = (node.calls.clone(), node.rows.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PredictorServer::new(node))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (
            Member::new("n", addr.to_string(), &Tasks::new()).unwrap(),
            calls,
            rows,
        )
    }

    /// A lone request is sent at once as a batch of one.
    #[tokio::test]
    async fn lone_request_is_a_batch_of_one() {
        let (member, calls, rows) = counting_node(Duration::ZERO).await;
        let answers = ask_all(&[member], &[1.0; 4], Duration::from_secs(1)).await;
        assert!(matches!(
            answers[0].result,
            CallResult::Answered { label: 0, .. }
        ));
        assert_eq!(
            (calls.load(Ordering::SeqCst), rows.load(Ordering::SeqCst)),
            (1, 1)
        );
    }

    /// Concurrent requests share batch calls; every one gets its own answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_are_coalesced() {
        let (member, calls, rows) = counting_node(Duration::from_millis(20)).await;
        let members = [member];
        let requests = (0..200).map(|_| ask_all(&members, &[1.0; 4], Duration::from_secs(2)));
        let answers = futures::future::join_all(requests).await;
        assert!(answers
            .iter()
            .all(|a| matches!(a[0].result, CallResult::Answered { .. })));
        assert_eq!(rows.load(Ordering::SeqCst), 200);
        let calls = calls.load(Ordering::SeqCst);
        assert!(calls < 50, "{calls} calls for 200 requests");
    }

    /// A node slower than the deadline times out for the caller on time, and its batch
    /// calls stay bounded instead of piling up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_node_times_out_with_bounded_calls() {
        let (member, calls, _) = counting_node(Duration::from_secs(5)).await;
        let members = [member];
        let deadline = Duration::from_millis(100);
        let start = Instant::now();
        let requests = (0..100).map(|_| ask_all(&members, &[1.0; 4], deadline));
        let answers = futures::future::join_all(requests).await;
        assert!(start.elapsed() < deadline + Duration::from_millis(400));
        assert!(answers.iter().all(|a| a[0].result == CallResult::TimedOut));
        // At most MAX_IN_FLIGHT_BATCHES calls at once; when they time out, rows queued
        // behind them that still have time left (they were submitted a little later) may
        // go out in one more wave, each call carrying every queued row. Rows past their
        // deadline are never sent. Without the bound this would be ~100 calls.
        let calls = calls.load(Ordering::SeqCst);
        assert!(
            calls <= 2 * MAX_IN_FLIGHT_BATCHES,
            "{calls} batch calls for 100 requests to a stuck node"
        );
    }
}

//! `GET /api/events`: server-sent events that keep the UI live without polling.
//!
//! Two kinds of event, merged into one stream:
//! - `cluster` (JSON [`ClusterStatus`]): sent at once, then whenever the registry `Watch` of
//!   "shop", "aggregator" or "predictor" reports a change, and at least every
//!   `cluster_refresh` so replication lag stays current.
//! - `ledger` (JSON [`LedgerEvent`], the ledger's `Event` message, SSE id = its `seq`): the aggregator's
//!   `Staking.WatchEvents`, starting after `?after_seq=` or the browser's `Last-Event-ID`
//!   (so a reconnecting `EventSource` resumes without gaps or repeats). When the aggregator
//!   goes away the stream is reopened with capped backoff from the last seq seen, on
//!   whichever aggregator the registry then lists.
//!
//! The response is a pull-based stream, so it is bounded by construction: nothing is
//! produced faster than the client reads. It ends when the client goes away (hyper drops
//! the body, which drops the gRPC stream with it) and when the server shuts down. A comment
//! line every [`KEEP_ALIVE`] keeps proxies from closing it and notices a dead client.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::HeaderMap,
    response::sse::{Event, KeepAlive, Sse},
};
use concord::pb::stake::v1::{
    staking_client::StakingClient, Event as LedgerEvent, WatchEventsRequest, WatchEventsResponse,
};
use concord::retry::{Backoff, RetryPolicy};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::time::MissedTickBehavior;
use tonic::Streaming;
use utoipa::IntoParams;

use crate::{
    backends::Backends, dto::ClusterStatus, error::ErrorBody, extract::ApiQuery, routes::cluster,
    state::AppState,
};

/// Interval of SSE keep-alive comments.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// How a broken ledger stream is reopened: after 200 ms, doubling to 2 s.
const RETRY: RetryPolicy = RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(2));

/// Query of `GET /api/events`.
#[derive(Debug, Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Send ledger events with seq greater than this (0: the whole ledger, then live ones).
    #[serde(default)]
    pub after_seq: u64,
}

/// Streams `cluster` and `ledger` events until the client leaves or the server stops.
#[utoipa::path(get, path = "/api/events", tag = "cluster", params(EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this ledger seq")),
    responses((status = 200, content_type = "text/event-stream",
        description = "`cluster` events carry a ClusterStatus, `ledger` events a LedgerEvent", body = String),
        (status = "4XX", body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let after_seq = resume.unwrap_or(query.after_seq);
    tracing::debug!(after_seq, "event stream opened");
    let stream = futures::stream::select(
        cluster_events(state.clone()),
        ledger_events(state.backends.clone(), after_seq),
    )
    .map(Ok)
    .take_until(state.shutdown.clone().cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// A `cluster` event now, then on every watched change and every refresh tick.
fn cluster_events(state: AppState) -> impl Stream<Item = Event> {
    let [(_, shop_rx), (_, aggregator_rx), (_, predictor_rx)] = state.backends.watches();
    let mut tick = tokio::time::interval(state.cluster_refresh);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let watches = (shop_rx, aggregator_rx, predictor_rx);
    futures::stream::unfold(
        (state, watches, tick),
        |(state, mut w, mut tick)| async move {
            // The first tick completes at once, so the client gets a view immediately.
            tokio::select! {
                _ = tick.tick() => {}
                Ok(()) = w.0.changed() => {}
                Ok(()) = w.1.changed() => {}
                Ok(()) = w.2.changed() => {}
            }
            let status: ClusterStatus = cluster::snapshot(&state.backends).await;
            let event = json_event("cluster", &status);
            Some((event, (state, w, tick)))
        },
    )
}

/// Where the ledger follower stands.
struct LedgerFollower {
    backends: Arc<Backends>,
    after_seq: u64,
    stream: Option<Streaming<WatchEventsResponse>>,
    backoff: Backoff,
}

impl LedgerFollower {
    /// The next ledger event, reconnecting (with backoff) as often as needed.
    async fn next(&mut self) -> LedgerEvent {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                self.stream = self.open().await;
                if self.stream.is_none() {
                    self.backoff.wait().await;
                }
                continue;
            };
            match stream.message().await {
                Ok(Some(WatchEventsResponse { event: Some(event) })) => {
                    self.backoff.reset();
                    if event.seq > self.after_seq {
                        self.after_seq = event.seq;
                        return event;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::debug!("ledger stream ended; reopening");
                    self.stream = None;
                }
                Err(status) => {
                    tracing::debug!(%status, "ledger stream failed; reopening");
                    self.stream = None;
                    self.backoff.wait().await;
                }
            }
        }
    }

    /// Opens `WatchEvents` on the first aggregator that accepts it.
    async fn open(&self) -> Option<Streaming<WatchEventsResponse>> {
        for addr in self.backends.aggregator_candidates() {
            let Ok(channel) = self.backends.channel(crate::backends::AGGREGATOR, &addr) else {
                continue;
            };
            let request = WatchEventsRequest {
                after_seq: self.after_seq,
            };
            match StakingClient::new(channel).watch_events(request).await {
                Ok(reply) => {
                    tracing::debug!(%addr, after_seq = self.after_seq, "following the ledger");
                    return Some(reply.into_inner());
                }
                Err(status) => tracing::debug!(%addr, %status, "cannot watch the ledger"),
            }
        }
        None
    }
}

/// `ledger` events after `after_seq`, for as long as the stream is polled.
fn ledger_events(backends: Arc<Backends>, after_seq: u64) -> impl Stream<Item = Event> {
    let follower = LedgerFollower {
        backends,
        after_seq,
        stream: None,
        backoff: RETRY.backoff(),
    };
    futures::stream::unfold(follower, |mut follower| async move {
        let event = follower.next().await;
        let sse = json_event("ledger", &event).id(event.seq.to_string());
        Some((sse, follower))
    })
}

/// An SSE event named `name` with `data` as JSON.
fn json_event<T: serde::Serialize>(name: &str, data: &T) -> Event {
    match serde_json::to_string(data) {
        Ok(json) => Event::default().event(name).data(json),
        Err(err) => {
            tracing::error!(%err, name, "cannot serialise event");
            Event::default().event("error").data(err.to_string())
        }
    }
}

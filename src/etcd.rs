//! A minimal etcd v3 client over etcd's own gRPC API, for the registry's etcd store.
//!
//! Why our own: the `etcd-client` crate runs `protoc` in its build script, and this
//! workspace builds without a system `protoc`. So `proto/etcd/` declares the wire-compatible
//! subset of etcd's API Concord uses, `build.rs` compiles a client for it with `protox`,
//! and this module wraps the handful of calls the registry needs: grant / keep alive /
//! revoke a lease, range by prefix, a compare-and-swap transaction, watch a prefix.
//!
//! **Several endpoints.** [`Etcd`] takes every member's address. A call goes to the member
//! that answered last; when that member does not answer within [`MEMBER_TIMEOUT`] or answers
//! `UNAVAILABLE` (down, cut off, no leader), the call moves on to the next member, once
//! around the list. etcd itself makes every write and every (default, linearizable) read
//! agree on all members, so which member answers does not matter for correctness. The
//! timeout is short because a member that is cut off says nothing: while the client waits
//! on it, the leader keeps counting every lease down (a 2 s timeout let 2 s leases lapse
//! when the member the registries used was a follower cut off from the rest). A watch
//! follows the calls: when they move to another member, the watch is ended so that its
//! owner reopens it there, since a member that cannot be reached cannot say it lost its
//! leader either.
//!
//! **Retries and idempotence.** A call that timed out may have been applied. Range, lease
//! keep-alive and revoke are safe to repeat; a [`Etcd::txn`] is repeated only because the
//! callers' transactions compare a revision first, so a repeat of an applied one fails its
//! compare instead of applying twice; a repeated grant leaves an unused lease that expires
//! after its TTL.
//!
//! Non-goals: TLS and authentication towards etcd (run etcd on loopback or a private
//! network), auto-sync of the member list, leases longer-lived than one keep-alive call.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{transport::Channel, Code, Status};

/// The generated etcd stubs (client only).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    /// `etcdserverpb`: the KV, Lease and Watch services.
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    /// `mvccpb`: key-values and watch events.
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
}

use pb::etcdserverpb::{
    compare, kv_client::KvClient, lease_client::LeaseClient, request_op, watch_client::WatchClient,
    watch_request, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
pub use pb::mvccpb::KeyValue;

/// How long one attempt of a call to one member may take before the next member is tried:
/// far above a healthy member's answer (milliseconds, an fsync included), far below the
/// registry's shortest lease (1 s), so that a silent member costs a lease renewal
/// one attempt, not the lease.
pub const MEMBER_TIMEOUT: Duration = Duration::from_millis(400);
/// How long dialling a member may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Metadata asking a member to end a watch when it loses its leader (etcd's
/// `WithRequireLeader`): a member cut off from the majority then says so instead of
/// going silent.
const REQUIRE_LEADER_KEY: &str = "hasleader";

/// An etcd lease id.
pub type LeaseId = i64;

/// Why an etcd call failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// An endpoint is not a usable address.
    #[error("etcd endpoint {endpoint:?} is not host:port: {reason}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No member answered (all down, cut off, or without a leader).
    #[error("etcd is unavailable: {0}")]
    Unavailable(String),
    /// A member answered with an error that another member would repeat.
    #[error("etcd refused the call: {0}")]
    Refused(String),
}

/// The keys of a range read and the store revision they were read at.
#[derive(Clone, Debug, Default)]
pub struct Range {
    /// The store revision of the read.
    pub revision: i64,
    /// The keys, in key order.
    pub kvs: Vec<KeyValue>,
}

/// A client of one etcd cluster; cheap to clone.
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every member: its address and a lazy channel to it.
    members: Vec<(String, Channel)>,
    /// The member that answered last; watches end when it changes.
    current: watch::Sender<usize>,
}

impl Etcd {
    /// A client of the members at `endpoints` (`host:port`, or `http://host:port`); dials
    /// lazily, so a member that is down now is only skipped.
    pub fn connect(endpoints: &[String]) -> Result<Self, EtcdError> {
        if endpoints.is_empty() {
            return Err(EtcdError::Endpoint {
                endpoint: String::new(),
                reason: "no endpoints".into(),
            });
        }
        let mut members = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let url = if endpoint.contains("://") {
                endpoint.clone()
            } else {
                format!("http://{endpoint}")
            };
            let channel = Channel::from_shared(url)
                .map_err(|err| EtcdError::Endpoint {
                    endpoint: endpoint.clone(),
                    reason: err.to_string(),
                })?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .connect_lazy();
            members.push((endpoint.clone(), channel));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                members,
                current: watch::Sender::new(0),
            }),
        })
    }

    /// The member addresses, as given.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.members.iter().map(|(a, _)| a.clone()).collect()
    }

    /// Runs `call` on the current member, moving on to the next one while members time
    /// out or are unavailable (module docs, "Several endpoints").
    async fn call<T, F, Fut>(&self, what: &str, call: F) -> Result<T, EtcdError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        Ok(self.call_member(what, call).await?.0)
    }

    /// [`Self::call`], also saying which member answered.
    async fn call_member<T, F, Fut>(&self, what: &str, call: F) -> Result<(T, usize), EtcdError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let members = &self.inner.members;
        let start = *self.inner.current.borrow();
        let mut last = String::new();
        for step in 0..members.len() {
            let index = (start + step) % members.len();
            let (addr, channel) = &members[index];
            match tokio::time::timeout(MEMBER_TIMEOUT, call(channel.clone())).await {
                Ok(Ok(answer)) => {
                    self.inner
                        .current
                        .send_if_modified(|current| std::mem::replace(current, index) != index);
                    return Ok((answer, index));
                }
                Ok(Err(status)) if !is_retryable(&status) => {
                    return Err(EtcdError::Refused(format!(
                        "{what} at {addr}: {}",
                        status.message()
                    )));
                }
                Ok(Err(status)) => {
                    tracing::debug!(member = %addr, %what, %status, "etcd member failed; trying the next");
                    last = format!("{what} at {addr}: {}", status.message());
                }
                Err(_) => {
                    tracing::debug!(member = %addr, %what, "etcd member timed out; trying the next");
                    last = format!("{what} at {addr}: no answer within {MEMBER_TIMEOUT:?}");
                }
            }
        }
        Err(EtcdError::Unavailable(last))
    }

    /// Creates a lease of at least `ttl` (etcd counts whole seconds and may raise it to its
    /// minimum); returns its id and the TTL granted.
    pub async fn grant(&self, ttl: Duration) -> Result<(LeaseId, Duration), EtcdError> {
        let seconds = i64::try_from(ttl.as_millis().div_ceil(1000)).unwrap_or(i64::MAX);
        let reply = self
            .call("LeaseGrant", |channel| async move {
                LeaseClient::new(channel)
                    .lease_grant(LeaseGrantRequest {
                        ttl: seconds,
                        id: 0,
                    })
                    .await
            })
            .await?
            .into_inner();
        if !reply.error.is_empty() {
            return Err(EtcdError::Refused(format!("LeaseGrant: {}", reply.error)));
        }
        Ok((reply.id, seconds_to_duration(reply.ttl)))
    }

    /// Renews lease `id` once; `None` when the lease is gone (expired or revoked), else the
    /// TTL it has again.
    pub async fn keep_alive_once(&self, id: LeaseId) -> Result<Option<Duration>, EtcdError> {
        let reply = self
            .call("LeaseKeepAlive", |channel| async move {
                let request = tokio_stream::iter([LeaseKeepAliveRequest { id }]);
                let mut replies = LeaseClient::new(channel)
                    .lease_keep_alive(request)
                    .await?
                    .into_inner();
                replies
                    .message()
                    .await?
                    .ok_or_else(|| Status::unavailable("keep-alive stream ended without an answer"))
            })
            .await?;
        Ok((reply.ttl > 0).then(|| seconds_to_duration(reply.ttl)))
    }

    /// Ends lease `id` now, deleting its keys; a lease already gone is fine.
    pub async fn revoke(&self, id: LeaseId) -> Result<(), EtcdError> {
        let result = self
            .call("LeaseRevoke", |channel| async move {
                LeaseClient::new(channel)
                    .lease_revoke(LeaseRevokeRequest { id })
                    .await
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(EtcdError::Refused(message)) if message.contains("lease not found") => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Every key starting with `prefix`, read linearizably.
    pub async fn range_prefix(&self, prefix: &[u8]) -> Result<Range, EtcdError> {
        let request = RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            ..Default::default()
        };
        self.range(request).await
    }

    /// The key `key` (if present), read linearizably.
    pub async fn get(&self, key: &[u8]) -> Result<(i64, Option<KeyValue>), EtcdError> {
        let range = self
            .range(RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })
            .await?;
        Ok((range.revision, range.kvs.into_iter().next()))
    }

    async fn range(&self, request: RangeRequest) -> Result<Range, EtcdError> {
        let reply = self
            .call("Range", |channel| {
                let request = request.clone();
                async move { KvClient::new(channel).range(request).await }
            })
            .await?
            .into_inner();
        Ok(Range {
            revision: reply.header.map_or(0, |h| h.revision),
            kvs: reply.kvs,
        })
    }

    /// Runs a transaction (see [`txn`] for building one).
    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, EtcdError> {
        Ok(self
            .call("Txn", |channel| {
                let request = request.clone();
                async move { KvClient::new(channel).txn(request).await }
            })
            .await?
            .into_inner())
    }

    /// Opens a watch on every key starting with `prefix`, reporting changes from
    /// `start_revision` on (0 = from now). The member ends the watch if it loses its leader.
    pub async fn watch_prefix(
        &self,
        prefix: &[u8],
        start_revision: i64,
    ) -> Result<WatchStream, EtcdError> {
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: prefix.to_vec(),
                    range_end: prefix_end(prefix),
                    start_revision,
                    progress_notify: false,
                    prev_kv: false,
                },
            )),
        };
        let ((requests_tx, replies), member) = self
            .call_member("Watch", |channel| {
                let create = create.clone();
                async move {
                    // The request side stays open as long as the stream lives: etcd may end
                    // a watch whose client closed its side.
                    let (requests_tx, requests_rx) = mpsc::channel(1);
                    requests_tx
                        .send(create)
                        .await
                        .map_err(|_| Status::internal("watch request channel closed"))?;
                    let mut request = tonic::Request::new(ReceiverStream::new(requests_rx));
                    request
                        .metadata_mut()
                        .insert(REQUIRE_LEADER_KEY, "true".parse().expect("ascii"));
                    let mut replies = WatchClient::new(channel).watch(request).await?.into_inner();
                    let created = replies
                        .message()
                        .await?
                        .ok_or_else(|| Status::unavailable("watch ended before it was created"))?;
                    if !created.created || created.canceled {
                        return Err(Status::failed_precondition(format!(
                            "watch not created: {} (compacted to {})",
                            created.cancel_reason, created.compact_revision
                        )));
                    }
                    Ok((requests_tx, replies))
                }
            })
            .await?;
        Ok(WatchStream {
            _requests_tx: requests_tx,
            replies,
            member,
            current: self.inner.current.subscribe(),
        })
    }
}

/// An open etcd watch.
pub struct WatchStream {
    /// Kept so that the request side of the stream stays open.
    _requests_tx: mpsc::Sender<WatchRequest>,
    replies: tonic::Streaming<WatchResponse>,
    /// The member the watch is open on.
    member: usize,
    /// The member the client's calls go to.
    current: watch::Receiver<usize>,
}

impl WatchStream {
    /// The position, in the client's endpoint list, of the member the watch is open on.
    pub fn member(&self) -> usize {
        self.member
    }

    /// The next batch of changes; `Ok(None)` or an error when the watch ended (the member
    /// went away, lost its leader, or cancelled it, or the client's calls moved to another
    /// member), after which the caller opens a new one.
    pub async fn next(&mut self) -> Result<Option<WatchResponse>, EtcdError> {
        let member = self.member;
        let reply = tokio::select! {
            reply = self.replies.message() => reply,
            moved = self.current.wait_for(|current| *current != member) => {
                return Err(EtcdError::Unavailable(match moved {
                    Ok(_) => "the client moved to another member".to_owned(),
                    Err(_) => "the client was dropped".to_owned(),
                }));
            }
        };
        match reply {
            Ok(Some(reply)) if reply.canceled => Err(EtcdError::Unavailable(format!(
                "watch cancelled: {}",
                reply.cancel_reason
            ))),
            Ok(reply) => Ok(reply),
            Err(status) => Err(EtcdError::Unavailable(status.message().to_owned())),
        }
    }
}

/// One member of an etcd cluster run on this host (by tests and `concord up
/// --control-plane etcd`).
#[derive(Clone, Debug)]
pub struct LocalMember {
    /// The member's name, unique in its cluster.
    pub name: String,
    /// Where clients reach it.
    pub client: std::net::SocketAddr,
    /// Where the other members reach it.
    pub peer: std::net::SocketAddr,
}

/// etcd's timing for a local cluster: a 50 ms heartbeat and a 500 ms election timeout, so
/// a leader is elected in well under a second and etcd's shortest lease (1.5 × the election
/// timeout) is under the registry's shortest TTL (1 s).
pub const LOCAL_HEARTBEAT_MS: u64 = 50;
/// See [`LOCAL_HEARTBEAT_MS`].
pub const LOCAL_ELECTION_TIMEOUT_MS: u64 = 500;

/// The `etcd` (3.4+) arguments that start `member` of the new cluster `all` (of which only
/// names and peer addresses are read), with its data in `data_dir`.
pub fn local_member_args(
    member: &LocalMember,
    all: &[LocalMember],
    data_dir: &std::path::Path,
) -> Vec<String> {
    let initial_cluster = all
        .iter()
        .map(|m| format!("{}=http://{}", m.name, m.peer))
        .collect::<Vec<_>>()
        .join(",");
    let cluster_token = format!("concord-{}", all[0].peer.port());
    [
        ("--name", member.name.clone()),
        ("--data-dir", data_dir.display().to_string()),
        ("--listen-client-urls", format!("http://{}", member.client)),
        (
            "--advertise-client-urls",
            format!("http://{}", member.client),
        ),
        ("--listen-peer-urls", format!("http://{}", member.peer)),
        (
            "--initial-advertise-peer-urls",
            format!("http://{}", member.peer),
        ),
        ("--initial-cluster", initial_cluster),
        ("--initial-cluster-state", "new".to_owned()),
        ("--initial-cluster-token", cluster_token),
        ("--heartbeat-interval", LOCAL_HEARTBEAT_MS.to_string()),
        ("--election-timeout", LOCAL_ELECTION_TIMEOUT_MS.to_string()),
        ("--logger", "zap".to_owned()),
        ("--log-level", "warn".to_owned()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_owned(), value])
    // A member back from a partition asks before it disrupts the leader with a higher term
    // (etcd 3.5's default; 3.4 needs the flag, and Go's boolean flags take `=`).
    .chain(["--pre-vote=true".to_owned()])
    .collect()
}

/// Builders for transaction parts.
pub mod txn {
    use super::*;

    /// Holds when `key`'s mod revision is `revision` (0: the key does not exist).
    pub fn mod_revision_is(key: &[u8], revision: i64) -> Compare {
        Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: key.to_vec(),
            target_union: Some(compare::TargetUnion::ModRevision(revision)),
            range_end: Vec::new(),
        }
    }

    /// Writes `value` at `key`, attached to `lease` (0 = none).
    pub fn put(key: &[u8], value: Vec<u8>, lease: LeaseId) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.to_vec(),
                value,
                lease,
                prev_kv: false,
            })),
        }
    }

    /// Deletes `key`.
    pub fn delete(key: &[u8]) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: key.to_vec(),
                    range_end: Vec::new(),
                    prev_kv: false,
                },
            )),
        }
    }

    /// If every `compare` holds, run `success`; otherwise nothing.
    pub fn when(compare: Vec<Compare>, success: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare,
            success,
            failure: Vec::new(),
        }
    }
}

/// The end of the range of keys starting with `prefix` (etcd's "prefix end": the prefix
/// with its last byte below 0xff incremented).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff (or no prefix): to the end of the key space.
    vec![0]
}

/// Whether another member may answer a call that failed with `status`.
fn is_retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
    )
}

fn seconds_to_duration(seconds: i64) -> Duration {
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prefix end increments the last byte below 0xff and drops trailing 0xff bytes.
    #[test]
    fn prefix_end_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a", b"b"),
            (b"/concord/", b"/concord0"),
            (&[b'a', 0xff], b"b"),
            (&[0xff, 0xff], &[0]),
            (b"", &[0]),
        ];
        for (prefix, want) in cases {
            assert_eq!(prefix_end(prefix), *want, "{prefix:?}");
        }
    }

    /// Bad endpoints are refused when the client is made, not at the first call.
    #[tokio::test]
    async fn endpoints_are_checked() {
        assert!(Etcd::connect(&[]).is_err());
        assert!(Etcd::connect(&["bad host:1".to_owned()]).is_err());
        let etcd = Etcd::connect(&["127.0.0.1:2379".to_owned(), "127.0.0.1:2380".to_owned()])
            .expect("two members");
        assert_eq!(etcd.endpoints().len(), 2);
    }
}

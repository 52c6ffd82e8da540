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
//! **Security of the link** ([`EtcdSecurity`]). Whoever can write to etcd can write primary
//! claims and terms directly, past every identity check the registry makes, so a
//! production etcd requires client certificates (`--client-cert-auth`) and/or users
//! (`--auth`), and serves TLS. With [`EtcdTls`] every member is dialled over `https://`
//! (rustls, through tonic, as our own links in `crate::tls`), its certificate checked
//! against the CA given (etcd's CA, which need not be Concord's), and our client
//! certificate presented when given. With [`EtcdAuth`] the client calls etcd's
//! `Auth.Authenticate` on a member the first time it talks to it and sends the token it got
//! in the `token` metadata of every call; a token etcd no longer accepts (expired: "simple"
//! tokens live 5 minutes by default, or the member restarted) is dropped, a new one asked
//! for and the call repeated once. Tokens are kept per member, since etcd's default "simple"
//! tokens are valid only on the member that issued them. A TLS setting with a plain
//! `http://` endpoint, or an `https://` endpoint without one, is refused at start-up rather
//! than half-secured. `concord up --control-plane etcd` runs its members with client and
//! peer TLS and client-certificate authentication, the registries presenting their own
//! Concord certificates.
//!
//! Non-goals: auto-sync of the member list, leases longer-lived than one keep-alive call,
//! reloading certificates or passwords without a restart.

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    metadata::AsciiMetadataValue,
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
    Code, Status,
};

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
    auth_client::AuthClient, compare, kv_client::KvClient, lease_client::LeaseClient, request_op,
    watch_client::WatchClient, watch_request, AuthenticateRequest, Compare, DeleteRangeRequest,
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest, WatchResponse,
};
pub use pb::mvccpb::KeyValue;

/// How long one attempt of a call to one member may take before the next member is tried:
/// far above a healthy member's answer (milliseconds, an fsync included), far below the
/// registry's shortest lease (1 s), so that a silent member costs a lease renewal
/// one attempt, not the lease.
pub const MEMBER_TIMEOUT: Duration = Duration::from_millis(400);
/// How long asking a member for an auth token may take: etcd checks the password with
/// bcrypt, far slower than a call (tens to hundreds of milliseconds on a loaded host). A
/// token is asked for once per member and kept (etcd's default tokens live on while used),
/// so this is paid on the first call to a member, not on every call.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long dialling a member may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Metadata asking a member to end a watch when it loses its leader (etcd's
/// `WithRequireLeader`): a member cut off from the majority then says so instead of
/// going silent.
const REQUIRE_LEADER_KEY: &str = "hasleader";

/// Metadata carrying an etcd auth token (etcd's `rpctypes.TokenFieldNameGRPC`).
const TOKEN_KEY: &str = "token";

/// An etcd lease id.
pub type LeaseId = i64;

/// How a client checks etcd and proves itself to it (module docs, "Security of the link").
#[derive(Clone, Debug, Default)]
pub struct EtcdSecurity {
    /// TLS towards every member (`https://`); plaintext without.
    pub tls: Option<EtcdTls>,
    /// An etcd user to authenticate as.
    pub auth: Option<EtcdAuth>,
}

/// TLS towards etcd: the CA etcd's certificates chain to, and our client certificate.
#[derive(Clone)]
pub struct EtcdTls {
    ca: Certificate,
    identity: Option<Identity>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl EtcdTls {
    /// Reads and checks PEM files: the CA, and optionally our certificate and its key
    /// (both or neither).
    pub fn load(ca: &Path, client: Option<(&Path, &Path)>) -> Result<Self, EtcdError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|err| {
                EtcdError::Security(format!("cannot read {}: {err}", path.display()))
            })
        };
        let client = match client {
            Some((cert, key)) => Some((read(cert)?, read(key)?)),
            None => None,
        };
        Self::from_pem(
            &read(ca)?,
            client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        )
    }

    /// The same from PEM bytes.
    pub fn from_pem(ca_pem: &[u8], client: Option<(&[u8], &[u8])>) -> Result<Self, EtcdError> {
        crate::tls::ensure_crypto_provider();
        let bad = |what: &str| EtcdError::Security(what.to_owned());
        let cas = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| bad(&format!("the etcd CA is not PEM: {err}")))?;
        if cas.is_empty() {
            return Err(bad("the etcd CA file holds no certificate"));
        }
        let identity = match client {
            Some((cert_pem, key_pem)) => {
                let certs = CertificateDer::pem_slice_iter(cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| {
                        bad(&format!("the etcd client certificate is not PEM: {err}"))
                    })?;
                let key = PrivateKeyDer::from_pem_slice(key_pem)
                    .map_err(|err| bad(&format!("the etcd client key is not a PEM key: {err}")))?;
                // Fails when the key is not the certificate's.
                rustls::ServerConfig::builder()
                    .with_no_client_auth()
                    .with_single_cert(certs, key)
                    .map_err(|err| {
                        bad(&format!(
                            "the etcd client key does not fit its certificate: {err}"
                        ))
                    })?;
                Some(Identity::from_pem(cert_pem, key_pem))
            }
            None => None,
        };
        Ok(Self {
            ca: Certificate::from_pem(ca_pem),
            identity,
        })
    }

    fn client_config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .timeout(crate::tls::HANDSHAKE_TIMEOUT);
        match &self.identity {
            Some(identity) => config.identity(identity.clone()),
            None => config,
        }
    }
}

/// An etcd user and its password (never logged).
#[derive(Clone)]
pub struct EtcdAuth {
    /// The etcd user.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAuth")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl EtcdAuth {
    /// `user` with the password in the file `password_file` (one line; the trailing line
    /// break is not part of it).
    pub fn from_file(user: &str, password_file: &Path) -> Result<Self, EtcdError> {
        let password = std::fs::read_to_string(password_file).map_err(|err| {
            EtcdError::Security(format!(
                "cannot read the etcd password file {}: {err}",
                password_file.display()
            ))
        })?;
        let password = password.trim_end_matches(['\r', '\n']).to_owned();
        if user.is_empty() || password.is_empty() {
            return Err(EtcdError::Security(
                "the etcd user and password must not be empty".into(),
            ));
        }
        Ok(Self {
            user: user.to_owned(),
            password,
        })
    }
}

/// What one call gets to reach a member: the channel, and the auth token to send.
#[derive(Clone)]
pub struct Conn {
    channel: Channel,
    token: Option<AsciiMetadataValue>,
}

impl Interceptor for Conn {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.token {
            request.metadata_mut().insert(TOKEN_KEY, token.clone());
        }
        Ok(request)
    }
}

impl Conn {
    /// The channel with the token attached to every request.
    fn service(self) -> InterceptedService<Channel, Conn> {
        InterceptedService::new(self.channel.clone(), self)
    }
}

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
    /// The TLS or auth settings are unusable, or etcd refused our credentials.
    #[error("etcd security: {0}")]
    Security(String),
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
    /// The user to authenticate as, if any.
    auth: Option<EtcdAuth>,
    /// Each member's auth token, once it gave one.
    tokens: Vec<Mutex<Option<AsciiMetadataValue>>>,
}

impl Etcd {
    /// A client of the members at `endpoints` (`host:port`, or `http://host:port`); dials
    /// lazily, so a member that is down now is only skipped.
    pub fn connect(endpoints: &[String]) -> Result<Self, EtcdError> {
        Self::connect_with(endpoints, &EtcdSecurity::default())
    }

    /// The same, with TLS and/or a user (module docs, "Security of the link"); `host:port`
    /// endpoints get `https://` when `security` has TLS.
    pub fn connect_with(endpoints: &[String], security: &EtcdSecurity) -> Result<Self, EtcdError> {
        if endpoints.is_empty() {
            return Err(EtcdError::Endpoint {
                endpoint: String::new(),
                reason: "no endpoints".into(),
            });
        }
        let mut members = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let bad = |reason: String| EtcdError::Endpoint {
                endpoint: endpoint.clone(),
                reason,
            };
            let url = match (endpoint.split_once("://"), &security.tls) {
                (None, None) => format!("http://{endpoint}"),
                (None, Some(_)) => format!("https://{endpoint}"),
                (Some(("http", _)), None) | (Some(("https", _)), Some(_)) => endpoint.clone(),
                (Some(("http", _)), Some(_)) => {
                    return Err(bad("http:// while etcd TLS is configured".into()))
                }
                (Some(("https", _)), None) => {
                    return Err(bad("https:// needs the etcd CA (--etcd-ca)".into()))
                }
                (Some((scheme, _)), _) => return Err(bad(format!("unknown scheme {scheme}"))),
            };
            let mut channel = Channel::from_shared(url).map_err(|err| bad(err.to_string()))?;
            if let Some(tls) = &security.tls {
                channel = channel
                    .tls_config(tls.client_config())
                    .map_err(|err| bad(err.to_string()))?;
            }
            let channel = channel
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .connect_lazy();
            members.push((endpoint.clone(), channel));
        }
        let tokens = members.iter().map(|_| Mutex::new(None)).collect();
        Ok(Self {
            inner: Arc::new(Inner {
                members,
                current: watch::Sender::new(0),
                auth: security.auth.clone(),
                tokens,
            }),
        })
    }

    /// What a call to member `index` needs: its channel and, with a user, its token (asked
    /// for first when there is none).
    async fn conn(&self, index: usize) -> Result<Conn, Status> {
        let channel = self.inner.members[index].1.clone();
        let Some(auth) = &self.inner.auth else {
            return Ok(Conn {
                channel,
                token: None,
            });
        };
        let cached = self.inner.tokens[index]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let token = match cached {
            Some(token) => token,
            None => {
                let reply = AuthClient::new(channel.clone())
                    .authenticate(AuthenticateRequest {
                        name: auth.user.clone(),
                        password: auth.password.clone(),
                    })
                    .await?
                    .into_inner();
                let token = AsciiMetadataValue::try_from(reply.token.as_str())
                    .map_err(|_| Status::internal("etcd gave a token that is not ASCII"))?;
                *self.inner.tokens[index]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(token.clone());
                token
            }
        };
        Ok(Conn {
            channel,
            token: Some(token),
        })
    }

    /// Forgets member `index`'s token (etcd no longer accepts it).
    fn forget_token(&self, index: usize) {
        *self.inner.tokens[index]
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The member addresses, as given.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.members.iter().map(|(a, _)| a.clone()).collect()
    }

    /// Runs `call` on the current member, moving on to the next one while members time
    /// out or are unavailable (module docs, "Several endpoints").
    async fn call<T, F, Fut>(&self, what: &str, call: F) -> Result<T, EtcdError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        Ok(self.call_member(what, call).await?.0)
    }

    /// One attempt of `call` on member `index`: dials with its token, and once more with
    /// a new token when etcd says the old one is no longer valid.
    async fn attempt<T, F, Fut>(&self, index: usize, call: &F) -> Option<Result<T, Status>>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let conn = match tokio::time::timeout(AUTH_TIMEOUT, self.conn(index)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(status)) => return Some(Err(status)),
            Err(_) => return None,
        };
        let result = tokio::time::timeout(MEMBER_TIMEOUT, call(conn))
            .await
            .ok()?;
        match result {
            Err(status) if self.inner.auth.is_some() && is_stale_token(&status) => {
                tracing::debug!(member = %self.inner.members[index].0, %status, "etcd token no longer valid; authenticating again");
                self.forget_token(index);
                let conn = match tokio::time::timeout(AUTH_TIMEOUT, self.conn(index)).await {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(status)) => return Some(Err(status)),
                    Err(_) => return None,
                };
                tokio::time::timeout(MEMBER_TIMEOUT, call(conn)).await.ok()
            }
            other => Some(other),
        }
    }

    /// [`Self::call`], also saying which member answered.
    async fn call_member<T, F, Fut>(&self, what: &str, call: F) -> Result<(T, usize), EtcdError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let members = &self.inner.members;
        let start = *self.inner.current.borrow();
        let mut last = String::new();
        for step in 0..members.len() {
            let index = (start + step) % members.len();
            let addr = &members[index].0;
            match self.attempt(index, &call).await {
                Some(Ok(answer)) => {
                    self.inner
                        .current
                        .send_if_modified(|current| std::mem::replace(current, index) != index);
                    return Ok((answer, index));
                }
                Some(Err(status)) if is_security(&status) => {
                    return Err(EtcdError::Security(format!(
                        "{what} at {addr}: {}",
                        status.message()
                    )));
                }
                Some(Err(status)) if !is_retryable(&status) => {
                    return Err(EtcdError::Refused(format!(
                        "{what} at {addr}: {}",
                        status.message()
                    )));
                }
                Some(Err(status)) => {
                    tracing::debug!(member = %addr, %what, %status, "etcd member failed; trying the next");
                    last = format!("{what} at {addr}: {}", status.message());
                }
                None => {
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
            .call("LeaseGrant", |conn| async move {
                LeaseClient::new(conn.service())
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
            .call("LeaseKeepAlive", |conn| async move {
                let request = tokio_stream::iter([LeaseKeepAliveRequest { id }]);
                let mut replies = LeaseClient::new(conn.service())
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
            .call("LeaseRevoke", |conn| async move {
                LeaseClient::new(conn.service())
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
            .call("Range", |conn| {
                let request = request.clone();
                async move { KvClient::new(conn.service()).range(request).await }
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
            .call("Txn", |conn| {
                let request = request.clone();
                async move { KvClient::new(conn.service()).txn(request).await }
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
            .call_member("Watch", |conn| {
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
                    let mut replies = WatchClient::new(conn.service())
                        .watch(request)
                        .await?
                        .into_inner();
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

/// How a local member secures its links ([`local_member_args_with`]): one certificate and
/// key serve it as server to clients and as server and client to its peers; clients and
/// peers must present a certificate of `ca` (etcd's `--client-cert-auth`,
/// `--peer-client-cert-auth`).
#[derive(Clone, Debug)]
pub struct MemberTls {
    /// The member's certificate (server and client use, naming its address).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The CA clients' and peers' certificates must chain to.
    pub ca: PathBuf,
}

/// The `etcd` (3.4+) arguments that start `member` of the new cluster `all` (of which only
/// names and peer addresses are read), with its data in `data_dir`; plaintext.
pub fn local_member_args(
    member: &LocalMember,
    all: &[LocalMember],
    data_dir: &std::path::Path,
) -> Vec<String> {
    local_member_args_with(member, all, data_dir, None, None)
}

/// The same, with `tls` on its client and peer links (every member of `all` must use
/// TLS too), and `/metrics` served in plaintext on `metrics` when given (so a Prometheus
/// scrape needs no client certificate).
pub fn local_member_args_with(
    member: &LocalMember,
    all: &[LocalMember],
    data_dir: &std::path::Path,
    tls: Option<&MemberTls>,
    metrics: Option<std::net::SocketAddr>,
) -> Vec<String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let initial_cluster = all
        .iter()
        .map(|m| format!("{}={scheme}://{}", m.name, m.peer))
        .collect::<Vec<_>>()
        .join(",");
    let cluster_token = format!("concord-{}", all[0].peer.port());
    let mut extra: Vec<(&str, String)> = Vec::new();
    if let Some(tls) = tls {
        let path = |p: &PathBuf| p.display().to_string();
        extra.extend([
            ("--cert-file", path(&tls.cert)),
            ("--key-file", path(&tls.key)),
            ("--trusted-ca-file", path(&tls.ca)),
            ("--peer-cert-file", path(&tls.cert)),
            ("--peer-key-file", path(&tls.key)),
            ("--peer-trusted-ca-file", path(&tls.ca)),
        ]);
    }
    if let Some(metrics) = metrics {
        extra.push(("--listen-metrics-urls", format!("http://{metrics}")));
    }
    let flags = if tls.is_some() {
        &[
            "--pre-vote=true",
            "--client-cert-auth=true",
            "--peer-client-cert-auth=true",
        ][..]
    } else {
        &["--pre-vote=true"][..]
    };
    [
        ("--name", member.name.clone()),
        ("--data-dir", data_dir.display().to_string()),
        (
            "--listen-client-urls",
            format!("{scheme}://{}", member.client),
        ),
        (
            "--advertise-client-urls",
            format!("{scheme}://{}", member.client),
        ),
        ("--listen-peer-urls", format!("{scheme}://{}", member.peer)),
        (
            "--initial-advertise-peer-urls",
            format!("{scheme}://{}", member.peer),
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
    .chain(extra)
    .flat_map(|(flag, value)| [flag.to_owned(), value])
    // A member back from a partition asks before it disrupts the leader with a higher term
    // (etcd 3.5's default; 3.4 needs the flag, and Go's boolean flags take `=`).
    .chain(flags.iter().map(|f| (*f).to_owned()))
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
/// Whether etcd refused the token sent (expired, or issued by a member that restarted, or
/// for an older auth store): a new one may be accepted.
fn is_stale_token(status: &Status) -> bool {
    status.code() == Code::Unauthenticated
        || status.message().contains("invalid auth token")
        || status.message().contains("revision of auth store is old")
}

/// Whether etcd refused who we are (bad user or password, no permission, a token still
/// refused after a fresh one): another member would say the same.
fn is_security(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unauthenticated | Code::PermissionDenied
    ) || status.message().contains("authentication failed")
        || status.message().contains("user name is empty")
}

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

    /// A half-secured link is refused at start-up: `https://` without a CA, `http://` with
    /// one, an unknown scheme, PEM that is not a certificate.
    #[tokio::test]
    async fn half_secured_endpoints_are_refused() {
        let ca = crate::tls::test::TestCa::new();
        let tls = EtcdSecurity {
            tls: Some(EtcdTls::from_pem(ca.pem.as_bytes(), None).expect("CA")),
            auth: None,
        };
        let plain = EtcdSecurity::default();
        assert!(Etcd::connect_with(&["https://127.0.0.1:2379".to_owned()], &plain).is_err());
        assert!(Etcd::connect_with(&["http://127.0.0.1:2379".to_owned()], &tls).is_err());
        assert!(Etcd::connect_with(&["ftp://127.0.0.1:2379".to_owned()], &tls).is_err());
        assert!(Etcd::connect_with(&["127.0.0.1:2379".to_owned()], &tls).is_ok());
        assert!(Etcd::connect_with(&["https://127.0.0.1:2379".to_owned()], &tls).is_ok());
        assert!(EtcdTls::from_pem(b"not a certificate", None).is_err());
        let other = crate::tls::test::TestCa::new().issue(&crate::identity::Principal::Registry);
        let mine = ca.issue(&crate::identity::Principal::Registry);
        assert!(
            EtcdTls::from_pem(
                ca.pem.as_bytes(),
                Some((mine.cert.as_bytes(), other.key.as_bytes()))
            )
            .is_err(),
            "a key that is not the certificate's"
        );
    }
}

//! The `concord.shop.v1.Replication` gRPC service: authenticates the peer, converts, and
//! hands over to the shipper or the [`Replicator`]. No replication logic lives here.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use concord::identity::{Principal, Verifier};
use concord::pb::shop::v1 as pb;
use concord::pb::shop::v1::replication_server::Replication;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::shipper::{read_acks, Outgoing};
use super::Replicator;

/// The `concord.shop.v1.Replication` service.
pub struct ReplicationService {
    rep: Arc<Replicator>,
    admin_token: String,
}

impl ReplicationService {
    /// A service over `rep`; `Promote` needs `admin_token`.
    pub fn new(rep: Arc<Replicator>, admin_token: String) -> Self {
        Self { rep, admin_token }
    }
}

type ReplicateStream =
    Pin<Box<dyn Stream<Item = std::result::Result<pb::ReplicateResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Replication for ReplicationService {
    type ReplicateStream = ReplicateStream;

    async fn replicate(
        &self,
        request: Request<tonic::Streaming<pb::ReplicateRequest>>,
    ) -> std::result::Result<Response<Self::ReplicateStream>, Status> {
        // Only a shop may read the WAL or ack writes: nothing is read or sent before this.
        let own = self.rep.must_credential().map_err(Status::from)?;
        let principal = concord::identity::authenticate(&request, &Verifier::Own(own.clone()))?;
        if principal != Principal::Shop {
            return Err(Status::permission_denied(format!(
                "{principal} may not replicate the shop; only a shop may"
            )));
        }
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::ReplicateRequest {
                kind: Some(pb::replicate_request::Kind::Hello(hello)),
            }) => hello,
            _ => {
                return Err(Status::invalid_argument(
                    "the first Replicate message must be Hello",
                ))
            }
        };
        crate::validate::replica_id(&hello.replica_id)?;
        let term = self.rep.store.term();
        if hello.term > term {
            // Our term is the one the registry accepted from us (writes need that). A
            // newer one counts only once the registry accepted it, and then the failover
            // watch steps us down; a peer's word is not enough.
            tracing::warn!(
                replica = %hello.replica_id,
                claimed = hello.term,
                term,
                "replica claims a term above ours; refusing the stream, not stepping down"
            );
            return Err(Status::failed_precondition(format!(
                "protocol error: the replica claims term {} above this primary's term {term}; \
                 a primary steps down only when the registry accepts a newer primary",
                hello.term
            )));
        }
        self.rep.check_writable()?;
        let generation = self.rep.stream_generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.rep.acks.open(generation);
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel();
        self.rep.spawn(read_acks(
            Arc::clone(&self.rep),
            inbound,
            generation,
            failed_tx,
        ));
        let outgoing = Outgoing::start(Arc::clone(&self.rep), hello, generation, failed_rx);
        let mut response = Response::new(Box::pin(outgoing) as Self::ReplicateStream);
        // The primary proves to the replica that it is a shop too (`follow_once`).
        own.attach_to(response.metadata_mut());
        Ok(response)
    }

    async fn get_replication_status(
        &self,
        _request: Request<pb::GetReplicationStatusRequest>,
    ) -> std::result::Result<Response<pb::GetReplicationStatusResponse>, Status> {
        Ok(Response::new(self.rep.status()?))
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> std::result::Result<Response<pb::PromoteResponse>, Status> {
        concord::auth::require_token(request.metadata(), &self.admin_token)
            .map_err(Status::from)?;
        let term = self.rep.promote(request.get_ref().expected_term).await?;
        Ok(Response::new(pb::PromoteResponse {
            role: pb::Role::Primary as i32,
            term,
            last_lsn: self.rep.store.last_lsn()?,
        }))
    }
}

//! A fake shop primary for replication attack tests.
//!
//! Why: a replica's defences — whom it listens to, which protocol breaks it refuses — are
//! only tested by a primary that sends what a real one never would. This one plays a
//! script of stream messages on each `Replicate` call, presents a chosen credential (or
//! none), counts the calls and records the replica's highest ack.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use concord::identity::Credential;
use concord::pb::shop::v1 as pb;
use concord::pb::shop::v1::replication_server::{Replication, ReplicationServer};
use pb::replicate_response::Kind;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// How long an [`Step::AwaitAck`] waits before the script gives up.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// One step of a fake primary's script.
#[derive(Debug, Clone)]
pub enum Step {
    /// Send this message.
    Send(Kind),
    /// Wait until the replica acked at least this LSN (on any stream).
    AwaitAck(u64),
}

/// A fake primary serving on 127.0.0.1 (shut down when dropped).
pub struct FakePrimary {
    /// Its address, as a replica's `--replica-of` takes it.
    pub addr: String,
    /// The highest LSN a replica acked.
    pub acked_rx: watch::Receiver<u64>,
    calls: Arc<AtomicUsize>,
    _server: crate::Running<tonic::transport::Error>,
}

impl FakePrimary {
    /// Serves on 127.0.0.1:0: its `n`th `Replicate` call plays `scripts[n]` (the last
    /// script on every later call) and then keeps the stream open, as a primary would;
    /// every response presents `credential`.
    pub async fn serve(credential: Option<Credential>, scripts: Vec<Vec<Step>>) -> FakePrimary {
        assert!(!scripts.is_empty(), "a fake primary needs a script");
        let calls = Arc::new(AtomicUsize::new(0));
        let acked_tx = Arc::new(watch::channel(0).0);
        let acked_rx = acked_tx.subscribe();
        let service = Scripted {
            scripts,
            credential,
            calls: Arc::clone(&calls),
            acked_tx,
        };
        let server = crate::Running::spawn(|listener, shutdown| {
            tonic::transport::Server::builder()
                .add_service(ReplicationServer::new(service))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    shutdown,
                )
        })
        .await;
        FakePrimary {
            addr: server.addr.to_string(),
            calls,
            acked_rx,
            _server: server,
        }
    }

    /// How many `Replicate` calls it answered so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

struct Scripted {
    scripts: Vec<Vec<Step>>,
    credential: Option<Credential>,
    calls: Arc<AtomicUsize>,
    acked_tx: Arc<watch::Sender<u64>>,
}

type ResponseStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::ReplicateResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl Replication for Scripted {
    type ReplicateStream = ResponseStream;

    async fn replicate(
        &self,
        request: Request<tonic::Streaming<pb::ReplicateRequest>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let mut inbound = request.into_inner();
        let acked_tx = Arc::clone(&self.acked_tx);
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                if let Some(pb::replicate_request::Kind::Ack(ack)) = message.kind {
                    acked_tx.send_modify(|acked| *acked = (*acked).max(ack.durable_lsn));
                }
            }
        });
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(16);
        let script = self.scripts[call.min(self.scripts.len() - 1)].clone();
        let mut acked_rx = self.acked_tx.subscribe();
        tokio::spawn(async move {
            for step in script {
                match step {
                    Step::Send(kind) => {
                        let message = pb::ReplicateResponse { kind: Some(kind) };
                        if out_tx.send(Ok(message)).await.is_err() {
                            return;
                        }
                    }
                    Step::AwaitAck(lsn) => {
                        let acked = acked_rx.wait_for(|acked| *acked >= lsn);
                        if tokio::time::timeout(ACK_WAIT, acked).await.is_err() {
                            return;
                        }
                    }
                }
            }
            // Keep the stream open, as a primary would, until the replica goes.
            out_tx.closed().await;
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(out_rx);
        let mut response = Response::new(Box::pin(stream) as ResponseStream);
        if let Some(credential) = &self.credential {
            credential.attach_to(response.metadata_mut());
        }
        Ok(response)
    }

    async fn get_replication_status(
        &self,
        _request: Request<pb::GetReplicationStatusRequest>,
    ) -> Result<Response<pb::GetReplicationStatusResponse>, Status> {
        Err(Status::unimplemented("fake primary"))
    }

    async fn promote(
        &self,
        _request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::PromoteResponse>, Status> {
        Err(Status::unimplemented("fake primary"))
    }
}

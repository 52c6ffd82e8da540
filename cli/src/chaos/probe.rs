//! How `concord chaos` sees the cluster from outside: the registry's instances (who is
//! the shop primary, of which term; where the aggregator is) and a shop's replication
//! status. Every call is bounded by [`PROBE_TIMEOUT`] and answers `None` rather than an
//! error: during chaos, silence is a normal answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord::pb::registry::v1::{registry_client::RegistryClient, ResolveRequest};
use concord::pb::shop::v1 as pb;
use concord::pb::shop::v1::replication_client::ReplicationClient;
use tonic::transport::Channel;

use super::admin::Child;

/// Longest wait for one probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Registry lookups and status reads, with one cached channel per address.
#[derive(Clone)]
pub struct Probe {
    registries: Vec<String>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Probe {
    /// Probes through the registry list `registry` (`a` or `a,b`).
    pub fn new(registry: &str) -> Self {
        Self {
            registries: concord::discovery::registry_addrs(registry)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            channels: Arc::default(),
        }
    }

    /// The channel to `addr`, made once (lazy: connects on first use, reconnects).
    pub fn channel(&self, addr: &str) -> anyhow::Result<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = concord::grpc::lazy_channel(addr)?;
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Instances of `service`, from the first registry that answers: (address, metadata).
    async fn resolve(&self, service: &str) -> Option<Vec<(String, HashMap<String, String>)>> {
        for registry in &self.registries {
            let Ok(channel) = self.channel(registry) else {
                continue;
            };
            let mut request = tonic::Request::new(ResolveRequest {
                service: service.into(),
            });
            request.set_timeout(PROBE_TIMEOUT);
            let mut client = RegistryClient::new(channel);
            let call = client.resolve(request);
            if let Ok(Ok(reply)) = tokio::time::timeout(PROBE_TIMEOUT, call).await {
                return Some(
                    reply
                        .into_inner()
                        .instances
                        .into_iter()
                        .map(|i| (i.address, i.metadata.into_iter().collect()))
                        .collect(),
                );
            }
        }
        None
    }

    /// Every `role=primary` shop instance: (address, term).
    pub async fn primaries(&self) -> Option<Vec<(String, u64)>> {
        let instances = self.resolve("shop").await?;
        Some(
            instances
                .into_iter()
                .filter_map(|(addr, metadata)| {
                    let term = concord::claim::PrimaryClaim::primary_term_of(&metadata)?;
                    Some((addr, term))
                })
                .collect(),
        )
    }

    /// The primary with the highest term.
    pub async fn primary(&self) -> Option<(String, u64)> {
        self.primaries()
            .await?
            .into_iter()
            .max_by_key(|(_, term)| *term)
    }

    /// The aggregator's address.
    pub async fn aggregator(&self) -> Option<String> {
        let instances = self.resolve(concord_aggregator::AGGREGATOR_SERVICE).await?;
        instances.into_iter().next().map(|(addr, _)| addr)
    }

    /// `GetReplicationStatus` of the shop at `addr`.
    pub async fn replication_status(&self, addr: &str) -> Option<pb::GetReplicationStatusResponse> {
        let mut request = tonic::Request::new(pb::GetReplicationStatusRequest {});
        request.set_timeout(PROBE_TIMEOUT);
        let mut client = ReplicationClient::new(self.channel(addr).ok()?);
        let call = client.get_replication_status(request);
        tokio::time::timeout(PROBE_TIMEOUT, call)
            .await
            .ok()?
            .ok()
            .map(tonic::Response::into_inner)
    }

    /// (primary, replica) as child names: the primary is the registry's, matched to the
    /// shop child serving that address; the replica is the other shop.
    pub async fn shop_roles(&self, children: &[Child]) -> (Option<String>, Option<String>) {
        let Some((primary_addr, _)) = self.primary().await else {
            return (None, None);
        };
        let shops: Vec<&Child> = children.iter().filter(|c| c.role == "shop").collect();
        let primary = shops
            .iter()
            .find(|c| c.addr.as_deref() == Some(primary_addr.as_str()))
            .map(|c| c.name.clone());
        let replica = primary.as_ref().and_then(|p| {
            shops
                .iter()
                .find(|c| c.name != *p && c.state == "running")
                .map(|c| c.name.clone())
        });
        (primary, replica)
    }
}

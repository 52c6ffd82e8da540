//! The aggregator's `concord.predict.v1.Predictor`: convert, call [`Aggregator`], convert.
//!
//! `GetModelInfo` describes the consensus set-up and measures the `mean` consensus of the
//! current fleet on the shared hold-out set (one batch fan-out, not recorded for scoring).

use std::sync::Arc;

use concord::pb::predict::v1::{
    predictor_server::Predictor, GetModelInfoRequest, GetModelInfoResponse, PredictBatchRequest,
    PredictBatchResponse, PredictRequest, PredictResponse,
};
use concord_node::CLASS_NAMES;
use tonic::{Request, Response, Status};

use crate::consensus::Aggregator;
use crate::convert::{decision_to_pb, policy_from_pb, AGGREGATOR_NODE_ID};

/// The Predictor service of the aggregator.
#[derive(Debug, Clone)]
pub struct AggregatorService {
    /// The consensus engine, shared with the server.
    aggregator: Arc<Aggregator>,
}

impl AggregatorService {
    /// A service answering with `aggregator`.
    pub fn new(aggregator: Arc<Aggregator>) -> Self {
        AggregatorService { aggregator }
    }
}

#[tonic::async_trait]
impl Predictor for AggregatorService {
    async fn predict(
        &self,
        request: Request<PredictRequest>,
    ) -> Result<Response<PredictResponse>, Status> {
        let request = request.into_inner();
        let policy = policy_from_pb(request.policy)?;
        let decision = self.aggregator.predict(&request.features, policy).await?;
        Ok(Response::new(decision_to_pb(&decision)))
    }

    async fn predict_batch(
        &self,
        request: Request<PredictBatchRequest>,
    ) -> Result<Response<PredictBatchResponse>, Status> {
        let request = request.into_inner();
        let policy = policy_from_pb(request.policy)?;
        let decisions = self.aggregator.predict_batch(&request.rows, policy).await?;
        tracing::debug!(rows = decisions.len(), "consensus batch");
        Ok(Response::new(PredictBatchResponse {
            predictions: decisions.iter().map(decision_to_pb).collect(),
        }))
    }

    async fn get_model_info(
        &self,
        _request: Request<GetModelInfoRequest>,
    ) -> Result<Response<GetModelInfoResponse>, Status> {
        let (holdout_size, holdout_accuracy) = self.aggregator.holdout_accuracy().await?;
        let config = self.aggregator.config();
        let nodes = self.aggregator.fleet().members().len();
        Ok(Response::new(GetModelInfoResponse {
            node_id: AGGREGATOR_NODE_ID.to_owned(),
            model: format!(
                "consensus of {nodes} nodes default_policy={} deadline={}ms min_answers={}",
                config.default_policy,
                config.deadline.as_millis(),
                config.min_answers
            ),
            holdout_size: u32::try_from(holdout_size).unwrap_or(u32::MAX),
            holdout_accuracy,
            behaviour: "honest".to_owned(),
            class_names: CLASS_NAMES.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }))
    }
}

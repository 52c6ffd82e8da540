//! The node's `concord.predict.v1.Predictor` implementation: convert, call [`Node`], convert.
//!
//! Each handler validates through the domain code, maps errors through
//! [`concord::error::to_status`] (via `From<Error> for Status`), applies a `slow` node's
//! delay after computing the answer, and logs one `debug` event per request.

use std::sync::Arc;

use concord::pb::predict::v1::{
    predictor_server::Predictor, GetModelInfoRequest, GetModelInfoResponse, PredictBatchRequest,
    PredictBatchResponse, PredictRequest, PredictResponse,
};
use tonic::{Request, Response, Status};

use crate::convert::{model_info_to_pb, prediction_to_pb};
use crate::node::Node;

/// The Predictor service of one node.
#[derive(Debug, Clone)]
pub struct NodeService {
    /// The node answering; shared so tests and benches can hold it too.
    node: Arc<Node>,
}

impl NodeService {
    /// A service answering with `node`.
    pub fn new(node: Arc<Node>) -> Self {
        NodeService { node }
    }
}

#[tonic::async_trait]
impl Predictor for NodeService {
    async fn predict(
        &self,
        request: Request<PredictRequest>,
    ) -> Result<Response<PredictResponse>, Status> {
        let request = request.into_inner();
        let prediction = self.node.predict(&request.features)?;
        self.node.delay().await;
        tracing::debug!(node_id = %self.node.id(), label = prediction.label, "predict");
        Ok(Response::new(prediction_to_pb(
            &prediction,
            self.node.id(),
            self.node.model().description(),
        )))
    }

    async fn predict_batch(
        &self,
        request: Request<PredictBatchRequest>,
    ) -> Result<Response<PredictBatchResponse>, Status> {
        let request = request.into_inner();
        let rows = request.rows.iter().map(|row| row.features.as_slice());
        let predictions = self.node.predict_batch(rows)?;
        self.node.delay().await;
        tracing::debug!(node_id = %self.node.id(), rows = predictions.len(), "predict batch");
        let (id, model) = (self.node.id(), self.node.model().description());
        Ok(Response::new(PredictBatchResponse {
            predictions: predictions
                .iter()
                .map(|p| prediction_to_pb(p, id, model))
                .collect(),
        }))
    }

    async fn get_model_info(
        &self,
        _request: Request<GetModelInfoRequest>,
    ) -> Result<Response<GetModelInfoResponse>, Status> {
        tracing::debug!(node_id = %self.node.id(), "model info");
        Ok(Response::new(model_info_to_pb(&self.node)))
    }
}

#[cfg(test)]
mod tests {
    use concord::pb::predict::v1::Row;
    use tonic::Code;

    use super::*;
    use crate::config::NodeConfig;

    fn service() -> NodeService {
        NodeService::new(Arc::new(Node::new(NodeConfig::default()).unwrap()))
    }

    /// Predict answers a valid sample with all three probabilities and the node's identity.
    #[tokio::test]
    async fn predict_ok() {
        let reply = service()
            .predict(Request::new(PredictRequest {
                features: vec![6.7, 3.0, 5.2, 2.3],
                policy: 0,
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((reply.label, reply.class_name.as_str()), (2, "virginica"));
        assert_eq!(reply.probabilities.len(), 3);
        assert_eq!(reply.node_id, "node-1");
        assert!(reply.model.starts_with("knn k=5"));
    }

    /// Bad input is INVALID_ARGUMENT with a reason, for single and batch calls.
    #[tokio::test]
    async fn invalid_argument() {
        let svc = service();
        for features in [
            vec![],
            vec![1.0; 3],
            vec![1.0; 5],
            vec![f64::NAN, 1.0, 1.0, 1.0],
        ] {
            let status = svc
                .predict(Request::new(PredictRequest {
                    features,
                    policy: 0,
                }))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(!status.message().is_empty());
        }
        let row = |features: Vec<f64>| Row { features };
        let batches = [
            vec![],
            vec![row(vec![1.0; 4]); crate::config::DEFAULT_MAX_BATCH + 1],
            vec![row(vec![1.0; 4]), row(vec![1.0; 2])],
        ];
        for rows in batches {
            let status = svc
                .predict_batch(Request::new(PredictBatchRequest { rows, policy: 0 }))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        }
    }

    /// A batch answers every row in order.
    #[tokio::test]
    async fn batch_in_order() {
        let rows = vec![
            Row {
                features: vec![5.1, 3.5, 1.4, 0.2],
            },
            Row {
                features: vec![6.7, 3.0, 5.2, 2.3],
            },
        ];
        let reply = service()
            .predict_batch(Request::new(PredictBatchRequest { rows, policy: 0 }))
            .await
            .unwrap()
            .into_inner();
        let labels: Vec<u32> = reply.predictions.iter().map(|p| p.label).collect();
        assert_eq!(labels, vec![0, 2]);
    }
}

//! Placeholder until the JetStream cluster state lands: every operation fails.
use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::oneshot;

use crate::config::QueueConfig;
use crate::error::ServiceError;
use crate::state::Op;

/// The cluster state in JetStream.
#[derive(Debug)]
pub(crate) struct JetStreamState;

impl JetStreamState {
    pub(crate) async fn open(
        _js: async_nats::jetstream::Context,
        _prefix: &str,
        _node: &str,
        _queues: &BTreeMap<String, QueueConfig>,
        _replicas: usize,
    ) -> Result<Arc<JetStreamState>, String> {
        Ok(Arc::new(JetStreamState))
    }
    #[allow(dead_code)]
    pub(crate) fn node_down(&self, _node: &str) {}
}

impl crate::transport::SharedState for JetStreamState {
    fn serve(&self, _op: Op) -> BoxFuture<'static, Result<Vec<u8>, ServiceError>> {
        Box::pin(async { Err(ServiceError::no_such_service("not yet")) })
    }
    fn confirmed(&self, _n: usize, _id: &str) -> Result<oneshot::Receiver<usize>, ServiceError> {
        Err(ServiceError::no_such_service("not yet"))
    }
}

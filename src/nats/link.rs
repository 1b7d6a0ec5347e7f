//! One other node, reached over NATS: requests and sends to its workers on its
//! request subject, with answers to this node's inbox; status and kills as
//! control requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::time::Instant;

use super::node::NatsNode;
use super::outbox::Out;
use super::peers::Peer;
use super::wire::{self, Control};
use crate::error::{ErrorKind, ServiceError};
use crate::status::NodeStatus;
use crate::transport::{self, Call, Link, Offer, Pending};

/// This node's link to another over NATS.
pub(crate) struct NatsLink {
    pub(crate) node: Arc<NatsNode>,
    pub(crate) peer: Arc<Peer>,
}

impl NatsLink {
    fn up(&self) -> Result<(), ServiceError> {
        if self.peer.is_up() {
            Ok(())
        } else {
            Err(transport::node_down(
                &self.peer.name,
                "its presence beats stopped",
            ))
        }
    }

    fn check(&self, call: &Call<'_>) -> Result<(), ServiceError> {
        self.up()?;
        if call.worker.is_none() && self.peer.leaving.load(Ordering::Acquire) {
            return Err(transport::leaving(&self.peer.name));
        }
        Ok(())
    }

    /// A control request, answered by `deadline`.
    async fn control(
        &self,
        control: Control,
        deadline: Instant,
    ) -> Result<bytes::Bytes, ServiceError> {
        self.up()?;
        let body = serde_json::to_vec(&control)
            .map_err(|e| ServiceError::bad_request(format!("control request is not JSON: {e}")))?;
        let asked = self
            .node
            .client
            .request(self.peer.control.clone(), body.into());
        match tokio::time::timeout_at(deadline, asked).await {
            Ok(Ok(message)) => wire::read_reply(message.payload, &self.peer.name),
            Ok(Err(e)) => Err(transport::node_down(
                &self.peer.name,
                &format!("its control request failed: {e}"),
            )),
            Err(_) => Err(ServiceError::timeout(format!(
                "node {} did not answer a control request in time",
                self.peer.name
            ))),
        }
    }
}

impl Link for NatsLink {
    fn node(&self) -> &str {
        &self.peer.name
    }

    fn offer(&self, service: &str) -> Option<(Offer, Arc<AtomicU64>)> {
        let offer = self
            .peer
            .member
            .read()
            .services
            .iter()
            .find(|o| o.name == service)?
            .clone();
        Some((offer, self.peer.load(service)?))
    }

    fn request(&self, call: Call<'_>, payload: &[u8]) -> Result<Pending, ServiceError> {
        self.check(&call)?;
        let (id, pending) = self.node.register(&self.peer.name)?;
        let out = Out {
            subject: self.peer.requests.clone(),
            reply: Some(format!("{}.{id}", self.node.inbox).into()),
            payload: wire::request(&self.node.me.name, &call, payload),
            call: Some(id),
            headers: wire::trace_headers(call.trace),
        };
        if let Err(e) = self.node.send(out) {
            self.node.calls.lock().remove(&id);
            return Err(e);
        }
        Ok(pending)
    }

    fn tell(&self, call: Call<'_>, payload: &[u8]) -> Result<(), ServiceError> {
        self.check(&call)?;
        self.node.send(Out {
            subject: self.peer.requests.clone(),
            reply: None,
            payload: wire::request(&self.node.me.name, &call, payload),
            call: None,
            headers: wire::trace_headers(call.trace),
        })
    }

    fn forget(&self, id: u64) {
        self.node.calls.lock().remove(&id);
    }

    fn cluster(&self, _op: &[u8]) -> Result<Pending, ServiceError> {
        Err(ServiceError::new(
            ErrorKind::NoSuchService,
            "on NATS the cluster state is in JetStream, not on a node",
        ))
    }

    fn status(&self, deadline: Instant) -> BoxFuture<'_, Option<NodeStatus>> {
        Box::pin(async move {
            let reply = self.control(Control::Status, deadline).await.ok()?;
            serde_json::from_slice(&reply).ok()
        })
    }

    fn kill(&self, worker: &str, deadline: Instant) -> BoxFuture<'_, Result<(), ServiceError>> {
        let control = Control::Kill {
            worker: worker.to_string(),
        };
        Box::pin(async move { self.control(control, deadline).await.map(|_| ()) })
    }

    fn kill_node(&self, code: i32, deadline: Instant) -> BoxFuture<'_, Result<(), ServiceError>> {
        Box::pin(async move {
            self.control(Control::Exit { code }, deadline)
                .await
                .map(|_| ())
        })
    }

    fn admin(
        &self,
        op: serde_json::Value,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<serde_json::Value, ServiceError>> {
        Box::pin(async move {
            let reply = self.control(Control::Admin { admin: op }, deadline).await?;
            serde_json::from_slice(&reply).map_err(|e| {
                ServiceError::service_failed(format!(
                    "node {} answered a command with bad JSON: {e}",
                    self.peer.name
                ))
            })
        })
    }
}

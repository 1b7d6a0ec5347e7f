//! Operators' commands one node carries out for another (`Link::admin`): the
//! API of any node reaches every node of the cluster through its own: scaling a
//! service at runtime ([`Node::scale`]) and reading the node's log lines.

use serde_json::Value;

use super::command::Admin;
use super::consumer;
use super::handle::{node_stopped, Node, STATUS_TIMEOUT};
use super::status::offer;
use crate::app::MASTER_SERVICE;
use crate::config::limits::{MAX_CREDITS, MAX_WORKERS};
use crate::error::ServiceError;
use crate::logging::untrusted;
use crate::root::ScaleService;
use crate::service::LocalService;
use crate::status::Scaled;

impl Node {
    /// Sets the number of workers of `service` on node `node` while it runs,
    /// within the config's bounds (1 to 10,000, and workers × concurrency at most
    /// 1,000,000). New workers start and join the dealer; a scale-down removes
    /// the highest indexes, each taking no new request and stopping once it has
    /// answered those it holds, so no request fails for it.
    ///
    /// Without `node`: this node if it runs the service, else the one node that
    /// does; several are `BadRequest`, naming them. The count lasts until the
    /// node restarts; `workers:` in its config makes it permanent.
    pub async fn scale(
        &self,
        service: &str,
        workers: usize,
        node: Option<&str>,
    ) -> Result<Scaled, ServiceError> {
        let node = match node {
            Some(node) => node.to_string(),
            None => self.runs(service)?,
        };
        let op = Admin::Scale {
            service: service.to_string(),
            workers,
        };
        let answer = self.admin_on(&node, op).await?;
        serde_json::from_value(answer).map_err(|e| {
            ServiceError::service_failed(format!(
                "node {} answered the scale with something else: {e}",
                untrusted(&node)
            ))
        })
    }

    /// The node a scale of `service` without a node name is for.
    fn runs(&self, service: &str) -> Result<String, ServiceError> {
        if self.inner.router.service(service).is_ok() {
            return Ok(self.name().to_string());
        }
        let mut nodes: Vec<String> = self
            .transport()
            .map(|t| t.members())
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.name != self.name() && m.services.iter().any(|o| o.name == service))
            .map(|m| m.name)
            .collect();
        nodes.sort();
        nodes.dedup();
        match nodes.as_slice() {
            [node] => Ok(node.clone()),
            [] => Err(ServiceError::no_such_service(format!(
                "no node of the cluster runs service `{}` with workers",
                untrusted(service)
            ))),
            _ => Err(ServiceError::bad_request(format!(
                "service `{}` runs on nodes {}, not on node {}: name the one to scale \
                 (\"node\" in the body, --node on the command line)",
                untrusted(service),
                nodes.join(", "),
                self.name()
            ))),
        }
    }

    /// Carries out `op` on node `node`: here, or over this node's link to it.
    pub(crate) async fn admin_on(&self, node: &str, op: Admin) -> Result<Value, ServiceError> {
        if node == self.name() {
            return self.admin_here(op).await;
        }
        let link = self.transport().and_then(|t| t.link(node)).ok_or_else(|| {
            ServiceError::no_such_service(format!(
                "node {} is not connected to this node",
                untrusted(node)
            ))
        })?;
        let op = serde_json::to_value(&op)
            .map_err(|e| ServiceError::bad_request(format!("command is not JSON: {e}")))?;
        link.admin(op, tokio::time::Instant::now() + STATUS_TIMEOUT)
            .await
    }

    /// Carries out a command another node sent, as JSON.
    pub(super) async fn admin_json(&self, op: Value) -> Result<Value, ServiceError> {
        let op: Admin = serde_json::from_value(op).map_err(|e| {
            ServiceError::bad_request(format!(
                "node {}: not a command it knows: {}",
                self.name(),
                untrusted(&e.to_string())
            ))
        })?;
        self.admin_here(op).await
    }

    /// Carries out `op` on this node.
    async fn admin_here(&self, op: Admin) -> Result<Value, ServiceError> {
        match op {
            Admin::Logs {
                after,
                level,
                max,
                max_bytes,
            } => self.log_answer(after, level, max, max_bytes),
            Admin::Scale { service, workers } => {
                let scaled = self.scale_here(&service, workers).await?;
                serde_json::to_value(scaled)
                    .map_err(|e| ServiceError::bad_request(format!("answer is not JSON: {e}")))
            }
        }
    }

    /// Scales this node's `service` to `workers`.
    async fn scale_here(&self, service: &str, workers: usize) -> Result<Scaled, ServiceError> {
        let name = self.name();
        if service == MASTER_SERVICE {
            return Err(ServiceError::bad_request(format!(
                "{MASTER_SERVICE} runs the app's master handlers on one worker; it is not scaled"
            )));
        }
        if self.messenger_service(service).is_some() {
            return Err(ServiceError::bad_request(format!(
                "service {service} on node {name} is served by Node messenger listeners \
                 (services.{service}.messenger), not by workers"
            )));
        }
        let local = self.inner.router.service(service)?;
        within_bounds(&local, workers)?;
        let scale = ScaleService {
            service: service.to_string(),
            workers,
        };
        let rescaled = self
            .root()?
            .send(scale)
            .await
            .map_err(|_| node_stopped(name))??;
        if !rescaled.added.is_empty() && !local.def.consumes.is_empty() {
            consumer::start(self, &local, &rescaled.added);
        }
        if rescaled.was != workers {
            log::info!(
                "node {name}: service {service} scaled from {} to {workers} workers",
                rescaled.was
            );
            if let Some(transport) = self.transport() {
                transport.offer_changed(offer(&local));
            }
        }
        Ok(Scaled {
            service: service.to_string(),
            node: name.to_string(),
            workers,
            was: rescaled.was,
        })
    }
}

/// The config's bounds on `services.NAME.workers` (see `config::limits`), as
/// they apply to a scale.
fn within_bounds(service: &LocalService, workers: usize) -> Result<(), ServiceError> {
    let key = format!("services.{}.workers", service.name);
    if workers < 1 {
        return Err(ServiceError::bad_request(format!(
            "{workers} workers is fewer than the least allowed, 1 ({key})"
        )));
    }
    if workers > MAX_WORKERS {
        return Err(ServiceError::bad_request(format!(
            "{workers} workers is more than the most allowed, {MAX_WORKERS} ({key})"
        )));
    }
    let concurrency = service.config.concurrency;
    let credits = workers.saturating_mul(concurrency);
    if credits > MAX_CREDITS {
        return Err(ServiceError::bad_request(format!(
            "{workers} workers × concurrency {concurrency} = {credits} is more than the most \
             allowed, {MAX_CREDITS} ({key} × concurrency)"
        )));
    }
    Ok(())
}

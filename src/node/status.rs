//! What a node reports of itself and of its cluster: its services and workers,
//! each peer's own report, the members it cannot reach, and its spawned children
//! as their spawner knows them.

use super::handle::{Node, STATUS_TIMEOUT};
use super::spawned;
use crate::dealer::Availability;
use crate::service::LocalService;
use crate::status::{ClusterStatus, NodeStatus, ServiceStatus, WorkerStatus};
use crate::transport::Offer;
use crate::worker::{WorkerSlot, WorkerState};

impl Node {
    /// This node's services and workers.
    pub fn status(&self) -> NodeStatus {
        let services = self
            .inner
            .router
            .services()
            .iter()
            .map(|service| ServiceStatus {
                name: service.name.clone(),
                state: match service.dealer.availability() {
                    Availability::Open => "running".into(),
                    Availability::Failed(why) => format!("failed: {why}"),
                    Availability::Closed(_) => "stopping".into(),
                    Availability::Gone(_) => "stopped".into(),
                },
                queued: service.dealer.queued(),
                workers: service
                    .slots
                    .get()
                    .iter()
                    .map(|slot| worker_status(slot))
                    .collect(),
                served: service.metrics.served(),
            })
            .collect();
        let stopping = self
            .inner
            .stopping
            .load(std::sync::atomic::Ordering::Relaxed);
        NodeStatus {
            name: self.inner.name.clone(),
            role: self.inner.role.to_string(),
            pid: std::process::id(),
            state: if stopping { "stopping" } else { "running" }.into(),
            uptime_ms: self.inner.started.elapsed().as_millis() as u64,
            restarts: self.inner.restarts,
            cpus: spawned::affinity(),
            services,
            pubsub: self.inner.pubsub.counters(),
            call_failures: self.inner.call_failures.by_service(),
        }
    }

    /// Every node of the cluster: this one, each connected peer's own report, and
    /// members that cannot be reached, shown `down`.
    pub async fn cluster_status(&self) -> ClusterStatus {
        let mut nodes = vec![self.status()];
        if let Some(transport) = self.transport() {
            let deadline = tokio::time::Instant::now() + STATUS_TIMEOUT;
            let links = transport.links();
            let reports = futures::future::join_all(links.iter().map(|l| l.status(deadline))).await;
            for (link, report) in links.iter().zip(reports) {
                nodes.push(report.unwrap_or_else(|| unreachable_node(link.node(), "unknown")));
            }
            for member in transport.members() {
                if nodes.iter().all(|n| n.name != member.name) {
                    nodes.push(unreachable_node(&member.name, &member.role));
                }
            }
        }
        if let Some(spawner) = self.inner.spawner.get() {
            // What the spawner knows of its children is the truth about their
            // processes; a child's own report adds its services.
            for child in spawner.statuses() {
                match nodes.iter_mut().find(|n| n.name == child.name) {
                    Some(node) if node.state == "running" && child.state == "online" => {
                        node.restarts = child.restarts;
                    }
                    Some(node) => {
                        node.restarts = child.restarts;
                        node.state = child.state;
                        node.pid = child.pid;
                    }
                    None => nodes.push(child),
                }
            }
        }
        nodes[1..].sort_by(|a, b| a.name.cmp(&b.name));
        ClusterStatus { nodes }
    }

    /// Whether node `name` is linked to this one and every worker it runs is
    /// running: a spawned node is online and serving.
    pub(super) async fn serves(&self, name: &str) -> bool {
        let Some(link) = self.transport().and_then(|t| t.link(name)) else {
            return false;
        };
        let deadline = tokio::time::Instant::now() + STATUS_TIMEOUT;
        link.status(deadline).await.is_some_and(|status| {
            status.state == "running"
                && status
                    .services
                    .iter()
                    .all(|s| s.workers.iter().all(|w| w.state == "running"))
        })
    }
}

fn unreachable_node(name: &str, role: &str) -> NodeStatus {
    NodeStatus {
        name: name.to_string(),
        role: role.to_string(),
        state: "down".into(),
        ..NodeStatus::default()
    }
}

fn worker_status(slot: &WorkerSlot) -> WorkerStatus {
    use std::sync::atomic::Ordering::Relaxed;
    let (state, since) = *slot.state.lock();
    WorkerStatus {
        id: slot.id.to_string(),
        state: match state {
            WorkerState::Starting => "starting",
            WorkerState::Running => "running",
            WorkerState::Restarting => "restarting",
            WorkerState::Stopped => "stopped",
        }
        .into(),
        restarts: slot.restarts.load(Relaxed),
        uptime_ms: if state == WorkerState::Running {
            since.elapsed().as_millis() as u64
        } else {
            0
        },
        handled: slot.handled.load(Relaxed),
        in_flight: slot.in_flight.load(Relaxed),
    }
}

/// What the other nodes learn of `service` on this node: its workers now.
pub(super) fn offer(service: &LocalService) -> Offer {
    let workers = service.slots.len();
    Offer {
        name: service.name.clone(),
        workers,
        capacity: workers.saturating_mul(service.config.concurrency),
        timeout_ms: service.config.timeout.as_millis() as u64,
    }
}

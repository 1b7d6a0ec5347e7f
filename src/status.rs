//! What `GET /v1/status` and `colony status` show: nodes, their services and workers.

use serde::{Deserialize, Serialize};

/// Every node of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The nodes, each once.
    pub nodes: Vec<NodeStatus>,
}

/// One node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's name.
    pub name: String,
    /// `master` or `worker`.
    pub role: String,
    /// The node's process id.
    pub pid: u32,
    /// `running` or `stopping`.
    pub state: String,
    /// Time since the node started.
    #[serde(default)]
    pub uptime_ms: u64,
    /// How often the node that spawned this one restarted it.
    #[serde(default)]
    pub restarts: u64,
    /// The CPUs the node's process may run on (its affinity).
    #[serde(default)]
    pub cpus: Vec<usize>,
    /// The services the node runs.
    pub services: Vec<ServiceStatus>,
}

/// One service on a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// The service's name.
    pub name: String,
    /// `running`, `failed` or `stopping`.
    #[serde(default)]
    pub state: String,
    /// Requests waiting for a free worker.
    pub queued: usize,
    /// The service's workers on this node.
    pub workers: Vec<WorkerStatus>,
}

/// One worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// `NODE/SERVICE/INDEX`.
    pub id: String,
    /// `starting`, `running`, `restarting` or `stopped`.
    pub state: String,
    /// How often the supervisor restarted it.
    pub restarts: u64,
    /// Time in its current state.
    pub uptime_ms: u64,
    /// Requests it finished.
    pub handled: u64,
    /// Requests it holds now.
    pub in_flight: u64,
}

impl ClusterStatus {
    /// The status as a readable table, one row per worker.
    pub fn table(&self) -> String {
        let mut rows = vec![[
            "WORKER",
            "STATE",
            "PID",
            "RESTARTS",
            "UPTIME",
            "HANDLED",
            "IN FLIGHT",
            "QUEUED",
        ]
        .map(String::from)];
        let mut notes = Vec::new();
        for node in &self.nodes {
            notes.push(format!(
                "node {} ({}, pid {}, {}, up {})",
                node.name,
                node.role,
                node.pid,
                node.state,
                uptime(node.uptime_ms)
            ));
            for service in &node.services {
                if service.state != "running" {
                    notes.push(format!(
                        "service {}/{}: {}",
                        node.name, service.name, service.state
                    ));
                }
                for worker in &service.workers {
                    rows.push([
                        worker.id.clone(),
                        worker.state.clone(),
                        node.pid.to_string(),
                        worker.restarts.to_string(),
                        uptime(worker.uptime_ms),
                        worker.handled.to_string(),
                        worker.in_flight.to_string(),
                        service.queued.to_string(),
                    ]);
                }
            }
        }
        let widths: Vec<usize> = (0..8)
            .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        let mut out = notes.join("\n");
        out.push('\n');
        for row in rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

fn uptime(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
    }
}

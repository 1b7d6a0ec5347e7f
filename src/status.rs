//! What `GET /v1/status` and `colony status` show: nodes, their services and
//! workers; and what a scale reports ([`Scaled`]).

use std::collections::BTreeMap;

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
    /// `running` or `stopping`; a spawned node as its parent sees it may also be
    /// `starting`, `listening`, `restarting`, `errored`, `stopped`, and an
    /// unreachable member is `down`.
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
    /// Publications through this node, counted since it started.
    #[serde(default)]
    pub pubsub: PubSubCounters,
    /// Calls from this node that failed on the way to another node (no node, the
    /// node down, a remote timeout), by service and error kind, counted since it
    /// started; the requests that reached a worker count in [`ServiceStatus::served`].
    #[serde(default)]
    pub call_failures: BTreeMap<String, BTreeMap<String, u64>>,
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
    /// What the service's workers on this node served since the node started.
    #[serde(default)]
    pub served: Served,
}

/// A service's requests on one node since the node started, as `GET /metrics`
/// counts them: a reader computes rates and recent latencies from the difference
/// between two reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Served {
    /// Requests answered, failed ones included.
    pub requests: u64,
    /// Failed requests by error kind (`"Timeout"`, …); kinds with none are left out.
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    /// The latency histogram: `[upper bound in ms, requests]` per bucket, not
    /// cumulative, by increasing bound, up to the last bucket that holds any (a
    /// bucket's lower bound is the previous one's upper, the first's 0). Requests
    /// slower than the last bound of all (30 s) are the rest of `requests`.
    #[serde(default)]
    pub latency_ms: Vec<(f64, u64)>,
}

impl Served {
    /// The latency under which a fraction `q` (0 to 1) of the requests finished,
    /// in ms, interpolated within its bucket as Prometheus' `histogram_quantile`
    /// does; `None` without requests, or when it lies past the last bound.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let rank = q.clamp(0.0, 1.0) * self.requests as f64;
        if self.requests == 0 {
            return None;
        }
        let (mut below, mut lower) = (0u64, 0.0);
        for &(bound, n) in &self.latency_ms {
            if n > 0 && (below + n) as f64 >= rank {
                let within = (rank - below as f64) / n as f64;
                return Some(lower + (bound - lower) * within.clamp(0.0, 1.0));
            }
            below += n;
            lower = bound;
        }
        None
    }
}

/// Publications through one node since it started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PubSubCounters {
    /// Messages published from this node.
    pub published: u64,
    /// Messages handed to subscribers on this node, one per subscriber, from
    /// whichever node they were published on.
    pub delivered: u64,
    /// Messages a subscriber missed at its high-water mark or a full link queue
    /// (`colony_publish_dropped_total`).
    pub dropped: u64,
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
    /// The status as pm2-style tables: one row per node (role, pid, CPU affinity,
    /// state, restarts, uptime), then one row per worker.
    pub fn table(&self) -> String {
        let mut nodes =
            vec![["NODE", "ROLE", "PID", "CPU", "STATE", "RESTARTS", "UPTIME"].map(String::from)];
        let mut workers = vec![[
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
            nodes.push([
                node.name.clone(),
                node.role.clone(),
                node.pid.to_string(),
                cpus(&node.cpus),
                node.state.clone(),
                node.restarts.to_string(),
                uptime(node.uptime_ms),
            ]);
            for service in &node.services {
                if service.state != "running" {
                    notes.push(format!(
                        "service {}/{}: {}",
                        node.name, service.name, service.state
                    ));
                }
                for worker in &service.workers {
                    workers.push([
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
        let mut out = render(&nodes);
        out.push('\n');
        out.push_str(&render(&workers));
        for note in notes {
            out.push_str(&note);
            out.push('\n');
        }
        out
    }
}

/// Left-aligned columns, two spaces apart.
fn render<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
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

/// A CPU set as ranges, `0-3,6`; `-` when unknown.
fn cpus(set: &[usize]) -> String {
    if set.is_empty() {
        return "-".into();
    }
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < set.len() {
        let mut j = i;
        while j + 1 < set.len() && set[j + 1] == set[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            set[i].to_string()
        } else {
            format!("{}-{}", set[i], set[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

fn uptime(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// What a scale did ([`Node::scale`](crate::Node::scale)), as
/// `POST /v1/scale/{service}` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scaled {
    /// The service.
    pub service: String,
    /// The node whose workers of it changed.
    pub node: String,
    /// Its workers there now.
    pub workers: usize,
    /// Its workers there before.
    pub was: usize,
}

/// The line `colony scale` prints, as pm2's `scale` says what it did:
/// `scaled math on worker-a up from 1 to 3 workers: 2 starting`.
impl std::fmt::Display for Scaled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Scaled {
            service,
            node,
            workers: now,
            was,
        } = self;
        let workers = if *now == 1 { "worker" } else { "workers" };
        if now > was {
            let starting = now - was;
            write!(
                f,
                "scaled {service} on {node} up from {was} to {now} {workers}: {starting} starting"
            )
        } else if now < was {
            let (stopping, whose) = (was - now, if was - now == 1 { "its" } else { "their" });
            write!(
                f,
                "scaled {service} on {node} down from {was} to {now} {workers}: \
                 {stopping} stopping once {whose} requests are done"
            )
        } else {
            write!(f, "{service} on {node} has {now} {workers} already")
        }
    }
}

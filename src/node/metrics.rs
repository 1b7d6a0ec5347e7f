//! The node's `GET /metrics`: its services, the calls it made, its bridge, the
//! queues it holds and the nodes it spawned, in Prometheus text.

use std::sync::atomic::Ordering::Relaxed;

use super::handle::Node;
use crate::metrics::Text;

impl Node {
    /// This node's metrics in Prometheus text format.
    pub fn metrics(&self) -> String {
        let services = self.inner.router.services();
        let mut t = Text::new(self.name());

        t.each(
            (
                "colony_requests_total",
                "counter",
                "Requests served by this node's workers, by service.",
            ),
            "service",
            &services,
            |s| (&s.name, s.metrics.requests() as f64),
        );
        t.family(
            "colony_request_errors_total",
            "counter",
            "Requests served here that failed, by service and error kind.",
        );
        for s in &services {
            t.errors(&s.name, &s.metrics);
        }
        t.family(
            "colony_request_duration_seconds",
            "histogram",
            "Time from a request's arrival at the service to its answer.",
        );
        for s in &services {
            t.histogram(&s.name, &s.metrics);
        }
        t.family(
            "colony_call_failures_total",
            "counter",
            "Calls from this node that failed on the way to a worker (no node, node down, remote timeout).",
        );
        t.call_failures(&self.inner.call_failures);

        t.each(
            (
                "colony_service_queued",
                "gauge",
                "Requests waiting for a free worker.",
            ),
            "service",
            &services,
            |s| (&s.name, s.dealer.queued() as f64),
        );
        t.each(
            (
                "colony_in_flight",
                "gauge",
                "Requests the service's workers hold now.",
            ),
            "service",
            &services,
            |s| {
                let n: u64 = s
                    .slots
                    .get()
                    .iter()
                    .map(|w| w.in_flight.load(Relaxed))
                    .sum();
                (&s.name, n as f64)
            },
        );
        t.each(
            (
                "colony_worker_restarts_total",
                "counter",
                "Worker restarts by the service's supervisor.",
            ),
            "service",
            &services,
            |s| {
                let slots = s.slots.get();
                let n: u64 = slots.iter().map(|w| w.restarts.load(Relaxed)).sum::<u64>()
                    + s.metrics.removed_restarts();
                (&s.name, n as f64)
            },
        );

        if let Some(state) = &self.inner.state {
            t.family(
                "colony_job_queue_depth",
                "gauge",
                "Jobs in a queue this node holds, by state.",
            );
            for q in state.jobs.status() {
                for (state, n) in [
                    ("queued", q.queued),
                    ("leased", q.leased),
                    ("dead", q.dead.len()),
                ] {
                    t.sample(
                        "colony_job_queue_depth",
                        &[("queue", &q.name), ("state", state)],
                        n as f64,
                    );
                }
            }
        }
        t.family(
            "colony_publish_dropped_total",
            "counter",
            "Published messages dropped at a subscriber's high-water mark.",
        );
        t.sample(
            "colony_publish_dropped_total",
            &[],
            self.publish_dropped() as f64,
        );

        if let Some(stats) = self.bridge_stats() {
            t.family(
                "colony_bridge_bytes_total",
                "counter",
                "Bytes over this node's bridge links.",
            );
            t.sample(
                "colony_bridge_bytes_total",
                &[("direction", "in")],
                stats.bytes_in as f64,
            );
            t.sample(
                "colony_bridge_bytes_total",
                &[("direction", "out")],
                stats.bytes_out as f64,
            );
            t.family(
                "colony_bridge_reconnects_total",
                "counter",
                "Links opened to a node this node had been linked with before.",
            );
            t.sample(
                "colony_bridge_reconnects_total",
                &[],
                stats.reconnects as f64,
            );
            t.family("colony_bridge_peers_up", "gauge", "Nodes linked now.");
            t.sample("colony_bridge_peers_up", &[], stats.peers_up as f64);
        }

        if let Some(spawner) = self.inner.spawner.get() {
            let children = spawner.statuses();
            t.each(
                (
                    "colony_node_restarts_total",
                    "counter",
                    "Restarts of a node this node spawned.",
                ),
                "child",
                &children,
                |c| (&c.name, c.restarts as f64),
            );
            t.each(
                (
                    "colony_node_online",
                    "gauge",
                    "1 if a node this node spawned is online, else 0.",
                ),
                "child",
                &children,
                |c| (&c.name, f64::from(u8::from(c.state == "online"))),
            );
        }
        t.finish()
    }
}

//! What `GET /metrics` shows, in Prometheus text format (version 0.0.4): requests
//! and errors by service and kind with a latency histogram, counted where a
//! request is served; calls that failed before any worker of another node could
//! answer (`NodeDown`, a remote `Timeout`, no node at all), counted where they were
//! made; worker and node restarts; queue depths; bridge traffic.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::{ErrorKind, ServiceError};
use crate::status::Served;

/// The latency histogram's upper bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// One service's requests on this node.
#[derive(Debug, Default)]
pub(crate) struct ServiceMetrics {
    requests: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    /// Requests at or under each bound (not cumulative; summed when rendered).
    buckets: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
    /// Restarts of workers a scale-down removed, so that the restarts counter
    /// never goes down.
    removed_restarts: AtomicU64,
}

impl ServiceMetrics {
    /// Keeps the restarts of a worker a scale-down removed.
    pub(crate) fn count_removed_restarts(&self, restarts: u64) {
        self.removed_restarts.fetch_add(restarts, Relaxed);
    }

    /// Restarts of the workers scale-downs removed.
    pub(crate) fn removed_restarts(&self) -> u64 {
        self.removed_restarts.load(Relaxed)
    }

    /// Requests counted so far.
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// Counts one request that took `took` and ended as `result`.
    pub(crate) fn record<T>(&self, result: &Result<T, ServiceError>, took: Duration) {
        self.requests.fetch_add(1, Relaxed);
        if let Err(e) = result {
            self.errors[kind_index(e.kind)].fetch_add(1, Relaxed);
        }
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&bound| secs <= bound) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.sum_micros.fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// The counts so far, as status shows them.
    pub(crate) fn served(&self) -> Served {
        let errors = ErrorKind::ALL
            .iter()
            .zip(&self.errors)
            .map(|(kind, n)| (kind.as_str().to_string(), n.load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let used = counts
            .iter()
            .rposition(|&n| n > 0)
            .map_or(0, |last| last + 1);
        Served {
            requests: self.requests(),
            errors,
            latency_ms: BUCKETS
                .iter()
                .zip(counts)
                .take(used)
                .map(|(bound, n)| ((bound * 1e6).round() / 1e3, n))
                .collect(),
        }
    }
}

fn kind_index(kind: ErrorKind) -> usize {
    ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

/// The `service` label of calls for a service no node of the cluster is known to
/// run: names from URLs must not become labels, or any client could grow
/// `/metrics` (and this node's memory) without end.
pub(crate) const OTHER_SERVICE: &str = "(other)";

/// Distinct services counted in [`CallFailures`]; past this (a cluster with more
/// services than this), the rest count as [`OTHER_SERVICE`].
const MAX_FAILURE_SERVICES: usize = 1024;

/// Calls this node made that failed on the way to another node, by service and kind.
#[derive(Debug, Default)]
pub(crate) struct CallFailures(Mutex<BTreeMap<(String, &'static str), u64>>);

impl CallFailures {
    /// Counts `result` if it is a failure of the way, not of the serving node.
    /// `known` says whether a node of the cluster runs `service`; it is asked
    /// only on a failure.
    pub(crate) fn record<T>(
        &self,
        service: &str,
        known: impl FnOnce() -> bool,
        result: &Result<T, ServiceError>,
    ) {
        let Err(e) = result else {
            return;
        };
        if !matches!(
            e.kind,
            ErrorKind::NoSuchService | ErrorKind::NodeDown | ErrorKind::Timeout
        ) {
            return;
        }
        let mut counts = self.0.lock();
        let key = (service.to_string(), e.kind.as_str());
        let labelled = counts.contains_key(&key)
            || (counts.len() < MAX_FAILURE_SERVICES * ErrorKind::ALL.len() && known());
        let key = if labelled {
            key
        } else {
            (OTHER_SERVICE.to_string(), e.kind.as_str())
        };
        *counts.entry(key).or_default() += 1;
    }
}

impl CallFailures {
    /// The counts so far, by service and kind, as status shows them.
    pub(crate) fn by_service(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for ((service, kind), n) in self.0.lock().iter() {
            out.entry(service.clone())
                .or_default()
                .insert(kind.to_string(), *n);
        }
        out
    }
}

/// Prometheus text, family by family.
pub(crate) struct Text {
    out: String,
    node: String,
}

impl Text {
    pub(crate) fn new(node: &str) -> Self {
        Text {
            out: String::with_capacity(4096),
            node: escape(node),
        }
    }

    /// Starts a family: its help line and type.
    pub(crate) fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A family with one sample per item, labelled `label` = the item's name.
    pub(crate) fn each<T>(
        &mut self,
        (name, kind, help): (&str, &str, &str),
        label: &str,
        items: &[T],
        sample: impl Fn(&T) -> (&str, f64),
    ) {
        self.family(name, kind, help);
        for item in items {
            let (value_of, value) = sample(item);
            self.sample(name, &[(label, value_of)], value);
        }
    }

    /// One sample, labelled with the node and `labels`.
    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<f64>) {
        let _ = write!(self.out, "{name}{{node=\"{}\"", self.node);
        for (key, value) in labels {
            let _ = write!(self.out, ",{key}=\"{}\"", escape(value));
        }
        let _ = writeln!(self.out, "}} {}", value.into());
    }

    /// A service's errors, one sample per kind (after their family line).
    pub(crate) fn errors(&mut self, service: &str, m: &ServiceMetrics) {
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            self.sample(
                "colony_request_errors_total",
                &[("service", service), ("kind", kind.as_str())],
                m.errors[i].load(Relaxed) as f64,
            );
        }
    }

    /// A service's latency histogram (after its family line).
    pub(crate) fn histogram(&mut self, service: &str, m: &ServiceMetrics) {
        let name = "colony_request_duration_seconds";
        let mut below = 0u64;
        for (i, bound) in BUCKETS.iter().enumerate() {
            below += m.buckets[i].load(Relaxed);
            let le = bound.to_string();
            self.sample(
                &format!("{name}_bucket"),
                &[("service", service), ("le", &le)],
                below as f64,
            );
        }
        let count = m.requests.load(Relaxed);
        self.sample(
            &format!("{name}_bucket"),
            &[("service", service), ("le", "+Inf")],
            count as f64,
        );
        self.sample(
            &format!("{name}_sum"),
            &[("service", service)],
            m.sum_micros.load(Relaxed) as f64 / 1e6,
        );
        self.sample(
            &format!("{name}_count"),
            &[("service", service)],
            count as f64,
        );
    }

    /// The calls that failed on the way, after their family line.
    pub(crate) fn call_failures(&mut self, failures: &CallFailures) {
        let failures = failures.0.lock().clone();
        for ((service, kind), n) in failures {
            self.sample(
                "colony_call_failures_total",
                &[("service", &service), ("kind", kind)],
                n as f64,
            );
        }
    }

    pub(crate) fn finish(self) -> String {
        self.out
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

//! Upper bounds on every number a config may set, and the rule that plain TCP
//! stays on loopback. A value that passes here is one the node can run with:
//! nothing grows one allocation per unit of an absurd number, and no duration
//! overflows an `Instant`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::{ConfigError, NodeConfig};

/// Arbiter threads of a node.
pub const MAX_THREADS: usize = 1024;
/// Workers of one service on one node.
pub const MAX_WORKERS: usize = 10_000;
/// Requests in flight per worker.
pub const MAX_CONCURRENCY: usize = 100_000;
/// Workers × concurrency of one service: the dealer keeps one credit per unit.
pub const MAX_CREDITS: usize = 1_000_000;
/// Requests waiting at a service's dealer, and jobs waiting in a queue.
pub const MAX_QUEUE: usize = 10_000_000;
/// Largest bridge frame.
pub const MAX_FRAME: usize = 256 * 1024 * 1024;
/// Largest request body, subscribe buffer, per-peer send queue and job queue, in
/// bytes.
pub const MAX_BYTES: usize = 4 * 1024 * 1024 * 1024;
/// Connections and handshakes at once.
pub const MAX_CONNECTIONS: usize = 100_000;
/// Log lines a node keeps (`log.keep`).
pub const MAX_LOG_KEEP: usize = 1_000_000;
/// Bytes of log lines a node keeps (`log.max_bytes`).
pub const MAX_LOG_BYTES: usize = 1024 * 1024 * 1024;
/// Longest request timeout, here as in `?timeout=`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Shortest `api.read_timeout`: a slower client still gets its request in.
pub const MIN_READ_TIMEOUT: Duration = Duration::from_millis(100);
/// Shortest `bridge.heartbeat`: a link does not spend itself on heartbeats.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(10);
/// Longest of every other duration (leases, windows, heartbeats, backoffs).
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

impl NodeConfig {
    /// Checks every number against its bound and refuses plain TCP off loopback
    /// unless the config says `bridge.insecure: true`.
    pub(super) fn check_limits(&self, path: &Path) -> Result<(), ConfigError> {
        let at_most = |key: &str, value: usize, max: usize| {
            if value > max {
                Err(ConfigError::new(
                    path,
                    key,
                    format!("{value} is more than the most allowed, {max}"),
                ))
            } else {
                Ok(())
            }
        };
        let no_longer = |key: &str, value: Duration, max: Duration| {
            if value > max {
                Err(ConfigError::new(
                    path,
                    key,
                    format!(
                        "{} is longer than the most allowed, {}",
                        humantime::format_duration(value),
                        humantime::format_duration(max)
                    ),
                ))
            } else {
                Ok(())
            }
        };
        let no_shorter = |key: &str, value: Duration, min: Duration| {
            if value < min {
                Err(ConfigError::new(
                    path,
                    key,
                    format!(
                        "{} is shorter than the least allowed, {}",
                        humantime::format_duration(value),
                        humantime::format_duration(min)
                    ),
                ))
            } else {
                Ok(())
            }
        };
        if let Some(threads) = self.node.threads {
            at_most("node.threads", threads, MAX_THREADS)?;
        }
        at_most("api.max_body", self.api.max_body, MAX_BYTES)?;
        at_most(
            "api.max_connections",
            self.api.max_connections,
            MAX_CONNECTIONS,
        )?;
        at_most("api.subscribe_buffer", self.api.subscribe_buffer, MAX_BYTES)?;
        no_longer("api.read_timeout", self.api.read_timeout, MAX_TIMEOUT)?;
        at_most("log.keep", self.log.keep, MAX_LOG_KEEP)?;
        at_most("log.max_bytes", self.log.max_bytes, MAX_LOG_BYTES)?;
        no_shorter("api.read_timeout", self.api.read_timeout, MIN_READ_TIMEOUT)?;
        if let Some(messenger) = &self.messenger {
            at_most(
                "messenger.max_connections",
                messenger.max_connections,
                MAX_CONNECTIONS,
            )?;
        }
        if let Some(bridge) = &self.bridge {
            at_most("bridge.max_frame", bridge.max_frame, MAX_FRAME)?;
            at_most("bridge.queue", bridge.queue, MAX_QUEUE)?;
            at_most("bridge.queue_bytes", bridge.queue_bytes, MAX_BYTES)?;
            at_most(
                "bridge.max_handshakes",
                bridge.max_handshakes,
                MAX_CONNECTIONS,
            )?;
            no_longer(
                "bridge.heartbeat",
                bridge.heartbeat,
                Duration::from_secs(60),
            )?;
            no_shorter("bridge.heartbeat", bridge.heartbeat, MIN_HEARTBEAT)?;
            if bridge.tls.is_none() && !bridge.insecure {
                let exposed = std::iter::once(&bridge.listen)
                    .chain(&bridge.join)
                    .find(|addr| !addr.ip().is_loopback());
                if let Some(addr) = exposed {
                    return Err(ConfigError::new(
                        path,
                        "bridge.tls",
                        plain_tcp_problem(addr),
                    ));
                }
            }
        }
        for (name, service) in &self.services {
            let key = |field: &str| format!("services.{name}.{field}");
            let workers = service.workers.unwrap_or(1);
            at_most(&key("workers"), workers, MAX_WORKERS)?;
            at_most(&key("concurrency"), service.concurrency, MAX_CONCURRENCY)?;
            at_most(
                &key("workers × concurrency"),
                workers.saturating_mul(service.concurrency),
                MAX_CREDITS,
            )?;
            at_most(&key("queue"), service.queue, MAX_QUEUE)?;
            no_longer(&key("timeout"), service.timeout, MAX_TIMEOUT)?;
            no_longer(&key("restart.within"), service.restart.within, MAX_DURATION)?;
            no_longer(
                &key("restart.backoff.max"),
                service.restart.backoff.max,
                MAX_TIMEOUT,
            )?;
        }
        for (name, queue) in &self.queues {
            let key = |field: &str| format!("queues.{name}.{field}");
            at_most(&key("capacity"), queue.capacity, MAX_QUEUE)?;
            at_most(&key("dead_letters"), queue.dead_letters, MAX_QUEUE)?;
            at_most(&key("max_bytes"), queue.max_bytes, MAX_BYTES)?;
            no_longer(&key("lease"), queue.lease, MAX_DURATION)?;
        }
        for (i, child) in self.spawn.iter().enumerate() {
            no_longer(
                &format!("spawn[{i}].min_uptime"),
                child.min_uptime,
                MAX_DURATION,
            )?;
        }
        Ok(())
    }
}

fn plain_tcp_problem(addr: &SocketAddr) -> String {
    format!(
        "required because {addr} is not a loopback address: plain TCP lets anyone on the \
         network read the cluster's traffic and inject frames after the handshake. Set \
         bridge.tls (colony certs DIR --nodes ... makes the files), or bridge.insecure: true \
         on a network you trust"
    )
}

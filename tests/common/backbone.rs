//! The backbones a cross-node test runs on: the bridge (a shared secret, TCP on
//! loopback) or NATS (a real nats-server with JetStream on a free port). A test
//! written against [`Net`] runs the same on both.

use std::future::Future;
use std::time::Duration;

use colony::Node;

use super::nats::NatsServer;
use super::{bridge_yaml, cluster_of, secret_file};

/// What links the nodes of a test.
pub enum Net {
    /// The bridge, with the cluster's secret file.
    Bridge(tempfile::NamedTempFile),
    /// A nats-server of the test's own.
    Nats(NatsServer),
}

impl Net {
    /// The bridge.
    pub fn bridge() -> Net {
        Net::Bridge(secret_file("a-cluster-secret-for-tests-only"))
    }

    /// A new nats-server.
    pub fn nats() -> Net {
        Net::Nats(NatsServer::start())
    }

    /// The config section that joins a node to the cluster: on the bridge, to
    /// the master at `join` (none for the master itself); fast heartbeats.
    pub fn yaml(&self, join: Option<&Node>) -> String {
        match self {
            Net::Bridge(secret) => bridge_yaml(secret, join.and_then(|n| n.bridge_addr())),
            Net::Nats(server) => {
                format!("nats: {{ url: \"{}\", heartbeat: 100ms }}\n", server.url())
            }
        }
    }

    /// The nats-server, on NATS.
    pub fn server(&mut self) -> Option<&mut NatsServer> {
        match self {
            Net::Nats(server) => Some(server),
            Net::Bridge(_) => None,
        }
    }
}

/// Starts a cluster of `names` on `net` (the first is the master, `threads: 2`
/// each), all running `services` (a `services:` YAML line, and any other
/// sections), each with `start`; returns once every node sees them all up.
pub async fn nodes_on<F, Fut>(net: &Net, names: &[&str], services: &str, start: F) -> Vec<Node>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Node>,
{
    let master = start(format!(
        "node: {{ name: {}, role: master, threads: 2 }}\n{}{services}",
        names[0],
        net.yaml(None)
    ))
    .await;
    let mut nodes = vec![master.clone()];
    for name in &names[1..] {
        nodes.push(
            start(format!(
                "node: {{ name: {name}, role: worker, threads: 2 }}\n{}{services}",
                net.yaml(Some(&master))
            ))
            .await,
        );
    }
    for node in &nodes {
        cluster_of(node, names.len()).await;
    }
    nodes
}

/// How long a node down is noticed at most on a test backbone: three 100 ms
/// heartbeats, and room.
pub const DOWN_WITHIN: Duration = Duration::from_secs(5);

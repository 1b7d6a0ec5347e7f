//! Mutual TLS on the bridge (`bridge.tls`), with the files `colony certs` writes
//! (`colony::certs::write`): two TLS nodes link and reach each other's services; a
//! node with TLS and one without never link; a certificate signed by another CA is
//! refused; a node whose own certificate names another node, and bad TLS files,
//! stop the node from starting. (A peer whose certificate names another node than
//! its Hello: `bridge_identity.rs`.)
//!
//! The refused cases put a counting TCP proxy between the joining node and the
//! master, so each test waits until several connection attempts have been made
//! and have ended (a link that formed would stay open instead), then checks that
//! neither node ever saw the other.

mod common;

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use colony::{ErrorKind, Node, NodeConfig};
use common::*;
use tempfile::TempDir;

const SECRET: &str = "a-cluster-secret-for-tests-only";

/// Connection attempts a refused node must have made, and seen end, before the
/// test looks at the cluster.
const REFUSED_ATTEMPTS: usize = 3;

/// A cluster's TLS files as `colony certs` writes them: `ca.pem`, and
/// `NODE.pem` and `NODE.key` for each node.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    /// Writes a fresh CA and certificates for `nodes` under `root/cluster`.
    fn new(root: &TempDir, cluster: &str, nodes: &[&str]) -> Certs {
        let dir = root.path().join(cluster);
        let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        colony::certs::write(&dir, &nodes).expect("colony certs writes the files");
        Certs { dir }
    }

    /// The `bridge.tls` files of node `name`.
    fn node(&self, name: &str) -> NodeFiles {
        NodeFiles {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
            ca: self.dir.join("ca.pem"),
        }
    }
}

/// The three files of one node's `bridge.tls`.
#[derive(Clone)]
struct NodeFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl NodeFiles {
    /// The same node trusting another cluster's CA.
    fn trusting(mut self, certs: &Certs) -> NodeFiles {
        self.ca = certs.dir.join("ca.pem");
        self
    }
}

/// A node's YAML: its bridge on port 0 with fast heartbeats, TLS if `tls`.
fn node_yaml(
    name: &str,
    role: &str,
    service: &str,
    secret: &tempfile::NamedTempFile,
    join: Option<SocketAddr>,
    tls: Option<&NodeFiles>,
) -> String {
    let join = join
        .map(|a| format!("[{a}]"))
        .unwrap_or_else(|| "[]".into());
    let tls = tls
        .map(|f| {
            format!(
                ", tls: {{ cert: {}, key: {}, ca: {} }}",
                f.cert.display(),
                f.key.display(),
                f.ca.display()
            )
        })
        .unwrap_or_default();
    format!(
        "node: {{ name: {name}, role: {role}, threads: 1 }}\n\
         bridge: {{ listen: 127.0.0.1:0, join: {join}, secret_file: {}, heartbeat: 100ms{tls} }}\n\
         services: {{ {service}: {{ workers: 1 }} }}\n",
        secret.path().display()
    )
}

/// A TCP proxy to `to` that counts the connections it carried and those that ended.
struct Proxy {
    addr: SocketAddr,
    opened: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
}

async fn proxy(to: SocketAddr) -> Proxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("proxy binds");
    let addr = listener.local_addr().expect("proxy address");
    let opened = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    let (o, e) = (opened.clone(), ended.clone());
    actix_rt::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            o.fetch_add(1, Ordering::SeqCst);
            let e = e.clone();
            actix_rt::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                e.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Proxy {
        addr,
        opened,
        ended,
    }
}

/// Waits until `REFUSED_ATTEMPTS` connections through `proxy` were made and ended,
/// checking all along that neither node ever sees more than itself; then checks
/// that each still serves its own service.
async fn never_linked(proxy: &Proxy, master: &Node, worker: &Node) {
    let most_seen = Cell::new(0);
    wait_until(
        &format!("{REFUSED_ATTEMPTS} connection attempts were made and ended"),
        Duration::from_secs(10),
        || async {
            for node in [master, worker] {
                let seen = node.cluster_status().await.nodes.len();
                most_seen.set(most_seen.get().max(seen));
            }
            proxy.ended.load(Ordering::SeqCst) >= REFUSED_ATTEMPTS
        },
    )
    .await;
    assert!(proxy.opened.load(Ordering::SeqCst) >= REFUSED_ATTEMPTS);
    assert_eq!(most_seen.get(), 1, "a node saw the other");
    for node in [master, worker] {
        let status = node.cluster_status().await;
        let names: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, vec![node.name()], "cluster of {}", node.name());
    }

    // Each still serves its own service, and cannot reach the other's.
    let added = master.request("calc", Add { a: 1, b: 2 }).await.unwrap();
    assert_eq!(
        added,
        Added {
            sum: 3,
            by: "m/calc/0".into()
        }
    );
    assert_eq!(
        worker.request("chaos", WhoAmI {}).await.unwrap(),
        "w/chaos/0"
    );
    let err = worker
        .request("calc", Add { a: 1, b: 2 })
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NoSuchService);
    let err = master.request("chaos", WhoAmI {}).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NoSuchService);
}

/// Starts master `m` (`calc`) with `master_tls`, and worker `w` (`chaos`) with
/// `worker_tls` joining it through a counting proxy; checks they never link.
async fn refused(master_tls: Option<&NodeFiles>, worker_tls: Option<&NodeFiles>) {
    let secret = secret_file(SECRET);
    let master = start_node(&node_yaml("m", "master", "calc", &secret, None, master_tls)).await;
    let proxy = proxy(master.bridge_addr().expect("master bridge")).await;
    let worker = start_node(&node_yaml(
        "w",
        "worker",
        "chaos",
        &secret,
        Some(proxy.addr),
        worker_tls,
    ))
    .await;
    never_linked(&proxy, &master, &worker).await;
    worker.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn two_tls_nodes_serve_each_other() {
    let dir = TempDir::new().unwrap();
    let certs = Certs::new(&dir, "cluster", &["m", "w"]);
    let (m_tls, w_tls) = (certs.node("m"), certs.node("w"));
    let secret = secret_file(SECRET);
    let master = start_node(&node_yaml(
        "m",
        "master",
        "calc",
        &secret,
        None,
        Some(&m_tls),
    ))
    .await;
    let worker = start_node(&node_yaml(
        "w",
        "worker",
        "chaos",
        &secret,
        master.bridge_addr(),
        Some(&w_tls),
    ))
    .await;
    cluster_of(&master, 2).await;
    cluster_of(&worker, 2).await;

    let added = worker.request("calc", Add { a: 2, b: 3 }).await.unwrap();
    assert_eq!(
        added,
        Added {
            sum: 5,
            by: "m/calc/0".into()
        }
    );
    assert_eq!(
        master.request("chaos", WhoAmI {}).await.unwrap(),
        "w/chaos/0"
    );
    // Many requests at once over the same TLS link, both ways.
    let calls = (0..200).map(|i| {
        let worker = worker.clone();
        async move { worker.request("calc", Add { a: i, b: 1 }).await }
    });
    for (i, added) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(added.unwrap().sum, i as i64 + 1);
    }
    let whos = futures::future::join_all((0..200).map(|_| master.request("chaos", WhoAmI {})));
    assert!(whos.await.into_iter().all(|w| w.unwrap() == "w/chaos/0"));

    for node in [&master, &worker] {
        let status = node.cluster_status().await;
        let nodes: Vec<(&str, &str)> = status
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.state.as_str()))
            .collect();
        let me = node.name();
        let other = if me == "m" { "w" } else { "m" };
        assert_eq!(nodes, vec![(me, "running"), (other, "running")]);
    }
    worker.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn a_tls_node_and_a_plain_node_never_link() {
    let dir = TempDir::new().unwrap();
    let certs = Certs::new(&dir, "cluster", &["m", "w"]);
    // TLS worker, plain master.
    refused(None, Some(&certs.node("w"))).await;
    // Plain worker, TLS master.
    refused(Some(&certs.node("m")), None).await;
}

#[actix_rt::test]
async fn a_certificate_of_another_ca_is_refused() {
    let dir = TempDir::new().unwrap();
    let certs = Certs::new(&dir, "cluster", &["m", "w"]);
    let rogue = Certs::new(&dir, "rogue", &["m", "w"]);
    // The worker's certificate comes from another CA; it trusts the cluster's CA,
    // so only the master's check of the client certificate can keep it out.
    let worker = rogue.node("w").trusting(&certs);
    refused(Some(&certs.node("m")), Some(&worker)).await;
    // The master's certificate comes from another CA; it trusts the cluster's CA,
    // so only the worker's check of the server certificate can keep it out.
    let master = rogue.node("m").trusting(&certs);
    refused(Some(&master), Some(&certs.node("w"))).await;
}

#[actix_rt::test]
async fn a_node_whose_certificate_names_another_node_does_not_start() {
    let dir = TempDir::new().unwrap();
    // Signed by the cluster's CA, but for node `w`, or for the one name every
    // node's certificate carried before certificates named their node.
    let certs = Certs::new(&dir, "cluster", &["w", "colony"]);
    let secret = secret_file(SECRET);
    for other in ["w", "colony"] {
        let files = certs.node(other);
        let yaml = node_yaml("m", "master", "calc", &secret, None, Some(&files));
        let mut config = NodeConfig::parse(Path::new("test.yaml"), &yaml).expect("config parses");
        config.state.mode = colony::config::StateMode::Memory;
        let err = match Node::start(test_app(), config).await {
            Ok(node) => {
                node.shutdown(Duration::ZERO).await;
                panic!("node m started with the certificate of {other}");
            }
            Err(e) => e.to_string(),
        };
        for part in [
            "bridge.tls",
            &files.cert.display().to_string(),
            "certificate of node m",
            "DNS:m",
            "colony certs",
        ] {
            assert!(err.contains(part), "{err} does not say {part}");
        }
    }
}

#[actix_rt::test]
async fn bad_tls_files_stop_the_node_from_starting() {
    let dir = TempDir::new().unwrap();
    let certs = Certs::new(&dir, "cluster", &["n", "o"]);
    let good = certs.node("n");
    let other = certs.node("o");
    let missing = dir.path().join("missing.pem");
    let secret = secret_file(SECRET);
    let cases: Vec<(&str, NodeFiles, &Path)> = vec![
        (
            "missing cert",
            NodeFiles {
                cert: missing.clone(),
                ..good.clone()
            },
            &missing,
        ),
        (
            "missing key",
            NodeFiles {
                key: missing.clone(),
                ..good.clone()
            },
            &missing,
        ),
        (
            "missing ca",
            NodeFiles {
                ca: missing.clone(),
                ..good.clone()
            },
            &missing,
        ),
        (
            "ca without a certificate",
            NodeFiles {
                ca: good.key.clone(),
                ..good.clone()
            },
            &good.key,
        ),
        (
            "cert without a certificate",
            NodeFiles {
                cert: good.key.clone(),
                ..good.clone()
            },
            &good.key,
        ),
        (
            "key without a key",
            NodeFiles {
                key: good.cert.clone(),
                ..good.clone()
            },
            &good.cert,
        ),
        (
            "certificate of another node",
            NodeFiles {
                cert: other.cert.clone(),
                ..good.clone()
            },
            &other.cert,
        ),
        (
            "key of another certificate",
            NodeFiles {
                key: other.key.clone(),
                ..good.clone()
            },
            &good.cert,
        ),
    ];
    for (case, files, culprit) in cases {
        let yaml = node_yaml("n", "master", "calc", &secret, None, Some(&files));
        let mut config = NodeConfig::parse(Path::new("test.yaml"), &yaml).expect("config parses");
        config.state.mode = colony::config::StateMode::Memory;
        let err = match Node::start(test_app(), config).await {
            Ok(node) => {
                node.shutdown(Duration::ZERO).await;
                panic!("{case}: the node started");
            }
            Err(e) => e.to_string(),
        };
        assert!(err.contains("bridge.tls"), "{case}: {err}");
        assert!(
            err.contains(&culprit.display().to_string()),
            "{case}: {err} does not name {}",
            culprit.display()
        );
    }

    // The good files start the node.
    let yaml = node_yaml("n", "master", "calc", &secret, None, Some(&good));
    let mut config = NodeConfig::parse(Path::new("test.yaml"), &yaml).expect("config parses");
    config.state.mode = colony::config::StateMode::Memory;
    let node = Node::start(test_app(), config).await.expect("node starts");
    node.shutdown(Duration::ZERO).await;
}

//! Helpers of `bridge_identity.rs`: captured log lines, this process's memory,
//! raw frames after a real handshake, and TLS files from `colony certs` with
//! hand-made TLS ends.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use colony::bridge::frame::{Frame, FrameCodec};
use colony::bridge::handshake::{self, Secret as ClusterSecret};
use colony::bridge::wire::{self, Control, Member, Offer};
use futures::StreamExt;
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_util::codec::Framed;

pub const SECRET: &str = "a-cluster-secret-for-tests-only";
/// How long the node may take to answer or close a connection.
pub const PROMPTLY: Duration = Duration::from_secs(5);
/// How much this process may grow over a series of attacks.
pub const MEMORY_BOUND_KB: u64 = 64 * 1024;

/// This process's resident memory, in kB.
pub fn vm_rss_kb() -> u64 {
    super::common::rss_kb()
}

pub fn assert_memory_bounded(before: u64, what: &str) {
    let after = vm_rss_kb();
    eprintln!("{what}: VmRSS {before} kB before, {after} kB after");
    assert!(
        after < before + MEMORY_BOUND_KB,
        "{what}: VmRSS grew from {before} kB to {after} kB"
    );
}

pub fn control_frame(control: &Control) -> Frame {
    Frame {
        kind: wire::CONTROL,
        body: Bytes::from(serde_json::to_vec(control).expect("control encodes")),
    }
}

/// Opens a connection to `addr` as node `me` through the real handshake.
pub async fn dial_as<S>(stream: S, me: &str, expected: &str) -> Framed<S, FrameCodec>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = Framed::new(stream, FrameCodec::default());
    let secret = ClusterSecret::new(SECRET.as_bytes()).expect("secret");
    let peer = tokio::time::timeout(PROMPTLY, handshake::dial(&mut framed, me, &secret))
        .await
        .expect("handshake in time")
        .expect("the handshake passes: the secret is right");
    assert_eq!(peer, expected);
    framed
}

pub async fn tcp(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(PROMPTLY, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect to the bridge")
}

/// The next control message from the node, skipping other frames; `None` when
/// the node closed the connection.
pub async fn next_control<S>(framed: &mut Framed<S, FrameCodec>) -> Option<Control>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let frame = tokio::time::timeout(PROMPTLY, framed.next())
            .await
            .expect("the node answers or closes in time");
        match frame {
            None | Some(Err(_)) => return None,
            Some(Ok(frame)) if frame.kind == wire::CONTROL => {
                return Some(Control::decode(&frame.body).expect("a control message"));
            }
            Some(Ok(_)) => continue,
        }
    }
}

/// Reads until the node refuses the link; returns its reason once the node has
/// closed the connection too.
pub async fn refusal<S>(framed: &mut Framed<S, FrameCodec>, what: &str) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let reason = loop {
        match next_control(framed).await {
            Some(Control::Refused { reason }) => break reason,
            Some(_) => continue,
            None => panic!("{what}: the node closed without saying why"),
        }
    };
    while next_control(framed).await.is_some() {}
    reason
}

pub fn member(name: &str, role: &str, bridge: SocketAddr, services: &[&str]) -> Member {
    Member {
        name: name.into(),
        role: role.into(),
        bridge,
        api: None,
        services: services
            .iter()
            .map(|s| Offer {
                name: s.to_string(),
                workers: 1,
                capacity: 1_000,
                timeout_ms: 5_000,
            })
            .collect(),
    }
}

/// A cluster's TLS files, as `colony certs` writes them.
pub struct Certs {
    dir: PathBuf,
}

impl Certs {
    pub fn new(root: &TempDir, nodes: &[&str]) -> Certs {
        let dir = root.path().join("certs");
        let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        colony::certs::write(&dir, &nodes).expect("colony certs writes the files");
        Certs { dir }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A `bridge:` section with TLS for node `name`.
    pub fn bridge_yaml(
        &self,
        secret: &tempfile::NamedTempFile,
        join: Option<SocketAddr>,
        name: &str,
    ) -> String {
        let join = join
            .map(|a| format!("[{a}]"))
            .unwrap_or_else(|| "[]".into());
        format!(
            "bridge: {{ listen: 127.0.0.1:0, join: {join}, secret_file: {}, heartbeat: 100ms, \
             tls: {{ cert: {}, key: {}, ca: {} }} }}\n",
            secret.path().display(),
            self.file(&format!("{name}.pem")).display(),
            self.file(&format!("{name}.key")).display(),
            self.file("ca.pem").display(),
        )
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        for cert in pem_certs(&self.file("ca.pem")) {
            roots.add(cert).expect("CA certificate");
        }
        Arc::new(roots)
    }

    /// A TLS client presenting `holder`'s certificate.
    pub fn client(&self, holder: &str) -> tokio_rustls::TlsConnector {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots())
            .with_client_auth_cert(
                pem_certs(&self.file(&format!("{holder}.pem"))),
                pem_key(&self.file(&format!("{holder}.key"))),
            )
            .expect("client config");
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// A TLS server presenting `holder`'s certificate, asking for the CA's.
    pub fn server(&self, holder: &str) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots(), provider.clone())
            .build()
            .unwrap();
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                pem_certs(&self.file(&format!("{holder}.pem"))),
                pem_key(&self.file(&format!("{holder}.key"))),
            )
            .expect("server config");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

pub fn pem_certs(path: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let file = std::fs::File::open(path).expect("open PEM");
    rustls_pemfile::certs(&mut std::io::BufReader::new(file))
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

pub fn pem_key(path: &Path) -> rustls::pki_types::PrivateKeyDer<'static> {
    let file = std::fs::File::open(path).expect("open PEM");
    rustls_pemfile::private_key(&mut std::io::BufReader::new(file))
        .expect("PEM key")
        .expect("a key")
}

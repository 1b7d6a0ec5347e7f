//! Optional mutual TLS under the bridge handshake (`bridge.tls`): both ends present
//! a certificate signed by the cluster's CA, and both check the other's.
//!
//! Each node's certificate names the node (subjectAltName `DNS:NODE`, as
//! `colony certs` writes them). A dialer reaches a node by IP and port and learns
//! its name only from its Hello, so the TLS layer checks the chain alone
//! ([`ClusterCa`]); once the Hello has named the peer, [`PeerCert::check`] holds the
//! certificate to that name, on both sides. A node also refuses to start with a
//! certificate that does not name itself.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::{
    verify_server_cert_signed_by_trust_anchor, verify_server_name, WebPkiServerVerifier,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use crate::config::TlsSection;

/// The server name a dialer asks for: never checked (see [`ClusterCa`]), and not
/// sent (SNI is off).
const DIAL_NAME: &str = "colony";

/// A node's TLS setup for both directions.
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

/// The end-entity certificate a peer presented.
pub(crate) struct PeerCert(CertificateDer<'static>);

impl PeerCert {
    /// Whether this certificate names node `name` (subjectAltName `DNS:name`).
    pub(crate) fn check(&self, name: &str) -> Result<(), String> {
        names(&self.0, name).map_err(|why| format!("the TLS certificate of node {name} {why}"))
    }
}

/// Whether `cert` is valid for the DNS name `name`; else what is wrong, to follow
/// "the certificate …".
fn names(cert: &CertificateDer<'_>, name: &str) -> Result<(), String> {
    let dns = ServerName::try_from(name)
        .map_err(|_| "cannot name it: the node name is not a DNS name".to_string())?;
    let parsed = ParsedCertificate::try_from(cert).map_err(|e| format!("does not parse: {e}"))?;
    verify_server_name(&parsed, &dns)
        .map_err(|_| format!("is for another name (its subjectAltName must be DNS:{name})"))
}

/// Verifies a server's certificate chain against the cluster's CA, ignoring the
/// name asked for: the dialer does not know it yet. The name is checked after the
/// Hello instead ([`PeerCert::check`]). Signatures are checked by rustls's own
/// verifier.
#[derive(Debug)]
struct ClusterCa {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    signatures: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ClusterCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| format!("{}: {e}", path.display()))?
        .ok_or_else(|| format!("{}: no PEM private key in it", path.display()))
}

/// The end-entity certificate of a finished TLS session's peer.
fn peer_cert(session: &rustls::CommonState) -> Result<PeerCert, String> {
    session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| PeerCert(cert.clone().into_owned()))
        .ok_or_else(|| "TLS: the peer presented no certificate".to_string())
}

impl Tls {
    /// Loads the PEM files of `section` for node `node`, whose certificate must
    /// name it.
    pub(crate) fn load(section: &TlsSection, node: &str) -> Result<Tls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for ca in certs(&section.ca)? {
            roots
                .add(ca)
                .map_err(|e| format!("{}: {e}", section.ca.display()))?;
        }
        let roots = Arc::new(roots);
        let chain = certs(&section.cert)?;
        let key = key(&section.key)?;
        if let Some(own) = chain.first() {
            names(own, node).map_err(|why| {
                format!(
                    "{}: the certificate of node {node} {why}; `colony certs DIR --nodes {node}` \
                     writes one",
                    section.cert.display()
                )
            })?;
        }

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("{}: {e}", section.cert.display()))?;
        let signatures =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| e.to_string())?;
        let ca = ClusterCa {
            roots,
            provider: provider.clone(),
            signatures,
        };
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ca))
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("{}: {e}", section.cert.display()))?;
        client.enable_sni = false;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// Accepts a TLS session; returns it with the dialer's certificate.
    pub(crate) async fn accept<S>(
        &self,
        stream: S,
    ) -> Result<(server::TlsStream<S>, PeerCert), String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = self
            .acceptor
            .accept(stream)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let cert = peer_cert(stream.get_ref().1)?;
        Ok((stream, cert))
    }

    /// Opens a TLS session; returns it with the acceptor's certificate.
    pub(crate) async fn connect<S>(
        &self,
        stream: S,
    ) -> Result<(client::TlsStream<S>, PeerCert), String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(DIAL_NAME).map_err(|e| e.to_string())?;
        let stream = self
            .connector
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let cert = peer_cert(stream.get_ref().1)?;
        Ok((stream, cert))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::ClusterCa;

    fn der(pem: &str) -> CertificateDer<'static> {
        let mut bytes = pem.as_bytes();
        let first = rustls_pemfile::certs(&mut bytes).next();
        first.expect("a certificate").expect("PEM")
    }

    #[test]
    fn a_certificate_names_its_node_and_no_other() {
        let ca = ClusterCa::new("test CA").unwrap();
        for name in ["worker-a", "node_1", "n.1a"] {
            let cert = PeerCert(der(&ca.node(name).unwrap().cert_pem));
            assert!(cert.check(name).is_ok(), "{name}");
            let err = cert.check("worker-b").unwrap_err();
            assert_eq!(
                err,
                "the TLS certificate of node worker-b is for another name \
                 (its subjectAltName must be DNS:worker-b)"
            );
        }
        let cert = PeerCert(der(&ca.node("w").unwrap().cert_pem));
        assert!(cert.check("-w").unwrap_err().contains("not a DNS name"));
    }
}

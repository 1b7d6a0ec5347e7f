//! `colony certs DIR --nodes a,b,c`: the files `bridge.tls` needs, made with
//! rcgen. A cluster CA (`ca.pem`, `ca.key`) signs one certificate per node
//! (`NODE.pem`, `NODE.key`) whose subjectAltName is `DNS:NODE`: a node's
//! certificate must name it, and each node checks that its peer's does (see
//! `bridge::tls`). Keys are written with mode 0600; nothing is overwritten.
//!
//! ```no_run
//! let dir = std::path::Path::new(".colony/certs");
//! let written = colony::certs::write(dir, &["master".into(), "worker-a".into()])?;
//! assert_eq!(written.len(), 6);
//! # Ok::<(), colony::certs::CertsError>(())
//! ```

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio_rustls::rustls::pki_types::ServerName;

/// The longest node name.
const MAX_NAME: usize = 64;

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// No node was named.
    #[error("no node names: give them as --nodes master,worker-a,worker-b")]
    NoNodes,
    /// A node name cannot be a certificate's name or a file's.
    #[error("bad node name {name:?}: {why}")]
    BadName {
        /// The name, as given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A file to write exists already.
    #[error("{0} exists; remove it or choose another directory (nothing was written)")]
    Exists(PathBuf),
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// rcgen could not make a key or certificate.
    #[error("cannot make a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A cluster's certificate authority.
pub struct ClusterCa {
    cert: Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterCa(…)")
    }
}

/// One node's certificate and private key, PEM.
#[derive(Debug, Clone)]
pub struct NodeCert {
    /// The certificate, signed by the cluster CA.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl ClusterCa {
    /// A fresh CA with a new key; `label` is its common name.
    pub fn new(label: &str) -> Result<ClusterCa, CertsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, label);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa { cert, key })
    }

    /// The CA certificate, PEM: every node's `bridge.tls.ca`.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA's private key, PEM: keep it off the nodes.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate for node `name` (subjectAltName `DNS:name`), for both ends
    /// of a link.
    pub fn node(&self, name: &str) -> Result<NodeCert, CertsError> {
        check_name(name)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(NodeCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Refuses a node name that a certificate cannot carry as its DNS name, or that
/// would be the CA's files.
pub fn check_name(name: &str) -> Result<(), CertsError> {
    let bad = |why| {
        Err(CertsError::BadName {
            name: name.chars().take(MAX_NAME + 1).collect(),
            why,
        })
    };
    if name.is_empty() || name.len() > MAX_NAME {
        return bad("a node name has 1 to 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("a node name has only letters, digits, '.', '_' and '-'");
    }
    if !matches!(ServerName::try_from(name), Ok(ServerName::DnsName(_))) {
        return bad("a certificate cannot carry it as a DNS name (a '-' or '.' at an end, \"..\", or a last label of digits only)");
    }
    if name.eq_ignore_ascii_case("ca") {
        return bad("ca.pem and ca.key are the CA's files");
    }
    Ok(())
}

/// Writes a new cluster CA and a certificate and key for each of `nodes` into
/// `dir` (created if missing); returns the files written. Nothing is written when
/// a name is bad or a file exists already.
pub fn write(dir: &Path, nodes: &[String]) -> Result<Vec<PathBuf>, CertsError> {
    if nodes.is_empty() {
        return Err(CertsError::NoNodes);
    }
    let mut seen = std::collections::HashSet::new();
    for name in nodes {
        check_name(name)?;
        // Certificate names match without case: `A` and `a` would share one.
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(CertsError::BadName {
                name: name.clone(),
                why: "named twice (names differing only in case count as one)",
            });
        }
    }
    let ca = ClusterCa::new("colony cluster CA")?;
    let mut files = vec![
        (dir.join("ca.pem"), ca.cert_pem(), false),
        (dir.join("ca.key"), ca.key_pem(), true),
    ];
    for name in nodes {
        let node = ca.node(name)?;
        files.push((dir.join(format!("{name}.pem")), node.cert_pem, false));
        files.push((dir.join(format!("{name}.key")), node.key_pem, true));
    }
    if let Some((path, _, _)) = files.iter().find(|(path, _, _)| path.exists()) {
        return Err(CertsError::Exists(path.clone()));
    }
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::with_capacity(files.len());
    for (path, pem, private) in files {
        write_new(&path, &pem, private)?;
        written.push(path);
    }
    Ok(written)
}

/// Writes a file that must not exist yet; a private one with mode 0600 from the
/// start, so that no one can read it in between.
fn write_new(path: &Path, text: &str, private: bool) -> Result<(), CertsError> {
    let io = |source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    options.mode(if private { 0o600 } else { 0o644 });
    let mut file = options.open(path).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Runs `colony certs DIR --nodes …`: writes the files and prints each one.
pub fn run(dir: &Path, nodes: &[String]) -> ExitCode {
    match write(dir, nodes) {
        Ok(written) => {
            for path in written {
                println!("wrote {}", path.display());
            }
            println!(
                "give each node {}/ca.pem and its own NODE.pem and NODE.key as \
                 bridge.tls {{ ca, cert, key }}; keep ca.key off the nodes",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_certificate_cannot_carry_are_refused() {
        for good in ["master", "worker-a", "w", "node_1", "a.b", "Worker-B"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let long = "x".repeat(65);
        for bad in [
            "", "-a", "a-", "a..b", ".a", "123", "a b", "a/b", "ca", "CA", "é", &long,
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn writes_the_ca_and_each_node_with_private_keys_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::TempDir::new().unwrap();
        let out = dir.path().join("certs/new");
        let nodes = vec!["master".to_string(), "worker-a".to_string()];
        let written = write(&out, &nodes).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "ca.pem",
                "ca.key",
                "master.pem",
                "master.key",
                "worker-a.pem",
                "worker-a.key"
            ]
        );
        for path in &written {
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            let key = path.extension().is_some_and(|e| e == "key");
            assert_eq!(
                mode & 0o077 == 0,
                key,
                "{} has mode {mode:o}",
                path.display()
            );
        }
        let again = write(&out, &nodes).unwrap_err();
        assert!(matches!(again, CertsError::Exists(_)), "{again}");
        let twice = write(&dir.path().join("x"), &["a".into(), "A".into()]).unwrap_err();
        assert!(matches!(twice, CertsError::BadName { .. }), "{twice}");
        assert!(!dir.path().join("x").exists());
    }
}

//! TLS with rustls (ring provider), TLS 1.2 and 1.3 only, and dev certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use crate::fault::Fault;

/// TLS material could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is unreadable or not PEM.
    #[error("cannot read certificate {path}: {source}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate found in {0}")]
    NoCertificate(PathBuf),
    /// The key file is unreadable or holds no private key.
    #[error("cannot read private key {path}: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        source: rustls_pki_types::pem::Error,
    },
    /// rustls refused the certificate and key.
    #[error("certificate and key do not form a usable pair: {0}")]
    Unusable(rustls::Error),
    /// Generating a development certificate failed.
    #[error("generating dev certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing development certificate files failed.
    #[error("writing dev certificates: {0}")]
    Io(#[from] std::io::Error),
}

impl TlsError {
    /// Whose fault: the operator's files, except generation (relay's own).
    pub fn fault(&self) -> Fault {
        match self {
            TlsError::Generate(_) => Fault::Internal,
            _ => Fault::Operator,
        }
    }

    /// Whether trying again may help: only a failed write of dev certificates (the disk
    /// may have room later); bad files stay bad until the operator fixes them.
    pub fn retryable(&self) -> bool {
        matches!(self, TlsError::Io(_))
    }
}

/// Load a PEM certificate chain and private key into a rustls server config.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let bad_cert = |source| TlsError::Certificate {
        path: cert.to_owned(),
        source,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(bad_cert)?
        .collect::<Result<_, _>>()
        .map_err(bad_cert)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Unusable)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Unusable)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Paths of a development certificate set.
#[derive(Debug, Clone)]
pub struct DevCerts {
    /// The dev CA certificate clients should trust.
    pub ca: PathBuf,
    /// Server certificate for localhost, 127.0.0.1 and ::1, signed by the CA.
    pub cert: PathBuf,
    /// Server private key.
    pub key: PathBuf,
}

impl DevCerts {
    /// The files in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        DevCerts {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }
}

/// Generate a dev CA and a localhost server certificate into `dir`, unless they exist (or `force`).
pub fn ensure_dev_certs(dir: &Path, force: bool) -> Result<DevCerts, TlsError> {
    let files = DevCerts::in_dir(dir);
    if !force && files.ca.exists() && files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let e = TlsError::Generate;
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(
        DnType::CommonName,
        "relay development CA (never trust in production)",
    );
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let key = KeyPair::generate().map_err(e)?;
    let mut leaf = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(e)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "relay dev server");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf.signed_by(&key, &ca_cert, &ca_key).map_err(e)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(&files.ca, ca_cert.pem())?;
    std::fs::write(&files.cert, leaf_cert.pem())?;
    write_private(&files.key, key.serialize_pem().as_bytes())?;
    tracing::info!(dir = %dir.display(), "generated development TLS certificates (trust ca.pem in dev clients only)");
    Ok(files)
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(data)
}

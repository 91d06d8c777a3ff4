//! rustls configurations built from PEM files, the one way tokenwatch reads TLS
//! material (the HTTP listener's certificate, a syslog collector's CA, a client
//! certificate for mutual TLS).
//!
//! Every configuration uses the aws-lc-rs provider (already tokenwatch's crypto
//! library through jsonwebtoken), rustls's default cipher suites, and TLS 1.3 or
//! 1.2 only. A private key file that group or others can access is refused, as
//! is a key that does not belong to the certificate it is paired with: both are
//! mistakes best caught before the first connection.
//!
//! ```no_run
//! use std::path::Path;
//! let key = tls_files::load_certified_key(Path::new("server.pem"), Path::new("server.key"))?;
//! println!("serving the certificate with SHA-256 {}", tls_files::cert_sha256_hex(&key));
//! # Ok::<(), tls_files::TlsFileError>(())
//! ```

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

/// TLS 1.3 first, then 1.2; rustls implements nothing older.
pub static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// PEM files larger than this are refused rather than read into memory.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Why TLS material could not be used. Each names the file and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsFileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is larger than 1 MiB; it is not a PEM certificate or key", path.display())]
    TooLarge { path: PathBuf },
    #[error(
        "the private key {p} is accessible to group or others (mode {mode:o}); run `chmod 600 {p}` and make it owned by the user tokenwatch runs as",
        p = path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{} is not valid PEM: {detail}", path.display())]
    BadPem { path: PathBuf, detail: String },
    #[error("{} holds no PEM certificate (a `-----BEGIN CERTIFICATE-----` block)", path.display())]
    NoCertificate { path: PathBuf },
    #[error(
        "{} holds no PEM private key (`BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY`)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("the private key {} cannot be used: {source}", path.display())]
    UnsupportedKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("the certificate {} cannot be used: {source}", path.display())]
    BadCertificate {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error(
        "the private key {} does not belong to the certificate {} (their public keys differ); give the key the certificate was issued for",
        key.display(), cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("the CA file {}: {source}", path.display())]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("building the TLS configuration failed: {0}")]
    Config(rustls::Error),
}

impl TlsFileError {
    /// A short code for audit events and metrics (`key_mismatch`, `key_permissions`, …).
    pub fn reason(&self) -> &'static str {
        match self {
            TlsFileError::Read { .. } => "unreadable",
            TlsFileError::TooLarge { .. } | TlsFileError::BadPem { .. } => "bad_pem",
            TlsFileError::KeyPermissions { .. } => "key_permissions",
            TlsFileError::NoCertificate { .. } => "no_certificate",
            TlsFileError::NoKey { .. } => "no_key",
            TlsFileError::UnsupportedKey { .. } => "unsupported_key",
            TlsFileError::BadCertificate { .. } => "bad_certificate",
            TlsFileError::KeyMismatch { .. } => "key_mismatch",
            TlsFileError::BadCa { .. } => "bad_ca",
            TlsFileError::Config(_) => "config",
        }
    }
}

/// The aws-lc-rs provider with rustls's default (safe) cipher suites and groups.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_file(path: &Path, private: bool) -> Result<Vec<u8>, TlsFileError> {
    let read = |source| TlsFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let f = File::open(path).map_err(read)?;
    // The mode of the file actually opened, not of whatever the path names a moment later.
    let meta = f.metadata().map_err(read)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TlsFileError::KeyPermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = private;
    if meta.len() > MAX_PEM_BYTES {
        return Err(TlsFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let mut buf = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    f.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(read)?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(buf)
}

fn bad_pem(path: &Path, e: rustls::pki_types::pem::Error) -> TlsFileError {
    TlsFileError::BadPem {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Every certificate in a PEM file, in file order (end-entity first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let pem = read_file(path, false)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(path, e))?;
    if certs.is_empty() {
        return Err(TlsFileError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file, refused when group or others can access the file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let pem = read_file(path, true)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(k) => Ok(k),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(TlsFileError::NoKey {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(bad_pem(path, e)),
    }
}

/// A certificate chain and its private key, checked to belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsFileError> {
    certified_key(cert, key, load_certs(cert)?, load_private_key(key)?)
}

fn certified_key(
    cert: &Path,
    key: &Path,
    chain: Vec<CertificateDer<'static>>,
    der: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, TlsFileError> {
    let signing_key = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|source| TlsFileError::UnsupportedKey {
            path: key.to_path_buf(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsFileError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
        // A key whose public half cannot be compared is refused too: serving a
        // pair nobody checked is how a wrong key reaches production.
        Err(source) => Err(TlsFileError::BadCertificate {
            path: cert.to_path_buf(),
            source,
        }),
    }
}

/// The SHA-256 of the end-entity certificate (DER), in lowercase hex: what
/// `openssl x509 -fingerprint -sha256` prints, without the colons.
pub fn cert_sha256_hex(key: &CertifiedKey) -> String {
    let Some(cert) = key.cert.first() else {
        return String::new();
    };
    let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.as_ref());
    sha.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The trust anchors of a PEM CA file (one or more certificates).
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsFileError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|source| TlsFileError::BadCa {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(roots)
}

/// A server configuration whose certificate comes from `resolver` (which may swap
/// it at run time), with no client authentication.
pub fn server_config(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<ServerConfig, TlsFileError> {
    Ok(ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(TlsFileError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver))
}

/// A client configuration that trusts only the CAs in `ca_file` and, for mutual
/// TLS, presents `client` (certificate file, key file).
pub fn client_config(
    ca_file: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsFileError> {
    let roots = load_roots(ca_file)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(TlsFileError::Config)?
        .with_root_certificates(roots);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = load_certs(cert)?;
            let der = load_private_key(key)?;
            certified_key(cert, key, chain.clone(), der.clone_key())?;
            builder
                .with_client_auth_cert(chain, der)
                .map_err(TlsFileError::Config)
        }
    }
}

#[cfg(test)]
mod tests;

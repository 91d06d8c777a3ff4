//! Tests only: a throwaway certificate authority (rcgen, ECDSA P-256) that
//! issues server and client certificates and writes them as PEM files, the
//! private keys with mode 600 as tokenwatch requires.
//!
//! ```
//! let ca = test_pki::Ca::new("test CA");
//! let server = ca.issue("server one", &["localhost", "127.0.0.1"]);
//! assert!(server.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
//! assert!(server.key_pem.contains("PRIVATE KEY"));
//! ```

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A CA certificate and the key that signs with it.
pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// An issued certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "tokenwatch tests");
    dn.push(DnType::CommonName, common_name);
    dn
}

impl Ca {
    pub fn new(common_name: &str) -> Ca {
        let key = KeyPair::generate().expect("generating a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-signing the CA");
        Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `common_name`, valid for `names` (DNS names or IP
    /// addresses), usable by a TLS server and a TLS client alike.
    pub fn issue(&self, common_name: &str, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("generating a key");
        let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("certificate params");
        params.distinguished_name = name(common_name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("signing the certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the CA certificate to `dir/<stem>.pem` and returns the path.
    pub fn write(&self, dir: &Path, stem: &str) -> PathBuf {
        let path = dir.join(format!("{stem}.pem"));
        std::fs::write(&path, &self.cert_pem).expect("writing the CA certificate");
        path
    }
}

impl Leaf {
    /// Writes `dir/<stem>.pem` and `dir/<stem>.key` (mode 600); returns (cert, key).
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("writing a certificate");
        write_private(&key, &self.key_pem);
        (cert, key)
    }
}

/// Writes a private key file readable by its owner only (created so, never
/// briefly wider).
pub fn write_private(path: &Path, pem: &str) {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).expect("creating a key file");
    f.write_all(pem.as_bytes()).expect("writing a key file");
}

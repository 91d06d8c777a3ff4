//! Signing keys: generation, on-disk storage, rotation, and the public JWKS.
//!
//! Each key lives in its own file `<kid>.json` (mode 0600) in a directory of mode
//! 0700. Which key is active is not stored: it is the newest key generated here that
//! is not retired. That keeps rotation crash-safe without a second file to keep in
//! step: the new key's file is written before the old one is marked retired, and a
//! crash in between leaves two unretired keys, of which the newer wins on reload.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
    RSA_PKCS1_SHA256,
};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::DecodingKey;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use zeroize::{Zeroize, Zeroizing};

use crate::alg::Alg;
use crate::sanitize::is_safe_id;

const KEY_FILE_FORMAT: u32 = 1;
const MIN_RSA_BITS: usize = 2048;
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// What the outside world may know about a key (never its material).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    pub kid: String,
    pub alg: Alg,
    /// Unix seconds.
    pub created_at: i64,
    /// When it stopped signing; it still verifies until pruned.
    pub retired_at: Option<i64>,
    /// The one key new tokens are signed with.
    pub active: bool,
    /// An imported shared secret: accepted for verification, never used to sign.
    pub verify_only: bool,
    /// For an imported key, the only issuer (and audience) its tokens may claim.
    /// `None` on an imported key from before issuer binding: it verifies nothing
    /// until it is imported again with an issuer.
    pub binding: Option<IssuerBinding>,
}

/// Whose tokens an imported key verifies: `iss` must equal `issuer`, and `aud` must
/// contain `audience` (when `None`, the service's own configured audience). Bound at
/// import, so a shared secret can never vouch for tokenwatch's own issuer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IssuerBinding {
    issuer: String,
    audience: Option<String>,
}

impl IssuerBinding {
    /// Refuses an empty issuer or audience: a binding to nothing would bind nothing.
    pub fn new(issuer: impl Into<String>, audience: Option<String>) -> Result<Self, KeyError> {
        let issuer = issuer.into();
        if issuer.trim().is_empty() || audience.as_deref().is_some_and(|a| a.trim().is_empty()) {
            return Err(KeyError::EmptyBinding);
        }
        Ok(IssuerBinding { issuer, audience })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> Option<&str> {
        self.audience.as_deref()
    }
}

/// Errors from loading, creating, rotating or importing keys. Messages name the
/// file and the fix; they never contain key material.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key store I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is accessible by group or others (mode {mode:o}); \
         run `chmod {wanted:o} {path}` and restart"
    )]
    InsecurePermissions {
        path: PathBuf,
        mode: u32,
        wanted: u32,
    },
    #[error("key file {path} is unusable: {reason}; restore it from backup or remove it")]
    Corrupt { path: PathBuf, reason: String },
    #[error("generating a new {alg} key failed in the crypto library")]
    Generation { alg: Alg },
    #[error(
        "{alg} secret is {len} bytes; RFC 7518 §3.2 requires at least {min} bytes \
         (the hash output size) for this algorithm"
    )]
    SecretTooShort { alg: Alg, len: usize, min: usize },
    #[error("RSA key of {bits} bits refused: at least 2048 bits are required")]
    RsaTooSmall { bits: usize },
    #[error("{alg} is not an HMAC algorithm; only HS256, HS384 or HS512 secrets can be imported")]
    NotHmac { alg: Alg },
    #[error("key id {kid:?} is already used by a different key; choose another kid")]
    KidInUse { kid: String },
    #[error("invalid key id: use 1 to 64 characters from A-Z a-z 0-9 . _ -")]
    InvalidKid,
    #[error("JWK cannot be imported: {0}")]
    UnsupportedJwk(&'static str),
    #[error("an imported key needs a non-empty issuer (and, if given, a non-empty audience)")]
    EmptyBinding,
    #[error(
        "issuer {issuer:?} is tokenwatch's own issuer; an imported key may never vouch for it. \
         Import the key for the issuer that signs with it"
    )]
    OwnIssuer { issuer: String },
}

/// A private key in usable form, parsed once at load so signing never re-parses it.
enum Signer {
    // Boxed: an HMAC key holds precomputed hash states and dwarfs the other variants.
    Hmac(Box<hmac::Key>),
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl Signer {
    fn sign(&self, msg: &[u8]) -> Option<Vec<u8>> {
        match self {
            Signer::Hmac(key) => Some(hmac::sign(key, msg).as_ref().to_vec()),
            Signer::Rsa(kp) => {
                let mut sig = vec![0; kp.public_modulus_len()];
                kp.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg, &mut sig)
                    .ok()?;
                Some(sig)
            }
            Signer::Ecdsa(kp) => {
                let mut sig = kp.sign(&SystemRandom::new(), msg).ok()?.as_ref().to_vec();
                // aws-lc emits either S; the verifier accepts only the low one.
                crate::low_s::normalize(&mut sig);
                Some(sig)
            }
            Signer::Ed25519(kp) => Some(kp.sign(msg).as_ref().to_vec()),
        }
    }
}

struct PublicParts {
    jwk: Value,
    /// X.509 SubjectPublicKeyInfo DER, for PEM export.
    spki_der: Vec<u8>,
}

/// One key as held in memory.
pub(crate) struct KeyEntry {
    kid: String,
    alg: Alg,
    created_at: i64,
    retired_at: Option<i64>,
    imported: bool,
    /// The issuer an imported key is trusted for; `None` for own keys and for
    /// imported keys stored before binding existed.
    binding: Option<IssuerBinding>,
    /// Kept only to rewrite the file when the key is retired.
    material: Zeroizing<Vec<u8>>,
    signer: Option<Signer>,
    decoding: DecodingKey,
    public: Option<PublicParts>,
}

impl KeyEntry {
    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    pub(crate) fn alg(&self) -> Alg {
        self.alg
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// `None` for a key generated here; for an imported key, its binding (itself
    /// `None` when it has none and must verify nothing).
    pub(crate) fn imported_binding(&self) -> Option<Option<&IssuerBinding>> {
        self.imported.then_some(self.binding.as_ref())
    }

    /// Signs `msg`, or `None` for a verification-only key or a crypto failure.
    pub(crate) fn sign(&self, msg: &[u8]) -> Option<Vec<u8>> {
        self.signer.as_ref()?.sign(msg)
    }

    fn info(&self, active_kid: &str) -> KeyInfo {
        KeyInfo {
            kid: self.kid.clone(),
            alg: self.alg,
            created_at: self.created_at,
            retired_at: self.retired_at,
            active: self.kid == active_kid,
            verify_only: self.imported,
            binding: self.binding.clone(),
        }
    }

    /// Builds the in-memory key from its material, enforcing the size rules.
    fn build(
        kid: String,
        alg: Alg,
        created_at: i64,
        retired_at: Option<i64>,
        imported: bool,
        material: Zeroizing<Vec<u8>>,
    ) -> Result<KeyEntry, BuildError> {
        let (signer, decoding, public) = match alg {
            Alg::HS256 | Alg::HS384 | Alg::HS512 => {
                let min = alg.min_secret_len();
                if material.len() < min {
                    return Err(BuildError::Key(KeyError::SecretTooShort {
                        alg,
                        len: material.len(),
                        min,
                    }));
                }
                let hmac_alg = match alg {
                    Alg::HS384 => hmac::HMAC_SHA384,
                    Alg::HS512 => hmac::HMAC_SHA512,
                    _ => hmac::HMAC_SHA256,
                };
                let signer = (!imported)
                    .then(|| Signer::Hmac(Box::new(hmac::Key::new(hmac_alg, &material))));
                (signer, DecodingKey::from_secret(&material), None)
            }
            Alg::RS256 | Alg::ES256 | Alg::EdDSA if imported => {
                (None, public_decoding_key(alg, &material)?, None)
            }
            Alg::RS256 => {
                // Checked before parsing so the refusal says why: the crypto
                // library rejects small keys with an unspecific error.
                if let Some(bits) = rsa_pkcs8_modulus_bits(&material) {
                    if bits < MIN_RSA_BITS {
                        return Err(BuildError::Key(KeyError::RsaTooSmall { bits }));
                    }
                }
                let kp = RsaKeyPair::from_pkcs8(&material)
                    .map_err(|_| BuildError::Invalid("not a valid RSA PKCS#8 private key"))?;
                let bits = kp.public_modulus_len() * 8;
                if bits < MIN_RSA_BITS {
                    return Err(BuildError::Key(KeyError::RsaTooSmall { bits }));
                }
                let pk = kp.public_key();
                let n = pk.modulus().big_endian_without_leading_zero().to_vec();
                let e = pk.exponent().big_endian_without_leading_zero().to_vec();
                let spki_der = pk
                    .as_der()
                    .map_err(|_| BuildError::Invalid("RSA public key cannot be encoded"))?
                    .as_ref()
                    .to_vec();
                let jwk = json!({
                    "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                    "n": URL_SAFE_NO_PAD.encode(&n), "e": URL_SAFE_NO_PAD.encode(&e),
                });
                let decoding = DecodingKey::from_rsa_raw_components(&n, &e);
                (
                    Some(Signer::Rsa(kp)),
                    decoding,
                    Some(PublicParts { jwk, spki_der }),
                )
            }
            Alg::ES256 => {
                let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &material)
                    .map_err(|_| BuildError::Invalid("not a valid P-256 PKCS#8 private key"))?;
                let point = kp.public_key().as_ref().to_vec();
                // Uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
                if point.len() != 65 || point[0] != 4 {
                    return Err(BuildError::Invalid("unexpected P-256 public key encoding"));
                }
                let spki_der = kp
                    .public_key()
                    .as_der()
                    .map_err(|_| BuildError::Invalid("EC public key cannot be encoded"))?
                    .as_ref()
                    .to_vec();
                let jwk = json!({
                    "kty": "EC", "kid": kid, "use": "sig", "alg": "ES256", "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
                });
                let decoding = DecodingKey::from_ec_der(&point);
                (
                    Some(Signer::Ecdsa(kp)),
                    decoding,
                    Some(PublicParts { jwk, spki_der }),
                )
            }
            Alg::EdDSA => {
                let kp = Ed25519KeyPair::from_pkcs8(&material)
                    .map_err(|_| BuildError::Invalid("not a valid Ed25519 PKCS#8 private key"))?;
                let raw = kp.public_key().as_ref().to_vec();
                let spki_der = kp
                    .public_key()
                    .as_der()
                    .map_err(|_| BuildError::Invalid("Ed25519 public key cannot be encoded"))?
                    .as_ref()
                    .to_vec();
                let jwk = json!({
                    "kty": "OKP", "kid": kid, "use": "sig", "alg": "EdDSA", "crv": "Ed25519",
                    "x": URL_SAFE_NO_PAD.encode(&raw),
                });
                let decoding = DecodingKey::from_ed_der(&raw);
                (
                    Some(Signer::Ed25519(kp)),
                    decoding,
                    Some(PublicParts { jwk, spki_der }),
                )
            }
        };
        Ok(KeyEntry {
            kid,
            alg,
            created_at,
            retired_at,
            imported,
            binding: None,
            material,
            signer,
            decoding,
            public,
        })
    }
}

/// Why material could not become a key: a policy error to report as is, or a
/// malformed blob to report against the file it came from.
enum BuildError {
    Key(KeyError),
    Invalid(&'static str),
}

impl BuildError {
    fn at(self, path: &Path) -> KeyError {
        match self {
            BuildError::Key(e) => e,
            BuildError::Invalid(reason) => KeyError::Corrupt {
                path: path.to_owned(),
                reason: reason.to_owned(),
            },
        }
    }
}

/// The on-disk form of one key. `material` is base64url of the PKCS#8 DER private
/// key, or of the raw HMAC secret.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    format: u32,
    kid: String,
    alg: Alg,
    created_at: i64,
    retired_at: Option<i64>,
    imported: bool,
    /// Added after format 1 shipped: absent in older files (an unbound import) and
    /// omitted for own keys, so files of own keys stay readable by older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    audience: Option<String>,
    material: String,
}

impl Drop for StoredKey {
    fn drop(&mut self) {
        self.material.zeroize();
    }
}

/// The set of signing and verification keys, with one active signing key.
pub struct KeyRing {
    dir: PathBuf,
    entries: HashMap<String, KeyEntry>,
    active: String,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("dir", &self.dir)
            .field("keys", &self.keys())
            .finish()
    }
}

impl KeyRing {
    /// Loads every key in `dir`; when none can sign (empty or missing directory, or
    /// only imported secrets), generates one active key of `alg`.
    ///
    /// The directory is created with mode 0700 and key files with 0600. An existing
    /// directory or key file that group or others can access is refused
    /// ([`KeyError::InsecurePermissions`]), as is an RSA key under 2048 bits or an
    /// HMAC secret shorter than its hash. An existing ring is used as it is even if
    /// `alg` differs from its active key: changing algorithm is a [`KeyRing::rotate`].
    pub fn load_or_create(dir: &Path, alg: Alg) -> Result<KeyRing, KeyError> {
        ensure_private_dir(dir)?;
        let mut entries = HashMap::new();
        let listing = fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
        for dirent in listing {
            let path = dirent.map_err(|e| io_err(dir, e))?.path();
            let is_key_file = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".json") && !n.starts_with('.'));
            if !is_key_file {
                continue;
            }
            let entry = read_key_file(&path)?;
            entries.insert(entry.kid.clone(), entry);
        }
        let mut ring = KeyRing {
            dir: dir.to_owned(),
            entries,
            active: String::new(),
        };
        match ring.newest_signing_kid() {
            Some(kid) => ring.active = kid,
            None => {
                let entry = generate_entry(dir, alg, crate::unix_now())?;
                ring.active = entry.kid.clone();
                ring.entries.insert(entry.kid.clone(), entry);
            }
        }
        Ok(ring)
    }

    /// Generates a new active key of `alg`. Previous signing keys are kept for
    /// verification and marked `retired_at = now`.
    pub fn rotate(&mut self, alg: Alg) -> Result<KeyInfo, KeyError> {
        let now = crate::unix_now();
        let entry = generate_entry(&self.dir, alg, now)?;
        self.install_active(entry, now)
    }

    /// Deletes keys retired for longer than `keep_for_secs` (set it to at least the
    /// longest token lifetime, so no live token loses its key). Returns their kids.
    /// The active key and imported secrets are never pruned.
    pub fn prune_retired(&mut self, now: i64, keep_for_secs: i64) -> Result<Vec<String>, KeyError> {
        let mut doomed: Vec<String> = self
            .entries
            .values()
            .filter(|e| {
                e.kid != self.active
                    && !e.imported
                    && e.retired_at
                        .is_some_and(|r| r.saturating_add(keep_for_secs) <= now)
            })
            .map(|e| e.kid.clone())
            .collect();
        doomed.sort();
        for kid in &doomed {
            let path = key_path(&self.dir, kid);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path, e)),
            }
            self.entries.remove(kid);
        }
        Ok(doomed)
    }

    /// Adds a shared HMAC secret under `kid`, accepted for verification only of
    /// tokens from `binding`'s issuer (tokens made by another service, e.g. PyJWT).
    /// Refuses a secret shorter than the hash output (RFC 7518 §3.2). Importing the
    /// same kid, alg and secret again is a no-op, or rebinds the key when the binding
    /// differs (this is how a key imported before binding existed is bound).
    /// [`crate::TokenService::import_hmac`] also refuses the service's own issuer.
    pub fn import_hmac(
        &mut self,
        kid: &str,
        alg: Alg,
        secret: &[u8],
        binding: &IssuerBinding,
    ) -> Result<KeyInfo, KeyError> {
        if !alg.is_hmac() {
            return Err(KeyError::NotHmac { alg });
        }
        if !is_safe_id(kid) {
            return Err(KeyError::InvalidKid);
        }
        if secret.len() < alg.min_secret_len() {
            return Err(KeyError::SecretTooShort {
                alg,
                len: secret.len(),
                min: alg.min_secret_len(),
            });
        }
        if let Some(existing) = self.entries.get(kid) {
            let same = existing.imported
                && existing.alg == alg
                && verify_slices_are_equal(&existing.material, secret).is_ok();
            return self.rebind_existing(kid, same, binding);
        }
        self.add_imported(kid, alg, Zeroizing::new(secret.to_vec()), binding)
    }

    /// An import of a kid already in the ring: the same key is (re)bound, anything
    /// else is a conflict.
    fn rebind_existing(
        &mut self,
        kid: &str,
        same_key: bool,
        binding: &IssuerBinding,
    ) -> Result<KeyInfo, KeyError> {
        let active = self.active.clone();
        let entry = match self.entries.get_mut(kid) {
            Some(entry) if same_key => entry,
            _ => {
                return Err(KeyError::KidInUse {
                    kid: kid.to_owned(),
                })
            }
        };
        if entry.binding.as_ref() != Some(binding) {
            let previous = entry.binding.replace(binding.clone());
            if let Err(e) = write_key_file(&self.dir, entry) {
                entry.binding = previous;
                return Err(e);
            }
        }
        Ok(entry.info(&active))
    }

    fn add_imported(
        &mut self,
        kid: &str,
        alg: Alg,
        material: Zeroizing<Vec<u8>>,
        binding: &IssuerBinding,
    ) -> Result<KeyInfo, KeyError> {
        let path = key_path(&self.dir, kid);
        let mut entry =
            KeyEntry::build(kid.to_owned(), alg, crate::unix_now(), None, true, material)
                .map_err(|e| e.at(&path))?;
        entry.binding = Some(binding.clone());
        write_key_file(&self.dir, &entry)?;
        let info = entry.info(&self.active);
        self.entries.insert(entry.kid.clone(), entry);
        Ok(info)
    }

    /// Adds another issuer's public key (an RFC 7517 JWK: RSA, EC P-256 or OKP
    /// Ed25519), accepted for verification only. The JWK must carry a `kid`; `alg`,
    /// when present, must match the key type, and `use`, when present, must be `sig`.
    /// RSA moduli under 2048 bits and JWKs holding private parts (`d`) are refused.
    /// Importing the identical key again is a no-op (or rebinds it, as for
    /// [`KeyRing::import_hmac`]). Only tokens from `binding`'s issuer verify with it.
    /// Imported keys are never republished in [`KeyRing::jwks`].
    pub fn import_jwk(
        &mut self,
        jwk: &Value,
        binding: &IssuerBinding,
    ) -> Result<KeyInfo, KeyError> {
        let obj = jwk
            .as_object()
            .ok_or(KeyError::UnsupportedJwk("not a JSON object"))?;
        let text = |name: &str| obj.get(name).and_then(Value::as_str);
        let kid = text("kid").ok_or(KeyError::InvalidKid)?;
        if !is_safe_id(kid) {
            return Err(KeyError::InvalidKid);
        }
        if obj.contains_key("d") {
            return Err(KeyError::UnsupportedJwk(
                "it contains private key material (d); import only the public key",
            ));
        }
        if text("use").is_some_and(|u| u != "sig") {
            return Err(KeyError::UnsupportedJwk("its use is not sig"));
        }
        let (alg, public) = match (text("kty"), text("crv")) {
            (Some("RSA"), _) => (
                Alg::RS256,
                json!({"kty": "RSA", "n": text("n"), "e": text("e")}),
            ),
            (Some("EC"), Some("P-256")) => (
                Alg::ES256,
                json!({"kty": "EC", "crv": "P-256", "x": text("x"), "y": text("y")}),
            ),
            (Some("OKP"), Some("Ed25519")) => (
                Alg::EdDSA,
                json!({"kty": "OKP", "crv": "Ed25519", "x": text("x")}),
            ),
            (Some("oct"), _) => {
                return Err(KeyError::UnsupportedJwk(
                    "shared secrets (kty oct) are imported with import_hmac",
                ))
            }
            _ => {
                return Err(KeyError::UnsupportedJwk(
                    "supported key types are RSA, EC P-256 and OKP Ed25519",
                ))
            }
        };
        if text("alg").is_some_and(|a| a != alg.as_str()) {
            return Err(KeyError::UnsupportedJwk(
                "its alg does not match its key type (RS256, ES256 or EdDSA)",
            ));
        }
        let material = Zeroizing::new(public.to_string().into_bytes());
        if let Some(existing) = self.entries.get(kid) {
            let same = existing.imported && existing.alg == alg && existing.material == material;
            return self.rebind_existing(kid, same, binding);
        }
        self.add_imported(kid, alg, material, binding)
    }

    /// Every key, newest first.
    pub fn keys(&self) -> Vec<KeyInfo> {
        let mut infos: Vec<KeyInfo> = self
            .entries
            .values()
            .map(|e| e.info(&self.active))
            .collect();
        infos.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| a.kid.cmp(&b.kid))
        });
        infos
    }

    /// The kid new tokens are signed with.
    pub fn active_kid(&self) -> &str {
        &self.active
    }

    /// RFC 7517 JWK Set of the public keys (active and retired-but-kept), each with
    /// `kid`, `alg` and `use: "sig"`. HMAC secrets are never published.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .keys()
            .iter()
            .filter_map(|info| self.entries.get(&info.kid)?.public.as_ref())
            .map(|p| p.jwk.clone())
            .collect();
        json!({ "keys": keys })
    }

    /// The public key of an asymmetric key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo),
    /// for verifiers configured with PEM files. `None` for HMAC keys and unknown kids.
    pub fn public_key_pem(&self, kid: &str) -> Option<String> {
        let der = &self.entries.get(kid)?.public.as_ref()?.spki_der;
        let b64 = STANDARD.encode(der);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        Some(pem)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn get(&self, kid: &str) -> Option<&KeyEntry> {
        self.entries.get(kid)
    }

    pub(crate) fn active_entry(&self) -> Option<&KeyEntry> {
        self.entries.get(&self.active)
    }

    /// Makes a freshly generated (and already persisted) key the active one and
    /// retires the others. Split from generation so a service can generate without
    /// holding its write lock.
    pub(crate) fn install_active(
        &mut self,
        entry: KeyEntry,
        now: i64,
    ) -> Result<KeyInfo, KeyError> {
        let new_kid = entry.kid.clone();
        let info = entry.info(&new_kid);
        self.entries.insert(new_kid.clone(), entry);
        self.active = new_kid.clone();
        let mut first_err = None;
        for e in self.entries.values_mut() {
            if e.kid != new_kid && !e.imported && e.retired_at.is_none() {
                e.retired_at = Some(now);
                if let Err(err) = write_key_file(&self.dir, e) {
                    // The new key is already active and persisted, and on reload the
                    // newest unretired key wins, so a failed retirement write does not
                    // undo the rotation; it is still reported.
                    first_err.get_or_insert(err);
                }
            }
        }
        match first_err {
            Some(err) => Err(err),
            None => Ok(info),
        }
    }

    fn newest_signing_kid(&self) -> Option<String> {
        self.entries
            .values()
            .filter(|e| !e.imported && e.retired_at.is_none())
            .max_by(|a, b| {
                a.created_at
                    .cmp(&b.created_at)
                    .then_with(|| a.kid.cmp(&b.kid))
            })
            .map(|e| e.kid.clone())
    }
}

/// The verification key of an imported public JWK (stored as its public members).
fn public_decoding_key(alg: Alg, material: &[u8]) -> Result<DecodingKey, BuildError> {
    let jwk: serde_json::Map<String, Value> = serde_json::from_slice(material)
        .map_err(|_| BuildError::Invalid("imported public key is not a JSON object"))?;
    let field = |name: &str| -> Result<Vec<u8>, BuildError> {
        jwk.get(name)
            .and_then(Value::as_str)
            .and_then(|v| URL_SAFE_NO_PAD.decode(v.as_bytes()).ok())
            .ok_or(BuildError::Invalid(
                "a JWK member is missing or not base64url",
            ))
    };
    match alg {
        Alg::RS256 => {
            let n = field("n")?;
            let e = field("e")?;
            let n: Vec<u8> = n.into_iter().skip_while(|b| *b == 0).collect();
            let bits = n
                .first()
                .map_or(0, |top| n.len() * 8 - top.leading_zeros() as usize);
            if bits < MIN_RSA_BITS {
                return Err(BuildError::Key(KeyError::RsaTooSmall { bits }));
            }
            let e_ok = !e.is_empty()
                && e.len() <= 4
                && e.last().is_some_and(|b| b & 1 == 1)
                && e.iter().any(|b| *b > 1);
            if !e_ok {
                return Err(BuildError::Invalid("RSA public exponent is not acceptable"));
            }
            Ok(DecodingKey::from_rsa_raw_components(&n, &e))
        }
        Alg::ES256 => {
            let (x, y) = (field("x")?, field("y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err(BuildError::Invalid(
                    "P-256 coordinates must be 32 bytes each",
                ));
            }
            let mut point = Vec::with_capacity(65);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Ok(DecodingKey::from_ec_der(&point))
        }
        Alg::EdDSA => {
            let x = field("x")?;
            if x.len() != 32 {
                return Err(BuildError::Invalid("an Ed25519 public key is 32 bytes"));
            }
            Ok(DecodingKey::from_ed_der(&x))
        }
        _ => Err(BuildError::Invalid("not a public-key algorithm")),
    }
}

/// Generates a key of `alg` and persists it in `dir`, without touching any ring.
pub(crate) fn generate_entry(dir: &Path, alg: Alg, now: i64) -> Result<KeyEntry, KeyError> {
    let rng = SystemRandom::new();
    let failed = |_| KeyError::Generation { alg };
    let mut id = [0u8; 8];
    rng.fill(&mut id).map_err(failed)?;
    let kid = format!("{}-{}", alg.as_str().to_ascii_lowercase(), hex::encode(id));
    let material = Zeroizing::new(match alg {
        Alg::HS256 | Alg::HS384 | Alg::HS512 => {
            // 64 bytes meets RFC 7518 §3.2 for every HS variant.
            let mut secret = vec![0u8; 64];
            rng.fill(&mut secret).map_err(failed)?;
            secret
        }
        Alg::RS256 => aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048)
            .map_err(failed)?
            .as_der()
            .map_err(failed)?
            .as_ref()
            .to_vec(),
        Alg::ES256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(failed)?
            .as_ref()
            .to_vec(),
        Alg::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(failed)?
            .as_ref()
            .to_vec(),
    });
    let entry = KeyEntry::build(kid, alg, now, None, false, material)
        .map_err(|_| KeyError::Generation { alg })?;
    write_key_file(dir, &entry)?;
    Ok(entry)
}

fn key_path(dir: &Path, kid: &str) -> PathBuf {
    dir.join(format!("{kid}.json"))
}

fn io_err(path: &Path, source: io::Error) -> KeyError {
    KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

fn refuse_loose_mode(path: &Path, meta: &fs::Metadata, wanted: u32) -> Result<(), KeyError> {
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::InsecurePermissions {
            path: path.to_owned(),
            mode,
            wanted,
        });
    }
    Ok(())
}

fn ensure_private_dir(dir: &Path) -> Result<(), KeyError> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => refuse_loose_mode(dir, &meta, DIR_MODE),
        Ok(_) => Err(KeyError::Corrupt {
            path: dir.to_owned(),
            reason: "the key store path exists but is not a directory (symlinks are refused)"
                .into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|e| io_err(dir, e)),
        Err(e) => Err(io_err(dir, e)),
    }
}

fn read_key_file(path: &Path) -> Result<KeyEntry, KeyError> {
    let meta = fs::symlink_metadata(path).map_err(|e| io_err(path, e))?;
    if !meta.is_file() {
        return Err(KeyError::Corrupt {
            path: path.to_owned(),
            reason: "not a regular file (symlinks are refused)".into(),
        });
    }
    refuse_loose_mode(path, &meta, FILE_MODE)?;
    let bytes = Zeroizing::new(fs::read(path).map_err(|e| io_err(path, e))?);
    let corrupt = |reason: String| KeyError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    // serde_json's own messages can quote input, i.e. key material: report only
    // the category and position.
    let stored: StoredKey = serde_json::from_slice(&bytes).map_err(|e| {
        corrupt(format!(
            "not a valid key file ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    if stored.format != KEY_FILE_FORMAT {
        return Err(corrupt(format!(
            "key file format {} is not supported (expected {KEY_FILE_FORMAT})",
            stored.format
        )));
    }
    let stem_matches = path.file_stem().and_then(|s| s.to_str()) == Some(stored.kid.as_str());
    if !is_safe_id(&stored.kid) || !stem_matches {
        return Err(corrupt(
            "the kid inside does not match the file name".into(),
        ));
    }
    let material = Zeroizing::new(
        URL_SAFE_NO_PAD
            .decode(stored.material.as_bytes())
            .map_err(|_| corrupt("key material is not base64url".into()))?,
    );
    let binding = match (stored.imported, stored.issuer.clone()) {
        (true, Some(issuer)) => Some(
            IssuerBinding::new(issuer, stored.audience.clone())
                .map_err(|e| corrupt(e.to_string()))?,
        ),
        (true, None) => None,
        (false, None) => None,
        (false, Some(_)) => return Err(corrupt("a generated key cannot carry an issuer".into())),
    };
    let mut entry = KeyEntry::build(
        stored.kid.clone(),
        stored.alg,
        stored.created_at,
        stored.retired_at,
        stored.imported,
        material,
    )
    .map_err(|e| e.at(path))?;
    entry.binding = binding;
    Ok(entry)
}

/// Writes the key atomically (temp file, fsync, rename, fsync dir) with mode 0600
/// from the start, so the secret is never briefly world-readable.
fn write_key_file(dir: &Path, entry: &KeyEntry) -> Result<(), KeyError> {
    let stored = StoredKey {
        format: KEY_FILE_FORMAT,
        kid: entry.kid.clone(),
        alg: entry.alg,
        created_at: entry.created_at,
        retired_at: entry.retired_at,
        imported: entry.imported,
        issuer: entry.binding.as_ref().map(|b| b.issuer.clone()),
        audience: entry.binding.as_ref().and_then(|b| b.audience.clone()),
        material: URL_SAFE_NO_PAD.encode(&*entry.material),
    };
    let body = Zeroizing::new(
        serde_json::to_vec_pretty(&stored).map_err(|e| KeyError::Io {
            path: dir.to_owned(),
            source: io::Error::other(format!(
                "key file serialization failed ({:?})",
                e.classify()
            )),
        })?,
    );
    let tmp = dir.join(format!(".{}.json.tmp", entry.kid));
    let path = key_path(dir, &entry.kid);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&tmp, e)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .map_err(|e| io_err(&tmp, e))?;
    file.write_all(&body).map_err(|e| io_err(&tmp, e))?;
    file.sync_all().map_err(|e| io_err(&tmp, e))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// Best-effort modulus size of an RSA PKCS#8 key, only to word the refusal of a
/// too-small key precisely. Walks: PrivateKeyInfo SEQUENCE { version, algId,
/// OCTET STRING { RSAPrivateKey SEQUENCE { version, modulus INTEGER, .. } } }.
fn rsa_pkcs8_modulus_bits(der: &[u8]) -> Option<usize> {
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }
    let (_, info, _) = tlv(der)?;
    let (_, _, rest) = tlv(info)?; // version
    let (_, _, rest) = tlv(rest)?; // algorithm identifier
    let (_, octets, _) = tlv(rest)?;
    let (_, rsa, _) = tlv(octets)?;
    let (_, _, rest) = tlv(rsa)?; // version
    let (_, modulus, _) = tlv(rest)?;
    let modulus: Vec<u8> = modulus.iter().copied().skip_while(|b| *b == 0).collect();
    let top = modulus.first()?;
    Some(modulus.len() * 8 - top.leading_zeros() as usize)
}

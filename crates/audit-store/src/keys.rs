//! The chain HMAC key and the checkpoint signing key, kept in `key_dir`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};

use crate::StoreError;

const CHAIN_KEY: &str = "chain-hmac.key";
const SIGN_KEY: &str = "checkpoint-ed25519.pk8";
pub(crate) const PUBLIC_KEY_FILE: &str = "checkpoint-ed25519.pub";

pub(crate) struct Keys {
    pub hmac: hmac::Key,
    pub signer: Ed25519KeyPair,
}

impl Keys {
    pub fn public_key(&self) -> &[u8] {
        self.signer.public_key().as_ref()
    }
}

fn key_err(path: &Path, message: impl Into<String>) -> StoreError {
    StoreError::Key {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Loads the keys, creating them (dir 0700, files 0600) if the directory holds none.
/// Creating only one of the two is refused: a lone key means something was lost.
pub(crate) fn load_or_create(key_dir: &Path) -> Result<Keys, StoreError> {
    let chain = key_dir.join(CHAIN_KEY);
    let sign = key_dir.join(SIGN_KEY);
    if !chain.exists() && !sign.exists() {
        create_dir_private(key_dir)?;
        let rng = SystemRandom::new();
        let mut k = [0u8; 32];
        rng.fill(&mut k)
            .map_err(|_| key_err(&chain, "system random generator failed"))?;
        write_private(&chain, &k)?;
        let doc = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| key_err(&sign, "could not generate an Ed25519 key"))?;
        write_private(&sign, doc.as_ref())?;
        tracing::info!(dir = %key_dir.display(), "created new audit chain and checkpoint keys");
    }
    load(key_dir)
}

/// Whether either key file is present (a record without them cannot be extended).
pub(crate) fn exist(key_dir: &Path) -> bool {
    key_dir.join(CHAIN_KEY).exists() || key_dir.join(SIGN_KEY).exists()
}

/// Loads existing keys; never creates any (used by `verify`).
pub(crate) fn load(key_dir: &Path) -> Result<Keys, StoreError> {
    let chain = key_dir.join(CHAIN_KEY);
    let sign = key_dir.join(SIGN_KEY);
    let k = read_private(&chain)?;
    if k.len() != 32 {
        return Err(key_err(
            &chain,
            format!("expected 32 bytes, found {}", k.len()),
        ));
    }
    let s = read_private(&sign)?;
    let signer = Ed25519KeyPair::from_pkcs8(&s)
        .map_err(|_| key_err(&sign, "not a valid Ed25519 PKCS#8 key"))?;
    Ok(Keys {
        hmac: hmac::Key::new(hmac::HMAC_SHA256, &k),
        signer,
    })
}

fn read_private(path: &Path) -> Result<Vec<u8>, StoreError> {
    let meta = fs::metadata(path).map_err(|e| {
        key_err(path, format!("cannot read ({e}); restore it from backup — without it the audit chain cannot be verified or extended"))
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        // Whoever can read the chain key can rewrite history undetectably.
        return Err(key_err(
            path,
            format!("is accessible to group or others (mode {mode:o}); run `chmod 600 {}` and check who could have read it", path.display()),
        ));
    }
    fs::read(path).map_err(|e| key_err(path, format!("cannot read: {e}")))
}

pub(crate) fn create_dir_private(dir: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(dir).map_err(|e| StoreError::io("cannot create key directory", dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| StoreError::io("cannot restrict key directory", dir, e))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::io("cannot create key file", path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| StoreError::io("cannot write key file", path, e))
}

pub(crate) fn public_key_path(checkpoint_dir: &Path) -> PathBuf {
    checkpoint_dir.join(PUBLIC_KEY_FILE)
}

//! Signed checkpoint files: `<checkpoint_dir>/<seq>-<kind>.json`.
//!
//! A `head` checkpoint records the chain head (last id and hash) at a moment; a
//! `prune` checkpoint authorises retention to delete every row up to `last_id`. Each
//! file is signed with the Ed25519 key in `key_dir` and names the previous file's
//! signature, so removing or reordering checkpoint files is visible too. The public key
//! is written beside them (`checkpoint-ed25519.pub`, hex) so they can be checked
//! off the machine.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::keys::{self, Keys};
use crate::StoreError;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Body {
    pub format: u32,
    pub seq: u64,
    /// "head" or "prune".
    pub kind: String,
    pub last_id: i64,
    /// Hex chain hash of row `last_id`.
    pub last_hash: String,
    /// Rows in the table when written (head) or rows pruned so far (prune).
    pub count: i64,
    pub time_us: i64,
    pub prev_signature: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct File {
    pub body: Body,
    /// Base64 Ed25519 signature over the compact JSON of `body`.
    pub signature: String,
}

pub(crate) const HEAD: &str = "head";
pub(crate) const PRUNE: &str = "prune";

fn ck_err(path: &Path, message: impl Into<String>) -> StoreError {
    StoreError::Checkpoint {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Writes the public key next to the checkpoints (idempotent).
pub(crate) fn ensure_dir(dir: &Path, keys: &Keys) -> Result<(), StoreError> {
    fs::create_dir_all(dir)
        .map_err(|e| StoreError::io("cannot create checkpoint directory", dir, e))?;
    let p = keys::public_key_path(dir);
    let want = hex::encode(keys.public_key());
    if fs::read_to_string(&p).ok().as_deref().map(str::trim) != Some(want.as_str()) {
        write_atomic(&p, format!("{want}\n").as_bytes())?;
    }
    Ok(())
}

/// All checkpoint files in sequence order (unparseable names are ignored; unparseable
/// contents are an error, since they could hide tampering).
pub(crate) fn load_all(dir: &Path) -> Result<Vec<(PathBuf, File)>, StoreError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("cannot list checkpoint directory", dir, e)),
    };
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| StoreError::io("cannot list checkpoint directory", dir, e))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let Some((seq, _kind)) = stem.split_once('-') else {
            continue;
        };
        if seq.parse::<u64>().is_err() {
            continue;
        }
        let path = ent.path();
        let text =
            fs::read(&path).map_err(|e| StoreError::io("cannot read checkpoint", &path, e))?;
        let f: File = serde_json::from_slice(&text)
            .map_err(|e| ck_err(&path, format!("not a checkpoint file: {e}")))?;
        out.push((path, f));
    }
    out.sort_by_key(|(_, f)| f.body.seq);
    Ok(out)
}

pub(crate) fn signed_bytes(body: &Body) -> Result<Vec<u8>, StoreError> {
    Ok(serde_json::to_vec(body)?)
}

pub(crate) fn signature_ok(public_key: &[u8], f: &File) -> bool {
    let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(&f.signature) else {
        return false;
    };
    let Ok(msg) = signed_bytes(&f.body) else {
        return false;
    };
    aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, public_key)
        .verify(&msg, &sig)
        .is_ok()
}

/// Continues the sequence of files in a directory.
pub(crate) struct Sequence {
    dir: PathBuf,
    next_seq: u64,
    prev_signature: Option<String>,
}

impl Sequence {
    pub fn open(dir: &Path) -> Result<Sequence, StoreError> {
        let all = load_all(dir)?;
        let (next_seq, prev_signature) = match all.last() {
            Some((_, f)) => (f.body.seq + 1, Some(f.signature.clone())),
            None => (1, None),
        };
        Ok(Sequence {
            dir: dir.to_owned(),
            next_seq,
            prev_signature,
        })
    }

    pub fn write(
        &mut self,
        keys: &Keys,
        kind: &str,
        last_id: i64,
        last_hash: &[u8],
        count: i64,
        time_us: i64,
    ) -> Result<PathBuf, StoreError> {
        let body = Body {
            format: 1,
            seq: self.next_seq,
            kind: kind.to_owned(),
            last_id,
            last_hash: hex::encode(last_hash),
            count,
            time_us,
            prev_signature: self.prev_signature.clone(),
        };
        let sig = keys.signer.sign(&signed_bytes(&body)?);
        let file = File {
            body,
            signature: base64::engine::general_purpose::STANDARD.encode(sig.as_ref()),
        };
        let path = self.dir.join(format!("{:010}-{kind}.json", self.next_seq));
        write_atomic(&path, &serde_json::to_vec_pretty(&file)?)?;
        self.next_seq += 1;
        self.prev_signature = Some(file.signature);
        Ok(path)
    }
}

/// Write to a temp file, fsync, rename, fsync the directory: a reader never sees half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(|e| StoreError::io("cannot create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| StoreError::io("cannot write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| StoreError::io("cannot rename into place", path, e))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = fs::File::open(dir) {
            // Best effort: the rename is already visible to readers; this makes it durable.
            let _ = d.sync_all();
        }
    }
    Ok(())
}

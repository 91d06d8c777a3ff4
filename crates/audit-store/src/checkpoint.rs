//! Signed checkpoint files: `<checkpoint_dir>/<seq>-<kind>.json`.
//!
//! A `head` checkpoint records the chain head (last id and hash) at a moment; a
//! `prune` checkpoint authorises retention to delete every row up to `last_id`. Each
//! file is signed with the Ed25519 key in `key_dir` and names the previous file's
//! signature, so removing or reordering checkpoint files is visible too. The public key
//! is written beside them (`checkpoint-ed25519.pub`, hex) so they can be checked
//! off the machine. Each checkpoint is also written as a plain-text signed note
//! (`<seq>-<kind>.note`, see [`crate::note`]) here and in every mirror folder, so a copy
//! on another disk can be checked with the public key alone.
//!
//! A `loss` checkpoint is written only by `accept-loss`: the record no longer extends
//! the checkpoints before it, and an operator recorded that (the `audit.loss_accepted`
//! event at `last_id` says why). Checkpoints before a loss are not compared with rows.

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
pub(crate) const LOSS: &str = "loss";

/// The newest signed checkpoint found anywhere: what the record must extend.
#[derive(Clone, Debug)]
pub(crate) struct Evidence {
    pub path: PathBuf,
    pub body: Body,
    pub signature: String,
}

/// The sequence number of the newest `loss` checkpoint (0 if none): heads signed
/// before it describe history that is gone, so rows are compared only with later ones.
pub(crate) fn since_loss(files: &[(PathBuf, File)]) -> u64 {
    files
        .iter()
        .filter(|(_, f)| f.body.kind == LOSS)
        .map(|(_, f)| f.body.seq)
        .max()
        .unwrap_or(0)
}

/// Every folder checkpoints are written to: the primary one first, then the mirrors.
pub(crate) fn folders(primary: &Path, mirrors: &[PathBuf]) -> Vec<PathBuf> {
    std::iter::once(primary.to_owned())
        .chain(mirrors.iter().cloned())
        .collect()
}

fn ck_err(path: &Path, message: impl Into<String>) -> StoreError {
    StoreError::Checkpoint {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Writes the public key (hex, and as a note verifier key) into every checkpoint
/// folder (idempotent).
pub(crate) fn ensure_dirs(folders: &[PathBuf], keys: &Keys) -> Result<(), StoreError> {
    for dir in folders {
        fs::create_dir_all(dir)
            .map_err(|e| StoreError::io("cannot create checkpoint directory", dir, e))?;
        let hex_key = format!("{}\n", hex::encode(keys.public_key()));
        let vkey = format!("{}\n", crate::note::verifier_key(keys.public_key()));
        for (p, want) in [
            (keys::public_key_path(dir), hex_key),
            (dir.join(crate::note::VKEY_FILE), vkey),
        ] {
            if fs::read_to_string(&p).ok().as_deref() != Some(want.as_str()) {
                write_atomic(&p, want.as_bytes())?;
            }
        }
    }
    Ok(())
}

/// Whether any folder holds a checkpoint file (signed or not): then a missing record
/// is a loss, not a first start.
pub(crate) fn any(folders: &[PathBuf]) -> bool {
    folders.iter().any(|dir| {
        fs::read_dir(dir).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.ends_with(".json") || name.ends_with(".note")
            })
        })
    })
}

/// The newest checkpoint (highest sequence number) in any folder, JSON or note, after
/// checking its signature. A checkpoint that does not verify is an error: it is
/// evidence, and a damaged copy must be looked at, not skipped.
pub(crate) fn newest(
    folders: &[PathBuf],
    public_key: &[u8],
) -> Result<Option<Evidence>, StoreError> {
    scan(folders, public_key, false).map(|(e, _)| e)
}

/// Like [`newest`], for `accept-loss`: a checkpoint file that cannot be read or does
/// not verify is renamed to `<name>.damaged` (kept for forensics, out of the sequence)
/// and named in the returned list instead of stopping the operator.
pub(crate) fn newest_setting_aside_damaged(
    folders: &[PathBuf],
    public_key: &[u8],
) -> Result<(Option<Evidence>, Vec<String>), StoreError> {
    scan(folders, public_key, true)
}

fn scan(
    folders: &[PathBuf],
    public_key: &[u8],
    set_aside: bool,
) -> Result<(Option<Evidence>, Vec<String>), StoreError> {
    let mut best: Option<Evidence> = None;
    let mut damaged = Vec::new();
    for (i, dir) in folders.iter().enumerate() {
        for path in checkpoint_files(dir, i == 0)? {
            match read_evidence(&path, public_key) {
                Ok(e) => {
                    if best.as_ref().is_none_or(|b| e.body.seq > b.body.seq) {
                        best = Some(e);
                    }
                }
                Err(e) if set_aside => {
                    let aside = PathBuf::from(format!("{}.damaged", path.display()));
                    fs::rename(&path, &aside)
                        .map_err(|err| StoreError::io("cannot set aside", &path, err))?;
                    tracing::warn!(error = %e, aside = %aside.display(), "set a damaged checkpoint aside");
                    damaged.push(e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok((best, damaged))
}

/// The checkpoint files of one folder: notes, and in the primary folder JSON too.
fn checkpoint_files(dir: &Path, with_json: bool) -> Result<Vec<PathBuf>, StoreError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("cannot list checkpoint folder", dir, e)),
    };
    let mut out = Vec::new();
    for ent in rd {
        let path = ent
            .map_err(|e| StoreError::io("cannot list checkpoint folder", dir, e))?
            .path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("note") => out.push(path),
            Some("json") if with_json && is_sequence_name(&path) => out.push(path),
            _ => {}
        }
    }
    out.sort();
    Ok(out)
}

fn is_sequence_name(path: &Path) -> bool {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.split_once('-'))
        .is_some_and(|(seq, _)| seq.parse::<u64>().is_ok())
}

fn read_evidence(path: &Path, public_key: &[u8]) -> Result<Evidence, StoreError> {
    if path.extension().and_then(|e| e.to_str()) == Some("note") {
        let bytes =
            fs::read(path).map_err(|e| StoreError::io("cannot read checkpoint", path, e))?;
        let n = crate::note::parse(path, &bytes, public_key)?;
        return Ok(Evidence {
            path: path.to_owned(),
            body: n.body,
            signature: n.json_signature,
        });
    }
    let f = read_json(path)?;
    if !signature_ok(public_key, &f) {
        return Err(ck_err(
            path,
            "its signature does not verify with this store's checkpoint key",
        ));
    }
    Ok(Evidence {
        path: path.to_owned(),
        body: f.body,
        signature: f.signature,
    })
}

/// All checkpoint files in sequence order (unparseable names are ignored; unparseable
/// contents are an error, since they could hide tampering).
pub(crate) fn load_all(dir: &Path) -> Result<Vec<(PathBuf, File)>, StoreError> {
    let mut out = Vec::new();
    for path in checkpoint_files(dir, true)? {
        if path.extension().and_then(|e| e.to_str()) == Some("json") {
            let f = read_json(&path)?;
            out.push((path, f));
        }
    }
    out.sort_by_key(|(_, f)| f.body.seq);
    Ok(out)
}

fn read_json(path: &Path) -> Result<File, StoreError> {
    let bytes = fs::read(path).map_err(|e| StoreError::io("cannot read checkpoint", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| ck_err(path, format!("not a checkpoint file: {e}")))
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

/// Continues the sequence of checkpoints, from the newest one found in any folder (so
/// a primary folder that lost files continues from its mirror, not from a gap).
pub(crate) struct Sequence {
    folders: Vec<PathBuf>,
    next_seq: u64,
    prev_signature: Option<String>,
}

impl Sequence {
    pub fn open(folders: Vec<PathBuf>, newest: Option<&Evidence>) -> Sequence {
        let (next_seq, prev_signature) = match newest {
            Some(e) => (e.body.seq + 1, Some(e.signature.clone())),
            None => (1, None),
        };
        Sequence {
            folders,
            next_seq,
            prev_signature,
        }
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
        let stem = format!("{:010}-{kind}", self.next_seq);
        let primary = &self.folders[0];
        let path = primary.join(format!("{stem}.json"));
        write_atomic(&path, &serde_json::to_vec_pretty(&file)?)?;
        let note = crate::note::render(keys, &file.body, &file.signature);
        write_atomic(&primary.join(format!("{stem}.note")), note.as_bytes())?;
        for mirror in &self.folders[1..] {
            // A mirror on a share that is down must not stop the record: the primary
            // copy is written, and the failure is loud.
            if let Err(e) = write_atomic(&mirror.join(format!("{stem}.note")), note.as_bytes()) {
                tracing::error!(error = %e, mirror = %mirror.display(), "could not mirror an audit checkpoint");
            }
        }
        self.next_seq += 1;
        self.prev_signature = Some(file.signature);
        Ok(path)
    }
}

/// Write to a temp file, fsync, rename, fsync the directory: a reader never sees half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    // `<name>.tmp`, not `<stem>.tmp`: a checkpoint's JSON and note share a stem.
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
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

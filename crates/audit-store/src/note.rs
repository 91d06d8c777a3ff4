//! Checkpoints as plain-text signed notes, the format transparency logs use
//! (C2SP `signed-note`), so that a copy kept on another disk or share can be checked
//! with the public key alone, by tools that know nothing of tokenwatch.
//!
//! ```text
//! tokenwatch audit checkpoint v1
//! seq 12
//! kind head
//! last_id 4711
//! last_hash 9f…(64 hex digits: the chain hash of row last_id)
//! count 4711
//! time_us 1796681234567890
//! prev base64(signature of the checkpoint before, or "-")
//! sig base64(this checkpoint's own JSON signature)
//!
//! — tokenwatch-audit base64(key hash (4 bytes) ‖ Ed25519 signature)
//! ```
//!
//! The signature covers every byte before the blank line. The key hash is the first four
//! bytes of `SHA-256("tokenwatch-audit" ‖ "\n" ‖ 0x01 ‖ public key)`, as the format
//! defines for Ed25519; the verifier key is published as
//! `tokenwatch-audit+<key hash hex>+<base64(0x01 ‖ public key)>` in `checkpoint.vkey`.

use std::path::Path;

use aws_lc_rs::digest;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use crate::checkpoint::Body;
use crate::keys::Keys;
use crate::StoreError;

pub(crate) const KEY_NAME: &str = "tokenwatch-audit";
const ORIGIN: &str = "tokenwatch audit checkpoint v1";
/// U+2014 EM DASH, then a space: how the format starts a signature line.
const SIG_PREFIX: &str = "\u{2014} ";
pub(crate) const VKEY_FILE: &str = "checkpoint.vkey";
const ED25519: u8 = 0x01;

fn key_hash(public_key: &[u8]) -> [u8; 4] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(KEY_NAME.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[ED25519]);
    ctx.update(public_key);
    let d = ctx.finish();
    let mut out = [0u8; 4];
    out.copy_from_slice(&d.as_ref()[..4]);
    out
}

/// The verifier key line (`name+hash+key`) for `checkpoint.vkey`.
pub(crate) fn verifier_key(public_key: &[u8]) -> String {
    let mut k = vec![ED25519];
    k.extend_from_slice(public_key);
    format!(
        "{KEY_NAME}+{}+{}",
        hex::encode(key_hash(public_key)),
        B64.encode(k)
    )
}

/// The signed text of a checkpoint (everything above the blank line).
fn text(body: &Body, json_signature: &str) -> String {
    format!(
        "{ORIGIN}\nseq {}\nkind {}\nlast_id {}\nlast_hash {}\ncount {}\ntime_us {}\nprev {}\nsig {}\n",
        body.seq,
        body.kind,
        body.last_id,
        body.last_hash,
        body.count,
        body.time_us,
        body.prev_signature.as_deref().unwrap_or("-"),
        json_signature
    )
}

/// The whole note: text, blank line, one signature line.
pub(crate) fn render(keys: &Keys, body: &Body, json_signature: &str) -> String {
    let text = text(body, json_signature);
    let sig = keys.signer.sign(text.as_bytes());
    let mut blob = key_hash(keys.public_key()).to_vec();
    blob.extend_from_slice(sig.as_ref());
    format!("{text}\n{SIG_PREFIX}{KEY_NAME} {}\n", B64.encode(blob))
}

/// A note whose signature verified: the checkpoint it states.
#[derive(Clone, Debug)]
pub(crate) struct Note {
    pub body: Body,
    /// The checkpoint's JSON signature, which the next checkpoint names as `prev`.
    pub json_signature: String,
}

fn note_err(path: &Path, message: impl Into<String>) -> StoreError {
    StoreError::Checkpoint {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Parses and verifies one note. Anything unsigned, signed by another key or not in
/// the format is an error naming the file: a checkpoint copy is evidence, so a damaged
/// one is reported, never skipped.
pub(crate) fn parse(path: &Path, bytes: &[u8], public_key: &[u8]) -> Result<Note, StoreError> {
    let s = std::str::from_utf8(bytes).map_err(|_| note_err(path, "not UTF-8 text"))?;
    let (text, sigs) = s
        .split_once("\n\n")
        .ok_or_else(|| note_err(path, "no blank line before the signature"))?;
    let text = format!("{text}\n");
    let want = key_hash(public_key);
    let signed = sigs.lines().any(|line| {
        let Some(rest) = line.strip_prefix(SIG_PREFIX) else {
            return false;
        };
        let Some((name, b64)) = rest.split_once(' ') else {
            return false;
        };
        let Ok(blob) = B64.decode(b64) else {
            return false;
        };
        name == KEY_NAME
            && blob.len() == 68
            && blob[..4] == want
            && aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::ED25519,
                public_key,
            )
            .verify(text.as_bytes(), &blob[4..])
            .is_ok()
    });
    if !signed {
        return Err(note_err(
            path,
            "its signature does not verify with this store's checkpoint key",
        ));
    }
    let mut lines = text.lines();
    if lines.next() != Some(ORIGIN) {
        return Err(note_err(path, format!("first line is not {ORIGIN:?}")));
    }
    let mut field = |name: &str| -> Result<String, StoreError> {
        lines
            .next()
            .and_then(|l| l.strip_prefix(name))
            .and_then(|v| v.strip_prefix(' '))
            .map(str::to_owned)
            .ok_or_else(|| note_err(path, format!("missing the {name} line")))
    };
    let num = |v: String, name: &str| -> Result<i64, StoreError> {
        v.parse()
            .map_err(|_| note_err(path, format!("{name} is not a number")))
    };
    let seq = num(field("seq")?, "seq")?;
    let kind = field("kind")?;
    let last_id = num(field("last_id")?, "last_id")?;
    let last_hash = field("last_hash")?;
    let count = num(field("count")?, "count")?;
    let time_us = num(field("time_us")?, "time_us")?;
    let prev = field("prev")?;
    let json_signature = field("sig")?;
    Ok(Note {
        json_signature,
        body: Body {
            format: 1,
            seq: u64::try_from(seq).map_err(|_| note_err(path, "seq is negative"))?,
            kind,
            last_id,
            last_hash,
            count,
            time_us,
            prev_signature: (prev != "-").then_some(prev),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        crate::keys::load_or_create(&dir.path().join("k")).unwrap()
    }

    fn body() -> Body {
        Body {
            format: 1,
            seq: 3,
            kind: "head".into(),
            last_id: 42,
            last_hash: "ab".repeat(32),
            count: 42,
            time_us: 1_700_000_000_000_000,
            prev_signature: Some("cHJldg==".into()),
        }
    }

    #[test]
    fn a_note_round_trips_and_any_change_breaks_it() {
        let k = keys();
        let note = render(&k, &body(), "c2ln");
        let p = Path::new("x.note");
        let n = parse(p, note.as_bytes(), k.public_key()).unwrap();
        assert_eq!((n.body, n.json_signature.as_str()), (body(), "c2ln"));
        let edited = note.replace("last_id 42", "last_id 41");
        let e = parse(p, edited.as_bytes(), k.public_key()).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
        let other = keys();
        assert!(parse(p, note.as_bytes(), other.public_key()).is_err());
    }

    #[test]
    fn the_verifier_key_names_the_key_hash() {
        // Enough keys that some base64 encodings contain '+', which must not be
        // taken for a separator: only the first two '+' separate the fields.
        for _ in 0..24 {
            let k = keys();
            let v = verifier_key(k.public_key());
            let parts: Vec<&str> = v.splitn(3, '+').collect();
            assert_eq!(parts[0], KEY_NAME);
            assert_eq!(parts[1], hex::encode(key_hash(k.public_key())));
            assert_eq!(B64.decode(parts[2]).unwrap()[1..], *k.public_key());
        }
    }
}

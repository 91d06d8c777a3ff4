//! The JWS compact form, read strictly before any key is involved.
//!
//! jsonwebtoken parses the header too, but it ignores `crit`, `typ` and `kid`; these
//! checks run first so every refusal gets its precise reason, and so no key is
//! chosen from anything but an exact `kid` match.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use crate::alg::Alg;
use crate::reason::Reason;
use crate::sanitize::log_safe_id;

/// A refusal found while reading the header: reason, fixed message.
pub(crate) type HeaderError = (Reason, &'static str);

/// The parts of a compact JWS, with the header already checked.
pub(crate) struct Parsed<'a> {
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a str,
    pub signature: &'a str,
    pub alg: Alg,
    pub kid: Option<String>,
}

impl Parsed<'_> {
    /// An ES256 signature in high-S form, the twin of a valid one (see `low_s`).
    /// Anything undecodable is left for the signature check to refuse.
    pub(crate) fn is_high_s_es256(&self) -> bool {
        self.alg == Alg::ES256
            && b64url_decode(self.signature).is_some_and(|sig| crate::low_s::is_high_s(&sig))
    }
}

/// What was seen of the header even when it was refused, for the audit record.
#[derive(Default)]
pub(crate) struct Seen {
    pub alg: Option<String>,
    pub kid: Option<String>,
}

/// Strict base64url: URL alphabet, no padding, no whitespace, canonical trailing bits.
pub(crate) fn b64url_decode(part: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(part.as_bytes()).ok()
}

pub(crate) fn b64url_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7516 §9: a JWE is told from a JWS by the `enc` member of its header. Only a
/// five-part value whose first part is such a header is named a JWE; any other
/// value with the wrong number of dots is plain garbage (`malformed`).
fn is_jwe_header(token: &str) -> bool {
    token
        .split('.')
        .next()
        .and_then(b64url_decode)
        .and_then(|bytes| serde_json::from_slice::<Map<String, Value>>(&bytes).ok())
        .is_some_and(|header| header.contains_key("enc"))
}

fn typ_allowed(typ: &str) -> bool {
    // RFC 7515 §4.1.9: typ is a media type, compared case-insensitively, and the
    // "application/" prefix may be omitted. RFC 9068 names at+jwt for access tokens.
    let t = typ.to_ascii_lowercase();
    let t = t.strip_prefix("application/").unwrap_or(&t);
    t == "jwt" || t == "at+jwt"
}

/// Splits `token` and checks its header. Assumes the length cap was already applied.
pub(crate) fn parse<'a>(token: &'a str, seen: &mut Seen) -> Result<Parsed<'a>, HeaderError> {
    // Two tokens in one bearer value (`Bearer T T`) would otherwise count four dots
    // and pass for a JWE.
    if token.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err((Reason::Malformed, "token contains whitespace"));
    }
    let dots = token.bytes().filter(|b| *b == b'.').count();
    if dots == 4 && is_jwe_header(token) {
        return Err((
            Reason::EncryptedToken,
            "token is a JWE (five parts, header names enc); encrypted tokens are not accepted",
        ));
    }
    if dots != 2 {
        return Err((
            Reason::Malformed,
            "token does not have three dot-separated parts",
        ));
    }
    let (signing_input, signature) = token.rsplit_once('.').ok_or((
        Reason::Malformed,
        "token does not have three dot-separated parts",
    ))?;
    let (header_b64, _) = signing_input.split_once('.').ok_or((
        Reason::Malformed,
        "token does not have three dot-separated parts",
    ))?;
    // The signature covers the encoded text, so a padded or re-alphabeted payload
    // would otherwise surface as a bad signature; name it for what it is.
    let url_safe = |part: &str| {
        part.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !signing_input.split('.').all(url_safe) || !url_safe(signature) {
        return Err((Reason::Malformed, "token is not canonical base64url"));
    }
    let header_bytes = b64url_decode(header_b64)
        .ok_or((Reason::Malformed, "header is not canonical base64url"))?;
    let header: Map<String, Value> = serde_json::from_slice(&header_bytes)
        .map_err(|_| (Reason::Malformed, "header is not a JSON object"))?;

    let alg_raw = match header.get("alg") {
        Some(Value::String(a)) => a.as_str(),
        Some(_) => return Err((Reason::Malformed, "header alg is not a string")),
        None => return Err((Reason::Malformed, "header has no alg")),
    };
    seen.alg = Some(log_safe_id(alg_raw));
    if let Some(kid) = header.get("kid") {
        seen.kid = Some(match kid {
            Value::String(k) => log_safe_id(k),
            _ => crate::sanitize::INVALID_ID.to_owned(),
        });
    }

    if alg_raw.eq_ignore_ascii_case("none") {
        return Err((
            Reason::AlgNotAllowed,
            "unsigned tokens (alg none) are never accepted",
        ));
    }
    let alg: Alg = alg_raw.parse().map_err(|_| {
        (
            Reason::AlgNotAllowed,
            "header alg is not a supported algorithm",
        )
    })?;
    // No JWS extension is implemented, so every `crit` is one we do not understand
    // (RFC 7515 §4.1.11 requires refusing those). That includes `b64`.
    if header.contains_key("crit") {
        return Err((
            Reason::UnsupportedCrit,
            "header lists critical extensions (crit), none of which are supported",
        ));
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) if typ_allowed(t) => {}
        Some(_) => return Err((Reason::BadType, "header typ is neither JWT nor at+jwt")),
    }
    // jku, x5u, jwk and x5c are deliberately never read: keys come only from the ring.
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err((Reason::UnknownKid, "header kid is not a string")),
    };
    Ok(Parsed {
        signing_input,
        signature,
        alg,
        kid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typ_variants() {
        for ok in [
            "JWT",
            "jwt",
            "at+jwt",
            "application/at+jwt",
            "application/JWT",
        ] {
            assert!(typ_allowed(ok), "{ok}");
        }
        for bad in ["JOSE", "jwe", "", "application/json"] {
            assert!(!typ_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn strict_base64url() {
        assert_eq!(b64url_decode("eyJ9").as_deref(), Some(&b"{\"}"[..]));
        assert!(b64url_decode("eyJ9=").is_none());
        assert!(b64url_decode("ey+9").is_none());
        assert!(b64url_decode("ey J9").is_none());
        // Non-canonical: the last character carries non-zero unused bits.
        assert!(b64url_decode("eyJ").is_none());
        assert_eq!(b64url_decode("eyI").as_deref(), Some(&b"{\""[..]));
    }
}

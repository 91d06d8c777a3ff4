//! Why a token was refused: the reason codes the audit trail records.

use std::fmt;

use serde::Serialize;

/// The precise reason a token was refused. The string form ([`Reason::as_str`]) is
/// what an audit event stores, so a code is never renamed once shipped.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not a well-formed compact JWS: wrong shape, bad base64url, bad JSON, bad claim types.
    Malformed,
    /// The signature does not verify with the key named by `kid`.
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// `alg` is `none`, unsupported, or not the algorithm of the key named by `kid`.
    AlgNotAllowed,
    /// `kid` missing, unknown, or not a string. Never answered with a fallback key.
    UnknownKid,
    /// `iss` is not the configured issuer.
    IssuerMismatch,
    /// `aud` does not contain the configured audience.
    AudienceMismatch,
    /// A required claim (`exp`, `iss`, `aud`, `sub`, `iat`, `jti`) is absent or of the wrong type.
    MissingClaim,
    /// The token's `jti`, or its refresh family (`sid`), has been revoked.
    Revoked,
    /// The token is longer than `TokenConfig::max_token_bytes`; nothing else was looked at.
    TooLarge,
    /// The header has a `crit` entry; no extension is implemented, so every one is refused.
    UnsupportedCrit,
    /// `typ` is present and is neither `JWT` nor `at+jwt`.
    BadType,
    /// `iat` is later than now plus the leeway.
    IssuedInFuture,
    /// A JWE (five parts, its header names `enc`), which is not accepted. Any other
    /// value with the wrong number of parts is `Malformed`.
    EncryptedToken,
    /// The revocation store could not be asked; the token is refused (fail closed).
    StoreUnavailable,
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 16] = [
        Reason::Malformed,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::AlgNotAllowed,
        Reason::UnknownKid,
        Reason::IssuerMismatch,
        Reason::AudienceMismatch,
        Reason::MissingClaim,
        Reason::Revoked,
        Reason::TooLarge,
        Reason::UnsupportedCrit,
        Reason::BadType,
        Reason::IssuedInFuture,
        Reason::EncryptedToken,
        Reason::StoreUnavailable,
    ];

    /// The stable audit code.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::AlgNotAllowed => "alg_not_allowed",
            Reason::UnknownKid => "unknown_kid",
            Reason::IssuerMismatch => "issuer_mismatch",
            Reason::AudienceMismatch => "audience_mismatch",
            Reason::MissingClaim => "missing_claim",
            Reason::Revoked => "revoked",
            Reason::TooLarge => "too_large",
            Reason::UnsupportedCrit => "unsupported_crit",
            Reason::BadType => "bad_typ",
            Reason::IssuedInFuture => "iat_in_future",
            Reason::EncryptedToken => "jwe_not_supported",
            Reason::StoreUnavailable => "store_unavailable",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A refused token, with everything the audit event needs and nothing secret.
///
/// `kid` and `alg` are the header values as seen (sanitized: anything outside
/// `[A-Za-z0-9._-]{1,64}` becomes `<invalid>`). `jti` and `subject` are filled only
/// once the signature has verified, so a forger cannot choose whom a refusal names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub reason: Reason,
    /// A fixed, human-readable explanation; never contains the token or claim values.
    pub message: String,
    pub kid: Option<String>,
    pub alg: Option<String>,
    pub jti: Option<String>,
    pub subject: Option<String>,
    /// [`crate::fingerprint`] of the presented token.
    pub fingerprint: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token rejected ({}): {}", self.reason, self.message)
    }
}

impl std::error::Error for Rejection {}

#[cfg(test)]
mod tests {
    use super::Reason;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_snake_case() {
        let codes: HashSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(codes.len(), Reason::ALL.len());
        for c in codes {
            assert!(
                c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{c}"
            );
        }
        assert_eq!(Reason::IssuedInFuture.as_str(), "iat_in_future");
        assert_eq!(Reason::EncryptedToken.to_string(), "jwe_not_supported");
    }
}

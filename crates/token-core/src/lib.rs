//! token-core: the part of tokenwatch that decides about tokens.
//!
//! It owns the signing keys ([`KeyRing`]: generation, 0600 files, rotation, JWKS),
//! issues and verifies JWT access tokens ([`TokenService`]), and runs one-time-use
//! refresh tokens with family revocation on reuse (RFC 9700 §4.14.2). It knows no
//! HTTP and no SQL: state lives behind the [`RevocationStore`] and [`RefreshStore`]
//! traits, which the server implements on SQLite.
//!
//! Verification is strict by construction: the length is capped before parsing, the
//! header is read strictly (no `alg: none`, no `crit`, `typ` checked), the key is
//! found by exact `kid` and *its* algorithm is the only one allowed, then
//! jsonwebtoken checks the signature and `iss`/`aud`/`sub`/`exp` presence, then
//! `exp`/`nbf`/`iat` are judged against one clock and revocation is consulted (fail
//! closed). Every refusal is a [`Rejection`] with a stable [`Reason`] code for the
//! audit trail, and never carries the token itself, only its [`fingerprint`].
//!
//! ```
//! use std::sync::Arc;
//! use token_core::*;
//!
//! let dir = tempfile::tempdir()?;
//! let keys = KeyRing::load_or_create(&dir.path().join("keys"), Alg::ES256)?;
//! let svc = TokenService::new(
//!     keys,
//!     TokenConfig::new("https://auth.example", "api"),
//!     Arc::new(MemoryRevocations::new()),
//!     Arc::new(MemoryRefreshStore::new()),
//! );
//! let issued = svc.issue_access(&AccessRequest::new("user-42"))?;
//! let ok = svc.verify(issued.token.expose()).expect("fresh token verifies");
//! assert_eq!(ok.claims.sub, "user-42");
//!
//! let refused = svc.verify("eyJhbGciOiJub25lIn0.e30.").unwrap_err();
//! assert_eq!(refused.reason, Reason::AlgNotAllowed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod alg;
mod claims;
mod jws;
mod keys;
mod low_s;
mod reason;
mod sanitize;
mod secret;
mod service;
mod store;
mod verified_cache;

use aws_lc_rs::digest::{digest, SHA256};

pub use alg::{Alg, UnknownAlg};
pub use claims::{AccessRequest, Claims, RESERVED_CLAIMS};
pub use keys::{IssuerBinding, KeyError, KeyInfo, KeyRing};
pub use reason::{Reason, Rejection};
pub use sanitize::{log_safe_id, INVALID_ID};
pub use secret::SecretToken;
pub use service::{
    same_issuer, IssueError, IssuedRefresh, IssuedToken, KeyOrigin, RefreshError,
    RefreshRevocation, RotatedRefresh, TokenConfig, TokenService, VerifiedToken,
};
pub use store::{
    MemoryRefreshStore, MemoryRevocations, RefreshRecord, RefreshStore, RevocationStore,
    StoreFailure,
};

/// The short identifier of a token for logs and audit rows: the first 16 hex
/// characters (64 bits) of the SHA-256 of the raw token.
pub fn fingerprint(token: &str) -> String {
    fingerprint_of(&token_digest(token))
}

pub(crate) fn token_digest(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

pub(crate) fn fingerprint_of(digest: &[u8; 32]) -> String {
    hex::encode(&digest[..8])
}

/// Lowercase hex SHA-256: how refresh tokens are stored.
pub fn sha256_hex(value: &str) -> String {
    hex::encode(digest(&SHA256, value.as_bytes()).as_ref())
}

/// Current Unix time in seconds (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_16_hex_of_sha256() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223...
        assert_eq!(fingerprint("abc"), "ba7816bf8f01cfea");
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

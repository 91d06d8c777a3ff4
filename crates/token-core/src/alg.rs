//! The signing algorithms token-core issues and accepts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A JWS algorithm (RFC 7518 names). Only these are ever accepted; everything else,
/// `none` included, is refused before any key is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    ES256,
    EdDSA,
}

impl Alg {
    /// Every supported algorithm, in a stable order.
    pub const ALL: [Alg; 6] = [
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::RS256,
        Alg::ES256,
        Alg::EdDSA,
    ];

    /// The RFC 7518 name, as it appears in a JWS header and a JWK.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::ES256 => "ES256",
            Alg::EdDSA => "EdDSA",
        }
    }

    /// True for the shared-secret (HMAC) algorithms, whose keys are never published.
    pub fn is_hmac(self) -> bool {
        matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512)
    }

    /// RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
    pub(crate) fn min_secret_len(self) -> usize {
        match self {
            Alg::HS384 => 48,
            Alg::HS512 => 64,
            _ => 32,
        }
    }

    pub(crate) fn jwt_algorithm(self) -> jsonwebtoken::Algorithm {
        match self {
            Alg::HS256 => jsonwebtoken::Algorithm::HS256,
            Alg::HS384 => jsonwebtoken::Algorithm::HS384,
            Alg::HS512 => jsonwebtoken::Algorithm::HS512,
            Alg::RS256 => jsonwebtoken::Algorithm::RS256,
            Alg::ES256 => jsonwebtoken::Algorithm::ES256,
            Alg::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Returned by [`Alg::from_str`] for a name that is not a supported algorithm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported algorithm {name:?}; supported: HS256, HS384, HS512, RS256, ES256, EdDSA")]
pub struct UnknownAlg {
    /// The offending name, sanitized and truncated so it is safe to log.
    pub name: String,
}

impl FromStr for Alg {
    type Err = UnknownAlg;

    /// Exact, case-sensitive match: JWS algorithm names are case-sensitive (RFC 7515 §4.1.1).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Alg::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownAlg {
                name: crate::sanitize::log_safe_id(s),
            })
    }
}

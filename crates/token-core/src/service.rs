//! The token service: issue, verify, refresh, revoke.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Validation;
use serde_json::{json, Map, Value};

use crate::alg::Alg;
use crate::claims::{present_date_claim_error, AccessRequest, Claims, RESERVED_CLAIMS};
use crate::jws::{self, Seen};
use crate::keys::{generate_entry, IssuerBinding, KeyEntry, KeyError, KeyInfo, KeyRing};
use crate::reason::{Reason, Rejection};
use crate::sanitize::log_safe_text;
use crate::secret::SecretToken;
use crate::store::{RefreshRecord, RefreshStore, RevocationStore, StoreFailure};
use crate::verified_cache::{Verified, VerifiedCache};
use crate::{fingerprint, fingerprint_of, sha256_hex, token_digest, unix_now};

/// Issuer, audience and lifetimes. [`TokenConfig::new`] gives the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenConfig {
    /// `iss` of issued tokens, and the only issuer accepted.
    pub issuer: String,
    /// `aud` of issued tokens, and the audience a token must contain.
    pub audience: String,
    /// Access-token lifetime, and the maximum any access token may have.
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Longer tokens are refused before any parsing (`too_large`).
    pub max_token_bytes: usize,
    /// How long after a refresh token was exchanged presenting it again is taken for
    /// an honest double submit (two tabs, a retried request) and answered with the
    /// same new refresh token instead of revoking the family. Zero (the default)
    /// turns it off. Kept in memory only: a restart ends every grace window.
    pub refresh_reuse_grace: Duration,
}

impl TokenConfig {
    /// Defaults: access tokens 15 minutes, refresh tokens 30 days, leeway 5 s,
    /// tokens at most 8 KiB.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        TokenConfig {
            issuer: issuer.into(),
            audience: audience.into(),
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            leeway: Duration::from_secs(5),
            max_token_bytes: 8 * 1024,
            refresh_reuse_grace: Duration::ZERO,
        }
    }

    fn secs(d: Duration) -> i64 {
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
    }
}

/// A newly signed access token.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    pub token: SecretToken,
    pub jti: String,
    pub kid: String,
    pub alg: Alg,
    pub issued_at: i64,
    pub expires_at: i64,
    pub fingerprint: String,
}

/// Which kind of key verified a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyOrigin {
    /// A key tokenwatch generated: the token is one tokenwatch issued.
    Own,
    /// An imported key: the token was made by the other issuer the key is bound to.
    Imported,
}

impl KeyOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyOrigin::Own => "own",
            KeyOrigin::Imported => "imported",
        }
    }
}

/// An access token that passed every check.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedToken {
    /// Shared with the verified-token cache: a repeated token costs no copy of its claims.
    pub claims: Arc<Claims>,
    pub kid: String,
    pub alg: Alg,
    pub fingerprint: String,
    pub origin: KeyOrigin,
}

impl VerifiedToken {
    /// The roles tokenwatch vouches for. Only a token tokenwatch signed itself has
    /// any: whoever holds an imported key (a shared secret, say) could write any
    /// `roles` claim, so such a token never carries tokenwatch authority. Read roles
    /// here, never from `claims.roles`.
    pub fn roles(&self) -> &[String] {
        match self.origin {
            KeyOrigin::Own => &self.claims.roles,
            KeyOrigin::Imported => &[],
        }
    }
}

/// A newly issued refresh token: an opaque 256-bit random value, stored only hashed.
#[derive(Clone, Debug)]
pub struct IssuedRefresh {
    pub token: SecretToken,
    pub family_id: String,
    pub expires_at: i64,
    pub fingerprint: String,
}

/// The result of a successful refresh: a new refresh token of the same family, and
/// who it is for, so the caller can issue the matching access token (with
/// `session_id = family_id`).
#[derive(Clone, Debug)]
pub struct RotatedRefresh {
    pub refresh: IssuedRefresh,
    pub subject: String,
    pub username: Option<String>,
    pub client_id: Option<String>,
    pub scope: Option<String>,
    pub family_id: String,
    /// A repeat, within [`TokenConfig::refresh_reuse_grace`], of the exchange that
    /// issued `refresh`: the same refresh token is handed out again.
    pub grace_repeat: bool,
}

/// What [`TokenService::revoke_refresh`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshRevocation {
    /// Not a refresh token of this service (RFC 7009 still answers 200).
    Unknown,
    /// The family is ended, its access tokens with it.
    Revoked { family_id: String },
    /// Issued to another client than the one asking: left alone (RFC 7009 §2.1).
    OtherClient { family_id: String },
}

/// The last exchange of a refresh family, remembered for the grace window.
struct GraceEntry {
    /// SHA-256 of the token that was exchanged: only that one, the family's latest
    /// parent, gets grace.
    parent_hash: String,
    used_at: i64,
    rotated: RotatedRefresh,
}

/// Families remembered at once; beyond this, exchanges get no grace window.
const MAX_GRACE_ENTRIES: usize = 10_000;

/// Why a token could not be issued.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("invalid token request: {0}")]
    InvalidRequest(&'static str),
    #[error("claim `{0}` is set by token-core and cannot be supplied as an extra claim")]
    ReservedClaim(String),
    #[error("requested lifetime is longer than the configured access_ttl of {max_secs} s")]
    TtlTooLong { max_secs: u64 },
    #[error("the signed token would be {len} bytes, over the {max}-byte limit; send fewer or shorter claims")]
    TooLarge { len: usize, max: usize },
    #[error("the key ring has no active signing key")]
    NoSigningKey,
    #[error("signing failed in the crypto library")]
    Signing,
    #[error("the system random number generator failed")]
    Random,
    #[error(transparent)]
    Store(#[from] StoreFailure),
}

/// Why a refresh token was not exchanged. [`RefreshError::as_str`] is the audit code.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("refresh token is not known")]
    Unknown,
    #[error("refresh token has expired")]
    Expired,
    #[error("refresh token has been revoked")]
    Revoked,
    #[error("refresh token was issued to a different client")]
    ClientMismatch,
    /// An already-used token was presented: the whole family has been revoked
    /// (RFC 9700 §4.14.2), refresh tokens and access tokens alike.
    #[error("refresh token reuse detected; token family {family_id} revoked")]
    Reused { family_id: String, subject: String },
    #[error(transparent)]
    Store(StoreFailure),
    #[error("issuing the replacement refresh token failed: {0}")]
    Issue(IssueError),
}

impl RefreshError {
    /// Stable code for the audit event.
    pub fn as_str(&self) -> &'static str {
        match self {
            RefreshError::Unknown => "unknown_token",
            RefreshError::Expired => "expired",
            RefreshError::Revoked => "revoked",
            RefreshError::ClientMismatch => "client_mismatch",
            RefreshError::Reused { .. } => "refresh_reused",
            RefreshError::Store(_) => "store_unavailable",
            RefreshError::Issue(_) => "issue_failed",
        }
    }
}

impl From<StoreFailure> for RefreshError {
    fn from(e: StoreFailure) -> Self {
        RefreshError::Store(e)
    }
}

impl From<IssueError> for RefreshError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::Store(s) => RefreshError::Store(s),
            other => RefreshError::Issue(other),
        }
    }
}

/// Builds refusals that carry what was seen of the token.
struct Refusal<'a> {
    fingerprint: &'a str,
    seen: &'a Seen,
    jti: Option<String>,
    subject: Option<String>,
}

impl Refusal<'_> {
    fn no(&self, reason: Reason, message: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            message: message.into(),
            kid: self.seen.kid.clone(),
            alg: self.seen.alg.clone(),
            jti: self.jti.clone(),
            subject: self.subject.clone(),
            fingerprint: self.fingerprint.to_owned(),
        }
    }
}

const MAX_LOGGED_JTI: usize = 128;
/// Refusal message for the second spelling of an ES256 signature.
const HIGH_S: &str =
    "ES256 signature is not in low-S form (s > n/2); only the low-S form is accepted";
const MAX_LOGGED_SUBJECT: usize = 256;

/// `jti` and `sub` of a signature-verified payload, made safe to log.
fn ids_of(payload: &Map<String, Value>) -> (Option<String>, Option<String>) {
    let get = |name: &str, max: usize| match payload.get(name) {
        Some(Value::String(s)) => Some(log_safe_text(s, max)),
        _ => None,
    };
    (get("jti", MAX_LOGGED_JTI), get("sub", MAX_LOGGED_SUBJECT))
}

/// Maps a jsonwebtoken failure to a reason; the flag says whether the signature had
/// already verified (so claims in the payload are the issuer's, fit to name in the audit).
fn map_jwt_error(kind: &ErrorKind) -> (Reason, String, bool) {
    let (reason, message, signed): (Reason, &str, bool) = match kind {
        ErrorKind::InvalidSignature => (
            Reason::BadSignature,
            "signature does not verify with the key named by kid",
            false,
        ),
        ErrorKind::ExpiredSignature => (Reason::Expired, "token has expired", true),
        ErrorKind::ImmatureSignature => (Reason::NotYetValid, "token is not valid yet (nbf)", true),
        ErrorKind::InvalidIssuer => (
            Reason::IssuerMismatch,
            "iss is not the expected issuer",
            true,
        ),
        ErrorKind::InvalidAudience => (
            Reason::AudienceMismatch,
            "aud does not include the expected audience",
            true,
        ),
        ErrorKind::MissingRequiredClaim(claim) => {
            let msg = match claim.as_str() {
                "exp" => "required claim `exp` is missing or not a NumericDate",
                "iss" => "required claim `iss` is missing or not a string",
                "aud" => "required claim `aud` is missing or not a string or array",
                "sub" => "required claim `sub` is missing or not a string",
                _ => "a required claim is missing",
            };
            (Reason::MissingClaim, msg, true)
        }
        ErrorKind::InvalidClaimFormat(_) => {
            (Reason::Malformed, "a time claim has the wrong type", true)
        }
        ErrorKind::InvalidAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => (
            Reason::AlgNotAllowed,
            "algorithm is not the one of the key named by kid",
            false,
        ),
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidKeyFormat => (
            Reason::BadSignature,
            "signature could not be checked with the key named by kid",
            false,
        ),
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => (
            Reason::Malformed,
            "a token part is not canonical base64url",
            false,
        ),
        // JSON errors are not echoed: serde's messages can quote claim values.
        ErrorKind::Json(_) => (
            Reason::Malformed,
            "token header or payload is not a valid JSON object",
            false,
        ),
        // ErrorKind is non-exhaustive: anything new is a refusal, never a pass.
        _ => (Reason::Malformed, "token could not be verified", false),
    };
    (reason, message.to_owned(), signed)
}

fn validation_for(alg: Alg, issuer: &str, audience: &str, leeway: Duration) -> Validation {
    let mut v = Validation::new(alg.jwt_algorithm());
    // jsonwebtoken's defaults leave iss/aud/sub optional even when set, so a token
    // without them (or with `iss: 5`) would pass.
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.leeway = leeway.as_secs();
    // exp, nbf and iat are judged by token-core against one caller-given `now`:
    // jsonwebtoken reads the system clock itself and never checks iat, and mixing
    // two clocks would make `verify_at` inexact.
    v.validate_exp = false;
    v.validate_nbf = false;
    v
}

/// Issues and verifies tokens. `Send + Sync`; share it in an `Arc`. The key ring is
/// behind a lock so keys can rotate while requests are served.
pub struct TokenService {
    keys: RwLock<KeyRing>,
    cfg: TokenConfig,
    validations: Vec<Validation>,
    revocations: Arc<dyn RevocationStore>,
    refresh: Arc<dyn RefreshStore>,
    verified: VerifiedCache,
    /// Latest exchange per refresh family, by family id (only with a grace window).
    grace: Mutex<HashMap<String, GraceEntry>>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("cfg", &self.cfg)
            .field("keys", &self.keys())
            .finish_non_exhaustive()
    }
}

// `Rejection` is returned by value on purpose: it is the audit record of a refusal,
// built on the cold path, and callers move its fields straight into an event.
#[allow(clippy::result_large_err)]
impl TokenService {
    pub fn new(
        keys: KeyRing,
        cfg: TokenConfig,
        revocations: Arc<dyn RevocationStore>,
        refresh: Arc<dyn RefreshStore>,
    ) -> Self {
        let validations = Alg::ALL
            .iter()
            .map(|a| validation_for(*a, &cfg.issuer, &cfg.audience, cfg.leeway))
            .collect();
        TokenService {
            keys: RwLock::new(keys),
            cfg,
            validations,
            revocations,
            refresh,
            verified: VerifiedCache::default(),
            grace: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &TokenConfig {
        &self.cfg
    }

    // A panic while holding the lock cannot leave the ring half-updated (every
    // mutation is a single insert or field store), so a poisoned lock is still usable.
    fn read_keys(&self) -> RwLockReadGuard<'_, KeyRing> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_keys(&self) -> RwLockWriteGuard<'_, KeyRing> {
        let ring = self.keys.write().unwrap_or_else(|e| e.into_inner());
        // Whatever the change, no token verified against the old ring is trusted again
        // without a fresh signature check.
        self.verified.invalidate();
        ring
    }

    fn leeway_secs(&self) -> i64 {
        TokenConfig::secs(self.cfg.leeway)
    }

    /// How long a family revocation must be kept: until every access token of the
    /// family has expired, leeway included.
    fn family_revocation_until(&self, now: i64) -> i64 {
        now.saturating_add(TokenConfig::secs(self.cfg.access_ttl))
            .saturating_add(self.leeway_secs())
    }

    /// Signs a new access token with the active key.
    pub fn issue_access(&self, req: &AccessRequest) -> Result<IssuedToken, IssueError> {
        self.issue_access_at(req, unix_now())
    }

    /// [`TokenService::issue_access`] as if the time were `now` (tests, backfills).
    pub fn issue_access_at(
        &self,
        req: &AccessRequest,
        now: i64,
    ) -> Result<IssuedToken, IssueError> {
        if req.subject.is_empty() {
            return Err(IssueError::InvalidRequest("subject must not be empty"));
        }
        if let Some(name) = req
            .extra
            .keys()
            .find(|k| RESERVED_CLAIMS.contains(&k.as_str()))
        {
            return Err(IssueError::ReservedClaim(name.clone()));
        }
        let ttl = req.ttl.unwrap_or(self.cfg.access_ttl);
        if ttl > self.cfg.access_ttl {
            return Err(IssueError::TtlTooLong {
                max_secs: self.cfg.access_ttl.as_secs(),
            });
        }
        if ttl.as_secs() == 0 {
            return Err(IssueError::InvalidRequest(
                "ttl must be at least one second",
            ));
        }
        let claims = Claims {
            iss: self.cfg.issuer.clone(),
            sub: req.subject.clone(),
            aud: self.cfg.audience.clone(),
            exp: now.saturating_add(TokenConfig::secs(ttl)),
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            username: req.username.clone(),
            roles: req.roles.clone(),
            client_id: req.client_id.clone(),
            scope: req.scope.clone(),
            sid: req.session_id.clone(),
            extra: req.extra.clone(),
        };
        let payload = serde_json::to_vec(&claims)
            .map_err(|_| IssueError::InvalidRequest("claims cannot be serialized as JSON"))?;

        let keys = self.read_keys();
        let key = keys.active_entry().ok_or(IssueError::NoSigningKey)?;
        let header = json!({ "alg": key.alg().as_str(), "typ": "JWT", "kid": key.kid() });
        let mut token = jws::b64url_encode(header.to_string().as_bytes());
        token.push('.');
        token.push_str(&jws::b64url_encode(&payload));
        let signature = key.sign(token.as_bytes()).ok_or(IssueError::Signing)?;
        token.push('.');
        token.push_str(&jws::b64url_encode(&signature));
        if token.len() > self.cfg.max_token_bytes {
            return Err(IssueError::TooLarge {
                len: token.len(),
                max: self.cfg.max_token_bytes,
            });
        }
        Ok(IssuedToken {
            fingerprint: fingerprint(&token),
            token: SecretToken::new(token),
            jti: claims.jti,
            kid: key.kid().to_owned(),
            alg: key.alg(),
            issued_at: now,
            expires_at: claims.exp,
        })
    }

    /// Signs `payload` as a compact JWS with the active key, for signed documents
    /// such as export manifests. Such a document carries none of the access-token
    /// claims (`aud`, `exp`, `sub`...), so [`TokenService::verify`] refuses it:
    /// it can never be used as a bearer token. Check it with
    /// [`TokenService::verify_signature_only`].
    pub fn sign_document(&self, payload: &Value) -> Result<String, IssueError> {
        let payload = serde_json::to_vec(payload)
            .map_err(|_| IssueError::InvalidRequest("document cannot be serialized as JSON"))?;
        let keys = self.read_keys();
        let key = keys.active_entry().ok_or(IssueError::NoSigningKey)?;
        let header = json!({ "alg": key.alg().as_str(), "typ": "JWT", "kid": key.kid() });
        let mut token = jws::b64url_encode(header.to_string().as_bytes());
        token.push('.');
        token.push_str(&jws::b64url_encode(&payload));
        let signature = key.sign(token.as_bytes()).ok_or(IssueError::Signing)?;
        token.push('.');
        token.push_str(&jws::b64url_encode(&signature));
        Ok(token)
    }

    /// Full verification at the current time: shape, header, key, signature, claims,
    /// times, then revocation of the `jti` and of the `sid` family.
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, Rejection> {
        self.verify_at(token, unix_now())
    }

    /// [`TokenService::verify`] as if the time were `now`.
    pub fn verify_at(&self, token: &str, now: i64) -> Result<VerifiedToken, Rejection> {
        let digest = token_digest(token);
        let fp = fingerprint_of(&digest);
        if token.len() <= self.cfg.max_token_bytes {
            if let Some(hit) = self.verified.get(&digest) {
                return self.recheck(&hit, fp, now);
            }
        }
        let mut seen = Seen::default();
        // The cap comes first so an enormous token costs nothing but its hash.
        if token.len() > self.cfg.max_token_bytes {
            let refusal = Refusal {
                fingerprint: &fp,
                seen: &seen,
                jti: None,
                subject: None,
            };
            return Err(refusal.no(
                Reason::TooLarge,
                format!("token is longer than {} bytes", self.cfg.max_token_bytes),
            ));
        }
        let parsed = jws::parse(token, &mut seen);
        let mut refusal = Refusal {
            fingerprint: &fp,
            seen: &seen,
            jti: None,
            subject: None,
        };
        let parsed = parsed.map_err(|(reason, msg)| refusal.no(reason, msg))?;
        let kid = parsed
            .kid
            .as_deref()
            .ok_or_else(|| refusal.no(Reason::UnknownKid, "token has no kid"))?;

        let generation;
        let origin;
        let expected_aud;
        let decoded = {
            let keys = self.read_keys();
            generation = self.verified.generation();
            let key = keys
                .get(kid)
                .ok_or_else(|| refusal.no(Reason::UnknownKid, "kid does not name a known key"))?;
            // The key decides the algorithm, never the header: this is what stops
            // RS256 -> HS256 confusion and downgrades.
            if key.alg() != parsed.alg {
                return Err(refusal.no(
                    Reason::AlgNotAllowed,
                    format!("header alg differs from the key's algorithm {}", key.alg()),
                ));
            }
            if parsed.is_high_s_es256() {
                return Err(refusal.no(Reason::BadSignature, HIGH_S));
            }
            let (from, issuer, audience) = self
                .trusted_for(key)
                .map_err(|msg| refusal.no(Reason::IssuerMismatch, msg))?;
            origin = from;
            expected_aud = audience.to_owned();
            let imported_validation;
            let validation = match origin {
                KeyOrigin::Own => &self.validations[parsed.alg.index()],
                KeyOrigin::Imported => {
                    imported_validation =
                        validation_for(parsed.alg, issuer, audience, self.cfg.leeway);
                    &imported_validation
                }
            };
            jsonwebtoken::decode::<Map<String, Value>>(token, key.decoding_key(), validation)
        };
        let payload = match decoded {
            Ok(data) => data.claims,
            Err(e) => {
                let (mut reason, mut msg, signed) = map_jwt_error(e.kind());
                if signed {
                    if let Some(p) = self.payload_of(token) {
                        (refusal.jti, refusal.subject) = ids_of(&p);
                        // jsonwebtoken reports `exp: -1` or `exp: 1e300` as missing;
                        // it is there, just not a date.
                        if let ErrorKind::MissingRequiredClaim(claim) = e.kind() {
                            if let Some(err) = present_date_claim_error(&p, claim) {
                                (reason, msg) = err;
                            }
                        }
                    }
                }
                return Err(refusal.no(reason, msg));
            }
        };
        (refusal.jti, refusal.subject) = ids_of(&payload);
        let claims = Claims::from_payload(payload, &expected_aud)
            .map_err(|(reason, msg)| refusal.no(reason, msg))?;
        self.check_time_and_revocation(&claims, now, |r, m| refusal.no(r, m))?;
        let claims = Arc::new(claims);
        self.verified.insert(
            digest,
            Verified {
                claims: claims.clone(),
                kid: kid.to_owned(),
                alg: parsed.alg,
                origin,
            },
            generation,
        );
        Ok(VerifiedToken {
            claims,
            kid: kid.to_owned(),
            alg: parsed.alg,
            fingerprint: fp.clone(),
            origin,
        })
    }

    /// Where a token verified by `key` must come from: tokenwatch's own issuer and
    /// audience for its own keys; for an imported key, the issuer it was bound to at
    /// import (and its audience, or ours). tokenwatch's own issuer is never accepted
    /// from an imported key, even one whose file was edited to claim it.
    fn trusted_for<'k>(
        &'k self,
        key: &'k KeyEntry,
    ) -> Result<(KeyOrigin, &'k str, &'k str), &'static str> {
        match key.imported_binding() {
            None => Ok((KeyOrigin::Own, &self.cfg.issuer, &self.cfg.audience)),
            Some(None) => Err(
                "kid names an imported key bound to no issuer; it verifies nothing until \
                 it is imported again with an issuer",
            ),
            Some(Some(b)) if same_issuer(b.issuer(), &self.cfg.issuer) => {
                Err("an imported key never verifies tokens of tokenwatch's own issuer")
            }
            Some(Some(b)) => Ok((
                KeyOrigin::Imported,
                b.issuer(),
                b.audience().unwrap_or(&self.cfg.audience),
            )),
        }
    }

    /// A token whose bytes were verified before: only what can change since is checked.
    fn recheck(&self, hit: &Verified, fp: String, now: i64) -> Result<VerifiedToken, Rejection> {
        // Built only for a refusal: a hit that passes (the common case) copies nothing.
        let no = |reason, message: &str| {
            let seen = Seen {
                alg: Some(hit.alg.as_str().to_owned()),
                kid: Some(hit.kid.clone()),
            };
            Refusal {
                fingerprint: &fp,
                seen: &seen,
                jti: Some(log_safe_text(&hit.claims.jti, MAX_LOGGED_JTI)),
                subject: Some(log_safe_text(&hit.claims.sub, MAX_LOGGED_SUBJECT)),
            }
            .no(reason, message)
        };
        self.check_time_and_revocation(&hit.claims, now, no)?;
        Ok(VerifiedToken {
            claims: hit.claims.clone(),
            kid: hit.kid.clone(),
            alg: hit.alg,
            fingerprint: fp,
            origin: hit.origin,
        })
    }

    /// The checks that depend on when and after what a token is presented.
    fn check_time_and_revocation(
        &self,
        claims: &Claims,
        now: i64,
        no: impl Fn(Reason, &str) -> Rejection,
    ) -> Result<(), Rejection> {
        let leeway = self.leeway_secs();
        if now >= claims.exp.saturating_add(leeway) {
            return Err(no(Reason::Expired, "token has expired"));
        }
        // iat before nbf: a missing nbf defaults to iat, and a future iat is the more
        // precise (and more suspicious) finding.
        if claims.iat > now.saturating_add(leeway) {
            return Err(no(
                Reason::IssuedInFuture,
                "token claims to be issued in the future (iat)",
            ));
        }
        if claims.nbf > now.saturating_add(leeway) {
            return Err(no(Reason::NotYetValid, "token is not valid yet (nbf)"));
        }

        let store_down = |_: StoreFailure| {
            no(
                Reason::StoreUnavailable,
                "revocation store unavailable; refusing rather than skipping the revocation check",
            )
        };
        if self
            .revocations
            .is_jti_revoked(&claims.jti)
            .map_err(store_down)?
        {
            return Err(no(Reason::Revoked, "token has been revoked"));
        }
        if let Some(sid) = &claims.sid {
            if self
                .revocations
                .is_family_revoked(sid)
                .map_err(store_down)?
            {
                return Err(no(
                    Reason::Revoked,
                    "the token's session (sid) has been revoked",
                ));
            }
        }
        Ok(())
    }

    fn payload_of(&self, token: &str) -> Option<Map<String, Value>> {
        let payload_b64 = token.split('.').nth(1)?;
        serde_json::from_slice(&jws::b64url_decode(payload_b64)?).ok()
    }

    /// Checks only the header rules and the signature, with the key `kid` given here
    /// (the header's `kid` is not consulted), and returns the raw payload bytes.
    ///
    /// No claim is checked: this is for conformance tests against published vectors
    /// and for diagnostics, never for authorisation.
    pub fn verify_signature_only(&self, token: &str, kid: &str) -> Result<Vec<u8>, Rejection> {
        let fp = fingerprint(token);
        let mut seen = Seen::default();
        let no = |seen: &Seen, reason, msg: &str| {
            Refusal {
                fingerprint: &fp,
                seen,
                jti: None,
                subject: None,
            }
            .no(reason, msg)
        };
        if token.len() > self.cfg.max_token_bytes {
            return Err(no(&seen, Reason::TooLarge, "token is too long"));
        }
        let parsed = match jws::parse(token, &mut seen) {
            Ok(p) => p,
            Err((reason, msg)) => return Err(no(&seen, reason, msg)),
        };
        let keys = self.read_keys();
        let key = keys
            .get(kid)
            .ok_or_else(|| no(&seen, Reason::UnknownKid, "kid does not name a known key"))?;
        if key.alg() != parsed.alg {
            return Err(no(
                &seen,
                Reason::AlgNotAllowed,
                "header alg differs from the key's algorithm",
            ));
        }
        if parsed.is_high_s_es256() {
            return Err(no(&seen, Reason::BadSignature, HIGH_S));
        }
        match jsonwebtoken::crypto::verify(
            parsed.signature,
            parsed.signing_input.as_bytes(),
            key.decoding_key(),
            parsed.alg.jwt_algorithm(),
        ) {
            Ok(true) => {}
            Ok(false) => return Err(no(&seen, Reason::BadSignature, "signature does not verify")),
            Err(_) => {
                return Err(no(
                    &seen,
                    Reason::Malformed,
                    "signature is not canonical base64url",
                ))
            }
        }
        let payload_b64 = parsed
            .signing_input
            .split_once('.')
            .map(|(_, p)| p)
            .unwrap_or("");
        jws::b64url_decode(payload_b64).ok_or_else(|| {
            no(
                &seen,
                Reason::Malformed,
                "payload is not canonical base64url",
            )
        })
    }

    /// Issues a refresh token for `subject`, in `family_id` or in a new family.
    pub fn issue_refresh(
        &self,
        subject: &str,
        username: Option<&str>,
        client_id: Option<&str>,
        scope: Option<&str>,
        family_id: Option<&str>,
    ) -> Result<IssuedRefresh, IssueError> {
        let family = family_id.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        self.issue_refresh_at(subject, username, client_id, scope, family, unix_now())
    }

    fn issue_refresh_at(
        &self,
        subject: &str,
        username: Option<&str>,
        client_id: Option<&str>,
        scope: Option<&str>,
        family_id: String,
        now: i64,
    ) -> Result<IssuedRefresh, IssueError> {
        if subject.is_empty() {
            return Err(IssueError::InvalidRequest("subject must not be empty"));
        }
        let mut raw = zeroize::Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(&mut raw[..])
            .map_err(|_| IssueError::Random)?;
        let value = jws::b64url_encode(&raw[..]);
        let expires_at = now.saturating_add(TokenConfig::secs(self.cfg.refresh_ttl));
        self.refresh.insert(&RefreshRecord {
            token_hash: sha256_hex(&value),
            family_id: family_id.clone(),
            subject: subject.to_owned(),
            username: username.map(str::to_owned),
            client_id: client_id.map(str::to_owned),
            scope: scope.map(str::to_owned),
            issued_at: now,
            expires_at,
            used_at: None,
            revoked: false,
        })?;
        Ok(IssuedRefresh {
            fingerprint: fingerprint(&value),
            token: SecretToken::new(value),
            family_id,
            expires_at,
        })
    }

    /// Exchanges a refresh token for a new one of the same family (one-time use).
    ///
    /// Presenting a token that was already exchanged revokes the whole family, both
    /// its refresh tokens and (through `sid`) its access tokens, and answers
    /// [`RefreshError::Reused`]. If that revocation cannot be stored the answer is
    /// [`RefreshError::Store`], so the failure is not mistaken for a handled reuse.
    /// A token bound to a client must be presented by that client (`None` matches
    /// only a token issued without a client).
    pub fn rotate_refresh(
        &self,
        presented: &str,
        client_id: Option<&str>,
    ) -> Result<RotatedRefresh, RefreshError> {
        self.rotate_refresh_at(presented, client_id, unix_now())
    }

    /// [`TokenService::rotate_refresh`] as if the time were `now`.
    ///
    /// With a [`TokenConfig::refresh_reuse_grace`], the token most recently
    /// exchanged in its family (and only that one) may be presented again within
    /// the window: the answer is the same new refresh token, marked
    /// [`RotatedRefresh::grace_repeat`]. Any other reuse revokes the family.
    pub fn rotate_refresh_at(
        &self,
        presented: &str,
        client_id: Option<&str>,
        now: i64,
    ) -> Result<RotatedRefresh, RefreshError> {
        if self.cfg.refresh_reuse_grace.is_zero() {
            return self.rotate_once(presented, client_id, now, None);
        }
        // Held across the whole exchange, so the second of two simultaneous
        // submits finds the first one's entry instead of racing it.
        let mut grace = self.grace.lock().unwrap_or_else(|p| p.into_inner());
        self.rotate_once(presented, client_id, now, Some(&mut grace))
    }

    fn rotate_once(
        &self,
        presented: &str,
        client_id: Option<&str>,
        now: i64,
        mut grace: Option<&mut HashMap<String, GraceEntry>>,
    ) -> Result<RotatedRefresh, RefreshError> {
        let hash = sha256_hex(presented);
        let rec = self.refresh.find(&hash)?.ok_or(RefreshError::Unknown)?;
        if rec.revoked {
            return Err(RefreshError::Revoked);
        }
        if rec.client_id.as_deref() != client_id {
            return Err(RefreshError::ClientMismatch);
        }
        // Reuse is checked before expiry: an old token replayed after it expired is
        // still evidence that the family leaked.
        if rec.used_at.is_some() {
            if let Some(repeat) = grace
                .as_deref_mut()
                .and_then(|g| self.grace_repeat(g, &rec, &hash, now))
            {
                return Ok(repeat);
            }
            return Err(self.family_reused(&rec, now, grace));
        }
        if now >= rec.expires_at {
            return Err(RefreshError::Expired);
        }
        if !self.refresh.mark_used(&hash, now)? {
            // Lost the race against a concurrent exchange of the same token.
            return Err(self.family_reused(&rec, now, grace));
        }
        let refresh = self.issue_refresh_at(
            &rec.subject,
            rec.username.as_deref(),
            rec.client_id.as_deref(),
            rec.scope.as_deref(),
            rec.family_id.clone(),
            now,
        )?;
        let rotated = RotatedRefresh {
            refresh,
            subject: rec.subject,
            username: rec.username,
            client_id: rec.client_id,
            scope: rec.scope,
            family_id: rec.family_id,
            grace_repeat: false,
        };
        if let Some(grace) = grace {
            self.remember_exchange(grace, hash, now, &rotated);
        }
        Ok(rotated)
    }

    /// The earlier answer, when `hash` is its family's latest parent and the window
    /// since its exchange is still open.
    fn grace_repeat(
        &self,
        grace: &HashMap<String, GraceEntry>,
        rec: &RefreshRecord,
        hash: &str,
        now: i64,
    ) -> Option<RotatedRefresh> {
        let entry = grace.get(&rec.family_id)?;
        let window = TokenConfig::secs(self.cfg.refresh_reuse_grace);
        let open = entry.parent_hash == hash && now <= entry.used_at.saturating_add(window);
        open.then(|| RotatedRefresh {
            grace_repeat: true,
            ..entry.rotated.clone()
        })
    }

    fn remember_exchange(
        &self,
        grace: &mut HashMap<String, GraceEntry>,
        parent_hash: String,
        now: i64,
        rotated: &RotatedRefresh,
    ) {
        let window = TokenConfig::secs(self.cfg.refresh_reuse_grace);
        if grace.len() >= MAX_GRACE_ENTRIES {
            grace.retain(|_, e| now <= e.used_at.saturating_add(window));
        }
        // Replacing the family's entry is what ends the grace of the older parent.
        if grace.len() < MAX_GRACE_ENTRIES || grace.contains_key(&rotated.family_id) {
            grace.insert(
                rotated.family_id.clone(),
                GraceEntry {
                    parent_hash,
                    used_at: now,
                    rotated: rotated.clone(),
                },
            );
        }
    }

    fn family_reused(
        &self,
        rec: &RefreshRecord,
        now: i64,
        grace: Option<&mut HashMap<String, GraceEntry>>,
    ) -> RefreshError {
        if let Some(grace) = grace {
            grace.remove(&rec.family_id);
        }
        if let Err(e) = self.end_family(&rec.family_id, now) {
            return RefreshError::Store(e);
        }
        RefreshError::Reused {
            family_id: rec.family_id.clone(),
            subject: rec.subject.clone(),
        }
    }

    fn end_family(&self, family_id: &str, now: i64) -> Result<(), StoreFailure> {
        self.refresh.revoke_family(family_id)?;
        self.revocations
            .revoke_family(family_id, self.family_revocation_until(now))
    }

    /// Revokes one access token; `expires_at` is its `exp` (the entry is kept that
    /// long, plus the leeway).
    pub fn revoke_access(&self, jti: &str, expires_at: i64) -> Result<(), StoreFailure> {
        self.revocations
            .revoke_jti(jti, expires_at.saturating_add(self.leeway_secs()))
    }

    /// Ends refresh family `family_id` and, through `sid`, its access tokens: for
    /// the holder of a family id rather than a token (the tokens issued for an
    /// authorization code that was presented again).
    pub fn revoke_family(&self, family_id: &str) -> Result<(), StoreFailure> {
        self.end_family(family_id, unix_now())
    }

    /// RFC 7009 revocation of a refresh token by `client_id` (`None`: a token
    /// issued to no client): ends its whole family, including the family's access
    /// tokens, when the token was issued to that client (§2.1), and leaves it alone
    /// otherwise.
    pub fn revoke_refresh(
        &self,
        presented: &str,
        client_id: Option<&str>,
    ) -> Result<RefreshRevocation, StoreFailure> {
        let Some(rec) = self.refresh.find(&sha256_hex(presented))? else {
            return Ok(RefreshRevocation::Unknown);
        };
        if rec.client_id.as_deref() != client_id {
            return Ok(RefreshRevocation::OtherClient {
                family_id: rec.family_id,
            });
        }
        self.end_family(&rec.family_id, unix_now())?;
        Ok(RefreshRevocation::Revoked {
            family_id: rec.family_id,
        })
    }

    /// Every key, newest first.
    pub fn keys(&self) -> Vec<KeyInfo> {
        self.read_keys().keys()
    }

    /// [`KeyRing::import_hmac`], refusing tokenwatch's own issuer as the binding:
    /// a shared secret must never be able to mint tokenwatch identities.
    pub fn import_hmac(
        &self,
        kid: &str,
        alg: Alg,
        secret: &[u8],
        binding: &IssuerBinding,
    ) -> Result<KeyInfo, KeyError> {
        self.refuse_own_issuer(binding)?;
        self.write_keys().import_hmac(kid, alg, secret, binding)
    }

    /// [`KeyRing::import_jwk`], refusing tokenwatch's own issuer as the binding.
    pub fn import_jwk(&self, jwk: &Value, binding: &IssuerBinding) -> Result<KeyInfo, KeyError> {
        self.refuse_own_issuer(binding)?;
        self.write_keys().import_jwk(jwk, binding)
    }

    fn refuse_own_issuer(&self, binding: &IssuerBinding) -> Result<(), KeyError> {
        if same_issuer(binding.issuer(), &self.cfg.issuer) {
            return Err(KeyError::OwnIssuer {
                issuer: self.cfg.issuer.clone(),
            });
        }
        Ok(())
    }

    /// Generates a new active key of `alg`; older keys keep verifying. The key is
    /// generated before the write lock is taken, so verification is not stalled by
    /// RSA key generation.
    pub fn rotate_keys(&self, alg: Alg) -> Result<KeyInfo, KeyError> {
        let dir = self.read_keys().dir().to_owned();
        let now = unix_now();
        let entry = generate_entry(&dir, alg, now)?;
        self.write_keys().install_active(entry, now)
    }

    /// Drops retired keys no live token can still need (retired longer than
    /// `access_ttl` plus the leeway ago). Returns their kids.
    pub fn prune_retired_keys(&self, now: i64) -> Result<Vec<String>, KeyError> {
        let keep = TokenConfig::secs(self.cfg.access_ttl).saturating_add(self.leeway_secs());
        self.write_keys().prune_retired(now, keep)
    }

    /// The public JWK Set (RFC 7517).
    pub fn jwks(&self) -> Value {
        self.read_keys().jwks()
    }

    /// See [`KeyRing::public_key_pem`].
    pub fn public_key_pem(&self, kid: &str) -> Option<String> {
        self.read_keys().public_key_pem(kid)
    }
}

/// Whether two issuer identifiers could name the same issuer to a relying party
/// that compares loosely: equal but for ASCII case or a trailing `/`. Used only to
/// refuse: an imported key is never bound to anything that could pass for
/// tokenwatch's own issuer (an issuer URL such as `https://auth.example.com` and
/// `https://AUTH.example.com/`).
pub fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

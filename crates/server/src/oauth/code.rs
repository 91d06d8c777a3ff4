//! Authorization codes (RFC 6749 §4.1) with PKCE (RFC 7636, S256 only): issued
//! by the authorization page, exchanged once at the token endpoint.
//!
//! A code is bound to its client, redirect URI and code challenge, lives 60 s and
//! is kept only in memory, keyed by its SHA-256 (a restart forgets codes in
//! flight; the app starts the flow again). A used code is remembered for ten
//! minutes: presented again, it revokes the tokens it was exchanged for. Any
//! failed exchange of a live code (wrong client, redirect URI or verifier) burns it.

use std::collections::HashMap;
use std::sync::Mutex;

use actix_web::{web, HttpResponse};
use audit_store::{kinds, NewEvent, Outcome};
use base64::Engine;
use serde_json::json;
use token_core::{IssuedRefresh, IssuedToken};

use super::{access_request, issued_event, token_response, Form, OAuthError};
use crate::app::Data;
use crate::passwords::constant_time_eq;
use crate::request_meta::RequestMeta;
use crate::state::{now_secs, sha256_hex, Client, GrantType, User};

/// RFC 6749 §4.1.2 asks for at most ten minutes; a redirect takes a second.
pub(crate) const CODE_TTL_SECS: i64 = 60;
/// How long a used code is remembered so that a replay revokes what it issued.
const USED_MEMORY_SECS: i64 = 600;
/// Codes exist only after a successful login, so this bounds memory, not traffic.
const MAX_CODES: usize = 100_000;

/// What a code stands for: who approved which client, and how it must be redeemed.
#[derive(Clone, Debug)]
pub(crate) struct CodeGrant {
    pub client_id: String,
    pub redirect_uri: String,
    /// BASE64URL(SHA-256(code_verifier)), as sent with the authorization request.
    pub code_challenge: String,
    pub subject: String,
    pub username: String,
    pub scope: Option<String>,
}

/// The tokens a code was exchanged for, to revoke if it is presented again.
#[derive(Clone, Debug)]
pub(crate) struct Issued {
    jti: String,
    exp: i64,
    family: Option<String>,
}

enum Stage {
    Fresh,
    /// Tokens are being issued; a replay meanwhile sets `replayed`, and the
    /// exchange revokes what it issued instead of answering with it.
    Exchanging {
        replayed: bool,
    },
    Exchanged(Issued),
}

struct Entry {
    grant: CodeGrant,
    expires_at: i64,
    forget_at: i64,
    stage: Stage,
}

/// The live and recently used codes.
#[derive(Default)]
pub struct CodeStore {
    codes: Mutex<HashMap<String, Entry>>,
}

pub(crate) enum Take {
    Granted(CodeGrant),
    Rejected(&'static str, Option<CodeGrant>),
    Replayed(CodeGrant, Option<Issued>),
}

impl CodeStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.codes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new code for `grant`; `None` when too many codes are live.
    pub(crate) fn issue(&self, grant: CodeGrant) -> Option<String> {
        let now = now_secs();
        let mut codes = self.lock();
        if codes.len() >= MAX_CODES {
            codes.retain(|_, e| e.forget_at > now);
            if codes.len() >= MAX_CODES {
                return None;
            }
        }
        let code = crate::random_token(32);
        codes.insert(
            sha256_hex(code.as_bytes()),
            Entry {
                grant,
                expires_at: now + CODE_TTL_SECS,
                forget_at: now + USED_MEMORY_SECS,
                stage: Stage::Fresh,
            },
        );
        Some(code)
    }

    /// Makes every code `secs` older, as if that time had passed: how the tests see
    /// a code expire without waiting for it.
    #[doc(hidden)]
    pub fn backdate(&self, secs: i64) {
        for e in self.lock().values_mut() {
            e.expires_at -= secs;
            e.forget_at -= secs;
        }
    }

    /// Forgets a code whose issue could not be recorded.
    pub(crate) fn forget(&self, code: &str) {
        self.lock().remove(&sha256_hex(code.as_bytes()));
    }

    /// Redeems `code` for `client_id` at `redirect_uri` with `verifier`.
    pub(crate) fn take(
        &self,
        code: &str,
        client_id: &str,
        redirect_uri: &str,
        verifier: &str,
        now: i64,
    ) -> Take {
        let key = sha256_hex(code.as_bytes());
        let mut codes = self.lock();
        let Some(entry) = codes.get_mut(&key).filter(|e| e.forget_at > now) else {
            return Take::Rejected("unknown_code", None);
        };
        match &mut entry.stage {
            Stage::Exchanging { replayed } => {
                *replayed = true;
                return Take::Replayed(entry.grant.clone(), None);
            }
            Stage::Exchanged(issued) => {
                let issued = issued.clone();
                return Take::Replayed(entry.grant.clone(), Some(issued));
            }
            Stage::Fresh => {}
        }
        let g = &entry.grant;
        let refusal = if entry.expires_at <= now {
            Some("expired_code")
        } else if g.client_id != client_id {
            Some("client_mismatch")
        } else if g.redirect_uri != redirect_uri {
            Some("redirect_uri_mismatch")
        } else if !valid_verifier(verifier) {
            Some("invalid_code_verifier")
        } else if !constant_time_eq(s256(verifier).as_bytes(), g.code_challenge.as_bytes()) {
            Some("pkce_mismatch")
        } else {
            None
        };
        if let Some(reason) = refusal {
            let burnt = codes.remove(&key).map(|e| e.grant);
            return Take::Rejected(reason, burnt);
        }
        entry.stage = Stage::Exchanging { replayed: false };
        Take::Granted(entry.grant.clone())
    }

    /// Records what `code` was exchanged for. False when the code was presented
    /// again during the exchange: the caller revokes `issued` and refuses.
    pub(crate) fn finish(&self, code: &str, issued: Issued) -> bool {
        let mut codes = self.lock();
        match codes.get_mut(&sha256_hex(code.as_bytes())) {
            Some(entry) if matches!(entry.stage, Stage::Exchanging { replayed: false }) => {
                entry.stage = Stage::Exchanged(issued);
                true
            }
            _ => false,
        }
    }
}

/// A PKCE code challenge as S256 makes it: 43 base64url characters.
pub(crate) fn valid_challenge(c: &str) -> bool {
    c.len() == 43
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// RFC 7636 §4.1: 43 to 128 unreserved characters.
fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// BASE64URL(SHA-256(ASCII(verifier))), RFC 7636 §4.2.
pub(crate) fn s256(verifier: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// `grant_type=authorization_code` at the token endpoint.
pub(super) async fn exchange(
    data: &Data,
    meta: &RequestMeta,
    form: &Form,
    client: Option<Client>,
) -> Result<HttpResponse, OAuthError> {
    let code_fp = form.get("code").map(token_core::fingerprint);
    let rejected = |reason: &str, client_id: Option<&str>, grant: Option<&CodeGrant>| {
        let mut ev = meta.event(kinds::CODE_REJECTED, Outcome::Failure);
        ev.reason = Some(reason.to_string());
        ev.token_fp = code_fp.clone();
        if let Some(g) = grant {
            ev.subject = Some(g.subject.clone());
            ev.username = Some(g.username.clone());
        }
        ev.detail = json!({ "grant_type": "authorization_code", "client_id": client_id,
            "code_client_id": grant.map(|g| &g.client_id) });
        ev
    };
    let Some(client) = client else {
        data.record(rejected("no_client", None, None)).await?;
        return Err(OAuthError::InvalidRequest(
            "client_id is required (a public client sends it in the body)".into(),
        ));
    };
    let cid = client.client_id.as_str();
    if !client.allows(GrantType::AuthorizationCode) {
        data.record(rejected("unauthorized_client", Some(cid), None))
            .await?;
        return Err(OAuthError::UnauthorizedClient);
    }
    let (Some(code), Some(redirect_uri), Some(verifier)) = (
        form.get("code"),
        form.get("redirect_uri"),
        form.get("code_verifier"),
    ) else {
        data.record(rejected("missing_parameter", Some(cid), None))
            .await?;
        return Err(OAuthError::InvalidRequest(
            "code, redirect_uri and code_verifier are required".into(),
        ));
    };
    let taken = data
        .codes
        .take(code, cid, redirect_uri, verifier, now_secs());
    let grant = match taken {
        Take::Granted(grant) => grant,
        Take::Rejected(reason, grant) => {
            data.record(rejected(reason, Some(cid), grant.as_ref()))
                .await?;
            return Err(OAuthError::InvalidGrant);
        }
        Take::Replayed(grant, issued) => {
            return replayed(data, meta, &grant, issued, code_fp, cid).await;
        }
    };

    let issued = issue_tokens(data, &client, &grant).await;
    let (user, access, refresh) = match issued {
        Ok(Some(t)) => t,
        Ok(None) => {
            data.codes.forget(code);
            data.record(rejected("account_disabled", Some(cid), Some(&grant)))
                .await?;
            return Err(OAuthError::InvalidGrant);
        }
        Err(e) => {
            data.codes.forget(code);
            tracing::error!(error = %e, "token issuance failed");
            return Err(OAuthError::Unavailable);
        }
    };
    let record = Issued {
        jti: access.jti.clone(),
        exp: access.expires_at,
        family: refresh.as_ref().map(|r| r.family_id.clone()),
    };
    if !data.codes.finish(code, record.clone()) {
        return replayed(data, meta, &grant, Some(record), code_fp, cid).await;
    }
    let mut ev = issued_event(
        meta,
        kinds::TOKEN_ISSUED,
        &access,
        &user.subject,
        Some(&user.username),
    );
    ev.detail = json!({
        "grant_type": "authorization_code",
        "client_id": cid,
        "code_fp": code_fp,
        "refresh_family": refresh.as_ref().map(|r| &r.family_id),
        "refresh_fp": refresh.as_ref().map(|r| &r.fingerprint),
        "expires_at": access.expires_at,
    });
    data.record(ev).await?;
    Ok(token_response(
        &access,
        refresh.as_ref(),
        grant.scope.as_deref(),
    ))
}

type IssuedTokens = (User, IssuedToken, Option<IssuedRefresh>);

/// The tokens for a redeemed code; `None` when the user is gone or disabled.
async fn issue_tokens(
    data: &Data,
    client: &Client,
    grant: &CodeGrant,
) -> Result<Option<IssuedTokens>, String> {
    let tokens = data.tokens.clone();
    let state = data.state.clone();
    let with_refresh = client.allows(GrantType::RefreshToken);
    let (cid, grant) = (client.client_id.clone(), grant.clone());
    web::block(move || -> Result<Option<IssuedTokens>, String> {
        let user = match state
            .find_user_by_subject(&grant.subject)
            .map_err(|e| e.to_string())?
        {
            Some(u) if !u.disabled => u,
            _ => return Ok(None),
        };
        let scope = grant.scope.as_deref();
        let refresh = with_refresh
            .then(|| {
                tokens.issue_refresh(
                    &user.subject,
                    Some(&user.username),
                    Some(cid.as_str()),
                    scope,
                    None,
                )
            })
            .transpose()
            .map_err(|e| e.to_string())?;
        let family = refresh.as_ref().map(|r| r.family_id.clone());
        let access = tokens
            .issue_access(&access_request(&user, Some(cid), grant.scope, family))
            .map_err(|e| e.to_string())?;
        Ok(Some((user, access, refresh)))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A code presented again: revoke what it was exchanged for, record it, refuse.
async fn replayed(
    data: &Data,
    meta: &RequestMeta,
    grant: &CodeGrant,
    issued: Option<Issued>,
    code_fp: Option<String>,
    client_id: &str,
) -> Result<HttpResponse, OAuthError> {
    if let Some(i) = &issued {
        let revoked = data.tokens.revoke_access(&i.jti, i.exp).and_then(|()| {
            i.family
                .as_deref()
                .map_or(Ok(()), |f| data.tokens.revoke_family(f))
        });
        if let Err(e) = revoked {
            tracing::error!(error = %e, "revoking the tokens of a replayed code failed");
            return Err(OAuthError::Unavailable);
        }
    }
    let mut ev: NewEvent = meta.event(kinds::CODE_REUSED, Outcome::Failure);
    ev.reason = Some("code_reused".into());
    ev.subject = Some(grant.subject.clone());
    ev.username = Some(grant.username.clone());
    ev.token_fp = code_fp;
    ev.jti = issued.as_ref().map(|i| i.jti.clone());
    ev.detail = json!({
        "grant_type": "authorization_code",
        "client_id": client_id,
        "code_client_id": grant.client_id,
        "revoked_jti": issued.as_ref().map(|i| &i.jti),
        "refresh_family": issued.as_ref().and_then(|i| i.family.as_ref()),
        "tokens_revoked": issued.is_some(),
    });
    data.record(ev).await?;
    Err(OAuthError::InvalidGrant)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(challenge: &str) -> CodeGrant {
        CodeGrant {
            client_id: "spa".into(),
            redirect_uri: "https://app.example/cb".into(),
            code_challenge: challenge.into(),
            subject: "s".into(),
            username: "alice".into(),
            scope: None,
        }
    }

    #[test]
    fn s256_matches_rfc7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(
            s256(verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(valid_challenge(&s256(verifier)));
        assert!(!valid_verifier("short"));
    }

    #[test]
    fn a_code_is_single_use_bound_and_short_lived() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let store = CodeStore::default();
        let now = now_secs();
        let code = store.issue(grant(&s256(verifier))).unwrap();
        assert!(matches!(
            store.take(&code, "spa", "https://app.example/cb", verifier, now),
            Take::Granted(_)
        ));
        assert!(store.finish(
            &code,
            Issued {
                jti: "j".into(),
                exp: now + 60,
                family: None
            }
        ));
        assert!(matches!(
            store.take(&code, "spa", "https://app.example/cb", verifier, now),
            Take::Replayed(_, Some(_))
        ));

        let code = store.issue(grant(&s256(verifier))).unwrap();
        assert!(matches!(
            store.take(
                &code,
                "spa",
                "https://app.example/cb",
                verifier,
                now + CODE_TTL_SECS
            ),
            Take::Rejected("expired_code", Some(_))
        ));
        let code = store.issue(grant(&s256(verifier))).unwrap();
        assert!(matches!(
            store.take(&code, "spa", "https://app.example/cb/", verifier, now),
            Take::Rejected("redirect_uri_mismatch", Some(_))
        ));
        // Burnt: the right request afterwards finds nothing.
        assert!(matches!(
            store.take(&code, "spa", "https://app.example/cb", verifier, now),
            Take::Rejected("unknown_code", None)
        ));
    }
}

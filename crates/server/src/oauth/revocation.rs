//! Introspection (RFC 7662) and revocation (RFC 7009).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use audit_store::{kinds, NewEvent, Outcome};
use serde_json::json;
use token_core::{KeyOrigin, RefreshRevocation};

use super::{authenticate_client, presented_client, Form, OAuthError};
use crate::app::Data;
use crate::request_meta::RequestMeta;
use crate::state::ClientKind;

/// RFC 7662. Only an authenticated client or resource server may ask; an
/// inactive token is answered with exactly `{"active": false}`, its reason
/// goes only to the audit log.
pub async fn introspect(
    req: HttpRequest,
    body: web::Bytes,
    data: Data,
) -> Result<HttpResponse, OAuthError> {
    let meta = RequestMeta::from_request(&req);
    let form = Form::parse(&body)?;
    let presented =
        presented_client(&req, &form)?.ok_or(OAuthError::InvalidClient { via_basic: false })?;
    let client = authenticate_client(&data, &meta, presented).await?;
    if client.kind == ClientKind::Public {
        // A public client proves nothing by its client_id; introspection would let
        // anyone read any token's claims.
        let mut ev = meta.event(kinds::AUTH_LOGIN_FAILURE, Outcome::Failure);
        ev.reason = Some("unauthorized_client".into());
        ev.username = Some(client.client_id.clone());
        ev.detail = json!({ "credential": "client", "via": "introspection", "client_id": client.client_id });
        data.record(ev).await?;
        return Err(OAuthError::InvalidClient { via_basic: false });
    }
    let token = form.require("token")?;
    let body = match data.tokens.verify(token) {
        Ok(v) => {
            let c = &v.claims;
            let mut ev = meta.event(kinds::TOKEN_VERIFIED, Outcome::Success);
            ev.subject = Some(c.sub.clone());
            ev.username = c.username.clone();
            ev.jti = Some(c.jti.clone());
            ev.kid = Some(v.kid.clone());
            ev.alg = Some(v.alg.as_str().to_string());
            ev.token_fp = Some(v.fingerprint.clone());
            ev.detail = json!({ "via": "introspection", "client_id": client.client_id });
            data.record(ev).await?;
            json!({
                "active": true,
                "token_type": "Bearer",
                "iss": c.iss, "sub": c.sub, "aud": c.aud, "exp": c.exp, "iat": c.iat, "nbf": c.nbf, "jti": c.jti,
                "username": c.username, "scope": c.scope, "client_id": c.client_id,
            })
        }
        Err(rejection) => {
            let mut ev = crate::bearer::rejection_event(&meta, kinds::TOKEN_REJECTED, &rejection);
            ev.detail = json!({ "via": "introspection", "client_id": client.client_id, "message": rejection.message });
            data.record(ev).await?;
            json!({ "active": false })
        }
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body))
}

/// RFC 7009. The client authenticates (§2.1) as at the token endpoint, and only
/// a token issued to it is revoked. The answer is 200 whether the token was
/// revoked, unknown, or another client's, so the endpoint cannot be used to probe
/// tokens; what happened is in the audit log.
pub async fn revoke(
    req: HttpRequest,
    body: web::Bytes,
    data: Data,
) -> Result<HttpResponse, OAuthError> {
    let meta = RequestMeta::from_request(&req);
    let form = Form::parse(&body)?;
    let Some(presented) = presented_client(&req, &form)? else {
        return refuse_unauthenticated_revoke(&data, &meta, &form).await;
    };
    let client_id = authenticate_client(&data, &meta, presented)
        .await?
        .client_id;
    let token = form.require("token")?.to_string();
    let mut ev = meta.event(kinds::TOKEN_REVOKED, Outcome::Success);
    ev.token_fp = Some(token_core::fingerprint(&token));
    let looks_like_jwt = token.matches('.').count() == 2;
    if looks_like_jwt && form.get("token_type_hint") != Some("refresh_token") {
        revoke_access_token(&data, &token, &client_id, &mut ev)?;
    } else {
        revoke_refresh_token(&data, token, &client_id, &mut ev).await?;
    }
    data.record(ev).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}

/// No client credentials: 401 `invalid_client` (RFC 6749 §5.2), audited with the
/// fingerprint of the token that was to be revoked.
async fn refuse_unauthenticated_revoke(
    data: &Data,
    meta: &RequestMeta,
    form: &Form,
) -> Result<HttpResponse, OAuthError> {
    let mut ev = meta.event(kinds::TOKEN_REVOKED, Outcome::Failure);
    ev.reason = Some("invalid_client".into());
    ev.token_fp = form.get("token").map(token_core::fingerprint);
    ev.detail = json!({ "effect": "nothing revoked", "message": "revocation requires client authentication" });
    data.record(ev).await?;
    Err(OAuthError::InvalidClient { via_basic: false })
}

/// Revokes an access token issued to `client_id` by tokenwatch itself; any other
/// token is left alone and the event says why.
fn revoke_access_token(
    data: &Data,
    token: &str,
    client_id: &str,
    ev: &mut NewEvent,
) -> Result<(), OAuthError> {
    let v = match data.tokens.verify(token) {
        Ok(v) => v,
        Err(rejection) => {
            ev.outcome = Outcome::Failure;
            ev.reason = Some(rejection.reason.as_str().to_string());
            ev.jti = rejection.jti.clone();
            ev.detail = json!({ "token_type": "access_token", "client_id": client_id, "effect": "nothing to revoke" });
            return Ok(());
        }
    };
    ev.subject = Some(v.claims.sub.clone());
    ev.username = v.claims.username.clone();
    ev.jti = Some(v.claims.jti.clone());
    ev.kid = Some(v.kid.clone());
    ev.alg = Some(v.alg.as_str().to_string());
    let owned = v.origin == KeyOrigin::Own && v.claims.client_id.as_deref() == Some(client_id);
    if !owned {
        ev.outcome = Outcome::Failure;
        ev.reason = Some("client_mismatch".into());
        ev.detail = json!({ "token_type": "access_token", "client_id": client_id,
            "token_client_id": v.claims.client_id, "effect": "not revoked: the token was not issued to this client" });
        return Ok(());
    }
    data.tokens
        .revoke_access(&v.claims.jti, v.claims.exp)
        .map_err(|e| {
            tracing::error!(error = %e, "revocation store failed");
            OAuthError::Unavailable
        })?;
    ev.detail = json!({ "token_type": "access_token", "client_id": client_id });
    Ok(())
}

async fn revoke_refresh_token(
    data: &Data,
    token: String,
    client_id: &str,
    ev: &mut NewEvent,
) -> Result<(), OAuthError> {
    let tokens = data.tokens.clone();
    let cid = client_id.to_string();
    let outcome = web::block(move || tokens.revoke_refresh(&token, Some(&cid)))
        .await
        .map_err(|_| OAuthError::Unavailable)?
        .map_err(|e| {
            tracing::error!(error = %e, "revocation store failed");
            OAuthError::Unavailable
        })?;
    let (reason, family, effect) = match outcome {
        RefreshRevocation::Revoked { family_id } => (None, Some(family_id), "family revoked"),
        RefreshRevocation::Unknown => (Some("unknown_token"), None, "nothing to revoke"),
        RefreshRevocation::OtherClient { family_id } => (
            Some("client_mismatch"),
            Some(family_id),
            "not revoked: the token was not issued to this client",
        ),
    };
    if let Some(reason) = reason {
        ev.outcome = Outcome::Failure;
        ev.reason = Some(reason.into());
    }
    ev.detail = json!({ "token_type": "refresh_token", "client_id": client_id, "refresh_family": family, "effect": effect });
    Ok(())
}

//! The OAuth 2.0 endpoints: token (RFC 6749), authorization with PKCE
//! (`authorize`, `code`), metadata (`discovery`, RFC 8414), introspection
//! (RFC 7662) and revocation (RFC 7009, both in `revocation`). Each decision is
//! committed to the audit store before the answer leaves the server.

pub mod authorize;
pub mod code;
pub mod discovery;
mod revocation;

pub use revocation::{introspect, revoke};

use std::collections::HashMap;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use audit_store::{kinds, NewEvent, Outcome};
use base64::Engine;
use serde_json::json;
use token_core::{AccessRequest, IssuedRefresh, IssuedToken, RefreshError};

use crate::app::{AuditUnavailable, Data};
use crate::passwords;
use crate::request_meta::RequestMeta;
use crate::state::{Client, ClientKind, GrantType, Lockout, StateDb, User};

/// RFC 6749 §5.2 error responses. The description never says whether a user exists.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("invalid_request: {0}")]
    InvalidRequest(String),
    #[error("invalid_client")]
    InvalidClient { via_basic: bool },
    #[error("invalid_grant")]
    InvalidGrant,
    #[error("unauthorized_client")]
    UnauthorizedClient,
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    #[error("temporarily_unavailable")]
    Unavailable,
    /// The client IP is throttled after a password-spraying alert.
    #[error("throttled")]
    Throttled { retry_after_secs: i64 },
}

impl From<AuditUnavailable> for OAuthError {
    fn from(_: AuditUnavailable) -> Self {
        OAuthError::Unavailable
    }
}

impl ResponseError for OAuthError {
    fn status_code(&self) -> StatusCode {
        match self {
            OAuthError::InvalidClient { .. } => StatusCode::UNAUTHORIZED,
            OAuthError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            OAuthError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (code, description) = match self {
            OAuthError::InvalidRequest(d) => ("invalid_request", Some(d.as_str())),
            OAuthError::InvalidClient { .. } => {
                ("invalid_client", Some("client authentication failed"))
            }
            OAuthError::InvalidGrant => (
                "invalid_grant",
                Some("the credentials or grant are invalid, expired or revoked"),
            ),
            OAuthError::UnauthorizedClient => (
                "unauthorized_client",
                Some("this client may not use this grant"),
            ),
            OAuthError::UnsupportedGrantType => ("unsupported_grant_type", None),
            OAuthError::Unavailable => (
                "temporarily_unavailable",
                Some("the audit store cannot record this decision; try again later"),
            ),
            OAuthError::Throttled { .. } => (
                "temporarily_unavailable",
                Some("too many failed logins from this address; retry later"),
            ),
        };
        let mut body = json!({ "error": code });
        if let Some(d) = description {
            body["error_description"] = json!(d);
        }
        let mut resp = HttpResponse::build(self.status_code());
        resp.insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::PRAGMA, "no-cache"));
        if let OAuthError::Throttled { retry_after_secs } = self {
            resp.insert_header((header::RETRY_AFTER, retry_after_secs.max(&1).to_string()));
        }
        if let OAuthError::InvalidClient { via_basic: true } = self {
            resp.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tokenwatch\""),
            ));
        }
        resp.json(body)
    }
}

/// Form parameters; RFC 6749 §3.2 forbids a parameter to appear twice.
struct Form(HashMap<String, String>);

impl Form {
    fn parse(body: &[u8]) -> Result<Form, OAuthError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).map_err(|_| {
            OAuthError::InvalidRequest("the body must be application/x-www-form-urlencoded".into())
        })?;
        let mut map = HashMap::with_capacity(pairs.len());
        for (k, v) in pairs {
            if map.insert(k.clone(), v).is_some() {
                return Err(OAuthError::InvalidRequest(format!(
                    "parameter {k:?} is repeated"
                )));
            }
        }
        Ok(Form(map))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn require(&self, key: &str) -> Result<&str, OAuthError> {
        self.get(key)
            .ok_or_else(|| OAuthError::InvalidRequest(format!("missing parameter {key:?}")))
    }
}

/// Client credentials as presented, before they are checked.
struct PresentedClient {
    id: String,
    secret: Option<String>,
    via_basic: bool,
}

fn presented_client(req: &HttpRequest, form: &Form) -> Result<Option<PresentedClient>, OAuthError> {
    // As at the bearer middleware: with two Authorization headers, which one
    // authenticates would be a guess.
    if req
        .headers()
        .get_all(header::AUTHORIZATION)
        .nth(1)
        .is_some()
    {
        return Err(OAuthError::InvalidRequest(
            "send exactly one Authorization header".into(),
        ));
    }
    let basic = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "));
    match (basic, form.get("client_id")) {
        (Some(_), Some(_)) if form.get("client_secret").is_some() => Err(
            OAuthError::InvalidRequest("use one client authentication method, not two".into()),
        ),
        (Some(encoded), _) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(OAuthError::InvalidClient { via_basic: true })?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or(OAuthError::InvalidClient { via_basic: true })?;
            // RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
            let decode = |s: &str| {
                serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={s}"))
                    .ok()
                    .and_then(|mut v| v.pop())
                    .map(|(_, v)| v)
            };
            Ok(Some(PresentedClient {
                id: decode(id).ok_or(OAuthError::InvalidClient { via_basic: true })?,
                secret: decode(secret),
                via_basic: true,
            }))
        }
        (None, Some(id)) => Ok(Some(PresentedClient {
            id: id.to_string(),
            secret: form.get("client_secret").map(str::to_string),
            via_basic: false,
        })),
        (None, None) => Ok(None),
    }
}

/// Checks a presented client; a failure is audited with the client id tried.
async fn authenticate_client(
    data: &Data,
    meta: &RequestMeta,
    presented: PresentedClient,
) -> Result<Client, OAuthError> {
    let state = data.state.clone();
    let id = presented.id.clone();
    let found = web::block(move || state.find_client(&id))
        .await
        .map_err(|_| OAuthError::Unavailable)?
        .map_err(|e| {
            tracing::error!(error = %e, "client lookup failed");
            OAuthError::Unavailable
        })?;
    let ok = match (&found, &presented.secret) {
        // A public client has no secret: its client_id is all it presents, and a
        // secret it should not have is refused rather than ignored.
        (Some(client), None) => client.kind == ClientKind::Public,
        (Some(client), Some(_)) if client.kind == ClientKind::Public => false,
        (Some(client), Some(secret)) => passwords::constant_time_eq(
            crate::state::sha256_hex(secret.as_bytes()).as_bytes(),
            client.secret_sha256.as_bytes(),
        ),
        _ => false,
    };
    match found {
        Some(client) if ok => Ok(client),
        _ => {
            let mut ev = meta.event(kinds::AUTH_LOGIN_FAILURE, Outcome::Failure);
            ev.reason = Some("invalid_client".into());
            ev.username = Some(crate::request_meta::truncate(&presented.id, 128));
            ev.detail = json!({ "credential": "client" });
            data.record(ev).await?;
            Err(OAuthError::InvalidClient {
                via_basic: presented.via_basic,
            })
        }
    }
}

fn token_response(
    access: &IssuedToken,
    refresh: Option<&IssuedRefresh>,
    scope: Option<&str>,
) -> HttpResponse {
    let mut body = json!({
        "access_token": access.token.expose(),
        "token_type": "Bearer",
        "expires_in": (access.expires_at - access.issued_at).max(0),
    });
    if let Some(r) = refresh {
        body["refresh_token"] = json!(r.token.expose());
    }
    if let Some(s) = scope {
        body["scope"] = json!(s);
    }
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(body)
}

fn issued_event(
    meta: &RequestMeta,
    kind: &str,
    t: &IssuedToken,
    subject: &str,
    username: Option<&str>,
) -> NewEvent {
    let mut ev = meta.event(kind, Outcome::Success);
    ev.subject = Some(subject.to_string());
    ev.username = username.map(str::to_string);
    ev.jti = Some(t.jti.clone());
    ev.kid = Some(t.kid.clone());
    ev.alg = Some(t.alg.as_str().to_string());
    ev.token_fp = Some(t.fingerprint.clone());
    ev
}

pub async fn token(
    req: HttpRequest,
    body: web::Bytes,
    data: Data,
) -> Result<HttpResponse, OAuthError> {
    let meta = RequestMeta::from_request(&req);
    let form = Form::parse(&body)?;
    let client = match presented_client(&req, &form)? {
        Some(p) => Some(authenticate_client(&data, &meta, p).await?),
        None => None,
    };
    match form.require("grant_type")? {
        "password" => password_grant(&data, &meta, &form, client).await,
        "refresh_token" => refresh_grant(&data, &meta, &form, client).await,
        "client_credentials" => client_credentials_grant(&data, &meta, &form, client).await,
        "authorization_code" => code::exchange(&data, &meta, &form, client).await,
        _ => Err(OAuthError::UnsupportedGrantType),
    }
}

/// A throttled client IP gets 429 with Retry-After; a locked account gets the
/// same answer as a wrong password, so the lock tells an attacker nothing.
/// Both refusals are audited, and neither costs a password hash.
async fn refuse_locked_out(
    data: &Data,
    meta: &RequestMeta,
    username: &str,
    client_id: Option<&str>,
    reason: &'static str,
    lock: Lockout,
) -> Result<HttpResponse, OAuthError> {
    let mut ev = meta.event(kinds::AUTH_LOGIN_FAILURE, Outcome::Failure);
    ev.reason = Some(reason.into());
    ev.username = Some(crate::request_meta::truncate(username, 128));
    ev.detail =
        json!({ "grant_type": "password", "client_id": client_id, "locked_until": lock.until });
    data.record(ev).await?;
    Err(if reason == "ip_throttled" {
        OAuthError::Throttled {
            retry_after_secs: lock.until - crate::state::now_secs(),
        }
    } else {
        OAuthError::InvalidGrant
    })
}

/// The running lockout that refuses this login, if any: the client IP's first.
fn lockout_for(
    state: &StateDb,
    client_ip: Option<&str>,
    username: &str,
) -> Result<Option<(&'static str, Lockout)>, crate::state::StateError> {
    if let Some(lock) = client_ip
        .map(|ip| state.active_lockout("ip", ip))
        .transpose()?
        .flatten()
    {
        return Ok(Some(("ip_throttled", lock)));
    }
    Ok(state
        .active_lockout("user", username)?
        .map(|lock| ("account_locked", lock)))
}

enum LoginCheck {
    LockedOut(&'static str, Lockout),
    Ok(User),
    UnknownUser,
    BadPassword,
    Disabled,
}

/// Checks a username and password as every login does: a running lockout of the
/// client IP or the account first (no hash is computed then), then argon2id.
async fn check_login(
    data: &Data,
    client_ip: Option<String>,
    username: &str,
    password: String,
) -> Result<LoginCheck, OAuthError> {
    let state = data.state.clone();
    let name = username.to_string();
    // argon2id costs tens of milliseconds of CPU, and the lookups are SQLite:
    // keep both off the async workers.
    web::block(move || -> Result<LoginCheck, crate::state::StateError> {
        if let Some((reason, lock)) = lockout_for(&state, client_ip.as_deref(), &name)? {
            return Ok(LoginCheck::LockedOut(reason, lock));
        }
        Ok(match state.find_user(&name)? {
            None => {
                passwords::verify_against_dummy(&password);
                LoginCheck::UnknownUser
            }
            Some(user) if !passwords::verify(&password, &user.password_hash) => {
                LoginCheck::BadPassword
            }
            Some(user) if user.disabled => LoginCheck::Disabled,
            Some(user) => LoginCheck::Ok(user),
        })
    })
    .await
    .map_err(|_| OAuthError::Unavailable)?
    .map_err(|e| {
        tracing::error!(error = %e, "user lookup failed");
        OAuthError::Unavailable
    })
}

/// A client asked for a grant it is not registered for: `unauthorized_client`,
/// recorded as a failed client login naming the grant.
async fn refuse_grant(
    data: &Data,
    meta: &RequestMeta,
    client: &Client,
    grant: GrantType,
) -> Result<HttpResponse, OAuthError> {
    let mut ev = meta.event(kinds::AUTH_LOGIN_FAILURE, Outcome::Failure);
    ev.reason = Some("unauthorized_client".into());
    ev.username = Some(client.client_id.clone());
    ev.detail = json!({ "credential": "client", "grant_type": grant.as_str(), "client_id": client.client_id });
    data.record(ev).await?;
    Err(OAuthError::UnauthorizedClient)
}

async fn password_grant(
    data: &Data,
    meta: &RequestMeta,
    form: &Form,
    client: Option<Client>,
) -> Result<HttpResponse, OAuthError> {
    if let Some(c) = client.as_ref().filter(|c| !c.allows(GrantType::Password)) {
        return refuse_grant(data, meta, c, GrantType::Password).await;
    }
    let username = form.require("username")?.to_string();
    let password = form.require("password")?.to_string();
    let client_id = client.as_ref().map(|c| c.client_id.clone());
    let check = check_login(data, meta.client_ip.clone(), &username, password).await?;

    let user = match check {
        LoginCheck::LockedOut(reason, lock) => {
            return refuse_locked_out(data, meta, &username, client_id.as_deref(), reason, lock)
                .await
        }
        LoginCheck::Ok(user) => user,
        failed => {
            let reason = match failed {
                LoginCheck::UnknownUser => "unknown_user",
                LoginCheck::Disabled => "account_disabled",
                _ => "bad_password",
            };
            let mut ev = meta.event(kinds::AUTH_LOGIN_FAILURE, Outcome::Failure);
            ev.reason = Some(reason.into());
            ev.username = Some(crate::request_meta::truncate(&username, 128));
            ev.detail = json!({ "grant_type": "password", "client_id": client_id });
            data.record(ev).await?;
            return Err(OAuthError::InvalidGrant);
        }
    };

    let scope = form.get("scope").map(str::to_string);
    let tokens = data.tokens.clone();
    let (u, cid, sc) = (user.clone(), client_id.clone(), scope.clone());
    let (access, refresh) = web::block(move || -> Result<_, String> {
        let refresh = tokens
            .issue_refresh(
                &u.subject,
                Some(&u.username),
                cid.as_deref(),
                sc.as_deref(),
                None,
            )
            .map_err(|e| e.to_string())?;
        let access = tokens
            .issue_access(&access_request(
                &u,
                cid,
                sc,
                Some(refresh.family_id.clone()),
            ))
            .map_err(|e| e.to_string())?;
        Ok((access, refresh))
    })
    .await
    .map_err(|_| OAuthError::Unavailable)?
    .map_err(|e| {
        tracing::error!(error = %e, "token issuance failed");
        OAuthError::Unavailable
    })?;

    let mut login = meta.event(kinds::AUTH_LOGIN_SUCCESS, Outcome::Success);
    login.subject = Some(user.subject.clone());
    login.username = Some(user.username.clone());
    login.detail = json!({ "grant_type": "password", "client_id": client_id });
    let mut issued = issued_event(
        meta,
        kinds::TOKEN_ISSUED,
        &access,
        &user.subject,
        Some(&user.username),
    );
    issued.detail = json!({
        "grant_type": "password",
        "client_id": client_id,
        "refresh_family": refresh.family_id,
        "refresh_fp": refresh.fingerprint,
        "expires_at": access.expires_at,
    });
    data.record_all(vec![login, issued]).await?;
    Ok(token_response(&access, Some(&refresh), scope.as_deref()))
}

fn access_request(
    user: &User,
    client_id: Option<String>,
    scope: Option<String>,
    session_id: Option<String>,
) -> AccessRequest {
    AccessRequest {
        subject: user.subject.clone(),
        username: Some(user.username.clone()),
        roles: vec![user.role.as_str().to_string()],
        client_id,
        scope,
        session_id,
        ttl: None,
        extra: serde_json::Map::new(),
    }
}

async fn refresh_grant(
    data: &Data,
    meta: &RequestMeta,
    form: &Form,
    client: Option<Client>,
) -> Result<HttpResponse, OAuthError> {
    if let Some(c) = client
        .as_ref()
        .filter(|c| !c.allows(GrantType::RefreshToken))
    {
        return refuse_grant(data, meta, c, GrantType::RefreshToken).await;
    }
    let presented = form.require("refresh_token")?.to_string();
    let fingerprint = token_core::fingerprint(&presented);
    let tokens = data.tokens.clone();
    let state = data.state.clone();
    let client_id = client.as_ref().map(|c| c.client_id.clone());
    let cid = client_id.clone();
    let outcome = web::block(move || {
        let rotated = tokens.rotate_refresh(&presented, cid.as_deref())?;
        let user = state
            .find_user_by_subject(&rotated.subject)
            .map_err(|e| RefreshError::Store(token_core::StoreFailure(e.to_string())))?;
        let access = match &user {
            Some(u) if !u.disabled => Some(
                tokens
                    .issue_access(&access_request(
                        u,
                        rotated.client_id.clone(),
                        rotated.scope.clone(),
                        Some(rotated.family_id.clone()),
                    ))
                    .map_err(|e| RefreshError::Store(token_core::StoreFailure(e.to_string())))?,
            ),
            _ => {
                tokens
                    .revoke_refresh(rotated.refresh.token.expose(), rotated.client_id.as_deref())
                    .map_err(RefreshError::Store)?;
                None
            }
        };
        Ok::<_, RefreshError>((rotated, user, access))
    })
    .await
    .map_err(|_| OAuthError::Unavailable)?;

    match outcome {
        Ok((rotated, Some(user), Some(access))) => {
            // A repeat within the grace is its own kind, so a detector or an analyst
            // can tell a double submit from a rotation and from a theft.
            let kind = if rotated.grace_repeat {
                kinds::TOKEN_REFRESH_GRACE
            } else {
                kinds::TOKEN_REFRESHED
            };
            let mut ev = issued_event(meta, kind, &access, &user.subject, Some(&user.username));
            ev.detail = json!({
                "grant_type": "refresh_token",
                "client_id": rotated.client_id,
                "refresh_family": rotated.family_id,
                "presented_refresh_fp": fingerprint,
                "refresh_fp": rotated.refresh.fingerprint,
                "expires_at": access.expires_at,
                "grace_repeat": rotated.grace_repeat,
            });
            data.record(ev).await?;
            Ok(token_response(
                &access,
                Some(&rotated.refresh),
                rotated.scope.as_deref(),
            ))
        }
        Ok((rotated, _, _)) => {
            let mut ev = meta.event(kinds::TOKEN_REJECTED, Outcome::Failure);
            ev.reason = Some("account_disabled".into());
            ev.subject = Some(rotated.subject);
            ev.token_fp = Some(fingerprint);
            ev.detail =
                json!({ "token_type": "refresh_token", "refresh_family": rotated.family_id });
            data.record(ev).await?;
            Err(OAuthError::InvalidGrant)
        }
        Err(RefreshError::Reused { family_id, subject }) => {
            let mut ev = meta.event(kinds::REFRESH_REUSE_DETECTED, Outcome::Failure);
            ev.reason = Some("refresh_reused".into());
            ev.subject = Some(subject);
            ev.token_fp = Some(fingerprint);
            ev.detail = json!({ "refresh_family": family_id, "family_revoked": true, "client_id": client_id });
            data.record(ev).await?;
            Err(OAuthError::InvalidGrant)
        }
        Err(RefreshError::Store(e)) => {
            tracing::error!(error = %e, "refresh-token store failed");
            Err(OAuthError::Unavailable)
        }
        Err(other) => {
            let mut ev = meta.event(kinds::TOKEN_REJECTED, Outcome::Failure);
            ev.reason = Some(format!("refresh_{}", other.as_str()));
            ev.token_fp = Some(fingerprint);
            ev.detail = json!({ "token_type": "refresh_token", "client_id": client_id });
            data.record(ev).await?;
            Err(OAuthError::InvalidGrant)
        }
    }
}

async fn client_credentials_grant(
    data: &Data,
    meta: &RequestMeta,
    form: &Form,
    client: Option<Client>,
) -> Result<HttpResponse, OAuthError> {
    let client = match client {
        Some(c) if c.allows(GrantType::ClientCredentials) => c,
        Some(c) => return refuse_grant(data, meta, &c, GrantType::ClientCredentials).await,
        None => return Err(OAuthError::InvalidClient { via_basic: false }),
    };
    let scope = form
        .get("scope")
        .map(str::to_string)
        .or(client.scope.clone());
    let req = AccessRequest {
        subject: client.client_id.clone(),
        username: None,
        roles: Vec::new(),
        client_id: Some(client.client_id.clone()),
        scope: scope.clone(),
        session_id: None,
        ttl: None,
        extra: serde_json::Map::new(),
    };
    let access = data.tokens.issue_access(&req).map_err(|e| {
        tracing::error!(error = %e, "token issuance failed");
        OAuthError::Unavailable
    })?;
    let mut ev = issued_event(meta, kinds::TOKEN_ISSUED, &access, &client.client_id, None);
    ev.detail = json!({ "grant_type": "client_credentials", "client_id": client.client_id, "expires_at": access.expires_at });
    data.record(ev).await?;
    Ok(token_response(&access, None, scope.as_deref()))
}

//! `/oauth/authorize` (RFC 6749 §4.1.1, RFC 7636): the login and consent page
//! of the authorization-code flow.
//!
//! The request is checked in a fixed order. An unknown client or a redirect URI
//! that is not registered for it, character for character, is answered on
//! tokenwatch's own error page and never redirected (RFC 6749 §4.1.2.1); every
//! later refusal goes back to that registered URI with `error` and `state`. PKCE
//! is required and only S256 is accepted. The page keeps no server state: its
//! form carries the request's parameters, checked again on submit, and a CSRF
//! token that must equal the value of an HttpOnly, SameSite=Strict cookie.
//! Passwords are checked as at the password grant: lockouts and throttles first,
//! then argon2id, and every failure is an `auth.login.failure` the detectors see.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use audit_store::{kinds, Outcome};
use serde_json::json;

use super::code::{valid_challenge, CodeGrant};
use super::{check_login, Form, LoginCheck};
use crate::app::Data;
use crate::passwords::constant_time_eq;
use crate::request_meta::{truncate, RequestMeta};
use crate::state::{Client, GrantType};

const CSRF_COOKIE: &str = "tw_authz_csrf";
const PATH: &str = "/oauth/authorize";
/// `state` is the client's own value, echoed back; a bound keeps pages small.
const MAX_STATE: usize = 1024;

#[derive(Template)]
#[template(path = "authorize.html")]
struct AuthorizePage<'a> {
    req: &'a AuthzRequest,
    csrf: &'a str,
    username: &'a str,
    error: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "authorize_error.html")]
struct AuthorizeErrorPage<'a> {
    status: u16,
    message: &'a str,
}

/// A checked authorization request.
pub(crate) struct AuthzRequest {
    client: Client,
    redirect_uri: String,
    state: Option<String>,
    code_challenge: String,
    scope: Option<String>,
}

/// Why a request is refused, and where the refusal is shown.
enum Refusal {
    /// On tokenwatch's page: there is no redirect URI to trust.
    Page {
        reason: &'static str,
        message: String,
        client_id: Option<String>,
    },
    /// At the client's registered redirect URI (RFC 6749 §4.1.2.1).
    Redirect {
        reason: &'static str,
        error: &'static str,
        description: String,
        client_id: String,
        redirect_uri: String,
        state: Option<String>,
    },
    Unavailable,
}

fn page_refusal(reason: &'static str, message: &str, client_id: Option<&str>) -> Refusal {
    Refusal::Page {
        reason,
        message: message.to_string(),
        client_id: client_id.map(|c| truncate(c, 128)),
    }
}

/// Checks the request's parameters, in the order RFC 6749 §4.1.2.1 requires.
async fn check_request(data: &Data, form: &Form) -> Result<AuthzRequest, Refusal> {
    let Some(client_id) = form.get("client_id") else {
        return Err(page_refusal(
            "missing_client_id",
            "The request names no client (client_id is missing).",
            None,
        ));
    };
    let state_db = data.state.clone();
    let id = client_id.to_string();
    let client = web::block(move || state_db.find_client(&id))
        .await
        .map_err(|_| Refusal::Unavailable)?
        .map_err(|e| {
            tracing::error!(error = %e, "client lookup failed");
            Refusal::Unavailable
        })?;
    let Some(client) = client else {
        return Err(page_refusal(
            "unknown_client",
            "The application that sent you here is not registered with this server.",
            Some(client_id),
        ));
    };
    let redirect_uri = form.get("redirect_uri").unwrap_or_default();
    if !client.has_redirect_uri(redirect_uri) {
        return Err(page_refusal(
            "redirect_uri_mismatch",
            "The application asked to send you to an address it has not registered, \
             so you are not sent anywhere.",
            Some(client_id),
        ));
    }
    let state = form.get("state").map(str::to_string);
    let back = |reason, error, description: &str| Refusal::Redirect {
        reason,
        error,
        description: description.to_string(),
        client_id: client.client_id.clone(),
        redirect_uri: redirect_uri.to_string(),
        state: state.clone().filter(|s| s.len() <= MAX_STATE),
    };
    if state.as_ref().is_some_and(|s| s.len() > MAX_STATE) {
        return Err(back(
            "state_too_long",
            "invalid_request",
            "state is longer than 1024 bytes",
        ));
    }
    if !client.allows(GrantType::AuthorizationCode) {
        return Err(back(
            "unauthorized_client",
            "unauthorized_client",
            "this client may not use the authorization code grant",
        ));
    }
    match form.get("response_type") {
        Some("code") => {}
        None => {
            return Err(back(
                "missing_response_type",
                "invalid_request",
                "response_type is required",
            ))
        }
        Some(_) => {
            return Err(back(
                "unsupported_response_type",
                "unsupported_response_type",
                "only response_type=code is supported",
            ))
        }
    }
    let challenge = match (
        form.get("code_challenge"),
        form.get("code_challenge_method"),
    ) {
        (None, _) => {
            return Err(back(
                "missing_code_challenge",
                "invalid_request",
                "code_challenge is required (PKCE, RFC 7636)",
            ))
        }
        (Some(_), Some("S256")) => form.get("code_challenge").unwrap_or_default(),
        // RFC 7636 §4.3: no method means plain, which tokenwatch does not accept.
        (Some(_), None | Some("plain")) => {
            return Err(back(
                "pkce_plain",
                "invalid_request",
                "code_challenge_method must be S256; plain is not supported",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(back(
                "pkce_method_unsupported",
                "invalid_request",
                "code_challenge_method must be S256",
            ))
        }
    };
    if !valid_challenge(challenge) {
        return Err(back(
            "invalid_code_challenge",
            "invalid_request",
            "code_challenge must be 43 base64url characters (S256)",
        ));
    }
    let scope = match allowed_scope(&client, form.get("scope")) {
        Ok(s) => s,
        Err(()) => {
            return Err(back(
                "invalid_scope",
                "invalid_scope",
                "the requested scope is not registered for this client",
            ))
        }
    };
    Ok(AuthzRequest {
        redirect_uri: redirect_uri.to_string(),
        state: state.clone(),
        code_challenge: challenge.to_string(),
        scope,
        client,
    })
}

/// The scope granted: what was asked, when every part of it is registered for
/// the client; the client's registered scope when nothing was asked.
fn allowed_scope(client: &Client, asked: Option<&str>) -> Result<Option<String>, ()> {
    let registered: Vec<&str> = client
        .scope
        .as_deref()
        .map(|s| s.split_ascii_whitespace().collect())
        .unwrap_or_default();
    match asked {
        None => Ok(client.scope.clone()),
        Some(a) if a.split_ascii_whitespace().all(|s| registered.contains(&s)) => Ok(Some(
            a.split_ascii_whitespace().collect::<Vec<_>>().join(" "),
        )),
        Some(_) => Err(()),
    }
}

/// `GET /oauth/authorize`: the login and consent page, or the refusal.
pub async fn show(req: HttpRequest, data: Data) -> HttpResponse {
    let meta = RequestMeta::from_request(&req);
    let form = match Form::parse(req.query_string().as_bytes()) {
        Ok(f) => f,
        Err(_) => {
            let r = page_refusal(
                "malformed_request",
                "The request's parameters are malformed or repeated.",
                None,
            );
            return refuse(&data, &meta, r).await;
        }
    };
    match check_request(&data, &form).await {
        Ok(r) => page(&req, &r, "", None, StatusCode::OK),
        Err(refusal) => refuse(&data, &meta, refusal).await,
    }
}

/// `POST /oauth/authorize`: the user's answer, with credentials when it is "allow".
pub async fn submit(req: HttpRequest, body: web::Bytes, data: Data) -> HttpResponse {
    let meta = RequestMeta::from_request(&req);
    let Ok(form) = Form::parse(&body) else {
        let r = page_refusal("malformed_request", "The form was malformed.", None);
        return refuse(&data, &meta, r).await;
    };
    let cookie = req.cookie(CSRF_COOKIE).map(|c| c.value().to_string());
    let presented = form.get("csrf").unwrap_or_default();
    let csrf_ok = !presented.is_empty()
        && cookie.is_some_and(|c| constant_time_eq(c.as_bytes(), presented.as_bytes()));
    if !csrf_ok {
        let r = page_refusal(
            "csrf",
            "This form has expired or did not come from this server. Go back to the application and start again.",
            form.get("client_id"),
        );
        return refuse(&data, &meta, r).await;
    }
    let request = match check_request(&data, &form).await {
        Ok(r) => r,
        Err(refusal) => return refuse(&data, &meta, refusal).await,
    };
    if form.get("decision") != Some("allow") {
        let mut ev = meta.event(kinds::AUTHORIZE_DENIED, Outcome::Failure);
        ev.reason = Some("access_denied".into());
        ev.detail =
            json!({ "client_id": request.client.client_id, "redirect_uri": request.redirect_uri });
        if data.record(ev).await.is_err() {
            return unavailable();
        }
        return redirect_back(
            &data,
            &request,
            &[
                ("error", "access_denied"),
                ("error_description", "the user declined"),
            ],
        );
    }
    login_and_approve(&req, &data, &meta, &form, &request).await
}

async fn login_and_approve(
    req: &HttpRequest,
    data: &Data,
    meta: &RequestMeta,
    form: &Form,
    request: &AuthzRequest,
) -> HttpResponse {
    let username = truncate(form.get("username").unwrap_or_default().trim(), 256);
    let password = form.get("password").unwrap_or_default().to_string();
    let client_id = request.client.client_id.as_str();
    if username.is_empty() || password.is_empty() {
        return page(
            req,
            request,
            &username,
            Some("Enter your username and password."),
            StatusCode::BAD_REQUEST,
        );
    }
    let check = match check_login(data, meta.client_ip.clone(), &username, password).await {
        Ok(c) => c,
        Err(_) => return unavailable(),
    };
    let (reason, throttled) = match &check {
        LoginCheck::Ok(_) => (None, None),
        LoginCheck::LockedOut(reason, lock) => (
            Some(*reason),
            (*reason == "ip_throttled").then(|| (lock.until - crate::state::now_secs()).max(1)),
        ),
        LoginCheck::UnknownUser => (Some("unknown_user"), None),
        LoginCheck::BadPassword => (Some("bad_password"), None),
        LoginCheck::Disabled => (Some("account_disabled"), None),
    };
    if let Some(reason) = reason {
        let mut ev = meta.event(kinds::AUTH_LOGIN_FAILURE, Outcome::Failure);
        ev.reason = Some(reason.into());
        ev.username = Some(truncate(&username, 128));
        ev.detail = json!({ "grant_type": "authorization_code", "client_id": client_id });
        if let LoginCheck::LockedOut(_, lock) = &check {
            ev.detail["locked_until"] = json!(lock.until);
        }
        if data.record(ev).await.is_err() {
            return unavailable();
        }
        return match throttled {
            Some(secs) => {
                let mut resp = page(
                    req,
                    request,
                    &username,
                    Some(&format!(
                        "Too many failed logins from this address. Try again in {secs} seconds."
                    )),
                    StatusCode::TOO_MANY_REQUESTS,
                );
                resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
                resp
            }
            // A locked account reads as a wrong password: the lock tells an attacker nothing.
            None => page(
                req,
                request,
                &username,
                Some("Wrong username or password."),
                StatusCode::UNAUTHORIZED,
            ),
        };
    }
    let LoginCheck::Ok(user) = check else {
        return unavailable();
    };
    approve(data, meta, request, user).await
}

/// Issues the code, records the login and the approval, and sends the browser back.
async fn approve(
    data: &Data,
    meta: &RequestMeta,
    request: &AuthzRequest,
    user: crate::state::User,
) -> HttpResponse {
    let client_id = &request.client.client_id;
    let Some(code) = data.codes.issue(CodeGrant {
        client_id: client_id.clone(),
        redirect_uri: request.redirect_uri.clone(),
        code_challenge: request.code_challenge.clone(),
        subject: user.subject.clone(),
        username: user.username.clone(),
        scope: request.scope.clone(),
    }) else {
        tracing::error!("too many authorization codes in flight; refusing a new one");
        return unavailable();
    };
    let mut login = meta.event(kinds::AUTH_LOGIN_SUCCESS, Outcome::Success);
    login.subject = Some(user.subject.clone());
    login.username = Some(user.username.clone());
    login.detail = json!({ "grant_type": "authorization_code", "client_id": client_id });
    let mut approved = meta.event(kinds::AUTHORIZE_APPROVED, Outcome::Success);
    approved.subject = Some(user.subject.clone());
    approved.username = Some(user.username.clone());
    approved.token_fp = Some(token_core::fingerprint(&code));
    approved.detail = json!({
        "client_id": client_id,
        "redirect_uri": request.redirect_uri,
        "scope": request.scope,
        "code_expires_in": super::code::CODE_TTL_SECS,
    });
    if data.record_all(vec![login, approved]).await.is_err() {
        data.codes.forget(&code);
        return unavailable();
    }
    redirect_back(data, request, &[("code", &code)])
}

/// Records a refusal and answers it: on tokenwatch's page, or at the client.
async fn refuse(data: &Data, meta: &RequestMeta, refusal: Refusal) -> HttpResponse {
    let (reason, client_id, detail) = match &refusal {
        Refusal::Unavailable => return unavailable(),
        Refusal::Page {
            reason, client_id, ..
        } => (*reason, client_id.clone(), json!({ "shown": "error page" })),
        Refusal::Redirect {
            reason,
            client_id,
            redirect_uri,
            error,
            ..
        } => (
            *reason,
            Some(client_id.clone()),
            json!({ "redirect_uri": redirect_uri, "error": error }),
        ),
    };
    let mut ev = meta.event(kinds::AUTHORIZE_REFUSED, Outcome::Failure);
    ev.reason = Some(reason.into());
    ev.detail = detail;
    ev.detail["client_id"] = json!(client_id);
    if data.record(ev).await.is_err() {
        return unavailable();
    }
    match refusal {
        Refusal::Page {
            reason, message, ..
        } => {
            let status = if reason == "csrf" {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::BAD_REQUEST
            };
            error_page(status, &message)
        }
        Refusal::Redirect {
            error,
            description,
            redirect_uri,
            state,
            ..
        } => {
            let mut pairs = vec![
                ("error", error),
                ("error_description", description.as_str()),
            ];
            if let Some(s) = &state {
                pairs.push(("state", s.as_str()));
            }
            let iss = data.settings.issuer.as_str();
            pairs.push(("iss", iss));
            see_other(&with_query(&redirect_uri, &pairs))
        }
        Refusal::Unavailable => unavailable(),
    }
}

/// Back to the request's redirect URI with `pairs`, its `state` and our `iss` (RFC 9207).
fn redirect_back(data: &Data, request: &AuthzRequest, pairs: &[(&str, &str)]) -> HttpResponse {
    let mut all = pairs.to_vec();
    if let Some(s) = &request.state {
        all.push(("state", s.as_str()));
    }
    all.push(("iss", data.settings.issuer.as_str()));
    see_other(&with_query(&request.redirect_uri, &all))
}

fn with_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    match url::Url::parse(uri) {
        Ok(mut url) => {
            url.query_pairs_mut().extend_pairs(pairs);
            url.into()
        }
        // Registered URIs were parsed at registration; this is not reached.
        Err(_) => uri.to_string(),
    }
}

fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .finish()
}

/// The login and consent page, with a CSRF cookie (reused when the browser has
/// one, so two tabs can both finish).
fn page(
    req: &HttpRequest,
    r: &AuthzRequest,
    username: &str,
    error: Option<&str>,
    status: StatusCode,
) -> HttpResponse {
    let csrf = req
        .cookie(CSRF_COOKIE)
        .map(|c| c.value().to_string())
        .filter(|v| {
            v.len() >= 32
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .unwrap_or_else(|| crate::random_token(32));
    let body = AuthorizePage {
        req: r,
        csrf: &csrf,
        username,
        error,
    }
    .render()
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "authorize page template failed");
        String::new()
    });
    let cookie = Cookie::build(CSRF_COOKIE, csrf.clone())
        .path(PATH)
        .http_only(true)
        .secure(req.connection_info().scheme() == "https")
        .same_site(SameSite::Strict)
        .finish();
    let mut resp = html(status, body, &form_action(&r.redirect_uri));
    let _ = resp.add_cookie(&cookie);
    resp
}

/// The page's CSP: nothing but our stylesheet, and the form may go only here and,
/// through the redirect that answers it, to the registered redirect URI's origin.
fn form_action(redirect_uri: &str) -> String {
    let target = url::Url::parse(redirect_uri)
        .ok()
        .map(|u| match u.origin() {
            url::Origin::Tuple(..) => u.origin().ascii_serialization(),
            url::Origin::Opaque(_) => format!("{}:", u.scheme()),
        });
    format!("'self' {}", target.unwrap_or_default())
}

fn html(status: StatusCode, body: String, form_action: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            format!(
                "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; \
                 form-action {form_action}; frame-ancestors 'none'"
            ),
        ))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .content_type("text/html; charset=utf-8")
        .body(body)
}

fn error_page(status: StatusCode, message: &str) -> HttpResponse {
    let body = AuthorizeErrorPage {
        status: status.as_u16(),
        message,
    }
    .render()
    .unwrap_or_else(|_| message.to_string());
    html(status, body, "'none'")
}

fn unavailable() -> HttpResponse {
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "The server cannot record this sign-in right now, so it was not done. Try again later.",
    )
}

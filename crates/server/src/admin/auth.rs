//! Console login and logout.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use audit_store::{kinds, Outcome};
use serde::Deserialize;
use serde_json::json;

use super::session::{self, expired_cookie, is_https, Console, LOGIN_CSRF_COOKIE};
use super::{admin_event, html, record_action, AdminError, CsrfForm};
use crate::app::Data;
use crate::passwords;
use crate::request_meta::{truncate, RequestMeta};
use crate::state::Role;

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub csrf: String,
    pub error: Option<String>,
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    csrf: String,
}

/// The login form. A login CSRF token (double-submit: cookie and form field)
/// stops another site from logging a browser into an account of its choosing.
pub async fn login_form(req: HttpRequest, data: Data) -> Result<HttpResponse, AdminError> {
    if let Some(c) = req.cookie(session::SESSION_COOKIE) {
        if data.admin.session(c.value()).is_some() {
            return Ok(redirect("/admin/dashboard"));
        }
    }
    login_page(&req, None, actix_web::http::StatusCode::OK)
}

fn login_page(
    req: &HttpRequest,
    error: Option<String>,
    status: actix_web::http::StatusCode,
) -> Result<HttpResponse, AdminError> {
    let token = crate::random_token(24);
    let body = LoginPage {
        csrf: token.clone(),
        error,
    }
    .render()?;
    let cookie = actix_web::cookie::Cookie::build(LOGIN_CSRF_COOKIE, token)
        .path("/admin")
        .http_only(true)
        .secure(is_https(req))
        .same_site(actix_web::cookie::SameSite::Strict)
        .finish();
    let mut resp = html(body);
    *resp.status_mut() = status;
    resp.add_cookie(&cookie)
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    Ok(resp)
}

pub async fn login(
    req: HttpRequest,
    data: Data,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, AdminError> {
    let form = form.into_inner();
    let meta = RequestMeta::from_request(&req);
    let username = truncate(form.username.trim(), 256);
    let cookie_csrf = req
        .cookie(LOGIN_CSRF_COOKIE)
        .map(|c| c.value().to_owned())
        .unwrap_or_default();
    if cookie_csrf.is_empty()
        || !passwords::constant_time_eq(cookie_csrf.as_bytes(), form.csrf.as_bytes())
    {
        let ev =
            admin_event(&meta, kinds::ADMIN_LOGIN, Outcome::Failure, &username).with_reason("csrf");
        data.record(ev).await?;
        return Err(AdminError::Csrf);
    }
    let ip = meta.client_ip.clone().unwrap_or_default();
    let keys = [format!("user:{username}"), format!("ip:{ip}")];
    if let Some(left) = data.admin.locked_for(&keys) {
        let ev = admin_event(&meta, kinds::ADMIN_LOGIN, Outcome::Failure, &username)
            .with_reason("locked_out")
            .with_detail(json!({ "retry_after_secs": left }));
        data.record(ev).await?;
        return login_page(
            &req,
            Some(format!(
                "Too many failed logins. Try again in {left} seconds."
            )),
            actix_web::http::StatusCode::TOO_MANY_REQUESTS,
        );
    }

    // argon2id is deliberately slow: off the async workers.
    let state = data.state.clone();
    let name = username.clone();
    let password = form.password;
    let found = web::block(move || -> Result<Option<Role>, AdminError> {
        match state.find_user(&name)? {
            Some(u) if passwords::verify(&password, &u.password_hash) && !u.disabled => {
                Ok(Some(u.role))
            }
            Some(_) => Ok(None),
            None => {
                passwords::verify_against_dummy(&password);
                Ok(None)
            }
        }
    })
    .await??;

    let reason = match found {
        Some(Role::Admin | Role::Analyst) => None,
        Some(Role::User) => Some("not_permitted"),
        None => Some("bad_credentials"),
    };
    if let Some(reason) = reason {
        data.admin.login_failed(&keys);
        let ev =
            admin_event(&meta, kinds::ADMIN_LOGIN, Outcome::Failure, &username).with_reason(reason);
        data.record(ev).await?;
        return login_page(
            &req,
            Some("Wrong username or password, or no console access.".into()),
            actix_web::http::StatusCode::UNAUTHORIZED,
        );
    }
    let role = found.unwrap_or(Role::Analyst);
    data.admin.login_succeeded(&keys[0]);
    let (id, _) = data.admin.create_session(&username, role);
    let ev = admin_event(&meta, kinds::ADMIN_LOGIN, Outcome::Success, &username)
        .with_detail(json!({ "role": role.as_str() }));
    if let Err(e) = data.record(ev).await {
        data.admin.end_session(&id);
        return Err(e.into());
    }
    let mut resp = redirect("/admin/dashboard");
    resp.add_cookie(&session::session_cookie(&id, is_https(&req)))
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    resp.add_removal_cookie(&expired_cookie(LOGIN_CSRF_COOKIE))
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    Ok(resp)
}

pub async fn logout(
    req: HttpRequest,
    data: Data,
    who: Console,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, AdminError> {
    who.check_csrf(&form.csrf)?;
    data.admin.end_session(&who.session_id);
    record_action(&data, &req, &who, json!({ "action": "logout" })).await?;
    let mut resp = redirect("/admin/login");
    resp.add_removal_cookie(&expired_cookie(session::SESSION_COOKIE))
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    Ok(resp)
}

pub fn redirect(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to.to_owned()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

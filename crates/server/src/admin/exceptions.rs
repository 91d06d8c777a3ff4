//! Analysts' exceptions (alerts a detector should not raise for a user or an
//! IP range) and the OAuth lockouts in force, with the actions on them.
//!
//! What an analyst may silence is bounded (one detector, a subject or a network
//! no wider than a /24 or /56, at most 90 days: see [`Authority`]); anything
//! wider is the admin's. Every add, edit and early expiry is an `admin.action`
//! event, a refused one included; a lapse is an `exception.expired` event.

use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde::Deserialize;
use serde_json::json;

use super::auth::redirect;
use super::pages::{check_csrf, PageCtx};
use super::{
    admin_event, authorize_admin_action, html, record_action, show_secs, AdminError, Console,
    CsrfForm,
};
use crate::app::Data;
use crate::request_meta::{truncate, RequestMeta};
use crate::response::{
    lifetime_from_hours, vet_exception_change, vet_new_exception, Authority, ExceptionRefused,
    NewException,
};
use crate::state::now_secs;
use audit_store::{kinds, Outcome};

pub struct ExceptionRow {
    id: i64,
    detector: String,
    user: String,
    ip: String,
    reason: String,
    created_by: String,
    created_at: String,
    expires_at: String,
    state: &'static str,
}

pub struct LockoutRow {
    kind: String,
    key: String,
    until: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "exceptions.html")]
pub struct ExceptionsPage {
    ctx: PageCtx,
    rows: Vec<ExceptionRow>,
    lockouts: Vec<LockoutRow>,
    detector: String,
    user: String,
    ip: String,
    alert: String,
    detectors: Vec<String>,
}

#[derive(Deserialize, Default)]
pub struct Prefill {
    #[serde(default)]
    detector: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    alert: Option<String>,
}

pub async fn list(
    data: Data,
    who: Console,
    q: web::Query<Prefill>,
) -> Result<HttpResponse, AdminError> {
    let state = data.state.clone();
    let (exceptions, lockouts) =
        web::block(move || Ok::<_, AdminError>((state.list_exceptions()?, state.list_lockouts()?)))
            .await??;
    let now = now_secs();
    let secs = show_secs;
    let rows = exceptions
        .into_iter()
        .map(|e| ExceptionRow {
            state: if e.revoked {
                "revoked"
            } else if e.is_active(now) {
                "active"
            } else {
                "expired"
            },
            id: e.id,
            detector: e.detector,
            user: e.user.unwrap_or_default(),
            ip: e.ip.unwrap_or_default(),
            reason: e.reason,
            created_by: e.created_by,
            created_at: secs(e.created_at),
            expires_at: e.expires_at.map(secs).unwrap_or_else(|| "never".into()),
        })
        .collect();
    let lockouts = lockouts
        .into_iter()
        .map(|l| LockoutRow {
            until: secs(l.until),
            kind: l.kind,
            key: l.key,
            reason: l.reason,
        })
        .collect();
    let mut detectors: Vec<String> = data
        .detection
        .as_ref()
        .map(|d| d.plugins().into_iter().map(|p| p.name).collect())
        .unwrap_or_default();
    detectors.sort();
    let v = |s: &Option<String>| s.clone().unwrap_or_default();
    let page = ExceptionsPage {
        ctx: PageCtx::new(&who, "exceptions"),
        rows,
        lockouts,
        detector: q.detector.clone().unwrap_or_else(|| "*".into()),
        user: v(&q.user),
        ip: v(&q.ip),
        alert: v(&q.alert),
        detectors,
    };
    Ok(html(page.render()?))
}

#[derive(Deserialize)]
pub struct AddForm {
    #[serde(default)]
    csrf: String,
    detector: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    ip: String,
    reason: String,
    /// Lifetime in hours; empty or 0 = never expires (admins only).
    #[serde(default)]
    hours: String,
    #[serde(default)]
    alert: String,
}

fn authority(who: &Console) -> Authority {
    if who.is_admin() {
        Authority::Admin
    } else {
        Authority::Analyst
    }
}

/// Records a refused exception change as a failed `admin.action` naming why, and
/// turns the refusal into the console's answer (400, or 403 for admin-only).
async fn refuse(
    data: &Data,
    req: &HttpRequest,
    who: &Console,
    mut detail: serde_json::Value,
    refused: ExceptionRefused,
) -> AdminError {
    let (reason, err) = match refused {
        ExceptionRefused::Invalid(m) => ("invalid_input", AdminError::BadRequest(m)),
        ExceptionRefused::NeedsAdmin(m) => ("forbidden", AdminError::NeedsAdmin(m)),
    };
    detail["refused"] = json!(err.to_string());
    let meta = RequestMeta::from_request(req);
    let ev = admin_event(&meta, kinds::ADMIN_ACTION, Outcome::Failure, who.username())
        .with_reason(reason)
        .with_detail(detail);
    match data.record(ev).await {
        Ok(_) => err,
        Err(e) => e.into(),
    }
}

pub async fn add(
    req: HttpRequest,
    data: Data,
    who: Console,
    form: web::Form<AddForm>,
) -> Result<HttpResponse, AdminError> {
    check_csrf(&data, &req, &who, &form.csrf).await?;
    let opt = |s: &str| {
        let s = s.trim();
        (!s.is_empty()).then(|| truncate(s, 256))
    };
    let mut detail = json!({
        "action": "exception.add", "detector": truncate(form.detector.trim(), 128),
        "user": opt(&form.user), "ip": opt(&form.ip), "reason": truncate(form.reason.trim(), 2000),
        "hours": truncate(form.hours.trim(), 32), "alert": opt(&form.alert),
    });
    let now = now_secs();
    let lifetime = match lifetime_from_hours("hours", &form.hours) {
        Ok(l) => l,
        Err(e) => return Err(refuse(&data, &req, &who, detail, e).await),
    };
    let new = NewException {
        detector: truncate(form.detector.trim(), 128),
        user: opt(&form.user),
        ip: opt(&form.ip),
        reason: truncate(form.reason.trim(), 2000),
        created_by: who.username().to_owned(),
        expires_at: lifetime.map(|secs| now + secs),
    };
    let by = authority(&who);
    if let Err(e) = vet_new_exception(&new, by, now) {
        return Err(refuse(&data, &req, &who, detail, e).await);
    }
    detail["expires_at"] = json!(new.expires_at);
    record_action(&data, &req, &who, detail).await?;
    let state = data.state.clone();
    web::block(move || state.add_exception(&new, by))
        .await?
        .map_err(|e| AdminError::BadRequest(e.to_string()))?;
    Ok(redirect("/admin/exceptions"))
}

pub async fn expire(
    req: HttpRequest,
    data: Data,
    who: Console,
    id: web::Path<i64>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, AdminError> {
    check_csrf(&data, &req, &who, &form.csrf).await?;
    let id = id.into_inner();
    record_action(
        &data,
        &req,
        &who,
        json!({ "action": "exception.expire", "exception_id": id }),
    )
    .await?;
    let state = data.state.clone();
    web::block(move || state.revoke_exception(id)).await??;
    Ok(redirect("/admin/exceptions"))
}

#[derive(Deserialize)]
pub struct EditForm {
    #[serde(default)]
    csrf: String,
    reason: String,
    /// New lifetime in hours from now; empty or 0 = never expires (admins only).
    #[serde(default)]
    hours: String,
}

pub async fn edit(
    req: HttpRequest,
    data: Data,
    who: Console,
    id: web::Path<i64>,
    form: web::Form<EditForm>,
) -> Result<HttpResponse, AdminError> {
    check_csrf(&data, &req, &who, &form.csrf).await?;
    let id = id.into_inner();
    let reason = truncate(form.reason.trim(), 2000);
    let mut detail = json!({
        "action": "exception.edit", "exception_id": id, "reason": reason,
        "hours": truncate(form.hours.trim(), 32),
    });
    let now = now_secs();
    let lifetime = match lifetime_from_hours("hours", &form.hours) {
        Ok(l) => l,
        Err(e) => return Err(refuse(&data, &req, &who, detail, e).await),
    };
    let expires_at = lifetime.map(|secs| now + secs);
    let state = data.state.clone();
    let current = web::block(move || state.get_exception(id))
        .await??
        .filter(|e| e.is_active(now))
        .ok_or_else(|| {
            AdminError::BadRequest(format!(
                "exception #{id} is no longer in force; add a new one"
            ))
        })?;
    let by = authority(&who);
    if let Err(e) = vet_exception_change(&current, &reason, expires_at, by, now) {
        return Err(refuse(&data, &req, &who, detail, e).await);
    }
    detail["expires_at"] = json!(expires_at);
    record_action(&data, &req, &who, detail).await?;
    let state = data.state.clone();
    let changed = web::block(move || state.update_exception(id, &reason, expires_at, by))
        .await?
        .map_err(|e| AdminError::BadRequest(e.to_string()))?;
    if !changed {
        return Err(AdminError::BadRequest(format!(
            "exception #{id} is no longer in force; add a new one"
        )));
    }
    Ok(redirect("/admin/exceptions"))
}

#[derive(Deserialize)]
pub struct LiftForm {
    #[serde(default)]
    csrf: String,
    kind: String,
    key: String,
}

/// Lifting an OAuth lockout is admin only.
pub async fn lift(
    req: HttpRequest,
    data: Data,
    who: Console,
    form: web::Form<LiftForm>,
) -> Result<HttpResponse, AdminError> {
    let form = form.into_inner();
    let detail = [("kind", json!(form.kind)), ("key", json!(form.key))];
    authorize_admin_action(&data, &req, &who, &form.csrf, "lockout.lift", &detail).await?;
    let state = data.state.clone();
    web::block(move || state.lift_lockout(&form.kind, &form.key)).await??;
    Ok(redirect("/admin/exceptions"))
}

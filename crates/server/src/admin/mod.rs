//! The admin web UI under `/admin/`: server-rendered pages (askama templates
//! from `web/templates`, HTML-escaped by default), a little JavaScript and the
//! vendored Chart.js from `web/static` and `web/vendor`, all embedded in the
//! binary.
//!
//! Security of the console itself: its own Content-Security-Policy
//! (`default-src 'self'`, no inline script or style, `frame-ancestors 'none'`),
//! a session cookie that is HttpOnly and SameSite=Strict, a CSRF token on every
//! POST, role checks here on the server (analysts cannot reload or disable
//! plugins), a back-off on failed logins, and an audit event for every login
//! (`admin.login`), change (`admin.action`) and report (`admin.export`).

mod assets;
mod auth;
mod exceptions;
pub mod pages;
pub mod reports;
pub mod session;
mod sources;

use actix_web::http::{header, StatusCode};
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, HttpResponse, ResponseError};
use audit_store::{NewEvent, Outcome};

use crate::request_meta::RequestMeta;
pub use session::{AdminUi, Console};

/// The console's Content-Security-Policy: scripts, styles, images and fetches
/// from this origin only; nothing inline; never framed.
pub const CSP: &str =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Form bodies of the console are small.
const FORM_LIMIT: usize = 16 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin")
            .wrap(
                DefaultHeaders::new()
                    .add((header::CONTENT_SECURITY_POLICY, CSP))
                    .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                    .add((header::X_FRAME_OPTIONS, "DENY"))
                    .add((header::REFERRER_POLICY, "no-referrer"))
                    .add(("Cross-Origin-Opener-Policy", "same-origin"))
                    .add((
                        "Permissions-Policy",
                        "camera=(), microphone=(), geolocation=()",
                    )),
            )
            .app_data(web::FormConfig::default().limit(FORM_LIMIT))
            .route("", web::get().to(pages::root))
            .route("/", web::get().to(pages::root))
            .route("/login", web::get().to(auth::login_form))
            .route("/login", web::post().to(auth::login))
            .route("/logout", web::post().to(auth::logout))
            .route("/dashboard", web::get().to(pages::dashboard))
            .route("/api/dashboard", web::get().to(pages::dashboard_data))
            .route("/events", web::get().to(pages::events))
            .route("/events/{id}", web::get().to(pages::event))
            .route("/alerts", web::get().to(pages::alerts))
            .route("/alerts/{id}", web::get().to(pages::alert))
            .route("/alerts/{id}/status", web::post().to(pages::alert_status))
            .route("/plugins", web::get().to(pages::plugins))
            .route(
                "/plugins/{name}/{action}",
                web::post().to(pages::plugin_action),
            )
            .route("/exceptions", web::get().to(exceptions::list))
            .route("/exceptions/new", web::get().to(exceptions::list))
            .route("/exceptions", web::post().to(exceptions::add))
            .route(
                "/exceptions/{id}/expire",
                web::post().to(exceptions::expire),
            )
            .route("/exceptions/{id}/edit", web::post().to(exceptions::edit))
            .route("/lockouts/lift", web::post().to(exceptions::lift))
            .route("/sources", web::get().to(sources::list))
            .route("/sources", web::post().to(sources::add))
            .route("/sources/revoke", web::post().to(sources::revoke))
            .route(
                "/sources/{name}/revoke",
                web::post().to(sources::revoke_by_path),
            )
            .route("/reports", web::get().to(reports::form))
            .route("/reports/download", web::get().to(reports::download))
            .route("/reports/manifest", web::get().to(reports::manifest))
            .route("/static/{file:.*}", web::get().to(assets::serve)),
    );
}

/// Everything that can go wrong in a console request. Bodies never carry
/// internal error text; that goes to the log.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("login required")]
    LoginRequired,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// Allowed to an admin, not to this user; the message says what an analyst may do.
    #[error("forbidden: {0}")]
    NeedsAdmin(String),
    #[error("missing or wrong CSRF token")]
    Csrf,
    #[error("not found")]
    NotFound,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("too many failed logins; try again in {0} s")]
    LockedOut(i64),
    #[error("audit store unavailable")]
    AuditUnavailable,
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::app::AuditUnavailable> for AdminError {
    fn from(_: crate::app::AuditUnavailable) -> Self {
        AdminError::AuditUnavailable
    }
}

impl From<audit_store::StoreError> for AdminError {
    fn from(e: audit_store::StoreError) -> Self {
        match e {
            audit_store::StoreError::InvalidArgument(m) => AdminError::BadRequest(m),
            other => AdminError::Internal(other.to_string()),
        }
    }
}

impl From<crate::state::StateError> for AdminError {
    fn from(e: crate::state::StateError) -> Self {
        AdminError::Internal(e.to_string())
    }
}

impl From<askama::Error> for AdminError {
    fn from(e: askama::Error) -> Self {
        AdminError::Internal(format!("template: {e}"))
    }
}

impl From<actix_web::error::BlockingError> for AdminError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        AdminError::Internal(e.to_string())
    }
}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        match self {
            AdminError::LoginRequired => StatusCode::SEE_OTHER,
            AdminError::Forbidden(_) | AdminError::NeedsAdmin(_) | AdminError::Csrf => {
                StatusCode::FORBIDDEN
            }
            AdminError::NotFound => StatusCode::NOT_FOUND,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::LockedOut(_) => StatusCode::TOO_MANY_REQUESTS,
            AdminError::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let AdminError::LoginRequired = self {
            return HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/admin/login"))
                .finish();
        }
        let message = match self {
            AdminError::Internal(m) => {
                tracing::error!(error = %m, "admin UI request failed");
                "Internal error; see the server log.".to_owned()
            }
            AdminError::AuditUnavailable => {
                "The audit store cannot record this action, so it was not done.".to_owned()
            }
            other => other.to_string(),
        };
        let page = pages::ErrorPage {
            status: self.status_code().as_u16(),
            message,
        };
        let body = askama::Template::render(&page).unwrap_or_else(|_| "error".into());
        HttpResponse::build(self.status_code())
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .content_type("text/html; charset=utf-8")
            .body(body)
    }
}

/// An HTML page response; console pages are never cached.
pub fn html(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .content_type("text/html; charset=utf-8")
        .body(body)
}

/// An audit event done by console user `who` in request `meta`.
pub fn admin_event(meta: &RequestMeta, kind: &str, outcome: Outcome, who: &str) -> NewEvent {
    let mut ev = meta.event(kind, outcome);
    ev.username = Some(who.to_owned());
    ev
}

/// A console POST whose only field is the CSRF token.
#[derive(serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// Records a console action by `who` (`detail` names it under `"action"`) as an
/// `admin.action` success. Called before the action: one that cannot be audited is
/// not done.
pub async fn record_action(
    data: &crate::app::Data,
    req: &actix_web::HttpRequest,
    who: &Console,
    detail: serde_json::Value,
) -> Result<(), AdminError> {
    let meta = RequestMeta::from_request(req);
    let ev = admin_event(
        &meta,
        audit_store::kinds::ADMIN_ACTION,
        Outcome::Success,
        who.username(),
    )
    .with_detail(detail);
    data.record(ev).await?;
    Ok(())
}

/// The gate of every admin-only console action, in the order the console relies on:
/// the form's CSRF token, then the admin role, then the `admin.action` event naming
/// `action` with `detail`. Each refusal is recorded; the caller acts only on `Ok`.
pub async fn authorize_admin_action(
    data: &crate::app::Data,
    req: &actix_web::HttpRequest,
    who: &Console,
    csrf: &str,
    action: &str,
    detail: &[(&str, serde_json::Value)],
) -> Result<(), AdminError> {
    pages::check_csrf(data, req, who, csrf).await?;
    pages::require_admin(data, req, who, action).await?;
    let mut fields = serde_json::Map::new();
    fields.insert("action".into(), action.into());
    for (k, v) in detail {
        fields.insert((*k).to_owned(), v.clone());
    }
    record_action(data, req, who, serde_json::Value::Object(fields)).await
}

/// What the console shows for a stored time it cannot compute (beyond year 9999):
/// never a made-up date.
pub const NOT_A_TIME: &str = "not a valid time";

/// UTC `YYYY-MM-DD HH:MM:SS` for display.
pub fn show_time(us: i64) -> String {
    match audit_store::try_rfc3339_us(us) {
        Some(full) => full.get(..19).map(|s| s.replace('T', " ")).unwrap_or(full),
        None => NOT_A_TIME.into(),
    }
}

/// [`show_time`] of a time in unix seconds.
pub fn show_secs(secs: i64) -> String {
    secs.checked_mul(1_000_000)
        .map_or_else(|| NOT_A_TIME.into(), show_time)
}

/// Parses a time typed into a filter: RFC 3339, or the `YYYY-MM-DDTHH:MM[:SS]`
/// of a datetime-local input, taken as UTC.
pub fn parse_time(s: &str) -> Result<i64, AdminError> {
    use time::format_description::well_known::Rfc3339;
    let s = s.trim();
    let parsed = time::OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| time::OffsetDateTime::parse(&format!("{s}Z"), &Rfc3339))
        .or_else(|_| time::OffsetDateTime::parse(&format!("{s}:00Z"), &Rfc3339))
        .map_err(|_| AdminError::BadRequest(format!("cannot read time {s:?}")))?;
    Ok((parsed.unix_timestamp_nanos() / 1000) as i64)
}

pub fn now_us() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

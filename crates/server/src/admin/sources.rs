//! Ingest sources from the console: list them, add one (its API key shown once)
//! and revoke one while the server runs, so a leaked key is stopped at once. Adding
//! and revoking are admin only; the key itself never reaches an audit event or a log.

use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde::Deserialize;
use serde_json::json;

use super::auth::redirect;
use super::pages::PageCtx;
use super::{authorize_admin_action, html, show_secs, AdminError, Console, CsrfForm};
use crate::app::Data;

pub struct SourceRow {
    name: String,
    key_hint: String,
    created_at: String,
    revoked_at: Option<String>,
}

#[derive(Template)]
#[template(path = "sources.html")]
pub struct SourcesPage {
    ctx: PageCtx,
    rows: Vec<SourceRow>,
    /// A key just created: shown on this one answer, never again.
    new_key: Option<(String, String)>,
}

async fn page(
    data: &Data,
    who: &Console,
    new_key: Option<(String, String)>,
) -> Result<HttpResponse, AdminError> {
    let state = data.state.clone();
    let sources = web::block(move || state.list_sources()).await??;
    let rows = sources
        .into_iter()
        .map(|s| SourceRow {
            name: s.name,
            key_hint: s.key_hint,
            created_at: show_secs(s.created_at),
            revoked_at: s.revoked_at.map(show_secs),
        })
        .collect();
    let page = SourcesPage {
        ctx: PageCtx::new(who, "sources"),
        rows,
        new_key,
    };
    Ok(html(page.render()?))
}

pub async fn list(data: Data, who: Console) -> Result<HttpResponse, AdminError> {
    page(&data, &who, None).await
}

#[derive(Deserialize)]
pub struct AddForm {
    #[serde(default)]
    csrf: String,
    name: String,
}

pub async fn add(
    req: HttpRequest,
    data: Data,
    who: Console,
    form: web::Form<AddForm>,
) -> Result<HttpResponse, AdminError> {
    let name = form.name.trim().to_owned();
    authorize_admin_action(
        &data,
        &req,
        &who,
        &form.csrf,
        "source.add",
        &[("source", json!(name))],
    )
    .await?;
    let state = data.state.clone();
    let for_state = name.clone();
    let key = web::block(move || state.add_source(&for_state))
        .await?
        .map_err(|e| AdminError::BadRequest(e.to_string()))?;
    page(&data, &who, Some((name, key))).await
}

#[derive(Deserialize)]
pub struct RevokeForm {
    #[serde(default)]
    csrf: String,
    name: String,
}

/// The console's Revoke button: the name travels in the form body, not the path,
/// so every name the validator accepts (`.` and `..` included, which a browser
/// would fold out of a path) reaches the server as typed.
pub async fn revoke(
    req: HttpRequest,
    data: Data,
    who: Console,
    form: web::Form<RevokeForm>,
) -> Result<HttpResponse, AdminError> {
    let form = form.into_inner();
    revoke_named(&req, &data, &who, &form.csrf, form.name).await
}

/// `POST /admin/sources/{name}/revoke`, kept for scripts that name the source in
/// the path.
pub async fn revoke_by_path(
    req: HttpRequest,
    data: Data,
    who: Console,
    name: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, AdminError> {
    revoke_named(&req, &data, &who, &form.csrf, name.into_inner()).await
}

async fn revoke_named(
    req: &HttpRequest,
    data: &Data,
    who: &Console,
    csrf: &str,
    name: String,
) -> Result<HttpResponse, AdminError> {
    authorize_admin_action(
        data,
        req,
        who,
        csrf,
        "source.revoke",
        &[("source", json!(name))],
    )
    .await?;
    let state = data.state.clone();
    let for_state = name.clone();
    if !web::block(move || state.revoke_source(&for_state)).await?? {
        return Err(AdminError::BadRequest(format!(
            "no active source named {name:?}"
        )));
    }
    Ok(redirect("/admin/sources"))
}

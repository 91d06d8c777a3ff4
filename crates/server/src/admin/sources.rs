//! Ingest sources from the console: list them, add one (its API key shown once)
//! and revoke one while the server runs, so a leaked key is stopped at once. Adding
//! and revoking are admin only; the key itself never reaches an audit event or a log.

use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde::Deserialize;
use serde_json::json;

use super::auth::redirect;
use super::pages::{check_csrf, require_admin, PageCtx};
use super::{html, record_action, show_time, AdminError, Console, CsrfForm};
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
    let secs = |t: i64| show_time(t.saturating_mul(1_000_000));
    let rows = sources
        .into_iter()
        .map(|s| SourceRow {
            name: s.name,
            key_hint: s.key_hint,
            created_at: secs(s.created_at),
            revoked_at: s.revoked_at.map(secs),
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
    check_csrf(&data, &req, &who, &form.csrf).await?;
    require_admin(&data, &req, &who, "source.add").await?;
    let name = form.name.trim().to_owned();
    record_action(
        &data,
        &req,
        &who,
        json!({ "action": "source.add", "source": name }),
    )
    .await?;
    let state = data.state.clone();
    let for_state = name.clone();
    let key = web::block(move || state.add_source(&for_state))
        .await?
        .map_err(|e| AdminError::BadRequest(e.to_string()))?;
    page(&data, &who, Some((name, key))).await
}

pub async fn revoke(
    req: HttpRequest,
    data: Data,
    who: Console,
    name: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, AdminError> {
    check_csrf(&data, &req, &who, &form.csrf).await?;
    require_admin(&data, &req, &who, "source.revoke").await?;
    let name = name.into_inner();
    record_action(
        &data,
        &req,
        &who,
        json!({ "action": "source.revoke", "source": name }),
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

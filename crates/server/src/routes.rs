//! The HTTP surface. `configure` is used by `serve` and by the tests alike.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::app::{AppState, Data};
use crate::bearer::{Authenticated, BearerAuth};
use crate::oauth;

/// OAuth form bodies are small; anything bigger is refused before parsing.
const FORM_LIMIT: usize = 16 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig, state: &web::Data<AppState>) {
    let metrics_state = state.clone();
    let bearer = BearerAuth::new(state.tokens.clone(), state.audit.clone())
        .on_event(move |ev| metrics_state.metrics.count_event(ev));
    cfg.app_data(state.clone())
        .app_data(web::Data::new(crate::request_meta::TrustedProxies(
            state.settings.trusted_proxies.clone(),
        )))
        .app_data(web::PayloadConfig::new(FORM_LIMIT))
        .route("/oauth/token", web::post().to(oauth::token))
        .route("/oauth/introspect", web::post().to(oauth::introspect))
        .route("/oauth/revoke", web::post().to(oauth::revoke))
        .route("/.well-known/jwks.json", web::get().to(jwks))
        .route(
            "/.well-known/oauth-authorization-server",
            web::get().to(oauth::discovery::metadata),
        )
        .route(
            "/.well-known/openid-configuration",
            web::get().to(oauth::discovery::metadata),
        )
        .route("/oauth/authorize", web::get().to(oauth::authorize::show))
        .route("/oauth/authorize", web::post().to(oauth::authorize::submit))
        .route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics))
        .configure(crate::admin::configure)
        // Before the /api/v1 scope: ingest keys are not access tokens.
        .service(
            web::resource("/api/v1/events").route(web::post().to(crate::ingest_api::post_events)),
        )
        .service(
            web::scope("/api/v1")
                .wrap(bearer)
                .route("/me", web::get().to(me)),
        );
}

async fn jwks(data: Data) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .json(data.tokens.jwks())
}

/// The body of `GET /api/v1/me`: who the token says the caller is.
#[derive(serde::Serialize)]
pub struct Me<'a> {
    pub sub: &'a str,
    pub username: Option<&'a str>,
    pub roles: &'a [String],
    pub scope: Option<&'a str>,
    pub client_id: Option<&'a str>,
    pub exp: i64,
}

async fn me(caller: web::ReqData<Authenticated>) -> HttpResponse {
    let c = &caller.0.claims;
    HttpResponse::Ok().json(Me {
        sub: &c.sub,
        username: c.username.as_deref(),
        // Only roles tokenwatch vouches for: none for a token of an imported key.
        roles: caller.0.roles(),
        scope: c.scope.as_deref(),
        client_id: c.client_id.as_deref(),
        exp: c.exp,
    })
}

/// Unhealthy when the store cannot record (auth and ingest answer 503 meanwhile) or
/// when an integrity check found damage (the token service keeps answering: the
/// damage is to past history, which refusing logins would not repair).
async fn healthz(data: Data) -> HttpResponse {
    let h = data.store.health();
    let ok = h.writable && h.integrity.status != "failing";
    let body = json!({
        "status": if ok { "ok" } else { "failing" },
        "audit_store": {
            "writable": h.writable,
            "last_error": h.last_error,
            "queue_depth": h.queue_depth,
            "events_committed": h.events_committed,
            "index_lag": h.index_lag,
            "index_error": h.index_error,
        },
        "integrity": h.integrity,
        // Detection runs apart: its state is reported, never a reason to
        // fail the token service's health.
        "detection": data.detection.as_ref().map(|d| d.health_json()),
    });
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(data: Data) -> HttpResponse {
    let plugins = data
        .detection
        .as_ref()
        .map(|d| d.metrics_text())
        .unwrap_or_default();
    let extra = crate::metrics::commit_latency_text(data.store.commit_latency())
        + &plugins
        + &data.forward.metrics_text();
    let text = data.metrics.render(&data.store.health(), &extra);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}
